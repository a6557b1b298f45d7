"""Files: projection geometry as JSON, and atomic writes.

Geometry JSON (``geometry.json`` next to ``drr.npy``), world = LPS millimetres::

    {
      "format": "drrkit-geometry", "version": 1, "world": "LPS mm",
      "height": H, "width": W,
      "pixel_spacing": [column_mm, row_mm],      # null if views differ
      "views": [
        {"index": k, "angle_deg": a,             # null when not on an orbit
         "source": [x, y, z],                    # world mm
         "detector_origin": [x, y, z],           # centre of pixel (col 0, row 0)
         "u": [x, y, z], "v": [x, y, z],         # world mm per +1 column / +1 row
         "detector_center": [...], "normal": [...],
         "source_to_detector_mm": d,
         "pixel_spacing": [column_mm, row_mm],
         "projection_matrix": [[4], [4], [4]]},  # world (x,y,z,1) -> (col, row, 1) * w
        ...]
    }

Pixel (col, row) of view k has its centre at ``detector_origin + col u + row v``;
``drr.npy[k, row, col]`` is the line integral along the ray from ``source`` through it.
Floats are written with Python's shortest round-trip repr, so :func:`geometry_from_json`
rebuilds the :class:`~drrkit.geometry.Geometry` bit for bit.

Atomic writes: every file is first written under a temporary name in the target's own
folder and then moved into place with :func:`os.replace`, so a reader (or a crash)
never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from drrkit.errors import DrrkitError
from drrkit.geometry import Geometry

FORMAT = "drrkit-geometry"
VERSION = 1

#: How a projection matrix is read, written into every geometry.json.
MATRIX_CONVENTION = (
    "h = P @ (x, y, z, 1) with world LPS mm; pixel (col, row) = (h0 / h2, h1 / h2); "
    "h2 > 0 in front of the source; drr[k, row, col]"
)


# ---------------------------------------------------------------------- geometry <-> JSON
def _vector(values) -> list[float]:
    return [float(x) for x in np.asarray(values, dtype=np.float64).reshape(-1)]


def _same_spacing(spacing: np.ndarray) -> list[float] | None:
    """(K, 2) per-view pixel spacing -> one [col, row] if all views agree, else None."""
    if np.allclose(spacing, spacing[:1], rtol=1e-9, atol=0.0):
        return _vector(spacing[0])
    return None


def geometry_to_json(geometry: Geometry) -> dict:
    """A JSON-ready dict describing every view (see the module docstring for the layout).

    Args:
        geometry: K views of H x W pixels.

    Returns:
        dict of plain Python lists, floats, ints and None (no NaN), ready for ``json.dump``.
    """
    if not isinstance(geometry, Geometry):
        raise DrrkitError("geometry_to_json needs a drrkit.Geometry")
    matrices = geometry.projection_matrices
    centers = geometry.detector_centers
    normals = geometry.normals
    distances = geometry.source_to_detector
    spacing = geometry.pixel_spacing
    views = []
    for k in range(len(geometry)):
        angle = float(geometry.angles_deg[k])
        views.append({
            "index": k,
            "angle_deg": angle if math.isfinite(angle) else None,
            "source": _vector(geometry.sources[k]),
            "detector_origin": _vector(geometry.detector_origins[k]),
            "u": _vector(geometry.u[k]),
            "v": _vector(geometry.v[k]),
            "detector_center": _vector(centers[k]),
            "normal": _vector(normals[k]),
            "source_to_detector_mm": float(distances[k]),
            "pixel_spacing": _vector(spacing[k]),
            "projection_matrix": [_vector(row) for row in matrices[k]],
        })
    return {
        "format": FORMAT,
        "version": VERSION,
        "world": "LPS mm",
        "projection_matrix_convention": MATRIX_CONVENTION,
        "height": geometry.height,
        "width": geometry.width,
        "pixel_spacing": _same_spacing(spacing),
        "views": views,
    }


def _array(view: dict, key: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    if key not in view:
        raise DrrkitError(f"{where} has no {key!r}")
    try:
        value = np.array(view[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise DrrkitError(f"{where}: {key!r} must be numbers") from None
    if value.shape != shape:
        raise DrrkitError(f"{where}: {key!r} must have shape {shape}, got {value.shape}")
    if not np.all(np.isfinite(value)):
        raise DrrkitError(f"{where}: {key!r} must be finite")
    return value


def geometry_from_json(data: dict) -> Geometry:
    """Rebuild a :class:`Geometry` from :func:`geometry_to_json`'s dict (exactly).

    Each view needs ``source``, ``detector_origin``, ``u`` and ``v``; a view that has
    only a ``projection_matrix`` (e.g. written by another tool) is rebuilt with
    :meth:`Geometry.from_matrices`, its detector placed ``source_to_detector_mm``
    (default 1000) from the source, which leaves the rays unchanged.

    Args:
        data: the parsed JSON object.

    Returns:
        Geometry with K views.
    """
    if not isinstance(data, dict):
        raise DrrkitError("geometry JSON must be an object")
    if data.get("format", FORMAT) != FORMAT:
        raise DrrkitError(f"not a drrkit geometry (format {data.get('format')!r})")
    try:
        height, width = data["height"], data["width"]
        views = data["views"]
    except KeyError as error:
        raise DrrkitError(f"geometry JSON has no {error.args[0]!r}") from None
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DrrkitError(f"geometry JSON: {name} must be a positive integer, got {value!r}")
    if not isinstance(views, list) or not views:
        raise DrrkitError("geometry JSON needs a non-empty list of views")
    sources, origins, us, vs, angles = [], [], [], [], []
    for k, view in enumerate(views):
        where = f"geometry JSON view {k}"
        if not isinstance(view, dict):
            raise DrrkitError(f"{where} must be an object")
        if all(key in view for key in ("source", "detector_origin", "u", "v")):
            sources.append(_array(view, "source", (3,), where))
            origins.append(_array(view, "detector_origin", (3,), where))
            us.append(_array(view, "u", (3,), where))
            vs.append(_array(view, "v", (3,), where))
        else:
            matrix = _array(view, "projection_matrix", (3, 4), where)
            sid = float(view.get("source_to_detector_mm") or 1000.0)
            one = Geometry.from_matrices(matrix, height, width, sid)
            sources.append(one.sources[0])
            origins.append(one.detector_origins[0])
            us.append(one.u[0])
            vs.append(one.v[0])
        angle = view.get("angle_deg")
        angles.append(np.nan if angle is None else float(angle))
    return Geometry(np.array(sources), np.array(origins), np.array(us), np.array(vs),
                    height, width, np.array(angles))


def save_geometry(path: str | Path, geometry: Geometry, **extra) -> None:
    """Write ``geometry`` as JSON (atomically), with ``extra`` top-level keys added.

    Args:
        path: the .json file.
        geometry: K views.
        extra: JSON-ready values stored beside the geometry (e.g. how it was rendered).
    """
    data = geometry_to_json(geometry)
    clash = set(extra) & set(data)
    if clash:
        raise DrrkitError(f"extra keys {sorted(clash)} would overwrite geometry keys")
    data.update(extra)
    write_json(path, data)


def load_geometry(path: str | Path) -> Geometry:
    """Read a geometry JSON file written by :func:`save_geometry` (or by ``drrkit render``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DrrkitError(f"no such file: {path}") from None
    except OSError as error:
        raise DrrkitError(f"cannot read {path}: {error.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DrrkitError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}") from None
    return geometry_from_json(data)


# ---------------------------------------------------------------------- atomic writes
def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary sibling of ``path``, then move it onto ``path``.

    If ``write`` raises, the temporary file is removed and ``path`` is left as it was.

    Args:
        path: final file name; its folder must exist.
        write: writes the whole file at the path it is given.
    """
    path = Path(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def json_safe(value):
    """``value`` with plain JSON types only, recursively, for ``json.dumps``.

    Dict keys become str, tuples lists, NumPy (or torch) arrays and scalars lists and
    Python numbers (anything with ``tolist``), NaN and infinities None.
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(data, indent: int = 1) -> str:
    """Standard JSON (NaN refused), indented, with lists of numbers kept on one line."""

    def encode(value, depth: int) -> str:
        pad = " " * (indent * (depth + 1))
        if isinstance(value, dict):
            if not value:
                return "{}"
            items = [f"{pad}{json.dumps(str(key))}: {encode(item, depth + 1)}"
                     for key, item in value.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * (indent * depth) + "}"
        if isinstance(value, (list, tuple)):
            if all(not isinstance(item, (dict, list, tuple)) for item in value):
                return json.dumps(list(value), allow_nan=False)
            items = [pad + encode(item, depth + 1) for item in value]
            return "[\n" + ",\n".join(items) + "\n" + " " * (indent * depth) + "]"
        return json.dumps(value, allow_nan=False)

    return encode(data, 0)


def write_json(path: str | Path, data) -> None:
    """Write ``data`` as indented standard JSON (see :func:`dumps`), atomically."""
    text = dumps(data) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Write one array as ``.npy``, atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray(array))

    atomic_write(path, write)


@contextlib.contextmanager
def staged_directory(
    out: str | Path,
    stale: Callable[[Path], bool] | None = None,
    last: tuple[str, ...] = (),
) -> Iterator[Path]:
    """Write a set of files into ``out`` all or nothing.

    Yields a temporary folder inside ``out``; write every output there. When the block
    ends without an error, each file is moved into ``out`` with :func:`os.replace`
    (replacing older files of the same name) and files of ``out`` for which
    ``stale(path)`` is true and that were not just written are deleted (e.g. images of
    views a previous, larger run made). If the block raises, the temporary folder is
    deleted, ``out`` keeps its old files, and ``out`` itself is removed again if this
    call created it.

    Args:
        out: the output folder (created with its parents if missing).
        stale: optional test for old outputs to delete after a successful write.
        last: file names moved into place after all others, in this order (e.g. the
            main data file, so that its presence means the set is complete).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DrrkitError(f"output path exists and is not a folder: {out}")
    created = [p for p in [out, *out.parents] if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".drrkit-staging-", dir=out))
    try:
        yield staging
        written = sorted(p.name for p in staging.iterdir())
        order = [n for n in written if n not in last] + [n for n in last if n in written]
        for name in order:
            os.replace(staging / name, out / name)
        if stale is not None:
            for old in out.iterdir():
                if old.is_file() and old.name not in written and stale(old):
                    old.unlink()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first; only folders this call made, if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
