"""What every backend shares: the ray rule, the choice of backend and sampling method.

Both backends (:mod:`drrkit._cpu`, :mod:`drrkit.cuda`) and the front end
(:mod:`drrkit.render`) import this module; it imports none of them.

The ray rule (the Numba kernels of :mod:`drrkit._cpu` and the CUDA kernels in
``drrkit/cuda/`` follow it; :mod:`drrkit.reference` holds a plain NumPy copy the tests
compare against):

1. The ray of pixel (c, r) of view k starts at the source S and points at
   ``D0 + c u + r v``; it is expressed in continuous voxel index space, where the
   volume is the box ``[-0.5, n - 0.5]`` along each axis, and ``t`` is the world
   distance from the source in mm.
2. The ray is clipped to the box analytically (slab method) to ``[t0, t1]``, t0 >= 0.
3. The chord is cut into ``N = ceil((t1 - t0) / step - 1e-3)`` equal pieces of length
   ``h = (t1 - t0) / N`` mm (at most ``step``, give or take 0.1 % of a piece: the slack
   keeps a chord of exactly N steps from tipping into N + 1 through rounding, see
   :data:`PIECE_SLACK`); the volume is sampled at each piece's midpoint with trilinear
   interpolation (coordinates clamped to the voxel centres, i.e. edge voxels extend to
   the box faces) and the line integral is ``h * sum``.
"""

from __future__ import annotations

import functools

import numpy as np

from drrkit.errors import DrrkitError
from drrkit.volume import Volume

#: Slack in the piece count, so a chord of exactly N steps is not cut into N + 1.
PIECE_SLACK = 1e-3

BACKENDS = ("auto", "cpu", "cuda")
METHODS = ("auto", "trilinear", "joseph")
#: Largest RMS difference, as a fraction of the image's peak, between the "joseph" and
#: "trilinear" images of one scene (a bound for the CPU and CUDA defaults; tested on the
#: analytic torso phantom, where each rule's own RMS error is about twice this).
METHOD_TOLERANCE = 1e-3


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device (checked once, lazily)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any failure means no usable GPU
        return False


def resolve_backend(backend: str) -> str:
    """Map "auto" to the fastest usable backend; refuse an explicit one that cannot run."""
    if backend not in BACKENDS:
        raise DrrkitError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "cuda" if cuda_available() else "cpu"
    if backend == "cuda" and not cuda_available():
        raise DrrkitError(
            "backend 'cuda' needs CuPy and a CUDA GPU, and none is usable here; "
            "use backend='cpu' (or 'auto')"
        )
    return backend


def default_step(volume: Volume) -> float:
    """Half the smallest voxel spacing, in mm."""
    return 0.5 * float(np.min(volume.spacing))


def resolve_method(method: str, backend: str, step: float | None) -> str:
    """The sampling rule ``render`` uses on a resolved ``backend`` ("cpu" or "cuda").

    "auto" is Joseph's method on the CPU when no ``step`` is given (the fastest CPU
    rule, at the accuracy of trilinear sampling every half voxel: decision
    ``cpu-default-method`` in ``benchmarks/decisions.md``) and trilinear sampling
    otherwise (a ``step`` asks for it; the CUDA kernels sample trilinearly, as the
    texture hardware does). The two rules give the same image within
    :data:`METHOD_TOLERANCE` of its peak (RMS).
    """
    if method not in METHODS:
        raise DrrkitError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "auto":
        return "joseph" if backend == "cpu" and step is None else "trilinear"
    if method == "joseph" and step is not None:
        raise DrrkitError("method 'joseph' samples once per slice; do not pass a step")
    if method == "joseph" and backend != "cpu":
        raise DrrkitError(f"method 'joseph' runs on backend 'cpu' only, not {backend!r}")
    return method


def check_step(volume: Volume, step: float | None) -> float:
    step = default_step(volume) if step is None else float(step)
    if not np.isfinite(step) or step <= 0:
        raise DrrkitError(f"the sampling step must be a positive number of mm, got {step}")
    return step


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
