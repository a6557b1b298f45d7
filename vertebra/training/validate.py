"""Per-view scores of a trained U-Net on held-out rendered views.

* identification: pixel accuracy inside the ground-truth squares (argmax class equals
  the square's class); square accuracy (the argmax of the square's mean softmax equals
  its class), also within one level, and its confusion matrix (true class x argmax
  class, which shows levels a network never learned); and sequence accuracy: the squares of a view, in
  spine order, relabelled by the best path of the Sequence DP
  (:class:`vertebra.sequence.SequenceDP`) over their mean softmax, on the spine's own
  chain of classes -- what per-view label correction would give;
* localization: 2-D peak error in mm at the isocentre: heatmap peaks found with
  :func:`vertebra.peaks.density_peaks`; for every visible ground-truth centroid, the
  distance to the nearest peak; a centroid with a peak within ``radius_mm`` is
  detected (the error statistics are over detected centroids); peaks farther than
  ``radius_mm`` from every centroid count as false positives.

Views are fed whole (zero-padded at the bottom and right to a multiple of 32 pixels,
then cropped back), as at inference.
"""

from __future__ import annotations

import numpy as np
import torch


def predict(model: torch.nn.Module, images: np.ndarray, *, batch_size: int = 4,
            device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Run a U-Net on whole views (:func:`vertebra.pipeline.run_unet`, as at inference).

    Args:
        model: a U-Net from :func:`vertebra.models.create_model`.
        images: (V, H, W) float32 network inputs.
        batch_size: views per forward pass.
        device: torch device.

    Returns:
        {"heatmap": (V, H, W) float32 heatmap values} and/or {"probs": (V, C, H, W) float32
        softmax}.
    """
    from vertebra.pipeline import run_unet

    heat, probs = run_unet(model, images, batch_size=batch_size, device=device)
    res = {}
    if heat is not None:
        res["heatmap"] = heat
    if probs is not None:
        res["probs"] = probs
    return res


def identification_scores(model, rendered, **kwargs) -> dict:
    """Pixel, square and sequence accuracy over every view of every :class:`RenderedViews`.

    Returns:
        {"pixel_accuracy", "square_accuracy", "square_accuracy_pm1", "sequence_accuracy",
        "pixels", "squares", "confusion", "sacrum_squares", "sacrum_accuracy"};
        ``confusion`` is a (C, C) int64 array (C = :data:`vertebra.labels.NUM_CLASSES`, 0
        background, never counted): ``confusion[t, p]`` squares of vertebra class ``t``
        whose mean softmax has its argmax (over the vertebra classes) at ``p``. Sacrum
        squares (a network with the sacrum class) are scored apart: ``sacrum_accuracy`` is
        the share whose mean softmax is largest for the sacrum (background included;
        NaN without such squares or class).
    """
    from vertebra import labels as vlabels
    from vertebra.sequence import SequenceDP

    dp = SequenceDP()
    correct = total = 0
    sq_pm1 = seq_ok = 0
    confusion = np.zeros((vlabels.NUM_CLASSES, vlabels.NUM_CLASSES), dtype=np.int64)
    sacrum_total = sacrum_ok = 0
    for rv in rendered:
        probs = predict(model, rv.images, **kwargs)["probs"]
        pred = probs.argmax(1)
        gt = rv.id_maps.astype(np.int64)
        if probs.shape[1] > vlabels.SACRUM_CLASS:
            for v in range(len(gt)):
                square = gt[v] == vlabels.SACRUM_CLASS
                if square.any():
                    sacrum_total += 1
                    mean = probs[v][:, square].mean(axis=1)
                    sacrum_ok += int(np.argmax(mean) == vlabels.SACRUM_CLASS)
        gt = np.where(gt < vlabels.NUM_CLASSES, gt, 0)  # vertebrae only from here
        inside = gt > 0
        correct += int((pred[inside] == gt[inside]).sum())
        total += int(inside.sum())
        chain = vlabels.chain_classes(rv.t13)
        for v in range(len(gt)):
            classes = np.unique(gt[v][gt[v] > 0])
            if len(classes) == 0:
                continue
            rows = np.stack([probs[v][:vlabels.NUM_CLASSES, gt[v] == c].mean(axis=1)
                             for c in classes])  # (n, 27)
            best = rows[:, 1:].argmax(axis=1) + 1
            np.add.at(confusion, (classes, best), 1)
            sq_pm1 += int((np.abs(_rank(best, chain) - _rank(classes, chain)) <= 1).sum())
            path = dp.scores(rows[:, chain]).labels
            fixed = np.where(path >= 0, chain[np.clip(path, 0, None)], -1)
            seq_ok += int((fixed == classes).sum())
    sq_total = int(confusion.sum())
    n = max(sq_total, 1)
    return {"pixel_accuracy": correct / max(total, 1),
            "square_accuracy": int(np.trace(confusion)) / n,
            "square_accuracy_pm1": sq_pm1 / n, "sequence_accuracy": seq_ok / n,
            "pixels": total, "squares": sq_total, "confusion": confusion,
            "sacrum_squares": sacrum_total,
            "sacrum_accuracy": sacrum_ok / sacrum_total if sacrum_total else float("nan")}


def _rank(classes: np.ndarray, chain: np.ndarray) -> np.ndarray:
    """Position of each class in the chain (classes off the chain: their nearest slot)."""
    return np.searchsorted(chain, classes)


def localization_scores(model, rendered, *, threshold: float = 0.3,
                        min_distance_mm: float = 10.0, radius_mm: float = 10.0,
                        refine_mm: float | None = None, **kwargs) -> dict:
    """2-D peak errors over every view of every :class:`RenderedViews`.

    Returns:
        {"median_error_mm", "mean_error_mm", "p90_error_mm" (distance from each detected
        centroid to its nearest peak), "detection_rate" (share of visible centroids with
        a peak within ``radius_mm``), "false_positives_per_view", "centroids", "views"}.
    """
    from vertebra.peaks import density_peaks

    errors, found, fps, n_views = [], 0, 0, 0
    n_gt = 0
    for rv in rendered:
        heat = predict(model, rv.images, **kwargs)["heatmap"]
        for v in range(len(heat)):
            mm = float(np.mean(rv.pixel_mm[v]))
            peaks = density_peaks(heat[v], mm, threshold, min_distance_mm,
                                  refine_mm=refine_mm)
            gt = rv.pixels[v][rv.visible[v]]
            n_gt += len(gt)
            n_views += 1
            if len(peaks) == 0:
                continue
            d = np.linalg.norm((gt[:, None] - peaks.pixels[None]) * rv.pixel_mm[v], axis=-1)
            if len(gt):
                nearest = d.min(axis=1)
                errors.extend(nearest[nearest <= radius_mm].tolist())
                found += int((nearest <= radius_mm).sum())
                fps += int((d.min(axis=0) > radius_mm).sum())
            else:
                fps += len(peaks)
    errors = np.asarray(errors)
    return {"median_error_mm": float(np.median(errors)) if len(errors) else float("nan"),
            "mean_error_mm": float(errors.mean()) if len(errors) else float("nan"),
            "p90_error_mm": float(np.percentile(errors, 90)) if len(errors) else float("nan"),
            "detection_rate": found / max(n_gt, 1),
            "false_positives_per_view": fps / max(n_views, 1),
            "centroids": n_gt, "views": n_views}
