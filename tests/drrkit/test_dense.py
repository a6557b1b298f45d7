"""Voxels denser than bone taken out of a CT (drrkit.dense)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

import drrkit
from drrkit import DrrkitError, Volume
from drrkit.dense import dense_mask, rim_radii, suppress_dense

HU = {"soft": 40.0, "bone": 700.0, "vessel": 2500.0, "rim": 900.0, "fat": -100.0}


def _volume(hu: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Volume:
    return Volume(drrkit.hu_to_mu(hu.astype(np.float32)), spacing=spacing)


def _hu(volume: Volume) -> np.ndarray:
    return (volume.data / drrkit.MU_WATER - 1.0) * 1000.0


def test_a_contrast_vessel_and_its_rim_become_soft_tissue_and_bone_stays():
    """A 2500 HU rod with a 900 HU partial-volume rim one voxel thick, beside a 700 HU
    bone block and fat: the rod and its rim become 40 HU, nothing else changes."""
    hu = np.full((20, 20, 20), HU["soft"], np.float32)
    hu[:, 4:7, 4:7] = HU["rim"]
    hu[:, 5, 5] = HU["vessel"]
    hu[5:15, 12:18, 12:18] = HU["bone"]
    hu[0:3, 15:20, 0:5] = HU["fat"]
    vol = _volume(hu)
    out = suppress_dense(vol)
    expected = hu.copy()
    expected[:, 4:7, 4:7] = HU["soft"]
    np.testing.assert_allclose(_hu(out), expected, atol=0.05)
    np.testing.assert_array_equal(vol.data, drrkit.hu_to_mu(hu))  # input untouched
    np.testing.assert_array_equal(out.index_to_world, vol.index_to_world)
    assert out.data.dtype == np.float32


def test_the_rim_reaches_margin_mm_and_at_least_one_voxel_per_axis():
    """A single dense voxel in bright tissue on 0.5 x 0.5 x 3 mm voxels, 2 mm rim: the
    taken-out voxels are the ellipsoid of half-widths 4, 4 and 1 voxels around it."""
    hu = np.full((9, 21, 21), 300.0, np.float32)
    hu[4, 10, 10] = 3000.0
    vol = _volume(hu, spacing=(0.5, 0.5, 3.0))
    np.testing.assert_array_equal(rim_radii(vol.spacing, 2.0), [1, 4, 4])
    mask = dense_mask(vol, margin_mm=2.0)
    z, y, x = np.nonzero(mask)
    assert (z.min(), z.max(), y.min(), y.max(), x.min(), x.max()) == (3, 5, 6, 14, 6, 14)
    inside = ((z - 4) / 1.0) ** 2 + ((y - 10) / 4.0) ** 2 + ((x - 10) / 4.0) ** 2
    assert np.all(inside <= 1.0 + 1e-9)
    assert mask.sum() == 1 + 2 + 48  # centre, the two slices beside it, its own slice's disc


def test_nothing_dense_returns_the_volume_itself():
    hu = np.full((4, 5, 6), 1500.0, np.float32)  # dense cortex, below the threshold
    vol = _volume(hu)
    assert suppress_dense(vol) is vol
    assert not dense_mask(vol).any()


@pytest.mark.parametrize("bad", [999.0, np.nan, np.inf, "x", None])
def test_a_threshold_that_would_take_out_bone_is_refused(bad):
    vol = _volume(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(DrrkitError, match="dense threshold"):
        suppress_dense(vol, threshold_hu=bad)
    with pytest.raises(DrrkitError, match="rim width"):
        suppress_dense(vol, margin_mm=-1.0)


def _reference_mask(hu: np.ndarray, spacing, threshold, margin_mm, rim_hu) -> np.ndarray:
    """The rule written plainly: the distance to the nearest dense voxel, in units of
    the rim's half-widths, over the whole volume."""
    dense = hu > threshold
    if not dense.any():
        return dense
    radii = rim_radii(spacing, margin_mm)
    near = ndimage.distance_transform_edt(~dense, sampling=1.0 / radii) <= 1.0 + 1e-9
    return dense | (near & (hu > rim_hu))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(1000.0, 2500.0), st.floats(0.0, 3.0),
       st.sampled_from([(1.0, 1.0, 1.0), (0.7, 0.7, 2.5), (2.0, 0.5, 1.0)]))
def test_the_mask_matches_the_plain_rule(seed, threshold, margin, spacing):
    """Against a whole-volume distance transform: the same voxels, for random CTs with
    sparse dense spots, any threshold, rim width and anisotropic voxels."""
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-200.0, 1200.0, size=(7, 9, 8)).astype(np.float32)
    spots = rng.random(hu.shape) < 0.02
    hu[spots] = rng.uniform(1000.0, 3000.0, spots.sum())
    vol = _volume(hu, spacing=spacing)
    hu_back = _hu(vol)  # the CT numbers the float32 attenuation holds
    got = dense_mask(vol, threshold, margin, 150.0)
    want = _reference_mask(hu_back, spacing, threshold, margin, 150.0)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(1000.0, 3000.0))
def test_suppression_is_idempotent_and_leaves_nothing_dense(seed, threshold):
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-1000.0, 3500.0, size=(6, 7, 8)).astype(np.float32)
    vol = _volume(hu)
    once = suppress_dense(vol, threshold)
    assert np.all(_hu(once) <= threshold + 0.1)
    assert suppress_dense(once, threshold) is once  # nothing dense is left to take out
    changed = once.data != vol.data
    assert np.all(vol.data[changed] > drrkit.hu_to_mu(np.float32(150.0)))  # only bright voxels
