"""Analytic phantoms: sums of uniform ellipsoids with closed-form line integrals.

An ellipsoid with centre ``c`` (world mm), rotation ``R`` (columns = its axes in world)
and semi-axes ``a`` (mm) is the set ``|diag(1/a) R^T (x - c)| <= 1``. A ray
``x = o + t d`` (|d| = 1) meets it where the quadratic ``A t^2 + 2 B t + C = 0`` with
``A = |e|^2``, ``B = e . f``, ``C = |f|^2 - 1``, ``e = diag(1/a) R^T d``,
``f = diag(1/a) R^T (o - c)``, has roots; the chord length is ``2 sqrt(B^2 - A C) / A``.
The line integral of the phantom is the sum over ellipsoids of ``mu * chord``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drrkit.geometry import Geometry, pixel_rays
from drrkit.volume import Volume


@dataclass(frozen=True)
class Ellipsoid:
    """A uniform ellipsoid.

    Attributes:
        center: (3,) world mm.
        semi_axes: (3,) mm.
        mu: attenuation in 1/mm added inside (may be negative to carve).
        rotation: (3, 3) columns are the ellipsoid's axes in world coordinates.
    """

    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    mu: float
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    def _local(self, points: np.ndarray) -> np.ndarray:
        r = np.asarray(self.rotation, dtype=np.float64)
        return ((points - np.asarray(self.center)) @ r) / np.asarray(self.semi_axes)


def rotation_z(degrees: float) -> np.ndarray:
    """(3, 3) rotation by ``degrees`` about the world z axis."""
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0, 0, 1.0]])


def chord_lengths(ellipsoid: Ellipsoid, origins: np.ndarray, directions: np.ndarray):
    """Exact chord lengths in mm of rays through one ellipsoid.

    Args:
        origins: (..., 3) world mm.
        directions: (..., 3) unit vectors.

    Returns:
        (...,) chord length in mm (0 where the ray misses).
    """
    r = np.asarray(ellipsoid.rotation, dtype=np.float64)
    inv_a = 1.0 / np.asarray(ellipsoid.semi_axes, dtype=np.float64)
    e = (directions @ r) * inv_a
    f = ((origins - np.asarray(ellipsoid.center)) @ r) * inv_a
    a = np.einsum("...i,...i->...", e, e)
    b = np.einsum("...i,...i->...", e, f)
    c = np.einsum("...i,...i->...", f, f) - 1.0
    disc = np.maximum(b * b - a * c, 0.0)
    return 2.0 * np.sqrt(disc) / a


def line_integrals(ellipsoids, geometry: Geometry) -> np.ndarray:
    """(K, H, W) float64 exact line integrals of a sum of ellipsoids for every pixel."""
    cols, rows = np.meshgrid(np.arange(geometry.width), np.arange(geometry.height))
    pixels = np.stack([cols.ravel(), rows.ravel()], axis=-1).astype(np.float64)
    origins, directions = pixel_rays(geometry, pixels)
    total = np.zeros(origins.shape[:2])
    for ellipsoid in ellipsoids:
        total += ellipsoid.mu * chord_lengths(ellipsoid, origins, directions)
    return total.reshape(geometry.shape)


def voxelize(
    ellipsoids,
    shape_zyx: tuple[int, int, int],
    spacing=(1.0, 1.0, 1.0),
    origin=None,
    direction=None,
    supersample: int = 3,
) -> Volume:
    """Sample a sum of ellipsoids on a voxel grid (fraction of each voxel inside, by supersampling).

    Args:
        shape_zyx: (Z, Y, X) voxels.
        spacing: (3,) mm along (i, j, k).
        origin: (3,) world mm of voxel (0, 0, 0); default centres the grid on the world origin.
        direction: (3, 3) direction cosines (default identity).
        supersample: sub-samples per voxel along each axis.

    Returns:
        Volume with float32 attenuation in 1/mm.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    nxyz = np.array(shape_zyx[::-1])
    if origin is None:
        origin = -direction @ (spacing * (nxyz - 1) / 2.0)
    volume = Volume(np.zeros(shape_zyx, np.float32), spacing, origin, direction)
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    sub = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3)
    data = np.zeros(shape_zyx, np.float64)
    for ellipsoid in ellipsoids:
        lo, hi = _index_bounds(ellipsoid, volume)
        if np.any(hi < lo):
            continue
        k, j, i = np.meshgrid(*(np.arange(lo[a], hi[a] + 1) for a in (2, 1, 0)), indexing="ij")
        base = np.stack([i, j, k], axis=-1).astype(np.float64)
        inside = np.zeros(base.shape[:-1])
        for offset in sub:
            local = ellipsoid._local(volume.voxel_to_world(base + offset))
            inside += np.einsum("...i,...i->...", local, local) <= 1.0
        data[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] += ellipsoid.mu * inside
    return volume.with_data((data / supersample**3).astype(np.float32))


def _index_bounds(ellipsoid: Ellipsoid, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (i, j, k) voxel ranges that can touch the ellipsoid, clipped to the grid."""
    r = np.asarray(ellipsoid.rotation, dtype=np.float64)
    half = np.abs(r * np.asarray(ellipsoid.semi_axes)[None, :]).sum(axis=1)  # world AABB
    corners = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij")).reshape(3, -1).T
    index = volume.world_to_voxel(np.asarray(ellipsoid.center) + corners * half)
    n = np.asarray(volume.shape_xyz)
    lo = np.clip(np.floor(index.min(axis=0) - 0.5).astype(int), 0, n - 1)
    hi = np.clip(np.ceil(index.max(axis=0) + 0.5).astype(int), 0, n - 1)
    return lo, hi


def torso_ellipsoids(scale: float = 1.0) -> list[Ellipsoid]:
    """A simple torso of ellipsoids in world LPS mm, centred on the origin.

    Soft-tissue trunk, two lungs, a vertebral column of bodies, a sternum and a marker
    bead on the patient's left (+x) and superior (+z) side, so orientation can be read off
    every image. ``scale`` multiplies all lengths.
    """
    water = 0.0193
    s = scale
    items = [
        Ellipsoid((0, 0, 0), (150 * s, 100 * s, 140 * s), water),                # trunk
        Ellipsoid((-70 * s, 0, 20 * s), (50 * s, 60 * s, 100 * s), -0.8 * water),  # right lung
        Ellipsoid((70 * s, 0, 20 * s), (50 * s, 60 * s, 100 * s), -0.8 * water),   # left lung
        Ellipsoid((0, -85 * s, 10 * s), (12 * s, 6 * s, 80 * s), 1.0 * water),    # sternum
        Ellipsoid((90 * s, -40 * s, 100 * s), (8 * s, 8 * s, 8 * s), 3.0 * water),  # marker
    ]
    for level in range(7):
        z = (100 - 33 * level) * s
        radius = (16 + 2 * level) * s
        items.append(Ellipsoid((0, 45 * s, z), (radius, radius * 0.8, 12 * s), 1.2 * water))
    return items


def default_phantom(size: int = 128) -> Volume:
    """The built-in torso phantom voxelised on a ``size``^3 grid of 340/size mm voxels."""
    spacing = 340.0 / size
    return voxelize(torso_ellipsoids(), (size, size, size), (spacing,) * 3, supersample=2)
