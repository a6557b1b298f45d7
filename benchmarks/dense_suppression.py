"""Labelling with and without the dense suppression, paired, on VerSe-layout folders.

Every CT of the folders that has voxels above the threshold (``drrkit.dense.dense_mask``:
undiluted contrast, metal, the phantoms' teeth) is labelled twice with the same networks
and settings, once with ``PipelineConfig.dense_hu`` off and once at the threshold; a CT
without such voxels would be labelled the same both ways and is skipped. The JSON keeps
each CT's scores both ways, and is resumed where it stops (a CT already in it is not
labelled again).

Usage::

    uv run python benchmarks/dense_suppression.py runs/val_clinical [FOLDER ...] \\
        [--model M] [--threshold 1600] [--name N]

Writes ``benchmarks/results/dense-suppression-NAME.json`` and prints the pooled scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path


def _score(ct, truth, nets, dense_hu) -> dict:
    from vertebra.labelling import pipeline_config
    from vertebra.metrics import evaluate
    from vertebra.pipeline import label_ct

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = label_ct(ct, nets.localizer, nets.identifier, views=nets.views,
                          identifier_views=nets.identifier_views,
                          config=pipeline_config(nets, dense_hu=dense_hu))
    score = evaluate(result.centroids(), truth)
    return {k: score[k] for k in ("identified", "n_gt", "l_error")}


def _pooled(rows: list[dict], key: str) -> str:
    found = sum(r[key]["identified"] for r in rows)
    total = sum(r[key]["n_gt"] for r in rows)
    errors = [r[key]["l_error"] for r in rows if r[key]["l_error"] is not None]
    mean = sum(errors) / len(errors) if errors else float("nan")
    return f"{found}/{total} identified, mean per-scan error {mean:.2f} mm"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="VerSe-layout folders")
    parser.add_argument("--model", type=Path, help="networks (default: the shipped ones)")
    parser.add_argument("--threshold", type=float, default=1600.0, help="dense_hu (HU)")
    parser.add_argument("--name", default="validation", help="results file name")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from _common import RESULTS, commit, cpu_model, utc_now, write_json

    from drrkit.dense import check_dense_hu, dense_mask
    from vertebra.data.dataset import VerseDataset
    from vertebra.pipeline import load_networks
    from vertebra.weights import default_path

    torch.set_num_threads(2)
    threshold = check_dense_hu(args.threshold)
    out = RESULTS / f"dense-suppression-{args.name}.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    cases = done.get("cases", {})
    nets = load_networks(args.model or default_path(), device="cpu")
    for folder in args.folders:
        for case in VerseDataset(folder, require="centroids").cases:
            key = f"{folder.name}/{case.name}"
            if key in cases:
                continue
            ct, truth = case.load_ct(), case.centroids()
            removed = int(dense_mask(ct, threshold).sum())
            if not removed:
                continue
            start = time.perf_counter()
            cases[key] = {"removed_voxels": removed,
                          "kept": _score(ct, truth, nets, None),
                          "suppressed": _score(ct, truth, nets, threshold)}
            write_json(out, {"benchmark": "dense_suppression", "threshold_hu": threshold,
                             "model": str(args.model or "default"), "cpu": cpu_model(),
                             "commit": commit(), "date": utc_now(), "cases": cases})
            print(f"{key}: {cases[key]} ({time.perf_counter() - start:.0f} s)", flush=True)
    rows = list(cases.values())
    if rows:
        print(f"{len(rows)} CTs with dense voxels; kept: {_pooled(rows, 'kept')}; "
              f"suppressed: {_pooled(rows, 'suppressed')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
