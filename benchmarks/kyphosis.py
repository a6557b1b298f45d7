"""How the labels of the upper thoracic spine depend on how steeply it leans.

Run::

    uv run python benchmarks/kyphosis.py LABELS:GT [LABELS:GT ...] [--name NAME]

``LABELS`` is a folder that ``vertebra label`` wrote (``CASE_ctd.json`` per case),
``GT`` the VerSe-layout folder it labelled (e.g. ``vertebra phantom GT --seed 3100
--count 16 --clinical --levels C5:L1``). Per case the lean of the upper thoracic spine
is read from the ground truth: the angle between world z and the line from T2's centroid
to T1's, in the sagittal (y, z) plane, in degrees (0: upright;
the real chest CT's lean is in decision ``kyphosis``). Each case is scored with VerSe's 20 mm rule (:func:`vertebra.metrics.evaluate`
on the ``CASE_ctd.json`` found under ``LABELS``); the script prints every case with its
lean, identified vertebrae and mean error over T1-T4, and per group (lean below 30
degrees, 30 and above) the vertebrae identified and the mean T1-T4 error; writes
``benchmarks/results/kyphosis-NAME.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
STEEP_DEG = 30.0  # about the steepest T1 lean the phantom generator draws (decision kyphosis)
UPPER = (8, 9, 10, 11)  # VerSe ids of T1-T4


def lean_deg(t1, t2) -> float:
    """Sagittal lean of the T2 -> T1 line from world z, degrees (world LPS mm points)."""
    d = np.asarray(t1, float) - np.asarray(t2, float)
    return float(np.degrees(np.arctan2(abs(d[1]), d[2])))


def score(pairs: list[tuple[Path, Path]]) -> dict:
    """Per case and per lean group scores of the label folders."""
    from vertebra.data import verse
    from vertebra.data.dataset import VerseDataset
    from vertebra.metrics import evaluate

    cases, groups = [], {}
    for labels_dir, gt in pairs:
        for case in VerseDataset(gt, require="centroids").cases:
            truth = case.centroids()
            found = sorted(labels_dir.rglob(f"{case.name}_ctd.json"))
            if 8 not in truth or 9 not in truth or not found:
                continue
            pred = verse.read_centroids(found[0], case.ct)
            r = evaluate(pred, truth)
            upper = [float(np.linalg.norm(pred[k] - truth[k])) for k in UPPER
                     if k in truth and k in pred]
            lean = lean_deg(truth[8], truth[9])
            row = {"set": str(labels_dir), "case": case.name, "lean_deg": round(lean, 1),
                   "n_gt": int(r["n_gt"]), "identified": int(r["identified"]),
                   "upper_error_mm": float(np.mean(upper)) if upper else None}
            cases.append(row)
            g = groups.setdefault(f"lean >= {STEEP_DEG:g}" if lean >= STEEP_DEG
                                  else f"lean < {STEEP_DEG:g}",
                                  {"scans": 0, "vertebrae": 0, "identified": 0,
                                   "upper_errors": []})
            g["scans"] += 1
            g["vertebrae"] += row["n_gt"]
            g["identified"] += row["identified"]
            if upper:
                g["upper_errors"].append(row["upper_error_mm"])
    for g in groups.values():
        g["id_rate"] = g["identified"] / max(g["vertebrae"], 1)
        errors = g.pop("upper_errors")
        g["upper_error_mm"] = float(np.mean(errors)) if errors else None
    return {"cases": cases, "groups": groups}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pairs", nargs="+", help="LABELS:GT folder pairs")
    p.add_argument("--name", default="run", help="results file name")
    args = p.parse_args(argv)
    from _common import folder_pairs

    pairs = folder_pairs(args.pairs, p)
    out = score(pairs)
    for c in sorted(out["cases"], key=lambda c: c["lean_deg"]):
        upper = "-" if c["upper_error_mm"] is None else f"{c['upper_error_mm']:.1f} mm"
        print(f"{c['case']}: lean {c['lean_deg']:5.1f} deg, {c['identified']}/{c['n_gt']}, "
              f"T1-T4 error {upper}")
    for name, g in out["groups"].items():
        upper = "-" if g["upper_error_mm"] is None else f"{g['upper_error_mm']:.2f} mm"
        print(f"{name}: {g['scans']} scans, {g['identified']}/{g['vertebrae']} identified "
              f"({100 * g['id_rate']:.1f} %), T1-T4 error {upper}")
    import json

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"kyphosis-{args.name}.json"
    path.write_text(json.dumps({"benchmark": "kyphosis", "name": args.name,
                                "pairs": [f"{a}:{b}" for a, b in pairs], **out}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
