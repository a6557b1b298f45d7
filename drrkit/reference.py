"""Plain, slow, obviously correct NumPy references the fast backends are tested against.

Public and kept apart from the runtime code (only the tests and :mod:`drrkit.bench`'s
chord lengths use it). The ray rule of :mod:`drrkit.backends` (clip to the voxel box,
equal pieces no longer than ``step``, midpoint trilinear samples with edge clamping) and
Joseph's method, in float64, one ray at a time.
"""

from __future__ import annotations

import math

import numpy as np

from drrkit.backends import PIECE_SLACK


def trilinear(data: np.ndarray, index: np.ndarray) -> float:
    """Sample (Z, Y, X) ``data`` at continuous index (i, j, k), clamped to voxel centres."""
    shape_xyz = np.array(data.shape[::-1])
    x = np.clip(index, 0, shape_xyz - 1)
    lo = np.minimum(np.floor(x).astype(int), np.maximum(shape_xyz - 2, 0))
    hi = np.minimum(lo + 1, shape_xyz - 1)
    f = x - lo
    value = 0.0
    for corner in range(8):
        pick = [(corner >> a) & 1 for a in range(3)]
        ijk = [hi[a] if pick[a] else lo[a] for a in range(3)]
        weight = np.prod([f[a] if pick[a] else 1 - f[a] for a in range(3)])
        value += weight * data[ijk[2], ijk[1], ijk[0]]
    return float(value)


def clip_ray(origin: np.ndarray, direction: np.ndarray, shape_xyz) -> tuple[float, float]:
    """Parameter range [a0, a1] (a >= 0) where ``origin + a direction`` is in the voxel box."""
    a0, a1 = 0.0, math.inf
    for axis in range(3):
        lo, hi = -0.5, shape_xyz[axis] - 0.5
        if direction[axis] == 0:
            if not lo <= origin[axis] <= hi:
                return 0.0, -1.0
            continue
        ta = (lo - origin[axis]) / direction[axis]
        tb = (hi - origin[axis]) / direction[axis]
        a0, a1 = max(a0, min(ta, tb)), min(a1, max(ta, tb))
    return a0, a1


def _index_rays(volume, geometry):
    """Every pixel's ray in continuous voxel index space.

    Yields:
        (k, r, c, source (3,), direction (3,), mm_per_unit, (a0, a1)): the ray is
        ``source + a direction``; ``mm_per_unit`` is the world length in mm of one unit of
        ``a``; [a0, a1] is the parameter range inside the voxel box (empty when a1 <= a0).
    """
    w2i = volume.world_to_index
    metric = volume.index_to_world[:3, :3]
    shape_xyz = np.array(volume.shape_xyz)
    for k in range(len(geometry)):
        source = w2i[:3, :3] @ geometry.sources[k] + w2i[:3, 3]
        for r in range(geometry.height):
            for c in range(geometry.width):
                pixel = geometry.detector_origins[k] + c * geometry.u[k] + r * geometry.v[k]
                d = w2i[:3, :3] @ pixel + w2i[:3, 3] - source
                yield (k, r, c, source, d, float(np.linalg.norm(metric @ d)),
                       clip_ray(source, d, shape_xyz))


def chord_lengths(volume, geometry) -> np.ndarray:
    """(K, H, W) float64 length in mm of every pixel's ray inside the voxel box (0: misses).

    The clipping of :func:`clip_ray`, for all pixels of a view at once.
    """
    w2i = volume.world_to_index
    rot, shift = w2i[:3, :3], w2i[:3, 3]
    metric = volume.index_to_world[:3, :3]
    lo = -0.5
    hi = np.asarray(volume.shape_xyz, dtype=np.float64) - 0.5
    cols = np.arange(geometry.width, dtype=np.float64)
    rows = np.arange(geometry.height, dtype=np.float64)
    out = np.zeros(geometry.shape)
    for k in range(len(geometry)):
        source = rot @ geometry.sources[k] + shift
        pixels = (geometry.detector_origins[k] + cols[None, :, None] * geometry.u[k]
                  + rows[:, None, None] * geometry.v[k])  # (H, W, 3) world mm
        d = pixels @ rot.T + shift - source  # (H, W, 3) index space
        length = np.linalg.norm(d @ metric.T, axis=-1)
        a0 = np.zeros(d.shape[:2])
        a1 = np.full(d.shape[:2], np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            for axis in range(3):
                da = d[..., axis]
                ta = (lo - source[axis]) / da
                tb = (hi[axis] - source[axis]) / da
                parallel = da == 0
                inside = lo <= source[axis] <= hi[axis]
                a0 = np.where(parallel, a0, np.maximum(a0, np.minimum(ta, tb)))
                a1 = np.where(parallel, a1 if inside else -1.0,
                              np.minimum(a1, np.maximum(ta, tb)))
        out[k] = np.where(a1 > a0, (a1 - a0) * length, 0.0)
    return out


def piece_count_margins(volume, geometry, step: float) -> np.ndarray:
    """(K, H, W) distance of ``chord / step - PIECE_SLACK`` to the nearest whole number.

    The piece count ``ceil(chord / step - PIECE_SLACK)`` jumps where this distance is 0:
    a ray whose margin is below the float32 rounding of its chord (about 1e-4 steps) can
    be cut into N pieces by one backend and N + 1 by another, which changes its integral
    by the difference of two midpoint rules (large only on noise-like volumes). Misses
    (no chord) get ``inf``.
    """
    q = chord_lengths(volume, geometry) / step - PIECE_SLACK
    return np.where(q > 0, np.abs(q - np.round(q)), np.inf)


def render_reference(volume, geometry, step: float) -> np.ndarray:
    """(K, H, W) float64 line integrals in the same rule as the fast backends. Slow."""
    out = np.zeros(geometry.shape)
    data = np.asarray(volume.data, dtype=np.float64)
    for k, r, c, source, d, mm_per_unit, (a0, a1) in _index_rays(volume, geometry):
        if not a1 > a0:
            continue
        chord = (a1 - a0) * mm_per_unit
        n = max(1, math.ceil(chord / step - PIECE_SLACK))
        total = sum(trilinear(data, source + (a0 + (m + 0.5) * (a1 - a0) / n) * d)
                    for m in range(n))
        out[k, r, c] = total * chord / n
    return out


def render_reference_joseph(volume, geometry) -> np.ndarray:
    """(K, H, W) float64 Joseph line integrals (see :func:`drrkit._cpu._march_joseph`). Slow."""
    shape_xyz = np.array(volume.shape_xyz)
    data = np.asarray(volume.data, dtype=np.float64)
    out = np.zeros(geometry.shape)
    for k, r, c, source, d, mm_per_unit, (a0, a1) in _index_rays(volume, geometry):
        if not a1 > a0:
            continue
        axis = int(np.argmax(np.abs(d)))
        lo, hi = sorted([source[axis] + a0 * d[axis], source[axis] + a1 * d[axis]])
        mm_per_slice = mm_per_unit / abs(d[axis])
        total = 0.0
        for m in range(max(math.floor(lo + 0.5), 0),
                       min(math.floor(hi + 0.5), shape_xyz[axis] - 1) + 1):
            weight = min(m + 0.5, hi) - max(m - 0.5, lo)
            point = source + (m - source[axis]) / d[axis] * d
            total += weight * trilinear(data, point)
        out[k, r, c] = total * mm_per_slice
    return out
