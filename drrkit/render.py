"""Public DRR rendering: one call, several backends.

``render`` returns line integrals of linear attenuation (dimensionless):
``I[k, r, c] = integral of mu(x) dl`` along the ray from view k's source through pixel
(c, r), mu in 1/mm and dl in mm. The ray rule is written in :mod:`drrkit.backends`.
"""

from __future__ import annotations

import numpy as np

from drrkit.backends import (  # noqa: F401 - re-exported (drrkit.render.cuda_available ...)
    BACKENDS,
    METHOD_TOLERANCE,
    METHODS,
    check_step,
    cuda_available,
    default_step,
    resolve_backend,
    resolve_method,
)
from drrkit.errors import DrrkitError
from drrkit.geometry import Geometry
from drrkit.volume import Volume

OUTPUTS = ("integral", "intensity")


def render(
    volume: Volume,
    geometry: Geometry,
    backend: str = "auto",
    step: float | None = None,
    *,
    output: str = "integral",
    method: str = "auto",
    **cuda_options,
) -> np.ndarray:
    """Render K digitally reconstructed radiographs.

    Args:
        volume: attenuation in 1/mm, (Z, Y, X) with its world geometry.
        geometry: K views of H x W pixels.
        backend: "auto" (CUDA when usable, else CPU), "cpu" (Numba) or "cuda".
        step: largest sampling step along each ray in mm; default half the smallest
            voxel spacing. Each ray's chord through the volume box is cut into equal
            pieces no longer than this.
        output: "integral" for line integrals of mu (dimensionless), "intensity" for
            transmitted fraction ``exp(-integral)``.
        method: "trilinear" (samples every ``step`` mm, the rule in :mod:`drrkit._cpu`),
            "joseph" (one bilinear sample per slice of the ray's dominant axis, Joseph
            1982; CPU only; ``step`` does not apply) or "auto" (the default: Joseph on the
            CPU unless a ``step`` is given, else trilinear; :func:`resolve_method`).
        cuda_options: passed to the CUDA backend (e.g. ``sampling="texture"``).

    Returns:
        (K, H, W) float32 array (a NumPy array; the CUDA projector object returns
        device arrays without a host copy).
    """
    if not isinstance(volume, Volume):
        raise DrrkitError("volume must be a drrkit.Volume (see drrkit.load_volume)")
    if not isinstance(geometry, Geometry):
        raise DrrkitError("geometry must be a drrkit.Geometry (see drrkit.circular_orbit)")
    if output not in OUTPUTS:
        raise DrrkitError(f"unknown output {output!r}; choose one of {', '.join(OUTPUTS)}")
    chosen = resolve_backend(backend)
    method = resolve_method(method, chosen, step)
    step = check_step(volume, step)
    if chosen == "cpu":
        if cuda_options:
            raise DrrkitError(f"options {sorted(cuda_options)} apply to backend 'cuda' only")
        from drrkit._cpu import render_cpu

        image = render_cpu(volume, geometry, step, method)
    else:
        from drrkit.cuda import render_cuda

        image = render_cuda(volume, geometry, step, **cuda_options)
    # checking the (small) output is far cheaper than scanning the volume on every call
    if not np.all(np.isfinite(image)):
        raise DrrkitError("the volume has non-finite voxels (NaN or inf) on the rays; "
                          "load it with drrkit.load_volume(..., nan='zero')")
    if output == "intensity":
        np.negative(image, out=image)
        np.exp(image, out=image)
    return image


def render_labels(
    labels: Volume,
    geometry: Geometry,
    values=None,
    backend: str = "auto",
    step: float | None = None,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-label path lengths: how many mm of each label every ray crosses.

    The indicator of each label (1 inside, 0 outside) is rendered like attenuation, so
    the result is in mm (trilinear interpolation blurs label borders by up to one voxel).

    Args:
        labels: integer label volume (Z, Y, X) with its geometry; 0 is background.
        geometry: K views of H x W pixels.
        values: labels to project (default: every non-zero label present, ascending).
        backend, step, method: as :func:`render`.

    Returns:
        (K, L, H, W) float32 path lengths in mm, and the (L,) label values.
    """
    data = np.asarray(labels.data)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.equal(np.mod(data, 1), 0)):
            raise DrrkitError("a label volume must hold whole numbers")
        data = data.astype(np.int64)
    if values is None:
        values = np.unique(data)
        values = values[values != 0]
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    out = np.zeros((len(geometry), len(values), geometry.height, geometry.width), np.float32)
    for index, value in enumerate(values):
        mask = labels.with_data((data == value).astype(np.float32))
        out[:, index] = render(mask, geometry, backend=backend, step=step, method=method)
    return out, values
