"""Pictures: reformats sample the CT at the right world positions; views figure draws."""

import numpy as np
import pytest

import drrkit
from drrkit.errors import DrrkitError
from vertebra.report import case_stem, reformat, reformat_figure


def volume_with_spot(direction):
    """A 40^3 volume (1.5 mm voxels, rotated storage) with one bright voxel; its world point."""
    data = np.zeros((40, 40, 40), np.float32)
    data[25, 12, 30] = 100.0  # (k, j, i)
    vol = drrkit.Volume(data, np.array([1.5, 1.5, 1.5]), np.array([-20.0, 10.0, 5.0]),
                        direction)
    return vol, vol.voxel_to_world(np.array([[30.0, 12.0, 25.0]]))[0]


@pytest.mark.parametrize("direction", [np.eye(3),
                                       np.array([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]])])
@pytest.mark.parametrize("plane", ["sagittal", "coronal"])
def test_reformat_finds_the_spot_where_to_pixel_says(direction, plane):
    vol, spot = volume_with_spot(direction)
    image, to_pixel = reformat(vol, {20: spot}, plane, mm_per_pixel=0.5, window=(0.0, 50.0))
    col, row = to_pixel(spot[None])[0]
    r, c = np.unravel_index(np.argmax(image), image.shape)
    assert abs(c - col) <= 1.0 and abs(r - row) <= 1.0
    assert image.max() == 255
    # superior is up: a point 10 mm higher is 20 pixels (0.5 mm) further up
    assert to_pixel((spot + [0, 0, 10])[None])[0, 1] == pytest.approx(row - 20)


def test_reformat_follows_a_curved_spine():
    vol, spot = volume_with_spot(np.eye(3))
    # the plane passes through the spot at its height, elsewhere 15 mm to the side
    curve = {1: spot + [15, 15, 30], 2: spot, 3: spot + [15, 15, -30]}
    image, _ = reformat(vol, curve, "sagittal", mm_per_pixel=0.5, window=(0.0, 50.0))
    assert image.max() == 255
    flat, _ = reformat(vol, {1: spot + [15, 15, 0]}, "sagittal", mm_per_pixel=0.5,
                       window=(0.0, 50.0))
    assert flat.max() == 0


def test_reformat_figure_and_bad_plane():
    vol, spot = volume_with_spot(np.eye(3))
    pic = reformat_figure(vol, {20: spot}, "coronal", confidence={20: 0.9}, min_height=200)
    assert pic.mode == "RGB" and pic.size[1] >= 200
    with pytest.raises(DrrkitError):
        reformat(vol, {}, "axial")


def test_case_stem():
    assert case_stem("a/sub-verse004_ct.nii.gz") == "sub-verse004"
    assert case_stem("scan.mha") == "scan"
    assert case_stem("x_ct") == "x"
