"""The ``vertebra`` command line.

Heavy imports (SimpleITK, torch, ...) happen inside each command so ``--help`` is instant.
Bad input prints one line to stderr and exits with status 2, never a traceback.

Each command lives in its own section below; add new commands as new sections.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="vertebra",
    help="Vertebra localisation and identification from multi-view DRRs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Vertebra localisation and identification from multi-view DRRs."""


def fail(message: str) -> None:
    """Print ``error: message`` on one line to stderr and exit with status 2."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    typer.echo(f"error: {first}", err=True)
    raise typer.Exit(2)


def _json_safe(value):
    """NaN -> None, numpy scalars -> Python, dict keys -> str, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return value


# ====================================================================== evaluate
@app.command()
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted centroids (VerSe JSON).")],
    gt: Annotated[Path, typer.Argument(help="Ground-truth centroids (VerSe JSON).")],
    image: Annotated[Path | None, typer.Option(
        "--image", help="The CT both files refer to; needed to turn voxel coordinates "
        "into mm.")] = None,
    format: Annotated[str, typer.Option(
        "--format", help="Centroid format of both files: verse20 (voxels) or verse19 "
        "(mm on a 1 mm grid).")] = "verse20",
    direction: Annotated[str | None, typer.Option(
        "--direction", help="Orientation code (e.g. PIR) for files without a 'direction' "
        "header.")] = None,
    radius: Annotated[float, typer.Option(
        "--radius", help="Identification radius in mm.")] = 20.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")
                       ] = False,
) -> None:
    """Score predicted vertebra centroids against ground truth (VerSe id rate and error).

    Example:

        $ vertebra evaluate pred_ctd.json sub-verse004_seg-subreg_ctd.json --image sub-verse004_ct.nii.gz
    """
    import warnings

    import numpy as np

    from drrkit.errors import DrrkitError
    from vertebra.data import verse
    from vertebra.metrics import evaluate as score

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if format not in verse.FORMATS:
                raise DrrkitError(f"unknown format {format!r}; choose one of "
                                  f"{', '.join(verse.FORMATS)}")
            files = [verse.load_centroid_file(p) for p in (pred, gt)]
            fallback = verse.check_direction(direction) if direction else None
            if fallback is not None:
                files = [verse.CentroidFile(f.direction or fallback, f.labels, f.coords)
                         for f in files]
            if image is not None:
                grid = verse.image_grid(image)
                if any(f.direction is None for f in files):
                    raise DrrkitError("a centroid file has no 'direction' header; "
                                      "pass --direction (e.g. PIR)")
                maps = [{int(lab): xyz for lab, xyz in zip(
                    f.labels, verse.verse_to_world(f.coords, grid, f.direction, format))}
                    for f in files]
            else:
                if format != "verse19":
                    raise DrrkitError("voxel coordinates (format verse20) need --image to be "
                                      "turned into mm; pass --image CT or --format verse19")
                if files[0].direction != files[1].direction:
                    raise DrrkitError(f"the files use different orientations "
                                      f"({files[0].direction} and {files[1].direction}); "
                                      "pass --image CT to convert both")
                # verse19 values are mm along the same reoriented axes: distances are exact
                maps = [{int(lab): np.asarray(xyz) for lab, xyz in zip(f.labels, f.coords)}
                        for f in files]
            result = score(maps[0], maps[1], radius_mm=radius)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
    except (DrrkitError, OSError) as error:
        fail(str(error))
        return

    if as_json:
        typer.echo(json.dumps(_json_safe(result), indent=1))
        return
    _print_evaluation(result)


def _print_evaluation(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from vertebra import labels as vlabels

    def pct(x):
        return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}"

    def mm(x):
        return "-" if x is None or math.isnan(x) else f"{x:.2f}"

    table = Table(title=f"Identification (VerSe, {result['radius_mm']:g} mm)")
    for col in ("region", "vertebrae", "identified", "id rate %", "l_error mm", "no prediction"):
        table.add_column(col, justify="left" if col == "region" else "right")
    for region, r in result["regions"].items():
        if r["n_gt"]:
            table.add_row(region, str(r["n_gt"]), str(r["identified"]), pct(r["id_rate"]),
                          mm(r["l_error"]), str(r["n_without_prediction"]))
    table.add_row("all", str(result["n_gt"]), str(result["identified"]), pct(result["id_rate"]),
                  mm(result["l_error"]), str(result["n_without_prediction"]), style="bold")
    console = Console(soft_wrap=True)
    console.print(table)

    def names(ids):
        return ", ".join(vlabels.name_of(i) for i in ids) or "none"

    console.print(f"misses: {names(result['misses'])}")
    console.print(f"false positives (labels not in the ground truth): "
                  f"{names(result['false_positives'])}")
    console.print(f"paper-code variant (per prediction, {result['n_pred']} predictions): "
                  f"id rate {pct(result['id_rate_per_prediction'])} %, "
                  f"error {mm(result['l_error_per_prediction'])} mm")
    if result["ignored_labels"]:
        console.print(f"ignored non-vertebra labels: {result['ignored_labels']}")


# ====================================================================== other commands
# phantom, pretrain, train, label, demo: each added as its own section below this line.
