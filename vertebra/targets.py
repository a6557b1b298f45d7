"""2-D training targets for K views: projected centroids, Gaussian heatmaps, identification maps.

All projection goes through :func:`drrkit.project_points`; nothing here re-derives the
camera geometry. Sizes given in mm are *at the isocentre*: a length ``L`` mm on the plane
through the isocentre parallel to view k's detector covers
``L * M_k / pixel_spacing_k`` pixels, with the magnification
``M_k = source_to_detector_k / depth_k(isocentre)`` (``sid / sad`` on a circular orbit).
So the targets keep the same physical size whatever the detector pixel size or
magnification.

Heatmaps: ``exp(-(dc^2 / (2 sc^2) + dr^2 / (2 sr^2)))`` with (dc, dr) the pixel offset from
the projected centroid (pixel centres at integer (col, row)) and (sc, sr) sigma in pixels
along columns and rows (equal for square pixels); peak 1 at the centroid. (The paper's
code divided by ``2 sigma`` instead of ``2 sigma^2``.) The combined map is the maximum
over vertebrae.

Identification maps: every pixel whose centre lies within (or on the edge of) the
``square_mm`` x ``square_mm`` square (side measured at the isocentre, 22 mm in the paper)
centred on a projected centroid gets that vertebra's network class
(:mod:`vertebra.labels`; 0 = background). Where squares overlap, ``overlap`` decides:

* ``"nearest"`` (default): the vertebra whose projected centroid is nearest to the pixel
  (distance in mm at the isocentre), ties (within 1e-6 mm) going to the one nearer the
  source. Adjacent vertebrae then split their overlap along the mid-line between them in
  every view, independent of file order and of which side the source is on.
* ``"front"``: the vertebra nearer the source (smaller depth) takes the whole overlap.
* ``"order"``: the later vertebra in anatomical order overwrites (the paper's code, which
  fills squares in list order).

Anchors: ``make_targets(anchors={26: s1})`` also draws a square of
:data:`vertebra.labels.SACRUM_CLASS` on the first sacral body in the identification maps
(not in the heatmaps: the localizer finds vertebrae only), under the same overlap rule.

Vertebrae drawn: those in front of the source and, when a volume is given, with their
centroid inside the CT's box. A centroid that projects just off the detector still
draws the part of its Gaussian / square that falls on it. ``visible`` (projects onto the
detector and lies in the CT) is reported for use as a per-view target mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drrkit.geometry import Geometry, project_points
from vertebra import labels as vlabels
from vertebra.errors import VertebraError

OVERLAP_RULES = ("nearest", "front", "order")

#: Side of the identification square at the isocentre in mm (the paper's value).
SQUARE_MM = 22.0

#: Pixels this close (in pixels) outside a square's edge still count as inside, so that
#: squares whose edge falls on pixel centres do not lose a row to rounding.
_EPS_PX = 1e-6

#: Heatmaps are set to 0 beyond this many sigma from the centroid along a pixel axis.
TRUNCATE_SIGMA = 6.0

#: Distances and depths are compared after rounding to this many decimals (mm), so that
#: ties (a pixel on the mid-line between two centroids) go to the documented tie-break.
_TIE_DECIMALS = 6

#: Default heatmap sigma at the isocentre in mm. The paper's code used a Gaussian with
#: effective sigma sqrt(7) ~ 2.6 px (its exponent lacked the square); 3 mm is that size
#: at about 1.1 mm per pixel at the isocentre.
SIGMA_MM = 3.0


@dataclass(frozen=True)
class ProjectedCentroids:
    """Centroids projected into K views, vertebrae in anatomical order.

    Attributes:
        labels: (N,) int64 VerSe ids.
        classes: (N,) int64 network classes (1..26; 27 for a sacrum anchor).
        points: (N, 3) world LPS mm.
        pixels: (K, N, 2) float64 (col, row).
        depth: (K, N) mm from the source along the detector normal.
        on_detector: (K, N) bool, in front of the source and on the detector's pixel area.
        in_volume: (N,) bool, inside the CT's box (all True when no volume was given).
        visible: (K, N) bool, ``on_detector & in_volume``.
    """

    labels: np.ndarray
    classes: np.ndarray
    points: np.ndarray
    pixels: np.ndarray
    depth: np.ndarray
    on_detector: np.ndarray
    in_volume: np.ndarray
    visible: np.ndarray

    @property
    def drawn(self) -> np.ndarray:
        """(K, N) bool: the vertebrae drawn in each view (in front of the source and in the CT)."""
        return (self.depth > 0) & self.in_volume[None, :]

    def join(self, other: ProjectedCentroids) -> ProjectedCentroids:
        """These N points followed by ``other``'s M (same K views): N + M points."""
        def cat(name: str, axis: int) -> np.ndarray:
            return np.concatenate([getattr(self, name), getattr(other, name)], axis=axis)

        return ProjectedCentroids(
            labels=cat("labels", 0), classes=cat("classes", 0), points=cat("points", 0),
            pixels=cat("pixels", 1), depth=cat("depth", 1), on_detector=cat("on_detector", 1),
            in_volume=cat("in_volume", 0), visible=cat("visible", 1))


@dataclass(frozen=True)
class ViewTargets:
    """Everything a 2-D network trains on for one CT and K views.

    Attributes:
        projected: the projected centroids.
        heatmaps: (K, H, W) float32 (max over vertebrae), or (K, N, H, W) with
            ``per_vertebra=True`` (channel n = ``projected.labels[n]``).
        id_maps: (K, H, W) int64 network class per pixel, 0 = background.
        pixel_mm: (K, 2) size in mm at the isocentre of one pixel (column, row).
        sigma_px: (K, 2) heatmap sigma in pixels (column, row).
        half_square_px: (K, 2) half side of the identification square in pixels.
    """

    projected: ProjectedCentroids
    heatmaps: np.ndarray
    id_maps: np.ndarray
    pixel_mm: np.ndarray
    sigma_px: np.ndarray
    half_square_px: np.ndarray


# ---------------------------------------------------------------------- projection
def _centroid_arrays(centroids) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(centroids, dict):
        raise VertebraError("centroids must be a mapping {VerSe label: (x, y, z) world mm}")
    bad = [k for k in centroids if not vlabels.is_vertebra(k)]
    if bad:
        raise VertebraError(f"labels {bad} are not vertebra targets (valid: 1-25, 28)")
    labels = np.array(vlabels.sort_anatomical(centroids), dtype=np.int64)
    return labels, _points(centroids, labels, "centroid")


def _points(mapping: dict, labels: np.ndarray, what: str) -> np.ndarray:
    """(N, 3) float64 world mm of ``mapping[label]`` for the N labels, checked."""
    try:
        points = np.array([np.asarray(mapping[k], dtype=np.float64).reshape(3) for k in labels],
                          dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError):
        raise VertebraError(f"every {what} must be 3 numbers (x, y, z) in mm") from None
    if not np.all(np.isfinite(points)):
        raise VertebraError(f"{what} coordinates must be finite")
    return points


def project_centroids(centroids: dict, geometry: Geometry, volume=None) -> ProjectedCentroids:
    """Project world centroids into every view with ``drrkit.project_points``.

    Args:
        centroids: {VerSe id: (3,) world LPS mm}; only vertebra targets (1-25, 28).
        geometry: K views.
        volume: the CT (``drrkit.Volume``) for the in-volume test, or None.

    Returns:
        :class:`ProjectedCentroids`, vertebrae sorted cranio-caudally.
    """
    labels, points = _centroid_arrays(centroids)
    return _project(labels, vlabels.classes_of(labels), points, geometry, volume)


def _project(labels: np.ndarray, classes: np.ndarray, points: np.ndarray, geometry: Geometry,
             volume) -> ProjectedCentroids:
    """(N,) labels and classes, (N, 3) world points -> :class:`ProjectedCentroids`."""
    k = len(geometry)
    if len(labels) == 0:
        z = np.zeros((k, 0))
        return ProjectedCentroids(labels, classes, points, np.zeros((k, 0, 2)), z,
                                  z.astype(bool), np.zeros(0, bool), z.astype(bool))
    proj = project_points(points, geometry)
    if volume is None:
        in_volume = np.ones(len(labels), dtype=bool)
    else:
        index = volume.world_to_voxel(points)
        n = np.asarray(volume.shape_xyz, dtype=np.float64)
        in_volume = np.all((index >= -0.5) & (index <= n - 0.5), axis=-1)
    return ProjectedCentroids(
        labels=labels,
        classes=classes,
        points=points,
        pixels=proj.pixels,
        depth=proj.depth,
        on_detector=proj.inside,
        in_volume=in_volume,
        visible=proj.inside & in_volume[None, :],
    )


def _anchor_arrays(anchors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """{26: (3,) world mm} -> (labels (A,), classes (A,), points (A, 3))."""
    if not isinstance(anchors, dict):
        raise VertebraError("anchors must be a mapping {26: (x, y, z) world mm}")
    bad = [k for k in anchors if k != vlabels.SACRUM]
    if bad:
        raise VertebraError(f"anchor labels {bad} are not supported (only {vlabels.SACRUM}, "
                            "the sacrum)")
    labels = np.array(sorted(anchors), dtype=np.int64)
    classes = np.full(len(labels), vlabels.SACRUM_CLASS, dtype=np.int64)
    return labels, classes, _points(anchors, labels, "anchor")


def default_isocenter(geometry: Geometry, volume=None) -> np.ndarray:
    """(3,) world mm: the volume's box centre, else the point nearest all central rays.

    The central ray of a view runs from its source through its detector centre; with two
    or more non-parallel views the least-squares point is the isocentre of an orbit.
    """
    if volume is not None:
        return np.asarray(volume.center, dtype=np.float64)
    d = geometry.detector_centers - geometry.sources
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    proj = np.eye(3)[None] - d[:, :, None] * d[:, None, :]
    a = proj.sum(axis=0)
    b = np.einsum("kij,kj->i", proj, geometry.sources)
    if np.linalg.cond(a) > 1e8:
        raise VertebraError("cannot infer an isocentre from parallel central rays; "
                            "pass isocenter= or the volume")
    return np.linalg.solve(a, b)


def pixel_size_at_isocenter(geometry: Geometry, isocenter) -> np.ndarray:
    """(K, 2) mm at the isocentre covered by one pixel (column, row).

    ``pixel_spacing * depth(isocentre) / source_to_detector``, i.e. the detector pixel
    divided by the magnification at the isocentre.
    """
    iso = np.asarray(isocenter, dtype=np.float64).reshape(3)
    depth = project_points(iso[None], geometry).depth[:, 0]
    if np.any(depth <= 0):
        raise VertebraError("the isocentre lies behind a view's source")
    magnification = geometry.source_to_detector / depth
    return geometry.pixel_spacing / magnification[:, None]


# ---------------------------------------------------------------------- maps
def _mm_to_px(value_mm: float, pixel_mm: np.ndarray, name: str) -> np.ndarray:
    value = float(value_mm)
    if not np.isfinite(value) or value <= 0:
        raise VertebraError(f"{name} must be a positive number of mm, got {value_mm}")
    return value / pixel_mm


def _window(centre: float, half: float, n: int) -> tuple[int, int]:
    """Pixel index range [lo, hi) of centres within ``half`` (+ a rounding margin) of ``centre``."""
    lo = max(int(np.ceil(centre - half - _EPS_PX)), 0)
    hi = min(int(np.floor(centre + half + _EPS_PX)) + 1, n)
    return lo, hi


def gaussian_heatmaps(projected: ProjectedCentroids, geometry: Geometry, sigma_px,
                      *, per_vertebra: bool = False) -> np.ndarray:
    """Gaussian heatmaps around the projected centroids.

    Values further than ``TRUNCATE_SIGMA`` (6) sigma from the centroid along a pixel axis
    are set to 0 (they are below 1.6e-8).

    Args:
        projected: from :func:`project_centroids`.
        geometry: the same K views.
        sigma_px: (K, 2) sigma in pixels (column, row), or a scalar.
        per_vertebra: return one channel per vertebra instead of the maximum.

    Returns:
        (K, H, W) float32, or (K, N, H, W) float32 with ``per_vertebra``; 0 where a
        vertebra is not drawn (see :attr:`ProjectedCentroids.drawn`).
    """
    k, h, w = geometry.shape
    n = len(projected.labels)
    sigma = np.broadcast_to(np.asarray(sigma_px, dtype=np.float64), (k, 2))
    if not np.all(sigma > 0):
        raise VertebraError("sigma must be positive")
    out = np.zeros((k, n, h, w) if per_vertebra else (k, h, w), dtype=np.float32)
    drawn = projected.drawn
    for view in range(k):
        sc, sr = sigma[view]
        for i in range(n):
            if not drawn[view, i]:
                continue
            cx, cy = projected.pixels[view, i]
            c0, c1 = _window(cx, TRUNCATE_SIGMA * sc, w)
            r0, r1 = _window(cy, TRUNCATE_SIGMA * sr, h)
            if c0 >= c1 or r0 >= r1:
                continue
            gx = np.exp(-0.5 * ((np.arange(c0, c1) - cx) / sc) ** 2)
            gy = np.exp(-0.5 * ((np.arange(r0, r1) - cy) / sr) ** 2)
            blob = (gy[:, None] * gx[None, :]).astype(np.float32)
            if per_vertebra:
                out[view, i, r0:r1, c0:c1] = blob
            else:
                np.maximum(out[view, r0:r1, c0:c1], blob, out=out[view, r0:r1, c0:c1])
    return out


def identification_maps(projected: ProjectedCentroids, geometry: Geometry, half_square_px,
                        pixel_mm, *, overlap: str = "nearest") -> np.ndarray:
    """Squares of network class around each projected centroid.

    Args:
        projected: from :func:`project_centroids`.
        geometry: the same K views.
        half_square_px: (K, 2) half the square's side in pixels (column, row).
        pixel_mm: (K, 2) pixel size at the isocentre in mm (for the "nearest" rule).
        overlap: "nearest", "front" or "order" (see the module docstring).

    Returns:
        (K, H, W) int64, 0 = background, else the class of :mod:`vertebra.labels`.
    """
    if overlap not in OVERLAP_RULES:
        raise VertebraError(f"unknown overlap rule {overlap!r}; choose one of "
                            f"{', '.join(OVERLAP_RULES)}")
    k, h, w = geometry.shape
    half = np.broadcast_to(np.asarray(half_square_px, dtype=np.float64), (k, 2))
    pmm = np.broadcast_to(np.asarray(pixel_mm, dtype=np.float64), (k, 2))
    if not np.all(half > 0):
        raise VertebraError("the identification square must have a positive size")
    drawn = projected.drawn
    out = np.zeros((k, h, w), dtype=np.int64)
    best = np.full((k, h, w), np.inf)   # primary key of the current owner
    best2 = np.full((k, h, w), np.inf)  # tie-break key
    for view in range(k):
        for i in range(len(projected.labels)):
            if not drawn[view, i]:
                continue
            cx, cy = projected.pixels[view, i]
            c0, c1 = _window(cx, half[view, 0], w)
            r0, r1 = _window(cy, half[view, 1], h)
            if c0 >= c1 or r0 >= r1:
                continue
            dc = (np.arange(c0, c1) - cx) * pmm[view, 0]
            dr = (np.arange(r0, r1) - cy) * pmm[view, 1]
            # rounded so that equal distances compare equal and go to the tie-break
            dist = np.round(np.sqrt(dr[:, None] ** 2 + dc[None, :] ** 2), _TIE_DECIMALS)
            depth = round(float(projected.depth[view, i]), _TIE_DECIMALS)
            if overlap == "nearest":
                key, key2 = dist, np.full_like(dist, depth)
            elif overlap == "front":
                key, key2 = np.full_like(dist, depth), dist
            else:  # "order": the later vertebra wins
                key, key2 = np.full_like(dist, -float(i)), dist
            b1 = best[view, r0:r1, c0:c1]
            b2 = best2[view, r0:r1, c0:c1]
            better = (key < b1) | ((key == b1) & (key2 < b2))
            out[view, r0:r1, c0:c1][better] = projected.classes[i]
            b1[better] = key[better]
            b2[better] = key2[better]
    return out


def make_targets(
    centroids: dict,
    geometry: Geometry,
    volume=None,
    *,
    sigma_mm: float = SIGMA_MM,
    square_mm: float = SQUARE_MM,
    isocenter=None,
    overlap: str = "nearest",
    per_vertebra: bool = False,
    anchors: dict | None = None,
) -> ViewTargets:
    """Projected centroids, heatmaps and identification maps for K views of one CT.

    Args:
        centroids: {VerSe id: (3,) world LPS mm}.
        geometry: K views (e.g. ``drrkit.circular_orbit(volume, ...)``).
        volume: the CT (``drrkit.Volume``): default isocentre and the in-volume test.
        sigma_mm: heatmap sigma in mm at the isocentre.
        square_mm: side of the identification square in mm at the isocentre.
        isocenter: (3,) world mm; default :func:`default_isocenter`.
        overlap: rule for overlapping squares: "nearest", "front" or "order".
        per_vertebra: heatmaps (K, N, H, W), one channel per vertebra, instead of (K, H, W).
        anchors: {26: (3,) world mm of the first sacral body} drawn as
            :data:`vertebra.labels.SACRUM_CLASS` squares in ``id_maps`` only (None: none).

    Returns:
        :class:`ViewTargets` (``projected`` holds the vertebrae only).

    Example:
        >>> import drrkit, numpy as np
        >>> g = drrkit.circular_orbit(views=2, size=64, pixel_spacing=2.0)
        >>> t = make_targets({20: np.zeros(3)}, g, isocenter=np.zeros(3))
        >>> t.heatmaps.shape, int(t.id_maps.max()), t.pixel_mm[0].tolist()
        ((2, 64, 64), 21, [1.0, 1.0])
    """
    if not isinstance(geometry, Geometry):
        raise VertebraError(f"geometry must be a drrkit.Geometry, got {type(geometry).__name__}")
    projected = project_centroids(centroids, geometry, volume)
    iso = default_isocenter(geometry, volume) if isocenter is None else isocenter
    pixel_mm = pixel_size_at_isocenter(geometry, iso)
    sigma_px = _mm_to_px(sigma_mm, pixel_mm, "sigma_mm")
    half_px = _mm_to_px(square_mm, pixel_mm, "square_mm") / 2.0
    heatmaps = gaussian_heatmaps(projected, geometry, sigma_px, per_vertebra=per_vertebra)
    squares = projected
    if anchors:
        squares = projected.join(_project(*_anchor_arrays(anchors), geometry, volume))
    id_maps = identification_maps(squares, geometry, half_px, pixel_mm, overlap=overlap)
    return ViewTargets(projected, heatmaps, id_maps, pixel_mm, sigma_px, half_px)
