"""Training losses: heatmaps (regression or focal), and cross-entropy + gamma * Sequence Loss.

Heatmaps: :func:`heatmap_loss` regresses the Gaussian targets (the paper);
:func:`focal_heatmap_loss` treats the head as per-pixel logits with the penalty-reduced
focal loss of CornerNet / CenterNet (Law & Deng 2018; Zhou et al. 2019), which gives sharp
peaks after far fewer steps on small CPU runs.

Sequence Loss in training (Wu et al., Eq. 1-3). For each training image:

* rows: the ground-truth vertebrae whose identification square appears in the image,
  cranio-caudal (the classes present in the target map, which are in anatomical order);
* ``P[i]``: the mean softmax over the pixels of vertebra ``i``'s square (pixels whose
  target is its class), restricted to the columns of the spine's own chain
  (:func:`vertebra.labels.chain_classes`): a spine without T13 has no T13 column, so T12
  and L1 are neighbours; L6 stays as the last column;
* ``L_s`` from :func:`vertebra.sequence.sequence_loss`, averaged over the images that
  show at least one vertebra (images without any contribute nothing).

Images with and without T13 have different chains, so the DP runs once per chain type
(at most twice per batch) on padded rows with ``lengths``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vertebra import labels as vlabels
from vertebra.errors import VertebraError
from vertebra.sequence import SequenceDP


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, fg_weight: float = 0.0
                 ) -> torch.Tensor:
    """Weighted mean squared error ``mean((1 + fg_weight * target) * (pred - target)^2)``.

    Args:
        pred: (B, 1, H, W) raw network heatmap.
        target: (B, 1, H, W) Gaussian heatmap in [0, 1].
        fg_weight: extra weight of pixels near a centroid (0 = plain MSE).

    Returns:
        scalar tensor (float32).
    """
    if pred.shape != target.shape:
        raise VertebraError(f"heatmap shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    err = (pred.float() - target.float()) ** 2
    if fg_weight:
        err = err * (1.0 + fg_weight * target.float())
    return err.mean()


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, *, positive: float = 0.9,
                       alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """Penalty-reduced pixel focal loss on heatmap logits, per positive pixel.

    With ``p = sigmoid(logits)`` and ``t`` the Gaussian target, pixels with
    ``t >= positive`` (the few nearest each centroid; targets are sampled at sub-pixel
    centroids, so the peak pixel is below 1) are positives with loss
    ``-(1 - p)^alpha log p``; all others are negatives with loss
    ``-(1 - t)^beta p^alpha log(1 - p)``, so pixels near a centroid are barely penalised.
    The sum is divided by the number of positives (at least 1).

    Args:
        logits: (B, 1, H, W) raw heatmap head.
        target: (B, 1, H, W) Gaussian heatmap in [0, 1].
        positive: target value from which a pixel is a positive.
        alpha, beta: focusing exponents (CenterNet: 2 and 4).

    Returns:
        scalar tensor (float32).
    """
    if logits.shape != target.shape:
        raise VertebraError(f"heatmap shapes differ: {tuple(logits.shape)} vs "
                            f"{tuple(target.shape)}")
    x, t = logits.float(), target.float()
    p = torch.sigmoid(x)
    pos = t >= positive
    # log p = logsigmoid(x), log(1 - p) = logsigmoid(-x): stable for large |x|
    loss_pos = -((1 - p) ** alpha * F.logsigmoid(x))[pos].sum()
    loss_neg = -((1 - t) ** beta * p ** alpha * F.logsigmoid(-x))[~pos].sum()
    return (loss_pos + loss_neg) / pos.sum().clamp(min=1)


class SquareRows(NamedTuple):
    """Per-image Sequence Loss rows, padded.

    Attributes:
        probs: (B, R, 26) mean softmax of classes 1..26 over each row's square.
        classes: (B, R) int64 class of each row (0 for padding).
        lengths: (B,) int64 rows per image (0 for an image without vertebrae).
    """

    probs: torch.Tensor
    classes: torch.Tensor
    lengths: torch.Tensor


def square_rows(probs: torch.Tensor, id_maps: torch.Tensor) -> SquareRows:
    """Mean class probabilities over every vertebra square present in each image.

    Args:
        probs: (B, C, H, W) softmax over C = 27 classes (0 background).
        id_maps: (B, H, W) int64 target classes.

    Returns:
        :class:`SquareRows` with rows in class (= spine) order.
    """
    b, c, h, w = probs.shape
    if id_maps.shape != (b, h, w):
        raise VertebraError(f"id_maps must be (B, H, W) = {(b, h, w)}, got {tuple(id_maps.shape)}")
    ids = id_maps.clamp(0, c - 1)
    fg = ids > 0                                                       # (B, H, W)
    # row of every square pixel: image * (C-1) + class - 1; only square pixels are summed
    row = (torch.arange(b, device=ids.device)[:, None, None] * (c - 1) + ids - 1)[fg]
    values = probs.permute(0, 2, 3, 1)[fg][:, 1:]                      # (P, C-1)
    sums = probs.new_zeros(b * (c - 1), c - 1).index_add(0, row, values).view(b, c - 1, c - 1)
    counts = torch.bincount(row, minlength=b * (c - 1)).view(b, c - 1).to(probs.dtype)
    present = counts > 0
    lengths = present.sum(dim=1)
    r = max(int(lengths.max()), 1) if b else 1
    # present rows first, in class order (a stable sort on "absent")
    order = torch.sort((~present).to(torch.int8), dim=1, stable=True).indices[:, :r]
    rows = sums.gather(1, order[..., None].expand(-1, -1, c - 1))
    rows = rows / counts.gather(1, order).clamp(min=1)[..., None]
    classes = torch.where(present.gather(1, order), order + 1, torch.zeros_like(order))
    return SquareRows(rows, classes, lengths)


def sequence_term(probs: torch.Tensor, id_maps: torch.Tensor, t13: torch.Tensor,
                  dp: SequenceDP) -> torch.Tensor:
    """Mean Sequence Loss over the images that show a vertebra (0 if none does).

    Args:
        probs: (B, C, H, W) softmax, C = 27 or 28 (with the sacrum class, which has no
            row: the Sequence Loss runs over the vertebrae).
        id_maps: (B, H, W) target classes.
        t13: (B,) bool, whether each image's spine has a T13 (chooses its chain).
        dp: the Sequence DP (alpha, beta).

    Returns:
        scalar tensor.
    """
    vertebrae = vlabels.NUM_CLASSES  # background + the 26 vertebrae; no sacrum row
    ids = torch.where(id_maps < vertebrae, id_maps, torch.zeros_like(id_maps))
    rows = square_rows(probs[:, :vertebrae].float(), ids)
    t13 = t13.to(torch.bool).reshape(-1)
    losses = []
    for flag in (False, True):
        sel = (rows.lengths > 0) & (t13 == flag)
        if not bool(sel.any()):
            continue
        cols = torch.as_tensor(vlabels.chain_classes(flag) - 1, device=probs.device)
        p = rows.probs[sel][..., cols]
        losses.append(dp.loss(p, rows.lengths[sel]))
    if not losses:
        return probs.sum() * 0.0
    return torch.cat(losses).mean()


class IdentificationLoss(NamedTuple):
    """Total, cross-entropy and sequence parts (scalar tensors)."""

    total: torch.Tensor
    ce: torch.Tensor
    seq: torch.Tensor


def identification_loss(logits: torch.Tensor, id_maps: torch.Tensor, t13: torch.Tensor, *,
                        gamma: float = 1.0, dp: SequenceDP | None = None,
                        sequence: bool = True, background_weight: float = 1.0
                        ) -> IdentificationLoss:
    """Pixel cross-entropy + ``gamma`` * Sequence Loss.

    Args:
        logits: (B, C, H, W), C = 27, or 28 with the sacrum class.
        id_maps: (B, H, W) int64 targets (0 background); classes the network does not
            have (the sacrum's 27 for C = 27) count as background.
        t13: (B,) bool.
        gamma: Sequence Loss weight (paper 1).
        dp: Sequence DP (default the paper's alpha 0.1, beta 0.8).
        sequence: include the Sequence Loss (False: cross-entropy only; ``seq`` is still
            computed for logging, without gradient).
        background_weight: cross-entropy class weight of the background (others 1); the
            weighted mean divides by the summed weights of the pixels.
    """
    id_maps = torch.where(id_maps < logits.shape[1], id_maps, torch.zeros_like(id_maps))
    weight = None
    if background_weight != 1.0:
        weight = torch.ones(logits.shape[1], device=logits.device)
        weight[0] = background_weight
    ce = F.cross_entropy(logits.float(), id_maps, weight=weight)
    probs = logits.float().softmax(dim=1)
    dp = dp or SequenceDP()
    if sequence:
        seq = sequence_term(probs, id_maps, t13, dp)
        return IdentificationLoss(ce + gamma * seq, ce, seq)
    with torch.no_grad():
        seq = sequence_term(probs, id_maps, t13, dp)
    return IdentificationLoss(ce, ce, seq)
