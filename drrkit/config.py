"""Tuning knobs in one place."""

from __future__ import annotations

import os

#: CUDA block shape (x = detector columns, y = rows) for the ray-marching kernels.
CUDA_BLOCK = (32, 8)

#: CUDA threads per block of the triangulation kernel.
TRIANGULATION_THREADS = 256

#: Triangulation batches smaller than this run on the calling thread: starting Numba's
#: thread pool costs more than solving them (see benchmarks/triangulation.py).
PARALLEL_MIN_PROBLEMS = 20_000


def cpu_threads() -> int:
    """Threads for the Numba backend: ``DRRKIT_NUM_THREADS`` or Numba's default."""
    import numba

    value = os.environ.get("DRRKIT_NUM_THREADS")
    if value:
        return max(1, min(int(value), numba.config.NUMBA_NUM_THREADS))
    return numba.config.NUMBA_NUM_THREADS
