"""Training settings: one dataclass with the paper's defaults, plus a fast CPU preset.

:class:`TrainConfig` holds everything a training run needs (task, network, optimiser,
schedule, losses, crops, augmentation and the :class:`vertebra.views.ViewConfig` that
turns a CT into views). It is stored in every checkpoint (``to_dict``) and rebuilt from
it (``from_dict``), so a checkpoint says exactly how it was made.

Paper defaults (Wu et al., MICCAI 2023): ResNet-50 U-Nets, Adam with learning rate 1e-3
divided by 10 every 4000 iterations, 15 000 iterations, identification loss
cross-entropy + gamma * Sequence Loss with gamma = 1 (alpha 0.1, beta 0.8), 22 mm
identification squares.

Example:
    >>> cfg = TrainConfig(task="identification", iterations=10)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> TrainConfig.cpu_demo("localization").encoder
    'resnet10t'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from vertebra.errors import VertebraError
from vertebra.views import ViewConfig

TASKS = ("localization", "identification")
HEATMAP_LOSSES = ("mse", "focal")

#: Bone enhancement of the cpu-demo views (``ViewConfig.bone_gain``, above 200 HU).
BONE_GAIN = 8.0


@dataclass(frozen=True)
class AugmentConfig:
    """Random changes applied to every training view (all in network-input units).

    Attributes:
        angle_jitter_deg: the orbit's start angle is drawn uniformly in
            ``[-angle_jitter_deg, +angle_jitter_deg]`` around the K fixed view angles when
            views are rendered on the fly (half the view spacing, 18 for K = 10, makes
            every angle reachable).
        crop_on_vertebra: probability that a crop is centred near a visible vertebra
            (within a quarter of the crop) instead of anywhere on the detector.
        scale: (lo, hi) range of a random factor multiplying the image.
        offset: (lo, hi) range of a random constant added to the image.
        noise: (lo, hi) range of the standard deviation of added Gaussian pixel noise.
        gamma: (lo, hi) range of an exponent applied to the image (clipped at 0) before
            the rest, ``image ** gamma``: a detector's or a reconstruction's non-linear
            grey scale.
        blur_px: (lo, hi) range of the standard deviation, in pixels, of a Gaussian blur
            (a softer reconstruction kernel, thicker slices, a larger focal spot).
        distractors: at most this many bright blobs and lines drawn at random into the
            image (0-``distractors`` of them; things that are not vertebrae: contrast,
            tubes, wires), each 0.05-0.4 brighter than its surroundings.
    """

    angle_jitter_deg: float = 18.0
    crop_on_vertebra: float = 0.8
    scale: tuple[float, float] = (0.85, 1.15)
    offset: tuple[float, float] = (-0.02, 0.02)
    noise: tuple[float, float] = (0.0, 0.02)
    gamma: tuple[float, float] = (1.0, 1.0)
    blur_px: tuple[float, float] = (0.0, 0.0)
    distractors: int = 0

    def __post_init__(self) -> None:
        if self.gamma[0] <= 0 or self.blur_px[0] < 0 or self.distractors < 0:
            raise VertebraError("augment gamma must be > 0, blur_px and distractors >= 0")
        for name in ("scale", "offset", "noise", "gamma", "blur_px"):
            lo, hi = getattr(self, name)
            object.__setattr__(self, name, (float(lo), float(hi)))
            if not lo <= hi:
                raise VertebraError(f"augment.{name} must be a (lo, hi) range, got {(lo, hi)}")
        if self.noise[0] < 0 or self.scale[0] <= 0:
            raise VertebraError("augment noise must be >= 0 and scale > 0")
        if not 0 <= self.crop_on_vertebra <= 1:
            raise VertebraError("augment.crop_on_vertebra must be a probability")
        if self.angle_jitter_deg < 0:
            raise VertebraError("augment.angle_jitter_deg must be >= 0")

    @classmethod
    def strong(cls, **changes) -> AugmentConfig:
        """Wide ranges for networks that must work on real scans after training on
        phantoms (see decision ``strong-augmentation`` in ``benchmarks/decisions.md``)."""
        values = {"scale": (0.7, 1.4), "offset": (-0.08, 0.08), "noise": (0.0, 0.04),
                  "gamma": (0.8, 1.25), "blur_px": (0.0, 0.8), "distractors": 3}
        values.update(changes)
        return cls(**values)

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation (fixed angles, crops still random)."""
        return cls(angle_jitter_deg=0.0, scale=(1.0, 1.0), offset=(0.0, 0.0), noise=(0.0, 0.0))


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs.

    Attributes:
        task: "localization" (heatmap regression) or "identification" (22 mm squares).
        encoder: timm encoder of the U-Net (paper: "resnet50").
        decoder_channels: widths of the U-Net's decoder blocks, deepest first, one per
            encoder stage (None: :data:`vertebra.models.DECODER_CHANNELS`).
        init: encoder initialisation: "none", "imagenet:PATH" (a local timm / torchvision
            state dict) or "simsiam:PATH" (a ``vertebra pretrain`` encoder checkpoint).
        iterations: optimiser steps (paper 15 000).
        batch_size: views per step (per process under DDP).
        lr: Adam learning rate (paper 1e-3).
        lr_step: the rate is multiplied by ``lr_gamma`` every ``lr_step`` iterations
            (paper 4000, 0.1).
        lr_gamma: see ``lr_step``.
        weight_decay: Adam weight decay.
        crop_size: training crops are ``crop_size`` x ``crop_size`` pixels (a multiple of 32).
        sequence_loss: add gamma * Sequence Loss to the identification cross-entropy.
        gamma: weight of the Sequence Loss (paper 1).
        alpha, beta: Sequence Loss weights of a neighbouring / the same class (paper 0.1,
            0.8).
        sigma_mm: heatmap Gaussian sigma in mm at the isocentre.
        square_mm: identification square side in mm at the isocentre (paper 22).
        sacrum_class: the identification network gets one class more, the sacrum
            (:data:`vertebra.labels.SACRUM_CLASS`, a square on the first sacral body,
            drawn where the training CTs know it: phantoms), which the pipeline uses to
            tell the lowest lumbar vertebra (``PipelineConfig.sacrum_threshold``).
            False: the sacrum squares of the training data count as background.
        background_weight: cross-entropy weight of the background class (1 = plain
            cross-entropy as in the paper; < 1 makes the few square pixels count more).
        heatmap_loss: "mse" (mean squared error over all pixels, the paper) or "focal"
            (the head gives logits, trained with
            :func:`vertebra.training.losses.focal_heatmap_loss`; inference applies a
            sigmoid).
        heatmap_fg_weight: with "mse", pixels are weighted by
            ``1 + heatmap_fg_weight * target`` (0 = plain MSE as in the paper; > 0 counters
            the mostly-empty heatmaps on short runs).
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
        amp: mixed precision (``torch.autocast``) on CUDA.
        cpu_bf16: on a CPU, run the forward pass in bfloat16 (``torch.autocast``) with
            channels-last tensors; only where the CPU computes bfloat16 natively (AMX or
            AVX-512 BF16), else a warning and float32. The losses stay in float32.
        seed: seeds initialisation and the (deterministic) stream of training samples.
        workers: DataLoader worker processes (0 = render in the main process, needed when
            rendering on the GPU).
        render_backend: drrkit backend for on-the-fly rendering ("auto", "cpu", "cuda").
        ct_cache: phantoms kept in memory when rendering on the fly (VerSe CTs are kept
            up to 2048 MiB, :class:`vertebra.training.sources.VerseSource`).
        log_every: iterations between loss-log lines.
        checkpoint_every: iterations between checkpoints (the last one is always saved).
        views: the C-arm and detector (:class:`vertebra.views.ViewConfig`).
        augment: :class:`AugmentConfig`.
    """

    task: str = "localization"
    encoder: str = "resnet50"
    decoder_channels: tuple[int, ...] | None = None
    init: str = "none"
    iterations: int = 15000
    batch_size: int = 8
    lr: float = 1e-3
    lr_step: int = 4000
    lr_gamma: float = 0.1
    weight_decay: float = 0.0
    crop_size: int = 256
    sequence_loss: bool = True
    gamma: float = 1.0
    alpha: float = 0.1
    beta: float = 0.8
    sigma_mm: float = 3.0
    square_mm: float = 22.0
    sacrum_class: bool = False
    background_weight: float = 1.0
    heatmap_loss: str = "mse"
    heatmap_fg_weight: float = 0.0
    device: str = "auto"
    amp: bool = True
    cpu_bf16: bool = False
    seed: int = 0
    workers: int = 0
    render_backend: str = "auto"
    ct_cache: int = 8
    log_every: int = 10
    checkpoint_every: int = 500
    views: ViewConfig = field(default_factory=ViewConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.decoder_channels is not None:
            widths = tuple(int(c) for c in self.decoder_channels)
            if not widths or min(widths) < 1:
                raise VertebraError(f"decoder_channels must be positive widths, got "
                                    f"{self.decoder_channels!r}")
            object.__setattr__(self, "decoder_channels", widths)
        if isinstance(self.views, dict):
            object.__setattr__(self, "views", ViewConfig.from_dict(self.views))
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", AugmentConfig(**{
                k: tuple(v) if isinstance(v, list) else v for k, v in self.augment.items()}))
        if not isinstance(self.views, ViewConfig) or not isinstance(self.augment, AugmentConfig):
            raise VertebraError("views must be a ViewConfig and augment an AugmentConfig")
        if self.task not in TASKS:
            raise VertebraError(f"unknown task {self.task!r}; choose {' or '.join(TASKS)}")
        if self.heatmap_loss not in HEATMAP_LOSSES:
            raise VertebraError(f"unknown heatmap loss {self.heatmap_loss!r}; choose "
                                f"{', '.join(HEATMAP_LOSSES)}")
        for name in ("iterations", "batch_size", "lr_step", "crop_size", "log_every",
                     "checkpoint_every", "ct_cache"):
            if int(getattr(self, name)) < 1:
                raise VertebraError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.crop_size % 32:
            raise VertebraError(f"crop_size must be a multiple of 32, got {self.crop_size}")
        if self.workers < 0:
            raise VertebraError(f"workers must be >= 0, got {self.workers}")
        if not self.lr > 0 or not 0 < self.lr_gamma <= 1:
            raise VertebraError("need lr > 0 and 0 < lr_gamma <= 1")
        if self.gamma < 0 or self.heatmap_fg_weight < 0 or self.weight_decay < 0:
            raise VertebraError("gamma, heatmap_fg_weight and weight_decay must be >= 0")
        if not self.background_weight > 0:
            raise VertebraError("background_weight must be positive")
        if not self.sigma_mm > 0 or not self.square_mm > 0:
            raise VertebraError("sigma_mm and square_mm must be positive")
        parse_init(self.init)

    # ------------------------------------------------------------------ presets
    @classmethod
    def paper(cls, task: str = "localization", **changes) -> TrainConfig:
        """The paper's settings (the dataclass defaults) for ``task``."""
        return cls(task=task, **changes)

    @classmethod
    def cpu_demo(cls, task: str = "localization", **changes) -> TrainConfig:
        """A recipe for a 2-core CPU on ``phantoms:N`` data (minutes a network).

        Both networks: a small encoder (ResNet-10t), 64-pixel crops in batches of 16 (a
        step on a 2-core CPU costs more per call than per crop), Adam at 2e-3 with one
        decay (x0.1), 4 mm heatmap Gaussians (sharper peaks than 6 mm; the pipeline's
        thresholds go down with them, see
        :meth:`vertebra.demo.DemoConfig.pipeline_settings`), bfloat16 forward passes where
        the CPU has them (``cpu_bf16``), views rendered from the CT bone-enhanced
        (:data:`BONE_GAIN` times steeper above 200 HU, ``ViewConfig.bone_gain``, so ribs,
        sacrum and pelvis show). Each task sees the CT at the resolution it needs:

        * localization: 2 mm pixels at the isocentre (discs are 1-6 pixels tall; at 4 mm
          the peaks stay ~5 mm off), the focal heatmap loss (sharp peaks in few steps),
          2400 iterations, decay at 2000;
        * identification: 4 mm pixels (a 64-pixel crop spans 256 mm, enough anatomy to
          count from), background weight 0.2 in the cross-entropy so the few square
          pixels count, 1400 iterations, decay at 1150, a decoder half as wide
          (128, 64, 32, 16, 16), and the sacrum class (``sacrum_class``: the pipeline then
          labels the vertebra above a sacrum L5 or L6).

        Each choice was measured on validation phantoms: decision ``cpu-demo-recipe`` in
        ``benchmarks/decisions.md``.

        The pipeline renders each network's own views (``identifier_views`` of
        :func:`vertebra.pipeline.label_ct`). Per-view scores on held-out phantoms and the
        speed are in ``benchmarks/README.md`` (training section).
        """
        if task == "localization":
            own = {"iterations": 2400, "lr_step": 2000, "heatmap_loss": "focal",
                   "views": ViewConfig(mm_per_pixel=2.0, bone_gain=BONE_GAIN)}
        else:
            own = {"iterations": 1400, "lr_step": 1150, "background_weight": 0.2,
                   "decoder_channels": (128, 64, 32, 16, 16), "sacrum_class": True,
                   "views": ViewConfig(mm_per_pixel=4.0, bone_gain=BONE_GAIN)}
        base = {
            "task": task,
            "encoder": "resnet10t",
            "batch_size": 16,
            "lr": 2e-3,
            "crop_size": 64,
            "sigma_mm": 4.0,
            "checkpoint_every": 400,
            "cpu_bf16": True,
            **own,
        }
        base.update(changes)
        return cls(**base)

    #: Names :meth:`preset` takes.
    PRESETS = ("paper", "cpu-demo")

    @classmethod
    def preset(cls, name: str, task: str = "localization", **changes) -> TrainConfig:
        """A preset by name: "paper" or "cpu-demo"."""
        if name == "paper":
            return cls.paper(task, **changes)
        if name in ("cpu-demo", "cpu_demo"):
            return cls.cpu_demo(task, **changes)
        raise VertebraError(f"unknown preset {name!r}; choose {' or '.join(cls.PRESETS)}")

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        """Plain nested dict (lists for tuples) for checkpoints and JSON."""
        out = asdict(self)
        if self.decoder_channels is not None:
            out["decoder_channels"] = list(self.decoder_channels)
        out["views"] = self.views.to_dict()
        out["augment"] = {k: list(v) if isinstance(v, tuple) else v
                          for k, v in asdict(self.augment).items()}
        return out

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in values.items() if k in names}
        if isinstance(known.get("augment"), dict):
            aug_names = {f.name for f in fields(AugmentConfig)}
            known["augment"] = {k: v for k, v in known["augment"].items() if k in aug_names}
        return cls(**known)


def parse_init(init: str) -> tuple[str, str | None]:
    """``"none"`` / ``"imagenet:PATH"`` / ``"simsiam:PATH"`` -> (kind, path or None)."""
    text = str(init).strip()
    if text.lower() == "none":
        return "none", None
    kind, sep, path = text.partition(":")
    if sep and kind.lower() in ("imagenet", "simsiam") and path:
        return kind.lower(), path
    raise VertebraError(f"bad --init {init!r}; use none, imagenet:PATH or simsiam:PATH")
