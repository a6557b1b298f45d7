"""Per-view scores of a trained U-Net on held-out rendered views.

* identification: pixel accuracy inside the ground-truth squares (argmax class equals
  the square's class), and square accuracy (the majority class over a square's pixels
  equals its class);
* localization: 2-D peak error in mm at the isocentre: heatmap peaks found with
  :func:`vertebra.peaks.density_peaks`; for every visible ground-truth centroid, the
  distance to the nearest peak; detection rate within ``radius_mm``; peaks farther than
  ``radius_mm`` from every centroid count as false positives.

Views are fed whole (zero-padded at the bottom and right to a multiple of 32 pixels,
then cropped back), as at inference.
"""

from __future__ import annotations

import numpy as np
import torch


def predict(model: torch.nn.Module, images: np.ndarray, *, batch_size: int = 4,
            device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Run a U-Net on whole views.

    Args:
        model: a U-Net from :func:`vertebra.models.create_model`.
        images: (V, H, W) float32 network inputs.
        batch_size: views per forward pass.
        device: torch device.

    Returns:
        {"heatmap": (V, H, W) float32} and/or {"probs": (V, C, H, W) float32 softmax}.
    """
    images = np.asarray(images, dtype=np.float32)
    v, h, w = images.shape
    ph, pw = -h % 32, -w % 32
    was_training = model.training
    model.eval()
    heat, probs = [], []
    with torch.no_grad():
        for s in range(0, v, batch_size):
            x = torch.from_numpy(np.pad(images[s:s + batch_size], ((0, 0), (0, ph), (0, pw))))
            out = model(x[:, None].to(device))
            if out.heatmap is not None:
                heat.append(out.heatmap[:, 0, :h, :w].float().cpu().numpy())
            if out.logits is not None:
                probs.append(out.logits[:, :, :h, :w].float().softmax(1).cpu().numpy())
    model.train(was_training)
    res = {}
    if heat:
        res["heatmap"] = np.concatenate(heat)
    if probs:
        res["probs"] = np.concatenate(probs)
    return res


def identification_scores(model, rendered, **kwargs) -> dict:
    """Pixel and square accuracy over every view of every :class:`RenderedViews`.

    Returns:
        {"pixel_accuracy", "square_accuracy", "pixels", "squares"}.
    """
    correct = total = sq_ok = sq_total = 0
    for rv in rendered:
        pred = predict(model, rv.images, **kwargs)["probs"].argmax(1)
        gt = rv.id_maps.astype(np.int64)
        inside = gt > 0
        correct += int((pred[inside] == gt[inside]).sum())
        total += int(inside.sum())
        for v in range(len(gt)):
            for c in np.unique(gt[v][gt[v] > 0]):
                votes = np.bincount(pred[v][gt[v] == c], minlength=int(c) + 1)
                sq_ok += int(votes.argmax() == c)
                sq_total += 1
    return {"pixel_accuracy": correct / max(total, 1), "square_accuracy": sq_ok / max(sq_total, 1),
            "pixels": total, "squares": sq_total}


def localization_scores(model, rendered, *, threshold: float = 0.3,
                        min_distance_mm: float = 10.0, radius_mm: float = 10.0,
                        **kwargs) -> dict:
    """2-D peak errors over every view of every :class:`RenderedViews`.

    Returns:
        {"median_error_mm", "mean_error_mm" (nearest peak to each visible centroid,
        centroids without any peak left out), "detection_rate" (share of centroids with
        a peak within ``radius_mm``), "false_positives_per_view", "centroids", "views"}.
    """
    from vertebra.peaks import density_peaks

    errors, found, fps, n_views = [], 0, 0, 0
    n_gt = 0
    for rv in rendered:
        heat = predict(model, rv.images, **kwargs)["heatmap"]
        for v in range(len(heat)):
            mm = float(np.mean(rv.pixel_mm[v]))
            peaks = density_peaks(heat[v], mm, threshold, min_distance_mm)
            gt = rv.pixels[v][rv.visible[v]]
            n_gt += len(gt)
            n_views += 1
            if len(peaks) == 0:
                continue
            d = np.linalg.norm((gt[:, None] - peaks.pixels[None]) * rv.pixel_mm[v], axis=-1)
            if len(gt):
                nearest = d.min(axis=1)
                errors.extend(nearest.tolist())
                found += int((nearest <= radius_mm).sum())
                fps += int((d.min(axis=0) > radius_mm).sum())
            else:
                fps += len(peaks)
    errors = np.asarray(errors)
    return {"median_error_mm": float(np.median(errors)) if len(errors) else float("nan"),
            "mean_error_mm": float(errors.mean()) if len(errors) else float("nan"),
            "detection_rate": found / max(n_gt, 1),
            "false_positives_per_view": fps / max(n_views, 1),
            "centroids": n_gt, "views": n_views}
