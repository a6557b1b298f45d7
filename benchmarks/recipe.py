"""Training recipe: how per-view scores on held-out phantoms evolve with iterations.

Method:

* **data**: training phantoms ``phantoms:0..N`` (``--train-phantoms``, ``--orbits``
  orbits each: the inference orbit plus random start angles) and held-out phantoms
  ``--held-out-start .. +--held-out`` (never trained on, one orbit at the inference
  angles), prerendered with :func:`vertebra.training.rendered.prerender` using the
  configuration's views, heatmap sigma and square size. The caches live in ``--work``
  under names that encode those settings, so a later run with the same settings reuses
  them.
* **recipe**: ``TrainConfig.cpu_demo(task)`` or ``TrainConfig.paper(task)``
  (``--preset``) with the overrides given (``--mm-per-pixel``, ``--crop``,
  ``--heatmap-loss``, ``--lr``, ``--lr-step``, ``--background-weight``, ...). Its
  ``iterations`` is the last of ``--stages``; the learning-rate schedule is that of the
  whole run.
* **stages**: :func:`vertebra.training.trainer.train` runs to each cumulative iteration
  count of ``--stages`` in turn, resuming the same checkpoint (optimizer state and
  sample stream continue, so the stages together are one run of the last length).
  After each stage the network is scored on every view of the held-out phantoms:
  localization with :func:`vertebra.training.validate.localization_scores` at heatmap
  thresholds 0.2, 0.3 and 0.5 (peak error in mm at the isocentre, detection rate within
  10 mm, false positives per view); identification with
  :func:`vertebra.training.validate.identification_scores` (pixel, square, square +-1
  level and sequence accuracy). Models trained with the focal heatmap loss get their
  sigmoid at inference from :func:`vertebra.models.heatmap_values`.
* **time**: ``train_s`` is the cumulative wall time of the training loops
  (:attr:`TrainResult.seconds`), ``stage_wall_s`` each stage's wall time including the
  model set-up and checkpoint reads, ``eval_s`` the scoring. The thread count is fixed
  (``--threads``) and the machine's load average is recorded before and after: other
  processes slow training down. Scoring a barely trained localizer is slow: its heatmap
  is above threshold almost everywhere, and :func:`vertebra.peaks.density_peaks` is
  quadratic in those pixels (up to 20 000 a view); choose the first stage accordingly.

Run::

    uv run python benchmarks/recipe.py --task localization --work runs/recipe
    uv run python benchmarks/recipe.py --task identification --work runs/recipe \\
        --stages 400,800,1200
    uv run python benchmarks/recipe.py --task localization --heatmap-loss mse \\
        --stages 600,1200 --tag mse --work runs/recipe       # compare one change

Writes ``benchmarks/results/recipe-<task>-<tag>.json`` (``--out`` to choose), rewritten
after every stage; ``<tag>`` defaults to ``<cpu>-<threads>t-<preset>`` and any
``--tag`` given is appended. Without ``--work`` the caches and checkpoint go to a
temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _common import (
    RESULTS,
    check_load,
    cpu_model,
    provenance,
    set_threads,
    slug,
    versions,
    write_json,
)

#: Heatmap thresholds at which localization is scored (as the demo's peak finder uses).
THRESHOLDS = (0.2, 0.3, 0.5)

#: Views per forward pass when scoring.
EVAL_BATCH = 8

#: The code the numbers depend on, hashed into the result (see ``_common.provenance``).
SOURCES = ("vertebra/training/config.py", "vertebra/training/trainer.py",
           "vertebra/training/losses.py", "vertebra/training/dataset.py",
           "vertebra/training/validate.py", "vertebra/models.py", "vertebra/targets.py",
           "vertebra/views.py")

#: Command-line overrides -> TrainConfig field names.
OVERRIDES = {"crop": "crop_size", "heatmap_loss": "heatmap_loss", "lr": "lr",
             "lr_step": "lr_step", "background_weight": "background_weight",
             "sigma_mm": "sigma_mm", "encoder": "encoder"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("localization", "identification"),
                   default="localization")
    p.add_argument("--preset", choices=("cpu-demo", "paper"), default="cpu-demo")
    p.add_argument("--mm-per-pixel", type=float, default=None,
                   help="detector pixel at the isocentre, mm (default: the preset's)")
    p.add_argument("--crop", type=int, default=None, help="training crop side, pixels")
    p.add_argument("--heatmap-loss", choices=("mse", "focal"), default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lr-step", type=int, default=None)
    p.add_argument("--background-weight", type=float, default=None)
    p.add_argument("--sigma-mm", type=float, default=None, help="heatmap sigma, mm")
    p.add_argument("--encoder", default=None, help="timm encoder (default: the preset's)")
    p.add_argument("--stages", default="400,800,1200",
                   help="cumulative iteration counts to score at; the last is the run's")
    p.add_argument("--train-phantoms", type=int, default=40)
    p.add_argument("--orbits", type=int, default=2, help="orbits per training phantom")
    p.add_argument("--held-out", type=int, default=6)
    p.add_argument("--held-out-start", type=int, default=1000)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the caches and checkpoint (default: a temporary one)")
    p.add_argument("--tag", default="", help="appended to the result file's name")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        args.stage_list = [int(s) for s in args.stages.split(",")]
    except ValueError:
        p.error(f"--stages must be comma-separated integers, got {args.stages!r}")
    if args.stage_list[0] < 1 or any(b <= a for a, b in zip(args.stage_list,
                                                             args.stage_list[1:])):
        p.error(f"--stages must be increasing positive counts, got {args.stages!r}")
    for name in ("train_phantoms", "orbits", "held_out", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def make_config(args: argparse.Namespace):
    """The preset with the overrides given and ``iterations`` = the last stage."""
    from vertebra.training.config import TrainConfig

    changes = {field: getattr(args, arg) for arg, field in OVERRIDES.items()
               if getattr(args, arg) is not None}
    config = TrainConfig.preset(args.preset, args.task, device=args.device, **changes)
    if args.mm_per_pixel is not None:
        config = replace(config, views=replace(config.views, mm_per_pixel=args.mm_per_pixel))
    return replace(config, iterations=args.stage_list[-1])


def overrides(args: argparse.Namespace) -> dict:
    """The command-line overrides actually given, by option name."""
    names = [*OVERRIDES, "mm_per_pixel"]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def cache_dir(work: Path, kind: str, spec: str, orbits: int, config) -> Path:
    """``WORK/<kind>-<spec>-o<orbits>-<hash>``: one folder per data and render settings."""
    settings = {"spec": spec, "orbits": orbits, "views": config.views.to_dict(),
                "sigma_mm": config.sigma_mm, "square_mm": config.square_mm}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return work / f"{kind}-{spec.replace(':', '')}-o{orbits}-{digest}"


def prepare(work: Path, spec: str, orbits: int, config, kind: str):
    """Prerender ``spec`` into its cache folder (reusing a complete one); the cache."""
    from vertebra.training.rendered import RenderedCache, prerender
    from vertebra.training.sources import open_data

    folder = cache_dir(work, kind, spec, orbits, config)
    if (folder / "cache.json").is_file():
        print(f"{kind}: reusing {folder}", flush=True)
        return RenderedCache(folder)
    t0 = time.perf_counter()
    cache = prerender(open_data(spec), folder, config.views, orbits=orbits,
                      sigma_mm=config.sigma_mm, square_mm=config.square_mm)
    print(f"{kind}: prerendered {spec} x {orbits} orbit(s) in "
          f"{time.perf_counter() - t0:.0f} s -> {folder}", flush=True)
    return cache


def scoring_model(result):
    """The trained network as inference sees it.

    Rebuilt from the run's configuration (:func:`vertebra.training.trainer.build_model`,
    which chooses the heatmap activation from ``heatmap_loss``) with the trained weights,
    so that the score does not depend on how :func:`train` rebuilt a resumed model.
    """
    from vertebra.training.trainer import build_model

    model = build_model(replace(result.config, init="none"))
    model.load_state_dict(result.model.state_dict())
    return model.to(next(result.model.parameters()).device)


def score(task: str, model, held: list) -> dict:
    """Held-out scores of one stage (see the module docstring)."""
    from vertebra.training.validate import identification_scores, localization_scores

    device = next(model.parameters()).device
    if task == "identification":
        return identification_scores(model, held, batch_size=EVAL_BATCH, device=device)
    return {str(t): localization_scores(model, held, threshold=t, batch_size=EVAL_BATCH,
                                        device=device) for t in THRESHOLDS}


def stage_line(row: dict) -> str:
    """One compact line per stage."""
    head = (f"it {row['iteration']:6d}  train {row['train_s']:6.0f} s  "
            f"loss {row['loss']:.4g}")
    s = row["scores"]
    if "pixel_accuracy" in s:
        return (f"{head} | pixel {100 * s['pixel_accuracy']:.1f} %  square "
                f"{100 * s['square_accuracy']:.1f} %  +-1 {100 * s['square_accuracy_pm1']:.1f}"
                f" %  sequence {100 * s['sequence_accuracy']:.1f} %  ({s['squares']} squares)")
    parts = [f"thr {t}: median {s[t]['median_error_mm']:.1f} mm  det "
             f"{100 * s[t]['detection_rate']:.0f} %  fp {s[t]['false_positives_per_view']:.2f}"
             for t in s]
    return head + " | " + " | ".join(parts)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads, wait_policy=None)  # training: see _common.set_threads
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from drrkit.io import json_safe
    from vertebra.training.trainer import resolve_device, train

    config = make_config(args)
    tag = f"{slug(cpu_model())}-{args.threads}t-{args.preset}" + (
        f"-{args.tag}" if args.tag else "")
    out = args.out or RESULTS / f"recipe-{args.task}-{tag}.json"
    temporary = args.work is None
    work = Path(tempfile.mkdtemp(prefix="recipe-")) if temporary else args.work
    work.mkdir(parents=True, exist_ok=True)
    load_before = check_load()
    try:
        t0 = time.perf_counter()
        cache = prepare(work, f"phantoms:{args.train_phantoms}", args.orbits, config, "train")
        held_spec = f"phantoms:{args.held_out_start}:{args.held_out_start + args.held_out}"
        held_cache = prepare(work, held_spec, 1, config, "held-out")
        held = [held_cache.load(i) for i in range(len(held_cache))]
        data_s = time.perf_counter() - t0
        checkpoint = work / f"recipe-{args.task}.pt"
        for stale in (checkpoint, checkpoint.with_name(checkpoint.stem + ".log.jsonl")):
            stale.unlink(missing_ok=True)  # every run starts from scratch

        record = {
            "benchmark": "recipe",
            "task": args.task,
            "preset": args.preset,
            "overrides": overrides(args),
            "stages": args.stage_list,
            "data": {"train": f"phantoms:{args.train_phantoms}", "orbits": args.orbits,
                     "held_out": held_spec,
                     "train_views": sum(len(cache.load(i)) for i in range(len(cache))),
                     "held_out_views": sum(len(rv) for rv in held), "prepare_s": data_s},
            "config": config.to_dict(),
            "thresholds": list(THRESHOLDS) if args.task == "localization" else None,
            "hardware": {"cpu": cpu_model(), "threads": args.threads,
                         "device": str(resolve_device(config.device)),
                         "platform": platform.platform()},
            "versions": versions(("numpy", "numba", "torch", "timm")),
            **provenance(SOURCES, "training_code_sha256"),
            "load_average_before": load_before,
            "rows": [],
            "complete": False,
        }
        print(f"{args.task} {args.preset} {overrides(args) or ''}: "
              f"{record['data']['train_views']} training views, "
              f"{record['data']['held_out_views']} held-out views; stages {args.stage_list}",
              flush=True)
        train_s = 0.0
        for stage in args.stage_list:
            t_stage = time.perf_counter()
            res = train(replace(config, iterations=stage), cache, checkpoint,
                        resume=checkpoint.exists(), progress=False)
            stage_wall = time.perf_counter() - t_stage
            train_s += res.seconds
            t_eval = time.perf_counter()
            scores = score(args.task, scoring_model(res), held)
            tail = res.losses[-min(len(res.losses), 50):]
            row = {"iteration": res.iteration, "train_s": train_s, "stage_wall_s": stage_wall,
                   "eval_s": time.perf_counter() - t_eval,
                   "loss": float(np.mean(tail)) if tail else float("nan"),
                   "lr": res.history[-1]["lr"] if res.history else None, "scores": scores}
            record["rows"].append(row)
            print(stage_line(row), flush=True)
            record["load_average_after"] = os.getloadavg()
            write_json(out, json_safe(record))
        record["complete"] = True
        record["load_average_after"] = os.getloadavg()
        write_json(out, json_safe(record))
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load {load_before[0]:.1f} -> {record['load_average_after'][0]:.1f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
