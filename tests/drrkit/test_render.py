"""CPU projector: closed-form answers, the NumPy reference, and invariances."""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import drrkit
from drrkit import DrrkitError, Geometry, Volume, circular_orbit, phantoms, reference, render
from drrkit.reference import (
    chord_lengths,
    piece_count_margins,
    render_reference,
    render_reference_joseph,
)
from drrkit.render import METHOD_TOLERANCE, resolve_method
from tests.drrkit.conftest import random_rotation


def axis_geometry(volume: Volume, size=(7, 7)) -> Geometry:
    """One parallel-ish view along +z through the volume centre, 1 mm pixels at the volume."""
    c = volume.center
    return Geometry.from_vectors([c - [0, 0, 1e6]], [c + [0, 0, 1e6]], [[2.0, 0, 0]],
                                 [[0, 2.0, 0]], *size)


def test_single_voxel_integrates_to_its_spacing():
    for spacing in ([1.0, 1.0, 1.0], [0.5, 0.8, 2.5]):
        vol = Volume(np.ones((1, 1, 1), np.float32), spacing=spacing)
        g = Geometry.from_vectors([[0, 0, -500]], [[0, 0, 500]], [[1e-3, 0, 0]], [[0, 1e-3, 0]],
                                  3, 3)
        img = render(vol, g, backend="cpu")
        np.testing.assert_allclose(img[0, 1, 1], spacing[2], rtol=5e-5)


def test_interior_voxel_tent_integral():
    # trilinear interpolation of one unit voxel is a tent; along an axis through its
    # centre the integral is exactly one voxel length. The midpoint rule is exact on it
    # when piece boundaries fall on the voxel centres (the tent's kinks): the 13.5 mm
    # chord is cut into 18, 36 or 90 pieces; any other step is off by O(step^2).
    data = np.zeros((9, 9, 9), np.float32)
    data[4, 4, 4] = 1.0
    vol = Volume(data, spacing=[1.0, 1.0, 1.5])
    g = Geometry.from_vectors([vol.center - [0, 0, 800]], [vol.center + [0, 0, 200]],
                              [[1e-3, 0, 0]], [[0, 1e-3, 0]], 1, 1)
    for step in (0.75, 0.375, 0.15):
        np.testing.assert_allclose(render(vol, g, backend="cpu", step=step)[0, 0, 0], 1.5,
                                   rtol=5e-5)
    for step in (0.37, 0.1):
        error = abs(render(vol, g, backend="cpu", step=step)[0, 0, 0] - 1.5)
        assert error < 0.1 * step**2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_volume_and_poses(seed):
    rng = np.random.default_rng(seed)
    vol = Volume(rng.random((6, 7, 8)).astype(np.float32),
                 spacing=rng.uniform(0.5, 2.0, 3), origin=rng.normal(size=3) * 5,
                 direction=random_rotation(seed))
    g = circular_orbit(vol, views=3, sad=40, sid=80, size=(6, 9), pixel_spacing=3.0,
                       start_angle=rng.uniform(0, 360), isocenter=vol.center + rng.normal(size=3))
    step = float(rng.uniform(0.2, 0.9))
    fast = render(vol, g, backend="cpu", step=step)
    ref = render_reference(vol, g, step)
    assert np.abs(ref).max() > 1
    np.testing.assert_allclose(fast, ref, atol=2e-4 * np.abs(ref).max())


def test_chord_lengths_are_the_line_integrals_of_ones():
    """Trilinear samples of a constant are the constant: a DRR of ones is the chord."""
    vol = Volume(np.ones((5, 6, 7), np.float32), spacing=(0.7, 1.1, 1.6), origin=(1, -2, 3),
                 direction=random_rotation(7))
    g = circular_orbit(vol, views=3, sad=30, sid=60, size=(9, 11), pixel_spacing=2.5,
                       start_angle=17)
    chords = chord_lengths(vol, g)
    assert (chords == 0).any() and chords.max() > 5  # misses and hits
    per_ray = np.zeros(g.shape)  # the per-ray clipping of the references
    for k, r, c, _, _, mm_per_unit, (a0, a1) in reference._index_rays(vol, g):
        per_ray[k, r, c] = max(a1 - a0, 0.0) * mm_per_unit
    np.testing.assert_allclose(chords, per_ray, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(render(vol, g, backend="cpu", step=0.3), chords, rtol=2e-5,
                               atol=1e-4)
    margins = piece_count_margins(vol, g, 0.3)
    assert np.all(np.isinf(margins) == (chords == 0))
    assert np.all(margins[chords > 0] <= 0.5)
    # a chord of exactly 2.5 steps sits half-way between jumps (0.001 off the slack)
    longest = np.unravel_index(chords.argmax(), chords.shape)
    np.testing.assert_allclose(piece_count_margins(vol, g, chords.max() / 2.5)[longest],
                               0.5 - 1e-3, atol=1e-9)


@pytest.mark.parametrize("seed", [3, 4])
def test_joseph_matches_its_reference(seed):
    rng = np.random.default_rng(seed)
    vol = Volume(rng.random((6, 7, 8)).astype(np.float32),
                 spacing=rng.uniform(0.5, 2.0, 3), origin=rng.normal(size=3) * 5,
                 direction=random_rotation(seed))
    g = circular_orbit(vol, views=3, sad=40, sid=80, size=(6, 9), pixel_spacing=3.0,
                       start_angle=rng.uniform(0, 360), isocenter=vol.center + rng.normal(size=3))
    fast = render(vol, g, backend="cpu", method="joseph")
    ref = render_reference_joseph(vol, g)
    assert np.abs(ref).max() > 1
    np.testing.assert_allclose(fast, ref, atol=2e-4 * np.abs(ref).max())


@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.sampled_from(["joseph", "trilinear"]))
def test_a_batch_is_its_views_rendered_one_by_one(seed, views, method):
    """The CPU kernels march rows of all views together: the order must not change a pixel."""
    rng = np.random.default_rng(seed)
    vol = Volume(rng.random((5, 6, 7)).astype(np.float32), spacing=rng.uniform(0.5, 2.0, 3))
    g = circular_orbit(vol, views=views, sad=40, sid=80, size=(int(rng.integers(2, 7)), 5),
                       pixel_spacing=3.0, start_angle=rng.uniform(0, 360))
    batch = render(vol, g, backend="cpu", method=method)
    for k in range(views):
        np.testing.assert_array_equal(batch[k], render(vol, g[k], backend="cpu", method=method)[0])


def test_joseph_closed_form_and_agreement_with_trilinear():
    e = phantoms.Ellipsoid((3.0, -2.0, 1.0), (30.0, 22.0, 40.0), 0.02, phantoms.rotation_z(25))
    vol = phantoms.voxelize([e], (80, 64, 64), spacing=(1.25, 1.25, 1.25), supersample=3)
    g = circular_orbit(vol, views=4, sad=300, sid=600, size=40, pixel_spacing=3.0,
                       isocenter=[0, 0, 0], start_angle=10)
    joseph = render(vol, g, backend="cpu", method="joseph")
    exact = phantoms.line_integrals([e], g)
    interior = exact > 0.5 * exact.max()
    assert (np.abs(joseph - exact)[interior] / exact[interior]).max() < 0.02
    assert abs(joseph.sum() / exact.sum() - 1) < 2e-3
    trilinear = render(vol, g, backend="cpu", step=0.25)
    assert np.abs(joseph - trilinear).max() < 0.05 * exact.max()
    with pytest.raises(DrrkitError, match="step"):
        render(vol, g, backend="cpu", method="joseph", step=1.0)
    with pytest.raises(DrrkitError, match="method"):
        render(vol, g, backend="cpu", method="siddon")


def _rigid(seed) -> np.ndarray:
    rigid = np.eye(4)
    rigid[:3, :3] = random_rotation(seed)
    rigid[:3, 3] = np.random.default_rng(seed).normal(size=3)
    return rigid


def test_ellipsoid_against_closed_form_chords():
    # a voxelised, rotated ellipsoid against its exact chord lengths: accurate inside,
    # mass-preserving, and the error shrinks when the voxels do
    e = phantoms.Ellipsoid((3.0, -2.0, 1.0), (30.0, 22.0, 40.0), 0.02, phantoms.rotation_z(25))
    errors = []
    for voxel in (1.6, 0.8):
        n = round(80 / voxel)
        vol = phantoms.voxelize([e], (round(100 / voxel), n, n), spacing=(voxel,) * 3,
                                supersample=4)
        g = circular_orbit(vol, views=3, sad=300, sid=600, size=48, pixel_spacing=3.0,
                           isocenter=[0, 0, 0])
        img = render(vol, g, backend="cpu", step=voxel / 4)
        exact = phantoms.line_integrals([e], g)
        interior = exact > 0.5 * exact.max()  # away from the voxelised rim
        rel = np.abs(img - exact)[interior] / exact[interior]
        assert rel.max() < 0.02
        assert abs(img.sum() / exact.sum() - 1) < 2e-3
        errors.append(np.abs(img - exact).mean() / exact.max())
    assert errors[0] < 0.005 and errors[1] < 0.5 * errors[0]


def test_linear_in_mu():
    rng = np.random.default_rng(5)
    a, b = rng.random((2, 8, 8, 8)).astype(np.float32)
    g = circular_orbit(views=2, sad=50, sid=100, size=10, pixel_spacing=2.0, isocenter=[3.5] * 3)
    ra = render(Volume(a), g, backend="cpu")
    rb = render(Volume(b), g, backend="cpu")
    rab = render(Volume(2 * a + 3 * b), g, backend="cpu")
    np.testing.assert_allclose(rab, 2 * ra + 3 * rb, rtol=1e-5, atol=1e-5)


def test_marker_projects_to_image_peak():
    bead = phantoms.Ellipsoid((20.0, -15.0, 25.0), (3.0, 3.0, 3.0), 0.5)
    body = phantoms.Ellipsoid((0.0, 0.0, 0.0), (40.0, 40.0, 50.0), 0.02)
    vol = phantoms.voxelize([body, bead], (64, 48, 48), spacing=(2.0, 2.0, 2.0))
    g = circular_orbit(vol, views=5, sad=300, sid=600, size=96, pixel_spacing=2.0)
    img = render(vol, g, backend="cpu")
    expected = drrkit.project_points([bead.center], g).pixels[:, 0]
    for k in range(len(g)):
        row, col = np.unravel_index(np.argmax(img[k]), img[k].shape)
        assert abs(col - expected[k, 0]) <= 1 and abs(row - expected[k, 1]) <= 1


def test_orientation_superior_up_left_right_in_view0():
    vol = phantoms.default_phantom(48)
    img = render(vol, circular_orbit(vol, views=1, size=96, pixel_spacing=6.0), backend="cpu")[0]
    marker = drrkit.project_points([phantoms.torso_ellipsoids()[4].center],
                                   circular_orbit(vol, views=1, size=96, pixel_spacing=6.0))
    col, row = np.round(marker.pixels[0, 0]).astype(int)
    assert col > 48 and row < 48  # patient's left on the image right, superior up
    assert img[row, col] > img[row, 95 - col] + 0.5  # the bead, not its mirror image


@given(seed=st.integers(0, 2**31 - 1))
@example(seed=733)  # a ray within float32 rounding of a piece-count jump
@example(seed=3949)  # two such rays, each repeated by the orbit's and the rows' symmetry
def test_storage_orientation_does_not_change_the_drr(seed):
    # the same physical voxels stored with permuted / flipped axes render identically
    rng = np.random.default_rng(seed)
    base = Volume(rng.random((5, 6, 7)).astype(np.float32), spacing=[0.9, 1.3, 1.7],
                  origin=[1, -2, 3])
    perm = rng.permutation(3)
    flips = rng.integers(0, 2, 3).astype(bool)
    stored = _restore(base, perm, flips)
    g = circular_orbit(base, views=2, sad=60, sid=120, size=(9, 8), pixel_spacing=2.0,
                       start_angle=float(rng.uniform(0, 360)))
    a = render(stored, g, backend="cpu", step=0.3)
    b = render(base, g, backend="cpu", step=0.3)
    # a ray whose chord lies within float32 rounding of a whole number of steps may be cut
    # into one piece more in one storage order than in the other (the midpoint rules of N
    # and N + 1 pieces); every other ray renders the same. The two views lie 180 degrees
    # apart and the detector's rows mirror about its centre, so a chord length (and its
    # margin) repeats up to four times: the exact comparison must still cover most rays
    tipping = reference.piece_count_margins(base, g, 0.3) < 1e-3
    assert tipping.mean() < 0.25
    np.testing.assert_allclose(a[~tipping], b[~tipping], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(a[tipping], b[tipping], rtol=1e-2, atol=1e-2 * np.abs(b).max())


def _restore(vol: Volume, perm, flips) -> Volume:
    """The same physical image with index axes permuted (new axis a = old axis perm[a]) and flipped."""
    data = np.transpose(vol.data, [2 - p for p in perm[::-1]])  # (k,j,i) order of new axes
    n_old = np.array(vol.shape_xyz)
    direction = vol.direction[:, perm] * np.where(flips, -1, 1)
    spacing = vol.spacing[perm]
    first = np.where(flips, n_old[perm] - 1, 0)
    idx_old = np.zeros(3)
    idx_old[perm] = first
    origin = vol.voxel_to_world(idx_old)
    for a, f in enumerate(flips):
        if f:
            data = np.flip(data, axis=2 - a)
    return Volume(np.ascontiguousarray(data), spacing, origin, direction)


@given(seed=st.integers(0, 2**31 - 1))
def test_rigid_motion_of_volume_and_geometry_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    vol = Volume(rng.random((6, 5, 7)).astype(np.float32), spacing=[1.1, 0.9, 1.4])
    g = circular_orbit(vol, views=2, sad=50, sid=100, size=(8, 8), pixel_spacing=2.5)
    rigid = _rigid(seed)
    rigid[:3, 3] *= 100
    a = render(vol, g, backend="cpu", step=0.4)
    b = render(vol.moved(rigid), g.moved(rigid), backend="cpu", step=0.4)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * a.max())


def test_intensity_output_and_errors():
    vol = Volume(np.full((4, 4, 4), 0.1, np.float32))
    g = circular_orbit(vol, views=2, sad=50, sid=100, size=5, pixel_spacing=1.0)
    integral = render(vol, g, backend="cpu")
    np.testing.assert_allclose(render(vol, g, backend="cpu", output="intensity"),
                               np.exp(-integral), rtol=1e-6)
    with pytest.raises(DrrkitError, match="output"):
        render(vol, g, backend="cpu", output="bogus")
    with pytest.raises(DrrkitError, match="backend"):
        render(vol, g, backend="metal")
    with pytest.raises(DrrkitError, match="step"):
        render(vol, g, backend="cpu", step=0)
    with pytest.raises(DrrkitError, match="non-finite"):
        render(vol.with_data(np.full((4, 4, 4), np.nan, np.float32)), g, backend="cpu")


def test_explicit_cuda_without_gpu_is_a_clear_error():
    if drrkit.cuda_available():
        pytest.skip("a GPU is present")
    vol = Volume(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(DrrkitError, match="cuda.*cpu"):
        render(vol, circular_orbit(vol, views=1, size=4), backend="cuda")
    assert render(vol, circular_orbit(vol, views=1, size=4), backend="auto").shape == (1, 4, 4)


def test_label_path_lengths():
    labels = np.zeros((20, 20, 20), np.int16)
    labels[5:15, 5:15, 2:8] = 3    # 6 voxels along x
    labels[5:15, 5:15, 10:19] = 7  # 9 voxels along x
    vol = Volume(labels, spacing=[2.0, 1.0, 1.0])
    c = vol.center
    g = Geometry.from_vectors([c - [1e6, 0, 0]], [c + [1e6, 0, 0]], [[0, 2, 0]], [[0, 0, -2]],
                              1, 1)
    paths, values = drrkit.render_labels(vol, g, backend="cpu", step=0.2)
    assert list(values) == [3, 7] and paths.shape == (1, 2, 1, 1)
    np.testing.assert_allclose(paths[0, :, 0, 0], [12.0, 18.0], rtol=1e-3)


def test_default_method_is_joseph_on_the_cpu_and_trilinear_with_a_step():
    e = phantoms.Ellipsoid((2.0, 1.0, -3.0), (20.0, 15.0, 25.0), 0.02, phantoms.rotation_z(10))
    vol = phantoms.voxelize([e], (40, 32, 32), spacing=(1.5, 1.5, 1.5), supersample=2)
    g = circular_orbit(vol, views=3, sad=200, sid=400, size=24, pixel_spacing=3.0)
    np.testing.assert_array_equal(render(vol, g, backend="cpu"),
                                  render(vol, g, backend="cpu", method="joseph"))
    np.testing.assert_array_equal(render(vol, g, backend="cpu", step=0.5),
                                  render(vol, g, backend="cpu", method="trilinear", step=0.5))


@pytest.mark.parametrize(("method", "backend", "step", "chosen"), [
    ("auto", "cpu", None, "joseph"), ("auto", "cpu", 0.5, "trilinear"),
    ("auto", "cuda", None, "trilinear"), ("trilinear", "cpu", None, "trilinear"),
    ("joseph", "cpu", None, "joseph"),
])
def test_resolve_method(method, backend, step, chosen):
    assert resolve_method(method, backend, step) == chosen


@pytest.mark.parametrize(("method", "backend", "step", "message"), [
    ("joseph", "cuda", None, "cpu. only"), ("joseph", "cpu", 1.0, "step"),
    ("siddon", "cpu", None, "unknown method"),
])
def test_resolve_method_refuses(method, backend, step, message):
    with pytest.raises(DrrkitError, match=message):
        resolve_method(method, backend, step)


def test_cpu_and_cuda_default_rules_agree_within_the_stated_tolerance():
    # the benchmark's analytic torso on a coarser grid: Joseph (the CPU default) against
    # trilinear sampling every half voxel (the CUDA default's rule, checked against the
    # CPU's trilinear kernel in test_cuda.py)
    ellipsoids = phantoms.torso_ellipsoids(0.8)
    vol = phantoms.voxelize(ellipsoids, (64, 64, 64), (4.0, 4.0, 4.0), supersample=2)
    g = circular_orbit(vol, views=4, sad=850, sid=1020, size=50, pixel_spacing=8.0,
                       start_angle=7.0)
    joseph = render(vol, g, backend="cpu")
    trilinear = render(vol, g, backend="cpu", method="trilinear")
    exact = phantoms.line_integrals(ellipsoids, g)
    peak = float(exact.max())

    def rms(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2))) / peak

    assert rms(joseph, trilinear) < METHOD_TOLERANCE
    # the two rules differ far less than either differs from the exact integrals
    assert rms(joseph, trilinear) < 0.5 * min(rms(joseph, exact), rms(trilinear, exact))
