"""VerSe folder indexing and centroids from masks."""

import numpy as np
import pytest
from scipy import ndimage

import drrkit
from drrkit.errors import DrrkitError
from vertebra.data import VerseDataset, centroids_from_mask, index_verse, write_centroids
from vertebra.data.dataset import label_centers

# a GPU machine may lack SimpleITK (its wheel is too large to carry there)
sitk = pytest.importorskip("SimpleITK")

# a stored orientation that is neither LPS nor RAS (permuted and flipped), anisotropic
DIRECTION = np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], dtype=float)
SPACING = (0.8, 1.1, 2.5)
ORIGIN = (40.0, -20.0, 300.0)
SHAPE = (12, 14, 10)  # (Z, Y, X) NumPy order


def make_mask() -> np.ndarray:
    m = np.zeros(SHAPE, np.int16)
    m[2:5, 3:7, 2:6] = 19    # T12
    m[6:9, 4:9, 3:7] = 28    # T13
    m[9:12, 5:10, 1:4] = 20  # L1, touches the last k slice (truncated by the FOV)
    m[0, 0, 0] = 26          # sacrum, not a target
    m[4, 10, 8] = 25         # L6, a single voxel
    return m


def volume_of(data) -> drrkit.Volume:
    return drrkit.Volume(data, SPACING, ORIGIN, DIRECTION)


def expected_world(mask: np.ndarray, label: int) -> np.ndarray:
    k, j, i = ndimage.center_of_mass(mask == label)  # independent reference, (Z, Y, X)
    return volume_of(mask).voxel_to_world(np.array([i, j, k]))


@pytest.fixture()
def verse_root(tmp_path):
    mask = make_mask()
    ct = volume_of(np.full(SHAPE, -1000.0, np.float32))
    for stem, with_json, with_mask in [("sub-verse004", True, True),
                                       ("sub-verse500_split-verse251", False, True),
                                       ("sub-verse500_split-verse252", False, False)]:
        subject = stem.split("_")[0]
        raw = tmp_path / "rawdata" / subject
        der = tmp_path / "derivatives" / subject
        raw.mkdir(parents=True, exist_ok=True)
        der.mkdir(parents=True, exist_ok=True)
        ct.save(raw / f"{stem}_ct.nii.gz")
        if with_mask:
            volume_of(mask).save(der / f"{stem}_seg-vert_msk.nii.gz")
            volume_of(mask).save(der / f"{stem}_seg-subreg_msk.nii.gz")  # a second mask kind
        if with_json:
            # the JSON deliberately differs from the mask (shifted 3 mm) to tell them apart
            ctd = {lab: expected_world(mask, lab) + [0, 0, 3.0] for lab in (19, 28, 20)}
            write_centroids(der / f"{stem}_seg-subreg_ctd.json", ctd, ct)
    return tmp_path


def test_index_finds_cases_and_derivatives(verse_root):
    cases = index_verse(verse_root)
    assert [c.name for c in cases] == ["sub-verse004", "sub-verse500_split-verse251",
                                       "sub-verse500_split-verse252"]
    a, b, c = cases
    assert a.subject == "sub-verse004" and b.subject == c.subject == "sub-verse500"
    assert a.mask.name == "sub-verse004_seg-vert_msk.nii.gz"  # seg-vert preferred
    assert a.centroid_file.name == "sub-verse004_seg-subreg_ctd.json"
    assert b.mask.name.startswith("sub-verse500_split-verse251_seg-vert")
    assert b.centroid_file is None and c.mask is None and c.centroid_file is None


def test_dataset_requirements(verse_root):
    assert len(VerseDataset(verse_root)) == 3
    assert len(VerseDataset(verse_root, require="mask")) == 2
    assert len(VerseDataset(verse_root, require="json")) == 1
    assert len(VerseDataset(verse_root, require="centroids")) == 2
    ds = VerseDataset(verse_root)
    assert ds["sub-verse004"] is ds[0]
    with pytest.raises(KeyError):
        ds["nope"]
    with pytest.raises(DrrkitError, match="unknown requirement"):
        VerseDataset(verse_root, require="all")
    with pytest.raises(DrrkitError, match="no such folder"):
        VerseDataset(verse_root / "missing")


def test_case_centroids_json_mask_and_errors(verse_root):
    ds = VerseDataset(verse_root)
    mask = make_mask()
    from_json = ds[0].centroids()
    from_mask = ds[0].centroids(source="mask")
    assert list(from_json) == [19, 28, 20]
    assert list(from_mask) == [19, 28, 20, 25]  # anatomical order, sacrum dropped
    for lab in (19, 28, 20):
        np.testing.assert_allclose(from_json[lab], expected_world(mask, lab) + [0, 0, 3], atol=2e-3)
        np.testing.assert_allclose(from_mask[lab], expected_world(mask, lab), atol=1e-4)
    assert list(ds[1].centroids()) == [19, 28, 20, 25]  # no JSON: the mask
    assert list(ds[1].centroids(truncated="drop")) == [19, 28, 25]
    with pytest.raises(DrrkitError, match="neither a centroid file nor a mask"):
        ds[2].centroids()
    with pytest.raises(DrrkitError, match="no centroid file"):
        ds[1].centroids(source="json")
    with pytest.raises(DrrkitError, match="no vertebra mask"):
        ds[2].load_mask()
    ct = ds[0].load_ct()
    assert ct.data.shape == SHAPE and np.allclose(ct.direction, DIRECTION)
    assert ds[0].load_mask().data.dtype == np.int32


def test_centroids_from_mask_against_scipy():
    mask = make_mask()
    vol = volume_of(mask)
    got = centroids_from_mask(vol, vertebrae_only=False)
    assert list(got) == [19, 28, 20, 25, 26]
    for lab in got:
        np.testing.assert_allclose(got[lab], expected_world(mask, lab), atol=1e-9)
    labels, counts, _, touches = label_centers(vol)
    assert labels.tolist() == [19, 20, 25, 26, 28]
    assert counts.tolist() == [int((mask == lab).sum()) for lab in labels]
    assert touches.tolist() == [False, True, False, True, False]
    assert list(centroids_from_mask(vol, min_voxels=2)) == [19, 28, 20]
    # a SimpleITK image and a float mask give the same answer
    sitk_mask = volume_of(mask.astype(np.float32)).to_sitk()
    got2 = centroids_from_mask(sitk_mask)
    for lab in got2:
        np.testing.assert_allclose(got2[lab], got[lab], atol=1e-9)


def test_centroids_from_mask_edge_cases(tmp_path):
    empty = volume_of(np.zeros(SHAPE, np.uint8))
    assert centroids_from_mask(empty) == {}
    with pytest.raises(DrrkitError, match="whole numbers"):
        centroids_from_mask(volume_of(np.full(SHAPE, 0.5, np.float32)))
    with pytest.raises(DrrkitError, match="truncated"):
        centroids_from_mask(empty, truncated="maybe")
    with pytest.raises(DrrkitError, match="expected a mask"):
        centroids_from_mask(np.zeros(SHAPE))
    path = tmp_path / "m.nii.gz"
    sitk.WriteImage(volume_of(make_mask()).to_sitk(), str(path))
    assert list(centroids_from_mask(path)) == [19, 28, 20, 25]


def test_flat_folder_without_rawdata(tmp_path):
    volume_of(np.zeros(SHAPE, np.float32)).save(tmp_path / "sub-a_ct.nii.gz")
    volume_of(make_mask()).save(tmp_path / "sub-a_seg-vert_msk.nii.gz")
    (tmp_path / "notes_ct.txt").write_text("not an image")
    (case,) = index_verse(tmp_path)
    assert case.name == "sub-a" and case.mask is not None
    assert list(case.centroids()) == [19, 28, 20, 25]
