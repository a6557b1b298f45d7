"""Memoised run-time builds of the CUDA kernels in this folder (NVRTC via ``cupy.RawModule``).

The kernels are plain CUDA C in ``drrkit/cuda/*.cu``; options are ``#define`` lines
prepended to the source, and each (device, file, options) combination is compiled once
per process (CuPy also keeps its own on-disk cache of the compiled binaries). Nothing
here imports CuPy until a kernel is asked for.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from drrkit.errors import DrrkitError

KERNEL_DIR = Path(__file__).resolve().parent

#: Voxel storage dtypes of the global-memory kernel and their ``DRRKIT_HALF`` value.
STORAGE_DEFINES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}

#: NVRTC options used for every build (no fast-math: the exact path must match the CPU).
NVRTC_OPTIONS = ("--std=c++11",)

#: Volumes with at least this many voxels need 64-bit voxel offsets.
INDEX64_VOXELS = 2**31


def kernel_files() -> list[Path]:
    """Every ``.cu`` file of the CUDA backend, sorted."""
    return sorted(KERNEL_DIR.glob("*.cu"))


def build_defines(storage, n_voxels: int) -> tuple[tuple[str, int | float], ...]:
    """The ``#define`` options for a volume stored as ``storage`` with ``n_voxels`` voxels.

    The piece-count slack comes from the CPU backend, so both cut rays alike.

    Raises:
        DrrkitError: for a storage dtype the kernels do not handle.
    """
    dtype = np.dtype(storage)
    if dtype not in STORAGE_DEFINES:
        names = ", ".join(str(d) for d in STORAGE_DEFINES)
        raise DrrkitError(f"unsupported voxel storage {dtype}; choose one of {names}")
    from drrkit.backends import PIECE_SLACK

    return (
        ("DRRKIT_HALF", STORAGE_DEFINES[dtype]),
        ("DRRKIT_INDEX64", int(int(n_voxels) >= INDEX64_VOXELS)),
        ("DRRKIT_PIECE_SLACK", float(PIECE_SLACK)),
    )


def _define_line(key: str, value) -> str:
    if isinstance(value, float):
        return f"#define {key} {value!r}f\n"
    return f"#define {key} {int(value)}\n"


def kernel_source(name: str, defines=()) -> str:
    """Source of ``drrkit/cuda/<name>`` with ``#define NAME VALUE`` lines prepended.

    Integer values are written as they are, floats as float literals (``1e-3f``).

    A ``#line`` directive keeps compiler messages pointing at the file's own lines.
    """
    path = KERNEL_DIR / name
    if path.suffix != ".cu" or not path.is_file():
        raise DrrkitError(f"no CUDA kernel file {name!r} in {KERNEL_DIR}")
    head = "".join(_define_line(key, value) for key, value in defines)
    return f'{head}#line 1 "{name}"\n{path.read_text()}'


@functools.cache
def _module(device_id: int, name: str, defines: tuple):
    import cupy

    with cupy.cuda.Device(device_id):
        module = cupy.RawModule(code=kernel_source(name, defines), options=NVRTC_OPTIONS)
        module.compile()  # compile now, so a build error surfaces here and only once
    return module


def get_kernel(function: str, *, device_id: int, defines, name: str = "march.cu"):
    """A compiled ``cupy.RawKernel`` for ``function`` of ``name`` on device ``device_id``.

    Args:
        function: an ``extern "C"`` kernel name, e.g. ``"drr_march_global"``.
        device_id: CUDA device ordinal the kernel will run on.
        defines: options from :func:`build_defines` (any iterable of (name, value) pairs).
        name: kernel file in ``drrkit/cuda``.
    """
    defines = tuple((str(k), v if isinstance(v, float) else int(v)) for k, v in defines)
    module = _module(int(device_id), name, defines)
    import cupy

    with cupy.cuda.Device(device_id):
        return module.get_function(function)


def clear_cache() -> None:
    """Forget the compiled modules (e.g. after editing a ``.cu`` file in a session)."""
    _module.cache_clear()
