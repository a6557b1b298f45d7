"""Training checkpoints: :func:`vertebra.models.save_model` files with the run's context.

A checkpoint is the dict ``save_model`` writes (``model``, ``config``, ``state_dict``,
so :func:`vertebra.models.load_model` and ``create_model(pretrained=...)`` read it) plus::

    format        "vertebra.train-checkpoint"
    train_config  TrainConfig.to_dict()   (task, encoder, schedule, losses, ...)
    view_config   ViewConfig.to_dict()    (the C-arm geometry the network was trained on)
    labels        [{"name", "verse_id", "class_index", "region"}, ...]  the class table
    code_version  {"drrkit": version, "git": commit or None}
    iteration     optimiser steps taken
    optimizer     optimizer.state_dict()
    extra         anything else the caller adds (e.g. the final loss)

It is written atomically (a temporary file renamed onto the target), so an interrupted
save never leaves a truncated checkpoint. Everything in it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

from vertebra.errors import VertebraError

FORMAT = "vertebra.train-checkpoint"


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """{"drrkit": package version, "git": commit of the source tree or None}."""
    import drrkit

    commit = None
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=False)
        if res.returncode == 0:
            commit = res.stdout.strip() or None
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=here, capture_output=True, text=True, timeout=5,
                                   check=False)
            if commit and dirty.returncode == 0 and dirty.stdout.strip():
                commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"drrkit": drrkit.__version__, "git": commit}


def label_table() -> list[dict]:
    """The class table of :mod:`vertebra.labels` as plain dicts."""
    from vertebra import labels as vlabels

    return [{"name": v.name, "verse_id": v.verse_id, "class_index": v.class_index,
             "region": v.region} for v in vlabels.VERTEBRAE]


def save_checkpoint(path: str | Path, model, config, iteration: int, optimizer=None,
                    **extra: Any) -> Path:
    """Write a training checkpoint atomically (see the module docstring).

    Args:
        path: the ``.pt`` file.
        model: the U-Net (unwrapped from DDP).
        config: the run's :class:`TrainConfig`.
        iteration: optimiser steps taken.
        optimizer: its state is stored for resuming (optional).
        **extra: stored under ``extra``.
    """
    from drrkit.io import atomic_write
    from vertebra.models import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {
        "format": FORMAT,
        "train_config": config.to_dict(),
        "view_config": config.views.to_dict(),
        "labels": label_table(),
        "code_version": code_version(),
        "iteration": int(iteration),
        "extra": dict(extra),
    }
    if optimizer is not None:
        fields["optimizer"] = optimizer.state_dict()
    atomic_write(path, lambda tmp: save_model(model, tmp, **fields))
    return path


def read_training_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (CPU tensors)."""
    from vertebra.models import read_checkpoint

    ckpt = read_checkpoint(path)
    if ckpt.get("format") != FORMAT:
        raise VertebraError(f"{path} is not a vertebra training checkpoint")
    return ckpt


def load_trained(path: str | Path):
    """(model, TrainConfig) from a training checkpoint; the model in eval mode on the CPU."""
    from vertebra.models import load_model
    from vertebra.training.config import TrainConfig

    ckpt = read_training_checkpoint(path)
    model = load_model(path)
    model.eval()
    return model, TrainConfig.from_dict(ckpt["train_config"])
