"""The tracks as one chain along the spine: regular spacing on the views' heatmaps.

Detections become 3-D tracks one at a time (:mod:`drrkit.correspondence`), each at its
own heatmap peak. Two failures of that are not local, and both show in the chain's
spacing:

* a bright (calcified or partial-volume) disc joins two vertebrae into one long blob in
  the views; its peaks then sit at or near the disc, and the pair's two spacings are
  very unequal (e.g. 1.4 and 0.6 times the neighbours' spacing);
* a vertebra whose blob is weak in most views gets no track, which leaves a spacing
  about twice the local one, and every label past it shifts by a level.

:func:`place_chain` samples the mean heatmap over the K views,
:func:`drrkit.refinement.response`, along the polyline through the tracks (superior
first, 1 mm steps, extended straight past both ends), divides it by its median at the
tracks (so that its scale does not depend on the scan), and chooses positions
``s_1 < ... < s_m`` along the curve that maximise

.. code-block:: text

    sum_i h(s_i)  -  cost * (points added)
                  -  weight * sum_i max(0, |d_i - d_{i-1}| / ((d_i + d_{i-1}) / 2) - tolerance)^2

where ``d_i = s_{i+1} - s_i`` are the spacings (between ``spacing_mm``). Each track keeps
exactly one point within its window: the run of curve around it where the profile stays
at least ``plateau`` times its value at the track (a clear peak holds its track, a flat
blob lets it move), at most ``radius_mm`` and ``share`` of its wider spacing. One point may
be added between two tracks whose spacing is doubtful (more than ``gap_ratio`` times the
local one), where the profile reaches ``least``. The last term is a
curvature prior on the spacing: vertebral heights change slowly along the column, so a
spacing that differs from the one before it by more than ``tolerance`` of their mean is
penalised quadratically. Where the heatmap has a clear peak it outweighs the prior;
where it is flat (one blob over two vertebrae) the prior places the points. The
optimisation is an exact dynamic programme over (slot, position, previous spacing),
the chain model of pictorial structures (Felzenszwalb and Huttenlocher, IJCV 2005) with
a second-order term.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from vertebra.errors import VertebraError

#: Arc-length step of the sampled curve, mm.
STEP_MM = 1.0

#: Default weight of the spacing prior (decision ``chain-placement``).
WEIGHT = 3.0


@dataclass(frozen=True)
class Chain:
    """Output of :func:`place_chain` for T tracks (M >= T points, superior first).

    Attributes:
        points: (M, 3) world mm; a track that did not move keeps its point exactly.
        source: (M,) index of the track each point belongs to, -1 for an added point.
        profile: (M,) normalised mean heatmap at each point.
        shift: (M,) mm each track's point moved along the curve (0 for added points).
    """

    points: np.ndarray
    source: np.ndarray
    profile: np.ndarray
    shift: np.ndarray


def arc_lengths(points) -> np.ndarray:
    """(T,) arc length of each point along the polyline through them, mm (first = 0)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]


def along_curve(points, arc) -> np.ndarray:
    """(N, 3) points at arc lengths ``arc`` (N,) of the polyline through ``points`` (T, 3),
    T >= 2, continued straight along the first and last segments beyond its ends."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    s = arc_lengths(pts)
    arc = np.asarray(arc, dtype=np.float64)
    out = np.stack([np.interp(arc, s, pts[:, i]) for i in range(3)], axis=-1)
    head, tail = pts[1] - pts[0], pts[-1] - pts[-2]
    lo, hi = arc < 0, arc > s[-1]
    out[lo] = pts[0] + arc[lo, None] * head / np.linalg.norm(head)
    out[hi] = pts[-1] + (arc[hi, None] - s[-1]) * tail / np.linalg.norm(tail)
    return out


def spine_tangents(points, neighbours: int = 4) -> np.ndarray:
    """(T, 3) unit direction of the spine at each of T points (tracks in any order).

    The tangent at a point is the principal axis of the unit directions to its
    ``neighbours`` nearest other points (the eigenvector of the largest eigenvalue of the
    sum of their outer products). Directions, not positions, enter: every neighbour
    counts alike however far it lies, and one stray point beside the spine (a duplicate,
    a rib head, a vessel) is outvoted by the vertebrae above and below. Where fewer than
    two other points exist the world z axis stands in. The sign is arbitrary.

    Example:
        >>> pts = np.array([[0, 0, 0.], [0, 20, 10], [0, 40, 20], [25, 20, 11]])
        >>> np.round(np.abs(spine_tangents(pts, neighbours=2)[1]), 2)
        array([0.  , 0.89, 0.45])
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    out = np.tile([0.0, 0.0, 1.0], (len(pts), 1))
    k = min(int(neighbours), len(pts) - 1)
    if k < 2:
        return out
    diff = pts[None, :, :] - pts[:, None, :]  # (T, T, 3): point j minus point i
    dist = np.linalg.norm(diff, axis=-1)
    np.fill_diagonal(dist, np.inf)
    near = np.argsort(dist, axis=1)[:, :k]
    for i, js in enumerate(near):
        d = diff[i, js] / np.maximum(dist[i, js], 1e-9)[:, None]
        out[i] = np.linalg.eigh(d.T @ d)[1][:, -1]
    return out


def _penalty(spacings: np.ndarray, weight: float, tolerance: float) -> np.ndarray:
    """(D, D) spacing prior for a previous spacing (rows) followed by a new one (columns)."""
    prev, new = np.meshgrid(spacings, spacings, indexing="ij")
    change = np.abs(new - prev) / ((new + prev) / 2.0)
    return weight * np.maximum(change - tolerance, 0.0) ** 2


def _slots(centre: np.ndarray, lo: np.ndarray, hi: np.ndarray, between
           ) -> list[tuple[np.ndarray, int]]:
    """Grid indices allowed in each slot, and its track (-1: an optional added point).

    Slots follow the tracks: track 0, [added], track 1, ..., track T-1; ``between[i]``
    (grid indices) are the places a point may be added between tracks i and i + 1 (an
    empty array: none).
    """
    slots = []
    for i in range(len(centre)):
        slots.append((np.arange(lo[i], hi[i] + 1), i))
        if i + 1 < len(centre) and len(between[i]):
            slots.append((np.asarray(between[i], dtype=np.int64), -1))
    return slots


def _best_previous(values: np.ndarray, prev_i: np.ndarray, pen_t: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(m, nd) best value over the previous spacing of reaching a slot's m places with
    each new spacing from a slot whose values are ``values`` ((N,) for the chain's first
    point, else (N, nd)), and the previous spacing's index (-1 from the first point)."""
    if values.ndim == 1:  # the chain's first point: no spacing before it
        return values[prev_i], np.full(prev_i.shape, -1)
    full = values[prev_i] - pen_t[None, :, :]  # (m, nd new, nd prev)
    arg = np.argmax(full, axis=-1)
    return np.take_along_axis(full, arg[..., None], axis=-1)[..., 0], arg


def chain_dp(profile, centre, lo, hi, *, cost: float, weight: float, tolerance: float,
             spacing: tuple[int, int], between=None) -> list[tuple[int, int]]:
    """The best chain on a 1-D grid (module docstring), by dynamic programming.

    Args:
        profile: (N,) value of each grid position (higher is better).
        centre, lo, hi: (T,) int, each track's own grid index and its window's first and
            last index (inclusive), increasing with the track.
        cost: subtracted for each added point.
        weight, tolerance: the spacing prior.
        spacing: smallest and largest spacing, in grid steps.
        between: T - 1 arrays of the grid indices where a point may be added between
            consecutive tracks (None: anywhere strictly between their own indices).

    Returns:
        [(grid index, track or -1)] of the chosen points, in order; every track appears
        exactly once. VertebraError when no chain fits the spacing limits.
    """
    h = np.asarray(profile, dtype=np.float64)
    gaps = np.arange(int(spacing[0]), int(spacing[1]) + 1)
    pen_t = _penalty(gaps.astype(np.float64), weight, tolerance).T  # (new, prev)
    centre = np.asarray(centre, dtype=np.int64)
    if between is None:
        between = [np.arange(a + 1, b) for a, b in itertools.pairwise(centre)]
    slots = _slots(centre, np.asarray(lo), np.asarray(hi), between)
    n, nd = len(h), len(gaps)
    first_idx = slots[0][0]
    first = np.full(n, -np.inf)
    first[first_idx] = h[first_idx]
    vals: list[np.ndarray] = [first]
    backs: list[tuple[np.ndarray, np.ndarray] | None] = [None]
    for t in range(1, len(slots)):
        idx, track = slots[t]
        gain = h[idx] - (cost if track < 0 else 0.0)  # (m,)
        prev_i = idx[:, None] - gaps[None, :]  # (m, nd): the previous point's index
        ok = prev_i >= 0
        prev_i = np.where(ok, prev_i, 0)
        best = np.full((len(idx), nd), -np.inf)
        from_slot = np.full((len(idx), nd), -1, dtype=np.int64)
        from_gap = np.full((len(idx), nd), -1, dtype=np.int64)
        options = [t - 1] + ([t - 2] if t >= 2 and slots[t - 1][1] < 0 else [])
        for p in options:
            cand, arg = _best_previous(vals[p], prev_i, pen_t)
            cand = np.where(ok, cand, -np.inf)
            better = cand > best
            best = np.where(better, cand, best)
            from_slot = np.where(better, p, from_slot)
            from_gap = np.where(better, arg, from_gap)
        val = np.full((n, nd), -np.inf)
        val[idx] = best + gain[:, None]
        back_slot = np.full((n, nd), -1, dtype=np.int64)
        back_gap = np.full((n, nd), -1, dtype=np.int64)
        back_slot[idx], back_gap[idx] = from_slot, from_gap
        vals.append(val)
        backs.append((back_slot, back_gap))
    return _trace(vals, backs, slots, gaps)


def _trace(vals, backs, slots, gaps) -> list[tuple[int, int]]:
    """Follow the back pointers of :func:`chain_dp` from the best end."""
    t = len(slots) - 1
    last = vals[t]
    if t == 0:
        return [(int(np.argmax(last)), slots[0][1])]
    j, a = np.unravel_index(int(np.argmax(last)), last.shape)
    if not np.isfinite(last[j, a]):
        raise VertebraError("no chain of the tracks fits the spacing limits")
    out = []
    while True:
        out.append((int(j), slots[t][1]))
        if t == 0:
            break
        back_slot, back_gap = backs[t]
        p, b = int(back_slot[j, a]), int(back_gap[j, a])
        j, a, t = j - gaps[a], b, p
    return out[::-1]


def plateau_windows(profile, centre, reach, plateau: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """First and last grid index (T,) each of T tracks may move to: the contiguous run
    around its ``centre`` where ``profile`` stays >= ``plateau`` times its value there,
    at most ``reach`` steps either way."""
    h = np.asarray(profile, dtype=np.float64)
    lo = np.asarray(centre, dtype=np.int64).copy()
    hi = lo.copy()
    for i, c in enumerate(np.asarray(centre, dtype=np.int64)):
        floor = plateau * h[c]
        while lo[i] > max(c - reach[i], 0) and h[lo[i] - 1] >= floor:
            lo[i] -= 1
        while hi[i] < min(c + reach[i], len(h) - 1) and h[hi[i] + 1] >= floor:
            hi[i] += 1
    return lo, hi


def place_chain(points, response, *, cost: float = 0.8, weight: float = WEIGHT,
                tolerance: float = 0.1, plateau: float = 0.85, least: float = 0.5,
                gap_ratio: float | None = None, radius_mm: float = 10.0, share: float = 0.45,
                spacing_mm: tuple[float, float] = (8.0, 60.0)) -> Chain:
    """Move tracks along the spine and add missed ones (module docstring).

    Args:
        points: (T, 3) world mm, in spine order (superior first).
        response: maps (N, 3) world mm to (N,) the mean heatmap there
            (e.g. ``lambda p: drrkit.refinement.response(p, heatmaps, geometry)``).
        cost: price of an added point, in units of the median heatmap at the tracks.
        least: an added point needs at least this profile (same units).
        gap_ratio: a point may be added only between two tracks whose spacing is more
            than this many times the local one (:func:`vertebra.correction.spacing_ratios`;
            None: :data:`vertebra.correction.MAYBE_GAP_RATIO`, the doubtful gaps).
        weight, tolerance: the spacing prior (weight >= 0, tolerance >= 0).
        plateau: a track moves only through the run of curve around it where the
            profile stays at least this share of its value at the track (0 < plateau
            <= 1): a clear peak holds its track, a flat blob lets it move ...
        radius_mm: ... at most this far along the curve ...
        share: ... and at most this share of the larger of its two spacings.
        spacing_mm: smallest and largest spacing between two points of the chain
            (widened to the tracks' own smallest and largest, so that the tracks where
            they are always form a chain).

    Returns:
        :class:`Chain`. With fewer than three tracks (no spacing to compare) they are
        returned unchanged.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not (weight >= 0 and tolerance >= 0 and 0 < plateau <= 1 and radius_mm > 0
            and 0 < share < 0.5 and 0 < spacing_mm[0] < spacing_mm[1]):
        raise VertebraError("need weight >= 0, tolerance >= 0, 0 < plateau <= 1, "
                            "radius_mm > 0, 0 < share < 0.5 and 0 < smallest < largest "
                            "spacing")
    t = len(pts)
    if t < 3:
        return Chain(pts.copy(), np.arange(t), np.ones(t), np.zeros(t))
    s = arc_lengths(pts)
    if np.any(np.diff(s) < STEP_MM):
        raise VertebraError(f"two tracks of the chain coincide (closer than {STEP_MM:g} mm)")
    grid = np.arange(-radius_mm, s[-1] + radius_mm + STEP_MM / 2, STEP_MM)
    own = np.asarray(response(pts), dtype=np.float64)
    scale = float(np.median(own))
    if not scale > 0:  # no heatmap at the tracks: nothing to trade against
        return Chain(pts.copy(), np.arange(t), np.ones(t), np.zeros(t))
    h = np.asarray(response(along_curve(pts, grid)), dtype=np.float64) / scale
    centre = np.floor((s - grid[0]) / STEP_MM + 0.5).astype(np.int64)  # distinct: gaps >= 1
    h[centre] = own / scale  # a track that stays keeps its own (exact) value
    wider = np.maximum(np.r_[s[1] - s[0], np.diff(s)], np.r_[np.diff(s), s[-1] - s[-2]])
    reach = np.floor(np.minimum(radius_mm, share * wider) / STEP_MM).astype(np.int64)
    gaps = np.diff(centre)  # the tracks where they are always form a chain
    steps = (int(min(np.ceil(spacing_mm[0] / STEP_MM), gaps.min())),
             int(max(np.floor(spacing_mm[1] / STEP_MM), gaps.max())))
    lo, hi = plateau_windows(h, centre, reach, plateau)
    from vertebra.correction import MAYBE_GAP_RATIO, spacing_ratios

    wide_gap = spacing_ratios(pts) > (MAYBE_GAP_RATIO if gap_ratio is None else gap_ratio)
    between = [np.arange(a + 1, b)[h[a + 1:b] >= least] if wide else np.zeros(0, np.int64)
               for a, b, wide in zip(centre[:-1], centre[1:], wide_gap)]
    chosen = chain_dp(h, centre, lo, hi, cost=cost, weight=weight, tolerance=tolerance,
                      spacing=steps, between=between)
    index = np.array([j for j, _ in chosen])
    source = np.array([track for _, track in chosen], dtype=np.int64)
    out = along_curve(pts, grid[index])
    stays = (source >= 0) & (index == centre[np.maximum(source, 0)])
    out[stays] = pts[source[stays]]
    shift = np.where(source >= 0, np.abs(grid[index] - s[np.maximum(source, 0)]), 0.0)
    shift[stays] = 0.0
    return Chain(points=out, source=source, profile=h[index], shift=shift)
