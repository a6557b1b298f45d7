"""Vertebra localisation and identification metrics (VerSe definitions), plus the paper's variant.

VerSe (Sekuboyina et al., 2021, and ``get_hits`` of the challenge's evaluation code), per
ground-truth vertebra ``v`` at ``g_v``:

* **identified** when there is a prediction labelled ``v``, at ``p_v``, whose closest
  ground truth (among the labels present in both files) is ``v`` itself, and
  ``|p_v - g_v| <= radius_mm`` (20 mm). Predicted labels the ground truth lacks play no
  part in it (they are listed as ``false_positives``);
* ``id_rate = identified / number of ground-truth vertebrae``;
* ``l_error`` = mean over ground-truth vertebrae of the distance from ``g_v`` to the
  prediction labelled ``v``; vertebrae with no such prediction are left out of the mean
  and counted in ``n_without_prediction``.

The paper's evaluation code (``eval/eval_all.py`` of Wu et al.'s release, which gave the
reported 98.12 %) goes the other way round, per *prediction*: each prediction's closest
ground truth counts as correct when under 20 mm and of the same label, and the rate
divides by the number of predictions. That is reported separately as
``id_rate_per_prediction`` (with ``l_error_per_prediction``: the sum of the distances
under 20 mm divided by the number of predictions, as that code computes it), never
under the VerSe names. Missing vertebrae do not lower it.

Pooled over scans (:func:`pool`), the rates come with bootstrap intervals that resample
whole *scans* (:func:`bootstrap`): a network's errors come in runs (a scan labelled one
level off loses all its vertebrae at once), so vertebrae are not independent and an
interval over vertebrae would be far too narrow. :func:`compare` does the same for the
difference between two sets of predictions on the same scans (paired).

Only vertebra targets (VerSe ids 1-25 and 28) are scored; other labels (26 sacrum,
27 coccyx) in either input are ignored and listed under ``ignored_labels``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vertebra import labels as vlabels
from vertebra.errors import VertebraError

#: Identification radius in mm (VerSe and the paper).
RADIUS_MM = 20.0


def _points(mapping: Any, what: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    if not isinstance(mapping, dict):
        raise VertebraError(f"{what} must be a mapping {{VerSe label: (x, y, z) mm}}")
    keep, ignored = [], []
    for key in mapping:
        try:
            lab = int(key)
        except (TypeError, ValueError):
            raise VertebraError(f"{what}: label {key!r} is not an integer") from None
        (keep if vlabels.is_vertebra(lab) else ignored).append((lab, key))
    keep.sort(key=lambda t: vlabels.anatomical_rank(t[0]))
    labels = np.array([lab for lab, _ in keep], dtype=np.int64)
    if len(set(labels.tolist())) != len(labels):
        raise VertebraError(f"{what}: a label appears more than once")
    try:
        pts = np.array([np.asarray(mapping[key], dtype=np.float64).reshape(3) for _, key in keep],
                       dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError):
        raise VertebraError(f"{what}: every centroid must be 3 numbers (x, y, z) in mm") from None
    if not np.all(np.isfinite(pts)):
        raise VertebraError(f"{what}: centroid coordinates must be finite")
    return labels, pts, sorted(lab for lab, _ in ignored)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _rate(num: int, den: int) -> float:
    return num / den if den else math.nan


def evaluate(pred: dict, gt: dict, *, radius_mm: float = RADIUS_MM) -> dict:
    """Score predicted centroids against ground truth for one scan.

    Args:
        pred: {VerSe id: (3,) world mm} predictions.
        gt: {VerSe id: (3,) world mm} ground truth (same frame as ``pred``).
        radius_mm: identification radius (20 mm).

    Returns:
        A JSON-friendly dict (NaN where a figure is undefined, e.g. no ground truth):

        * ``id_rate``, ``identified``, ``n_gt``, ``n_pred`` - VerSe identification rate.
        * ``l_error`` (mm), ``l_error_std``, ``n_localized`` (ground truths with a
          same-label prediction), ``n_without_prediction``.
        * ``hits``: ground-truth labels identified; ``misses``: the others;
          ``false_positives``: predicted labels absent from the ground truth;
          ``unmatched_predictions``: predicted labels that identified no vertebra.
        * ``regions``: {"cervical"|"thoracic"|"lumbar": {n_gt, identified, id_rate,
          l_error, n_without_prediction}} by ground-truth label.
        * ``vertebrae``: {label: {name, region, identified, distance (to the same-label
          prediction or NaN), nearest_gt_label (the ground truth nearest to that
          prediction, among the labels of both files; None without one)}} per ground
          truth.
        * ``id_rate_per_prediction`` (= ``correct_per_prediction / n_pred``),
          ``l_error_per_prediction``, ``n_far_predictions`` - the paper code's variant (see the module docstring).
        * ``ignored_labels``: non-vertebra labels left out, ``radius_mm``.

    Example:
        >>> gt = {20: (0, 0, 0), 21: (0, 0, -30)}
        >>> r = evaluate({20: (0, 0, 1), 22: (0, 0, -31)}, gt)
        >>> r["id_rate"], r["l_error"], r["n_without_prediction"], r["false_positives"]
        (0.5, 1.0, 1, [22])
    """
    radius = float(radius_mm)
    if not radius > 0:
        raise VertebraError(f"the identification radius must be positive, got {radius_mm}")
    p_lab, p_pts, p_ignored = _points(pred, "predictions")
    g_lab, g_pts, g_ignored = _points(gt, "ground truth")
    n_gt, n_pred = len(g_lab), len(p_lab)
    dist = np.linalg.norm(g_pts[:, None, :] - p_pts[None, :, :], axis=-1)  # (G, P)
    vertebrae = _per_ground_truth(dist, g_lab, p_lab, radius)
    hits = [lab for lab, v in vertebrae.items() if v["identified"]]
    misses = [lab for lab, v in vertebrae.items() if not v["identified"]]

    gt_set = set(g_lab.tolist())
    localized = [v["distance"] for v in vertebrae.values() if not math.isnan(v["distance"])]
    regions = _by_region(vertebrae)
    correct, near = _per_prediction(dist, g_lab, p_lab, radius)

    return {
        "n_gt": n_gt,
        "n_pred": n_pred,
        "identified": len(hits),
        "id_rate": _rate(len(hits), n_gt),
        "l_error": _mean(localized),
        "l_error_std": float(np.std(localized)) if localized else math.nan,
        "n_localized": len(localized),
        "n_without_prediction": n_gt - len(localized),
        "hits": hits,
        "misses": misses,
        "false_positives": [lab for lab in p_lab.tolist() if lab not in gt_set],
        "unmatched_predictions": [lab for lab in p_lab.tolist() if lab not in hits],
        "regions": regions,
        "vertebrae": vertebrae,
        "correct_per_prediction": correct,
        "id_rate_per_prediction": _rate(correct, n_pred),
        "l_error_per_prediction": (sum(near) / n_pred) if n_pred else math.nan,
        "n_far_predictions": n_pred - len(near) if n_gt else n_pred,
        "ignored_labels": sorted(set(p_ignored) | set(g_ignored)),
        "radius_mm": radius,
    }


def _per_ground_truth(dist: np.ndarray, g_lab: np.ndarray, p_lab: np.ndarray,
                      radius: float) -> dict[int, dict]:
    """VerSe's rule per ground-truth vertebra: identified when the prediction of its label
    lies within ``radius`` and no other ground truth (of a label both files hold) is
    nearer to it. ``dist``: (G, P) distances, mm. Rows as :func:`evaluate`'s
    ``vertebrae``, in ground-truth order."""
    p_index = {int(lab): i for i, lab in enumerate(p_lab)}
    vertebrae: dict[int, dict] = {}
    both = np.flatnonzero(np.isin(g_lab, p_lab))  # ground truths whose label was predicted
    for g, lab in enumerate(g_lab.tolist()):
        same = p_index.get(lab)
        nearest = None if same is None else int(g_lab[both[np.argmin(dist[both, same])]])
        distance = math.nan if same is None else float(dist[g, same])
        vertebrae[lab] = {
            "name": vlabels.name_of(lab),
            "region": vlabels.region_of(lab),
            "identified": bool(nearest == lab and distance <= radius),
            "distance": distance,
            "nearest_gt_label": nearest,
        }
    return vertebrae


def _by_region(vertebrae: dict[int, dict]) -> dict:
    """{region: n_gt, identified, id_rate, l_error, n_without_prediction} of the per
    ground-truth rows of :func:`evaluate`."""
    regions = {}
    for region in vlabels.REGIONS:
        rows = [v for v in vertebrae.values() if v["region"] == region]
        d = [v["distance"] for v in rows if not math.isnan(v["distance"])]
        regions[region] = {
            "n_gt": len(rows),
            "identified": sum(v["identified"] for v in rows),
            "id_rate": _rate(sum(v["identified"] for v in rows), len(rows)),
            "l_error": _mean(d),
            "n_without_prediction": len(rows) - len(d),
        }
    return regions


def _per_prediction(dist: np.ndarray, g_lab: np.ndarray, p_lab: np.ndarray, radius: float
                    ) -> tuple[int, list[float]]:
    """The paper code's variant: each prediction against its closest ground truth.

    Args:
        dist: (G, P) distances, mm.

    Returns:
        (predictions within ``radius`` of a ground truth of their label, the distances
        of all predictions within ``radius`` of any ground truth).
    """
    correct, near = 0, []
    for p, lab in enumerate(p_lab.tolist()):
        if not len(g_lab):
            continue
        g = int(np.argmin(dist[:, p]))
        if dist[g, p] < radius:
            near.append(float(dist[g, p]))
            correct += int(g_lab[g] == lab)
    return correct, near


def error_summary(distances) -> dict:
    """Mean, median, quartiles and share within 2 mm of distances in mm (NaN when empty).

    ``l_error`` is a mean that one mislabelled vertebra (a level away, ~25 mm) moves as
    much as ten well-placed ones; this summary of the *identified* vertebrae says how
    close the centroids are where the labels are right (its mean is the ``l_error`` the
    same centroids would give if every label were right).

    Example:
        >>> error_summary([1.0, 2.0, 3.0, 4.0, 10.0])
        {'n': 5, 'mean': 4.0, 'median': 3.0, 'q25': 2.0, 'q75': 4.0, 'within_2mm': 0.4}
    """
    d = np.asarray(list(distances), dtype=np.float64)
    if d.size == 0:
        return {"n": 0, "mean": math.nan, "median": math.nan, "q25": math.nan,
                "q75": math.nan, "within_2mm": math.nan}
    q25, median, q75 = np.percentile(d, [25, 50, 75])
    return {"n": int(d.size), "mean": float(d.mean()), "median": float(median),
            "q25": float(q25), "q75": float(q75), "within_2mm": float(np.mean(d <= 2.0))}


def _scan_sums(results: list[dict]) -> np.ndarray:
    """(S, 4) float64 per scan: identified, n_gt, sum of same-label distances (mm), count."""
    rows = []
    for r in results:
        d = [v["distance"] for v in r["vertebrae"].values() if not math.isnan(v["distance"])]
        rows.append((r["identified"], r["n_gt"], sum(d), len(d)))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def _rates(total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled (id rate, l_error in mm) of (..., 4) summed :func:`_scan_sums` rows."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return total[..., 0] / total[..., 1], total[..., 2] / total[..., 3]


def _picks(seed: int, samples: int, scans: int) -> np.ndarray:
    """(B, S) scan indices of the bootstrap resamples."""
    return np.random.default_rng(seed).integers(0, scans, (int(samples), scans))


def _interval(values: np.ndarray, level: float) -> list[float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [math.nan, math.nan]
    tail = 50.0 * (1.0 - level)
    return [float(x) for x in np.percentile(finite, [tail, 100.0 - tail])]


def _check_bootstrap(samples: int, level: float) -> None:
    if int(samples) < 1 or not 0 < level < 1:
        raise VertebraError(f"need samples >= 1 and 0 < level < 1, got {samples}, {level}")


def bootstrap(results: list[dict], *, samples: int = 2000, level: float = 0.95,
              seed: int = 0) -> dict:
    """Percentile bootstrap intervals of the pooled id rate and l_error, resampling scans.

    Args:
        results: per-scan :func:`evaluate` results (S of them).
        samples: bootstrap resamples B.
        level: coverage of the interval (0.95: the 2.5th to 97.5th percentile).
        seed: seed of the resampling (the same inputs give the same interval).

    Returns:
        {"id_rate": [lo, hi], "l_error": [lo, hi] (mm), "samples", "level"}.

    Example:
        >>> same = [evaluate({20: (0, 0, 1)}, {20: (0, 0, 0)})] * 5
        >>> bootstrap(same)["id_rate"], bootstrap(same)["l_error"]
        ([1.0, 1.0], [1.0, 1.0])
    """
    _check_bootstrap(samples, level)
    sums = _scan_sums(results)
    if not len(sums):
        raise VertebraError("nothing to resample: no results")
    id_rate, l_error = _rates(sums[_picks(seed, samples, len(sums))].sum(axis=1))
    return {"id_rate": _interval(id_rate, level), "l_error": _interval(l_error, level),
            "samples": int(samples), "level": float(level)}


def compare(results: list[dict], baseline: list[dict], *, samples: int = 2000,
            level: float = 0.95, seed: int = 0) -> dict:
    """Paired bootstrap of ``results - baseline``: two predictions of the same S scans.

    Both lists hold :func:`evaluate` results in the same scan order. Each resample draws
    the same scans for both, so what the scans have in common (an easy or a hard scan)
    cancels and only the difference between the predictions is left.

    Returns:
        {"id_rate": difference (rate units, +0.01 is one point better), "id_rate_interval":
        [lo, hi], "l_error": difference in mm (negative is better), "l_error_interval",
        "samples", "level", "n_scans"}.
    """
    _check_bootstrap(samples, level)
    a, b = _scan_sums(results), _scan_sums(baseline)
    if len(a) != len(b) or not len(a):
        raise VertebraError(f"compare needs results for the same scans, got {len(a)} and "
                            f"{len(b)}")
    if not np.array_equal(a[:, 1], b[:, 1]):
        raise VertebraError("compare needs results for the same scans: their ground-truth "
                            "counts differ")
    picks = _picks(seed, samples, len(a))
    (ida, lea), (idb, leb) = _rates(a[picks].sum(axis=1)), _rates(b[picks].sum(axis=1))
    (pa, qa), (pb, qb) = _rates(a.sum(axis=0)), _rates(b.sum(axis=0))
    return {"id_rate": float(pa - pb), "id_rate_interval": _interval(ida - idb, level),
            "l_error": float(qa - qb), "l_error_interval": _interval(lea - leb, level),
            "samples": int(samples), "level": float(level), "n_scans": len(a)}


def pool(results: list[dict]) -> dict:
    """Pool per-scan :func:`evaluate` results over all vertebrae (not a mean of scan rates).

    Returns:
        {n_scans, n_gt, n_pred, identified, id_rate, l_error, n_without_prediction,
        id_rate_per_prediction, identified_error (:func:`error_summary` of the identified
        vertebrae), interval (:func:`bootstrap` over the scans, 95 %), regions: {region:
        {n_gt, identified, id_rate, l_error}}}.
    """
    if not results:
        raise VertebraError("nothing to pool: no results")
    n_gt = sum(r["n_gt"] for r in results)
    n_pred = sum(r["n_pred"] for r in results)
    identified = sum(r["identified"] for r in results)
    dists = [v["distance"] for r in results for v in r["vertebrae"].values()
             if not math.isnan(v["distance"])]
    correct = sum(r["correct_per_prediction"] for r in results)
    regions = {}
    for region in vlabels.REGIONS:
        rows = [v for r in results for v in r["vertebrae"].values() if v["region"] == region]
        d = [v["distance"] for v in rows if not math.isnan(v["distance"])]
        regions[region] = {
            "n_gt": len(rows),
            "identified": sum(v["identified"] for v in rows),
            "id_rate": _rate(sum(v["identified"] for v in rows), len(rows)),
            "l_error": _mean(d),
        }
    return {
        "n_scans": len(results),
        "n_gt": n_gt,
        "n_pred": n_pred,
        "identified": identified,
        "id_rate": _rate(identified, n_gt),
        "l_error": _mean(dists),
        "n_without_prediction": n_gt - len(dists),
        "id_rate_per_prediction": _rate(correct, n_pred),
        "identified_error": error_summary(
            v["distance"] for r in results for v in r["vertebrae"].values() if v["identified"]),
        "interval": bootstrap(results),
        "regions": regions,
    }
