"""Numba CPU ray marcher: the fast CPU backend of :func:`drrkit.render`.

It follows the ray rule of :mod:`drrkit.backends` (rays clipped to the voxel box, the
chord cut into equal pieces of at most ``step`` mm, trilinear samples at the pieces'
midpoints), or Joseph's method (one bilinear sample per slice of the dominant axis).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from drrkit import config
from drrkit.backends import PIECE_SLACK, prepare_rays

_JIT = {"fastmath": True, "cache": True, "error_model": "numpy", "nogil": True}


@numba.njit(inline="always", **_JIT)
def _clip_axis(s, d, hi, a0, a1):  # pragma: no cover - compiled
    """Narrow [a0, a1] to where ``s + a d`` lies in [-0.5, hi] along one axis."""
    if d != 0:
        inv = np.float32(1.0) / d
        ta = (np.float32(-0.5) - s) * inv
        tb = (hi - s) * inv
        return max(a0, min(ta, tb)), min(a1, max(ta, tb))
    if s < np.float32(-0.5) or s > hi:
        return a0, np.float32(-1.0)
    return a0, a1


@numba.njit(inline="always", **_JIT)
def _clip(s0, s1, s2, d0, d1, d2, hix, hiy, hiz):  # pragma: no cover - compiled
    """Ray parameter range [a0, a1], a0 >= 0, inside the voxel box (empty when a1 <= a0)."""
    a0, a1 = _clip_axis(s0, d0, hix, np.float32(0.0), np.float32(3.0e38))
    a0, a1 = _clip_axis(s1, d1, hiy, a0, a1)
    return _clip_axis(s2, d2, hiz, a0, a1)


@numba.njit(inline="always", **_JIT)
def _pixel_ray(rays, k, r, c, hix, hiy, hiz):  # pragma: no cover - compiled
    """The ray of pixel (c, r) of view k in voxel index space.

    Returns:
        direction (d0, d1, d2) from the source to the pixel centre (not normalised), its
        world length in mm (``sqrt(d^T G d)``), and the clip range [a0, a1] of the ray
        parameter (point = source + a d) inside the voxel box.
    """
    rf = np.float32(r)
    cf = np.float32(c)
    d0 = rays[k, 3] + cf * rays[k, 6] + rf * rays[k, 9] - rays[k, 0]
    d1 = rays[k, 4] + cf * rays[k, 7] + rf * rays[k, 10] - rays[k, 1]
    d2 = rays[k, 5] + cf * rays[k, 8] + rf * rays[k, 11] - rays[k, 2]
    g0 = rays[k, 12] * d0 + rays[k, 13] * d1 + rays[k, 14] * d2
    g1 = rays[k, 15] * d0 + rays[k, 16] * d1 + rays[k, 17] * d2
    g2 = rays[k, 18] * d0 + rays[k, 19] * d1 + rays[k, 20] * d2
    length_mm = math.sqrt(d0 * g0 + d1 * g1 + d2 * g2)
    a0, a1 = _clip(rays[k, 0], rays[k, 1], rays[k, 2], d0, d1, d2, hix, hiy, hiz)
    return d0, d1, d2, length_mm, a0, a1


@numba.njit(inline="always", **_JIT)
def _row_and_view(line, n_views):  # pragma: no cover - compiled
    """Work item ``line`` -> (detector row, view), rows outermost.

    Row r of every view of an orbit about the volume sees nearly the same slab of it (the
    slab at the row's height), so marching all views of a row one after the other reuses
    that slab from cache; view by view, a volume larger than the last-level cache is read
    from memory once per view (decision ``cpu-row-order`` in ``benchmarks/decisions.md``).
    """
    r = line // n_views
    return r, line - r * n_views


@numba.njit(parallel=True, **_JIT)
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
    hix, hiy, hiz = np.float32(nx - 0.5), np.float32(ny - 0.5), np.float32(nz - 0.5)
    n_views = rays.shape[0]
    zero = np.float32(0.0)
    for line in numba.prange(n_views * height):
        r, k = _row_and_view(line, n_views)
        s0, s1, s2 = rays[k, 0], rays[k, 1], rays[k, 2]
        for c in range(width):
            d0, d1, d2, length_mm, a0, a1 = _pixel_ray(rays, k, r, c, hix, hiy, hiz)
            if not a1 > a0:
                out[k, r, c] = zero
                continue
            chord_mm = (a1 - a0) * length_mm
            n = max(1, math.ceil(chord_mm / step - np.float32(PIECE_SLACK)))
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
            mf = zero
            for _ in range(n):
                x = min(max(p0 + mf * q0, zero), hx)
                y = min(max(p1 + mf * q1, zero), hy)
                z = min(max(p2 + mf * q2, zero), hz)
                mf += np.float32(1.0)
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


@numba.njit(parallel=True, **_JIT)
def _march_joseph(vol, rays, height, width, out):  # pragma: no cover - compiled
    """Joseph's method: one bilinear sample per slice of the ray's dominant index axis.

    For a ray whose index-space direction is largest along axis A, the box is cut into
    the slabs ``|x_A - m| <= 0.5`` of the voxel-centre planes ``x_A = m``; the sample at
    the plane crossing (bilinear in the other two axes, edge-clamped) is weighted by the
    ray's length in mm inside that slab (only the entry and exit slabs are partial).

    Args: as :func:`_march`, without ``step``.
    """
    shape = vol.shape
    flat = vol.reshape(-1)
    n_views = rays.shape[0]
    zero = np.float32(0.0)
    half = np.float32(0.5)
    hix = np.float32(shape[2] - 0.5)
    hiy = np.float32(shape[1] - 0.5)
    hiz = np.float32(shape[0] - 0.5)
    for line in numba.prange(n_views * height):
        r, k = _row_and_view(line, n_views)
        src = (rays[k, 0], rays[k, 1], rays[k, 2])
        for c in range(width):
            d0, d1, d2, length_mm, a0, a1 = _pixel_ray(rays, k, r, c, hix, hiy, hiz)
            if not a1 > a0:
                out[k, r, c] = zero
                continue
            # axis A = dominant, B and C the others; index axis 0 = i (x, stride 1)
            ax, ay, az = abs(d0), abs(d1), abs(d2)
            if ax >= ay and ax >= az:
                sa, da, sb, db, sc, dc = src[0], d0, src[1], d1, src[2], d2
                na, nb, nc = shape[2], shape[1], shape[0]
                stride_a, stride_b, stride_c = 1, shape[2], shape[2] * shape[1]
            elif ay >= az:
                sa, da, sb, db, sc, dc = src[1], d1, src[0], d0, src[2], d2
                na, nb, nc = shape[1], shape[2], shape[0]
                stride_a, stride_b, stride_c = shape[2], 1, shape[2] * shape[1]
            else:
                sa, da, sb, db, sc, dc = src[2], d2, src[0], d0, src[1], d1
                na, nb, nc = shape[0], shape[2], shape[1]
                stride_a, stride_b, stride_c = shape[2] * shape[1], 1, shape[2]
            off_b = stride_b if nb > 1 else 0
            off_c = stride_c if nc > 1 else 0
            top_b, top_c = np.float32(nb - 1), np.float32(nc - 1)
            last_b, last_c = max(nb - 2, 0), max(nc - 2, 0)
            xa0 = sa + a0 * da
            xa1 = sa + a1 * da
            lo = min(xa0, xa1)
            hi = max(xa0, xa1)
            m_first = max(math.floor(lo + half), 0)
            m_last = min(math.floor(hi + half), na - 1)
            inv = np.float32(1.0) / da
            mm_per_slice = length_mm * abs(inv)
            acc = zero
            for m in range(m_first, m_last + 1):
                mf = np.float32(m)
                weight = min(mf + half, hi) - max(mf - half, lo)
                t = (mf - sa) * inv
                xb = min(max(sb + t * db, zero), top_b)
                xc = min(max(sc + t * dc, zero), top_c)
                ib = min(int(xb), last_b)
                ic = min(int(xc), last_c)
                fb = xb - ib
                fc = xc - ic
                base = m * stride_a + ib * stride_b + ic * stride_c
                v0 = flat[base] + fb * (flat[base + off_b] - flat[base])
                v1 = flat[base + off_c] + fb * (flat[base + off_c + off_b] - flat[base + off_c])
                acc += weight * (v0 + fc * (v1 - v0))
            out[k, r, c] = acc * mm_per_slice


def render_cpu(volume, geometry, step: float, method: str = "trilinear") -> np.ndarray:
    """(K, H, W) float32 line integrals by ``method`` "trilinear" (module docstring) or "joseph"."""
    data = np.ascontiguousarray(volume.data, dtype=np.float32)
    rays = prepare_rays(volume, geometry)
    out = np.empty(geometry.shape, dtype=np.float32)
    threads = config.cpu_threads()
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        if method == "joseph":
            _march_joseph(data, rays, geometry.height, geometry.width, out)
        else:
            _march(data, rays, geometry.height, geometry.width, np.float32(step), out)
    finally:
        numba.set_num_threads(previous)
    return out
