"""U-Nets on timm encoders for DRR vertebra localization and identification.

``create_model("unet", encoder="resnet50", task=...)`` builds a U-Net whose encoder is any
timm model created with ``features_only=True`` (the paper uses ResNet-50) and whose decoder
is light: at each scale, bilinear upsampling to the skip's size, concatenation, and two
3x3 conv-BN-ReLU layers; the last block upsamples to the input resolution and uses the
input image itself as its skip. Stage channels come from ``encoder.feature_info``.

Heads (1x1 convolutions, raw outputs without activation):

* localization: ``heatmap`` (B, 1, H, W), one heatmap of vertebra centres;
* identification: ``logits`` (B, num_classes, H, W), class 0 background and classes
  1..26 the vertebrae of :mod:`vertebra.labels` (``num_classes`` defaults to
  ``labels.NUM_CLASSES`` = 27);
* both: the two heads on one shared decoder.

The heatmap head's raw output is a value to regress (``heatmap_activation="identity"``,
trained with a mean squared error) or a logit (``"sigmoid"``, trained with a focal loss);
:func:`heatmap_values` turns either into heatmap values near 1 at a centroid, and is what
inference uses.

Weights are never downloaded: the timm encoder is always created with ``pretrained=False``
and ``pretrained=`` names a local file, one of

* a timm / torchvision-style state dict of the encoder architecture (``.pth``, ``.pt``,
  ``.bin`` or ``.safetensors``; a classifier is ignored and a 3-channel first convolution
  is adapted to ``in_chans`` by timm's ``adapt_input_conv``);
* an encoder checkpoint ``{"encoder": name, "state_dict": ..., "config": ...}`` as written
  by :func:`vertebra.simsiam.pretrain` (multi-view contrastive pre-training);
* a full model checkpoint ``{"model": "unet", "config": ..., "state_dict": ...}`` as written
  by :func:`save_model` (heads whose shape differs are left freshly initialised, with a
  warning).

Example:
    >>> import torch
    >>> net = create_model("unet", encoder="resnet18", task="both")
    >>> out = net(torch.zeros(2, 1, 64, 64))
    >>> tuple(out.heatmap.shape), tuple(out.logits.shape)
    ((2, 1, 64, 64), (2, 27, 64, 64))
"""

from __future__ import annotations

import difflib
import warnings
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vertebra.errors import VertebraError

#: Decoder widths, deepest block first; one per encoder stage.
DECODER_CHANNELS = (256, 128, 64, 32, 16)

#: How the raw heatmap head becomes heatmap values (see :func:`heatmap_values`).
HEATMAP_ACTIVATIONS = ("identity", "sigmoid")

#: Encoders suggested when a name is unknown and nothing close exists.
EXAMPLE_ENCODERS = ("resnet50", "resnet18", "resnet10t", "efficientnet_b0", "convnext_tiny")


class Task(str, Enum):
    """Which heads a U-Net carries."""

    LOCALIZATION = "localization"
    IDENTIFICATION = "identification"
    BOTH = "both"


class UNetOutput(NamedTuple):
    """Raw head outputs at input resolution; a head the model lacks is None.

    Attributes:
        heatmap: (B, 1, H, W) localization heatmap (no activation).
        logits: (B, num_classes, H, W) identification logits, class 0 background.
    """

    heatmap: torch.Tensor | None
    logits: torch.Tensor | None


# ---------------------------------------------------------------------- encoder
def create_encoder(name: str, in_chans: int = 1) -> nn.Module:
    """A timm feature extractor (``features_only=True``), never with downloaded weights.

    Args:
        name: any timm model name that supports ``features_only``.
        in_chans: input channels (1 for DRRs).

    Returns:
        The timm module; ``module(x)`` gives a list of (B, C_s, H / r_s, W / r_s) maps with
        ``C_s = module.feature_info.channels()`` and ``r_s = .reduction()``.
    """
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5, cutoff=0.6)
        hint = ", ".join(close or EXAMPLE_ENCODERS)
        raise VertebraError(
            f"unknown timm encoder {name!r}; try one of: {hint} (timm.list_models() has all)"
        )
    try:
        return timm.create_model(name, pretrained=False, features_only=True, in_chans=in_chans)
    except Exception as exc:  # timm raises several types for unsupported feature extraction
        raise VertebraError(
            f"timm model {name!r} cannot be used as an encoder (features_only=True): {exc}"
        ) from exc


# ---------------------------------------------------------------------- U-Net
class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Upsample ``x`` to ``skip``'s size, concatenate, two conv-BN-ReLU layers."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_ConvBNReLU(cin + cskip, cout), _ConvBNReLU(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """(B, cin, h, w), (B, cskip, H, W) -> (B, cout, H, W)."""
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str):
    """Class decorator adding a model to :data:`MODELS` under ``name``."""

    def add(cls):
        MODELS[name] = cls
        return cls

    return add


@register_model("unet")
class UNet(nn.Module):
    """U-Net on a timm encoder; see the module docstring.

    Args:
        encoder: timm model name.
        task: a :class:`Task` or its value.
        num_classes: identification channels, background included.
        in_chans: image channels (1 for DRRs).
        decoder_channels: one width per encoder stage, deepest first.
        heatmap_activation: "identity" (the head regresses the heatmap) or "sigmoid" (the
            head gives logits); applied by :func:`heatmap_values`, not by ``forward``.

    ``forward(x (B, in_chans, H, W)) -> UNetOutput`` at the input resolution ``H, W``.
    """

    def __init__(
        self,
        encoder: str = "resnet50",
        task: Task | str = Task.LOCALIZATION,
        num_classes: int | None = None,
        in_chans: int = 1,
        decoder_channels: tuple[int, ...] | list[int] | None = None,
        heatmap_activation: str = "identity",
    ) -> None:
        super().__init__()
        task = _task(task)
        if heatmap_activation not in HEATMAP_ACTIVATIONS:
            raise VertebraError(f"unknown heatmap_activation {heatmap_activation!r}; choose "
                                f"{' or '.join(HEATMAP_ACTIVATIONS)}")
        if num_classes is None:
            from vertebra import labels

            num_classes = labels.NUM_CLASSES
        if int(num_classes) < 2:
            raise VertebraError(
                f"num_classes counts background too and must be >= 2, got {num_classes}"
            )
        if int(in_chans) < 1:
            raise VertebraError(f"in_chans must be >= 1, got {in_chans}")
        self.encoder = create_encoder(encoder, int(in_chans))
        stages = list(self.encoder.feature_info.channels())
        dec = list(DECODER_CHANNELS if decoder_channels is None else decoder_channels)
        if len(dec) != len(stages) or min(dec) < 1:
            raise VertebraError(
                f"decoder_channels needs {len(stages)} positive widths for encoder {encoder!r}"
                f" (stages {stages}), got {dec}"
            )
        skips = stages[-2::-1] + [int(in_chans)]  # shallower stages, then the image
        cin = [stages[-1]] + dec[:-1]
        self.decoder = nn.ModuleList(DecoderBlock(a, s, b) for a, s, b in zip(cin, skips, dec))
        self.heatmap_head = nn.Conv2d(dec[-1], 1, 1) if task != Task.IDENTIFICATION else None
        self.logits_head = (
            nn.Conv2d(dec[-1], int(num_classes), 1) if task != Task.LOCALIZATION else None
        )
        self.config: dict[str, Any] = {
            "name": "unet",
            "encoder": encoder,
            "task": task.value,
            "num_classes": int(num_classes),
            "in_chans": int(in_chans),
            "decoder_channels": dec,
            "heatmap_activation": heatmap_activation,
        }

    @property
    def task(self) -> Task:
        return Task(self.config["task"])

    def forward(self, x: torch.Tensor) -> UNetOutput:
        """(B, in_chans, H, W) image -> :class:`UNetOutput` at (H, W)."""
        c = self.config["in_chans"]
        if x.ndim != 4 or x.shape[1] != c:
            raise VertebraError(f"expected input of shape (B, {c}, H, W), got {tuple(x.shape)}")
        feats = self.encoder(x)
        y = feats[-1]
        for block, skip in zip(self.decoder, [*feats[-2::-1], x]):
            y = block(y, skip)
        return UNetOutput(
            heatmap=self.heatmap_head(y) if self.heatmap_head is not None else None,
            logits=self.logits_head(y) if self.logits_head is not None else None,
        )


def heatmap_values(model: nn.Module, heatmap: torch.Tensor) -> torch.Tensor:
    """The raw heatmap head of ``model`` -> heatmap values (peaks near 1), same shape.

    Applies the model's ``heatmap_activation`` (a sigmoid for heads trained with the focal
    loss; nothing for regressed heatmaps or models without that setting).
    """
    config = getattr(model, "config", None) or {}
    if config.get("heatmap_activation", "identity") == "sigmoid":
        return torch.sigmoid(heatmap.float())
    return heatmap


def _task(task: Task | str) -> Task:
    try:
        return Task(task)
    except ValueError:
        valid = ", ".join(t.value for t in Task)
        raise VertebraError(f"unknown task {task!r}; valid tasks: {valid}") from None


# ---------------------------------------------------------------------- factory
def model_names() -> list[str]:
    """Names :func:`create_model` accepts."""
    return sorted(MODELS)


def create_model(
    name: str = "unet",
    encoder: str = "resnet50",
    task: Task | str = Task.LOCALIZATION,
    num_classes: int | None = None,
    pretrained: str | Path | None = None,
    in_chans: int = 1,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally with weights from a local file.

    Args:
        name: a name from :func:`model_names` ("unet").
        encoder: timm encoder name (default "resnet50", as the paper).
        task: "localization", "identification" or "both".
        num_classes: identification classes including background (default
            ``vertebra.labels.NUM_CLASSES``).
        pretrained: path to a local weights file (see the module docstring) or None for
            random initialisation. Never downloads.
        in_chans: image channels (1 for DRRs).
        **kwargs: passed to the model class (e.g. ``decoder_channels``).

    Returns:
        The model (``torch.nn.Module``) on the CPU in training mode.
    """
    if name not in MODELS:
        raise VertebraError(f"unknown model {name!r}; valid names: {', '.join(model_names())}")
    model = MODELS[name](
        encoder=encoder, task=task, num_classes=num_classes, in_chans=in_chans, **kwargs
    )
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def save_model(model: nn.Module, path: str | Path, **extra: Any) -> Path:
    """Write ``{"model", "config", "state_dict", **extra}`` to ``path`` (torch.save)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": model.config["name"], "config": dict(model.config),
                "state_dict": state, **extra}, path)
    return path


def load_model(path: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (on the CPU, training mode)."""
    ckpt = read_checkpoint(path)
    if _kind(ckpt) != "model":
        raise VertebraError(f"{path} is not a model checkpoint written by "
                            f"vertebra.models.save_model")
    config = dict(ckpt["config"])
    name = config.pop("name", ckpt["model"])
    model = create_model(name, **config)
    model.load_state_dict(ckpt["state_dict"])
    return model


# ---------------------------------------------------------------------- weights
def read_checkpoint(path: str | Path) -> dict:
    """Load a weights file to a dict on the CPU (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise VertebraError(
            f"weights file not found: {path} (weights are never downloaded; pass a local timm"
            " state dict, a SimSiam encoder checkpoint or a vertebra model checkpoint)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            ckpt = load_file(str(path), device="cpu")
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise VertebraError(f"reading {path} needs the safetensors package") from None
    except Exception as exc:
        import pickle

        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        # a file that is no checkpoint comes back as KeyError('101'), EOFError or an
        # UnpicklingError that suggests weights_only=False (never needed for ours)
        if isinstance(exc, (KeyError, EOFError, pickle.UnpicklingError)) or not reason:
            reason = "not a torch checkpoint of tensors or a safetensors file"
        raise VertebraError(f"cannot read weights file {path}: {reason}") from exc
    if not isinstance(ckpt, dict):
        raise VertebraError(f"{path} holds a {type(ckpt).__name__}, not a state dict")
    return ckpt


def _kind(ckpt: dict) -> str:
    if isinstance(ckpt.get("state_dict"), dict) and isinstance(ckpt.get("config"), dict):
        if isinstance(ckpt.get("model"), str):
            return "model"
        if isinstance(ckpt.get("encoder"), str):
            return "encoder"
    return "timm"


def _plain_state(ckpt: dict, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "state_dict_ema", "net"):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    state = {}
    for k, v in ckpt.items():
        if not isinstance(v, torch.Tensor):
            raise VertebraError(f"{path} is not a state dict: entry {k!r} is a {type(v).__name__}")
        state[k.removeprefix("module.")] = v
    return state


def load_pretrained(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a local weights file into ``model`` in place (see the module docstring)."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    kind = _kind(ckpt)
    encoder_name = model.config["encoder"]
    if kind == "model":
        other = ckpt["config"].get("encoder")
        if other != encoder_name:
            raise VertebraError(
                f"{path} is a model with encoder {other!r}; this model uses {encoder_name!r}"
            )
        _load_model_state(model, ckpt["state_dict"], path)
    else:
        if kind == "encoder" and ckpt["encoder"] != encoder_name:
            raise VertebraError(
                f"{path} holds encoder {ckpt['encoder']!r} weights; this model uses"
                f" {encoder_name!r}"
            )
        state = ckpt["state_dict"] if kind == "encoder" else _plain_state(ckpt, path)
        load_encoder_state(model.encoder, state, source=str(path))
    return model


def load_encoder_state(encoder: nn.Module, state: dict, source: str = "state dict") -> None:
    """Copy matching weights into a timm feature extractor; strict on the encoder's keys.

    Entries the encoder lacks (a classifier, a projector) are ignored; a first convolution
    with a different number of input channels is adapted with timm's ``adapt_input_conv``.
    """
    from timm.models import adapt_input_conv

    target = encoder.state_dict()
    loaded = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key not in target:
            continue
        want = target[key]
        if value.shape != want.shape:
            if value.ndim == 4 and want.ndim == 4 and value.shape[0] == want.shape[0] and (
                value.shape[2:] == want.shape[2:]
            ):
                value = adapt_input_conv(want.shape[1], value)
            else:
                raise VertebraError(
                    f"{source}: weight {key!r} has shape {tuple(value.shape)}, the encoder"
                    f" expects {tuple(want.shape)}"
                )
        loaded[key] = value
    missing = [k for k in target if k not in loaded and not k.endswith("num_batches_tracked")]
    if missing:
        raise VertebraError(
            f"{source} does not fit this encoder: {len(missing)} of {len(target)} weights"
            f" missing, e.g. {', '.join(missing[:3])}"
        )
    encoder.load_state_dict(loaded, strict=False)


def _load_model_state(model: nn.Module, state: dict, path: Path) -> None:
    target = model.state_dict()
    heads = ("heatmap_head.", "logits_head.")
    loaded, fresh, missing = {}, [], []
    for key, want in target.items():
        value = state.get(key)
        if value is not None and value.shape == want.shape:
            loaded[key] = value
        elif key.startswith(heads):
            fresh.append(key)
        elif not key.endswith("num_batches_tracked"):
            missing.append(key)
    if missing:
        raise VertebraError(
            f"{path} does not fit this model: {len(missing)} weights missing or of another"
            f" shape, e.g. {', '.join(missing[:3])}"
        )
    if fresh:
        warnings.warn(
            f"{path}: head weights {', '.join(sorted({k.split('.')[0] for k in fresh}))}"
            " not in the checkpoint (or of another shape); they stay freshly initialised",
            stacklevel=3,
        )
    model.load_state_dict(loaded, strict=False)
