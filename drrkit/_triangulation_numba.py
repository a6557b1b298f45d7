"""Numba CPU kernel of :func:`drrkit.triangulate` (the NumPy backend).

One problem per loop iteration, in parallel over problems; the K rays of a problem are
read three times while they sit in L1 cache, so the kernel streams its input once.
The formula (the paper's Eq. 4-5, shared with ``drrkit/cuda/triangulate.cu`` and the
array version in :mod:`drrkit.triangulation`):

1. ``c`` = weighted mean of the origins of the rays with weight > 0 (a reference point
   that keeps the sums small, so rigid motions of the scene do not cost accuracy).
2. ``n_k = d_k / |d_k|``; ``S = sum_k w_k (I - n_k n_k^T)``;
   ``q = sum_k w_k (I - n_k n_k^T)(a_k - c)``.
3. ``x = S^-1 q`` by the adjugate (S is 3x3 symmetric); the point is ``c + x``.
4. Valid when at least two rays have weight > 0, every such ray is finite with a
   non-zero direction, and ``det(S) >= limit * sum(w) * trace(adj S)``, i.e.
   ``1 / (sum(w) trace(S^-1)) >= limit`` (see :func:`drrkit.triangulation.angle_limit`).
5. RMS residual: ``sqrt(sum_k w_k |(I - n_k n_k^T)(c + x - a_k)|^2 / sum_k w_k)``.

Accumulation is always float64 here (on a CPU it costs nothing: the kernel is bound by
memory traffic, which follows the input dtype).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from drrkit import config

#: status codes written per problem
VALID, DEGENERATE, BAD_WEIGHT = 0, 1, 2



#: LLVM fast-math flags of the kernel: reassociation, reciprocals and fused multiply-add
#: (~10% faster), but not "nnan"/"ninf", which would drop the finiteness checks
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}


@numba.njit(fastmath=FASTMATH, cache=True, error_model="numpy", nogil=True)
def _solve_one(i, origins, directions, weights, has_weights, limit,
               points, rms, status):  # pragma: no cover - compiled
    """Least-squares ray intersection of problem ``i`` (arguments: :func:`triangulate_numba`).

    Every load is widened with ``np.float64`` (Numba's ``float()`` keeps float32).
    """
    n_rays = origins.shape[1]
    nan = np.nan
    # pass 1: reference point, total weight, input checks
    total = 0.0
    count = 0
    cx = 0.0
    cy = 0.0
    cz = 0.0
    code = VALID
    for k in range(n_rays):
        w = 1.0
        if has_weights:
            w = np.float64(weights[i, k])
            if not (w >= 0.0 and w < np.inf):
                code = BAD_WEIGHT
                break
        if w == 0.0:
            continue
        ax = np.float64(origins[i, k, 0])
        ay = np.float64(origins[i, k, 1])
        az = np.float64(origins[i, k, 2])
        dx = np.float64(directions[i, k, 0])
        dy = np.float64(directions[i, k, 1])
        dz = np.float64(directions[i, k, 2])
        norm2 = dx * dx + dy * dy + dz * dz
        finite = (ax - ax == 0.0) and (ay - ay == 0.0) and (az - az == 0.0)
        if not (finite and norm2 > 0.0 and norm2 < np.inf):
            code = DEGENERATE
        total += w
        count += 1
        cx += w * ax
        cy += w * ay
        cz += w * az
    if code == VALID and count < 2:
        code = DEGENERATE
    if code != VALID:
        status[i] = code
        points[i, 0] = nan
        points[i, 1] = nan
        points[i, 2] = nan
        rms[i] = nan
        return
    cx /= total
    cy /= total
    cz /= total
    # pass 2: normal equations S x = q about c
    s00 = 0.0
    s01 = 0.0
    s02 = 0.0
    s11 = 0.0
    s12 = 0.0
    s22 = 0.0
    q0 = 0.0
    q1 = 0.0
    q2 = 0.0
    for k in range(n_rays):
        w = np.float64(weights[i, k]) if has_weights else 1.0
        if w == 0.0:
            continue
        dx = np.float64(directions[i, k, 0])
        dy = np.float64(directions[i, k, 1])
        dz = np.float64(directions[i, k, 2])
        inv = 1.0 / math.sqrt(dx * dx + dy * dy + dz * dz)
        nx = dx * inv
        ny = dy * inv
        nz = dz * inv
        ax = np.float64(origins[i, k, 0]) - cx
        ay = np.float64(origins[i, k, 1]) - cy
        az = np.float64(origins[i, k, 2]) - cz
        wx = w * nx
        wy = w * ny
        wz = w * nz
        s00 += w - wx * nx
        s11 += w - wy * ny
        s22 += w - wz * nz
        s01 -= wx * ny
        s02 -= wx * nz
        s12 -= wy * nz
        along = nx * ax + ny * ay + nz * az
        q0 += w * ax - wx * along
        q1 += w * ay - wy * along
        q2 += w * az - wz * along
    # adjugate of the symmetric S
    m00 = s11 * s22 - s12 * s12
    m01 = s02 * s12 - s01 * s22
    m02 = s01 * s12 - s02 * s11
    m11 = s00 * s22 - s02 * s02
    m12 = s01 * s02 - s00 * s12
    m22 = s00 * s11 - s01 * s01
    det = s00 * m00 + s01 * m01 + s02 * m02
    if not (det > 0.0 and det >= limit * total * (m00 + m11 + m22)):
        status[i] = DEGENERATE
        points[i, 0] = nan
        points[i, 1] = nan
        points[i, 2] = nan
        rms[i] = nan
        return
    x0 = (m00 * q0 + m01 * q1 + m02 * q2) / det
    x1 = (m01 * q0 + m11 * q1 + m12 * q2) / det
    x2 = (m02 * q0 + m12 * q1 + m22 * q2) / det
    # pass 3: perpendicular residuals
    sq = 0.0
    for k in range(n_rays):
        w = np.float64(weights[i, k]) if has_weights else 1.0
        if w == 0.0:
            continue
        dx = np.float64(directions[i, k, 0])
        dy = np.float64(directions[i, k, 1])
        dz = np.float64(directions[i, k, 2])
        ex = x0 - (np.float64(origins[i, k, 0]) - cx)
        ey = x1 - (np.float64(origins[i, k, 1]) - cy)
        ez = x2 - (np.float64(origins[i, k, 2]) - cz)
        along = (dx * ex + dy * ey + dz * ez) / (dx * dx + dy * dy + dz * dz)
        px = ex - along * dx
        py = ey - along * dy
        pz = ez - along * dz
        sq += w * (px * px + py * py + pz * pz)
    status[i] = VALID
    points[i, 0] = cx + x0
    points[i, 1] = cy + x1
    points[i, 2] = cz + x2
    rms[i] = math.sqrt(sq / total)


@numba.njit(parallel=True, cache=True, nogil=True)
def _kernel_parallel(origins, directions, weights, has_weights, limit,
                     points, rms, status):  # pragma: no cover - compiled
    """Every problem, in parallel over problems (arguments: see :func:`triangulate_numba`)."""
    for i in numba.prange(origins.shape[0]):
        _solve_one(i, origins, directions, weights, has_weights, limit, points, rms, status)


@numba.njit(cache=True, nogil=True)
def _kernel_serial(origins, directions, weights, has_weights, limit,
                   points, rms, status):  # pragma: no cover - compiled
    """Every problem on the calling thread (small batches: no thread start-up cost)."""
    for i in range(origins.shape[0]):
        _solve_one(i, origins, directions, weights, has_weights, limit, points, rms, status)


def triangulate_numba(origins: np.ndarray, directions: np.ndarray, weights: np.ndarray | None,
                      limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the kernel on C-contiguous arrays of one float dtype.

    Args:
        origins, directions: (N, K, 3) float32 or float64.
        weights: (N, K) of the same dtype, or None (every weight 1).
        limit: conditioning threshold (:func:`drrkit.triangulation.angle_limit`).

    Returns:
        points (N, 3), rms (N,) in the input dtype, and status (N,) int8.
    """
    n = origins.shape[0]
    dtype = origins.dtype
    points = np.empty((n, 3), dtype=dtype)
    rms = np.empty(n, dtype=dtype)
    status = np.empty(n, dtype=np.int8)
    has_weights = weights is not None
    w = weights if has_weights else np.empty((0, 0), dtype=dtype)
    if n < config.PARALLEL_MIN_PROBLEMS:
        _kernel_serial(origins, directions, w, has_weights, float(limit), points, rms, status)
        return points, rms, status
    previous = numba.get_num_threads()
    numba.set_num_threads(config.cpu_threads())
    try:
        _kernel_parallel(origins, directions, w, has_weights, float(limit), points, rms, status)
    finally:
        numba.set_num_threads(previous)
    return points, rms, status
