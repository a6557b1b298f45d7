"""CT volumes with exact physical geometry.

World space is ITK physical space: LPS (x towards the patient's Left, y Posterior,
z Superior), in millimetres. A voxel with index ``(i, j, k)`` (``i`` fastest, the
ITK order) has its centre at::

    world = origin + direction @ (spacing * (i, j, k))

``Volume.data`` is stored in NumPy's order ``(k, j, i)`` = ``(Z, Y, X)``, exactly as
``SimpleITK.GetArrayFromImage`` returns it, so ``data[k, j, i]`` is voxel ``(i, j, k)``.
Each voxel is a box of ``spacing`` around its centre, so the volume occupies the
index-space box ``[-0.5, n - 0.5]`` along each axis.

Attenuation: the projector integrates linear attenuation ``mu`` in 1/mm. CT numbers
are converted with ``mu = mu_water * (1 + HU / 1000)``, clipped at 0.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drrkit.errors import DrrkitError

#: Linear attenuation of water in 1/mm at an effective energy of about 70 keV
#: (0.0193 mm^2/g mass attenuation coefficient times 1 g/cm^3), from the NIST XCOM
#: tables (Hubbell & Seltzer, NIST Standard Reference Database 126), a common choice
#: for diagnostic DRRs. Override it with ``mu_water=`` where another spectrum applies.
MU_WATER = 0.0193

_UNITS = ("hu", "mu")


def hu_to_mu(hu: np.ndarray, mu_water: float = MU_WATER) -> np.ndarray:
    """Convert CT numbers to linear attenuation.

    Args:
        hu: any shape, Hounsfield units.
        mu_water: attenuation of water in 1/mm.

    Returns:
        float32 array of the same shape, ``mu_water * (1 + hu / 1000)`` clipped at 0, in 1/mm.
    """
    mu = mu_water * (1.0 + np.asarray(hu, dtype=np.float32) / 1000.0)
    return np.maximum(mu, 0.0).astype(np.float32, copy=False)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D scalar image placed in world space (LPS, mm).

    Attributes:
        data: (Z, Y, X) float32 C-contiguous array; linear attenuation in 1/mm for
            rendering (or labels / any scalar for other uses).
        spacing: (3,) voxel size in mm along the index axes (i, j, k) = (X, Y, Z).
        origin: (3,) world position in mm of the centre of voxel (0, 0, 0).
        direction: (3, 3) direction cosines; column ``a`` is the world unit vector of
            index axis ``a`` (ITK's convention). Orthonormal.
    """

    data: np.ndarray
    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.ndim != 3:
            raise DrrkitError(f"a volume must be 3-D, got an array of shape {data.shape}")
        if min(data.shape) < 1:
            raise DrrkitError(f"a volume must have at least one voxel per axis, got {data.shape}")
        spacing = np.asarray(self.spacing, dtype=np.float64).reshape(-1)
        origin = np.asarray(self.origin, dtype=np.float64).reshape(-1)
        direction = np.asarray(self.direction, dtype=np.float64)
        if spacing.shape != (3,) or origin.shape != (3,) or direction.shape != (3, 3):
            raise DrrkitError("spacing and origin must have 3 values and direction must be 3x3")
        if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise DrrkitError(f"voxel spacing must be positive, got {spacing.tolist()}")
        if not np.all(np.isfinite(origin)) or not np.all(np.isfinite(direction)):
            raise DrrkitError("origin and direction must be finite")
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise DrrkitError("direction cosines must be orthonormal")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # ------------------------------------------------------------------ geometry
    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """Number of voxels along the index axes (i, j, k) = (X, Y, Z)."""
        z, y, x = self.data.shape
        return (x, y, z)

    @property
    def index_to_world(self) -> np.ndarray:
        """(4, 4) affine mapping homogeneous voxel index (i, j, k, 1) to world mm (LPS)."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction * self.spacing[None, :]
        affine[:3, 3] = self.origin
        return affine

    @property
    def world_to_index(self) -> np.ndarray:
        """(4, 4) inverse of :attr:`index_to_world`: world mm to continuous voxel index."""
        inverse = np.eye(4)
        rotation = (self.direction / self.spacing[None, :]).T
        inverse[:3, :3] = rotation
        inverse[:3, 3] = -rotation @ self.origin
        return inverse

    @property
    def slice_axis(self) -> int:
        """The index axis (0 i, 1 j, 2 k) that runs closest to world z: the slices' axis."""
        return int(np.argmax(np.abs(np.asarray(self.direction)[2])))

    @property
    def center(self) -> np.ndarray:
        """(3,) world mm of the centre of the volume's bounding box (the default isocentre)."""
        half = (np.asarray(self.shape_xyz, dtype=np.float64) - 1.0) / 2.0
        return self.index_to_world[:3, :3] @ half + self.origin

    @property
    def corners(self) -> np.ndarray:
        """(8, 3) world mm of the corners of the volume's box (voxel faces, not centres)."""
        n = np.asarray(self.shape_xyz, dtype=np.float64)
        grid = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T
        index = grid * n - 0.5
        return index @ self.index_to_world[:3, :3].T + self.origin

    def world_to_voxel(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world mm -> (..., 3) continuous index (i, j, k)."""
        points = np.asarray(points, dtype=np.float64)
        m = self.world_to_index
        return points @ m[:3, :3].T + m[:3, 3]

    def voxel_to_world(self, index: np.ndarray) -> np.ndarray:
        """(..., 3) continuous index (i, j, k) -> (..., 3) world mm."""
        index = np.asarray(index, dtype=np.float64)
        m = self.index_to_world
        return index @ m[:3, :3].T + m[:3, 3]

    def with_data(self, data: np.ndarray) -> Volume:
        """The same geometry holding other (Z, Y, X) voxel values."""
        data = np.asarray(data)
        if data.shape != self.data.shape:
            raise DrrkitError(f"data of shape {data.shape} does not fit volume {self.data.shape}")
        return Volume(data, self.spacing, self.origin, self.direction)

    def crop(self, start, stop) -> Volume:
        """The voxels with index ``start <= (i, j, k) < stop``, at their world positions.

        Bounds are clipped to the volume, as Python slices are; every kept voxel keeps its
        world position (the origin moves to voxel ``start``; spacing and direction stay).

        Args:
            start, stop: (3,) integer voxel index bounds along (i, j, k).

        Raises:
            DrrkitError: the bounds keep no voxel along some axis.
        """
        n = np.asarray(self.shape_xyz)
        lo = np.clip(np.asarray(start, dtype=np.int64).reshape(3), 0, n)
        hi = np.clip(np.asarray(stop, dtype=np.int64).reshape(3), 0, n)
        if np.any(hi <= lo):
            raise DrrkitError(f"the crop {lo.tolist()} .. {hi.tolist()} keeps no voxel of a "
                              f"volume of {n.tolist()} voxels (i, j, k)")
        data = self.data[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]  # (Z, Y, X) = (k, j, i)
        return Volume(np.ascontiguousarray(data), self.spacing, self.voxel_to_world(lo),
                      self.direction)

    def moved(self, rigid: np.ndarray) -> Volume:
        """The same voxels under a rigid motion of world space.

        Args:
            rigid: (4, 4) homogeneous rotation + translation in world mm.
        """
        rigid = np.asarray(rigid, dtype=np.float64)
        return Volume(
            self.data,
            self.spacing,
            rigid[:3, :3] @ self.origin + rigid[:3, 3],
            rigid[:3, :3] @ self.direction,
        )

    # ------------------------------------------------------------------ I/O
    def to_sitk(self):
        """A SimpleITK image with this volume's voxels and geometry."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.data))
        image.SetSpacing(self.spacing.tolist())
        image.SetOrigin(self.origin.tolist())
        image.SetDirection(self.direction.reshape(-1).tolist())
        return image

    @classmethod
    def from_sitk(cls, image) -> Volume:
        """Build from a 3-D SimpleITK image, keeping origin, spacing and direction exactly."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise DrrkitError(f"expected a 3-D image, got {image.GetDimension()}-D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise DrrkitError("expected a scalar image, got a multi-component (vector) image")
        return cls(
            sitk.GetArrayFromImage(image),
            np.array(image.GetSpacing()),
            np.array(image.GetOrigin()),
            np.array(image.GetDirection()).reshape(3, 3),
        )

    def save(self, path: str | Path) -> None:
        """Write to any format SimpleITK knows by the file name (.nii.gz, .nrrd, .mha, ...)."""
        import SimpleITK as sitk

        sitk.WriteImage(self.to_sitk(), str(path), True)


def _read_sitk(path: Path):
    import SimpleITK as sitk

    if not path.exists():
        raise DrrkitError(f"no such file or folder: {path}")
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise DrrkitError(f"no DICOM series found in folder {path}")
        if len(series) > 1:
            warnings.warn(
                f"{path} holds {len(series)} DICOM series; reading the first ({series[0]})",
                stacklevel=3,
            )
        files = reader.GetGDCMSeriesFileNames(str(path), series[0])
        reader.SetFileNames(files)
        try:
            return reader.Execute()
        except RuntimeError as error:
            raise DrrkitError(f"cannot read DICOM series in {path}: {_first_line(error)}") from None
    if path.stat().st_size == 0:
        raise DrrkitError(f"file is empty: {path}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise DrrkitError(f"cannot read {path} as an image: {_first_line(error)}") from None


#: NIfTI datatype codes of the float voxels that can hold NaN: float32, float64.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nifti_non_finite(path: Path, count: int) -> np.ndarray | None:
    """(M,) flat (Z, Y, X) indices of the NaN and inf voxels stored in a float NIfTI file.

    SimpleITK's NIfTI reader (niftilib) replaces non-finite float voxels by 0 without a
    word, and 0 HU is water; so the first ``count`` voxels are read again from the file
    itself, in chunks (NIfTI stores x fastest, the order of ``Volume.data.ravel()``).

    Returns:
        the indices, or None when ``path`` is not a single-file float32/float64 NIfTI-1
        (.nii, .nii.gz) that can be read this way.
    """
    import gzip

    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")) or not path.is_file():
        return None
    try:
        with (gzip.open if name.endswith(".gz") else open)(path, "rb") as f:
            head = f.read(348)  # a NIfTI-1 header (this SimpleITK reads no NIfTI-2)
            if len(head) < 348 or head[344:347] != b"n+1":  # "ni1": data in an .img file
                return None
            order = "<" if int.from_bytes(head[:4], "little") == 348 else ">"  # sizeof_hdr
            code = np.frombuffer(head[70:72], order + "i2")[0]  # datatype
            offset = np.frombuffer(head[108:112], order + "f4")[0]  # vox_offset
            if int(code) not in _NIFTI_FLOATS:
                return None
            dtype = np.dtype(order + _NIFTI_FLOATS[int(code)])
            f.seek(int(offset))
            found, done = [], 0
            while done < count:
                raw = f.read(min(1 << 22, count - done) * dtype.itemsize)
                values = np.frombuffer(raw, dtype, count=len(raw) // dtype.itemsize)
                if not len(values):
                    break
                found.append(np.flatnonzero(~np.isfinite(values)) + done)
                done += len(values)
    except (OSError, EOFError, ValueError):
        return None
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _non_finite(path: Path, data: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool: voxels of ``data`` (read from ``path``) that are, or in the file
    were, NaN or inf (:func:`_nifti_non_finite` finds those SimpleITK set to 0)."""
    bad = ~np.isfinite(data)
    if data.dtype.kind == "f":
        hidden = _nifti_non_finite(Path(path), data.size)
        if hidden is not None and len(hidden):
            bad.reshape(-1)[hidden] = True
    return bad


def _first_line(error: Exception) -> str:
    import re

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # drop ITK's "Exception thrown in ... .cxx:99:" line and "sitk::ERROR:" / "ITK ERROR:
    # Class(0x...):" prefixes, keep the reason
    useful = [re.sub(r"^(sitk::ERROR:|ITK ERROR:)\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?", "", line)
              for line in lines if not line.startswith("Exception thrown in")]
    return " ".join(useful or lines or ["unknown error"])[:200]


def load_volume(
    path: str | Path,
    units: str = "hu",
    *,
    mu_water: float = MU_WATER,
    nan: str = "zero",
    isotropic: float | None = None,
) -> Volume:
    """Read a CT and return it as attenuation in 1/mm with its exact geometry.

    Reads NIfTI (.nii, .nii.gz), NRRD, MHA/MHD and DICOM series folders through
    SimpleITK. Oblique and flipped storage is kept as direction cosines, so the same
    physical object renders to the same DRR however it is stored.

    Non-finite (NaN, inf) voxels: NRRD and MHA/MHD keep them, but SimpleITK's NIfTI reader
    silently turns them into 0 (water, in HU); for float32/float64 NIfTI files they are
    found by reading the voxels again from the file (a second pass over it), so ``nan``
    applies to every format. (A NIfTI .hdr/.img pair is not re-read.)

    Args:
        path: image file or DICOM folder.
        units: "hu" converts CT numbers with :func:`hu_to_mu`; "mu" takes voxel values
            as 1/mm unchanged.
        mu_water: attenuation of water in 1/mm (only for units="hu").
        nan: "zero" replaces non-finite voxels by 0 attenuation (air) with a warning
            naming the file and their count; "raise" refuses them with a DrrkitError.
        isotropic: if given, resample to this spacing in mm (linear interpolation).

    Returns:
        Volume with (Z, Y, X) float32 data in 1/mm.
    """
    if units not in _UNITS:
        raise DrrkitError(f"unknown units {units!r}; choose one of {', '.join(_UNITS)}")
    if nan not in ("zero", "raise"):
        raise DrrkitError(f"unknown nan policy {nan!r}; choose 'zero' or 'raise'")
    image = _read_sitk(Path(path))
    if image.GetDimension() != 3:
        raise DrrkitError(
            f"{path} is a {image.GetDimension()}-D image; a CT volume must be 3-D"
        )
    try:
        volume = Volume.from_sitk(image)
    except DrrkitError as error:
        raise DrrkitError(f"{path}: {error}") from None
    bad = _non_finite(Path(path), volume.data)
    values = volume.data.astype(np.float32, copy=False)
    if bad.any():
        if nan == "raise":
            raise DrrkitError(f"{path} has {int(bad.sum())} non-finite voxels")
        warnings.warn(
            f"{path} has {int(bad.sum())} non-finite voxels; treating them as 0 attenuation",
            stacklevel=2,
        )
        values = values.copy()
        values[bad] = -1000.0 if units == "hu" else 0.0
    mu = hu_to_mu(values, mu_water) if units == "hu" else values
    volume = volume.with_data(np.ascontiguousarray(mu, dtype=np.float32))
    if isotropic is not None:
        volume = resample_isotropic(volume, isotropic)
    return volume


def resample_isotropic(volume: Volume, spacing: float = 1.0) -> Volume:
    """Resample onto a grid of ``spacing`` mm along each index axis, same box and direction.

    Linear interpolation; the new grid covers the old box (voxel faces) and keeps the
    direction cosines, so world coordinates are unchanged.

    Args:
        volume: the input volume.
        spacing: new isotropic voxel size in mm.
    """
    import SimpleITK as sitk

    if not spacing > 0 or not math.isfinite(spacing):
        raise DrrkitError(f"isotropic spacing must be positive, got {spacing}")
    extent = np.asarray(volume.shape_xyz) * volume.spacing
    size = np.maximum(1, np.round(extent / spacing)).astype(int)
    # keep the box: old first face = origin - spacing/2 along each axis
    first_face = -0.5 * volume.spacing + 0.5 * spacing
    new_origin = volume.origin + volume.direction @ first_face
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing([float(spacing)] * 3)
    resampler.SetSize([int(s) for s in size])
    resampler.SetOutputOrigin(new_origin.tolist())
    resampler.SetOutputDirection(volume.direction.reshape(-1).tolist())
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0.0)
    image = volume.with_data(volume.data.astype(np.float32, copy=False)).to_sitk()
    out = Volume.from_sitk(resampler.Execute(image))
    return out.with_data(np.ascontiguousarray(out.data, dtype=np.float32))


def check_bone_enhancement(threshold_hu: float, gain: float) -> None:
    """Raise :class:`DrrkitError` unless :func:`enhance_bone` accepts these settings."""
    if not (math.isfinite(threshold_hu) and math.isfinite(gain) and gain >= 1.0):
        raise DrrkitError(f"bone enhancement needs a finite threshold and a gain >= 1, got "
                          f"{threshold_hu} HU and gain {gain}")


def enhance_bone(volume: Volume, threshold_hu: float = 200.0, gain: float = 8.0,
                 mu_water: float = MU_WATER) -> Volume:
    """Steepen attenuation above a CT number, so bone stands out of soft tissue in DRRs.

    A voxel's attenuation ``mu`` above ``mu_t = mu_water (1 + threshold_hu / 1000)`` becomes
    ``mu_t + gain (mu - mu_t)``; below it is unchanged. This is the same as multiplying
    the CT numbers above ``threshold_hu`` by ``gain`` around it, and is continuous and
    increasing for ``gain >= 1``. A DRR of the result is the plain DRR plus ``gain - 1``
    times the DRR of the bone's excess attenuation ``max(mu - mu_t, 0)`` (both linear in
    the volume), so ribs, pelvis and vertebrae are ``gain`` times more visible against the
    ~6 line-integral units of a torso's soft tissue, where bone adds a few per cent.
    (The paper's code renders "enhanced" CTs; how it enhanced them is not published.)

    Args:
        volume: attenuation in 1/mm (as :func:`load_volume` returns).
        threshold_hu: CT number above which attenuation is steepened (200 HU leaves soft
            tissue, blood and noise alone; cancellous bone is ~200-400 HU).
        gain: slope above the threshold (1: unchanged), >= 1.
        mu_water: the water attenuation the volume was converted with (1/mm).

    Returns:
        A new :class:`Volume` (float32, same geometry).
    """
    check_bone_enhancement(threshold_hu, gain)
    data = np.asarray(volume.data, dtype=np.float32)
    mu_t = np.float32(mu_water * (1.0 + threshold_hu / 1000.0))
    out = data - mu_t  # one temporary the size of the volume
    np.maximum(out, np.float32(0.0), out=out)
    out *= np.float32(gain - 1.0)
    out += data
    return volume.with_data(out)
