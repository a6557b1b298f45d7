"""Numba CPU ray marcher: the fast CPU backend of :func:`drrkit.render`.

The ray rule (shared with the CUDA kernels in ``drrkit/cuda/``; ``drrkit.reference``
holds a plain NumPy copy the tests compare against):

1. The ray of pixel (c, r) of view k starts at the source S and points at
   ``D0 + c u + r v``; it is expressed in continuous voxel index space, where the
   volume is the box ``[-0.5, n - 0.5]`` along each axis, and ``t`` is the world
   distance from the source in mm.
2. The ray is clipped to the box analytically (slab method) to ``[t0, t1]``, t0 >= 0.
3. The chord is cut into ``N = ceil((t1 - t0) / step)`` equal pieces of length
   ``h = (t1 - t0) / N <= step`` mm; the volume is sampled at each piece's midpoint
   with trilinear interpolation (coordinates clamped to the voxel centres, i.e.
   edge voxels extend to the box faces) and the line integral is ``h * sum``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from drrkit import config


@numba.njit(parallel=True, fastmath=True, cache=True, error_model="numpy", nogil=True)
def _march(vol, rays, height, width, step, out):  # pragma: no cover - compiled
    """Line integrals of ``vol`` along every pixel's ray.

    Args:
        vol: (Z, Y, X) float32, C-contiguous.
        rays: (K, 21) float32 from :func:`prepare_rays`.
        height, width: detector size in pixels.
        step: largest sampling step along the ray in mm.
        out: (K, H, W) float32, overwritten.
    """
    nz, ny, nx = vol.shape
    flat = vol.reshape(-1)
    sx, sy, sz = 1, nx, nx * ny
    ox = 1 if nx > 1 else 0
    oy = sy if ny > 1 else 0
    oz = sz if nz > 1 else 0
    mx, my, mz = max(nx - 2, 0), max(ny - 2, 0), max(nz - 2, 0)
    hx, hy, hz = np.float32(nx - 1), np.float32(ny - 1), np.float32(nz - 1)
    lox, loy, loz = np.float32(-0.5), np.float32(-0.5), np.float32(-0.5)
    hix, hiy, hiz = np.float32(nx - 0.5), np.float32(ny - 0.5), np.float32(nz - 0.5)
    n_views = rays.shape[0]
    zero = np.float32(0.0)
    for line in numba.prange(n_views * height):
        k = line // height
        r = line - k * height
        s0, s1, s2 = rays[k, 0], rays[k, 1], rays[k, 2]
        metric = rays[k, 12:21]
        for c in range(width):
            # direction in index space (not normalised)
            d0 = rays[k, 3] + c * rays[k, 6] + r * rays[k, 9] - s0
            d1 = rays[k, 4] + c * rays[k, 7] + r * rays[k, 10] - s1
            d2 = rays[k, 5] + c * rays[k, 8] + r * rays[k, 11] - s2
            # world length of the index-space vector d: |d|_mm = sqrt(d^T G d)
            g0 = metric[0] * d0 + metric[1] * d1 + metric[2] * d2
            g1 = metric[3] * d0 + metric[4] * d1 + metric[5] * d2
            g2 = metric[6] * d0 + metric[7] * d1 + metric[8] * d2
            length_mm = math.sqrt(d0 * g0 + d1 * g1 + d2 * g2)
            # slab clipping in the ray parameter a (point = s + a d), a >= 0
            a0 = zero
            a1 = np.float32(3.0e38)
            if d0 != 0:
                inv = np.float32(1.0) / d0
                ta = (lox - s0) * inv
                tb = (hix - s0) * inv
                a0 = max(a0, min(ta, tb))
                a1 = min(a1, max(ta, tb))
            elif s0 < lox or s0 > hix:
                a1 = -np.float32(1.0)
            if d1 != 0:
                inv = np.float32(1.0) / d1
                ta = (loy - s1) * inv
                tb = (hiy - s1) * inv
                a0 = max(a0, min(ta, tb))
                a1 = min(a1, max(ta, tb))
            elif s1 < loy or s1 > hiy:
                a1 = -np.float32(1.0)
            if d2 != 0:
                inv = np.float32(1.0) / d2
                ta = (loz - s2) * inv
                tb = (hiz - s2) * inv
                a0 = max(a0, min(ta, tb))
                a1 = min(a1, max(ta, tb))
            elif s2 < loz or s2 > hiz:
                a1 = -np.float32(1.0)
            if not a1 > a0:
                out[k, r, c] = zero
                continue
            chord_mm = (a1 - a0) * length_mm
            n = max(1, int(math.ceil(chord_mm / step)))
            da = (a1 - a0) / n
            h_mm = chord_mm / n
            # first sample at the midpoint of the first piece
            p0 = s0 + (a0 + np.float32(0.5) * da) * d0
            p1 = s1 + (a0 + np.float32(0.5) * da) * d1
            p2 = s2 + (a0 + np.float32(0.5) * da) * d2
            q0 = da * d0
            q1 = da * d1
            q2 = da * d2
            acc = zero
            for m in range(n):
                x = min(max(p0 + m * q0, zero), hx)
                y = min(max(p1 + m * q1, zero), hy)
                z = min(max(p2 + m * q2, zero), hz)
                i = min(int(x), mx)
                j = min(int(y), my)
                kk = min(int(z), mz)
                fx = x - i
                fy = y - j
                fz = z - kk
                b = kk * sz + j * sy + i * sx
                c00 = flat[b] + fx * (flat[b + ox] - flat[b])
                c10 = flat[b + oy] + fx * (flat[b + oy + ox] - flat[b + oy])
                c01 = flat[b + oz] + fx * (flat[b + oz + ox] - flat[b + oz])
                c11 = flat[b + oz + oy] + fx * (flat[b + oz + oy + ox] - flat[b + oz + oy])
                c0 = c00 + fy * (c10 - c00)
                c1 = c01 + fy * (c11 - c01)
                acc += c0 + fz * (c1 - c0)
            out[k, r, c] = acc * h_mm


def prepare_rays(volume, geometry) -> np.ndarray:
    """Per-view ray parameters in voxel index space.

    Returns:
        (K, 21) float32: source (3), pixel (0, 0) centre (3), index step per column (3),
        per row (3), all in continuous voxel index (i, j, k); then the 3x3 metric
        ``G = M^T M`` (row-major, mm^2 per index unit^2) with M the index-to-world
        linear map, so an index-space vector d has world length ``sqrt(d^T G d)`` mm.
    """
    w2i = volume.world_to_index
    rot, shift = w2i[:3, :3], w2i[:3, 3]
    m = volume.index_to_world[:3, :3]
    k = len(geometry)
    rays = np.empty((k, 21), dtype=np.float64)
    rays[:, 0:3] = geometry.sources @ rot.T + shift
    rays[:, 3:6] = geometry.detector_origins @ rot.T + shift
    rays[:, 6:9] = geometry.u @ rot.T
    rays[:, 9:12] = geometry.v @ rot.T
    rays[:, 12:21] = (m.T @ m).reshape(-1)
    return rays.astype(np.float32)


def render_cpu(volume, geometry, step: float) -> np.ndarray:
    """(K, H, W) float32 line integrals; see the module docstring for the rule."""
    data = np.ascontiguousarray(volume.data, dtype=np.float32)
    rays = prepare_rays(volume, geometry)
    out = np.empty(geometry.shape, dtype=np.float32)
    threads = config.cpu_threads()
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        _march(data, rays, geometry.height, geometry.width, np.float32(step), out)
    finally:
        numba.set_num_threads(previous)
    return out
