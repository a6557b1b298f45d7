"""Multi-view SimSiam pre-training on training data (``vertebra pretrain``).

Pairs are two different views of one CT (:class:`~vertebra.training.dataset.PairDataset`:
stored views of a prerender cache, or views rendered on the fly at jittered angles),
cropped and augmented independently; :func:`vertebra.simsiam.pretrain` does the SimSiam
optimisation (paper settings: SGD lr 0.0125 with cosine decay, momentum 0.9, weight
decay 1e-4, batch 64). The encoder checkpoint it writes loads into both U-Nets with
``--init simsiam:PATH`` (or ``create_model(..., pretrained=PATH)``); its ``config``
records the views and crops used.
"""

from __future__ import annotations

from pathlib import Path

from vertebra.errors import VertebraError
from vertebra.training.config import TrainConfig


def pretrain_views(data, out: str | Path | None, config: TrainConfig, *, steps: int = 1000,
                   batch_size: int = 64, lr: float | None = None, dim: int = 2048,
                   pred_dim: int = 512, callback=None):
    """SimSiam with two DRR views of the same CT as the positive pair.

    Args:
        data: ``phantoms:N``, a VerSe folder, a prerender cache (str / path) or a source.
        out: encoder checkpoint path, written atomically; None to skip saving.
        config: supplies encoder, crop size, augmentation, views, device, seed, workers.
        steps: SGD steps.
        batch_size: pairs per step (paper 64).
        lr: base learning rate (default the paper's 0.0125).
        dim, pred_dim: projector / predictor widths (SimSiam: 2048 / 512).
        callback: ``callback(step, loss)`` after every step.

    Returns:
        :class:`vertebra.simsiam.PretrainResult`.
    """
    from drrkit.io import atomic_write
    from vertebra import simsiam
    from vertebra.training.dataset import PairDataset, make_loader
    from vertebra.training.sources import open_data
    from vertebra.training.trainer import _adopt_cache_settings, resolve_device

    if steps < 1 or batch_size < 2:
        raise VertebraError(f"need steps >= 1 and batch_size >= 2, got {steps}, {batch_size}")
    if isinstance(data, (str, Path)):
        data = open_data(data, cache=config.ct_cache)
    config = _adopt_cache_settings(config, data, targets=False)
    pairs = PairDataset(data, config)
    loader = make_loader(pairs, batch_size, workers=config.workers)
    res = simsiam.pretrain(
        loader, steps, encoder=config.encoder, out=None, batch_size=batch_size,
        lr=simsiam.LR if lr is None else lr, dim=dim, pred_dim=pred_dim,
        device=resolve_device(config.device), seed=config.seed, callback=callback)
    res.config.update({"views": pairs.view_config.to_dict(), "crop_size": config.crop_size,
                       "augment": config.to_dict()["augment"]})
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp: simsiam.save_encoder(res.model, tmp, res.config))
        res.checkpoint = out
    return res
