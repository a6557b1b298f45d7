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

from drrkit.cli_errors import cli_errors, fail
from vertebra.weights import MAX_MB  # light: the weights module imports no torch

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


# ====================================================================== evaluate
@app.command()
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted centroids (VerSe JSON), or a folder "
                                         "of them (as written by vertebra label).")],
    gt: Annotated[Path, typer.Argument(help="Ground-truth centroids (VerSe JSON), or a "
                                       "VerSe-layout folder (with a folder of predictions).")],
    image: Annotated[Path | None, typer.Option(
        "--image", help="The CT both files refer to; needed to turn voxel coordinates "
        "into mm.")] = None,
    format: Annotated[str, typer.Option(
        "--format", help="Centroid format of the ground truth: verse20 (voxels) or verse19 "
        "(mm on a 1 mm grid).")] = "verse20",
    pred_format: Annotated[str, typer.Option(
        "--pred-format", help="Centroid format of the predictions: verse20 (voxels, what "
        "vertebra label writes) or verse19.")] = "verse20",
    direction: Annotated[str | None, typer.Option(
        "--direction", help="Orientation code (e.g. PIR) for files without a 'direction' "
        "header.")] = None,
    radius: Annotated[float, typer.Option(
        "--radius", help="Identification radius in mm.")] = 20.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")
                       ] = False,
    against: Annotated[Path | None, typer.Option(
        "--against", help="Folders only: a second folder of predictions for the same scans; "
        "prints PRED minus it, with a paired bootstrap interval over the scans.")] = None,
) -> None:
    """Score predicted vertebra centroids against ground truth (VerSe id rate and error).

    Folders are pooled over all cases, with 95 % bootstrap intervals that resample scans.
    --format is the ground truth's format; predictions are read as --pred-format
    (verse20 voxels, as vertebra label writes them, unless told otherwise).

    Example:

        $ vertebra evaluate pred_ctd.json sub-verse004_seg-subreg_ctd.json --image sub-verse004_ct.nii.gz
        $ vertebra evaluate labels/ verse19/test/      (folders: pooled over all cases)
        $ vertebra evaluate labels_new/ verse19/test/ --against labels_old/
    """
    if pred.is_dir() or gt.is_dir():
        _evaluate_folders(pred, gt, format=format, pred_format=pred_format, radius=radius,
                          as_json=as_json, against=against)
        return
    if against is not None:
        fail("--against compares two folders of predictions; give folders")
        return

    from vertebra.data.verse import world_centroid_pair
    from vertebra.metrics import evaluate as score

    with cli_errors(every_warning=True):
        maps = world_centroid_pair(pred, gt, image=image, formats=(pred_format, format),
                                   direction=direction)
        result = score(maps[0], maps[1], radius_mm=radius)

    if as_json:
        from drrkit.io import json_safe

        typer.echo(json.dumps(json_safe(result), indent=1))
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


# ====================================================================== phantom
@app.command()
def phantom(
    out: Annotated[Path, typer.Argument(help="Output folder (VerSe layout); must not exist "
                                        "or be empty.")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first case.")] = 0,
    count: Annotated[int, typer.Option("--count", help="Number of cases (seeds SEED, "
                                       "SEED+1, ...).")] = 1,
    levels: Annotated[str | None, typer.Option(
        "--levels", help="First and last vertebra to cover, e.g. T10:L3 (default: a "
        "random run).")] = None,
    metal: Annotated[bool | None, typer.Option(
        "--metal/--no-metal", help="Pedicle screws and rods (default: random, 15 %).")] = None,
    transitional: Annotated[str, typer.Option(
        "--transitional", help="random, none, t13 or l6.")] = "random",
    size: Annotated[str, typer.Option(
        "--size", help="full (0.5-1 mm x 1-3 mm voxels, up to 256^3) or small (~2 mm, "
        "for tests).")] = "full",
    noise: Annotated[bool, typer.Option("--noise/--no-noise", help="Add CT noise.")] = True,
    clinical: Annotated[bool, typer.Option(
        "--clinical", help="Organs, contrast, arms, leads, varied bone density, sclerotic "
        "endplates, thin discs, the scanner's blur and a wide field of view (on 30 % a spine "
        "protocol's small one), as in clinical scans (the same levels, curvature and "
        "vertebra sizes as without).")] = False,
    spine_fov: Annotated[float | None, typer.Option(
        "--spine-fov", help="Share of the --clinical scans with a spine protocol's small "
        "field of view (default 0.3; 1: all).")] = None,
    thick_slices: Annotated[float | None, typer.Option(
        "--thick-slices", help="Share of the --clinical scans in 3-5 mm slices (default "
        "0.3).")] = None,
    sagittal: Annotated[float | None, typer.Option(
        "--sagittal", help="Share of the --clinical scans stored as sagittal reformats, "
        "2-4 mm thick from left to right (default 0).")] = None,
    max_t1_lean: Annotated[float, typer.Option(
        "--max-t1-lean", help="Largest forward lean of the spine at T1, degrees (drawn from "
        "5; 50 reaches hyperkyphotic upper thoracic spines).")] = 30.0,
) -> None:
    """Write synthetic spine CTs with VerSe ground truth (mask and centroid JSON).

    Example:

        $ vertebra phantom data/phantoms --seed 0 --count 20 --levels T10:L3
        $ vertebra phantom data/clinical --seed 2024 --count 24 --clinical
        $ vertebra phantom data/spine-fov --seed 2024 --count 24 --clinical --spine-fov 1
        $ vertebra phantom data/reformats --seed 2024 --count 24 --clinical --sagittal 1
        $ vertebra phantom data/steep --seed 3100 --count 8 --clinical --levels C5:L1 --max-t1-lean 50
    """
    import time

    from vertebra.data.phantom import write_phantoms
    from vertebra.errors import VertebraError

    with cli_errors(every_warning=True):
        if count < 1:
            raise VertebraError(f"--count must be at least 1, got {count}")
        if seed < 0:
            raise VertebraError(f"--seed must be non-negative, got {seed}")
        if transitional not in ("random", "none", "t13", "l6"):
            raise VertebraError(f"--transitional must be random, none, t13 or l6, "
                                f"got {transitional!r}")
        shares = {"spine_fov_share": spine_fov, "thick_slice_share": thick_slices,
                  "sagittal_share": sagittal}
        options = {k: v for k, v in shares.items() if v is not None}
        if options and not clinical:
            raise VertebraError("--spine-fov, --thick-slices and --sagittal need --clinical "
                                "(plain phantoms show the whole trunk in thin slices)")
        options["max_t1_lean"] = max_t1_lean
        start = time.perf_counter()
        names = write_phantoms(
            out, range(seed, seed + count), levels=levels, metal=metal, size=size,
            transitional=None if transitional == "random" else transitional, noise=noise,
            clinical=clinical, **options)
    typer.echo(f"wrote {len(names)} case(s) to {out} in {time.perf_counter() - start:.1f} s: "
               f"{', '.join(names)}")


# ====================================================================== label
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


def _find_cts(folder: Path) -> list[Path]:
    """CT files under a folder: VerSe ``*_ct.nii[.gz]`` if any, else every image file."""
    verse_cts = sorted(p for p in folder.rglob("*_ct.nii*") if p.is_file())
    if verse_cts:
        return verse_cts
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and p.name.lower().endswith(_IMAGE_SUFFIXES)
                  and "_msk" not in p.name and "_seg" not in p.name)


@app.command()
def label(
    ct: Annotated[Path, typer.Argument(help="A CT file (NIfTI, MHA, NRRD), a DICOM folder, or "
                                       "a folder of CTs (batch; VerSe layout understood).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    model: Annotated[Path | None, typer.Option(
        "--model", help="Checkpoint holding both networks (default: the packaged default "
        "networks, or the file $VERTEBRA_WEIGHTS names).")] = None,
    localizer: Annotated[Path | None, typer.Option(
        "--localizer", help="Localization network checkpoint (with --identifier).")] = None,
    identifier: Annotated[Path | None, typer.Option(
        "--identifier", help="Identification network checkpoint (with --localizer).")] = None,
    device: Annotated[str, typer.Option(
        "--device", help="Torch device for the networks: auto, cpu, cuda, cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(
        "--precision", help="The networks' forward passes: auto (bfloat16 on a CPU that "
        "computes it natively, else float32), float32 or bfloat16.")] = "auto",
    backend: Annotated[str, typer.Option(
        "--backend", help="DRR backend: auto, cpu or cuda.")] = "auto",
    nan: Annotated[str, typer.Option(
        "--nan", help="Non-finite CT voxels: zero (0 attenuation, with a warning) or "
        "raise (the CT fails).")] = "zero",
    views: Annotated[int | None, typer.Option(
        "--views", help="Views K of the localizer's orbit (default: the bundle's setting, "
                        "else its training K); the identifier keeps its own.")] = None,
    correction: Annotated[str, typer.Option(
        "--correction", help="Label correction: dp (optional T13) or paper.")] = "dp",
    t13: Annotated[bool | None, typer.Option(
        "--t13/--no-t13", help="Let the dp correction label a thirteenth thoracic vertebra "
        "(default: the bundle's setting, else yes).")] = None,
    voting: Annotated[str, typer.Option(
        "--voting", help="weighted (Sequence Loss weights, Eq. 6) or mean.")] = "weighted",
    extend_ends: Annotated[bool, typer.Option(
        "--extend-ends/--no-extend-ends",
        help="Add weakly detected vertebrae that continue the spine at its ends (cut by "
             "the scan's edge, C1).")] = True,
    mirror: Annotated[bool | None, typer.Option(
        "--mirror/--no-mirror", help="Also run the networks on the views mirrored left to "
        "right and average (twice the network time; default: the bundle's setting, else "
        "no).")] = None,
    chain: Annotated[bool | None, typer.Option(
        "--chain/--no-chain", help="Place the vertebrae as one chain along the spine: "
        "move them where the heatmap is flat, add one where a wide gap's heatmap shows it "
        "(default: the bundle's setting, else no).")] = None,
    complete_body: Annotated[bool | None, typer.Option("--complete-body/--no-complete-body",
        help="Render a scan whose small field of view the body fills (a spine protocol, a "
        "crop) inside a trunk of soft tissue (default: the bundle's setting, else no).")] = None,
    suppress_dense: Annotated[bool | None, typer.Option(
        "--suppress-dense/--keep-dense", help="Render the CT's voxels denser than bone "
        "(undiluted contrast, metal) and their bright rim as soft tissue (default: the "
        "bundle's setting, else keep them).")] = None,
    pictures: Annotated[bool, typer.Option(
        "--pictures/--no-pictures", help="Write the PNGs.")] = True,
) -> None:
    """Label the vertebrae of a CT (or of every CT in a folder).

    Writes STEM_ctd.json (VerSe JSON in voxels), STEM_centroids.csv (mm), STEM_label.json,
    STEM_seg-spheres.nii.gz (a ball per vertebra on the CT's grid, value = VerSe id),
    STEM.mrk.json (3D Slicer points named by level) and PNGs into --out (for a folder:
    --out/STEM/ per CT). Without --model or --localizer/--identifier, the default networks.

    Examples:

        $ vertebra label ct.nii.gz --out labels/

        $ vertebra label ct.nii.gz --model vertebra-demo/models/networks.pt --out labels/

        $ vertebra label verse19/test --localizer loc.pt --identifier id.pt --out pred/
    """
    with cli_errors(every_warning=True):
        cases, batch = _label_cases(ct, views, nan)
        from vertebra.pipeline import load_networks

        nets = load_networks(model, localizer, identifier, device=device,
                             precision=precision)
        given = {"localizer_views": views, "allow_t13": t13, "mirror": mirror,
                 "correction": correction, "voting": voting, "complete_body": complete_body}
        config = _label_config(nets, given, extend_ends, chain, suppress_dense)
    failed = _label_all(cases, batch, nets, config, out,
                        {"backend": backend, "nan": nan, "pictures": pictures})
    _exit_if_failed(failed, len(cases))


def _exit_if_failed(failed: int, total: int) -> None:
    """Exit 2 when any CT failed (each failure already said why; a batch also says how
    many)."""
    if failed:
        if total > 1:
            typer.echo(f"error: {failed} of {total} CTs failed", err=True)
        raise typer.Exit(2)


def _label_config(nets, given: dict, extend_ends: bool, chain: bool | None,
                  suppress_dense: bool | None = None):
    """The pipeline settings of ``vertebra label``: the networks' own, then the options
    given (None: not given)."""
    from vertebra.labelling import pipeline_config

    changes = {name: value for name, value in given.items() if value is not None}
    if not extend_ends:
        changes["extend_threshold"] = None
    if chain is False:
        changes["chain_weight"] = None
    elif chain and nets.settings.get("chain_weight") is None:
        from vertebra.chain import WEIGHT

        changes["chain_weight"] = WEIGHT
    if suppress_dense is False:
        changes["dense_hu"] = None
    elif suppress_dense and nets.settings.get("dense_hu") is None:
        from drrkit.dense import DENSE_HU

        changes["dense_hu"] = DENSE_HU
    return pipeline_config(nets, **changes)


def _label_cases(ct: Path, views: int | None, nan: str) -> tuple[list[Path], bool]:
    """The CTs ``vertebra label`` was given, and whether they are a batch (a folder of
    CTs); checks the options that need no file."""
    from vertebra.errors import VertebraError

    if not ct.exists():
        raise VertebraError(f"no such file or folder: {ct}")
    batch = ct.is_dir() and bool(_find_cts(ct))
    cases = _find_cts(ct) if batch else [ct]
    if ct.is_dir() and not batch and not any(p.is_file() for p in ct.iterdir()):
        raise VertebraError(f"{ct} holds no CT files")
    if views is not None and views < 2:
        raise VertebraError(f"--views must be at least 2, got {views}")
    if nan not in ("zero", "raise"):
        raise VertebraError(f"unknown --nan {nan!r}; choose zero or raise")
    return cases, batch


def _label_all(cases: list[Path], batch: bool, nets, config, out: Path, options: dict
               ) -> int:
    """Label every CT in turn with a progress bar; a CT that fails is reported in one line
    and the others go on. ``options``: backend, nan, pictures of
    :func:`vertebra.labelling.label_file`. Returns the number of CTs that failed."""
    import time
    import warnings

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from drrkit.errors import DrrkitError
    from vertebra.labelling import label_file
    from vertebra.pipeline import STAGES
    from vertebra.report import case_stem

    console = Console(stderr=True, soft_wrap=True)
    failed = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task("labelling", total=len(cases) * (len(STAGES) + 2))
        for path in cases:
            stem = case_stem(path)
            start = time.perf_counter()

            def step(name: str, stem=stem) -> None:
                bar.update(task, advance=1, description=f"{stem}: {name}")

            dest = out / stem if batch else out
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result, _ = label_file(path, nets, config, out=dest, stem=stem,
                                           progress=step, **options)
                for w in caught:
                    console.print(f"warning: {stem}: {w.message}", markup=False,
                                  highlight=False)
            except (DrrkitError, OSError, MemoryError) as error:
                failed += 1
                first = str(error).strip().splitlines()[0] if str(error).strip() else "error"
                console.print(f"error: {path}: {first}", markup=False, highlight=False)
                bar.update(task, completed=(cases.index(path) + 1) * (len(STAGES) + 2))
                continue
            names = [v.name for v in result.vertebrae]
            span = f"{names[0]}-{names[-1]}" if names else "-"
            status = result.status + (", labels uncertain" if result.uncertain else "")
            if result.vertebrae and not result.landmarks:
                status += ", no landmark in view"
            typer.echo(f"{stem}: {len(names)} vertebrae {span} ({status}) in "
                       f"{time.perf_counter() - start:.1f} s -> {dest}")
    return failed


def _evaluate_folders(pred: Path, gt: Path, *, format: str, pred_format: str, radius: float,
                      as_json: bool, against: Path | None = None) -> None:
    """``vertebra evaluate PRED_DIR GT_DIR``: score every ground-truth case, pooled."""
    import warnings

    from vertebra.metrics import compare
    from vertebra.report import score_folder

    with cli_errors(every_warning=True):
        folders = (pred,) if against is None else (pred, against)
        scored = {f: score_folder(f, gt, format=format, pred_format=pred_format,
                                  radius_mm=radius) for f in folders}
        for folder, (_, _, missing) in scored.items():
            if missing:
                warnings.warn(f"{len(missing)} case(s) have no prediction in {folder} "
                              f"(scored as nothing found): {', '.join(missing[:5])}"
                              + (" ..." if len(missing) > 5 else ""), stacklevel=2)
        pooled, results, _ = scored[pred]
        difference = None if against is None else compare(
            list(results.values()), list(scored[against][1].values()))
    if as_json:
        from drrkit.io import json_safe

        typer.echo(json.dumps(json_safe({"pooled": pooled, "cases": {
            name: {k: r[k] for k in ("n_gt", "n_pred", "identified", "id_rate", "l_error",
                                     "misses", "false_positives")}
            for name, r in results.items()}, "against": difference}), indent=1))
        return
    print_pooled(pooled, title=f"{pooled['n_scans']} scans, VerSe {radius:g} mm")
    if difference is not None:
        lo, hi = (100 * x for x in difference["id_rate_interval"])
        elo, ehi = difference["l_error_interval"]
        typer.echo(f"{pred} minus {against} (paired over the {difference['n_scans']} scans, "
                   f"95 % bootstrap interval): id rate {100 * difference['id_rate']:+.2f} "
                   f"points ({lo:+.2f}, {hi:+.2f}), l_error {difference['l_error']:+.2f} mm "
                   f"({elo:+.2f}, {ehi:+.2f})")


def print_pooled(pooled: dict, title: str = "") -> None:
    """Per-region table of a :func:`vertebra.metrics.pool` result (id rate, error)."""
    from rich.console import Console

    from vertebra.report import pooled_table

    console = Console(soft_wrap=True)
    console.print(pooled_table(pooled, title))
    console.print(f"predictions: {pooled['n_pred']}, ground-truth vertebrae without a "
                  f"same-label prediction: {pooled['n_without_prediction']}")
    e = pooled.get("identified_error")
    if e and e["n"]:
        console.print(f"identified vertebrae: error mean {e['mean']:.2f} mm, median "
                      f"{e['median']:.2f} mm (quartiles "
                      f"{e['q25']:.2f}, {e['q75']:.2f}), {100 * e['within_2mm']:.1f} % within "
                      "2 mm")
    ci = pooled.get("interval")
    if ci and pooled["n_scans"] > 1:
        lo, hi = (100 * x for x in ci["id_rate"])
        console.print(f"95 % bootstrap interval over the {pooled['n_scans']} scans: id rate "
                      f"{lo:.1f}-{hi:.1f} %, l_error {ci['l_error'][0]:.2f}-"
                      f"{ci['l_error'][1]:.2f} mm")


# ====================================================================== prerender, pretrain, train
_DATA_HELP = ("Training CTs: phantoms:N (synthetic spines, seeds 0..N-1; phantoms:FIRST:STOP for "
              "seeds FIRST..STOP-1), a VerSe-layout folder, or a vertebra prerender cache folder.")


def _train_config(preset: str, task: str, **changes):
    """A TrainConfig from a preset with the options the user gave (None = preset's)."""
    from vertebra.training.config import TrainConfig

    given = {k: v for k, v in changes.items() if v is not None}
    return TrainConfig.preset(preset, task, **given)


def _check_data_spec(data: str) -> None:
    from vertebra.errors import VertebraError
    from vertebra.training.sources import parse_phantoms

    if parse_phantoms(data) is None and not Path(data).is_dir():
        raise VertebraError(f"{data}: not a folder and not phantoms:N")


@app.command()
def prerender(
    data: Annotated[str, typer.Argument(help=_DATA_HELP)],
    out: Annotated[Path, typer.Argument(help="Cache folder to write (CASE.npz + cache.json).")],
    preset: Annotated[str, typer.Option(help="Views and target sizes of this training "
                                              "preset: paper or cpu-demo.")] = "paper",
    task: Annotated[str, typer.Option(help="The network the cache is for (the cpu-demo "
                                           "preset gives each its own views): localization "
                                           "or identification.")] = "localization",
    mm_per_pixel: Annotated[float | None, typer.Option(
        help="Detector pixel size at the isocentre, mm (default: the preset's).")] = None,
    views: Annotated[int | None, typer.Option(help="Views per orbit (default: the preset's)."
                                              )] = None,
    bone_gain: Annotated[float | None, typer.Option(
        help="Bone enhancement: attenuation above 200 HU this many times steeper "
             "(drrkit.enhance_bone; 1: plain DRRs; default: the preset's, paper 1, "
             "cpu-demo 8).")] = None,
    orbits: Annotated[int, typer.Option(help="Orbits per CT: angle 0, then random start "
                                             "angles within half a view step.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the extra orbits' angles.")] = 0,
    backend: Annotated[str, typer.Option(help="drrkit render backend: auto, cpu or cuda.")
                       ] = "auto",
) -> None:
    """Render every CT's training views and targets once, into a cache folder.

    Example:

        $ vertebra prerender phantoms:40 cache/ --preset cpu-demo --orbits 2

        $ vertebra prerender phantoms:40 cache-id/ --preset cpu-demo --task identification

        $ vertebra prerender verse19/train cache/ --preset paper --bone-gain 8
    """
    from dataclasses import replace

    from vertebra.errors import VertebraError
    from vertebra.training.rendered import RenderedCache
    from vertebra.training.rendered import prerender as run_prerender
    from vertebra.training.sources import open_data

    with cli_errors(every_warning=True):
        _check_data_spec(data)
        config = _train_config(preset, task)
        vc = config.views
        vc = replace(vc, **{k: v for k, v in (("mm_per_pixel", mm_per_pixel), ("views", views),
                                              ("bone_gain", bone_gain)) if v is not None})
        source = open_data(data)
        if isinstance(source, RenderedCache):
            raise VertebraError(f"{data} is already a prerender cache")
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("rendering", total=len(source))
            cache = run_prerender(source, out, vc, orbits=orbits, seed=seed,
                                  sigma_mm=config.sigma_mm, square_mm=config.square_mm,
                                  backend=backend,
                                  progress=lambda done, total: bar.update(task, completed=done))
    typer.echo(f"wrote {len(cache)} cases x {orbits * vc.views} views to {out}")


@app.command()
def pretrain(
    data: Annotated[str, typer.Argument(help=_DATA_HELP)],
    out: Annotated[Path, typer.Option("--out", help="Encoder checkpoint to write (.pt).")],
    steps: Annotated[int, typer.Option(help="SGD steps (cosine decay over them).")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Pairs per step (paper 64).")] = 64,
    encoder: Annotated[str | None, typer.Option(help="timm encoder (default: the preset's, "
                                                     "paper resnet50).")] = None,
    preset: Annotated[str, typer.Option(help="Views, crops and augmentation of this "
                                              "preset: paper or cpu-demo.")] = "paper",
    crop_size: Annotated[int | None, typer.Option(help="Crop side in pixels.")] = None,
    lr: Annotated[float, typer.Option(help="Base learning rate (paper 0.0125).")] = 0.0125,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and samples.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Multi-view SimSiam pre-training: two DRR views of one CT are a positive pair.

    Writes an encoder checkpoint for `vertebra train --init simsiam:CKPT`.

    Example:

        $ vertebra pretrain cache/ --out simsiam.pt --steps 2000
    """
    from vertebra.training.pretraining import pretrain_views

    with cli_errors(every_warning=True):
        _check_data_spec(data)
        config = _train_config(preset, "localization", encoder=encoder, crop_size=crop_size,
                               device=device, workers=workers, seed=seed)
        from rich.progress import Progress

        with Progress(disable=not progress) as bar:
            task = bar.add_task("pretrain", total=steps)
            res = pretrain_views(data, out, config, steps=steps, batch_size=batch_size, lr=lr,
                                 callback=lambda step, loss: bar.update(
                                     task, completed=step + 1, description=f"loss {loss:.3f}"))
    typer.echo(f"{len(res.losses)} steps, final loss {res.losses[-1]:.4f}; encoder "
               f"{config.encoder} saved to {out}")


@app.command()
def train(
    data: Annotated[str, typer.Argument(help=_DATA_HELP)],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write (.pt); the loss "
                                                    "log goes next to it (.log.jsonl).")],
    task: Annotated[str, typer.Option(help="localization or identification.")
                    ] = "localization",
    preset: Annotated[str, typer.Option(help="paper (defaults of the paper) or cpu-demo "
                                              "(a few minutes on a laptop CPU).")] = "paper",
    iterations: Annotated[int | None, typer.Option(help="Optimiser steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Views per step.")] = None,
    crop_size: Annotated[int | None, typer.Option(help="Crop side in pixels (x32).")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    heatmap_loss: Annotated[str | None, typer.Option(
        help="Localization loss: mse (the paper) or focal (default: the preset's).")] = None,
    init: Annotated[str, typer.Option(help="Encoder initialisation: none, imagenet:PATH or "
                                           "simsiam:PATH.")] = "none",
    sequence_loss: Annotated[bool, typer.Option(
        "--sequence-loss/--no-sequence-loss",
        help="Add the Sequence Loss (identification).")] = True,
    sacrum_class: Annotated[bool | None, typer.Option(
        "--sacrum-class/--no-sacrum-class",
        help="Identification: a class for the first sacral body, which labelling uses to "
             "tell the lowest lumbar vertebra (drawn where the data know S1: phantoms; "
             "default: the preset's).")] = None,
    encoder: Annotated[str | None, typer.Option(help="timm encoder (paper resnet50).")
                       ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of initialisation and samples.")
                    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run saved at --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train the localization (heatmaps) or identification (22 mm squares) U-Net.

    Examples:

        $ vertebra train cache/ --task localization --out loc.pt

        $ vertebra train phantoms:40 --task identification --preset cpu-demo --out id.pt
    """
    from vertebra.training.trainer import log_path
    from vertebra.training.trainer import train as run_train

    with cli_errors(every_warning=True):
        _check_data_spec(data)
        config = _train_config(preset, task, iterations=iterations, batch_size=batch_size,
                               crop_size=crop_size, lr=lr, init=init,
                               heatmap_loss=heatmap_loss,
                               sequence_loss=sequence_loss, sacrum_class=sacrum_class,
                               encoder=encoder, device=device, workers=workers, seed=seed)
        res = run_train(config, data, out, resume=resume, progress=progress)
    last = res.history[-1] if res.history else {}
    loss = f", final loss {last['loss']:.4f}" if "loss" in last else ""
    typer.echo(f"{res.iteration} iterations{loss} in {res.seconds:.0f} s; checkpoint {out}, "
               f"loss log {log_path(out)}")


# ====================================================================== demo
def _run_config(recipe: str, device: str, threads: int | None, *, quick: bool = False,
                seed: int = 0):
    """The :class:`vertebra.demo.DemoConfig` of a named recipe (or the quick smoke run) on
    ``device`` with ``threads`` torch threads and training seed ``seed``; VertebraError on
    bad values."""
    from dataclasses import replace

    from vertebra.demo import DemoConfig, recipe_config
    from vertebra.errors import VertebraError

    config = replace(DemoConfig.quick() if quick else recipe_config(recipe),
                     device=device.strip().lower())
    if threads is not None:
        if threads < 1:
            raise VertebraError(f"--threads must be >= 1, got {threads}")
        config = replace(config, threads=threads)
    return replace(config, seed=seed)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Demo folder (reused if it holds an "
                                                    "earlier run).")] = Path("vertebra-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="A smoke run of every step in a "
                                                        "couple of minutes (not accurate).")
                     ] = False,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch CPU threads.")
                       ] = None,
    progress: Annotated[bool, typer.Option(help="Show training progress bars.")] = True,
    device: Annotated[str, typer.Option(help="Torch device of the networks: cpu, cuda, "
                                             "cuda:N or auto (the recipe is a CPU's).")
                      ] = "cpu",
    recipe: Annotated[str, typer.Option(help="Named recipe: cpu-demo (quick, plain "
                                             "phantoms) or real-ct (clinical phantoms, "
                                             "strong augmentation, for real scans).")
                      ] = "cpu-demo",
    seed: Annotated[int, typer.Option(help="Training seed of the networks; runs of one "
                                           "recipe that differ only in it are members of "
                                           "an ensemble (vertebra ensemble).")] = 0,
) -> None:
    """The whole method on a CPU: phantoms, pre-training, both networks, labelling of
    held-out phantoms, VerSe scores per region and pictures.

    Example:

        $ vertebra demo --out demo/
        $ vertebra demo --out real-ct/ --recipe real-ct
        $ vertebra demo --out real-ct-2/ --recipe real-ct --seed 1
        $ vertebra demo --out demo-gpu/ --device cuda
    """
    import time

    from vertebra.demo import TARGET_ERROR_MM, TARGET_ID_RATE, run_demo

    start = time.perf_counter()
    with cli_errors(every_warning=True):
        config = _run_config(recipe, device, threads, quick=quick, seed=seed)
        result = run_demo(out, config, log=typer.echo, progress=progress)
    print_pooled(result.pooled, title=f"{result.pooled['n_scans']} held-out phantoms, "
                                      "VerSe 20 mm")
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    typer.echo(f"time: {steps}; total {time.perf_counter() - start:.0f} s")
    verdict = "met" if result.meets_targets else "NOT met"
    typer.echo(f"targets (id rate >= {100 * TARGET_ID_RATE:.0f} %, error <= "
               f"{TARGET_ERROR_MM:g} mm): {verdict}; pictures and report.json in {out}")


# ====================================================================== ensemble
@app.command()
def ensemble(
    sources: Annotated[list[Path], typer.Argument(
        help="Bundles or networks files holding both networks, e.g. runs' "
        "models/networks.pt or the packaged vertebra/weights/default.safetensors.")],
    out: Annotated[Path, typer.Option("--out", help="The ensemble bundle to write (.pt).")],
) -> None:
    """Join runs into one ensemble bundle: every localizer and identifier of the SOURCES,
    whose outputs vertebra label averages; the pipeline settings are the first source's.
    vertebra export-default OUT --dtype int8 then makes it the default networks.

    Example:

        $ vertebra ensemble vertebra/weights/default.safetensors run2/models/networks.pt \
              --out ensemble.pt
    """
    from vertebra.errors import VertebraError
    from vertebra.pipeline import bundle_networks, load_networks, stored_pipeline

    with cli_errors(every_warning=True):
        if len(sources) < 2:
            raise VertebraError("give at least two bundles to join")
        for source in sources:
            if not source.is_file():
                raise VertebraError(f"no such file: {source}")
        if out.suffix != ".pt":
            raise VertebraError(f"the ensemble is a bundle: name it NAME.pt, not {out.name}")
        settings = stored_pipeline(sources[0])
        bundle_networks(sources, sources, out, pipeline=settings)
        nets = load_networks(out, device="cpu")
    counts = [len(getattr(n, "members", [n])) for n in (nets.localizer, nets.identifier)]
    typer.echo(f"wrote {out}: {counts[0]} localizers and {counts[1]} identifiers, their "
               f"outputs averaged; pipeline settings {settings}")


# ====================================================================== export-default
@app.command("export-default")
def export_default(
    bundle: Annotated[Path, typer.Argument(help="A bundle of both networks (.pt), e.g. the "
                                           "models/networks.pt of vertebra demo.")],
    recipe: Annotated[str, typer.Option("--recipe", help="Name of the training recipe, "
                                        "stored with the networks.")],
    data: Annotated[str, typer.Option("--data", help="What the networks were trained on, "
                                      "in words, stored with them.")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output folder (default: the package's vertebra/weights/, which "
        "makes them the default networks).")] = None,
    commit: Annotated[str | None, typer.Option(
        "--commit", help="Git commit of the training code (default: the one the "
        "checkpoints record).")] = None,
    name: Annotated[str, typer.Option("--name", help="File name without suffix.")
                    ] = "default",
    max_mb: Annotated[float, typer.Option("--max-mb", help="Refuse a larger file (MB).")
                      ] = MAX_MB,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Storage of the weights: float16, int8 with a scale per output "
        "channel (half the size, for ensembles), or int8-identifiers (the identifiers in "
        "int8, the localizers in float16).")] = "float16",
) -> None:
    """Store a networks bundle compactly (float16 or int8 safetensors + a JSON record with
    its sha256, recipe, training data and commit): the default networks of vertebra label.

    Example:

        $ vertebra export-default demo/models/networks.pt --recipe cpu-demo --data "phantoms"
    """
    from vertebra import weights
    from vertebra.errors import VertebraError
    from vertebra.weights.export import export_networks

    with cli_errors(every_warning=True):
        if not bundle.is_file():
            raise VertebraError(f"no such file: {bundle}")
        record = export_networks(bundle, weights.WEIGHTS_DIR if out is None else out,
                                         recipe=recipe, training_data=data, commit=commit,
                                         name=name, max_mb=max_mb, dtype=dtype)
    folder = weights.WEIGHTS_DIR if out is None else out
    typer.echo(f"wrote {folder / record.weights} ({record.bytes / 1e6:.1f} MB, sha256 "
               f"{record.sha256[:16]}...) and its record {name}.json; recipe {record.recipe}, "
               f"commit {record.commit}")


@app.command("train-default")
def train_default(
    out: Annotated[Path, typer.Option("--out", help="Training folder (data, checkpoints, "
                                                    "held-out scores; reused if it holds "
                                                    "an earlier run).")] = Path("real-ct"),
    weights_out: Annotated[Path | None, typer.Option(
        "--weights-out", help="Where the networks file goes (default: the package's "
        "vertebra/weights/, which makes them the default networks).")] = None,
    recipe: Annotated[str, typer.Option(help="Named recipe (see vertebra demo).")
                      ] = "real-ct",
    threads: Annotated[int | None, typer.Option("--threads", help="Torch CPU threads.")
                       ] = None,
    progress: Annotated[bool, typer.Option(help="Show training progress bars.")] = True,
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:N or auto.")
                      ] = "cpu",
    members: Annotated[int, typer.Option(
        "--members", help="Runs to train, seeds 0, 1, ..., joined into one ensemble "
        "(the packaged default is an ensemble of three).")] = 1,
) -> None:
    """Train default networks from scratch with a named recipe and store them compactly:
    vertebra demo --recipe RECIPE (once per member, on the same phantoms), vertebra
    ensemble when there are several, then vertebra export-default (float16; an ensemble
    with its identifiers in int8). A stopped run continues where it stopped when the
    same command runs again.

    Example:

        $ vertebra train-default --out real-ct/ --members 3
    """
    from dataclasses import asdict

    from vertebra import weights
    from vertebra.demo import run_ensemble
    from vertebra.weights.export import export_networks

    with cli_errors(every_warning=True):
        config = _run_config(recipe, device, threads)
        result, bundle = run_ensemble(out, config, members, log=typer.echo,
                                      progress=progress)
        shares = {k: v for k, v in asdict(config).items()
                  if k.endswith(("_phantoms", "_share")) or k in ("augment", "orbits")}
        data = ("synthetic spine phantoms only (vertebra.data.phantom), no real CT; "
                + ", ".join(f"{k}={v}" for k, v in shares.items()))
        folder = weights.WEIGHTS_DIR if weights_out is None else weights_out
        record = export_networks(bundle, folder, recipe=config.recipe, training_data=data,
                                 dtype="float16" if members == 1 else "int8-identifiers")
    print_pooled(result.pooled, title=f"{result.pooled['n_scans']} held-out phantoms, "
                                      "VerSe 20 mm")
    typer.echo(f"wrote {folder / record.weights} ({record.bytes / 1e6:.1f} MB, sha256 "
               f"{record.sha256[:16]}...); recipe {record.recipe}")


if __name__ == "__main__":  # pragma: no cover
    app()
