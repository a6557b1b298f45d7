"""Cone-beam projection geometry: K views, each a point source and a flat detector.

Conventions (the one place they are written down; tests in ``tests/drrkit/test_geometry.py``):

* World space is LPS millimetres (x patient Left, y Posterior, z Superior), as ITK.
* Each view k has a source ``S`` (3,), the centre of detector pixel (col 0, row 0) ``D0``
  (3,), and two detector vectors ``u`` (world mm moved per +1 column) and ``v`` (per +1
  row). Pixel centres sit at integer (col, row); pixel (c, r) is at ``D0 + c u + r v``.
* Projection matrix (3, 4): with ``A = [u | v | D0 - S]`` (3x3, columns),
  ``P = [A^-1 | -A^-1 S]``; a world point X maps to ``h = P @ (X, 1)`` and to pixel
  ``(col, row) = (h0 / h2, h1 / h2)``. ``h2 > 0`` for points in front of the source;
  ``1 / h2`` is the fraction of the source-to-detector distance at which X lies.
* :func:`circular_orbit` (the paper's setting): rotation about the world z
  (superior-inferior) axis through the isocentre, by default the centre of the volume's
  box. View 0 has the source on the anterior side (-y); angles increase from anterior
  towards the patient's left (+x): the source sits at
  ``iso + sad * (sin a, -cos a, 0)``. Images are upright (superior on row 0: ``v`` points
  inferior) and in radiological display (in view 0 the patient's right is on the
  image's left: ``u`` points to +x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drrkit.errors import DrrkitError

#: Shortest pixel vector (mm) a geometry accepts: shorter is no detector, and its
#: products underflow (the detector normal, the frame's determinant).
MIN_PIXEL_MM = 1e-6


@dataclass(frozen=True, eq=False)
class Geometry:
    """K cone-beam views sharing one detector size.

    Attributes:
        sources: (K, 3) source positions, world mm.
        detector_origins: (K, 3) world mm of the centre of pixel (col 0, row 0).
        u: (K, 3) world mm moved per +1 column.
        v: (K, 3) world mm moved per +1 row.
        height: detector rows H.
        width: detector columns W.
        angles_deg: (K,) gantry angle of each view in degrees (NaN where not on an orbit).
    """

    sources: np.ndarray
    detector_origins: np.ndarray
    u: np.ndarray
    v: np.ndarray
    height: int
    width: int
    angles_deg: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("sources", "detector_origins", "u", "v"):
            a = np.asarray(getattr(self, name), dtype=np.float64)
            if a.ndim == 1:
                a = a[None]
            if a.ndim != 2 or a.shape[1] != 3:
                raise DrrkitError(f"{name} must have shape (K, 3), got {a.shape}")
            if not np.all(np.isfinite(a)):
                raise DrrkitError(f"{name} must be finite")
            arrays[name] = a
        k = {a.shape[0] for a in arrays.values()}
        if len(k) != 1:
            raise DrrkitError("sources, detector_origins, u and v must have the same K")
        (k,) = k
        if k < 1:
            raise DrrkitError("a geometry needs at least one view")
        if int(self.height) < 1 or int(self.width) < 1:
            raise DrrkitError(f"detector size must be positive, got {self.height}x{self.width}")
        for name, a in arrays.items():
            object.__setattr__(self, name, a)
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "width", int(self.width))
        angles = (
            np.full(k, np.nan) if self.angles_deg is None
            else np.asarray(self.angles_deg, dtype=np.float64).reshape(-1)
        )
        if angles.shape != (k,):
            raise DrrkitError(f"angles_deg must have K={k} values")
        object.__setattr__(self, "angles_deg", angles)
        pitch = np.linalg.norm(np.concatenate([self.u, self.v]), axis=1)
        if np.any(pitch < MIN_PIXEL_MM):
            raise DrrkitError(f"pixel vectors u and v must be at least {MIN_PIXEL_MM:g} mm "
                              f"long, got {pitch.min():g} mm")
        frame = self.frame
        det = np.linalg.det(frame)
        scale = np.linalg.norm(frame, axis=1).prod(axis=1)
        if np.any(np.abs(det) <= 1e-9 * scale):
            raise DrrkitError("degenerate view: the source lies in its detector plane "
                              "or u and v are parallel")

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.sources.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(K, H, W) of the images this geometry renders."""
        return (len(self), self.height, self.width)

    @property
    def frame(self) -> np.ndarray:
        """(K, 3, 3) matrices ``A = [u | v | D0 - S]`` (columns), world mm."""
        return np.stack([self.u, self.v, self.detector_origins - self.sources], axis=-1)

    @property
    def projection_matrices(self) -> np.ndarray:
        """(K, 3, 4) matrices mapping homogeneous world mm to homogeneous pixels (col, row, 1)."""
        inv = np.linalg.inv(self.frame)
        return np.concatenate([inv, -inv @ self.sources[:, :, None]], axis=-1)

    @property
    def normals(self) -> np.ndarray:
        """(K, 3) unit normals of the detector planes, pointing from the source to the detector."""
        n = np.cross(self.u, self.v)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        side = np.einsum("ki,ki->k", n, self.detector_origins - self.sources)
        return n * np.sign(side)[:, None]

    @property
    def source_to_detector(self) -> np.ndarray:
        """(K,) perpendicular distance in mm from each source to its detector plane."""
        return np.einsum("ki,ki->k", self.normals, self.detector_origins - self.sources)

    @property
    def detector_centers(self) -> np.ndarray:
        """(K, 3) world mm of the detector centre, ``D0 + (W-1)/2 u + (H-1)/2 v``."""
        return (self.detector_origins + 0.5 * (self.width - 1) * self.u
                + 0.5 * (self.height - 1) * self.v)

    @property
    def pixel_spacing(self) -> np.ndarray:
        """(K, 2) detector pixel size in mm, (column, row)."""
        return np.stack([np.linalg.norm(self.u, axis=-1), np.linalg.norm(self.v, axis=-1)], -1)

    def __getitem__(self, index) -> Geometry:
        """A subset of the views (an int, slice or index array), as a Geometry."""
        index = np.atleast_1d(np.arange(len(self))[index])
        return Geometry(self.sources[index], self.detector_origins[index], self.u[index],
                        self.v[index], self.height, self.width, self.angles_deg[index])

    def moved(self, rigid: np.ndarray) -> Geometry:
        """The same views under a rigid motion (4, 4) of world space."""
        rigid = np.asarray(rigid, dtype=np.float64)
        r, t = rigid[:3, :3], rigid[:3, 3]
        return Geometry(self.sources @ r.T + t, self.detector_origins @ r.T + t,
                        self.u @ r.T, self.v @ r.T, self.height, self.width, self.angles_deg)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_vectors(cls, sources, detector_centers, u, v, height: int, width: int) -> Geometry:
        """Views from explicit vectors.

        Args:
            sources: (K, 3) world mm.
            detector_centers: (K, 3) world mm of the detector centre.
            u: (K, 3) world mm per +1 column (length = column pixel spacing).
            v: (K, 3) world mm per +1 row (length = row pixel spacing).
            height, width: detector size in pixels.
        """
        c = np.atleast_2d(np.asarray(detector_centers, dtype=np.float64))
        u = np.atleast_2d(np.asarray(u, dtype=np.float64))
        v = np.atleast_2d(np.asarray(v, dtype=np.float64))
        d0 = c - 0.5 * (width - 1) * u - 0.5 * (height - 1) * v
        return cls(np.atleast_2d(sources), d0, u, v, height, width)

    @classmethod
    def from_matrices(cls, matrices, height: int, width: int, sid: float = 1000.0) -> Geometry:
        """Views from 3x4 projection matrices (world mm -> pixel (col, row)).

        A projection matrix fixes the rays but not the detector's distance, which does
        not change line integrals; the detector is placed ``sid`` mm from the source.

        Args:
            matrices: (K, 3, 4) or (3, 4).
            height, width: detector size in pixels.
            sid: source-to-detector distance in mm for the reconstructed detector frame.
        """
        p = np.asarray(matrices, dtype=np.float64)
        if p.ndim == 2:
            p = p[None]
        if p.shape[1:] != (3, 4):
            raise DrrkitError(f"projection matrices must be (K, 3, 4), got {p.shape}")
        m = p[:, :, :3]
        if np.any(np.abs(np.linalg.det(m)) < 1e-12 * np.abs(m).max(axis=(1, 2)) ** 3):
            raise DrrkitError("a projection matrix has a singular left 3x3 block")
        a = np.linalg.inv(m)  # = [u v D0-S] up to one scale per view
        sources = -np.einsum("kij,kj->ki", a, p[:, :, 3])
        n = np.cross(a[:, :, 0], a[:, :, 1])
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        # scale so that D0 - S lies in front of the source at distance sid along the normal
        depth = np.einsum("ki,ki->k", n, a[:, :, 2])
        scale = sid / depth
        a = a * scale[:, None, None]
        return cls(sources, sources + a[:, :, 2], a[:, :, 0], a[:, :, 1], height, width)


def circular_orbit(
    volume=None,
    views: int = 10,
    sad: float = 500.0,
    sid: float = 1000.0,
    size: int | tuple[int, int] = 1024,
    pixel_spacing: float | tuple[float, float] = 2.0,
    *,
    isocenter=None,
    start_angle: float = 0.0,
    arc: float = 360.0,
) -> Geometry:
    """K views on a circle about the patient's superior-inferior axis (the paper's setting).

    Views are ``arc / K`` degrees apart starting at ``start_angle`` (0 = source anterior,
    increasing towards the patient's left). Magnification at the isocentre is
    ``sid / sad`` (2 for the defaults, as in the paper, which used Plastimatch).

    Args:
        volume: a :class:`~drrkit.volume.Volume` whose box centre is the isocentre, or None.
        views: number of views K >= 1.
        sad: source-to-isocentre distance in mm.
        sid: source-to-detector distance in mm (> sad).
        size: detector pixels, an int (square) or (height, width).
        pixel_spacing: detector pixel size in mm, a float or (row, column).
        isocenter: (3,) world mm; overrides the volume's centre.
        start_angle: angle of view 0 in degrees.
        arc: angular range in degrees covered by the K views.

    Returns:
        Geometry with K views.
    """
    if int(views) != views or views < 1:
        raise DrrkitError(f"the number of views must be a positive integer, got {views}")
    if not (np.isfinite(sad) and np.isfinite(sid)) or sad <= 0 or sid <= sad:
        raise DrrkitError(f"need 0 < sad < sid, got sad={sad}, sid={sid}")
    height, width = (size, size) if np.isscalar(size) else size
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise DrrkitError(f"detector size must be positive integers, got {size}")
    row_spacing, col_spacing = ((pixel_spacing, pixel_spacing) if np.isscalar(pixel_spacing)
                                else pixel_spacing)
    if not (row_spacing > 0 and col_spacing > 0):
        raise DrrkitError(f"pixel spacing must be positive, got {pixel_spacing}")
    if isocenter is None:
        isocenter = np.zeros(3) if volume is None else volume.center
    iso = np.asarray(isocenter, dtype=np.float64).reshape(3)

    angles = start_angle + arc * np.arange(views) / views
    a = np.deg2rad(angles)
    toward_source = np.stack([np.sin(a), -np.cos(a), np.zeros_like(a)], axis=-1)
    sources = iso + sad * toward_source
    centers = iso - (sid - sad) * toward_source
    u = col_spacing * np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], axis=-1)
    v = row_spacing * np.tile([0.0, 0.0, -1.0], (views, 1))
    g = Geometry.from_vectors(sources, centers, u, v, int(height), int(width))
    return Geometry(g.sources, g.detector_origins, g.u, g.v, g.height, g.width, angles)


# ---------------------------------------------------------------------- point maps
@dataclass(frozen=True)
class Projected:
    """Points projected into every view.

    Attributes:
        pixels: (K, N, 2) float64 (col, row).
        depth: (K, N) distance in mm from the source along the detector normal.
        inside: (K, N) bool, in front of the source and within the detector's pixel area.
    """

    pixels: np.ndarray
    depth: np.ndarray
    inside: np.ndarray


def project_points(points, geometry: Geometry) -> Projected:
    """Project world points into every view.

    Args:
        points: (N, 3) world mm (or (3,) for one point).
        geometry: K views.

    Returns:
        :class:`Projected` with (K, N, 2) pixels (col, row), (K, N) depth in mm and
        (K, N) inside-detector flags.
    """
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if pts.shape[-1] != 3 or pts.ndim != 2:
        raise DrrkitError(f"points must have shape (N, 3), got {np.shape(points)}")
    p = geometry.projection_matrices
    h = np.einsum("kij,nj->kni", p[:, :, :3], pts) + p[:, None, :, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        pixels = h[..., :2] / h[..., 2:3]
    depth = np.einsum("kni,ki->kn", pts[None] - geometry.sources[:, None], geometry.normals)
    inside = (
        (h[..., 2] > 0)
        & (pixels[..., 0] >= -0.5) & (pixels[..., 0] <= geometry.width - 0.5)
        & (pixels[..., 1] >= -0.5) & (pixels[..., 1] <= geometry.height - 0.5)
    )
    return Projected(pixels, depth, inside)


def pixel_rays(geometry: Geometry, pixels) -> tuple[np.ndarray, np.ndarray]:
    """World rays from each view's source through detector pixels.

    Args:
        geometry: K views.
        pixels: (K, N, 2) (col, row) per view, or (N, 2) used for every view.

    Returns:
        origins (K, N, 3) world mm (the sources) and directions (K, N, 3) unit vectors.
    """
    px = np.asarray(pixels, dtype=np.float64)
    if px.ndim == 2:
        px = np.broadcast_to(px, (len(geometry),) + px.shape)
    if px.ndim != 3 or px.shape[0] != len(geometry) or px.shape[-1] != 2:
        raise DrrkitError(f"pixels must be (K, N, 2) or (N, 2), got {np.shape(pixels)}")
    points = (geometry.detector_origins[:, None] + px[..., :1] * geometry.u[:, None]
              + px[..., 1:] * geometry.v[:, None])
    directions = points - geometry.sources[:, None]
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    origins = np.broadcast_to(geometry.sources[:, None], directions.shape).copy()
    return origins, directions
