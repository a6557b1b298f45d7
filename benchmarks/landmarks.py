"""How often a labelled run without a landmark is right, against one with a landmark.

Run::

    uv run python benchmarks/landmarks.py LABELS:GT [LABELS:GT ...] [--name NAME]

``LABELS`` is a folder that ``vertebra label`` wrote (one ``CASE_label.json`` and
``CASE_ctd.json`` per case, anywhere below it), ``GT`` the VerSe-layout folder it labelled.
Each case is scored with VerSe's 20 mm rule (``vertebra.report.score_folder``) and sorted by
whether its labelled run holds a landmark to count its levels from
(``vertebra.labels.landmarks``: the skull base, the first or the last rib, the sacrum;
read from the label file, or worked out from its vertebrae and ``above_sacrum`` for files
written before the field existed). Prints every case without a landmark or with a miss,
and per group the scans, the scans labelled wholly right and the vertebrae identified;
writes ``benchmarks/results/landmarks-NAME.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def case_landmarks(summary: dict) -> list[str]:
    """The landmarks of one ``_label.json`` summary."""
    if "landmarks" in summary:
        return list(summary["landmarks"])
    from vertebra import labels

    ids = [int(v["label"]) for v in summary["vertebrae"]]  # VerSe ids
    return list(labels.landmarks(ids, bool(summary.get("above_sacrum", False))))


def score(pairs: list[tuple[Path, Path]]) -> dict:
    """Per case and per group (with / without a landmark) scores of the label folders."""
    from vertebra.report import score_folder

    cases, groups = [], {}
    for labels_dir, gt in pairs:
        _, scored, _ = score_folder(labels_dir, gt)
        for case, r in scored.items():
            found = list(labels_dir.rglob(f"{case}_label.json"))
            if not found:
                continue
            summary = json.loads(found[0].read_text())
            names = [v["name"] for v in summary["vertebrae"]]
            held = case_landmarks(summary)
            cases.append({"set": str(labels_dir), "case": case, "labels": names,
                          "landmarks": held, "n_gt": int(r["n_gt"]),
                          "identified": int(r["identified"]),
                          "median_confidence": summary.get("median_confidence")})
            g = groups.setdefault("with a landmark" if held else "without",
                                  {"scans": 0, "wholly_right": 0, "vertebrae": 0,
                                   "identified": 0})
            g["scans"] += 1
            g["wholly_right"] += int(r["identified"] == r["n_gt"])
            g["vertebrae"] += int(r["n_gt"])
            g["identified"] += int(r["identified"])
    for g in groups.values():
        g["id_rate"] = g["identified"] / g["vertebrae"] if g["vertebrae"] else None
    return {"cases": cases, "groups": groups}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="LABELS:GT folder pairs")
    parser.add_argument("--name", default="validation", help="results file name part")
    args = parser.parse_args(argv)
    from _common import folder_pairs

    pairs = folder_pairs(args.pairs, parser)
    result = score(pairs)
    for c in result["cases"]:
        if not c["landmarks"] or c["identified"] < c["n_gt"]:
            span = f"{c['labels'][0]}-{c['labels'][-1]}" if c["labels"] else "-"
            print(f"{Path(c['set']).name:14s} {c['case']:20s} {span:8s} identified "
                  f"{c['identified']}/{c['n_gt']}, median confidence "
                  f"{c['median_confidence']}, landmarks {', '.join(c['landmarks']) or 'none'}")
    for name, g in result["groups"].items():
        print(f"{name}: {g['scans']} scans, {g['wholly_right']} labelled wholly right; "
              f"{g['identified']} of {g['vertebrae']} vertebrae identified "
              f"({100 * g['id_rate']:.1f} %)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"landmarks-{args.name}.json"
    out.write_text(json.dumps({"benchmark": "landmarks", "pairs": [f"{a}:{b}" for a, b in pairs],
                               **result}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
