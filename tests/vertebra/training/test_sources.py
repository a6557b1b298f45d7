"""Training CT sources: phantom specs and shares, crops, VerSe folders, the lazy cache."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drrkit.errors import DrrkitError
from vertebra.training.sources import PhantomSource, open_data, parse_phantoms
from vertebra.views import ViewConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/vertebra/conftest.py


def test_phantom_specs():
    assert parse_phantoms("phantoms:3") == [0, 1, 2]
    assert parse_phantoms("phantoms:5:7") == [5, 6]
    assert parse_phantoms("/some/folder") is None
    for bad in ("phantoms:", "phantoms:x", "phantoms:4:2"):
        with pytest.raises(DrrkitError):
            parse_phantoms(bad)
    with pytest.raises(DrrkitError):
        open_data("/no/such/folder")


def test_crop_z_keeps_the_chosen_vertebrae_with_exact_geometry(phantoms):
    from vertebra.training.sources import crop_z

    ct = phantoms.load(1)  # random orientation: the spine need not run along array axis 0
    keys = sorted(ct.centroids)
    cut = crop_z(ct, 1, 3, reach=(0.4, 0.6))
    assert sorted(cut.centroids) == keys[1:4]
    vol, small = ct.volume, cut.volume
    axis = int(np.argmax(np.abs(vol.direction[2])))
    assert small.shape_xyz[axis] < vol.shape_xyz[axis]
    assert [small.shape_xyz[a] for a in range(3) if a != axis] == \
        [vol.shape_xyz[a] for a in range(3) if a != axis]
    # a voxel of the crop holds the value of the original voxel at the same world point
    ijk = np.array([1, 2, 3])
    src = np.round(vol.world_to_voxel(small.voxel_to_world(ijk))).astype(int)
    assert small.data[3, 2, 1] == vol.data[src[2], src[1], src[0]]
    # the cuts lie 0.4 and 0.6 of the way to the outside neighbours
    z = {k: ct.centroids[k][2] for k in keys}
    top, bottom = small.corners[:, 2].max(), small.corners[:, 2].min()
    dz = abs(small.spacing[axis])
    assert abs(top - (z[keys[1]] + 0.4 * (z[keys[0]] - z[keys[1]]))) <= dz
    assert abs(bottom - (z[keys[3]] + 0.6 * (z[keys[4]] - z[keys[3]]))) <= dz
    whole = crop_z(ct, 0, len(keys) - 1)  # no neighbour outside: nothing is cut
    assert whole.volume.shape_xyz == vol.shape_xyz and sorted(whole.centroids) == keys
    for bad in ((2, 1), (0, len(keys))):
        with pytest.raises(DrrkitError, match="first <= last"):
            crop_z(ct, *bad)
    with pytest.raises(DrrkitError, match="reach"):
        crop_z(ct, 1, 2, reach=(0.0, 0.5))


@settings(max_examples=40, deadline=None)
@given(first=st.integers(0, 7), length=st.integers(1, 8), reach=st.tuples(
    st.floats(0.05, 0.95), st.floats(0.05, 0.95)), perm=st.permutations([0, 1, 2]),
    flip=st.tuples(st.booleans(), st.booleans(), st.booleans()), spacing=st.floats(0.5, 3))
def test_crop_z_keeps_exactly_the_run(first, length, reach, perm, flip, spacing):
    """Eight vertebrae 30 mm apart along world z, any axis order and sign, any slice
    spacing: the crop keeps exactly vertebrae first .. first + length - 1."""
    import drrkit
    from vertebra.training.sources import TrainingCT, crop_z

    last = min(first + length - 1, 7)
    direction = np.eye(3)[:, list(perm)] * np.where(flip, -1.0, 1.0)
    n = np.full(3, 8)
    n[list(perm).index(2)] = int(np.ceil(260 / spacing))
    vol = drrkit.Volume(np.zeros(n[::-1], np.float32), spacing=np.full(3, spacing),
                        direction=direction)
    vol = drrkit.Volume(vol.data, vol.spacing, -vol.voxel_to_world((n - 1) / 2), direction)
    cents = {k: np.array([0.0, 0.0, 105.0 - 30.0 * k]) for k in range(8)}  # id 0 on top
    cut = crop_z(TrainingCT("c", vol, cents, False), first, last, reach)
    assert sorted(cut.centroids) == list(range(first, last + 1))


def test_phantom_source_c1_share():
    src = PhantomSource(range(40), size="small", c1_share=0.5)
    starts = [src.levels(i) for i in range(40)]
    at_c1 = [lv for lv in starts if lv is not None]
    assert 10 <= len(at_c1) <= 30 and all(lv[0] == "C1" for lv in at_c1)
    assert starts == [PhantomSource(range(40), c1_share=0.5).levels(i) for i in range(40)]
    first = starts.index(at_c1[0])
    ct = src.load(first)
    assert min(ct.centroids) == 1  # C1
    assert PhantomSource(range(3)).levels(0) is None
    for bad in ({"c1_share": 1.5}, {"c1_share": 0.5, "levels": ("T1", "T4")}):
        with pytest.raises(DrrkitError, match="c1_share"):
            PhantomSource(range(3), **bad)


def test_phantom_source_sacrum_share_keeps_the_c1_draws():
    both = PhantomSource(range(60), size="small", c1_share=0.3, sacrum_share=0.4)
    runs = [both.levels(i) for i in range(60)]
    c1_only = [PhantomSource(range(60), c1_share=0.3).levels(i) for i in range(60)]
    # adding the sacrum share leaves every C1 scan where it was
    assert [lv for lv in runs if lv and lv[0] == "C1"] == [lv for lv in c1_only if lv]
    to_l5 = [lv for lv in runs if lv and lv[1] == "L5"]
    assert 12 <= len(to_l5) <= 36
    assert {lv[0] for lv in to_l5} <= set(PhantomSource.SACRUM_STARTS)
    ct = both.load(runs.index(to_l5[0]))
    assert max(ct.centroids) in (24, 25)  # L5 is the last vertebra (or L6 follows it)
    for bad, word in (({"sacrum_share": -0.1}, "sacrum_share"),
                      ({"sacrum_share": 0.2, "levels": ("T1", "T4")}, "sacrum_share"),
                      ({"c1_share": 0.6, "sacrum_share": 0.6}, "at most 1")):
        with pytest.raises(DrrkitError, match=word):
            PhantomSource(range(3), **bad)


def test_cropped_source_adds_named_deterministic_crops(phantoms):
    from vertebra.training.sources import CroppedSource

    src = CroppedSource(phantoms, crops=2, min_vertebrae=3, seed=5)
    assert len(src) == 6 and [src.name(i) for i in range(3)] == [
        "phantom0000", "phantom0000-z1", "phantom0000-z2"]
    whole, crop = src.load(3), src.load(4)
    assert whole.centroids.keys() == phantoms.load(1).centroids.keys()
    assert 3 <= len(crop.centroids) < len(whole.centroids) and crop.name == "phantom0001-z1"
    keys = sorted(whole.centroids)
    run = sorted(crop.centroids)
    assert run == keys[keys.index(run[0]):keys.index(run[0]) + len(run)]  # consecutive
    again = CroppedSource(phantoms, crops=2, min_vertebrae=3, seed=5).load(4)
    assert again.volume.shape_xyz == crop.volume.shape_xyz
    assert len(CroppedSource(phantoms, crops=0)) == len(phantoms)
    with pytest.raises(DrrkitError, match="crops"):
        CroppedSource(phantoms, crops=-1)
    for reach in ((0.5, 0.4), (0.0, 0.5), (0.5, 1.0)):
        with pytest.raises(DrrkitError, match="reach"):
            CroppedSource(phantoms, reach=reach)


def test_scene_source_completes_only_cut_scans():
    """A scan whose small field of view the body fills comes back inside the completed
    trunk the pipeline labels it in (the same volume as ``complete_body`` of it, its
    centroids kept); a whole trunk comes back as it is."""
    from drrkit.completion import complete_body, needs_completion
    from vertebra.training.sources import SceneSource

    cut = PhantomSource([0, 1], size="small", fov=100.0)
    src = SceneSource(cut)
    assert len(src) == 2 and src.name(1) == cut.name(1) == "phantom0001"
    assert src.describe() == {"kind": "completed", "source": cut.describe()}
    given, made = cut.load(1), src.load(1)
    assert needs_completion(given.volume) and not needs_completion(made.volume)
    want = complete_body(given.volume)
    np.testing.assert_array_equal(made.volume.data, want.data)
    np.testing.assert_array_equal(made.volume.index_to_world, want.index_to_world)
    assert made.volume.shape_xyz != given.volume.shape_xyz
    assert made.name == given.name and made.t13 == given.t13
    assert made.centroids.keys() == given.centroids.keys()
    for k, c in given.centroids.items():
        np.testing.assert_array_equal(made.centroids[k], c)
    whole = PhantomSource([1], size="small", clinical_share=1.0)  # a whole trunk
    assert SceneSource(whole).load(0) is whole.load(0)


def test_scene_source_renders_dense_voxels_as_the_pipeline_does():
    """With ``dense_hu`` a phantom's screws come back as the pipeline's rule makes them
    (the same volume as ``suppress_dense``, nothing above the threshold left), its
    geometry and centroids kept; the description names the setting; a bad threshold is
    refused."""
    from drrkit.dense import suppress_dense
    from drrkit.volume import hu_to_mu
    from vertebra.training.sources import SceneSource

    screws = PhantomSource([0], size="small", metal=True)
    src = SceneSource(screws, complete_body=False, dense_hu=1600)
    assert src.describe() == {"kind": "scene", "complete_body": False, "dense_hu": 1600.0,
                              "source": screws.describe()}
    given, made = screws.load(0), src.load(0)
    assert given.volume.data.max() > hu_to_mu(1600.0)
    np.testing.assert_array_equal(made.volume.data, suppress_dense(given.volume, 1600).data)
    assert made.volume.data.max() <= hu_to_mu(1600.0)
    np.testing.assert_array_equal(made.volume.index_to_world, given.volume.index_to_world)
    for k, c in given.centroids.items():
        np.testing.assert_array_equal(made.centroids[k], c)
    assert SceneSource(screws, complete_body=False).load(0) is given
    with pytest.raises(DrrkitError, match="at least"):
        SceneSource(screws, dense_hu=500)


def test_cropped_source_reach_sets_where_the_cuts_fall(phantoms):
    """The same vertebrae kept, a cut near the kept ones (reach 0.1) gives a shorter scan
    than a cut near the next ones outside (reach 0.9); both keep the same centroids."""
    from vertebra.training.sources import CroppedSource

    def crop(reach):
        return CroppedSource(phantoms, crops=1, min_vertebrae=2, seed=3, reach=reach).load(1)

    near, far = crop((0.1, 0.1)), crop((0.9, 0.9))
    assert near.centroids.keys() <= far.centroids.keys() and len(near.centroids) >= 2
    axis = int(np.argmax(np.abs(near.volume.direction[2])))  # the axis the cut runs along
    assert near.volume.shape_xyz[axis] < far.volume.shape_xyz[axis]
    assert CroppedSource(phantoms, reach=(0.2, 0.8)).describe()["reach"] == [0.2, 0.8]


def test_verse_source_reads_ct_numbers_as_attenuation(phantoms, tmp_path):
    """A VerSe folder (CT in HU on disk) gives the phantoms' own attenuation and views."""
    from vertebra.data.phantom import write_phantoms
    from vertebra.training.rendered import render_views
    from vertebra.training.sources import VerseSource

    write_phantoms(tmp_path / "verse", [0], **phantoms.options)
    from_disk, built = VerseSource(tmp_path / "verse").load(0), phantoms.load(0)
    assert from_disk.name == "sub-phantom0000" and from_disk.t13 == built.t13
    assert from_disk.centroids.keys() == built.centroids.keys()
    for k in built.centroids:
        np.testing.assert_allclose(from_disk.centroids[k], built.centroids[k], atol=0.05)
    # int16 HU on disk: 1 HU rounding is 1e-3 of water's attenuation
    np.testing.assert_allclose(from_disk.volume.data, built.volume.data, atol=3e-5)
    view = ViewConfig(views=2, mm_per_pixel=4.0, bone_gain=4.0)
    np.testing.assert_allclose(render_views(from_disk, view).images,
                               render_views(built, view).images, rtol=2e-3, atol=1e-4)


def test_lazy_collection_keeps_what_fits_its_budget():
    from vertebra.training.sources import LazyCollection

    class Weighed(LazyCollection):
        def __init__(self, cache):
            super().__init__(cache)
            self.loads = []

        def __len__(self):
            return 4

        def _load(self, index):
            self.loads.append(index)
            return index

        def _weight(self, item):
            return 2.0 if item == 3 else 1.0

    c = Weighed(cache=3)
    for i in (0, 1, 2, 0, 1, 2):  # weights 1 + 1 + 1 fit: three loads
        c.load(i)
    assert c.loads == [0, 1, 2]
    c.load(3)  # weight 2 pushes out the two least recently used (0, then 1)
    c.load(2)
    c.load(0)
    assert c.loads == [0, 1, 2, 3, 0]
    big = Weighed(cache=1)
    big.load(3)  # heavier than the whole budget: still kept until the next load
    big.load(3)
    assert big.loads == [3]


def test_verse_source_cache_is_weighed_in_mib(tmp_path):
    """VerSe CTs differ a hundredfold in size: the cache holds MiB of voxels, not CTs."""
    import drrkit
    from vertebra.data import write_centroids
    from vertebra.training.sources import VerseSource

    for name, n in (("sub-big", 64), ("sub-small", 32)):  # 1 MiB and 1/8 MiB of float32
        ct = drrkit.Volume(np.zeros((n, n, n), np.float32), spacing=(2.0, 2.0, 2.0))
        ct.save(tmp_path / f"{name}_ct.nii.gz")
        write_centroids(tmp_path / f"{name}_seg-subreg_ctd.json", {20: ct.center}, ct)

    def counted(source):
        inner, loads = source._load, []
        source._load = lambda i: loads.append(i) or inner(i)
        return source, loads

    src, loads = counted(VerseSource(tmp_path, cache_mib=1.1))
    big = [src.name(i) for i in range(2)].index("sub-big")
    assert src._weight(src.load(big)) == pytest.approx(1.0)
    src.load(1 - big)  # 1 + 1/8 MiB > 1.1 MiB: the big CT leaves
    src.load(1 - big)
    src.load(big)
    assert loads == [big, 1 - big, big]
    roomy, loads = counted(open_data(tmp_path))  # default 2048 MiB: both stay
    for i in (big, 1 - big, big, 1 - big):
        roomy.load(i)
    assert isinstance(roomy, VerseSource) and loads == [big, 1 - big]
