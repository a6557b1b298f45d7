"""Batched least-squares triangulation: the 3-D point closest to K rays.

For rays ``a_k + t d_k`` (origin ``a_k``, direction ``d_k``, weight ``w_k >= 0``) the
point ``p`` minimising ``sum_k w_k dist(p, ray_k)^2`` solves the paper's Eq. 4-5
(Wu et al., MICCAI 2023)::

    S p = q,    S = sum_k w_k (I - n_k n_k^T),    q = sum_k w_k (I - n_k n_k^T) a_k,

with ``n_k = d_k / |d_k|``. Rays are treated as full lines (a point behind a source is
allowed). Implementation details shared by every backend:

* Sums are taken about ``c``, the weighted mean of the origins, and ``p = c + S^-1 q'``;
  the 3x3 system is solved with the adjugate of the symmetric ``S``.
* Conditioning: ``S`` loses rank when fewer than two rays remain or the rays are
  parallel. A problem is valid when ``1 / (sum(w) trace(S^-1)) >= angle_limit(theta)``,
  the value for two equally weighted rays crossing at ``min_angle_deg`` (the measure is
  the inverse of the point's variance under unit isotropic ray noise, scaled to be
  independent of the weights' scale). Invalid problems give NaN points and residuals.
* A ray with weight 0 is ignored entirely (it may hold NaN, e.g. a missing detection).
  A ray with positive weight and a non-finite value or a zero direction makes its
  problem invalid. Negative, NaN or infinite weights raise :class:`DrrkitError`.

Backends share one signature and are picked from the input type (``backend="auto"``):
NumPy arrays run a parallel Numba kernel (:mod:`drrkit._triangulation_numba`), torch
tensors an array-expression version on their device (differentiable with respect to
origins, directions and weights; CPU tensors that need no gradient go to the Numba
kernel through zero-copy views), CuPy arrays a fused CUDA kernel
(``drrkit/cuda/triangulate.cu``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from drrkit.errors import DrrkitError

BACKENDS = ("auto", "numpy", "torch", "cupy")
ACCUMULATE = ("float64", "input")

#: default conditioning limit, in degrees between two equally weighted rays
MIN_ANGLE_DEG = 1.0


@dataclass(frozen=True, eq=False)
class Triangulation:
    """Least-squares points of B problems (B = the leading dims of the input).

    Attributes:
        points: (..., 3) world mm (the rays' units); NaN where not valid.
        rms: (...,) weighted RMS perpendicular distance from the point to its rays, mm;
            NaN where not valid.
        valid: (...,) bool, False for degenerate problems (fewer than two rays, rays
            (nearly) parallel, non-finite rays).

    Arrays are of the backend's type (NumPy, torch or CuPy) and the input's float dtype.
    """

    points: Any
    rms: Any
    valid: Any


@dataclass(frozen=True, eq=False)
class RobustTriangulation(Triangulation):
    """:class:`Triangulation` after outlier rejection, plus which rays were kept.

    Attributes:
        inliers: (..., K) bool, rays used for the final fit (all False where not valid).
            ``rms`` is taken over the inliers only.
    """

    inliers: Any


def angle_limit(min_angle_deg: float) -> float:
    """Conditioning threshold of two equally weighted rays crossing at ``min_angle_deg``.

    For such a pair ``1 / (sum(w) trace(S^-1)) = sin^2(theta) / (sin^2(theta) + 4)``;
    every problem whose conditioning is at least this value is valid.
    """
    if not (0.0 < float(min_angle_deg) <= 90.0):
        raise DrrkitError(f"min_angle_deg must be in (0, 90], got {min_angle_deg}")
    s2 = math.sin(math.radians(float(min_angle_deg))) ** 2
    return s2 / (s2 + 4.0)


# ---------------------------------------------------------------------- backends
def _kind(x) -> str:
    """'torch', 'cupy' or 'numpy' from an array's type, without importing anything."""
    module = type(x).__module__.split(".")[0]
    return module if module in ("torch", "cupy") else "numpy"


def _resolve_backend(backend: str, *arrays) -> str:
    if backend not in BACKENDS:
        raise DrrkitError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    kinds = {_kind(a) for a in arrays if a is not None} - {"numpy"}
    if len(kinds) > 1:
        raise DrrkitError("inputs mix torch tensors and CuPy arrays; convert them to one type")
    if backend == "auto":
        return kinds.pop() if kinds else "numpy"
    if backend == "cupy" and not kinds:
        from drrkit.backends import cuda_available

        if not cuda_available():
            raise DrrkitError("backend 'cupy' needs CuPy and a CUDA GPU, and none is usable "
                              "here; use backend='numpy' or 'torch'")
    if backend == "torch" and not kinds:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise DrrkitError("backend 'torch' needs PyTorch (the 'learn' extra); use "
                              "backend='numpy'") from None
    if backend == "numpy" and kinds:
        raise DrrkitError(f"backend 'numpy' got {kinds.pop()} arrays; use backend='auto' or "
                          "convert them with .cpu().numpy() / .get()")
    if backend == "torch" and "cupy" in kinds:
        raise DrrkitError("backend 'torch' got CuPy arrays; convert them with torch.as_tensor")
    if backend == "cupy" and "torch" in kinds:
        raise DrrkitError("backend 'cupy' got torch tensors; convert them with cupy.asarray")
    return backend


class _Ops:
    """The few operations whose spelling differs between NumPy/CuPy and torch."""

    def __init__(self, kind: str, like=None):
        self.kind = kind
        if kind == "torch":
            import torch

            self.xp = torch
            self.device = like.device if isinstance(like, torch.Tensor) else None
        elif kind == "cupy":
            import cupy

            self.xp = cupy
        else:
            self.xp = np

    def asarray(self, x, dtype=None):
        if self.kind == "torch":
            return self.xp.as_tensor(x, dtype=dtype, device=self.device)
        return self.xp.asarray(x, dtype=dtype)

    def arange(self, n: int):
        if self.kind == "torch":
            return self.xp.arange(n, device=self.device)
        return self.xp.arange(n)

    def cat(self, parts, axis: int = 0):
        if self.kind == "torch":
            return self.xp.cat(parts, axis)
        return self.xp.concatenate(parts, axis)

    def float_dtype(self, *arrays):
        """The common float dtype of the inputs (float64 for integers)."""
        xp = self.xp
        if self.kind == "torch":
            dtype = arrays[0].dtype
            for a in arrays[1:]:
                dtype = xp.promote_types(dtype, a.dtype)
            return dtype if dtype in (xp.float32, xp.float64) else (
                xp.float32 if dtype in (xp.float16, xp.bfloat16) else xp.float64)
        dtype = np.result_type(*[a.dtype for a in arrays])
        if dtype in (np.float32, np.float64):
            return dtype
        return np.dtype(np.float32) if dtype == np.float16 else np.dtype(np.float64)

    def float64(self):
        return self.xp.float64

    def astype(self, x, dtype):
        if self.kind == "torch":
            return x.to(dtype)
        return x.astype(dtype, copy=False)


def _prepare(ops: _Ops, origins, directions, weights):
    """Arrays of one kind, float dtype and broadcast (..., K, 3) / (..., K) shapes."""
    xp = ops.xp
    o = ops.asarray(origins)
    d = ops.asarray(directions)
    w = None if weights is None else ops.asarray(weights)
    for name, a in (("origins", o), ("directions", d)):
        if a.ndim < 2 or a.shape[-1] != 3:
            raise DrrkitError(f"{name} must have shape (..., K, 3), got {tuple(a.shape)}")
    dtype = ops.float_dtype(o, d)
    try:
        shape = tuple(np.broadcast_shapes(tuple(o.shape[:-1]), tuple(d.shape[:-1]),
                                          () if w is None else tuple(w.shape)))
    except ValueError:
        raise DrrkitError(
            f"origins {tuple(o.shape)}, directions {tuple(d.shape)} and weights "
            f"{None if w is None else tuple(w.shape)} do not broadcast to (..., K, 3) / (..., K)"
        ) from None
    o = xp.broadcast_to(ops.astype(o, dtype), shape + (3,))
    d = xp.broadcast_to(ops.astype(d, dtype), shape + (3,))
    if w is not None:
        w = xp.broadcast_to(ops.astype(w, dtype), shape)
    return o, d, w, dtype


def _check_weights(ops: _Ops, w) -> None:
    if w is not None and bool(((w < 0) | ~ops.xp.isfinite(w)).any()):
        raise DrrkitError("weights must be finite and >= 0 (use 0 for a missing view)")


def _solve_arrays(ops: _Ops, o, d, w, limit: float):
    """Array-expression triangulation (torch, and NumPy in tests); see the module docstring.

    Args:
        o, d: (..., K, 3) float arrays; w: (..., K) or None.

    Returns:
        points (..., 3), rms (...,), valid (...,) bool.
    """
    xp = ops.xp
    norm2 = (d * d).sum(-1)
    ok = xp.isfinite(o).all(-1) & xp.isfinite(norm2) & (norm2 > 0)
    used = xp.ones_like(ok) if w is None else (w > 0)
    bad = (used & ~ok).any(-1)
    keep = used & ok
    w0 = ops.astype(keep, o.dtype) if w is None else xp.where(keep, w, 0.0)
    keep3 = keep[..., None]
    a = xp.where(keep3, o, 0.0)
    dd = xp.where(keep3, d, 1.0)
    n = dd / xp.sqrt(xp.where(keep, norm2, 3.0))[..., None]
    total = w0.sum(-1)
    count = keep.sum(-1)
    safe_total = xp.where(total > 0, total, 1.0)
    c = (w0[..., None] * a).sum(-2) / safe_total[..., None]
    a = a - c[..., None, :]
    wn = w0[..., None] * n
    s00 = total - (wn[..., 0] * n[..., 0]).sum(-1)
    s11 = total - (wn[..., 1] * n[..., 1]).sum(-1)
    s22 = total - (wn[..., 2] * n[..., 2]).sum(-1)
    s01 = -(wn[..., 0] * n[..., 1]).sum(-1)
    s02 = -(wn[..., 0] * n[..., 2]).sum(-1)
    s12 = -(wn[..., 1] * n[..., 2]).sum(-1)
    along = (n * a).sum(-1)
    q = (w0[..., None] * a).sum(-2) - (wn * along[..., None]).sum(-2)
    m00 = s11 * s22 - s12 * s12
    m01 = s02 * s12 - s01 * s22
    m02 = s01 * s12 - s02 * s11
    m11 = s00 * s22 - s02 * s02
    m12 = s01 * s02 - s00 * s12
    m22 = s00 * s11 - s01 * s01
    det = s00 * m00 + s01 * m01 + s02 * m02
    valid = (~bad & (count >= 2) & (det > 0)
             & (det >= limit * total * (m00 + m11 + m22)))
    det = xp.where(valid, det, 1.0)
    q0, q1, q2 = q[..., 0], q[..., 1], q[..., 2]
    x = xp.stack([m00 * q0 + m01 * q1 + m02 * q2,
                  m01 * q0 + m11 * q1 + m12 * q2,
                  m02 * q0 + m12 * q1 + m22 * q2], -1) / det[..., None]
    e = x[..., None, :] - a
    e = e - (n * e).sum(-1)[..., None] * n  # perpendicular part (no cancellation)
    r2 = (e * e).sum(-1)
    rms = xp.sqrt((w0 * r2).sum(-1) / safe_total)
    points = xp.where(valid[..., None], c + x, float("nan"))
    rms = xp.where(valid, rms, float("nan"))
    return points, rms, valid


def _torch_without_autograd_on_cpu(ops: _Ops, *tensors) -> bool:
    tensors = [t for t in tensors if t is not None]
    if ops.kind != "torch" or any(t.device.type != "cpu" for t in tensors):
        return False
    return not (ops.xp.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _solve(ops: _Ops, o, d, w, limit: float, accumulate: str):
    """Dispatch prepared (..., K, 3) arrays to the backend; returns points, rms, valid."""
    shape = tuple(o.shape[:-2])
    k = o.shape[-2]
    if ops.kind == "numpy":
        from drrkit._triangulation_numba import BAD_WEIGHT, VALID, triangulate_numba

        n = math.prod(shape)
        flat = (np.ascontiguousarray(o).reshape(n, k, 3),
                np.ascontiguousarray(d).reshape(n, k, 3),
                None if w is None else np.ascontiguousarray(w).reshape(n, k))
        points, rms, status = triangulate_numba(*flat, limit)
        if np.any(status == BAD_WEIGHT):
            raise DrrkitError("weights must be finite and >= 0 (use 0 for a missing view)")
        return points.reshape(shape + (3,)), rms.reshape(shape), (status == VALID).reshape(shape)
    if ops.kind == "cupy":
        from drrkit._triangulation_cuda import triangulate_cupy

        return triangulate_cupy(o, d, w, limit, accumulate)
    if _torch_without_autograd_on_cpu(ops, o, d, w):
        # nothing to differentiate: the Numba kernel on zero-copy NumPy views is faster
        torch = ops.xp
        out = _solve(_Ops("numpy"), o.numpy(), d.numpy(), None if w is None else w.numpy(),
                     limit, accumulate)
        return tuple(torch.from_numpy(a) for a in out)
    _check_weights(ops, w)
    dtype = o.dtype
    if accumulate == "float64":
        o, d = o.to(ops.float64()), d.to(ops.float64())
        w = None if w is None else w.to(ops.float64())
    points, rms, valid = _solve_arrays(ops, o, d, w, limit)
    return points.to(dtype), rms.to(dtype), valid


def _check_options(accumulate: str, min_angle_deg: float) -> float:
    if accumulate not in ACCUMULATE:
        raise DrrkitError(f"unknown accumulate {accumulate!r}; choose one of "
                          f"{', '.join(ACCUMULATE)}")
    return angle_limit(min_angle_deg)


def triangulate(
    origins,
    directions,
    weights=None,
    *,
    backend: str = "auto",
    accumulate: str = "float64",
    min_angle_deg: float = MIN_ANGLE_DEG,
) -> Triangulation:
    """The point closest, in weighted least squares, to each set of K rays.

    Args:
        origins: (..., K, 3) ray origins, world mm (e.g. X-ray sources).
        directions: (..., K, 3) ray directions, any non-zero length.
        weights: (..., K) >= 0 or None (all 1); 0 marks a missing view, whose ray is
            ignored even if it holds NaN. The three inputs broadcast together.
        backend: "auto" (from the input type), "numpy" (Numba, CPU), "torch" (the
            tensors' device, differentiable) or "cupy" (fused CUDA kernel). NumPy
            inputs are converted for "torch" (CPU) and "cupy" (current GPU).
        accumulate: "float64" (default) sums in float64 whatever the input dtype;
            "input" sums in the input dtype (faster on GPUs with slow float64). The
            Numba kernel (NumPy arrays, torch CPU tensors that need no gradient)
            always accumulates in float64.
        min_angle_deg: conditioning limit in degrees: problems conditioned worse than
            two equally weighted rays crossing at this angle are invalid.

    Returns:
        :class:`Triangulation` with points (..., 3) mm, rms (...,) mm and valid (...,),
        in the backend's array type and the input's float dtype (float64 for integers).

    Raises:
        DrrkitError: bad shapes, negative or non-finite weights, unknown options.

    Example:
        >>> import numpy as np, drrkit
        >>> origins = np.array([[0.0, -500, 0], [500, 0, 0]])
        >>> directions = np.array([[0.0, 1, 0], [-1, 0, 0]])
        >>> drrkit.triangulate(origins, directions).points
        array([0., 0., 0.])
    """
    limit = _check_options(accumulate, min_angle_deg)
    kind = _resolve_backend(backend, origins, directions, weights)
    ops = _Ops(kind, like=origins if _kind(origins) == kind else directions)
    o, d, w, _ = _prepare(ops, origins, directions, weights)
    return Triangulation(*_solve(ops, o, d, w, limit, accumulate))


# ---------------------------------------------------------------------- robust
def _pair_indices(k: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(k, 1)
    return i, j


def _distances2(ops: _Ops, points, o, d):
    """Squared perpendicular distances (N, P, K) from points (N, P, 3) to rays (N, K, 3)."""
    xp = ops.xp
    norm2 = (d * d).sum(-1)
    ok = xp.isfinite(o).all(-1) & xp.isfinite(norm2) & (norm2 > 0)
    o = xp.where(ok[..., None], o, 0.0)
    n = xp.where(ok[..., None], d, 1.0) / xp.sqrt(xp.where(ok, norm2, 3.0))[..., None]
    e = points[:, :, None, :] - o[:, None, :, :]
    e = e - (e * n[:, None]).sum(-1)[..., None] * n[:, None]
    r2 = (e * e).sum(-1)
    return xp.where(ok[:, None, :], r2, float("inf"))


def _check_robust_options(threshold, min_inliers, refinements) -> None:
    if not (np.isfinite(threshold) and threshold > 0):
        raise DrrkitError(f"threshold must be a positive distance in mm, got {threshold}")
    if int(min_inliers) != min_inliers or min_inliers < 2:
        raise DrrkitError(f"min_inliers must be an integer >= 2, got {min_inliers}")
    if int(refinements) != refinements or refinements < 1:
        raise DrrkitError(f"refinements must be an integer >= 1, got {refinements}")


def _robust_chunk(ops, oc, dc, wc, pairs, dtype, t2: float, settings):
    """:func:`triangulate_robust` on m problems (oc, dc: (m, K, 3), wc: (m, K)).

    Args:
        pairs: (first ray, second ray, count) of every ray pair, as ``ops`` arrays.
        t2: squared inlier threshold, mm^2.
        settings: (conditioning limit, accumulate, refinements, min_inliers).

    Returns:
        points (m, 3) (NaN where invalid), rms (m,), valid (m,), inliers (m, K).
    """
    xp = ops.xp
    pi_a, pj_a, n_pairs = pairs
    limit, accumulate, refinements, min_inliers = settings
    m = oc.shape[0]
    if n_pairs:
        pair_o = xp.stack([oc[:, pi_a], oc[:, pj_a]], -2)  # (m, P, 2, 3)
        pair_d = xp.stack([dc[:, pi_a], dc[:, pj_a]], -2)
        pair_w = ((wc[:, pi_a] > 0) & (wc[:, pj_a] > 0))
        pair_w = xp.stack([pair_w, pair_w], -1)
        cand, _, cand_ok = _solve(ops, pair_o, pair_d, ops.astype(pair_w, dtype), limit,
                                  accumulate)
        cand = xp.where(cand_ok[..., None], cand, 0.0)
        r2 = _distances2(ops, cand, oc, dc)  # (m, P, K)
        loss = xp.where(r2 < t2, r2, t2)
        cost = (wc[:, None, :] * loss).sum(-1)
        cost = xp.where(cand_ok, cost, float("inf"))
        best = cost.argmin(-1)
        rows = ops.arange(m)
        inliers = (r2[rows, best] < t2) & (wc > 0) & cand_ok[rows, best][:, None]
    else:
        inliers = wc < 0  # fewer than two rays: no candidate, all False
    for _ in range(refinements):
        points, rms, valid = _solve(ops, oc, dc, xp.where(inliers, wc, 0.0), limit,
                                    accumulate)
        safe = xp.where(valid[:, None], points, 0.0)
        r2 = _distances2(ops, safe[:, None, :], oc, dc)[:, 0]
        inliers = (r2 < t2) & (wc > 0) & valid[:, None]
    points, rms, valid = _solve(ops, oc, dc, xp.where(inliers, wc, 0.0), limit, accumulate)
    valid = valid & (inliers.sum(-1) >= min_inliers)
    inliers = inliers & valid[:, None]
    return (xp.where(valid[:, None], points, float("nan")), xp.where(valid, rms, float("nan")),
            valid, inliers)


def triangulate_robust(
    origins,
    directions,
    weights=None,
    *,
    threshold: float = 5.0,
    min_inliers: int = 2,
    refinements: int = 3,
    backend: str = "auto",
    accumulate: str = "float64",
    min_angle_deg: float = MIN_ANGLE_DEG,
) -> RobustTriangulation:
    """Least-squares points after dropping rays far from the consensus (exhaustive RANSAC).

    Method, per problem: every pair of rays with positive weight is triangulated
    (pairs worse conditioned than ``min_angle_deg`` are skipped); each candidate is
    scored with the truncated quadratic (MSAC) loss ``sum_k w_k min(r_k^2, T^2)`` where
    ``r_k`` is ray k's perpendicular distance to the candidate and ``T = threshold``;
    the best candidate's inliers (``r_k < T``) are refitted by weighted least squares,
    and inliers and fit are updated ``refinements`` times. A problem is valid when its
    final fit is valid and keeps at least ``min_inliers`` rays. Exhaustive pairs cost
    K(K-1)/2 two-ray solves per problem, fine for the tens of views of a C-arm orbit.
    With torch, the choice of inliers is not differentiable; the final fit is.

    Args:
        origins, directions, weights, backend, accumulate, min_angle_deg: as
            :func:`triangulate`.
        threshold: inlier distance T in mm, measured perpendicular to the ray at the
            point (5 mm suits detections with ~1-2 mm noise at the isocentre).
        min_inliers: fewest rays a valid answer keeps (>= 2).
        refinements: inlier/refit rounds after the RANSAC pick (>= 1).

    Returns:
        :class:`RobustTriangulation`: points (..., 3), rms (...,) over the inliers,
        valid (...,), inliers (..., K) bool.
    """
    limit = _check_options(accumulate, min_angle_deg)
    _check_robust_options(threshold, min_inliers, refinements)
    kind = _resolve_backend(backend, origins, directions, weights)
    ops = _Ops(kind, like=origins if _kind(origins) == kind else directions)
    xp = ops.xp
    o, d, w, dtype = _prepare(ops, origins, directions, weights)
    _check_weights(ops, w)
    shape = tuple(o.shape[:-2])
    k = o.shape[-2]
    n_problems = math.prod(shape)
    o = o.reshape(n_problems, k, 3)
    d = d.reshape(n_problems, k, 3)
    w = xp.ones_like(o[..., 0]) if w is None else w.reshape(n_problems, k)
    pi, pj = _pair_indices(k)
    n_pairs = len(pi)
    pi_a, pj_a = ops.asarray(pi), ops.asarray(pj)
    # chunk so the (chunk, pairs, K, 3) temporaries stay near 2**22 elements
    chunk = max(1, (1 << 22) // max(1, 3 * n_pairs * k))
    out_points, out_rms, out_valid, out_inliers = [], [], [], []
    t2 = float(threshold) ** 2
    for start in range(0, max(n_problems, 1), chunk):
        part = _robust_chunk(ops, o[start:start + chunk], d[start:start + chunk],
                             w[start:start + chunk], (pi_a, pj_a, n_pairs), dtype, t2,
                             (limit, accumulate, int(refinements), int(min_inliers)))
        for out, value in zip((out_points, out_rms, out_valid, out_inliers), part):
            out.append(value)
    points = ops.cat(out_points)[:n_problems].reshape(shape + (3,))
    rms = ops.cat(out_rms)[:n_problems].reshape(shape)
    valid = ops.cat(out_valid)[:n_problems].reshape(shape)
    inliers = ops.cat(out_inliers)[:n_problems].reshape(shape + (k,))
    return RobustTriangulation(points, rms, valid, inliers)
