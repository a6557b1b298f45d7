"""drrkit.match_views: per-view unordered detections -> 3-D tracks, against ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drrkit
from drrkit import DrrkitError
from drrkit.correspondence import Correspondence, match_views


@pytest.fixture(scope="module")
def orbit():
    """The paper's setting: 10 views 36 degrees apart, sad 500, sid 1000 (2 mm pixels)."""
    return drrkit.circular_orbit(views=10, sad=500, sid=1000, size=1024, pixel_spacing=2.0)


def synthetic_spine(rng, n):
    """(n, 3) points 25-35 mm apart along a curved, roughly vertical line, superior first."""
    z = -np.concatenate([[0.0], np.cumsum(rng.uniform(25, 35, n - 1))])
    z -= z.mean()
    t = (z - z.min()) / max(np.ptp(z), 1.0)
    x = rng.uniform(-20, 20) + rng.uniform(-15, 15) * np.sin(
        np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 2 * np.pi))
    y = rng.uniform(-20, 20) + rng.uniform(-25, 25) * np.sin(
        np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 2 * np.pi))
    return np.stack([x, y, z], axis=1)


def detect(rng, points, geometry, dropout=0.1, false_rate=1.0, noise_px=1.5):
    """Per-view shuffled detections and their true point index (-1: spurious)."""
    pixels = drrkit.project_points(points, geometry).pixels
    detections, truth = [], []
    for k in range(len(geometry)):
        kept = np.flatnonzero(rng.uniform(size=len(points)) >= dropout)
        px = pixels[k, kept] + rng.normal(0, noise_px, (len(kept), 2))
        n_false = rng.poisson(false_rate)
        lo, hi = pixels[k].min(axis=0) - [40, 20], pixels[k].max(axis=0) + [40, 20]
        spurious = rng.uniform(lo, hi, (n_false, 2))  # near the spine, where they hurt
        px = np.concatenate([px, spurious])
        label = np.concatenate([kept, -np.ones(n_false, np.int64)])
        order = rng.permutation(len(px))
        detections.append(px[order])
        truth.append(label[order])
    return detections, truth


def assignment_accuracy(result: Correspondence, truth, n_points):
    """Fraction of detections labelled right (true point, or spurious = unassigned).

    Tracks are matched to true points by the majority of their detections' labels
    (each true point to at most one track; a track with no match labels its detections
    wrong).
    """
    from scipy.optimize import linear_sum_assignment

    votes = np.zeros((len(result.points), n_points))
    for t, row in enumerate(result.assignments):
        for k, j in enumerate(row):
            if j >= 0 and truth[k][j] >= 0:
                votes[t, truth[k][j]] += 1
    rows, cols = linear_sum_assignment(-votes)
    label = np.full(len(result.points), -2)
    label[rows] = cols
    correct = total = 0
    for k, true in enumerate(truth):
        predicted = np.full(len(true), -1)
        for t, j in enumerate(result.assignments[:, k]):
            if j >= 0:
                predicted[j] = label[t]
        correct += int((predicted == true).sum())
        total += len(true)
    return correct / total, rows, cols


def test_exact_detections_in_shuffled_order_are_matched_exactly(orbit):
    rng = np.random.default_rng(0)
    points = synthetic_spine(rng, 12)
    pixels = drrkit.project_points(points, orbit).pixels
    orders = [rng.permutation(12) for _ in range(10)]
    result = match_views([pixels[k, order] for k, order in enumerate(orders)], orbit)
    assert result.points.shape == (12, 3) and result.assignments.shape == (12, 10)
    np.testing.assert_allclose(result.points, points, atol=1e-6)  # superior first
    for k, order in enumerate(orders):
        np.testing.assert_array_equal(order[result.assignments[:, k]], np.arange(12))
    assert np.all(result.rms < 1e-6) and np.all(result.reprojection < 1e-6)
    assert np.all(result.views == 10)


def test_synthetic_spines_with_dropout_false_detections_and_noise(orbit):
    """The issue's scenario: 5-25 vertebrae, ~10% dropout, ~1 false detection per view,
    1-2 px noise. Measured at this seed: 0.998 of detections labelled right."""
    rng = np.random.default_rng(1)
    correct = total = 0
    for _ in range(12):
        n = int(rng.integers(5, 26))
        points = synthetic_spine(rng, n)
        detections, truth = detect(rng, points, orbit, noise_px=rng.uniform(1, 2))
        result = match_views(detections, orbit)
        accuracy, rows, cols = assignment_accuracy(result, truth, n)
        size = sum(len(t) for t in truth)
        correct += accuracy * size
        total += size
        assert accuracy >= 0.97
        assert len(result.points) == n  # no ghost tracks, none lost
        error = np.linalg.norm(result.points[rows] - points[cols], axis=1)
        assert error.max() < 4.0, error.max()
        assert np.all(result.reprojection[result.assignments >= 0] < 8.0)
        assert np.all(np.isnan(result.reprojection[result.assignments < 0]))
    assert correct / total >= 0.99, correct / total


@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 15))
def test_matching_does_not_depend_on_detection_order(seed, n):
    g = drrkit.circular_orbit(views=6, size=768)
    rng = np.random.default_rng(seed)
    points = synthetic_spine(rng, n)
    detections, _ = detect(rng, points, g, dropout=0.15, false_rate=0.5, noise_px=1.0)
    a = match_views(detections, g)
    perms = [rng.permutation(len(d)) for d in detections]
    b = match_views([d[p] for d, p in zip(detections, perms)], g)
    assert len(a.points) == len(b.points)
    np.testing.assert_allclose(a.points, b.points, atol=1e-9)
    for k, p in enumerate(perms):
        lookup = np.append(p, -1)  # index -1 (unassigned) maps to -1
        mapped = lookup[b.assignments[:, k]]
        np.testing.assert_array_equal(mapped, a.assignments[:, k])


def test_a_point_seen_in_too_few_views_is_not_a_track(orbit):
    rng = np.random.default_rng(2)
    points = synthetic_spine(rng, 6)
    pixels = drrkit.project_points(points, orbit).pixels
    detections = [pixels[k] if k < 4 else pixels[k, 1:] for k in range(10)]
    # point 0 is seen in views 0-3 only: below the default min_views (5 of 10)
    result = match_views(detections, orbit)
    assert len(result.points) == 5
    assert len(match_views(detections, orbit, min_views=4).points) == 6
    assert list(result.unassigned(0, 6)) == [0]


def test_empty_views_nan_rows_and_no_detections(orbit):
    rng = np.random.default_rng(3)
    points = synthetic_spine(rng, 5)
    pixels = drrkit.project_points(points, orbit).pixels
    detections = [pixels[k] for k in range(10)]
    detections[2] = np.zeros((0, 2))
    detections[5] = np.concatenate([pixels[5], [[np.nan, np.nan]]])
    result = match_views(detections, orbit)
    assert len(result.points) == 5
    assert np.all(result.assignments[:, 2] == -1)
    assert not np.any(result.assignments[:, 5] == 5)
    none = match_views([np.zeros((0, 2))] * 10, orbit)
    assert none.points.shape == (0, 3) and none.assignments.shape == (0, 10)


def test_bad_input_raises(orbit):
    good = [np.zeros((1, 2))] * 10
    with pytest.raises(DrrkitError, match="views"):
        match_views(good[:9], orbit)
    with pytest.raises(DrrkitError, match=r"\(M, 2\)"):
        match_views([np.zeros((3, 3))] * 10, orbit)
    with pytest.raises(DrrkitError, match="min_views"):
        match_views(good, orbit, min_views=1)
    with pytest.raises(DrrkitError, match="tolerance"):
        match_views(good, orbit, tolerance_px=0)
    with pytest.raises(DrrkitError, match="Geometry"):
        match_views(good, "orbit")
