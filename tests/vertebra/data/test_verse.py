"""VerSe centroid JSON: orientation maths against SimpleITK's DICOMOrient, file round trips."""

import itertools
import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drrkit
from drrkit.errors import DrrkitError
from vertebra.data import verse

# a GPU machine may lack SimpleITK (its wheel is too large to carry there)
sitk = pytest.importorskip("SimpleITK")

# the 48 axis-aligned direction-cosine matrices (6 permutations x 8 sign patterns)
ORIENTATIONS = [
    np.eye(3)[:, list(perm)] * np.array(signs)[None, :]
    for perm in itertools.permutations(range(3))
    for signs in itertools.product((1, -1), repeat=3)
]
CODES = ["".join(c) for c in itertools.product("LR", "PA", "SI")]
ALL_CODES = sorted({"".join(p) for c in CODES for p in itertools.permutations(c)})
SIZE = (3, 4, 5)  # i, j, k
SPACING = (0.7, 1.3, 2.5)
ORIGIN = (-12.0, 30.5, 100.25)


def small_image(direction) -> sitk.Image:
    image = sitk.Image(list(SIZE), sitk.sitkFloat32)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(np.asarray(direction, dtype=float).reshape(-1).tolist())
    return image


def world_of_index(image: sitk.Image, index: np.ndarray) -> np.ndarray:
    d = np.reshape(image.GetDirection(), (3, 3))
    return np.asarray(image.GetOrigin()) + (index * np.asarray(image.GetSpacing())) @ d.T


def test_there_are_48_orientations_and_codes():
    assert len({m.tobytes() for m in ORIENTATIONS}) == 48
    assert len(ALL_CODES) == 48


@pytest.mark.parametrize("index", range(48))
def test_verse20_is_the_index_of_the_dicom_oriented_image(index):
    """verse20 coordinates = continuous voxel index of the image reoriented to the code.

    SimpleITK's DICOMOrient (codes name the direction each axis points towards) is the
    independent reference; checked for every one of the 48 target codes.
    """
    image = small_image(ORIENTATIONS[index])
    rng = np.random.default_rng(index)
    q = rng.uniform(-1, 6, size=(7, 3))
    for code in ALL_CODES:
        oriented = sitk.DICOMOrient(image, code)
        expected = world_of_index(oriented, q)
        got = verse.verse_to_world(q, image, code)
        np.testing.assert_allclose(got, expected, atol=1e-9, err_msg=code)
        np.testing.assert_allclose(verse.world_to_verse(got, image, code), q, atol=1e-9)
        # verse19: mm along the same reoriented axes
        mm = q * np.asarray(oriented.GetSpacing())
        np.testing.assert_allclose(verse.verse_to_world(mm, image, code, "verse19"), expected,
                                   atol=1e-9)


@pytest.mark.parametrize("index", range(48))
def test_axcodes_and_step_directions(index):
    direction = ORIENTATIONS[index]
    image = small_image(direction)
    own = verse.axcodes(direction)
    assert verse.reorientation(image, own)[1].tolist() == [False] * 3  # own code: no flip
    unit = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0),
            "S": (0, 0, 1), "I": (0, 0, -1)}
    for code in ("PIR", "LPS", "RAS", "IRA"):
        base = verse.verse_to_world(np.zeros(3), image, code, "verse19")
        for b, letter in enumerate(code):
            step = verse.verse_to_world(np.eye(3)[b], image, code, "verse19") - base
            np.testing.assert_allclose(step, unit[letter], atol=1e-12)  # 1 mm towards `letter`


def test_known_example_by_hand():
    # identity cosines (LPS), spacing (1, 2, 3), origin (1, 2, 3), 6 x 5 x 4 voxels
    v = drrkit.Volume(np.zeros((4, 5, 6), np.float32), spacing=(1, 2, 3), origin=(1, 2, 3))
    # world (3, 4, 5) -> index (2, 1, 2/3); PIR: X = j, Y = (4-1) - k, Z = (6-1) - i
    np.testing.assert_allclose(verse.world_to_verse([3, 4, 5], v, "PIR"), [1, 3 - 2 / 3, 3])
    np.testing.assert_allclose(verse.world_to_verse([3, 4, 5], v, "PIR", "verse19"),
                               [2, (3 - 2 / 3) * 3, 3])


@pytest.mark.parametrize("index", range(0, 48, 5))
@pytest.mark.parametrize("fmt", verse.FORMATS)
def test_file_round_trip(tmp_path, index, fmt):
    image = small_image(ORIENTATIONS[index])
    vol = drrkit.Volume.from_sitk(image)
    rng = np.random.default_rng(100 + index)
    ctd = {lab: vol.voxel_to_world(rng.uniform(0, 3, 3)) for lab in (1, 19, 28, 20, 25)}
    path = tmp_path / "x_ctd.json"
    verse.write_centroids(path, ctd, image, direction="PIR", format=fmt)
    text = json.loads(path.read_text())
    assert text[0] == {"direction": ["P", "I", "R"]}
    assert [t["label"] for t in text[1:]] == [1, 19, 28, 20, 25]
    for source in (image, vol, verse.image_grid(image)):
        back = verse.read_centroids(path, source, format=fmt)
        assert list(back) == [1, 19, 28, 20, 25]
        for lab, point in ctd.items():
            np.testing.assert_allclose(back[lab], point, atol=5e-3)


def test_image_path_is_read_header_only(tmp_path):
    image = small_image(ORIENTATIONS[7])
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    grid = verse.image_grid(path)
    np.testing.assert_array_equal(grid.size, SIZE)
    np.testing.assert_allclose(grid.direction, ORIENTATIONS[7], atol=1e-6)
    q = np.array([[0.5, 1.0, 2.0]])
    np.testing.assert_allclose(verse.verse_to_world(q, path, "PIR"),
                               verse.verse_to_world(q, image, "PIR"), atol=1e-5)


def test_oblique_image_uses_nearest_axes_and_stays_exact():
    a = np.deg2rad(25)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    direction = rot @ ORIENTATIONS[13]
    image = small_image(direction)
    assert verse.axcodes(direction) == verse.axcodes(ORIENTATIONS[13])
    p = np.array([[1.0, -2.0, 30.0], [5.0, 7.0, 100.0]])
    np.testing.assert_allclose(verse.verse_to_world(verse.world_to_verse(p, image), image), p,
                               atol=1e-9)
    # a 45-degree tie still gets a permutation
    assert sorted(verse.axcodes(np.array([[1, 1, 0], [-1, 1, 0], [0, 0, 2**0.5]]) / 2**0.5)) \
        in (sorted("LAS"), sorted("LPS"), sorted("RPS"), sorted("RAS"))


def test_load_skips_nan_and_checks_content(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[{"direction": "PIR"}, {"label": 20, "X": 1, "Y": 2, "Z": 3},'
                    '{"label": 21, "X": NaN, "Y": 2, "Z": 3}, {"label": 26, "X": 4, "Y": 5, "Z": 6}]')
    with pytest.warns(UserWarning, match="skipped 1 centroid"):
        f = verse.load_centroid_file(path)
    assert f.direction == ("P", "I", "R")
    assert f.labels.tolist() == [20, 26]  # non-targets kept for the caller to filter
    np.testing.assert_array_equal(f.coords, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(
    "content, match",
    [("not json", "not valid JSON"),
     ('{"a": 1}', "expected a JSON list"),
     ('[{"direction": ["P", "I", "X"]}]', "orientation code"),
     ('[{"direction": ["P", "A", "R"]}]', "each of L/R"),
     ('[{"label": 20, "X": 1, "Y": 2}]', "lacks coordinate"),
     ('[{"X": 1, "Y": 2, "Z": 3}]', "neither"),
     ('[{"label": 20, "X": 1, "Y": 2, "Z": 3}, {"label": 20, "X": 1, "Y": 2, "Z": 3}]',
      "more than once"),
     ('[{"label": 20.5, "X": 1, "Y": 2, "Z": 3}]', "non-integer label"),
     ("[3]", "not a JSON object")],
)
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DrrkitError, match=match):
        verse.load_centroid_file(path)


def test_missing_header_needs_a_direction(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[{"label": 20, "X": 1, "Y": 2, "Z": 3}]')
    image = small_image(np.eye(3))
    with pytest.raises(DrrkitError, match="no 'direction' header"):
        verse.read_centroids(path, image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = verse.read_centroids(path, image, direction="PIR")
    np.testing.assert_allclose(got[20], verse.verse_to_world([1, 2, 3], image, "PIR"))


def test_bad_arguments(tmp_path):
    image = small_image(np.eye(3))
    with pytest.raises(DrrkitError, match="unknown centroid format"):
        verse.verse_to_world(np.zeros(3), image, "PIR", "verse21")
    with pytest.raises(DrrkitError, match="shape"):
        verse.verse_to_world(np.zeros(2), image, "PIR")
    with pytest.raises(DrrkitError, match="orientation code"):
        verse.check_direction("PI")
    with pytest.raises(DrrkitError, match="no such centroid file"):
        verse.load_centroid_file(tmp_path / "none.json")
    with pytest.raises(DrrkitError, match="no such image"):
        verse.image_grid(tmp_path / "none.nii.gz")
    with pytest.raises(DrrkitError, match="expected a drrkit.Volume"):
        verse.image_grid(42)
    with pytest.raises(DrrkitError, match="finite"):
        verse.write_centroids(tmp_path / "x.json", {20: (np.nan, 0, 0)}, image)
    with pytest.raises(DrrkitError, match="3 numbers"):
        verse.write_centroids(tmp_path / "x.json", {20: (0, 0)}, image)


@settings(max_examples=30, deadline=None)
@given(
    quat=st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(
        lambda q: sum(x * x for x in q) > 0.1),
    flip=st.booleans(),
    code=st.sampled_from(ALL_CODES),
    fmt=st.sampled_from(verse.FORMATS),
)
def test_random_oblique_round_trip(quat, flip, code, fmt):
    w, x, y, z = np.asarray(quat) / np.linalg.norm(quat)
    rot = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
    if flip:
        rot = rot @ np.diag([1.0, 1.0, -1.0])  # a left-handed grid, as some files store
    image = small_image(rot)
    assert len({verse._CODE_AXIS[c][0] for c in verse.axcodes(rot)}) == 3
    p = np.array([[1.0, 2.0, 3.0], [-40.0, 15.0, 120.0]])
    q = verse.world_to_verse(p, image, code, fmt)
    np.testing.assert_allclose(verse.verse_to_world(q, image, code, fmt), p, atol=1e-9)
    # the reoriented grid is only a permutation / flip of the voxel grid: voxel centres
    # map to whole numbers (verse20)
    centre = verse.image_grid(image).index_to_world[:3] @ np.array([1.0, 2.0, 3.0, 1.0])
    q = verse.world_to_verse(centre, image, code)
    np.testing.assert_allclose(q, np.round(q), atol=1e-9)
