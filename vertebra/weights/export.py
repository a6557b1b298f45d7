"""Writing a networks file (:mod:`vertebra.weights`) from a bundle of both networks.

Kept apart from :mod:`vertebra.weights`, which the pipeline reads the default networks
through: exporting checks the bundle with the pipeline's own loader.
"""

from __future__ import annotations

import json
from pathlib import Path

from vertebra.errors import VertebraError
from vertebra.weights import (
    DEFAULT_NAME,
    DTYPES,
    FORMAT,
    MAX_MB,
    PARTS,
    SCALE_SUFFIX,
    SUFFIX,
    Record,
    is_networks_file,
    is_part,
    read_networks,
    sha256_of,
)

#: Largest finite float16 value: a tensor with larger magnitudes stays float32.
_FLOAT16_MAX = 65504.0


def _commit_of(bundle: dict) -> str | None:
    for part in PARTS:
        version = bundle.get(part, {}).get("code_version")
        if isinstance(version, dict) and version.get("git"):
            return str(version["git"])
    return None


#: Fewest values of a weight tensor that ``dtype="int8"`` quantizes (smaller ones, and
#: every vector such as biases and BatchNorm statistics, stay float16).
INT8_MIN_VALUES = 1024


def quantize_int8(tensor):
    """Symmetric int8 per output channel: ``tensor ~ q * scale[:, None, ...]``.

    Each slice ``tensor[c]`` is divided by ``scale[c] = max |tensor[c]| / 127`` (1 for an
    all-zero slice) and rounded, so every value is off by at most ``scale[c] / 2``.

    Args:
        tensor: (C, ...) finite floating tensor, at least 2-D.

    Returns:
        (q (C, ...) int8 in [-127, 127], scale (C,) float32).
    """
    import torch

    values = tensor.detach().cpu().float()
    peak = values.abs().reshape(values.shape[0], -1).amax(dim=1)
    scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
    shape = (-1,) + (1,) * (values.dim() - 1)
    q = torch.round(values / scale.reshape(shape)).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def _compact(name: str, tensor, dtype: str) -> dict:
    """``{name: tensor}`` stored compactly: float16 for a floating tensor whose values fit,
    else the tensor as it is; with ``dtype="int8"``, a floating weight of at least 2-D and
    :data:`INT8_MIN_VALUES` values becomes int8 plus its scales under
    ``name + SCALE_SUFFIX`` (:func:`quantize_int8`). Contiguous, CPU."""
    import torch

    tensor = tensor.detach().cpu().contiguous()
    finite = (tensor.is_floating_point() and tensor.numel() > 0
              and bool(torch.isfinite(tensor).all()))
    if dtype == "int8" and finite and tensor.dim() >= 2 and tensor.numel() >= INT8_MIN_VALUES:
        q, scale = quantize_int8(tensor)
        return {name: q, name + SCALE_SUFFIX: scale}
    if finite and float(tensor.abs().max()) <= _FLOAT16_MAX:
        return {name: tensor.to(torch.float16)}
    return {name: tensor.clone()}


def export_networks(bundle: str | Path, out_dir: str | Path, *, recipe: str,
                    training_data: str, commit: str | None = None,
                    name: str = DEFAULT_NAME, max_mb: float = MAX_MB,
                    dtype: str = "float16") -> Record:
    """Convert a networks bundle into a compact networks file and its record.

    Writes ``OUT_DIR/NAME.safetensors`` and ``OUT_DIR/NAME.json`` all or nothing (the
    record last), after checking that the bundle loads as both networks
    (:func:`vertebra.pipeline.load_networks`) and that the new file reads back.

    Args:
        bundle: a file written by :func:`vertebra.pipeline.bundle_networks` (both networks),
            or a networks file (stored again, e.g. in another ``dtype``).
        out_dir: output folder (created if missing); ``vertebra/weights/`` for the default.
        recipe: name of the training recipe.
        training_data: what the networks were trained on, in words.
        commit: git commit of the training code (default: the one the bundle's checkpoints
            record, else "unknown").
        name: file name without suffix.
        max_mb: refuse to write a file larger than this many MB (10^6 bytes).
        dtype: "float16" (every floating tensor), "int8" (weight tensors quantized per
            output channel, :func:`quantize_int8`, the rest float16): half the size, for
            ensembles; or "int8-identifiers" (the identifiers' weights in int8, the
            localizers' in float16: a localizer's peaks, which place the points, move
            with the int8 rounding, an identifier's square means barely do).

    Returns:
        the :class:`Record` written.
    """
    from safetensors.torch import save_file

    from drrkit.io import json_safe, staged_directory, write_json
    from vertebra.models import read_checkpoint
    from vertebra.pipeline import load_networks

    bundle = Path(bundle)
    for label, value in (("recipe", recipe), ("training data", training_data)):
        if not str(value).strip():
            raise VertebraError(f"give the {label} of the networks (it is stored with them)")
    if not name or Path(name).name != name or name.startswith("."):
        raise VertebraError(f"bad file name {name!r}")
    if dtype not in DTYPES:
        raise VertebraError(f"unknown dtype {dtype!r}; choose {', '.join(DTYPES)}")
    load_networks(bundle, device="cpu")  # both networks, the classes the pipeline needs
    ckpt = read_networks(bundle) if is_networks_file(bundle) else read_checkpoint(bundle)
    if not all(isinstance(ckpt.get(part), dict) for part in PARTS):
        raise VertebraError(f"{bundle} is not a bundle of both networks (see "
                            "vertebra.pipeline.bundle_networks)")
    commit = str(commit or _commit_of(ckpt) or "unknown")
    provenance = {"recipe": str(recipe), "training_data": str(training_data),
                  "commit": commit, "source": bundle.name}
    tensors, info = {}, {}
    for key, value in ckpt.items():
        if is_part(key):
            info[key] = json_safe({k: v for k, v in value.items()
                                   if k not in ("state_dict", "optimizer")})
            part_dtype = "int8" if dtype == "int8" or (
                dtype == "int8-identifiers" and key.startswith("identifier")) else "float16"
            for tensor_name, tensor in value["state_dict"].items():
                tensors.update(_compact(f"{key}.{tensor_name}", tensor, part_dtype))
        else:
            info[key] = json_safe(value)
    info["format"] = FORMAT
    info["provenance"] = provenance
    metadata = {"format": FORMAT, "vertebra": json.dumps(info)}
    file_name = f"{name}{SUFFIX}"
    with staged_directory(out_dir, last=(f"{name}.json",)) as tmp:
        save_file(tensors, str(tmp / file_name), metadata=metadata)
        (tmp / file_name).chmod(0o644)  # a package data file: readable by every user
        size = (tmp / file_name).stat().st_size
        if size > max_mb * 1e6:
            raise VertebraError(f"the networks take {size / 1e6:.1f} MB in {file_name}, more "
                                f"than the {max_mb:g} MB allowed (smaller networks, or max_mb)")
        record = Record(weights=file_name, sha256=sha256_of(tmp / file_name), bytes=size,
                        dtype=dtype, **provenance)
        write_json(tmp / f"{name}.json", record.to_dict())
        read_networks(tmp / file_name)  # reads back
    return record
