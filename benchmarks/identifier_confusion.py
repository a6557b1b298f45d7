"""Which levels an identifier tells apart: square accuracy per class and its confusions.

Runs the identifier of a networks bundle (or an identifier checkpoint) on whole views of
a prerender cache (as at inference) and counts, for every ground-truth square, the class
with the largest mean softmax inside it
(:func:`vertebra.training.validate.identification_scores`, ``confusion``). On the
network's own training cache this separates "never learned" from "does not generalise";
on views of phantoms it never saw it is a quick score of an identifier (a minute, against
several for labelling them), though not of the labels the pipeline would give.

Run::

    uv run python benchmarks/identifier_confusion.py runs/demo/models/networks.pt \\
        runs/demo/data/train_identification --every 4
    # the validation phantoms' views (seeds 2024-2095):
    uv run vertebra prerender phantoms:2024:2096 runs/val-id --preset cpu-demo --task identification
    uv run python benchmarks/identifier_confusion.py runs/demo/models/networks.pt runs/val-id

Prints one line per level (squares, share right, the three most frequent answers) and
writes ``benchmarks/results/identifier-confusion-<cache>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import RESULTS, commit, set_threads, slug, utc_now, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="networks bundle or identifier checkpoint")
    p.add_argument("cache", type=Path, help="prerender cache folder (cache.json inside)")
    p.add_argument("--every", type=int, default=1, help="use every N-th CT of the cache")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def rows_of(confusion, top: int = 3) -> list[dict]:
    """One record per class with squares: its name, count, share right, top answers.

    Args:
        confusion: (C, C) counts, rows the true class, columns the answer.
        top: answers listed per class.
    """
    import numpy as np

    from vertebra import labels as vl

    rows = []
    for c in np.flatnonzero(confusion.sum(axis=1)):
        counts = confusion[c]
        order = [int(p) for p in np.argsort(-counts, kind="stable")[:top] if counts[p]]
        rows.append({"class": vl.by_class(int(c)).name, "squares": int(counts.sum()),
                     "right": float(counts[c] / counts.sum()),
                     "answers": {vl.by_class(p).name: int(counts[p]) for p in order}})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads, wait_policy=None)
    from drrkit.errors import DrrkitError
    from vertebra.pipeline import load_networks
    from vertebra.training.rendered import RenderedCache
    from vertebra.training.validate import identification_scores

    try:
        if args.every < 1:
            raise DrrkitError(f"--every must be >= 1, got {args.every}")
        nets = load_networks(args.model, device="cpu")
        if not hasattr(nets.identifier, "model"):
            raise DrrkitError(f"{args.model} holds an ensemble of identifiers; give one "
                              "member's bundle")
        cache = RenderedCache(args.cache)
    except DrrkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    items = (cache.load(i) for i in range(0, len(cache), args.every))
    scores = identification_scores(nets.identifier.model, items)
    rows = rows_of(scores["confusion"])
    for r in rows:
        answers = ", ".join(f"{k} {v}" for k, v in r["answers"].items())
        print(f"{r['class']:4s} {r['squares']:5d} squares, {100 * r['right']:5.1f} % right; "
              f"answers: {answers}")
    print(f"square accuracy {100 * scores['square_accuracy']:.1f} %, "
          f"within one level {100 * scores['square_accuracy_pm1']:.1f} %")
    record = {"benchmark": "identifier_confusion", "model": str(args.model),
              "cache": str(args.cache), "every": args.every, "commit": commit(),
              "date": utc_now(), "square_accuracy": scores["square_accuracy"],
              "square_accuracy_pm1": scores["square_accuracy_pm1"], "classes": rows}
    out = args.out or RESULTS / f"identifier-confusion-{slug(args.cache.name)}.json"
    write_json(out, record)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
