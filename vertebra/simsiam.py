"""Multi-view contrastive pre-training: SimSiam with two DRR views of one CT as a pair.

SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021) learns an
encoder ``f`` by making a predictor ``h`` match the projection of the *other* view, with a
stop-gradient on the target::

    z_a = g(pool(f(x_a))),  p_a = h(z_a)                  (a = 1, 2)
    L   = D(p_1, sg(z_2)) / 2 + D(p_2, sg(z_1)) / 2,      D(p, z) = -cos(p, z)

``L`` lies in [-1, 1]. Wu et al. (MICCAI 2023) take the positive pair from two random DRR
views of the *same* CT instead of two augmentations of one image, so the encoder learns
what stays the same as the viewpoint changes: the vertebrae. Their settings, the defaults
here: ResNet-50, SGD with learning rate 0.0125 (SimSiam's 0.05 x batch 64 / 256) decayed by
a cosine, weight decay 1e-4, momentum 0.9, batch 64.

``f`` is the same timm ``features_only`` module the U-Nets use (:func:`vertebra.models.
create_encoder`), so the encoder checkpoint ``{"encoder", "state_dict", "config"}`` that
:func:`pretrain` writes loads with ``create_model(..., pretrained=path)``. The projector
``g`` is SimSiam's three linear layers with batch norm (no affine on the output), the
predictor ``h`` a two-layer bottleneck. Augmentation beyond the change of view belongs to
the data layer.

Example:
    >>> import torch
    >>> drrs = torch.rand(3, 4, 32, 32)  # 3 CTs x 4 views, normalised DRRs
    >>> res = pretrain(drrs, steps=2, encoder="resnet10t", batch_size=4, dim=32, pred_dim=8)
    >>> len(res.losses), -1.0 <= res.losses[-1] <= 1.0
    (2, True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vertebra.errors import VertebraError
from vertebra.models import create_encoder

#: Paper / SimSiam defaults.
LR = 0.0125
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
BATCH_SIZE = 64


class SimSiam(nn.Module):
    """Encoder + projector + predictor.

    Args:
        encoder: timm model name (``features_only``); the paper uses "resnet50".
        in_chans: image channels (1 for DRRs).
        dim: projection (output) width; SimSiam uses 2048.
        pred_dim: predictor bottleneck width; SimSiam uses 512.
    """

    def __init__(
        self, encoder: str = "resnet50", in_chans: int = 1, dim: int = 2048, pred_dim: int = 512
    ) -> None:
        super().__init__()
        if dim < 1 or pred_dim < 1:
            raise VertebraError(f"dim and pred_dim must be >= 1, got {dim}, {pred_dim}")
        self.encoder_name = encoder
        self.in_chans = int(in_chans)
        self.encoder = create_encoder(encoder, self.in_chans)
        width = self.encoder.feature_info.channels()[-1]
        self.projector = nn.Sequential(
            nn.Linear(width, width, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
            nn.Linear(width, width, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
            nn.Linear(width, dim, bias=False),
            nn.BatchNorm1d(dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim),
        )

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> z (B, dim): global-average-pooled last stage, projected."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise VertebraError(
                f"expected views of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}"
            )
        return self.projector(self.encoder(x)[-1].mean(dim=(-2, -1)))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        """Two (B, C, H, W) views -> (p1, p2, z1, z2), each (B, dim); z detached (stop-grad)."""
        z1, z2 = self.project(x1), self.project(x2)
        return self.predictor(z1), self.predictor(z2), z1.detach(), z2.detach()


def simsiam_loss(p1, p2, z1, z2) -> torch.Tensor:
    """Symmetric negative cosine with stop-gradient on the targets: (B, d) x 4 -> scalar.

    ``-(cos(p1, sg(z2)).mean() + cos(p2, sg(z1)).mean()) / 2``, in [-1, 1].
    """
    return -0.5 * (
        F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
        + F.cosine_similarity(p2, z1.detach(), dim=-1).mean()
    )


def make_optimizer(
    model: SimSiam,
    lr: float = LR,
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
    fix_pred_lr: bool = False,
) -> torch.optim.SGD:
    """SGD over the model; each group records ``base_lr`` and ``fix_lr`` for the schedule.

    ``fix_pred_lr`` keeps the predictor at the base rate (SimSiam's ``--fix-pred-lr``).
    """
    pred = list(model.predictor.parameters())
    pred_ids = {id(p) for p in pred}
    rest = [p for p in model.parameters() if id(p) not in pred_ids]
    groups = [
        {"params": rest, "base_lr": lr, "fix_lr": False},
        {"params": pred, "base_lr": lr, "fix_lr": bool(fix_pred_lr)},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def cosine_lr(base_lr: float, step: int, steps: int) -> float:
    """Cosine decay: ``base_lr * (1 + cos(pi * step / steps)) / 2``; base at 0, 0 at steps."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))


def set_lr(optimizer: torch.optim.Optimizer, step: int, steps: int) -> None:
    """Apply :func:`cosine_lr` to every group not marked ``fix_lr``."""
    for group in optimizer.param_groups:
        base = group.get("base_lr", group["lr"])
        group["lr"] = base if group.get("fix_lr") else cosine_lr(base, step, steps)


def pretrain_step(model: SimSiam, optimizer, x1: torch.Tensor, x2: torch.Tensor) -> float:
    """One SGD step on a batch of pairs (B, C, H, W) x 2 (B >= 2); returns the loss."""
    if x1.shape != x2.shape:
        raise VertebraError(f"the two views differ in shape: {tuple(x1.shape)} vs "
                            f"{tuple(x2.shape)}")
    if x1.ndim != 4 or x1.shape[0] < 2:
        raise VertebraError(f"a pair batch needs shape (B >= 2, C, H, W), got {tuple(x1.shape)}")
    model.train()
    loss = simsiam_loss(*model(x1, x2))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def sample_view_pairs(
    drrs, batch_size: int = BATCH_SIZE, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of positive pairs: two different random views of one random CT.

    Args:
        drrs: (N, K, H, W) normalised DRRs (N CTs, K >= 2 views each), torch or NumPy.
        batch_size: pairs per batch.
        generator: torch random generator (seeded for reproducibility).

    Yields:
        (x1, x2), each (batch_size, 1, H, W) float32; ``x1[b]`` and ``x2[b]`` are distinct
        views of the same CT.
    """
    stack = torch.as_tensor(np.asarray(drrs) if not isinstance(drrs, torch.Tensor) else drrs)
    if stack.ndim != 4 or stack.shape[1] < 2 or stack.shape[0] < 1:
        raise VertebraError(
            f"drrs must have shape (N CTs, K >= 2 views, H, W), got {tuple(stack.shape)}"
        )
    if batch_size < 1:
        raise VertebraError(f"batch_size must be >= 1, got {batch_size}")
    stack = stack.float()
    n, k = stack.shape[:2]
    while True:
        ct = torch.randint(n, (batch_size,), generator=generator)
        a = torch.randint(k, (batch_size,), generator=generator)
        b = (a + torch.randint(1, k, (batch_size,), generator=generator)) % k  # b != a
        yield stack[ct, a][:, None], stack[ct, b][:, None]


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns.

    Attributes:
        model: the trained :class:`SimSiam` (on the training device).
        losses: loss of every step taken.
        checkpoint: path of the saved encoder checkpoint, or None.
        config: the settings, as stored in the checkpoint.
    """

    model: SimSiam
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)


def pretrain(
    source,
    steps: int,
    encoder: str = "resnet50",
    out: str | Path | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
    fix_pred_lr: bool = False,
    dim: int = 2048,
    pred_dim: int = 512,
    in_chans: int = 1,
    device: str | torch.device = "cpu",
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> PretrainResult:
    """Multi-view SimSiam pre-training for ``steps`` SGD steps with cosine decay.

    Args:
        source: where the pairs come from, one of
            * an (N, K, H, W) array/tensor of DRRs (N CTs, K views): batches are drawn by
              :func:`sample_view_pairs`;
            * a map-style dataset (``len`` and ``[i]``) whose items are pairs of (C, H, W)
              views of one CT (told apart from a list of batches by the views' 3 dims):
              batched by a shuffling ``DataLoader`` (last partial batch
              dropped);
            * an iterable of ``(x1, x2)`` batches, each (B, C, H, W); re-iterated when it
              ends if it can be (a list, a DataLoader), else training stops early with a
              warning.
        steps: SGD steps (>= 1).
        encoder: timm encoder name.
        out: where to save the encoder checkpoint (``.pt``); None to skip saving.
        batch_size: pairs per step for the first two kinds of source.
        lr, momentum, weight_decay, fix_pred_lr: optimiser settings (see
            :func:`make_optimizer`).
        dim, pred_dim: projector and predictor widths.
        in_chans: image channels.
        device: torch device.
        seed: seeds model initialisation and sampling.
        callback: called as ``callback(step, loss)`` after every step.

    Returns:
        :class:`PretrainResult`.
    """
    if steps < 1:
        raise VertebraError(f"steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    model = SimSiam(encoder, in_chans=in_chans, dim=dim, pred_dim=pred_dim).to(device)
    optimizer = make_optimizer(model, lr, momentum, weight_decay, fix_pred_lr)
    config = {"method": "simsiam-multiview", "steps": int(steps),
              "batch_size": int(batch_size), "lr": lr, "momentum": momentum,
              "weight_decay": weight_decay, "fix_pred_lr": bool(fix_pred_lr),
              "dim": int(dim), "pred_dim": int(pred_dim), "in_chans": int(in_chans),
              "seed": int(seed)}
    result = PretrainResult(model=model, config=config)
    batches = _batches(source, batch_size, generator)
    for step in range(steps):
        try:
            x1, x2 = next(batches)
        except StopIteration:
            warnings.warn(
                f"the pair source ran out after {step} of {steps} steps", stacklevel=2
            )
            break
        set_lr(optimizer, step, steps)
        loss = pretrain_step(model, optimizer, x1.to(device).float(), x2.to(device).float())
        result.losses.append(loss)
        if callback is not None:
            callback(step, loss)
    config["steps_done"] = len(result.losses)
    config["final_loss"] = result.losses[-1] if result.losses else None
    if out is not None:
        result.checkpoint = save_encoder(model, out, config)
    return result


def save_encoder(model: SimSiam, path: str | Path, config: dict[str, Any] | None = None) -> Path:
    """Write ``{"encoder": name, "in_chans", "state_dict", "config"}`` for the U-Nets."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()}
    torch.save(
        {
            "format": "vertebra.simsiam-encoder",
            "encoder": model.encoder_name,
            "in_chans": model.in_chans,
            "state_dict": state,
            "config": dict(config or {}),
        },
        path,
    )
    return path


def _batches(source, batch_size: int, generator) -> Iterator[tuple[Any, Any]]:
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return sample_view_pairs(source, batch_size, generator)
    if hasattr(source, "__getitem__") and hasattr(source, "__len__") and _item_ndim(source) == 3:
        from torch.utils.data import DataLoader

        if len(source) < batch_size:
            raise VertebraError(
                f"the dataset has {len(source)} pairs, fewer than one batch of {batch_size}"
            )
        loader = DataLoader(
            source, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator
        )
        return _repeat(loader)
    if isinstance(source, Iterable):
        return _repeat(source)
    raise VertebraError(
        f"cannot draw view pairs from a {type(source).__name__}; pass an (N, K, H, W) array,"
        " a dataset of pairs or an iterable of (x1, x2) batches"
    )


def _item_ndim(sequence) -> int | None:
    """Dimensions of the first view of the first item: 3 for a dataset of single pairs."""
    try:
        return int(np.ndim(sequence[0][0])) if len(sequence) else None
    except (TypeError, IndexError, KeyError):
        return None


def _repeat(iterable: Iterable) -> Iterator:
    while True:
        it = iter(iterable)
        empty = True
        for item in it:
            empty = False
            yield item
        if empty or it is iterable:  # a one-shot iterator cannot be re-read
            return
