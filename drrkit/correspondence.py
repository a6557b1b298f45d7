"""Cross-view correspondence: unordered 2-D detections in K views -> 3-D tracks.

Each view holds its own unordered list of detections (pixel (col, row)); some points
are missed in some views and some detections are spurious, so lists differ in length
and order. :func:`match_views` finds which detection in which view belongs to which
3-D point using only the projection geometry:

1. Seeds: every pair of detections from two views whose rays cross at
   ``seed_angle_deg`` or more (for a circular orbit this leaves out nearly opposite
   and nearly coincident views) is triangulated; a seed survives when its point
   reprojects within ``tolerance_px`` of both detections. This is the epipolar test:
   on a circular orbit about the superior-inferior axis the epipolar lines run close
   to image rows, so detections of different vertebrae (different rows) fail it.
2. Hypotheses: each seed point is projected into every view and takes the nearest
   detection within ``tolerance_px`` there; the point is re-triangulated from those
   rays (:func:`drrkit.triangulate`, all hypotheses in one batch) and the assignment
   repeated (``refinements`` rounds). Identical assignments are merged.
3. Selection, greedy: hypotheses are ranked by the truncated reprojection cost
   ``sum_k min(e_k^2 / tol^2, 1)`` (e_k: pixel distance to the nearest *unclaimed*
   detection in view k, a view without one costs 1). The best is accepted when it
   still has ``min_views`` detections after re-fitting on unclaimed detections; its
   detections are then claimed. Costs only grow as detections are claimed, so a lazy
   priority queue re-scores a hypothesis only when it reaches the top.

Tracks are returned sorted by descending world z (superior first, in LPS).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drrkit.errors import DrrkitError
from drrkit.geometry import Geometry, pixel_rays
from drrkit.triangulation import triangulate


@dataclass(frozen=True, eq=False)
class Correspondence:
    """T 3-D tracks found across K views.

    Attributes:
        points: (T, 3) world mm, least-squares points of each track's rays.
        assignments: (T, K) int64 index into ``detections[k]``; -1 where the track
            has no detection in view k.
        rms: (T,) mm, RMS perpendicular distance from each point to its rays.
        reprojection: (T, K) pixel distance between each point's projection and its
            detection in view k; NaN where unassigned.
    """

    points: np.ndarray
    assignments: np.ndarray
    rms: np.ndarray
    reprojection: np.ndarray

    @property
    def views(self) -> np.ndarray:
        """(T,) number of views in which each track has a detection."""
        return (self.assignments >= 0).sum(axis=1)

    def unassigned(self, view: int, n_detections: int) -> np.ndarray:
        """Indices of view ``view``'s ``n_detections`` detections that no track uses."""
        used = self.assignments[:, view]
        return np.setdiff1d(np.arange(n_detections), used[used >= 0])


def _project(matrices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(C, K, 2) pixels of points (C, 3) in K views; NaN behind a source."""
    h = np.einsum("kij,cj->cki", matrices[:, :, :3], points) + matrices[:, :, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        px = h[..., :2] / h[..., 2:3]
    return np.where(h[..., 2:3] > 0, px, np.nan)


def _nearest(px: np.ndarray, det: np.ndarray, usable: np.ndarray):
    """Nearest usable detection of each view for each projected point.

    Args:
        px: (C, K, 2) projections; det: (K, M, 2) padded detections; usable: (K, M).

    Returns:
        index (C, K) int64 and squared distance (C, K) in px^2 (inf where none).
    """
    if det.shape[1] == 0:
        shape = px.shape[:2]
        return np.zeros(shape, np.int64), np.full(shape, np.inf)
    diff = px[:, :, None, :] - det[None]
    d2 = np.einsum("ckmi,ckmi->ckm", diff, diff)
    d2 = np.where(usable[None] & np.isfinite(d2), d2, np.inf)
    index = d2.argmin(axis=2)
    return index, np.take_along_axis(d2, index[..., None], axis=2)[..., 0]


class _Views:
    """Padded detections of K views and their rays."""

    def __init__(self, detections: Sequence, geometry: Geometry):
        k = len(geometry)
        if len(detections) != k:
            raise DrrkitError(f"got detections for {len(detections)} views, the geometry has {k}")
        arrays = []
        for view, det in enumerate(detections):
            a = np.asarray(det, dtype=np.float64)
            if a.size == 0:
                a = a.reshape(0, 2)
            if a.ndim != 2 or a.shape[1] != 2:
                raise DrrkitError(f"detections[{view}] must have shape (M, 2) (col, row), "
                                  f"got {a.shape}")
            arrays.append(a)
        m = max((len(a) for a in arrays), default=0)
        self.pixels = np.full((k, m, 2), np.nan)
        for view, a in enumerate(arrays):
            self.pixels[view, :len(a)] = a
        self.present = np.isfinite(self.pixels).all(axis=-1)  # (K, M)
        self.origins, self.directions = pixel_rays(geometry, np.where(
            self.present[..., None], self.pixels, 0.0))
        self.matrices = geometry.projection_matrices
        self.k, self.m = k, m

    def rays(self, assign: np.ndarray):
        """Origins, directions (C, K, 3) and weights (C, K) for assignments (C, K)."""
        views = np.arange(self.k)[None, :]
        index = np.maximum(assign, 0)
        return (self.origins[views, index], self.directions[views, index],
                (assign >= 0).astype(np.float64))


def _assign(views: _Views, points: np.ndarray, usable: np.ndarray, tol2: float):
    """Nearest usable detection within tolerance: assignment (C, K) and squared error."""
    index, d2 = _nearest(_project(views.matrices, points), views.pixels, usable)
    return np.where(d2 < tol2, index, -1), d2


def _refit(views: _Views, points: np.ndarray, usable: np.ndarray, tol2: float, rounds: int):
    """Alternate assignment and triangulation; returns points, assignments, valid."""
    assign = np.full((len(points), views.k), -1, np.int64)
    valid = np.isfinite(points).all(axis=1)
    for _ in range(rounds):
        assign, _ = _assign(views, np.where(valid[:, None], points, 0.0), usable, tol2)
        assign[~valid] = -1
        fit = triangulate(*views.rays(assign))
        valid = fit.valid
        points = np.where(valid[:, None], fit.points, 0.0)
    assign, _ = _assign(views, points, usable, tol2)
    assign[~valid] = -1
    return points, assign, valid


def _seeds(views: _Views, tol2: float, seed_angle_deg: float) -> np.ndarray:
    """Points (S, 3) of detection pairs from two views that pass the epipolar test."""
    found = []
    for a in range(views.k):
        ia = np.flatnonzero(views.present[a])
        for b in range(a + 1, views.k):
            ib = np.flatnonzero(views.present[b])
            if len(ia) == 0 or len(ib) == 0:
                continue
            i, j = np.meshgrid(ia, ib, indexing="ij")
            i, j = i.ravel(), j.ravel()
            origins = np.stack([views.origins[a, i], views.origins[b, j]], axis=1)
            directions = np.stack([views.directions[a, i], views.directions[b, j]], axis=1)
            fit = triangulate(origins, directions, min_angle_deg=seed_angle_deg)
            ok = fit.valid
            if not ok.any():
                continue
            pts = fit.points[ok]
            px = _project(views.matrices[[a, b]], pts)
            ea = ((px[:, 0] - views.pixels[a, i[ok]]) ** 2).sum(-1)
            eb = ((px[:, 1] - views.pixels[b, j[ok]]) ** 2).sum(-1)
            found.append(pts[(ea < tol2) & (eb < tol2)])
    return np.concatenate(found) if found else np.zeros((0, 3))


def _cost(d2: np.ndarray, tol2: float) -> np.ndarray:
    """Truncated reprojection cost per hypothesis, (C, K) squared px -> (C,)."""
    return np.minimum(d2 / tol2, 1.0).sum(axis=-1)


def _check_options(geometry, tolerance_px, min_views, refinements) -> int:
    """``min_views`` (its default for None: half the views, at least 3) after checking
    the options of :func:`match_views`."""
    if not isinstance(geometry, Geometry):
        raise DrrkitError("geometry must be a drrkit.Geometry (see drrkit.circular_orbit)")
    if not (np.isfinite(tolerance_px) and tolerance_px > 0):
        raise DrrkitError(f"tolerance_px must be a positive number, got {tolerance_px}")
    if min_views is None:
        min_views = min(len(geometry), max(3, -(-len(geometry) // 2)))
    if int(min_views) != min_views or not 2 <= min_views <= len(geometry):
        raise DrrkitError(f"min_views must be an integer in [2, {len(geometry)}], got {min_views}")
    if int(refinements) != refinements or refinements < 1:
        raise DrrkitError(f"refinements must be an integer >= 1, got {refinements}")
    return min_views


def _claim(views, points: np.ndarray, tol2: float, refinements: int, min_views: int
           ) -> list[np.ndarray]:
    """Candidate points claim detections greedily, cheapest first: each takes the
    detections still free within the tolerance, is refitted, and is kept as a track when
    it keeps ``min_views`` views; a candidate whose cost rose because others claimed its
    detections goes back into the queue at its new cost.

    Returns:
        the tracks' (K,) detection indices (-1: none), in the order they were taken.
    """
    usable = views.present.copy()
    _, d2 = _assign(views, points, usable, tol2)
    heap = [(float(c), i) for i, c in enumerate(_cost(d2, tol2))]
    heapq.heapify(heap)
    tracks = []
    while heap:
        _, i = heapq.heappop(heap)
        _, d2 = _assign(views, points[i:i + 1], usable, tol2)
        now = float(_cost(d2, tol2)[0])
        if heap and now > heap[0][0] + 1e-12:
            heapq.heappush(heap, (now, i))  # claimed detections made it worse: re-rank
            continue
        _, track, ok = _refit(views, points[i:i + 1], usable, tol2, refinements)
        if not ok[0] or (track[0] >= 0).sum() < min_views:
            continue
        tracks.append(track[0])
        chosen = track[0] >= 0
        usable[np.flatnonzero(chosen), track[0][chosen]] = False
    return tracks


def match_views(
    detections: Sequence,
    geometry: Geometry,
    *,
    tolerance_px: float = 8.0,
    min_views: int | None = None,
    seed_angle_deg: float = 15.0,
    refinements: int = 2,
) -> Correspondence:
    """Group per-view unordered detections into 3-D tracks (see the module docstring).

    Args:
        detections: K arrays (M_k, 2) of pixel (col, row) per view, any order and
            length (M_k may be 0); rows with NaN are ignored.
        geometry: the K views the detections come from.
        tolerance_px: largest reprojection distance in pixels for a detection to
            belong to a point (about 4x the detection noise).
        min_views: fewest views a track must be seen in (>= 2). Default
            ``min(K, max(3, ceil(K / 2)))`` (5 of 10 views): spurious detections rarely
            agree in three views, practically never in five.
        seed_angle_deg: smallest ray angle of a seed pair (conditioning of seeds).
        refinements: assignment/triangulation rounds per hypothesis (>= 1).

    Returns:
        :class:`Correspondence` with T tracks, sorted by descending world z.

    Example:
        >>> import numpy as np, drrkit
        >>> g = drrkit.circular_orbit(views=4, size=256)
        >>> pts = np.array([[0.0, 0, 40], [5, -3, 0], [-4, 2, -40]])
        >>> px = drrkit.project_points(pts, g).pixels          # (4, 3, 2)
        >>> dets = [p[::-1] for p in px]                       # reversed order per view
        >>> drrkit.match_views(dets, g).assignments[:, 0]
        array([2, 1, 0])
    """
    min_views = _check_options(geometry, tolerance_px, min_views, refinements)
    views = _Views(detections, geometry)
    tol2 = float(tolerance_px) ** 2
    k = views.k

    seeds = _seeds(views, tol2, seed_angle_deg)
    points, assign, valid = _refit(views, seeds, views.present, tol2, refinements)
    keep = valid & ((assign >= 0).sum(axis=1) >= min_views)
    points, assign = points[keep], assign[keep]
    if len(assign):
        assign, first = np.unique(assign, axis=0, return_index=True)
        points = points[first]

    tracks = _claim(views, points, tol2, refinements, min_views)
    if not tracks:
        return Correspondence(np.zeros((0, 3)), np.zeros((0, k), np.int64), np.zeros(0),
                              np.zeros((0, k)))
    assign = np.stack(tracks)
    fit = triangulate(*views.rays(assign))
    px = _project(views.matrices, fit.points)
    detected = views.pixels[np.arange(k)[None], np.maximum(assign, 0)]
    error = np.where(assign >= 0, np.linalg.norm(px - detected, axis=-1), np.nan)
    order = np.argsort(-fit.points[:, 2], kind="stable")
    return Correspondence(fit.points[order], assign[order], fit.rms[order], error[order])
