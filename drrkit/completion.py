"""Complete a CT whose field of view cuts the body: soft tissue in place of the missing trunk.

A spine protocol reconstructs a small field of view centred on the spine (often 100-180 mm),
and crops made for segmentation keep only a box around the vertebrae. Their DRRs integrate
the tissue inside that box alone, so the spine shows against far less soft tissue than in
any scan of the whole trunk, an input networks trained on whole-trunk views may misread
(decision ``body-completion``). CT reconstruction meets the same
gap in truncated projections and bridges it with water-equivalent cylinders (truncation
correction); :func:`complete_body` does it in the volume: the CT is padded in plane and
the voxels the scan does not hold (the padding, and the air outside the inscribed
ellipse of each slice, where a reconstruction circle leaves padding values) get the CT
number of soft tissue inside an elliptic cylinder the size of an adult trunk, air outside,
in each slice the body fills; a slice that shows the body's outline keeps it. The scan's
own voxels inside that ellipse are never changed.

:func:`completed` applies it where a scan needs it; :func:`truncation` says whether it does: the share of the voxels on the inscribed
ellipse of each slice's box (the in-plane index axes) that hold tissue. A scan of the
whole trunk has air there (the body lies inside the field of view, at most the arms or
the table reach the edge); a cut one has tissue all round.

World axes are LPS (x to the patient's left, y posterior); the ellipse's axes run along
world x and y, the cylinder along the slices.
"""

from __future__ import annotations

import numpy as np

from drrkit.errors import DrrkitError
from drrkit.volume import MU_WATER, Volume, hu_to_mu, resample_isotropic

#: Voxels at or above this CT number (HU) count as tissue in :func:`truncation`.
TISSUE_HU = -950.0
#: Voxels below this CT number (HU) outside the inscribed ellipse are padding, not air
#: inside the body, in a truncated scan (a reconstruction circle's outside).
EMPTY_HU = -900.0
#: Width and depth (mm) of the trunk the completion assumes (world x, y): an adult's.
BODY_MM = (330.0, 230.0)
#: The trunk's centre lies this far (mm) in front of the scan's box centre (a spine
#: protocol centres its field of view on the spine, which lies near the back).
ANTERIOR_MM = 45.0
#: CT number (HU) of the completed tissue: water, the mean of fat, muscle and organs.
BODY_HU = 0.0
#: Largest completed volume (voxels); a finer scan is resampled isotropically first.
MAX_VOXELS = 64_000_000
#: :func:`needs_completion`: a scan is cut when at least this share of its inscribed
#: ellipse holds tissue (:func:`truncation`) and its field of view is narrower than
#: :data:`SMALL_FOV_MM` (mm) along one in-plane axis: than the trunk's depth, so that
#: the scan cannot show the body's front and back, whose outline the completion would
#: otherwise contradict (decision ``body-completion``).
CUT_SHARE = 0.5
SMALL_FOV_MM = BODY_MM[1]
#: Border (mm) left around the trunk's ellipse inside the completed box.
MARGIN_MM = 10.0


def _inplane_axes(volume: Volume) -> list[int]:
    return [a for a in range(3) if a != volume.slice_axis]


def _inscribed_radius(shape_xyz, inplane: list[int]) -> np.ndarray:
    """(n_a, n_b) each in-plane voxel's radius on the inscribed ellipse's scale of the
    in-plane index box (axes ``inplane`` in order): 1 on the ellipse, 0 at the centre."""
    na, nb = (shape_xyz[a] for a in inplane)
    ia = (np.arange(na) + 0.5 - na / 2.0)[:, None] / max(na / 2.0, 1.0)
    ib = (np.arange(nb) + 0.5 - nb / 2.0)[None, :] / max(nb / 2.0, 1.0)
    return np.sqrt(ia**2 + ib**2)


def _ellipse_ring(shape_xyz, inplane: list[int], width: float = 2.0) -> np.ndarray:
    """(n_a, n_b) bool: the voxels within ``width`` voxels inside the inscribed ellipse."""
    r = _inscribed_radius(shape_xyz, inplane)
    half = max(min(shape_xyz[a] for a in inplane) / 2.0, 1.0)
    return (r <= 1.0) & (r >= 1.0 - width / half)


def _slices_first(inplane: list[int]) -> list[int]:
    """The axes of a (Z, Y, X) array in the order (slice axis, *inplane) of index axes."""
    slice_axis = ({0, 1, 2} - set(inplane)).pop()
    return [2 - axis for axis in (slice_axis, *inplane)]  # index axis a is array axis 2 - a


def _inplane_view(data: np.ndarray, inplane: list[int]) -> np.ndarray:
    """``data`` (Z, Y, X) as (slices, n_a, n_b) over the index axes (slice, *inplane)."""
    return np.transpose(data, _slices_first(inplane))


def truncation(volume: Volume, tissue_hu: float = TISSUE_HU,
               mu_water: float = MU_WATER) -> float:
    """Share (0-1) of the voxels on the inscribed ellipse of each slice that hold tissue.

    Args:
        volume: attenuation in 1/mm (:func:`drrkit.load_volume`).
        tissue_hu: voxels at or above this CT number count as tissue.
        mu_water: the attenuation of water the volume was converted with (1/mm).

    Returns:
        near 0 for a scan with the whole body inside its field of view, near 1 for one
        whose field of view the body fills.
    """
    return float(slice_truncation(volume, tissue_hu, mu_water).mean())


def slice_truncation(volume: Volume, tissue_hu: float = TISSUE_HU,
                     mu_water: float = MU_WATER) -> np.ndarray:
    """(S,) per slice (along :attr:`Volume.slice_axis`, in index order) the share of the
    voxels on its inscribed ellipse that hold tissue (:func:`truncation`)."""
    inplane = _inplane_axes(volume)
    ring = _ellipse_ring(volume.shape_xyz, inplane)
    slices = _inplane_view(np.asarray(volume.data), inplane)
    if not ring.any():
        return np.zeros(slices.shape[0])
    tissue = slices[:, ring] >= hu_to_mu(np.float32(tissue_hu), mu_water)
    return tissue.mean(axis=1)


def needs_completion(volume: Volume, mu_water: float = MU_WATER) -> bool:
    """Whether the body fills a small field of view (:data:`CUT_SHARE`,
    :data:`SMALL_FOV_MM`): a spine protocol's reconstruction or a crop around the spine."""
    n = np.asarray(volume.shape_xyz, dtype=np.float64) * volume.spacing
    narrow = min(n[a] for a in _inplane_axes(volume))
    return bool(narrow < SMALL_FOV_MM and truncation(volume, mu_water=mu_water) >= CUT_SHARE)


def complete_body(volume: Volume, *, body_mm: tuple[float, float] = BODY_MM,
                  anterior_mm: float = ANTERIOR_MM, body_hu: float = BODY_HU,
                  mu_water: float = MU_WATER, max_voxels: int = MAX_VOXELS) -> Volume:
    """The CT padded in plane, the trunk it cuts completed with soft tissue.

    Args:
        volume: attenuation in 1/mm, any orientation whose slices run along world z.
        body_mm: (width, depth) of the trunk's ellipse, mm along world x and y.
        anterior_mm: the ellipse's centre lies this far in front of (world -y) the centre
            of the volume's box.
        body_hu: CT number of the completed tissue.
        mu_water: the attenuation of water the volume was converted with (1/mm).
        max_voxels: a larger completed volume is made from the CT resampled isotropically
            (:func:`drrkit.resample_isotropic`) at the spacing that fits.

    Returns:
        a new Volume with the same direction and centre (the padding is symmetric), the
        scan's voxels where they were; the padding and the scan's voxels below
        :data:`EMPTY_HU` outside the inscribed ellipse of each slice hold
        ``hu_to_mu(body_hu)`` inside the ellipse, in the slices the body fills
        (:func:`slice_truncation` at least :data:`CUT_SHARE`), and 0 elsewhere: where a
        slice shows the body's outline (a neck inside the field of view, a trunk's
        lower end) it stays the scan's.

    Raises:
        DrrkitError: a body size that is not two positive numbers.
    """
    a, b = (float(x) / 2.0 for x in np.broadcast_to(np.asarray(body_mm, float), (2,)))
    if not (a > 0 and b > 0 and np.isfinite(a) and np.isfinite(b)):
        raise DrrkitError(f"body_mm must be two positive mm, got {body_mm!r}")
    inplane = _inplane_axes(volume)
    centre = volume.center
    body_centre = centre + np.array([0.0, -float(anterior_mm), 0.0])
    add = _padding(volume, inplane, a, b, body_centre - centre)
    count = np.prod(np.asarray(volume.shape_xyz) + 2 * add, dtype=np.float64)
    if count > max_voxels:
        extent = np.asarray(volume.shape_xyz) * volume.spacing
        grown = [(extent[i] + 2 * add[i] * volume.spacing[i]) for i in range(3)]
        spacing = float(np.cbrt(np.prod(grown) / max_voxels))
        volume = resample_isotropic(volume, max(spacing, float(volume.spacing.min())))
        centre = volume.center
        add = _padding(volume, inplane, a, b, body_centre - centre)
    data = np.asarray(volume.data, dtype=np.float32)
    pad = [(int(add[2]),) * 2, (int(add[1]),) * 2, (int(add[0]),) * 2]
    radius = _inscribed_radius(volume.shape_xyz, inplane)
    outside = np.broadcast_to(radius > 1.0, (volume.shape_xyz[volume.slice_axis], *radius.shape))
    empty = data < hu_to_mu(np.float32(EMPTY_HU), mu_water)
    missing = empty & _unview(outside, inplane)
    big = np.pad(data, pad, constant_values=0.0)
    new = np.pad(missing, pad, constant_values=True)
    origin = volume.voxel_to_world(-add.astype(np.float64))
    out = Volume(big, volume.spacing, origin, volume.direction)
    # world x, y of every voxel, linear in its index: summed from one axis at a time
    step = out.direction * out.spacing[None, :]  # column a: mm per index step along a
    axes = [np.arange(n, dtype=np.float32) for n in out.shape_xyz]  # i, j, k
    shape = [(1, 1, -1), (1, -1, 1), (-1, 1, 1)]  # each index axis in (Z, Y, X)
    inside = np.zeros(big.shape, dtype=np.float32)
    for row, semi in ((0, a), (1, b)):
        u = np.float32(origin[row] - body_centre[row])
        for axis in range(3):
            u = u + (np.float32(step[row, axis]) * axes[axis]).reshape(shape[axis])
        inside += (u / np.float32(semi)) ** 2
    cut = slice_truncation(volume, mu_water=mu_water) >= CUT_SHARE  # (S,) slices it fills
    fill = new & (inside <= 1.0) & cut.reshape(shape[volume.slice_axis])
    big[new] = 0.0
    big[fill] = hu_to_mu(np.float32(body_hu), mu_water)
    return out


def completed(volume: Volume, mu_water: float = MU_WATER) -> Volume:
    """What a scan's views integrate once cut scans are completed: :func:`complete_body` of
    ``volume`` when :func:`needs_completion` holds (a new volume), else ``volume`` itself.
    The one rule that labelling (``PipelineConfig.complete_body``) and training
    (``vertebra.training.sources.CompletedSource``) share."""
    if needs_completion(volume, mu_water=mu_water):
        return complete_body(volume, mu_water=mu_water)
    return volume


def _unview(inside: np.ndarray, inplane: list[int]) -> np.ndarray:
    """The (slices, n_a, n_b) array of :func:`_inplane_view` back as (Z, Y, X)."""
    return np.transpose(inside, np.argsort(_slices_first(inplane)))


def _padding(volume: Volume, inplane: list[int], a: float, b: float,
             offset: np.ndarray) -> np.ndarray:
    """(3,) voxels to add on each side of each index axis so that the box holds the
    ellipse (semi-axes ``a``, ``b`` mm along world x, y; centre ``offset`` mm from the
    box's centre) plus :data:`MARGIN_MM`."""
    add = np.zeros(3, dtype=np.int64)
    n = np.asarray(volume.shape_xyz, dtype=np.float64)
    for axis in inplane:
        d = np.asarray(volume.direction)[:, axis]
        support = np.hypot(a * d[0], b * d[1]) + abs(float(offset @ d)) + MARGIN_MM
        half = 0.5 * n[axis] * volume.spacing[axis]
        add[axis] = max(0, int(np.ceil((support - half) / volume.spacing[axis])))
    return add
