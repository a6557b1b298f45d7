"""drrkit.refinement: closed-form recovery of a point from Gaussian view images, agreement
with plain loops (bilinear sampling, grid search), flat and degenerate input, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drrkit
from drrkit import DrrkitError
from drrkit.refinement import refine_points, response

SIZE = 96


def orbit(k: int = 8) -> drrkit.Geometry:
    return drrkit.circular_orbit(views=k, size=SIZE, pixel_spacing=2.0)


def blobs(points, geometry, sigma_px: float = 2.5) -> np.ndarray:
    """(K, H, W) sum of Gaussians centred on the exact projections of points (N, 3)."""
    px = drrkit.project_points(np.atleast_2d(points), geometry).pixels  # (K, N, 2)
    rows, cols = np.mgrid[:geometry.height, :geometry.width]
    out = np.zeros(geometry.shape)
    for n in range(px.shape[1]):
        c, r = px[:, n, 0, None, None], px[:, n, 1, None, None]
        out += np.exp(-((cols - c) ** 2 + (rows - r) ** 2) / (2 * sigma_px ** 2))
    return out


def bilinear(image: np.ndarray, col: float, row: float) -> float:
    """Reference bilinear sample at (col, row) of a point well inside the image."""
    r0, c0 = int(np.floor(row)), int(np.floor(col))
    fr, fc = row - r0, col - c0
    return float((1 - fr) * (1 - fc) * image[r0, c0] + (1 - fr) * fc * image[r0, c0 + 1]
                 + fr * (1 - fc) * image[r0 + 1, c0] + fr * fc * image[r0 + 1, c0 + 1])


# ---------------------------------------------------------------------- closed form
@settings(max_examples=25, deadline=None)
@given(st.integers(3, 12),
       st.tuples(*[st.floats(-20, 20)] * 3),
       st.tuples(*[st.floats(-4, 4)] * 3))
def test_recovers_the_point_whose_projections_the_blobs_mark(k, true, start_offset):
    g = orbit(k)
    true = np.array([true])
    r = refine_points(true + np.array(start_offset), blobs(true, g), g)
    assert np.linalg.norm(r.points - true) < 0.25
    assert r.response[0] > 0.9  # near the peak every view samples ~1


def test_each_point_finds_its_own_blob_among_several():
    g = orbit(10)
    true = np.array([[0.0, 0, 40], [2, -3, 10], [-1, 2, -25]])
    start = true + np.array([[2.5, -2, 1.5], [-2, 2, -2.5], [1, 1, 2]])
    r = refine_points(start, blobs(true, g), g)
    np.testing.assert_allclose(r.points, true, atol=0.25)
    np.testing.assert_allclose(r.shift, np.linalg.norm(start - r.points, axis=1))


# ---------------------------------------------------------------------- references
def test_response_is_the_mean_of_bilinear_samples():
    g = orbit(5)
    rng = np.random.default_rng(0)
    images = rng.random(g.shape)
    pts = rng.uniform(-30, 30, (7, 3))
    px = drrkit.project_points(pts, g).pixels
    expected = [np.mean([bilinear(images[k], *px[k, n]) for k in range(len(g))])
                for n in range(len(pts))]
    np.testing.assert_allclose(response(pts, images, g), expected, rtol=1e-12)


def test_one_search_lands_within_half_a_step_of_the_brute_force_grid_maximum():
    g = orbit(6)
    rng = np.random.default_rng(1)
    images = blobs(rng.uniform(-10, 10, (3, 3)), g, sigma_px=3.0) + 0.05 * rng.random(g.shape)
    start = rng.uniform(-10, 10, (4, 3))
    r = refine_points(start, images, g, radius_mm=2.0, step_mm=1.0, iterations=1)
    axis = np.arange(-2.0, 3.0)
    for n, p in enumerate(start):
        grid = [p + np.array([a, b, c]) for a in axis for b in axis for c in axis]
        values = [response(q, images, g)[0] for q in grid]
        best = grid[int(np.argmax(values))]
        assert np.all(np.abs(r.points[n] - best) <= 0.5 + 1e-9)
        assert r.response[n] == pytest.approx(max(values))


# ---------------------------------------------------------------------- degenerate input
def test_flat_images_and_non_finite_points_leave_points_where_they_are():
    g = orbit(4)
    pts = np.array([[1.0, 2, 3], [np.nan, 0, 0]])
    r = refine_points(pts, np.zeros(g.shape), g)
    np.testing.assert_array_equal(r.points[0], pts[0])
    assert np.isnan(r.points[1]).any()
    assert r.response[0] == 0.0


def test_no_points_gives_empty_arrays():
    g = orbit(4)
    r = refine_points(np.zeros((0, 3)), np.zeros(g.shape), g)
    assert r.points.shape == (0, 3) and r.response.shape == (0,) and r.shift.shape == (0,)


@pytest.mark.parametrize("kwargs, message", [
    ({"points": np.zeros(3)}, "points must have shape"),
    ({"images": np.zeros((2, 4, 4))}, "images must have shape"),
    ({"radius_mm": 0.5}, "step_mm <= radius_mm"),
    ({"step_mm": -1.0}, "step_mm <= radius_mm"),
    ({"iterations": 0}, "iterations must be"),
    ({"geometry": "views"}, "drrkit.Geometry"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, message):
    g = orbit(4)
    args = {"points": np.zeros((1, 3)), "images": np.zeros(g.shape), "geometry": g, **kwargs}
    with pytest.raises(DrrkitError, match=message):
        refine_points(args.pop("points"), args.pop("images"), args.pop("geometry"), **args)
