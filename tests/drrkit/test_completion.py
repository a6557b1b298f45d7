"""drrkit.completion: closed-form truncation shares and completed trunks, a row-sum
reference for the completed line integrals, and properties over storage orders."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drrkit import Volume, hu_to_mu
from drrkit.completion import (
    ANTERIOR_MM,
    BODY_MM,
    complete_body,
    completed,
    needs_completion,
    slice_truncation,
    truncation,
)
from drrkit.errors import DrrkitError

WATER = float(hu_to_mu(np.float32(0.0)))


def box(shape_zyx=(6, 40, 50), spacing=(2.0, 2.0, 3.0), value=WATER, origin=None):
    data = np.full(shape_zyx, value, np.float32)
    spacing = np.asarray(spacing, float)
    if origin is None:  # centred on the world origin
        origin = -0.5 * (np.array(shape_zyx[::-1]) - 1) * spacing
    return Volume(data, spacing, origin)


def disc(radius_mm, shape_zyx=(4, 100, 100), spacing=2.0):
    """Water inside a cylinder of that radius about the box's axis, air outside."""
    vol = box(shape_zyx, (spacing, spacing, 2.0), 0.0)
    k, j, i = np.indices(shape_zyx)
    w = vol.voxel_to_world(np.stack([i, j, k], -1).astype(float))
    inside = np.hypot(w[..., 0], w[..., 1]) <= radius_mm
    return vol.with_data(np.where(inside, WATER, 0.0).astype(np.float32))


def test_truncation_closed_form():
    assert truncation(box()) == 1.0  # tissue everywhere: the body fills the view
    assert truncation(disc(60.0)) == 0.0  # the body inside a 200 mm field of view
    assert truncation(disc(120.0)) == 1.0  # a body wider than the field of view
    assert needs_completion(box())  # 100 x 80 mm, all tissue
    assert not needs_completion(disc(60.0))
    wide = box((4, 120, 120), (2.0, 2.0, 2.0))  # 240 mm: deeper than a trunk, not a crop
    assert truncation(wide) == 1.0 and not needs_completion(wide)


def test_completed_completes_only_a_cut_scan():
    cut, whole = box(), disc(60.0)
    done = completed(cut)
    np.testing.assert_array_equal(done.data, complete_body(cut).data)
    np.testing.assert_array_equal(done.index_to_world, complete_body(cut).index_to_world)
    assert completed(whole) is whole


def test_complete_body_closed_form():
    """A 100 x 80 mm water box in a 330 x 230 mm trunk: the centre and the scan's voxels
    stay, the padding holds water inside the ellipse and air outside, and each slice's
    tissue covers the ellipse's area plus nothing else."""
    vol = box()
    out = complete_body(vol)
    np.testing.assert_allclose(out.center, vol.center, atol=1e-9)
    np.testing.assert_array_equal(out.spacing, vol.spacing)
    # the scan's voxels where they were
    start = np.round(out.world_to_voxel(vol.voxel_to_world(np.zeros(3)))).astype(int)
    z, y, x = vol.data.shape
    inner = out.data[start[2]:start[2] + z, start[1]:start[1] + y, start[0]:start[0] + x]
    np.testing.assert_array_equal(inner, vol.data)
    # one slice's tissue area: the ellipse's, pi a b, to within its rim of voxels
    a, b = BODY_MM[0] / 2, BODY_MM[1] / 2
    area = (out.data[0] > 0).sum() * out.spacing[0] * out.spacing[1]
    rim = np.pi * (a + b) * out.spacing[0]  # perimeter times a voxel
    assert abs(area - np.pi * a * b) < rim
    assert set(np.unique(out.data)) <= {0.0, np.float32(WATER)}
    # the box holds the whole ellipse: its in-plane faces are air
    for face in (out.data[:, 0], out.data[:, -1], out.data[:, :, 0], out.data[:, :, -1]):
        assert not face.any()
    # the trunk lies in front of the box centre: more tissue anterior (world -y)
    k, j, i = np.nonzero(out.data > 0)
    w = out.voxel_to_world(np.stack([i, j, k], 1).astype(float))
    assert abs(w[:, 1].mean() - (vol.center[1] - ANTERIOR_MM)) < 2.0


def test_completed_line_integral_matches_the_ellipse_chord():
    """Reference: the lateral line integral through the box centre's row is the scan's
    own water plus the ellipse's chord outside it (mm times 1/mm), to within a voxel at
    each end."""
    vol = box(value=2 * WATER)  # denser than the completed tissue, so both parts count
    out = complete_body(vol)
    row_j = round(out.world_to_voxel(vol.center)[1])
    integral = out.data[0, row_j, :].sum() * out.spacing[0]
    width = vol.shape_xyz[0] * vol.spacing[0]
    a, b = BODY_MM[0] / 2, BODY_MM[1] / 2
    chord = 2 * a * np.sqrt(1 - (ANTERIOR_MM / b) ** 2)
    expected = 2 * WATER * width + WATER * (chord - width)
    assert abs(integral - expected) < 2 * WATER * out.spacing[0]


def test_reconstruction_circle_outside_is_completed_inside_kept():
    """Air outside the inscribed circle is a reconstruction's padding and is completed;
    air inside it (a lung) is the patient's and stays."""
    vol = box((2, 60, 60), (2.0, 2.0, 2.0))
    data = vol.data.copy()
    _, j, i = np.indices(data.shape)
    r = np.hypot(i - 29.5, j - 29.5)
    data[r > 30] = 0.0  # outside the reconstruction circle
    data[r < 5] = 0.0  # air inside the field of view
    out = complete_body(vol.with_data(data))
    start = np.round(out.world_to_voxel(vol.voxel_to_world(np.zeros(3)))).astype(int)
    inner = out.data[:, start[1]:start[1] + 60, start[0]:start[0] + 60]
    assert np.all(inner[r > 30.5] == np.float32(WATER))  # the corners lie in the trunk
    assert np.all(inner[r < 5] == 0.0)


def test_a_fine_scan_is_resampled_to_fit():
    vol = box((4, 60, 60), (0.5, 0.5, 1.0))
    out = complete_body(vol, max_voxels=200_000)
    assert np.prod(out.shape_xyz) <= 200_000 * 1.2
    assert np.allclose(out.spacing, out.spacing[0]) and out.spacing[0] > 1.0
    np.testing.assert_allclose(out.center, vol.center, atol=out.spacing[0])


@pytest.mark.parametrize("bad", [(0.0, 200.0), (-1.0, 2.0), (np.nan, 3.0)])
def test_bad_body_size_is_a_clear_error(bad):
    with pytest.raises(DrrkitError, match="body_mm"):
        complete_body(box(), body_mm=bad)


@settings(max_examples=15, deadline=None)
@given(st.permutations([0, 1, 2]), st.lists(st.booleans(), min_size=3, max_size=3),
       st.floats(1.5, 3.0))
def test_completion_is_the_same_trunk_in_any_storage_order(order, flips, step):
    """The completed trunk is a world object: storing the scan with its index axes
    permuted and reversed gives the same tissue at the same world points."""
    vol = box((5, 30, 40), (step, step, 2.5))
    ref = complete_body(vol)
    # the same voxels stored another way: permute and flip the (i, j, k) axes
    data = vol.data.transpose(2, 1, 0)  # (i, j, k)
    data = np.transpose(data, order)
    direction = vol.direction[:, order].copy()
    spacing = vol.spacing[order]
    origin = vol.origin.copy()
    for axis, flip in enumerate(flips):
        if flip:
            data = np.flip(data, axis)
            origin = origin + direction[:, axis] * spacing[axis] * (data.shape[axis] - 1)
            direction[:, axis] *= -1
    other = Volume(np.ascontiguousarray(data.transpose(2, 1, 0)), spacing, origin, direction)
    got = complete_body(other)
    rng = np.random.default_rng(0)
    pts = ref.center + rng.uniform(-150, 150, (200, 3)) * np.array([1, 1, 0.02])
    a = np.round(ref.world_to_voxel(pts)).astype(int)
    b = np.round(got.world_to_voxel(pts)).astype(int)
    ok = np.all((a >= 0) & (a < ref.shape_xyz), 1) & np.all((b >= 0) & (b < got.shape_xyz), 1)
    va = ref.data[a[ok, 2], a[ok, 1], a[ok, 0]]
    vb = got.data[b[ok, 2], b[ok, 1], b[ok, 0]]
    assert ok.sum() > 50
    assert np.mean(va == vb) > 0.97  # voxels on the ellipse's rim may round either way


def test_only_the_slices_the_body_fills_are_completed():
    """A scan whose upper slices hold a whole 80 mm neck (air on the ring) and whose
    lower slices the trunk fills: only the lower ones get the completed trunk."""
    vol = disc(40.0, shape_zyx=(6, 60, 60))  # 120 mm field of view, the neck inside
    data = vol.data.copy()
    data[:3] = WATER  # the lower three slices: tissue to the edge
    vol = vol.with_data(data)
    assert needs_completion(vol)
    np.testing.assert_allclose(slice_truncation(vol), [1, 1, 1, 0, 0, 0])
    out = complete_body(vol)
    start = np.round(out.world_to_voxel(vol.voxel_to_world(np.zeros(3)))).astype(int)
    outside = np.ones(out.data.shape[1:], bool)
    outside[start[1]:start[1] + 60, start[0]:start[0] + 60] = False
    assert np.all(out.data[:3][:, outside].max(axis=1) == np.float32(WATER))
    assert not out.data[3:][:, outside].any()
