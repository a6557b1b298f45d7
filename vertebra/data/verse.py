"""VerSe centroid JSON files and the orientation maths behind them.

File layout (both VerSe releases)::

    [{"direction": ["P", "I", "R"]},
     {"label": 16, "X": 81.2, "Y": 120.5, "Z": 60.0},
     ...]

The ``direction`` header names, for X, Y and Z in turn, the anatomical direction in
which that coordinate *increases* (nibabel's "axis codes": ``["P", "I", "R"]`` means X
grows towards Posterior, Y towards Inferior, Z towards Right). The coordinates are
positions in the image's voxel grid after it has been reoriented to that code, which is
only ever a permutation and flips of the voxel axes (what ``nibabel``'s ``as_reoriented``
and VerSe's ``reorient_to`` do).

The conversion, written down once. Let the image have voxel counts ``n`` (3,), spacing
``s`` (3,) mm and direction cosines ``D`` (3, 3) (column ``a`` = world LPS unit vector of
index axis ``a``). The *code* of index axis ``a`` is the anatomical direction its column
points to most (``+x`` = L, ``-x`` = R, ``+y`` = P, ``-y`` = A, ``+z`` = S, ``-z`` = I;
assigned greedily, largest |cosine| first, so an oblique image still gets a permutation).
For the header's code ``c_b`` of coordinate ``b`` pick the index axis ``a = perm[b]``
whose code lies on the same anatomical line (L/R, A/P or S/I), and ``flip[b]`` when the
two codes are opposite. Then the reoriented voxel coordinate is::

    q_b = p_a                 (no flip)
    q_b = (n_a - 1) - p_a     (flip: voxel centre 0 <-> voxel centre n_a - 1)

with ``p`` the continuous voxel index (i, j, k) of the image (``p = 0`` at the centre of
the first voxel). This is exact for oblique images as well: only the voxel grid is
permuted, never resampled. World LPS mm follows from the image: ``x = o + D diag(s) p``.

Two formats:

* ``"verse20"`` (the restructured, subject-based VerSe release and the default): the
  JSON values are ``q`` in voxels of the image's own grid.
* ``"verse19"`` (the 2019 challenge release): the values are in mm on a 1 mm isotropic
  grid, i.e. ``q_b * s_{perm[b]}``: mm from the centre of the reoriented grid's first
  voxel along each reoriented axis. (That is the position in the image resampled to 1 mm
  with its first voxel centre kept, as VerSe's ``resample_nib`` does; where the 2019 data
  were resampled before flipping an axis the two grids can differ by under 1 mm.)

Known difference from VerSe's own ``reorient_centroids_to`` helper: it flips with
``n - q`` rather than ``n - 1 - q`` (one voxel off along flipped axes); ``nibabel``'s
affine maths, followed here, use ``n - 1``.

Centroid entries with NaN coordinates (present in some released files) are skipped with
a warning; labels that are not vertebra targets (26 sacrum, 27 coccyx, anything else)
are kept by the readers and left for the caller to filter with
:func:`vertebra.labels.is_vertebra`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drrkit.errors import DrrkitError
from vertebra.errors import VertebraError

#: Centroid file formats; see the module docstring.
FORMATS = ("verse20", "verse19")

#: The orientation VerSe uses in its files and tools.
DEFAULT_DIRECTION = ("P", "I", "R")

# code -> (world LPS axis, sign)
_CODE_AXIS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_AXIS_CODES = (("L", "R"), ("P", "A"), ("S", "I"))


# ---------------------------------------------------------------------- grids
@dataclass(frozen=True)
class ImageGrid:
    """The voxel grid of an image, without its voxels.

    Attributes:
        size: (3,) int voxel counts along index axes (i, j, k).
        spacing: (3,) mm.
        origin: (3,) world LPS mm of the centre of voxel (0, 0, 0).
        direction: (3, 3) columns = world unit vectors of the index axes.
    """

    size: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    @property
    def index_to_world(self) -> np.ndarray:
        """(4, 4) homogeneous voxel index (i, j, k, 1) -> world LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction * self.spacing[None, :]
        m[:3, 3] = self.origin
        return m


def image_grid(image: Any) -> ImageGrid:
    """The grid of a ``drrkit.Volume``, a SimpleITK image, an :class:`ImageGrid` or an image path.

    A file path is read header-only (no voxels are loaded); a folder is read as a DICOM
    series.
    """
    if isinstance(image, ImageGrid):
        return image
    if isinstance(image, (str, Path)):
        return _read_header(Path(image))
    if hasattr(image, "shape_xyz") and hasattr(image, "direction"):  # drrkit.Volume
        size, spacing, origin, direction = (
            image.shape_xyz, image.spacing, image.origin, image.direction)
    elif hasattr(image, "GetSize") and hasattr(image, "GetDirection"):  # SimpleITK
        if image.GetDimension() != 3:
            raise VertebraError(f"expected a 3-D image, got {image.GetDimension()}-D")
        size, spacing, origin = image.GetSize(), image.GetSpacing(), image.GetOrigin()
        direction = np.reshape(image.GetDirection(), (3, 3))
    else:
        raise VertebraError(
            f"expected a drrkit.Volume, a SimpleITK image or an image path, got {type(image).__name__}"
        )
    grid = ImageGrid(
        np.asarray(size, dtype=np.int64).reshape(3),
        np.asarray(spacing, dtype=np.float64).reshape(3),
        np.asarray(origin, dtype=np.float64).reshape(3),
        np.asarray(direction, dtype=np.float64).reshape(3, 3),
    )
    if np.any(grid.size < 1) or np.any(~(grid.spacing > 0)):
        raise VertebraError("the image must have positive voxel counts and spacing")
    return grid


def _read_header(path: Path):
    import SimpleITK as sitk

    if path.is_dir():  # a DICOM series: read it whole
        from drrkit.volume import _read_sitk

        return image_grid(_read_sitk(path))
    if not path.is_file():
        raise VertebraError(f"no such image file: {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise VertebraError(f"cannot read {path} as an image") from None
    if reader.GetDimension() != 3:
        raise VertebraError(f"{path} is {reader.GetDimension()}-D; expected a 3-D image")
    return ImageGrid(
        np.asarray(reader.GetSize(), dtype=np.int64),
        np.asarray(reader.GetSpacing(), dtype=np.float64),
        np.asarray(reader.GetOrigin(), dtype=np.float64),
        np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3),
    )


# ---------------------------------------------------------------------- orientation codes
def check_direction(direction) -> tuple[str, str, str]:
    """Validate an orientation code ("PIR", ["P", "I", "R"], ...) and return it as a 3-tuple."""
    if isinstance(direction, str):
        codes = tuple(direction.strip().upper())
    else:
        try:
            codes = tuple(str(c).strip().upper() for c in direction)
        except TypeError:
            raise VertebraError(f"an orientation code must be 3 letters, got "
                                f"{direction!r}") from None
    if len(codes) != 3 or any(c not in _CODE_AXIS for c in codes):
        raise VertebraError(
            f"an orientation code must be 3 letters from L/R, A/P, S/I, got {direction!r}"
        )
    if len({_CODE_AXIS[c][0] for c in codes}) != 3:
        raise VertebraError(
            f"orientation code {direction!r} must name each of L/R, A/P and S/I once"
        )
    return codes  # type: ignore[return-value]


def axcodes(direction_cosines) -> tuple[str, str, str]:
    """Anatomical codes of an image's index axes (i, j, k) from its direction cosines.

    Args:
        direction_cosines: (3, 3) columns = world LPS unit vectors of the index axes.

    Returns:
        e.g. ("R", "A", "S") for a NIfTI stored in RAS+ order. Oblique axes take the code
        of the world axis they are closest to, assigned greedily (largest |cosine| first)
        so that the three codes always name different lines.
    """
    d = np.abs(np.asarray(direction_cosines, dtype=np.float64).reshape(3, 3))
    world_of = [-1, -1, -1]
    free_w, free_a = [0, 1, 2], [0, 1, 2]
    for _ in range(3):
        sub = d[np.ix_(free_w, free_a)]
        w_i, a_i = np.unravel_index(int(np.argmax(sub)), sub.shape)
        w, a = free_w.pop(w_i), free_a.pop(a_i)
        world_of[a] = w
    dc = np.asarray(direction_cosines, dtype=np.float64).reshape(3, 3)
    return tuple(  # type: ignore[return-value]
        _AXIS_CODES[w][0 if dc[w, a] > 0 else 1] for a, w in enumerate(world_of)
    )


def reorientation(image: Any, direction) -> tuple[np.ndarray, np.ndarray]:
    """Permutation and flips taking the image's voxel grid to orientation ``direction``.

    Returns:
        perm (3,) int: coordinate b of the reoriented grid runs along image index axis
        ``perm[b]``; flip (3,) bool: whether it runs against it.
    """
    grid = image_grid(image)
    target = check_direction(direction)
    own = axcodes(grid.direction)
    line_of = {_CODE_AXIS[c][0]: a for a, c in enumerate(own)}
    perm = np.array([line_of[_CODE_AXIS[c][0]] for c in target], dtype=np.int64)
    flip = np.array([own[perm[b]] != target[b] for b in range(3)], dtype=bool)
    return perm, flip


def verse_to_index_affine(image: Any, direction=DEFAULT_DIRECTION, format: str = "verse20"
                          ) -> np.ndarray:
    """(4, 4) affine from file coordinates (X, Y, Z, 1) to the image's voxel index (i, j, k, 1)."""
    fmt = check_format(format)
    grid = image_grid(image)
    perm, flip = reorientation(grid, direction)
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for b in range(3):
        a = perm[b]
        scale = 1.0 / grid.spacing[a] if fmt == "verse19" else 1.0
        if flip[b]:
            m[a, b] = -scale
            m[a, 3] = grid.size[a] - 1.0
        else:
            m[a, b] = scale
    return m


def verse_to_world(coords, image: Any, direction=DEFAULT_DIRECTION, format: str = "verse20"
                   ) -> np.ndarray:
    """File coordinates (..., 3) (X, Y, Z) -> world LPS mm (..., 3)."""
    m = image_grid(image).index_to_world @ verse_to_index_affine(image, direction, format)
    c = np.asarray(coords, dtype=np.float64)
    if c.shape[-1:] != (3,):
        raise VertebraError(f"coordinates must have shape (..., 3), got {c.shape}")
    return c @ m[:3, :3].T + m[:3, 3]


def world_to_verse(points, image: Any, direction=DEFAULT_DIRECTION, format: str = "verse20"
                   ) -> np.ndarray:
    """World LPS mm (..., 3) -> file coordinates (..., 3) (X, Y, Z)."""
    m = np.linalg.inv(
        image_grid(image).index_to_world @ verse_to_index_affine(image, direction, format))
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1:] != (3,):
        raise VertebraError(f"points must have shape (..., 3), got {p.shape}")
    return p @ m[:3, :3].T + m[:3, 3]


def check_format(format: str, option: str | None = None) -> str:
    """``format`` if it is one of :data:`FORMATS`, else a VertebraError (naming the
    command-line ``option`` it came from, if given)."""
    if format not in FORMATS:
        where = f" ({option})" if option else ""
        raise VertebraError(f"unknown centroid format {format!r}{where}; choose one of "
                            f"{', '.join(FORMATS)}")
    return format


# ---------------------------------------------------------------------- files
@dataclass(frozen=True)
class CentroidFile:
    """The raw contents of a centroid JSON file.

    Attributes:
        direction: the header's orientation code, or None when the file has no header.
        labels: (N,) int64 VerSe ids, in file order.
        coords: (N, 3) float64 X, Y, Z as stored (voxels for verse20, mm for verse19).
    """

    direction: tuple[str, str, str] | None
    labels: np.ndarray
    coords: np.ndarray


def load_centroid_file(path: str | Path) -> CentroidFile:
    """Parse a VerSe centroid JSON without interpreting the coordinates.

    Skips (with one warning) entries whose coordinates are NaN or missing values.
    Raises DrrkitError for files that are not VerSe centroid lists.
    """
    path = Path(path)
    if not path.is_file():
        raise VertebraError(f"no such centroid file: {path}")
    try:
        items = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise VertebraError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(items, list):
        raise VertebraError(f"{path}: expected a JSON list of centroids")
    direction = None
    labels, coords, skipped = [], [], []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise VertebraError(f"{path}: entry {n} is not a JSON object")
        if "direction" in item:
            try:
                direction = check_direction(item["direction"])
            except DrrkitError as error:
                raise VertebraError(f"{path}: {error}") from None
            continue
        if "label" not in item:
            raise VertebraError(f"{path}: entry {n} has neither 'direction' nor 'label'")
        try:
            label = int(item["label"])
            xyz = [float(item[k]) for k in ("X", "Y", "Z")]
        except KeyError as error:
            raise VertebraError(f"{path}: entry {n} lacks coordinate {error}") from None
        except (TypeError, ValueError):
            skipped.append(item.get("label"))
            continue
        if label != float(item["label"]):
            raise VertebraError(f"{path}: entry {n} has a non-integer label {item['label']!r}")
        if not all(math.isfinite(v) for v in xyz):
            skipped.append(label)
            continue
        labels.append(label)
        coords.append(xyz)
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} centroid(s) without finite coordinates "
                      f"(labels {skipped})", stacklevel=2)
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise VertebraError(f"{path}: label(s) {dup} appear more than once")
    return CentroidFile(direction, np.asarray(labels, dtype=np.int64),
                        np.asarray(coords, dtype=np.float64).reshape(-1, 3))


def read_centroids(
    path: str | Path,
    image: Any,
    *,
    format: str = "verse20",
    direction=None,
) -> dict[int, np.ndarray]:
    """Read a centroid JSON and return world LPS mm positions.

    Args:
        path: the JSON file.
        image: the CT (or its mask) the file belongs to: a ``drrkit.Volume``, a SimpleITK
            image, an :class:`ImageGrid` or an image path (read header-only).
        format: "verse20" (voxels of the image's grid) or "verse19" (mm on a 1 mm grid).
        direction: orientation code to use when the file has no ``direction`` header;
            ignored when it has one. Without either, DrrkitError.

    Returns:
        {VerSe id: (3,) float64 world LPS mm}, in file order.
    """
    f = load_centroid_file(path)
    codes = f.direction
    if codes is None:
        if direction is None:
            raise VertebraError(
                f"{path} has no 'direction' header; pass the orientation code it was written in")
        codes = check_direction(direction)
    world = verse_to_world(f.coords, image, codes, format)
    return {int(lab): world[n] for n, lab in enumerate(f.labels)}


def centroids_to_json(
    centroids_world: dict[int, Any],
    image: Any,
    *,
    direction=DEFAULT_DIRECTION,
    format: str = "verse20",
    decimals: int = 3,
) -> list[dict]:
    """The JSON list (header first) that :func:`write_centroids` writes."""
    codes = check_direction(direction)
    labels, points = _as_arrays(centroids_world)
    coords = world_to_verse(points, image, codes, format) if len(labels) else np.zeros((0, 3))
    out: list[dict] = [{"direction": list(codes)}]
    for lab, xyz in zip(labels, coords):
        out.append({"label": int(lab), **{k: round(float(v), decimals)
                                          for k, v in zip(("X", "Y", "Z"), xyz)}})
    return out


def write_centroids(
    path: str | Path,
    centroids_world: dict[int, Any],
    image: Any,
    *,
    direction=DEFAULT_DIRECTION,
    format: str = "verse20",
    decimals: int = 3,
) -> None:
    """Write world centroids as a VerSe centroid JSON for ``image``.

    Args:
        path: output .json file (parent folders are created).
        centroids_world: {VerSe id: (3,) world LPS mm}.
        image: a ``drrkit.Volume``, SimpleITK image, :class:`ImageGrid` or image path
            whose voxel grid the coordinates refer to.
        direction: orientation code written in the header (VerSe's files use "PIR").
        format: "verse20" (voxels) or "verse19" (mm on a 1 mm grid).
        decimals: rounding of the written coordinates (3 = 1/1000 voxel or mm).
    """
    data = centroids_to_json(centroids_world, image, direction=direction, format=format,
                             decimals=decimals)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one entry per line, as VerSe's files
    path.write_text("[\n" + ",\n".join(json.dumps(item) for item in data) + "\n]\n")


def _as_arrays(centroids: dict[int, Any]) -> tuple[np.ndarray, np.ndarray]:
    """{label: (3,)} -> labels (N,) int64, points (N, 3) float64, checked."""
    if not isinstance(centroids, dict):
        raise VertebraError("centroids must be a mapping {VerSe label: (x, y, z) mm}")
    labels = np.array([int(k) for k in centroids], dtype=np.int64)
    try:
        points = np.array([np.asarray(v, dtype=np.float64).reshape(3) for v in centroids.values()],
                          dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError):
        raise VertebraError("every centroid must be 3 numbers (x, y, z) in mm") from None
    if not np.all(np.isfinite(points)):
        raise VertebraError("centroid coordinates must be finite")
    return labels, points


def world_centroid_pair(pred, gt, *, image=None, formats=("verse20", "verse20"),
                        direction: str | None = None) -> tuple[dict, dict]:
    """Two centroid files (predictions, ground truth) as {VerSe id: (3,) mm} maps that can
    be compared.

    With ``image`` (the CT both refer to), each file's coordinates become world mm through
    its own format and orientation; without it, both must be verse19 (mm) files along the
    same orientation, whose distances are then exact as they stand.

    Args:
        pred, gt: centroid JSON files.
        image: the CT (for its voxel grid), or None.
        formats: (pred's, gt's) format, each one of :data:`FORMATS`.
        direction: orientation code for files without a "direction" header.
    """
    for option, value in zip(("--pred-format", "--format"), formats):
        check_format(value, option)
    files = [load_centroid_file(p) for p in (pred, gt)]
    fallback = check_direction(direction) if direction else None
    if fallback is not None:
        files = [CentroidFile(f.direction or fallback, f.labels, f.coords) for f in files]
    if image is not None:
        grid = image_grid(image)
        if any(f.direction is None for f in files):
            raise VertebraError("a centroid file has no 'direction' header; "
                                "pass --direction (e.g. PIR)")
        maps = [{int(lab): xyz for lab, xyz in zip(
            f.labels, verse_to_world(f.coords, grid, f.direction, fmt))}
            for f, fmt in zip(files, formats)]
        return maps[0], maps[1]
    if tuple(formats) != ("verse19", "verse19"):
        raise VertebraError(
            f"voxel coordinates (verse20) need --image to be turned into mm "
            f"(--pred-format {formats[0]}, --format {formats[1]}); pass --image CT, "
            "or --pred-format verse19 --format verse19 if both files hold mm")
    if files[0].direction != files[1].direction:
        raise VertebraError(f"the files use different orientations "
                            f"({files[0].direction} and {files[1].direction}); "
                            "pass --image CT to convert both")
    maps = [{int(lab): np.asarray(xyz) for lab, xyz in zip(f.labels, f.coords)}
            for f in files]
    return maps[0], maps[1]
