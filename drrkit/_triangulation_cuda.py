"""CuPy backend of :func:`drrkit.triangulate`: the fused kernel in ``drrkit/cuda/triangulate.cu``.

One thread per problem; the input is streamed once, so the kernel is bound by memory
bandwidth. Built on first use through :mod:`drrkit.cuda._build` (memoised per device
and options); CuPy is imported only here.
"""

from __future__ import annotations

import math

import numpy as np

from drrkit.config import TRIANGULATION_THREADS as THREADS
from drrkit.errors import DrrkitError

_DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}


def triangulate_cupy(o, d, w, limit: float, accumulate: str):
    """Run the kernel on CuPy arrays (..., K, 3) / (..., K) of one float dtype.

    Returns:
        points (..., 3), rms (...,) in the input dtype and valid (...,) bool, on the
        current device.
    """
    import cupy

    from drrkit._triangulation_numba import BAD_WEIGHT, VALID
    from drrkit.cuda._build import get_kernel

    dtype = np.dtype(o.dtype)
    if dtype not in _DTYPES:
        raise DrrkitError(f"the CuPy backend handles float32 and float64, got {dtype}")
    shape = tuple(o.shape[:-2])
    k = int(o.shape[-2])
    n = math.prod(shape)
    o = cupy.ascontiguousarray(o).reshape(n, k, 3)
    d = cupy.ascontiguousarray(d).reshape(n, k, 3)
    has_weights = w is not None
    w = cupy.ascontiguousarray(w).reshape(n, k) if has_weights else cupy.empty(1, dtype)
    points = cupy.empty((n, 3), dtype)
    rms = cupy.empty(n, dtype)
    status = cupy.empty(n, cupy.int8)
    device_id = cupy.cuda.Device().id
    defines = (("DRRKIT_TRI_DOUBLE", _DTYPES[dtype]),
               ("DRRKIT_TRI_ACC_DOUBLE", int(accumulate == "float64")))
    kernel = get_kernel("drr_triangulate", device_id=device_id, defines=defines,
                        name="triangulate.cu")
    if n:
        sms = cupy.cuda.Device(device_id).attributes["MultiProcessorCount"]
        blocks = int(min((n + THREADS - 1) // THREADS, 32 * sms))
        kernel((blocks,), (THREADS,), (o, d, w, np.int32(has_weights), np.int64(n), np.int32(k),
                                       np.float64(limit), points, rms, status))
    if bool((status == BAD_WEIGHT).any()):
        raise DrrkitError("weights must be finite and >= 0 (use 0 for a missing view)")
    return (points.reshape(shape + (3,)), rms.reshape(shape),
            (status == VALID).reshape(shape))
