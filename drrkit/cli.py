"""The ``drrkit`` command line: render DRRs of a CT (or the built-in phantom), inspect a CT.

Examples::

    $ drrkit render --phantom --out out/
    $ drrkit render ct.nii.gz --out out/ --views 10 --size 512 --pixel-spacing 4
    $ drrkit info ct.nii.gz

Bad input (missing or unreadable files, impossible options) prints one line
``error: <message>`` on stderr and exits with status 2; outputs are written all or
nothing (see :func:`drrkit.io.staged_directory`). Heavy modules are imported inside the
commands so that ``drrkit --help`` is instant.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from drrkit.cli_errors import cli_errors, fail

app = typer.Typer(
    name="drrkit",
    help="Exact, fast digitally reconstructed radiographs (DRRs) and their geometry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

#: Renders of at least this many pixels (K * H * W) show a progress bar, view chunk by chunk.
PROGRESS_PIXELS = 1 << 22
#: Pixels rendered per chunk when showing progress (at least one view per chunk).
CHUNK_PIXELS = 1 << 20
UNITS = ("hu", "mu")
NAN_POLICIES = ("zero", "raise")
VIEW_PNG = re.compile(r"view_\d+\.png")
CONTACT_SHEET = "contact_sheet.png"
#: What to try when a render does not fit in memory.
MEMORY_HINT = "try fewer views or a smaller --size"


def _version(value: bool) -> None:
    if value:
        from drrkit import __version__

        typer.echo(f"drrkit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True,
                     help="Print the version and exit."),
    ] = False,
) -> None:
    """Exact, fast digitally reconstructed radiographs (DRRs) and their geometry.

    World coordinates are LPS millimetres (x patient left, y posterior, z superior).
    """


# ---------------------------------------------------------------------- helpers
def _choose_input(ct: Path | None, phantom: bool) -> None:
    if ct is not None and phantom:
        fail("give either a CT file or folder, or --phantom, not both")
    if ct is None and not phantom:
        fail("give a CT file or folder to read (e.g. ct.nii.gz), or --phantom")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    from drrkit.errors import DrrkitError

    lowered = value.strip().lower()
    if lowered not in choices:
        raise DrrkitError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return lowered


def _check_memory(shape: tuple[int, int, int]) -> None:
    """Refuse outputs larger than the machine's physical memory (before allocating)."""
    import os

    from drrkit.errors import DrrkitError

    need = 4 * math.prod(shape)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > total:
        raise DrrkitError(
            f"{shape[0]} views of {shape[1]}x{shape[2]} float32 need {need / 2**30:.1f} GiB, "
            f"more than this machine's {total / 2**30:.1f} GiB of memory"
        )


@contextlib.contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """Silence ITK's own multi-line warnings (our errors say what went wrong in one line)."""
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _load(ct: Path | None, units: str, nan: str):
    """The volume to render (attenuation in 1/mm) and a short description of its source."""
    from drrkit.volume import load_volume

    if ct is None:
        from drrkit.phantoms import default_phantom

        return default_phantom(), "phantom:default_phantom"
    with _itk_warnings_off():
        return load_volume(ct, units=units, nan=nan), str(ct)


def render_views(volume, geometry, backend: str = "auto", step: float | None = None,
                 progress: bool = False, method: str = "auto"):
    """Render all views, chunk by chunk with a progress bar on stderr if ``progress``.

    Args:
        volume: attenuation in 1/mm.
        geometry: K views of H x W.
        backend, step, method: as :func:`drrkit.render`.
        progress: show a rich progress bar (views done / K).

    Returns:
        (K, H, W) float32 line integrals, identical to one :func:`drrkit.render` call.
    """
    import numpy as np

    from drrkit.render import render

    k, h, w = geometry.shape
    if not progress:
        return render(volume, geometry, backend=backend, step=step, method=method)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    out = np.empty(geometry.shape, dtype=np.float32)
    chunk = max(1, CHUNK_PIXELS // (h * w))
    columns = (TextColumn("rendering"), BarColumn(), MofNCompleteColumn(),
               TextColumn("views"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("render", total=k)
        for start in range(0, k, chunk):
            stop = min(k, start + chunk)
            out[start:stop] = render(volume, geometry[start:stop], backend=backend, step=step,
                                     method=method)
            bar.update(task, completed=stop)
    return out


def _volume_json(volume, source: str, units: str) -> dict:
    return {
        "source": source,
        "input_units": units,
        "size_xyz": [int(n) for n in volume.shape_xyz],
        "spacing_mm": volume.spacing.tolist(),
        "origin": volume.origin.tolist(),
        "direction": volume.direction.tolist(),
        "center": volume.center.tolist(),
    }


# ---------------------------------------------------------------------- render
@app.command()
def render(
    ct: Annotated[
        Path | None,
        typer.Argument(help="CT to render: NIfTI, NRRD or MHA/MHD file, or a DICOM folder.",
                       show_default=False),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (created if missing).")
    ] = ...,  # type: ignore[assignment]
    phantom: Annotated[
        bool, typer.Option("--phantom", help="Render the built-in torso phantom (no CT needed).")
    ] = False,
    views: Annotated[int, typer.Option(help="Number of views K around the patient.")] = 10,
    sad: Annotated[float, typer.Option(help="Source to isocentre distance, mm.")] = 500.0,
    sid: Annotated[float, typer.Option(help="Source to detector distance, mm (> sad).")] = 1000.0,
    size: Annotated[int, typer.Option(help="Detector size in pixels (square).")] = 1024,
    pixel_spacing: Annotated[float, typer.Option(help="Detector pixel size, mm.")] = 2.0,
    step: Annotated[
        float | None,
        typer.Option(help="Ray sampling step, mm (default: half the smallest voxel spacing).",
                     show_default=False),
    ] = None,
    input_units: Annotated[
        str,
        typer.Option(help="Voxel values of the CT: hu (Hounsfield) or mu (1/mm); "
                          "the phantom is always mu."),
    ] = "hu",
    backend: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    method: Annotated[
        str,
        typer.Option(help="Sampling rule: auto (Joseph's method on the CPU, its fastest "
                          "rule at equal accuracy; trilinear on CUDA or with --step), "
                          "joseph (CPU only) or trilinear."),
    ] = "auto",
    start_angle: Annotated[
        float, typer.Option(help="Angle of view 0, degrees (0 = source anterior).")
    ] = 0.0,
    arc: Annotated[float, typer.Option(help="Angular range covered by the views, degrees.")
                   ] = 360.0,
    nan: Annotated[
        str, typer.Option(help="Non-finite voxels: zero (0 attenuation, with a warning) or raise.")
    ] = "zero",
    bone_gain: Annotated[
        float, typer.Option(help="Steepen attenuation above --bone-threshold this many "
                                 "times, so bone stands out (1: a plain DRR).")
    ] = 1.0,
    bone_threshold: Annotated[
        float, typer.Option(help="CT number (HU) above which --bone-gain applies.")
    ] = 200.0,
    png: Annotated[
        bool, typer.Option("--png/--no-png", help="Write view PNGs and a contact sheet.")
    ] = True,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")
    ] = False,
) -> None:
    """Render K DRRs on a circular orbit about the patient's long axis.

    Writes to OUT:
    drr.npy: float32 (K, H, W) line integrals of attenuation;
    geometry.json: each view's source, detector, 3x4 projection matrix (world = LPS mm);
    view_000.png ...: 8-bit images, bone bright, superior up;
    contact_sheet.png: all views in one labelled grid.

    Examples: drrkit render ct.nii.gz --out out/ --views 10;
    drrkit render --phantom --out out/;
    drrkit render ct.nii.gz --out out/ --bone-gain 8   (bone-enhanced, as the networks see it)
    """
    with cli_errors(MEMORY_HINT):
        _render(ct, out, phantom, views, sad, sid, size, pixel_spacing, step, input_units,
                (backend, method), start_angle, arc, nan, (bone_gain, bone_threshold), png,
                quiet)


def _render(ct, out, phantom, views, sad, sid, size, pixel_spacing, step, input_units,
            backend, start_angle, arc, nan, bone, png, quiet) -> None:
    import numpy as np

    from drrkit import __version__
    from drrkit.errors import DrrkitError
    from drrkit.geometry import circular_orbit
    from drrkit.io import save_geometry, save_npy, staged_directory
    from drrkit.render import default_step, resolve_backend, resolve_method
    from drrkit.volume import check_bone_enhancement, enhance_bone

    backend, method = backend
    # --- check everything cheap before reading the CT
    _choose_input(ct, phantom)
    units = _check_choice("units", input_units, UNITS)
    nan = _check_choice("nan policy", nan, NAN_POLICIES)
    if not (math.isfinite(start_angle) and math.isfinite(arc)):
        raise DrrkitError("--start-angle and --arc must be finite")
    circular_orbit(None, views, sad, sid, size, pixel_spacing)  # validates the orbit
    if step is not None and not (math.isfinite(step) and step > 0):
        raise DrrkitError(f"the sampling step must be a positive number of mm, got {step}")
    bone_gain, bone_threshold = bone
    check_bone_enhancement(bone_threshold, bone_gain)
    if out.exists() and not out.is_dir():
        raise DrrkitError(f"output path exists and is not a folder: {out}")
    _check_memory((views, size, size))
    chosen = resolve_backend(backend.strip().lower())
    method = resolve_method(method.strip().lower(), chosen, step)

    volume, source = _load(ct, units, nan)
    if bone_gain != 1.0:
        volume = enhance_bone(volume, bone_threshold, bone_gain)
    geometry = circular_orbit(volume, views, sad, sid, size, pixel_spacing,
                              start_angle=start_angle, arc=arc)
    step_mm = None
    if method == "trilinear":
        step_mm = default_step(volume) if step is None else float(step)
    k, h, w = geometry.shape
    started = time.perf_counter()
    drr = render_views(volume, geometry, chosen, step_mm,
                       progress=not quiet and k * h * w >= PROGRESS_PIXELS, method=method)
    seconds = time.perf_counter() - started
    if not np.all(np.isfinite(drr)):  # render refuses NaN voxels; this guards the output
        raise DrrkitError("the render produced non-finite values; nothing was written")

    meta = {
        "image": {
            "file": "drr.npy", "dtype": "float32", "shape": [k, h, w],
            "indexing": "drr[view, row, col]",
            "quantity": "line integral of linear attenuation mu (1/mm) along each ray "
                        "(dimensionless); transmitted fraction = exp(-drr)",
        },
        "orbit": {
            "axis": "world z (patient superior)", "sad_mm": float(sad), "sid_mm": float(sid),
            "isocenter": volume.center.tolist(), "start_angle_deg": float(start_angle),
            "arc_deg": float(arc),
        },
        "render": {"backend": chosen, "method": method, "step_mm": step_mm,
                   "seconds": round(seconds, 4),
                   "bone_gain": float(bone_gain), "bone_threshold_hu": float(bone_threshold)},
        "volume": _volume_json(volume, source, units if ct is not None else "mu"),
        "drrkit_version": __version__,
    }
    def stale(path: Path) -> bool:  # images of an earlier run that this run did not make
        return bool(VIEW_PNG.fullmatch(path.name)) or path.name == CONTACT_SHEET

    with staged_directory(out, stale=stale, last=("geometry.json", "drr.npy")) as staging:
        if png:
            meta["display"] = _write_pngs(staging, drr, geometry.angles_deg)
        save_npy(staging / "drr.npy", drr)
        save_geometry(staging / "geometry.json", geometry, **meta)
    if not quiet:
        pictures = f", {k} view PNGs and {CONTACT_SHEET}" if png else ""
        typer.echo(f"rendered {k} views of {h}x{w} pixels in {seconds:.2f} s ({chosen}, "
                   f"{method}); "
                   f"wrote drr.npy, geometry.json{pictures} to {out}")


def _write_pngs(folder: Path, drr, angles_deg) -> dict:
    """view_XXX.png for every view and the contact sheet; returns the display settings."""
    from drrkit.images import contact_sheet, display_window, save_png, to_uint8, view_labels

    window = display_window(drr)
    grey = to_uint8(drr, window)
    digits = max(3, len(str(len(drr) - 1)))
    for index, image in enumerate(grey):
        save_png(folder / f"view_{index:0{digits}d}.png", image)
    contact_sheet(grey, view_labels(angles_deg)).save(folder / CONTACT_SHEET, format="PNG")
    return {"window": [float(window[0]), float(window[1])],
            "mapping": "grey = 255 * (drr - window[0]) / (window[1] - window[0]), clipped; "
                       "row 0 at the top"}


# ---------------------------------------------------------------------- info
_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))


def orientation_code(direction) -> tuple[str, float]:
    """Where each index axis points, as LPS letters, and how oblique the volume is.

    Args:
        direction: (3, 3) direction cosines, columns = world (LPS) unit vectors of i, j, k.

    Returns:
        ("LPS"-style code: letter k names the world direction closest to index axis k,
        e.g. "RAS" for a NIfTI stored right-anterior-superior), and the largest angle in
        degrees between an index axis and that world axis (0 when axis-aligned).
    """
    import numpy as np

    direction = np.asarray(direction, dtype=np.float64)
    code, worst = "", 0.0
    for column in direction.T:
        axis = int(np.argmax(np.abs(column)))
        code += _LETTERS[axis][int(column[axis] > 0)]
        cosine = min(1.0, abs(float(column[axis])) / float(np.linalg.norm(column)))
        worst = max(worst, math.degrees(math.acos(cosine)))
    return code, worst


def _fmt(values, digits: int = 6) -> str:
    return "(" + ", ".join(f"{float(x):.{digits}g}" for x in values) + ")"


@app.command()
def info(
    ct: Annotated[
        Path | None,
        typer.Argument(help="CT to describe: NIfTI, NRRD or MHA/MHD file, or a DICOM folder.",
                       show_default=False),
    ] = None,
    phantom: Annotated[
        bool, typer.Option("--phantom", help="Describe the built-in torso phantom instead.")
    ] = False,
) -> None:
    """Print a CT's size, spacing, position, orientation and value (HU) range.

    Example: drrkit info ct.nii.gz
    """
    with cli_errors(MEMORY_HINT):
        _info(ct, phantom)


def _info(ct: Path | None, phantom: bool) -> None:
    import numpy as np

    from drrkit.errors import DrrkitError
    from drrkit.volume import Volume, _non_finite, _read_sitk

    _choose_input(ct, phantom)
    if ct is None:
        from drrkit.phantoms import default_phantom

        volume = default_phantom()
        values, kind, name, pixel = volume.data, "mu range (1/mm)", "built-in phantom", "float32"
    else:
        with _itk_warnings_off():
            image = _read_sitk(ct)
        if image.GetDimension() != 3:
            raise DrrkitError(f"{ct} is a {image.GetDimension()}-D image; a CT volume must be 3-D")
        try:
            volume = Volume.from_sitk(image)
        except DrrkitError as error:
            raise DrrkitError(f"{ct}: {error}") from None
        values, kind, name = volume.data, "HU range", str(ct)
        pixel = image.GetPixelIDTypeAsString()
    code, oblique = orientation_code(volume.direction)
    extent = np.asarray(volume.shape_xyz) * volume.spacing
    finite = np.isfinite(values) if ct is None else ~_non_finite(ct, values)
    lines = [
        ("file", name),
        ("size", " x ".join(str(n) for n in volume.shape_xyz) + " voxels (i, j, k)"),
        ("spacing", " x ".join(f"{s:.6g}" for s in volume.spacing) + " mm"),
        ("extent", " x ".join(f"{e:.6g}" for e in extent) + " mm"),
        ("origin", _fmt(volume.origin) + " mm, LPS (centre of voxel 0, 0, 0)"),
        ("centre", _fmt(volume.center) + " mm, LPS"),
        ("orientation", f"{code} (index axes i, j, k point to {', '.join(code)}); "
                        + (f"oblique by {oblique:.1f} deg" if oblique > 1e-3
                           else "axis-aligned")),
        ("direction", "; ".join(_fmt(row, 6) for row in volume.direction)
         + " (rows x, y, z; columns i, j, k)"),
        ("pixel type", pixel),
    ]
    if finite.any():
        good = values[finite]
        lines.append((kind, (f"{float(good.min()):.6g} .. {float(good.max()):.6g} "
                            f"(mean {float(good.mean(dtype=np.float64)):.6g})")))
    else:
        lines.append((kind, "no finite voxels"))
    if not finite.all():
        lines.append(("non-finite", f"{int((~finite).sum())} voxels (NaN or inf)"))
    width = max(len(label) for label, _ in lines) + 1
    for label, text in lines:
        typer.echo(f"{label + ':':<{width}} {text}")


# ---------------------------------------------------------------------- bench
BENCH_SAMPLINGS = {"all": None,
                   "global": (("global", "float32"), ("global", "float16")),
                   "texture": (("texture", "float32"), ("texture", "float16"))}


@app.command()
def bench(
    backend: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    scenes: Annotated[
        str | None,
        typer.Option(help="Comma-separated scene names (default: the backend's standard "
                          "scenes): ct256-512, ct512x400-1024, ct512x400-1024-coarse, "
                          "ct256-200.",
                     show_default=False),
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the rows, versions and hardware as JSON here.",
                     show_default=False),
    ] = None,
    sampling: Annotated[
        str, typer.Option(help="CUDA configurations: all, global or texture.")
    ] = "all",
    repeats: Annotated[
        int | None,
        typer.Option(help="Timed renders per configuration (default 20 on the GPU, 5 on "
                          "the CPU).", show_default=False),
    ] = None,
    warmup: Annotated[int, typer.Option(help="Untimed renders before timing.")] = 2,
) -> None:
    """Time the standard scenes: ms per view, views/s and G samples/s.

    On the GPU, also the fraction of a measured texture-filtering floor.

    Examples: drrkit bench --backend cpu; drrkit bench --backend cuda --json bench.json
    """
    with cli_errors(MEMORY_HINT):
        from drrkit import bench as benchmarks
        from drrkit.errors import DrrkitError
        from drrkit.render import resolve_backend

        configs = BENCH_SAMPLINGS[_check_choice("sampling", sampling, tuple(BENCH_SAMPLINGS))]
        if (repeats is not None and repeats < 1) or warmup < 0:
            raise DrrkitError("--repeats must be at least 1 and --warmup at least 0")
        chosen = resolve_backend(backend.strip().lower())
        names = [s.strip() for s in scenes.split(",") if s.strip()] if scenes else None
        rows = benchmarks.run_bench(chosen, names, configs, repeats, warmup)
        typer.echo(benchmarks.format_table(rows))
        if json_path is not None:
            typer.echo(f"wrote {benchmarks.write_json(rows, json_path, chosen)}")


if __name__ == "__main__":  # pragma: no cover
    app()
