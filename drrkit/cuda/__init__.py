"""CUDA backend of :func:`drrkit.render`: our own ray-marching kernels, run through CuPy.

The kernels live in ``drrkit/cuda/march.cu`` and are compiled at run time by NVRTC
(:mod:`drrkit.cuda._build`), so installing drrkit never needs a CUDA toolkit. Importing
this module does not import CuPy; it is loaded when a :class:`CudaProjector` is made.

Two sampling paths follow the ray rule of :mod:`drrkit._cpu` (same clipping, same
piece count and midpoints):

* ``sampling="global"`` (default): trilinear interpolation from global memory in
  float32, the exact path. It agrees with the CPU backend to float32 rounding (the
  host-compiled kernel code matches it to about 2e-6 of the image maximum), except on
  the rare rays whose chord is within rounding of a whole number of steps: one backend
  may cut those into N pieces and the other into N + 1 (2.9e-4 of the maximum on one
  ray of a white-noise test volume, on an H200 and on the host build alike; see
  :func:`drrkit.reference.piece_count_margins`).
* ``sampling="texture"``: hardware trilinear filtering of a 3-D texture, as TIGRE,
  DeepDRR and RTK do. The hardware keeps interpolation weights in 9-bit fixed point
  (8 fractional bits). Run through a software model of that documented filter, the
  kernel code differs from the CPU backend by up to 1.4e-3 of the image maximum on
  white-noise volumes (the worst case; weights truncated, 5.9e-4 if rounded) and
  6e-4 on the torso phantom; the GPU tests allow :data:`TEXTURE_TOLERANCE`.

``storage="float16"`` keeps the voxels in half precision (half the memory and
bandwidth) and adds each voxel's rounding, at most 2**-11 of its value (1.1e-4 of the
image maximum in the same checks; the GPU tests allow :data:`HALF_TOLERANCE`).

The numbers above come from ``tests/drrkit/test_cuda.py``, which compiles the kernel
file's ray marcher for the host; the tests marked ``cuda`` check them on a GPU (on an
NVIDIA H200 they all held except at that one ray, which the tests now set apart).

Example::

    projector = CudaProjector(volume, sampling="texture")  # uploads the volume once
    images = projector.render(geometry, out="torch")       # (K, H, W) on the GPU
"""

from __future__ import annotations

import math

import numpy as np

from drrkit import config
from drrkit.errors import DrrkitError

SAMPLINGS = ("global", "texture")
STORAGES = ("float32", "float16")
OUTPUTS = ("cupy", "torch", "numpy")

#: Largest number of pieces on one ray (the kernel counts samples in float32).
MAX_PIECES = 2**24
#: Most views per launch (CUDA's limit on gridDim.z).
MAX_VIEWS_PER_LAUNCH = 65535

#: Relative (to the image maximum) error bounds against the CPU backend used by the GPU
#: tests; see the module docstring for where they come from.
GLOBAL_TOLERANCE = 1e-4
TEXTURE_TOLERANCE = 3e-3
HALF_TOLERANCE = 1e-3

_OPTION_NAMES = ("sampling", "storage", "block", "device")


def _cupy():
    """Import CuPy and make sure a GPU is usable, else raise a one-line DrrkitError."""
    try:
        import cupy
    except ImportError:
        raise DrrkitError(
            "the CUDA backend needs CuPy (pip install 'drrkit[cuda]'); "
            "use backend='cpu' (or 'auto')"
        ) from None
    from drrkit.backends import cuda_available

    if not cuda_available():
        raise DrrkitError(
            "the CUDA backend needs a CUDA GPU and none is visible to CuPy; "
            "use backend='cpu' (or 'auto')"
        )
    return cupy


def check_options(sampling: str, storage: str, block) -> tuple[int, int]:
    """Validate the projector options (no GPU needed); returns the block shape."""
    if sampling not in SAMPLINGS:
        raise DrrkitError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
    if storage not in STORAGES:
        raise DrrkitError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")
    block = config.CUDA_BLOCK if block is None else block
    try:
        bx, by = (int(b) for b in block)
    except (TypeError, ValueError):
        raise DrrkitError(f"block must be two positive integers (x, y), got {block!r}") from None
    if bx < 1 or by < 1 or bx * by > 1024:
        raise DrrkitError(f"block {block!r} must have 1 to 1024 threads in all, x and y >= 1")
    return bx, by


def check_texture_limits(shape_xyz, limits) -> None:
    """Raise when a volume of ``shape_xyz`` (X, Y, Z) voxels exceeds ``limits`` (maxTexture3D)."""
    limits = tuple(int(v) for v in limits)
    if any(int(n) > lim for n, lim in zip(shape_xyz, limits)):
        x, y, z = (int(n) for n in shape_xyz)
        raise DrrkitError(
            f"a {x}x{y}x{z} volume exceeds this GPU's 3-D texture limit maxTexture3D="
            f"{limits[0]}x{limits[1]}x{limits[2]}; use sampling='global'"
        )


def check_memory(needed: int, free: int, total: int) -> None:
    """Raise when ``needed`` bytes of GPU memory exceed the ``free`` bytes."""
    if needed > free:
        gib = 2.0**30
        raise DrrkitError(
            f"the volume needs {needed / gib:.2f} GiB of GPU memory but only "
            f"{free / gib:.2f} GiB of {total / gib:.2f} GiB is free; "
            "try storage='float16' or a smaller volume"
        )


def check_pieces(volume, step: float) -> None:
    """Raise when ``step`` would cut the longest possible chord into too many pieces."""
    diagonal = float(np.linalg.norm(np.asarray(volume.shape_xyz) * volume.spacing))
    if diagonal / step + 1 >= MAX_PIECES:
        raise DrrkitError(
            f"a step of {step:g} mm cuts the volume's {diagonal:.1f} mm diagonal into more "
            f"than {MAX_PIECES} pieces; use a larger step"
        )


def _texture_limits(cupy, device_id: int) -> tuple[int, int, int]:
    """(width, height, depth) limit of 3-D textures on the device (maxTexture3D)."""
    attribute = cupy.cuda.runtime.deviceGetAttribute
    # cudaDevAttrMaxTexture3DWidth, Height, Depth
    return tuple(int(attribute(code, device_id)) for code in (24, 25, 26))


def _is_torch(array) -> bool:
    return type(array).__module__.split(".")[0] == "torch"


def to_cupy(array, cupy, device_id: int):
    """A CuPy view or copy of ``array`` (NumPy, CuPy or torch) on device ``device_id``.

    Device arrays stay on the device (torch CUDA tensors are shared through DLPack);
    host arrays are uploaded.
    """
    if _is_torch(array):
        tensor = array.detach()
        if tensor.device.type == "cuda":
            if tensor.device.index != device_id:
                raise DrrkitError(
                    f"the tensor is on cuda:{tensor.device.index} but the projector on "
                    f"cuda:{device_id}"
                )
            return cupy.from_dlpack(tensor)
        array = tensor.numpy()
    if isinstance(array, cupy.ndarray):
        if array.device.id != device_id:
            raise DrrkitError(
                f"the array is on GPU {array.device.id} but the projector on GPU {device_id}"
            )
        return array
    with cupy.cuda.Device(device_id):
        return cupy.asarray(np.asarray(array))


class CudaProjector:
    """A volume held on the GPU, rendered from any number of geometries.

    The volume is uploaded once (a global-memory copy or a 3-D texture); each
    :meth:`render` then costs one small upload of per-view parameters and one kernel
    launch for all K views.

    Args:
        volume: the volume's placement (spacing, origin, direction) and, unless ``data``
            is given, its (Z, Y, X) values in 1/mm.
        sampling: "global" (exact float32 trilinear) or "texture" (hardware filtering).
        storage: "float32" or "float16" voxels on the GPU.
        data: optional (Z, Y, X) values to upload instead of ``volume.data``: a NumPy or
            CuPy array or a torch tensor (CUDA tensors are read on the device, no host
            copy). ``volume.data`` then only has to have the right shape, e.g.
            ``np.broadcast_to(np.float32(0), shape)``, which takes no memory.
        block: CUDA block shape (x = columns, y = rows); default ``config.CUDA_BLOCK``.
        device: CUDA device ordinal; default the current device.

    Raises:
        DrrkitError: bad options, no CuPy or GPU, non-finite voxels, or a volume larger
            than the GPU's free memory or 3-D texture limits.
    """

    def __init__(self, volume, sampling: str = "global", storage: str = "float32", *,
                 data=None, block=None, device=None):
        from drrkit.volume import Volume

        if not isinstance(volume, Volume):
            raise DrrkitError("volume must be a drrkit.Volume (see drrkit.load_volume)")
        self.block = check_options(sampling, storage, block)
        self.sampling = sampling
        self.storage = storage
        self.volume = volume
        cupy = _cupy()
        self._cupy = cupy
        self.device_id = int(cupy.cuda.Device().id if device is None else device)
        self._texture = None
        self._array = None
        self._voxels = None
        from drrkit.cuda import _build

        z, y, x = volume.data.shape
        self._defines = _build.build_defines(np.dtype(storage), x * y * z)
        self.set_data(volume.data if data is None else data)

    # ------------------------------------------------------------------ upload
    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) voxels of the held volume."""
        return tuple(self.volume.data.shape)

    def set_data(self, data) -> None:
        """Replace the voxel values (same (Z, Y, X) shape), keeping the placement.

        The projector keeps its own copy (or texture), so later changes to ``data`` do
        not affect it.

        Args:
            data: (Z, Y, X) attenuation in 1/mm, NumPy, CuPy or torch (CPU or CUDA).
        """
        cupy = self._cupy
        if not _is_torch(data) and not isinstance(data, cupy.ndarray):
            data = np.asarray(data)
        if tuple(data.shape) != self.shape:
            raise DrrkitError(f"data has shape {tuple(data.shape)}, expected {self.shape}")
        real = not data.is_complex() if _is_torch(data) else data.dtype.kind in "fiub"
        if not real:
            raise DrrkitError(f"voxel values must be real numbers, got {data.dtype}")
        dtype = np.dtype(self.storage)
        nbytes = int(np.prod(self.shape)) * dtype.itemsize
        on_host = isinstance(data, np.ndarray) or (_is_torch(data) and not data.is_cuda)
        with cupy.cuda.Device(self.device_id):
            if self.sampling == "texture":
                check_texture_limits(self.volume.shape_xyz, _texture_limits(cupy, self.device_id))
            # a new device copy (the texture array is reused), plus a device staging copy
            # when a device array is converted for a texture
            needed = (nbytes if self._array is None else 0)
            if self.sampling == "texture" and not on_host:
                needed += nbytes
            free, total = cupy.cuda.runtime.memGetInfo()
            check_memory(needed, free + cupy.get_default_memory_pool().free_bytes(), total)
            if on_host:
                if _is_torch(data):
                    data = data.detach().numpy()
                values = np.ascontiguousarray(data, dtype=dtype)
                if not np.all(np.isfinite(values)):
                    raise DrrkitError("the volume has non-finite voxels (NaN or inf)")
                if self.sampling == "global":
                    values = cupy.asarray(values)
            else:
                values = to_cupy(data, cupy, self.device_id).astype(dtype, order="C", copy=True)
                if not bool(cupy.isfinite(values).all()):
                    raise DrrkitError("the volume has non-finite voxels (NaN or inf)")
            if self.sampling == "global":
                self._voxels = values
            else:
                self._upload_texture(values)
            cupy.cuda.get_current_stream().synchronize()

    def _upload_texture(self, values) -> None:
        cupy = self._cupy
        runtime = cupy.cuda.runtime
        texture = cupy.cuda.texture
        if self._array is None:
            bits = 8 * np.dtype(self.storage).itemsize
            channel = texture.ChannelFormatDescriptor(
                bits, 0, 0, 0, runtime.cudaChannelFormatKindFloat)
            z, y, x = self.shape
            try:
                self._array = texture.CUDAarray(channel, x, y, z)
            except runtime.CUDARuntimeError as error:
                raise DrrkitError(f"could not allocate a {x}x{y}x{z} 3-D texture on the GPU: "
                                  f"{error}") from None
            resource = texture.ResourceDescriptor(runtime.cudaResourceTypeArray,
                                                  cuArr=self._array)
            description = texture.TextureDescriptor(
                addressModes=(runtime.cudaAddressModeClamp,) * 3,
                filterMode=runtime.cudaFilterModeLinear,
                readMode=runtime.cudaReadModeElementType,
                normalizedCoords=0,
            )
            self._texture = texture.TextureObject(resource, description)
        self._array.copy_from(values)

    # ------------------------------------------------------------------ render
    def render(self, geometry, step: float | None = None, out: str = "cupy"):
        """Line integrals of mu along every pixel's ray, for all K views in one launch.

        Args:
            geometry: a :class:`drrkit.Geometry` with K views of H x W pixels (world mm).
            step: largest sampling step in mm; default half the smallest voxel spacing.
            out: "cupy" (CuPy array), "torch" (CUDA tensor sharing the memory, through
                DLPack) or "numpy" (copied to the host).

        Returns:
            (K, H, W) float32 line integrals (dimensionless) on the projector's device,
            or on the host for ``out="numpy"``.
        """
        from drrkit.backends import check_step, prepare_rays
        from drrkit.geometry import Geometry

        if not isinstance(geometry, Geometry):
            raise DrrkitError("geometry must be a drrkit.Geometry (see drrkit.circular_orbit)")
        if out not in OUTPUTS:
            raise DrrkitError(f"unknown out {out!r}; choose one of {', '.join(OUTPUTS)}")
        step = check_step(self.volume, step)
        check_pieces(self.volume, step)
        cupy = self._cupy
        k, h, w = geometry.shape
        with cupy.cuda.Device(self.device_id):
            views = cupy.asarray(prepare_rays(self.volume, geometry))
            try:
                image = cupy.empty((k, h, w), dtype=cupy.float32)
            except cupy.cuda.memory.OutOfMemoryError:
                raise DrrkitError(
                    f"no GPU memory for the {k}x{h}x{w} float32 output "
                    f"({4 * k * h * w / 2**30:.2f} GiB)"
                ) from None
            self._launch(views, image, step)
        if out == "numpy":
            return cupy.asnumpy(image)
        if out == "torch":
            import torch

            return torch.from_dlpack(image)
        return image

    def _launch(self, views, image, step: float) -> None:
        from drrkit.cuda import _build

        k, h, w = image.shape
        x, y, z = self.volume.shape_xyz
        bx, by = self.block
        if self.sampling == "global":
            kernel = _build.get_kernel("drr_march_global", device_id=self.device_id,
                                       defines=self._defines)
            source = self._voxels
        else:
            kernel = _build.get_kernel("drr_march_texture", device_id=self.device_id,
                                       defines=self._defines)
            source = self._texture
        for first in range(0, k, MAX_VIEWS_PER_LAUNCH):
            count = min(MAX_VIEWS_PER_LAUNCH, k - first)
            grid = (math.ceil(w / bx), math.ceil(h / by), count)
            kernel(grid, (bx, by, 1),
                   (source, views, image, np.int32(k), np.int32(h), np.int32(w),
                    np.int32(x), np.int32(y), np.int32(z), np.float32(step),
                    np.int32(first)))

    def __repr__(self) -> str:
        z, y, x = self.shape
        return (f"CudaProjector({x}x{y}x{z} voxels, sampling={self.sampling!r}, "
                f"storage={self.storage!r}, device={self.device_id})")


def render_cuda(volume, geometry, step: float, **options) -> np.ndarray:
    """(K, H, W) float32 NumPy line integrals on the GPU; the entry :func:`drrkit.render` uses.

    Args:
        volume, geometry, step: as :func:`drrkit.render` (step in mm, already checked).
        options: ``sampling``, ``storage``, ``block``, ``device`` of :class:`CudaProjector`.

    For many renders of one volume, make a :class:`CudaProjector` once instead.
    """
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise DrrkitError(f"unknown CUDA options {unknown}; valid: {', '.join(_OPTION_NAMES)}")
    check_options(options.get("sampling", "global"), options.get("storage", "float32"),
                  options.get("block"))
    projector = CudaProjector(volume, **options)
    return projector.render(geometry, step, out="numpy")


__all__ = [
    "GLOBAL_TOLERANCE",
    "HALF_TOLERANCE",
    "SAMPLINGS",
    "STORAGES",
    "TEXTURE_TOLERANCE",
    "CudaProjector",
    "render_cuda",
]
