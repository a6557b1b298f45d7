"""Undiluted contrast and metal taken out of a CT before it is rendered.

Vertebral bone rarely reaches the default threshold: its cortical shell is thin, so the
scanner's blur mixes it with the marrow beside it (the densest vertebral voxels of the
real CTs the project checks are in decision ``dense-contrast``). Denser voxels are
undiluted iodinated contrast in the injected arm's veins (up to where the scanner's
numbers stop), metal (screws, rods, prostheses, wires) and, rarely, the thick cortex of
the long bones. In a bone-enhanced DRR (:func:`drrkit.enhance_bone`) a vein full of
contrast outshines the spine it crosses. :func:`suppress_dense` replaces those voxels,
and the bright partial-volume rim around them, by soft tissue, so that the views show the
skeleton and the diluted blood, not the injection.

A voxel is in the rim when it lies within ``margin_mm`` of a dense voxel (at least one
voxel along each axis, so that a thick slice's partial volume goes too) and is brighter
than ``rim_hu``: soft tissue beside the vessel stays as it is.
"""

from __future__ import annotations

import math

import numpy as np

from drrkit.errors import DrrkitError
from drrkit.volume import MU_WATER, Volume

#: Default CT number (HU) above which a voxel is taken out: above the densest vertebral
#: bone, below undiluted contrast and metal (decision ``dense-contrast``).
DENSE_HU = 1600.0
#: Lowest threshold :func:`suppress_dense` accepts (HU): below it, it would take out
#: vertebral cortex.
MIN_DENSE_HU = 1000.0
#: Default rim width (mm) and the CT numbers of the rim and of the fill (HU).
MARGIN_MM, RIM_HU, FILL_HU = 2.0, 150.0, 40.0


def check_dense_hu(threshold_hu) -> float:
    """``threshold_hu`` as a float; :class:`DrrkitError` unless it is a finite CT number of
    at least :data:`MIN_DENSE_HU`."""
    try:
        value = float(threshold_hu)
    except (TypeError, ValueError):
        raise DrrkitError(f"the dense threshold must be a number of HU, got "
                          f"{threshold_hu!r}") from None
    if not (math.isfinite(value) and value >= MIN_DENSE_HU):
        raise DrrkitError(f"the dense threshold must be at least {MIN_DENSE_HU:g} HU "
                          f"(below it, vertebral bone is taken out), got {threshold_hu!r}")
    return value


def rim_radii(spacing, margin_mm: float) -> np.ndarray:
    """(3,) rim half-widths in voxels along the data axes (Z, Y, X) for a volume's
    (X, Y, Z) ``spacing`` in mm: ``round(margin_mm / spacing)``, at least 1."""
    spacing = np.asarray(spacing, dtype=np.float64)[::-1]
    return np.maximum(1, np.round(margin_mm / spacing)).astype(int)


def _ellipsoid(radii: np.ndarray) -> np.ndarray:
    """Boolean structuring element: voxel offsets d with sum((d / radii)^2) <= 1."""
    axes = [np.arange(-r, r + 1) / r for r in radii]
    grid = np.meshgrid(*axes, indexing="ij")
    return sum(g * g for g in grid) <= 1.0 + 1e-9


def dense_mask(volume: Volume, threshold_hu: float = DENSE_HU, margin_mm: float = MARGIN_MM,
               rim_hu: float = RIM_HU, mu_water: float = MU_WATER) -> np.ndarray:
    """(Z, Y, X) bool: the voxels :func:`suppress_dense` replaces (see the module doc).

    Args:
        volume: attenuation in 1/mm.
        threshold_hu: voxels above this CT number are dense (>= :data:`MIN_DENSE_HU`).
        margin_mm: the rim reaches this far from a dense voxel (>= 0; at least one voxel
            along each axis).
        rim_hu: a rim voxel is taken out only above this CT number.
        mu_water: the water attenuation the volume was converted with (1/mm).
    """
    from scipy import ndimage

    threshold_hu = check_dense_hu(threshold_hu)
    if not (math.isfinite(margin_mm) and margin_mm >= 0):
        raise DrrkitError(f"the rim width must be a finite number of mm >= 0, got {margin_mm}")
    data = np.asarray(volume.data)
    dense = data > np.float32(mu_water * (1.0 + threshold_hu / 1000.0))
    out = np.zeros(data.shape, dtype=bool)
    if not dense.any():
        return out
    radii = rim_radii(volume.spacing, margin_mm)
    # dilate only the box around the dense voxels (they are few), padded by the radii
    index = np.nonzero(dense)
    lo = [max(int(i.min()) - r, 0) for i, r in zip(index, radii, strict=True)]
    hi = [min(int(i.max()) + r + 1, n) for i, r, n in zip(index, radii, data.shape,
                                                          strict=True)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grown = ndimage.binary_dilation(dense[box], structure=_ellipsoid(radii))
    bright = data[box] > np.float32(mu_water * (1.0 + rim_hu / 1000.0))
    out[box] = dense[box] | (grown & bright)
    return out


def suppress_dense(volume: Volume, threshold_hu: float = DENSE_HU,
                   margin_mm: float = MARGIN_MM, rim_hu: float = RIM_HU,
                   fill_hu: float = FILL_HU, mu_water: float = MU_WATER) -> Volume:
    """Replace the voxels denser than bone, and their bright rim, by soft tissue.

    Args:
        volume: attenuation in 1/mm (:func:`drrkit.load_volume`).
        threshold_hu, margin_mm, rim_hu, mu_water: as in :func:`dense_mask`.
        fill_hu: the CT number the taken-out voxels get (soft tissue).

    Returns:
        ``volume`` itself when no voxel is above ``threshold_hu``, else a new
        :class:`~drrkit.Volume` (float32, same geometry).
    """
    mask = dense_mask(volume, threshold_hu, margin_mm, rim_hu, mu_water)
    if not mask.any():
        return volume
    data = np.array(volume.data, dtype=np.float32)
    data[mask] = np.float32(mu_water * (1.0 + fill_hu / 1000.0))
    return volume.with_data(data)
