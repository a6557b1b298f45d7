"""drrkit.triangulate / triangulate_robust: exact answers, properties, degenerate cases,
backend agreement and outlier rejection."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import drrkit
from drrkit import DrrkitError

try:
    import torch
except ImportError:  # torch is optional (the 'learn' extra)
    torch = None
from drrkit.triangulation import (
    MIN_ANGLE_DEG,
    _Ops,
    _solve_arrays,
    angle_limit,
    triangulate,
    triangulate_robust,
)

#: absolute tolerance in mm for scenes of ~1000 mm, per dtype
ATOL = {np.float64: 1e-8, np.float32: 2e-2}


# ---------------------------------------------------------------------- helpers
def naive(origins, directions, weights=None):
    """Slow reference for one problem: stacked (I - n n^T) rows solved by lstsq."""
    origins = np.asarray(origins, np.float64)
    directions = np.asarray(directions, np.float64)
    weights = np.ones(len(origins)) if weights is None else np.asarray(weights, np.float64)
    rows, rhs, projectors = [], [], []
    for a, d, w in zip(origins, directions, weights):
        if w == 0:
            continue
        n = d / np.linalg.norm(d)
        p = np.eye(3) - np.outer(n, n)
        rows.append(np.sqrt(w) * p)
        rhs.append(np.sqrt(w) * p @ a)
        projectors.append((p, a, w))
    point = np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)[0]
    sq = sum(w * np.sum((p @ (point - a)) ** 2) for p, a, w in projectors)
    return point, np.sqrt(sq / sum(w for _, _, w in projectors))


def rays_through(point, rng, k, radius=500.0):
    """K origins on a sphere around ``point`` and unit directions towards it."""
    v = rng.normal(size=(k, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    origins = point + radius * v
    return origins, -v


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def well_spread(directions, degrees=5.0):
    """Some pair of rays crosses at more than ``degrees`` (so the problem is valid)."""
    n = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    cos = np.abs(n @ n.T)
    return cos.min() < np.cos(np.radians(degrees))


def noisy_batch(rng, n, k, noise=2.0):
    """n problems of k rays (origins on a 500 mm sphere) missing a point by ~noise mm."""
    points = rng.normal(0, 50, (n, 3))
    v = rng.normal(size=(n, k, 3))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    origins = points[:, None] + 500 * v + rng.normal(0, noise, (n, k, 3))
    directions = -v * rng.uniform(0.5, 3.0, (n, k, 1))
    return origins, directions, points


# ---------------------------------------------------------------------- exact answers
def test_two_perpendicular_rays_meet_at_the_origin():
    r = triangulate([[0.0, -500, 0], [500, 0, 0]], [[0.0, 2, 0], [-3, 0, 0]])
    np.testing.assert_allclose(r.points, 0, atol=1e-12)
    assert r.valid and r.rms < 1e-12


def test_skew_rays_give_the_midpoint_and_half_the_gap():
    # x axis at z=0 and y axis at z=2: closest points (0,0,0) and (0,0,2), 1 mm from each
    r = triangulate([[5.0, 0, 0], [0, -7, 2]], [[1.0, 0, 0], [0, 1, 0]])
    np.testing.assert_allclose(r.points, [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(r.rms, 1.0, rtol=1e-12)


def test_agrees_with_the_naive_reference_on_noisy_weighted_problems():
    rng = np.random.default_rng(0)
    origins, directions, _ = noisy_batch(rng, 200, 7)
    weights = rng.uniform(0, 2, (200, 7)) * (rng.uniform(size=(200, 7)) > 0.2)
    r = triangulate(origins, directions, weights)
    for i in range(200):
        if (weights[i] > 0).sum() < 2:
            assert not r.valid[i]
            continue
        point, rms = naive(origins[i], directions[i], weights[i])
        assert r.valid[i]
        np.testing.assert_allclose(r.points[i], point, atol=1e-9)
        np.testing.assert_allclose(r.rms[i], rms, rtol=1e-9, atol=1e-9)


def test_numba_kernel_matches_the_array_version():
    rng = np.random.default_rng(1)
    origins, directions, _ = noisy_batch(rng, 3000, 6)
    weights = rng.uniform(0, 1, (3000, 6)) * (rng.uniform(size=(3000, 6)) > 0.5)
    for w in (None, weights):
        r = triangulate(origins, directions, w)
        points, rms, valid = _solve_arrays(_Ops("numpy"), origins, directions, w,
                                           angle_limit(MIN_ANGLE_DEG))
        np.testing.assert_array_equal(r.valid, valid)
        np.testing.assert_allclose(r.points, points, atol=1e-9)
        np.testing.assert_allclose(r.rms, rms, atol=1e-9)
    assert 0.2 < valid.mean() < 1.0  # both valid and invalid problems were compared


def test_parallel_and_serial_kernels_agree():
    from drrkit.config import PARALLEL_MIN_PROBLEMS

    rng = np.random.default_rng(2)
    n = PARALLEL_MIN_PROBLEMS + 10
    origins, directions, _ = noisy_batch(rng, n, 4)
    big = triangulate(origins, directions)
    small = triangulate(origins[:100], directions[:100])
    # the same formula compiled twice: fast-math may order each copy's float64 sums
    # differently (seen once in a full run: 6e-14 relative), never more than rounding
    np.testing.assert_allclose(big.points[:100], small.points, rtol=1e-12, atol=0)
    np.testing.assert_allclose(big.rms[:100], small.rms, rtol=1e-10, atol=1e-15)
    np.testing.assert_array_equal(big.valid[:100], small.valid)


# ---------------------------------------------------------------------- properties
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(2, 12),
       scale=st.floats(1.0, 1000.0))
def test_exact_recovery_without_noise(seed, k, scale):
    rng = np.random.default_rng(seed)
    point = rng.normal(0, scale, 3)
    origins, directions = rays_through(point, rng, k)
    directions = directions * rng.choice([-1, 1], (k, 1)) * rng.uniform(0.01, 100, (k, 1))
    assume(well_spread(directions))
    r = triangulate(origins, directions)
    assert r.valid
    np.testing.assert_allclose(r.points, point, atol=1e-9 * (scale + 500))
    assert r.rms < 1e-9 * (scale + 500)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(2, 10))
def test_invariant_to_direction_scaling(seed, k):
    rng = np.random.default_rng(seed)
    origins, directions, _ = noisy_batch(rng, 1, k)
    factors = rng.choice([-1, 1], (1, k, 1)) * 10.0 ** rng.uniform(-3, 3, (1, k, 1))
    a = triangulate(origins, directions)
    b = triangulate(origins, directions * factors)
    assert a.valid == b.valid
    np.testing.assert_allclose(b.points, a.points, atol=1e-9)
    np.testing.assert_allclose(b.rms, a.rms, atol=1e-9)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(2, 10),
       shift=st.floats(-1e4, 1e4))
def test_rigid_motion_of_the_scene_moves_the_point(seed, k, shift):
    rng = np.random.default_rng(seed)
    origins, directions, _ = noisy_batch(rng, 1, k)
    rot = random_rotation(rng)
    t = rng.normal(size=3) * shift
    a = triangulate(origins, directions)
    b = triangulate(origins @ rot.T + t, directions @ rot.T)
    assert a.valid == b.valid
    np.testing.assert_allclose(b.points, a.points @ rot.T + t, atol=1e-8 * (1 + abs(shift)))
    np.testing.assert_allclose(b.rms, a.rms, atol=1e-8 * (1 + abs(shift)))


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(3, 8), factor=st.floats(1e-3, 1e3))
def test_weights_scale_free_integer_weights_repeat_rays_zero_removes(seed, k, factor):
    rng = np.random.default_rng(seed)
    origins, directions, _ = noisy_batch(rng, 1, k)
    o, d = origins[0], directions[0]
    counts = rng.integers(0, 4, k)
    assume((counts > 0).sum() >= 2 and well_spread(d[counts > 0], 10))
    weighted = triangulate(o, d, counts)
    repeated = triangulate(np.repeat(o, counts, 0), np.repeat(d, counts, 0))
    assert weighted.valid and repeated.valid
    np.testing.assert_allclose(weighted.points, repeated.points, atol=1e-9)
    np.testing.assert_allclose(weighted.rms, repeated.rms, atol=1e-9)
    scaled = triangulate(o, d, counts * factor)
    np.testing.assert_allclose(scaled.points, weighted.points, atol=1e-9)
    np.testing.assert_allclose(scaled.rms, weighted.rms, atol=1e-9)
    # weight 0 ignores the ray entirely, even when it holds NaN
    o_nan, d_nan = o.copy(), d.copy()
    o_nan[counts == 0] = np.nan
    d_nan[counts == 0] = np.nan
    with_nan = triangulate(o_nan, d_nan, counts)
    np.testing.assert_allclose(with_nan.points, weighted.points, atol=1e-9)


# ---------------------------------------------------------------------- degenerate cases
@pytest.mark.parametrize("origins, directions, weights", [
    ([[0.0, 0, 0]], [[1.0, 0, 0]], None),  # one ray
    ([[0.0, 0, 0], [0, 5, 0]], [[1.0, 0, 0], [3, 0, 0]], None),  # parallel
    ([[0.0, 0, 0], [0, 5, 0]], [[1.0, 0, 0], [-1, 0, 0]], None),  # anti-parallel
    ([[0.0, 0, 0], [0, 5, 0]], [[1.0, 0, 0], [0, 1, 0]], [1.0, 0.0]),  # one weighted ray
    ([[0.0, 0, 0], [0, 5, 0]], [[1.0, 0, 0], [0, 1, 0]], [0.0, 0.0]),  # no rays
    ([[0.0, 0, 0], [0, 5, 0]], [[1.0, 0, 0], [0, 0, 0]], None),  # zero direction
    ([[0.0, 0, np.nan], [0, 5, 0]], [[1.0, 0, 0], [0, 1, 0]], None),  # NaN origin
    ([[0.0, 0, 0], [0, 5, 0]], [[1.0, np.inf, 0], [0, 1, 0]], None),  # inf direction
    (np.zeros((0, 3)), np.zeros((0, 3)), None),  # K = 0
])
def test_degenerate_problems_are_invalid_and_nan(origins, directions, weights):
    r = triangulate(origins, directions, weights)
    assert not r.valid
    assert np.isnan(r.points).all() and np.isnan(r.rms)
    # the array-expression version (torch's autograd path) agrees
    w = None if weights is None else np.asarray(weights)
    points, rms, valid = _solve_arrays(_Ops("numpy"), np.asarray(origins), np.asarray(directions),
                                       w, angle_limit(MIN_ANGLE_DEG))
    assert not valid and np.isnan(points).all() and np.isnan(rms)


def test_near_parallel_rays_are_invalid_below_the_angle_limit():
    for angle, expected in ((0.9 * MIN_ANGLE_DEG, False), (1.1 * MIN_ANGLE_DEG, True),
                            (0.0, False), (1e-6, False), (89.0, True)):
        a = np.radians(angle)
        r = triangulate([[0.0, 0, 0], [0, 0, 0]], [[1.0, 0, 0], [np.cos(a), np.sin(a), 0]])
        assert bool(r.valid) == expected, angle
    # the limit is a parameter
    a = np.radians(5.0)
    rays = ([[0.0, 0, 0], [0, 0, 0]], [[1.0, 0, 0], [np.cos(a), np.sin(a), 0]])
    assert triangulate(*rays, min_angle_deg=4.0).valid
    assert not triangulate(*rays, min_angle_deg=6.0).valid


def test_coplanar_rays_through_one_point_are_valid_coincident_lines_are_not():
    # seven rays in the plane z = 10, all through (0, 0, 10): the point is determined
    angles = np.linspace(0, np.pi, 7, endpoint=False)
    d = np.stack([np.cos(angles), np.sin(angles), 0 * angles], 1)
    o = -300 * d + [0, 0, 10]
    r = triangulate(o, d)
    assert r.valid
    np.testing.assert_allclose(r.points, [0, 0, 10], atol=1e-10)
    # seven rays along one line (origins spread along it): undetermined along the line
    line = np.tile([[1.0, 2, 3]], (7, 1))
    assert not triangulate(np.arange(7)[:, None] * line, line).valid


@pytest.mark.parametrize("weights", [[1.0, -1.0], [1.0, np.nan], [np.inf, 1.0]])
def test_bad_weights_raise(weights):
    o, d = [[0.0, -500, 0], [500, 0, 0]], [[0.0, 1, 0], [-1, 0, 0]]
    with pytest.raises(DrrkitError, match="weights"):
        triangulate(o, d, weights)
    with pytest.raises(DrrkitError, match="weights"):
        triangulate_robust(o, d, weights)


def test_bad_input_raises_one_line_errors():
    o, d = np.zeros((4, 3)), np.ones((4, 3))
    cases = [
        lambda: triangulate(np.zeros((4, 2)), d),
        lambda: triangulate(o, np.zeros(3)),
        lambda: triangulate(o, np.ones((5, 3))),
        lambda: triangulate(o, d, np.ones(3)),
        lambda: triangulate(o, d, backend="gpu"),
        lambda: triangulate(o, d, accumulate="float16"),
        lambda: triangulate(o, d, min_angle_deg=0.0),
        lambda: triangulate(o, d, min_angle_deg=120.0),
        lambda: triangulate_robust(o, d, threshold=-1.0),
        lambda: triangulate_robust(o, d, min_inliers=1),
        lambda: triangulate_robust(o, d, refinements=0),
    ]
    for case in cases:
        with pytest.raises(DrrkitError) as info:
            case()
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- shapes and dtypes
def test_leading_dims_broadcasting_and_empty_batches():
    rng = np.random.default_rng(3)
    origins, directions, _ = noisy_batch(rng, 24, 5)
    flat = triangulate(origins, directions)
    shaped = triangulate(origins.reshape(2, 3, 4, 5, 3), directions.reshape(2, 3, 4, 5, 3))
    assert shaped.points.shape == (2, 3, 4, 3) and shaped.valid.shape == (2, 3, 4)
    np.testing.assert_array_equal(shaped.points.reshape(24, 3), flat.points)
    # shared origins (K, 3) against a batch of directions, per-view weights (K,)
    shared = triangulate(origins[0], directions, np.arange(5.0))
    assert shared.points.shape == (24, 3)
    one = triangulate(origins[0], directions[7], np.arange(5.0))
    np.testing.assert_allclose(shared.points[7], one.points, atol=1e-12)
    empty = triangulate(np.zeros((0, 5, 3)), np.ones((0, 5, 3)))
    assert empty.points.shape == (0, 3) and empty.rms.shape == (0,)
    assert triangulate_robust(np.zeros((0, 5, 3)), np.ones((0, 5, 3))).inliers.shape == (0, 5)


def test_float32_in_float32_out_and_close_to_float64():
    rng = np.random.default_rng(4)
    origins, directions, _ = noisy_batch(rng, 500, 8)
    r64 = triangulate(origins, directions)
    r32 = triangulate(origins.astype(np.float32), directions.astype(np.float32))
    assert r32.points.dtype == np.float32 and r32.rms.dtype == np.float32
    np.testing.assert_allclose(r32.points, r64.points, atol=ATOL[np.float32])
    np.testing.assert_allclose(r32.rms, r64.rms, atol=ATOL[np.float32])
    ints = triangulate(np.array([[0, -500, 0], [500, 0, 0]]), np.array([[0, 1, 0], [-1, 0, 0]]))
    assert ints.points.dtype == np.float64


# ---------------------------------------------------------------------- drrkit geometry
def test_projected_pixels_triangulate_back_to_the_points():
    g = drrkit.circular_orbit(views=10, sad=500, sid=1000, size=512, pixel_spacing=2.0)
    rng = np.random.default_rng(5)
    points = rng.uniform(-100, 100, (50, 3))
    pixels = drrkit.project_points(points, g).pixels  # (K, N, 2)
    origins, directions = drrkit.pixel_rays(g, pixels)  # (K, N, 3)
    r = triangulate(origins.transpose(1, 0, 2), directions.transpose(1, 0, 2))
    assert r.valid.all()
    np.testing.assert_allclose(r.points, points, atol=1e-8)
    # a missing view: NaN pixels with weight 0
    pixels[3, :10] = np.nan
    origins, directions = drrkit.pixel_rays(g, pixels)
    weights = np.isfinite(pixels).all(-1).T.astype(float)
    r = triangulate(origins.transpose(1, 0, 2), directions.transpose(1, 0, 2), weights)
    assert r.valid.all()
    np.testing.assert_allclose(r.points, points, atol=1e-8)


def test_opposite_views_alone_are_degenerate():
    g = drrkit.circular_orbit(views=2, size=256)  # sources 180 degrees apart
    pixels = drrkit.project_points([[1.0, 2.0, 3.0]], g).pixels
    origins, directions = drrkit.pixel_rays(g, pixels)
    assert not triangulate(origins[:, 0], directions[:, 0]).valid


# ---------------------------------------------------------------------- robust variant
def outlier_scene(rng, n=400, k=10, noise_px=1.0, rate=0.2, threshold=5.0):
    g = drrkit.circular_orbit(views=k, sad=500, sid=1000, size=1024, pixel_spacing=2.0)
    points = rng.normal(0, 40, (n, 3))
    pixels = drrkit.project_points(points, g).pixels + rng.normal(0, noise_px, (k, n, 2))
    outlier = rng.uniform(size=(k, n)) < rate
    # an outlier is a detection 3T..12T mm (at the isocentre, magnification 2) away
    shift = rng.normal(size=(k, n, 2))
    shift *= rng.uniform(3, 12, (k, n, 1)) * threshold / np.linalg.norm(shift, axis=-1,
                                                                       keepdims=True)
    pixels = np.where(outlier[..., None], pixels + shift, pixels)
    origins, directions = drrkit.pixel_rays(g, pixels)
    return (origins.transpose(1, 0, 2), directions.transpose(1, 0, 2), points,
            outlier.T)


def test_robust_rejects_injected_outliers():
    rng = np.random.default_rng(6)
    origins, directions, points, outlier = outlier_scene(rng)
    r = triangulate_robust(origins, directions, threshold=5.0)
    assert r.valid.all()
    rejected = (~r.inliers[outlier]).mean()
    kept = r.inliers[~outlier].mean()
    assert rejected == 1.0, rejected
    assert kept >= 0.99, kept
    robust_error = np.linalg.norm(r.points - points, axis=1)
    plain_error = np.linalg.norm(triangulate(origins, directions).points - points, axis=1)
    assert np.median(robust_error) < 1.0 and robust_error.max() < 3.0
    assert np.median(plain_error) > 3 * np.median(robust_error)
    # rms is over the inliers only
    assert np.all(r.rms < 5.0)


def test_robust_without_outliers_equals_least_squares():
    rng = np.random.default_rng(7)
    origins, directions, _, _ = outlier_scene(rng, n=100, rate=0.0)
    r = triangulate_robust(origins, directions)
    assert r.inliers.all()
    plain = triangulate(origins, directions)
    np.testing.assert_allclose(r.points, plain.points, atol=1e-9)
    np.testing.assert_allclose(r.rms, plain.rms, atol=1e-9)


def test_robust_respects_weights_and_min_inliers():
    rng = np.random.default_rng(8)
    origins, directions, _, _ = outlier_scene(rng, n=50, rate=0.0)
    weights = np.ones(origins.shape[:2])
    weights[:, :8] = 0  # only two views left
    r = triangulate_robust(origins, directions, weights)
    assert r.valid.all() and not r.inliers[:, :8].any() and r.inliers[:, 8:].all()
    assert not triangulate_robust(origins, directions, weights, min_inliers=3).valid.any()
    # two rays that miss each other by far more than the threshold: no consensus
    miss = triangulate_robust([[5.0, 0, 0], [0, -7, 50]], [[1.0, 0, 0], [0, 1, 0]])
    assert not miss.valid and not miss.inliers.any() and np.isnan(miss.points).all()


# ---------------------------------------------------------------------- torch backend
TORCH_ATOL = {"float64": 1e-9, "float32": 2e-2}


needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch")


@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("accumulate", ["float64", "input"])
@pytest.mark.parametrize("grad", [True, False], ids=["autograd-path", "numba-path"])
def test_torch_cpu_agrees_with_numpy(dtype, accumulate, grad):
    atol = TORCH_ATOL[dtype] * (10 if accumulate == "input" else 1)
    dtype = getattr(torch, dtype)
    rng = np.random.default_rng(9)
    origins, directions, _ = noisy_batch(rng, 400, 6)
    weights = rng.uniform(0, 1, (400, 6)) * (rng.uniform(size=(400, 6)) > 0.4)
    weights[0] = 0  # an invalid problem
    ref = triangulate(origins, directions, weights)
    o = torch.tensor(origins, dtype=dtype, requires_grad=grad)
    r = triangulate(o, torch.tensor(directions, dtype=dtype),
                    torch.tensor(weights, dtype=dtype), accumulate=accumulate)
    assert isinstance(r.points, torch.Tensor) and r.points.dtype == dtype
    assert r.points.requires_grad == grad
    np.testing.assert_array_equal(r.valid.numpy(), ref.valid)
    np.testing.assert_allclose(r.points.detach().numpy(), ref.points, atol=atol)
    np.testing.assert_allclose(r.rms.detach().numpy(), ref.rms, atol=atol)


@needs_torch
def test_torch_backend_from_numpy_input_and_type_errors():
    o, d = np.array([[0.0, -500, 0], [500, 0, 0]]), np.array([[0.0, 1, 0], [-1, 0, 0]])
    r = triangulate(o, d, backend="torch")
    assert isinstance(r.points, torch.Tensor)
    with pytest.raises(DrrkitError, match="numpy"):
        triangulate(torch.tensor(o), d, backend="numpy")
    if not drrkit.cuda_available():
        with pytest.raises(DrrkitError, match="cupy"):
            triangulate(o, d, backend="cupy")


@needs_torch
def test_torch_is_differentiable():
    rng = np.random.default_rng(10)
    origins, directions, _ = noisy_batch(rng, 3, 4)
    o = torch.tensor(origins, requires_grad=True)
    d = torch.tensor(directions, requires_grad=True)
    w = torch.tensor(rng.uniform(0.5, 1.5, (3, 4)), requires_grad=True)
    torch.autograd.gradcheck(lambda o, d, w: triangulate(o, d, w).points, (o, d, w))
    # a missing NaN view and an invalid problem do not poison the gradient
    o2 = o.detach().clone()
    o2[0, 0] = float("nan")
    o2 = o2.requires_grad_()
    w2 = torch.ones(3, 4)
    w2[0, 0] = 0
    w2[1, 1:] = 0  # problem 1 has one ray: invalid
    r = triangulate(o2, d, w2)
    assert not bool(r.valid[1])
    r.points[r.valid].sum().backward()
    assert torch.isfinite(o2.grad).all() and torch.isfinite(d.grad).all()


@needs_torch
def test_torch_robust_agrees_with_numpy():
    rng = np.random.default_rng(11)
    origins, directions, _, _ = outlier_scene(rng, n=60)
    ref = triangulate_robust(origins, directions)
    for grad in (False, True):
        r = triangulate_robust(torch.tensor(origins, requires_grad=grad),
                               torch.tensor(directions))
        np.testing.assert_array_equal(r.inliers.numpy(), ref.inliers)
        np.testing.assert_allclose(r.points.detach().numpy(), ref.points, atol=1e-9)
    r.points[r.valid].sum().backward()


@pytest.mark.cuda
@needs_torch
def test_torch_cuda_agrees_with_numpy():
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    rng = np.random.default_rng(12)
    origins, directions, _ = noisy_batch(rng, 1000, 10)
    ref = triangulate(origins, directions)
    r = triangulate(torch.tensor(origins, device="cuda"), torch.tensor(directions, device="cuda"))
    assert r.points.device.type == "cuda"
    np.testing.assert_allclose(r.points.cpu().numpy(), ref.points, atol=1e-9)


# ---------------------------------------------------------------------- CUDA kernel
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("accumulate", ["float64", "input"])
def test_cupy_agrees_with_numpy(dtype, accumulate):
    import cupy

    rng = np.random.default_rng(13)
    origins, directions, _ = noisy_batch(rng, 5000, 10)
    weights = rng.uniform(0, 1, (5000, 10)) * (rng.uniform(size=(5000, 10)) > 0.5)
    ref = triangulate(origins, directions, weights)
    r = triangulate(cupy.asarray(origins, dtype), cupy.asarray(directions, dtype),
                    cupy.asarray(weights, dtype), accumulate=accumulate)
    assert isinstance(r.points, cupy.ndarray) and r.points.dtype == dtype
    np.testing.assert_array_equal(r.valid.get(), ref.valid)
    atol = ATOL[dtype] * (10 if accumulate == "input" and dtype == np.float32 else 1)
    np.testing.assert_allclose(r.points.get(), ref.points, atol=atol)
    robust = triangulate_robust(cupy.asarray(origins), cupy.asarray(directions))
    np.testing.assert_array_equal(robust.inliers.get(),
                                  triangulate_robust(origins, directions).inliers)


HOST_SHIM = """
#include <cmath>
#include <math.h>
#define __global__
struct TriDim { long long x; };
static const TriDim blockIdx = {0}, blockDim = {1}, threadIdx = {0}, gridDim = {1};
"""


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    """drrkit/cuda/triangulate.cu built for the host CPU (one 'thread' loops over all)."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no host C++ compiler to build the CUDA kernel's source")
    source = Path(drrkit.__file__).parent / "cuda" / "triangulate.cu"
    built = {}
    for dtype, flag in ((np.float64, 1), (np.float32, 0)):
        for acc in (0, 1):
            folder = tmp_path_factory.mktemp(f"tri{flag}{acc}")
            cpp = folder / "kernel.cpp"
            cpp.write_text(f"#define DRRKIT_TRI_DOUBLE {flag}\n#define DRRKIT_TRI_ACC_DOUBLE "
                           f"{acc}\n{HOST_SHIM}\n{source.read_text()}")
            lib = folder / "kernel.so"
            subprocess.run([compiler, "-O1", "-shared", "-fPIC", "-o", str(lib), str(cpp)],
                           check=True, capture_output=True)
            built[(np.dtype(dtype), acc)] = ctypes.CDLL(str(lib)).drr_triangulate
    return built


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("acc", [1, 0])
def test_cuda_kernel_source_agrees_with_numba_on_the_host(host_kernel, dtype, acc):
    rng = np.random.default_rng(14)
    n, k = 2000, 7
    origins, directions, _ = noisy_batch(rng, n, k)
    weights = rng.uniform(0, 1, (n, k)) * (rng.uniform(size=(n, k)) > 0.4)
    directions[5, 0] = 0.0
    origins[6, 1] = np.nan
    weights[7, 2] = -1.0
    origins, directions, weights = (a.astype(dtype) for a in (origins, directions, weights))
    points = np.empty((n, 3), dtype)
    rms = np.empty(n, dtype)
    status = np.empty(n, np.int8)
    ptr = ctypes.c_void_p
    host_kernel[(np.dtype(dtype), acc)](
        ptr(origins.ctypes.data), ptr(directions.ctypes.data), ptr(weights.ctypes.data),
        ctypes.c_int(1), ctypes.c_longlong(n), ctypes.c_int(k),
        ctypes.c_double(angle_limit(MIN_ANGLE_DEG)), ptr(points.ctypes.data),
        ptr(rms.ctypes.data), ptr(status.ctypes.data))
    from drrkit._triangulation_numba import BAD_WEIGHT, VALID, triangulate_numba

    ref_points, ref_rms, ref_status = triangulate_numba(origins, directions, weights,
                                                        angle_limit(MIN_ANGLE_DEG))
    assert status[7] == BAD_WEIGHT and status[5] != VALID and status[6] != VALID
    np.testing.assert_array_equal(status, ref_status)
    atol = ATOL[dtype] * (10 if acc == 0 and dtype == np.float32 else 1)
    np.testing.assert_allclose(points, ref_points, atol=atol)
    np.testing.assert_allclose(rms, ref_rms, atol=atol)
