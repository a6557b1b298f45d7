"""The chain placement of tracks along the spine (vertebra.chain): closed-form cases, a
brute-force reference of the dynamic programme, and properties."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vertebra.chain import (
    _penalty,
    along_curve,
    arc_lengths,
    chain_dp,
    place_chain,
    plateau_windows,
    spine_tangents,
)
from vertebra.errors import VertebraError

AXIS = np.array([0.0, 0.6, -0.8])  # a unit direction: the spine runs along it


def line(arc):
    """(N, 3) points at arc lengths ``arc`` along a straight spine through (5, -3, 40)."""
    return np.array([5.0, -3.0, 40.0]) + np.outer(arc, AXIS)


def bumps(centres, heights=None, width=4.0):
    """A response along the straight spine: Gaussian bumps at arc lengths ``centres``."""
    heights = np.ones(len(centres)) if heights is None else np.asarray(heights)

    def response(points):
        s = (np.asarray(points) - line([0.0])[0]) @ AXIS
        return sum(h * np.exp(-0.5 * ((s - c) / width) ** 2)
                   for c, h in zip(centres, heights))
    return response


def test_curve_closed_form():
    pts = np.array([[0.0, 0, 0], [0, 3, 4], [0, 3, 10]])
    assert np.allclose(arc_lengths(pts), [0, 5, 11])
    got = along_curve(pts, [-5.0, 2.5, 5.0, 8.0, 13.0])
    assert np.allclose(got, [[0, -3, -4], [0, 1.5, 2], [0, 3, 4], [0, 3, 7], [0, 3, 12]])


def test_regular_peaks_keep_every_track_exactly():
    arc = np.arange(6) * 25.0
    pts = line(arc) + np.array([0.3, -0.2, 0.1])  # off the line a little: kept exactly
    chain = place_chain(pts, bumps(arc))
    assert chain.source.tolist() == list(range(6))
    assert np.array_equal(chain.points, pts)
    assert np.all(chain.shift == 0)


def test_a_track_in_a_flat_blob_moves_to_the_regular_place():
    """Vertebrae every 25 mm; the third and fourth merge into one flat blob (a bright
    disc), whose two tracks lie at 58 and 75 mm: the first moves back to 50."""
    truth = np.arange(6) * 25.0
    blob = np.linspace(40.0, 80.0, 41)

    def response(points):
        s = (np.asarray(points) - line([0.0])[0]) @ AXIS
        peaks = bumps(truth[[0, 1, 4, 5]])(points)
        flat = 0.8 * np.exp(-0.5 * (np.clip(np.abs(s - 60.0) - 20.0, 0, None) / 4.0) ** 2)
        return np.maximum(peaks, flat)

    arc = np.array([0.0, 25.0, 58.0, 75.0, 100.0, 125.0])
    chain = place_chain(line(arc), response, tolerance=0.0)
    assert chain.source.tolist() == list(range(6))
    got = (chain.points - line([0.0])[0]) @ AXIS
    assert abs(got[2] - 50.0) <= 1.0 and abs(got[3] - 75.0) <= 1.0
    tolerant = place_chain(line(arc), response)  # spacing changes under 10 % are free
    got = (tolerant.points - line([0.0])[0]) @ AXIS
    assert tolerant.source.tolist() == list(range(6)) and abs(got[2] - 50.0) <= 3.0
    assert blob[0] < got[2] < blob[-1]
    held = place_chain(line(arc), response, radius_mm=3.0)  # it moves 3 mm at most,
    assert held.shift[2] == 3.0 and held.shift.max() <= 3.0  # and no point is squeezed in
    assert held.source.tolist() == list(range(6))


@pytest.mark.parametrize("height, added", [(0.6, True), (0.1, False)])
def test_a_missed_vertebra_is_added_where_the_heatmap_shows_it(height, added):
    truth = np.arange(7) * 25.0
    arc = np.delete(truth, 3)  # the track at 75 mm is missing
    response = bumps(truth, heights=[1, 1, 1, height, 1, 1, 1])
    chain = place_chain(line(arc), response)
    assert (chain.source == -1).sum() == int(added)
    if added:
        new = chain.points[chain.source == -1][0]
        assert abs((new - line([0.0])[0]) @ AXIS - 75.0) <= 1.0
        assert chain.source.tolist() == [0, 1, 2, -1, 3, 4, 5]


def test_no_point_is_added_between_regular_tracks_even_on_a_plateau():
    arc = np.arange(5) * 25.0
    chain = place_chain(line(arc), lambda p: np.ones(len(p)), cost=0.5)
    assert chain.source.tolist() == list(range(5))


def test_fewer_than_three_tracks_and_bad_settings():
    two = line([0.0, 25.0])
    assert np.array_equal(place_chain(two, bumps([0.0, 25.0])).points, two)
    with pytest.raises(VertebraError, match="plateau"):
        place_chain(line([0.0, 25.0, 50.0]), bumps([0.0]), plateau=0.0)
    for close in (25.0, 25.5):
        with pytest.raises(VertebraError, match="coincide"):
            place_chain(line([0.0, 25.0, close]), bumps([0.0]))
    flat_zero = place_chain(line([0.0, 25.0, 50.0]), lambda p: np.zeros(len(p)))
    assert flat_zero.source.tolist() == [0, 1, 2]


def test_plateau_windows_closed_form():
    h = np.array([0.1, 0.5, 0.9, 1.0, 0.95, 0.9, 0.2, 0.3])
    lo, hi = plateau_windows(h, np.array([3]), np.array([10]), 0.85)
    assert (lo[0], hi[0]) == (2, 5)
    lo, hi = plateau_windows(h, np.array([3]), np.array([1]), 0.85)  # the reach caps it
    assert (lo[0], hi[0]) == (2, 4)


def brute_force(h, centre, lo, hi, cost, weight, tolerance, spacing, closed):
    """Best objective over every chain: one point per track window, at most one added
    point strictly between consecutive tracks' own positions (none before a closed
    track)."""
    pen = _penalty(np.arange(spacing[0], spacing[1] + 1, dtype=float), weight, tolerance)
    best = -np.inf
    tracks = [range(a, b + 1) for a, b in zip(lo, hi)]
    betweens = [[None] if closed[i + 1] else [None, *range(centre[i] + 1, centre[i + 1])]
                for i in range(len(centre) - 1)]
    for pos in itertools.product(*tracks):
        for extra in itertools.product(*betweens):
            chain, value = [], 0.0
            for i, p in enumerate(pos):
                chain.append(p)
                value += h[p]
                if i < len(extra) and extra[i] is not None:
                    chain.append(extra[i])
                    value += h[extra[i]] - cost
            d = np.diff(chain)
            if np.any(d < spacing[0]) or np.any(d > spacing[1]):
                continue
            value -= sum(pen[a - spacing[0], b - spacing[0]] for a, b in itertools.pairwise(d))
            best = max(best, value)
    return best


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), cost=st.floats(0.0, 1.5), weight=st.floats(0.0, 5.0),
       tolerance=st.sampled_from([0.0, 0.2]), closed=st.sampled_from([None, 1, 2]))
def test_chain_dp_matches_brute_force(seed, cost, weight, tolerance, closed):
    rng = np.random.default_rng(seed)
    centre = np.array([2, 8, 13])
    reach = rng.integers(0, 3, size=3)
    lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach, 15)
    h = rng.random(16)
    spacing = (2, 9)
    flags = np.zeros(3, dtype=bool)  # no point may be added before a closed track
    between = [np.arange(a + 1, b) for a, b in itertools.pairwise(centre)]
    if closed is not None:
        flags[closed] = True
        between[closed - 1] = np.zeros(0, dtype=np.int64)
    chosen = chain_dp(h, centre, lo, hi, cost=cost, weight=weight, tolerance=tolerance,
                      spacing=spacing, between=between)
    idx = np.array([j for j, _ in chosen])
    src = [t for _, t in chosen]
    assert [t for t in src if t >= 0] == [0, 1, 2]  # each track exactly once, in order
    assert np.all(np.diff(idx) >= spacing[0]) and np.all(np.diff(idx) <= spacing[1])
    for j, t in chosen:
        if t >= 0:
            assert lo[t] <= j <= hi[t]
    pen = _penalty(np.arange(spacing[0], spacing[1] + 1, dtype=float), weight, tolerance)
    d = np.diff(idx)
    value = (h[idx].sum() - cost * src.count(-1)
             - sum(pen[a - spacing[0], b - spacing[0]] for a, b in itertools.pairwise(d)))
    assert value == pytest.approx(brute_force(h, centre, lo, hi, cost, weight, tolerance,
                                              spacing, flags), abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(spacing=st.floats(15.0, 40.0), n=st.integers(3, 9), shift=st.floats(-3.0, 3.0))
def test_regular_chain_is_a_fixed_point(spacing, n, shift):
    """Tracks on the peaks of a regular spine stay, wherever the spine starts."""
    arc = shift + np.arange(n) * spacing
    chain = place_chain(line(arc), bumps(arc, width=3.0))
    assert chain.source.tolist() == list(range(n))
    assert np.allclose(chain.points, line(arc))


def test_spine_tangents_follow_the_line_and_outvote_a_stray_point():
    """Points along AXIS: every tangent is +-AXIS; a stray point straight beside one of
    them leaves that point's tangent exactly on AXIS (three directions along it, one
    across). With fewer than three points the z axis stands in."""
    pts = line(np.arange(5) * 20.0)
    np.testing.assert_allclose(np.abs(spine_tangents(pts) @ AXIS), 1.0, atol=1e-9)
    across = np.cross(AXIS, [1.0, 0.0, 0.0])
    with_stray = np.vstack([pts, pts[2] + 25 * across / np.linalg.norm(across)])
    assert abs(spine_tangents(with_stray)[2] @ AXIS) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_array_equal(spine_tangents(pts[:2]), [[0, 0, 1.0]] * 2)
    assert spine_tangents(np.zeros((0, 3))).shape == (0, 3)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_spine_tangents_turn_with_the_points(seed):
    """Rotating and shifting the points rotates the tangents (up to sign)."""
    rng = np.random.default_rng(seed)
    pts = np.cumsum(rng.normal(0, 1, (7, 3)) * [3, 3, 1] + [0, 0, -20], axis=0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = spine_tangents(pts @ q.T + rng.normal(0, 50, 3))
    turned = spine_tangents(pts) @ q.T
    np.testing.assert_allclose(np.abs(np.sum(moved * turned, axis=1)), 1.0, atol=1e-6)
