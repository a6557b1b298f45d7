"""The training loop for the localization and identification U-Nets.

:func:`train` builds the U-Net (:func:`vertebra.models.create_model`, encoder
initialised per ``config.init``), reads an endless, resumable stream of cropped views
(:mod:`vertebra.training.dataset`), and optimises

* localization: :func:`~vertebra.training.losses.heatmap_loss` (or, with
  ``heatmap_loss="focal"``, :func:`~vertebra.training.losses.focal_heatmap_loss`) on
  ``heatmap``;
* identification: cross-entropy + ``gamma`` * Sequence Loss on ``logits``
  (:func:`~vertebra.training.losses.identification_loss`),

with Adam (fused kernels on CPU and CUDA) and a step schedule (``lr * lr_gamma ** (iteration // lr_step)``). It writes
a checkpoint (:mod:`vertebra.training.checkpoint`) every ``checkpoint_every`` iterations
and at the end, and appends JSON lines to ``<checkpoint stem>.log.jsonl`` next to it
every ``log_every`` iterations (window-mean losses, learning rate, speed). ``resume=True``
continues from the checkpoint's iteration with its optimizer state and the same sample
stream. Mixed precision (``torch.autocast``, :func:`precision`): on CUDA with ``amp``,
bfloat16 where supported, else float16 with a gradient scaler; on a CPU with
``cpu_bf16``, bfloat16 with channels-last tensors where the CPU computes it natively.

Data parallel: started under ``torchrun`` (``WORLD_SIZE > 1``) each process joins the
process group (NCCL on GPUs, Gloo on CPUs), takes its own slice of the sample stream
(:class:`~vertebra.training.dataset.StreamSampler`), and wraps the model in
``DistributedDataParallel`` (batch norm synchronised on GPUs); only rank 0 logs and
saves. ``batch_size`` is per process.

Example:
    >>> res = train(TrainConfig.cpu_demo("localization", iterations=2), "phantoms:1",
    ...             progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vertebra.errors import VertebraError
from vertebra.training.config import TrainConfig, parse_init


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained U-Net (unwrapped, on the training device, train mode).
        config: the configuration actually used (views from the cache when training
            from one).
        iteration: optimiser steps taken in total (including resumed ones).
        losses: the total loss of every step taken by this call.
        history: the log records written by this call.
        checkpoint: the checkpoint path, or None.
        log: the loss log path, or None.
        seconds: wall time of the training loop.
    """

    model: torch.nn.Module
    config: TrainConfig
    iteration: int
    losses: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    log: Path | None = None
    seconds: float = 0.0


def log_path(checkpoint: str | Path) -> Path:
    """The loss log next to a checkpoint: ``run.pt`` -> ``run.log.jsonl``."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".log.jsonl")


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA if available else CPU; anything else as torch parses it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise VertebraError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VertebraError("device cuda requested but torch sees no CUDA GPU; use --device cpu")
    return device


def lr_at(config: TrainConfig, iteration: int) -> float:
    """Learning rate of the step schedule at ``iteration`` (0-based)."""
    return config.lr * config.lr_gamma ** (iteration // config.lr_step)


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The U-Net for ``config.task`` with the encoder initialised per ``config.init``.

    ``simsiam:PATH`` must be an encoder checkpoint written by ``vertebra pretrain``;
    ``imagenet:PATH`` a local timm / torchvision state dict of the same architecture.
    """
    from vertebra.models import _kind, create_model, read_checkpoint

    kind, path = parse_init(config.init)
    if kind == "simsiam" and _kind(read_checkpoint(path)) != "encoder":
        raise VertebraError(f"{path} is not an encoder checkpoint from vertebra pretrain")
    if kind == "imagenet" and _kind(read_checkpoint(path)) != "timm":
        raise VertebraError(f"{path} is not a plain timm / torchvision state dict")
    from vertebra import labels as vlabels

    activation = "sigmoid" if config.heatmap_loss == "focal" else "identity"
    classes = vlabels.NUM_CLASSES_WITH_SACRUM if config.sacrum_class else vlabels.NUM_CLASSES
    return create_model("unet", encoder=config.encoder, task=config.task, pretrained=path,
                        heatmap_activation=activation, decoder_channels=config.decoder_channels,
                        num_classes=classes)


# ---------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(config: TrainConfig) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(0, 1, resolve_device(config.device))
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and config.device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return _Dist(dist.get_rank(), dist.get_world_size(), device)


def _wrap(model: torch.nn.Module, d: _Dist) -> torch.nn.Module:
    if d.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if d.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[d.device.index])
    return DistributedDataParallel(model)


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device):
    """Adam at ``config.lr`` with ``config.weight_decay``; fused kernels on CPU and CUDA (on
    the cpu-demo U-Net a CPU step takes 5 ms instead of 21 ms of per-tensor updates)."""
    return torch.optim.Adam(model.parameters(), lr=config.lr,
                            weight_decay=config.weight_decay,
                            fused=torch.device(device).type in ("cpu", "cuda"))


# ---------------------------------------------------------------------- loop
def _open(data, config: TrainConfig):
    from vertebra.training.sources import open_data

    if isinstance(data, (str, Path)):
        return open_data(data, cache=config.ct_cache)
    return data


def _adopt_cache_settings(config: TrainConfig, data, targets: bool = True) -> TrainConfig:
    """Views (and target sizes, with ``targets``) come from a prerender cache: record them."""
    from vertebra.training.rendered import RenderedCache

    if not isinstance(data, RenderedCache):
        return config
    changes = {}
    if data.view_config != config.views:
        changes["views"] = data.view_config
    for name in ("sigma_mm", "square_mm") if targets else ():
        if getattr(data, name) != getattr(config, name):
            warnings.warn(f"the prerender cache was made with {name}={getattr(data, name)};"
                          f" using it instead of {getattr(config, name)}", stacklevel=3)
            changes[name] = getattr(data, name)
    return replace(config, **changes) if changes else config


_MODEL_FIELDS = ("task", "encoder")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN: AMX or AVX-512 BF16)."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    """How a run computes: an autocast context factory, a GradScaler or None, and whether
    images and weights are channels-last (CPU bfloat16)."""

    autocast: Callable[[], Any]
    scaler: torch.amp.GradScaler | None
    channels_last: bool

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in this run's memory format."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, batch: dict) -> dict:
        """``batch`` (already on the device) with its images in this run's memory format."""
        if self.channels_last:
            batch = {**batch,
                     "image": batch["image"].contiguous(memory_format=torch.channels_last)}
        return batch


def precision(device: torch.device, config: TrainConfig) -> Precision:
    """The :class:`Precision` of ``config`` on ``device`` (``amp`` on CUDA, ``cpu_bf16``
    on a CPU that computes bfloat16 natively)."""
    if device.type == "cpu" and config.cpu_bf16:
        if cpu_has_bf16():
            return Precision(lambda: torch.autocast("cpu", dtype=torch.bfloat16), None, True)
        warnings.warn("cpu_bf16: this CPU has no native bfloat16; training in float32",
                      stacklevel=3)
    if not config.amp or device.type != "cuda":
        return Precision(contextlib.nullcontext, None, False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return Precision(lambda: torch.autocast("cuda", dtype=dtype), scaler, False)


def _losses(model_out, batch, config: TrainConfig, dp) -> dict[str, torch.Tensor]:
    from vertebra.training.losses import (
        focal_heatmap_loss,
        heatmap_loss,
        identification_loss,
    )

    if config.task == "localization":
        heat = model_out.heatmap.float()
        if config.heatmap_loss == "focal":
            return {"loss": focal_heatmap_loss(heat, batch["heatmap"])}
        return {"loss": heatmap_loss(heat, batch["heatmap"], config.heatmap_fg_weight)}
    res = identification_loss(model_out.logits.float(), batch["id_map"], batch["t13"],
                              gamma=config.gamma, dp=dp, sequence=config.sequence_loss,
                              background_weight=config.background_weight)
    return {"loss": res.total, "ce": res.ce, "seq": res.seq}


def train_step(net, optimizer, batch: dict, config: TrainConfig, dp, autocast=None,
               scaler=None) -> dict[str, float]:
    """One optimiser step on a batch of :class:`ViewDataset` items (already on the device).

    Returns:
        {"loss": total, and for identification "ce", "seq"} as floats.
    """
    autocast = autocast or contextlib.nullcontext
    with autocast():
        pred = net(batch["image"])
    parts = _losses(pred, batch, config, dp)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(parts["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        parts["loss"].backward()
        optimizer.step()
    return {k: float(v.detach()) for k, v in parts.items()}


def _progress(enabled: bool, total: int, start: int, task: str):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(f"[bold]{task}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                   disable=not enabled, transient=False)
    handle = bar.add_task(task, total=total, completed=start, info="")
    return bar, handle


def _checkpoint_to_resume(out: Path | None, resume: bool, config: TrainConfig) -> dict | None:
    """The checkpoint at ``out`` to continue (None: a new run), after checking that
    resuming was asked for and that it holds the same network as ``config``."""
    from vertebra.training.checkpoint import read_training_checkpoint

    if out is None:
        return None
    if not out.exists():
        if resume:
            warnings.warn(f"{out} does not exist yet; starting a new run", stacklevel=3)
        return None
    if not resume:
        raise VertebraError(f"{out} exists; pass resume (--resume) to continue it, or "
                            "choose another path")
    ckpt = read_training_checkpoint(out)
    old = ckpt["train_config"]
    diff = [k for k in _MODEL_FIELDS if old.get(k) != getattr(config, k)]
    if diff:
        raise VertebraError(f"cannot resume {out}: its {diff[0]} is {old.get(diff[0])!r}, "
                            f"not {getattr(config, diff[0])!r}")
    return ckpt


def _start(config: TrainConfig, ckpt: dict | None, device):
    """(model on ``device`` in its training precision, the precision policy, the optimiser,
    the first iteration): a new network from ``config.seed``, or the checkpoint's."""
    torch.manual_seed(config.seed)
    if ckpt is not None:  # the same network as a new run builds (heatmap activation too)
        model = build_model(replace(config, init="none"))
        model.load_state_dict(ckpt["state_dict"])
    else:
        model = build_model(config)
    model = model.to(device)
    prec = precision(device, config)
    model = prec.model(model)
    optimizer = make_optimizer(model, config, device)
    start = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["iteration"])
    return model, prec, optimizer, start


def _summary(done: int, window: dict, lr: float, clocks: tuple[float, float],
             log: Path | None) -> dict:
    """The mean losses of the steps since the last summary, the learning rate and the
    speed, appended to ``log`` (JSON lines) when given. ``clocks``: when training and the
    window started (``time.perf_counter``)."""
    now = time.perf_counter()
    n = len(window["loss"])
    record = {"iteration": done, **{k: float(np.mean(v)) for k, v in window.items()},
              "lr": lr, "it_per_s": n / max(now - clocks[1], 1e-9), "elapsed_s": now - clocks[0]}
    if log is not None:
        with open(log, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    return record


def train(config: TrainConfig, data, out: str | Path | None = None, *, resume: bool = False,
          progress: bool = True, callback=None) -> TrainResult:
    """Train a localization or identification U-Net (see the module docstring).

    Args:
        config: the :class:`TrainConfig`.
        data: ``phantoms:N``, a VerSe folder, a prerender cache folder (a string or path),
            a CT source or a ``RenderedCache``.
        out: checkpoint path (``.pt``); None trains without saving anything.
        resume: continue from ``out`` if it exists (an error if its task or encoder
            differs); without ``resume`` an existing ``out`` is an error.
        progress: show a progress bar (rank 0 only).
        callback: called as ``callback(iteration, losses dict of floats)`` after each step.

    Returns:
        :class:`TrainResult`.
    """
    from vertebra.sequence import SequenceDP
    from vertebra.training.checkpoint import save_checkpoint
    from vertebra.training.dataset import ViewDataset, make_loader

    d = _setup_distributed(config)
    data = _open(data, config)
    config = _adopt_cache_settings(config, data)
    dataset = ViewDataset(data, config)

    out = None if out is None else Path(out)
    ckpt = _checkpoint_to_resume(out, resume, config)
    model, prec, optimizer, start = _start(config, ckpt, d.device)
    net = _wrap(model, d)
    log = log_path(out) if out is not None and d.main else None
    if log is not None and ckpt is None:
        log.unlink(missing_ok=True)

    dp = SequenceDP(config.alpha, config.beta)
    loader = iter(make_loader(dataset, config.batch_size, start, d.rank, d.world,
                              config.workers))
    result = TrainResult(model=model, config=config, iteration=start, checkpoint=out, log=log)
    window: dict[str, list[float]] = {}
    bar, handle = _progress(progress and d.main, config.iterations, start, config.task)
    t0 = time.perf_counter()
    t_window = t0
    net.train()
    with bar:
        for it in range(start, config.iterations):
            lr = lr_at(config, it)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = prec.batch({k: v.to(d.device, non_blocking=True)
                                for k, v in next(loader).items()})
            values = train_step(net, optimizer, batch, config, dp, prec.autocast, prec.scaler)
            if not np.isfinite(values["loss"]):
                raise VertebraError(f"the loss became {values['loss']} at iteration {it}; "
                                    "lower the learning rate")
            result.losses.append(values["loss"])
            for k, v in values.items():
                window.setdefault(k, []).append(v)
            result.iteration = done = it + 1
            if callback is not None:
                callback(done, values)
            last = done == config.iterations
            if done % config.log_every == 0 or last:
                record = _summary(done, window, lr, (t0, t_window), log)
                window, t_window = {}, time.perf_counter()
                result.history.append(record)
                bar.update(handle, info=f"loss {record['loss']:.4f}")
            bar.update(handle, completed=done)
            if out is not None and d.main and (done % config.checkpoint_every == 0 or last):
                save_checkpoint(out, model, config, done, optimizer,
                                loss=values["loss"])
    result.seconds = time.perf_counter() - t0
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return result
