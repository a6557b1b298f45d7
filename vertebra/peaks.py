"""2-D centroid detection in heatmaps by density-peak clustering (Rodriguez & Laio, 2014).

Every heatmap pixel above ``threshold`` is a point whose density is its heatmap value.
For each point, ``delta`` is the distance to the nearest point of higher density (the
densest point gets the largest distance of all). Cluster centres are points with
density >= ``threshold`` and ``delta >= min_distance_mm``; every other point joins the
cluster of its nearest denser neighbour. A detection is the density-weighted mean of its
cluster's pixels (sub-pixel), scored by the centre's density; with ``refine_mm``, only the
cluster's pixels within that distance of the centre are averaged, so a long or lopsided
cluster (a blurred stretch of spine split between two centres) does not pull the
detection off its peak.

Distances are in mm at the isocentre (pixel spacing divided by magnification), so the
same settings work at any detector resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Peaks:
    """Detections in one image.

    Attributes:
        pixels: (N, 2) float64 (col, row), density-weighted cluster means.
        scores: (N,) heatmap value at each cluster centre.
    """

    pixels: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def density_peaks(
    heatmap: np.ndarray,
    mm_per_pixel: float,
    threshold: float = 0.3,
    min_distance_mm: float = 10.0,
    max_points: int = 20000,
    refine_mm: float | None = None,
) -> Peaks:
    """Find well separated maxima of a heatmap.

    Args:
        heatmap: (H, W) values, peaks near 1.
        mm_per_pixel: pixel size in mm at the isocentre.
        threshold: minimum heatmap value of a pixel to take part and of a centre.
        min_distance_mm: smallest distance between two centres in mm (vertebrae are at
            least ~15 mm apart, so about half that is safe).
        max_points: keep only the densest pixels above threshold, bounding the cost.
        refine_mm: average only the cluster's pixels within this many mm of its centre
            (None: the whole cluster).

    Returns:
        :class:`Peaks`, sorted by descending score.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got {heatmap.shape}")
    if not mm_per_pixel > 0 or not min_distance_mm > 0:
        raise ValueError("mm_per_pixel and min_distance_mm must be positive")
    if refine_mm is not None and not refine_mm > 0:
        raise ValueError("refine_mm must be positive (or None)")
    rows, cols = np.nonzero(np.nan_to_num(heatmap, nan=0.0) >= threshold)
    if len(rows) == 0:
        return Peaks(np.zeros((0, 2)), np.zeros(0))
    density = heatmap[rows, cols]
    order = np.argsort(-density, kind="stable")[:max_points]
    xy = np.stack([cols[order], rows[order]], axis=-1).astype(np.float64) * mm_per_pixel
    density = density[order]
    n = len(density)
    parent = np.full(n, -1)
    delta = np.full(n, np.inf)
    chunk = 1024
    for start in range(1, n, chunk):
        stop = min(start + chunk, n)
        d = np.linalg.norm(xy[start:stop, None] - xy[None, :stop], axis=-1)
        # only strictly earlier points (denser, or equal and earlier) are candidates
        d[np.arange(stop)[None, :] >= np.arange(start, stop)[:, None]] = np.inf
        nearest = np.argmin(d, axis=1)
        parent[start:stop] = nearest
        delta[start:stop] = d[np.arange(stop - start), nearest]
    centres = np.nonzero(delta >= min_distance_mm)[0]  # includes point 0 (delta = inf)
    label = np.full(n, -1)
    label[centres] = np.arange(len(centres))
    for index in range(n):  # parents come earlier in density order
        if label[index] < 0:
            label[index] = label[parent[index]]
    if refine_mm is not None:  # pixels far from their centre take no part in the mean
        near = np.linalg.norm(xy - xy[centres][label], axis=-1) <= refine_mm
        density = np.where(near, density, 0.0)
    weights = np.bincount(label, weights=density, minlength=len(centres))
    mean = np.stack([np.bincount(label, weights=density * xy[:, a], minlength=len(centres))
                     for a in range(2)], axis=-1) / weights[:, None]
    return Peaks(mean / mm_per_pixel, density[centres])
