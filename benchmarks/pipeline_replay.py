"""Score pipeline settings on stored network outputs: the networks run once, the stages
after them as often as there are settings to compare.

The stages after the networks (peaks, matching, the chain placement, identification
squares, voting, correction; :mod:`vertebra.pipeline`) take a second or two per CT; the
networks take most of a labelling. ``cache`` runs the networks once on every case (the
real CTs of ``real_ct.py`` and the CTs of VerSe-layout folders, e.g. validation phantoms)
and stores their outputs (heatmaps; class probabilities in float16) with the ground truth;
``sweep`` labels every case again from the stored outputs under each named setting and
prints the VerSe scores per set, pooled (:func:`vertebra.metrics.pool`), and per real CT.
The stored outputs already hold the test-time mirroring of the networks' bundle, so the
replay runs without it; every other stage is the pipeline's own (:func:`label_ct`).

Usage::

    uv run --group bench python benchmarks/pipeline_replay.py cache runs/replay \\
        --folder runs/val_plain --folder runs/val_clinical [--model M] [--real chest,tptbox]
    uv run --group bench python benchmarks/pipeline_replay.py sweep runs/replay \\
        --config before:chain_weight=none --config chain:chain_weight=3 [--name N]

A setting's name may be empty (``--config shipped:`` scores the bundle's own settings).
``sweep`` writes ``benchmarks/results/pipeline-replay-NAME.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REAL = "real"  # the set name of the real CTs


def real_cases(text: str | None) -> list[str]:
    """The real CTs named by ``--real`` ("a,b", "none"; None: all of them)."""
    import real_ct

    every = [*real_ct.CASES, *real_ct.VARIANTS]
    if text is None:
        return every
    names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in every]
    if unknown:
        raise SystemExit(f"error: --real names no case {', '.join(unknown)}; the cases: "
                         f"{', '.join(every)}")
    return names


def _cases(folders: list[Path], real: list[str] | None = None):
    """(set, case name, loader) of every case (the real CTs ``real``, None: all); the loader
    returns (volume, truth)."""
    import real_ct

    from vertebra.data.dataset import VerseDataset

    for name in real_cases(None) if real is None else real:
        def real(name=name):
            case = real_ct.load_case(name)
            return case.ct, real_ct.truth_from_mask(case.mask).centroids
        yield REAL, name, real
    for folder in folders:
        for case in VerseDataset(folder, require="centroids").cases:
            yield folder.name, case.name, (lambda c=case: (c.load_ct(), c.centroids()))


class _Recorder:
    """A network callable that keeps its last output."""

    def __init__(self, network) -> None:
        self.network, self.output = network, None

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        self.output = np.asarray(self.network(inputs), dtype=np.float32)
        return self.output


def cache(store: Path, folders: list[Path], model: Path | None,
          real: list[str] | None = None) -> None:
    """Run the networks once per case and store their outputs in ``store``."""
    from dataclasses import replace

    from vertebra.labelling import pipeline_config
    from vertebra.pipeline import MirroredNetwork, label_ct, load_networks
    from vertebra.weights import default_path

    nets = load_networks(model or default_path(), device="cpu")
    config = pipeline_config(nets)
    for group, name, load in _cases(folders, real):
        path = store / group / f"{name}.npz"
        if path.exists():
            continue
        volume, truth = load()
        localizer, identifier = nets.localizer, nets.identifier
        if config.mirror:
            localizer, identifier = MirroredNetwork(localizer), MirroredNetwork(identifier)
        loc, ident = _Recorder(localizer), _Recorder(identifier)
        label_ct(volume, loc, ident, views=nets.views, identifier_views=nets.identifier_views,
                 config=replace(config, mirror=False))
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = list(truth)
        np.savez(path, heatmaps=loc.output, probs=ident.output.astype(np.float16),
                 truth_ids=np.array(ids), truth_mm=np.array([truth[k] for k in ids]))
        print(f"stored {group}/{name}", flush=True)


def _replay(network_output: np.ndarray):
    def network(inputs: np.ndarray) -> np.ndarray:
        return network_output
    return network


def sweep(store: Path, folders: list[Path], configs: dict[str, dict], model: Path | None,
          real: list[str] | None = None) -> dict:
    """{setting: {set: pooled scores, "cases": {case: scores}}} from stored outputs (a real
    CT's case by its name, a folder's as ``folder/case``)."""
    import warnings
    from dataclasses import replace

    from vertebra.labelling import pipeline_config
    from vertebra.metrics import evaluate, pool
    from vertebra.pipeline import label_ct, load_networks
    from vertebra.weights import default_path

    nets = load_networks(model or default_path(), device="cpu")
    loaded = {}
    out = {}
    for label, settings in configs.items():
        config = replace(pipeline_config(nets, **settings), mirror=False)
        scores: dict[str, list] = {}
        real_cases = {}
        for group, name, load in _cases(folders, real):
            path = store / group / f"{name}.npz"
            if not path.exists():
                continue
            stored = np.load(path)
            if (group, name) not in loaded:
                loaded[(group, name)] = load()[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = label_ct(loaded[(group, name)], _replay(stored["heatmaps"]),
                                  _replay(stored["probs"].astype(np.float32)),
                                  views=nets.views, identifier_views=nets.identifier_views,
                                  config=config)
            truth = dict(zip(stored["truth_ids"].tolist(), stored["truth_mm"], strict=True))
            score = evaluate(result.centroids(), truth)
            scores.setdefault(group, []).append(score)
            key = name if group == REAL else f"{group}/{name}"
            real_cases[key] = {k: score[k] for k in ("identified", "n_gt", "l_error")}
        out[label] = {group: pool(rows) for group, rows in scores.items()}
        out[label]["cases"] = real_cases
        _print(label, out[label])
    return out


def _print(label: str, row: dict) -> None:
    parts = []
    for name, c in row["cases"].items():
        if "/" in name:  # a folder's case: pooled below
            continue
        parts.append(f"{name} {c['identified']}/{c['n_gt']} {c['l_error']:.1f} mm")
    for group, p in row.items():
        if group != "cases":
            parts.append(f"[{group}: {100 * p['id_rate']:.1f} % {p['l_error']:.2f} mm, "
                         f"{p['n_scans']} scans]")
    print(f"{label}: " + "; ".join(parts), flush=True)


def parse_config(text: str) -> tuple[str, dict]:
    """``"chain:chain_weight=3,chain_cost=0.8"`` -> ("chain", {settings}) (values as in
    ``real_ct.py --set``)."""
    from real_ct import parse_settings

    label, sep, rest = text.partition(":")
    if not sep or not label.strip():
        raise SystemExit(f"error: --config takes LABEL:NAME=VALUE,..., got {text!r}")
    return label.strip(), parse_settings([s for s in rest.split(",") if s.strip()])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("cache", "sweep"))
    parser.add_argument("store", type=Path, help="folder of the stored network outputs")
    parser.add_argument("--folder", type=Path, action="append", default=[],
                        help="a VerSe-layout folder of CTs with ground truth (repeatable)")
    parser.add_argument("--model", type=Path, help="networks (default: the shipped ones)")
    parser.add_argument("--config", action="append", default=[],
                        help="LABEL:NAME=VALUE,... pipeline settings to score (repeatable)")
    parser.add_argument("--name", default="sweep", help="results file name (sweep)")
    parser.add_argument("--real", help="the real CTs to take, comma-separated, or none "
                        "(default: all)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    real = real_cases(args.real)
    import torch
    from _common import RESULTS, commit, cpu_model, utc_now, write_json

    torch.set_num_threads(2)
    start = time.perf_counter()
    if args.step == "cache":
        cache(args.store, args.folder, args.model, real)
        return 0
    configs = dict(parse_config(c) for c in args.config) or {"shipped": {}}
    rows = sweep(args.store, args.folder, configs, args.model, real)
    from drrkit.io import json_safe

    write_json(RESULTS / f"pipeline-replay-{args.name}.json", json_safe({
        "benchmark": "pipeline_replay", "configs": configs, "results": rows,
        "folders": [str(f) for f in args.folder], "model": str(args.model or "default"),
        "cpu": cpu_model(), "commit": commit(), "date": utc_now(),
        "seconds": round(time.perf_counter() - start, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
