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
    FORMAT,
    MAX_MB,
    PARTS,
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


def _compact(tensor):
    """float16 for a floating tensor whose values fit, else the tensor; contiguous, CPU."""
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if (tensor.is_floating_point() and tensor.numel() and torch.isfinite(tensor).all()
            and float(tensor.abs().max()) <= _FLOAT16_MAX):
        return tensor.to(torch.float16)
    return tensor.clone()


def export_networks(bundle: str | Path, out_dir: str | Path, *, recipe: str,
                    training_data: str, commit: str | None = None,
                    name: str = DEFAULT_NAME, max_mb: float = MAX_MB) -> Record:
    """Convert a networks bundle into a compact networks file and its record.

    Writes ``OUT_DIR/NAME.safetensors`` and ``OUT_DIR/NAME.json`` all or nothing (the
    record last), after checking that the bundle loads as both networks
    (:func:`vertebra.pipeline.load_networks`) and that the new file reads back.

    Args:
        bundle: a file written by :func:`vertebra.pipeline.bundle_networks` (both networks).
        out_dir: output folder (created if missing); ``vertebra/weights/`` for the default.
        recipe: name of the training recipe.
        training_data: what the networks were trained on, in words.
        commit: git commit of the training code (default: the one the bundle's checkpoints
            record, else "unknown").
        name: file name without suffix.
        max_mb: refuse to write a file larger than this many MB (10^6 bytes).

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
    if is_networks_file(bundle):
        raise VertebraError(f"{bundle} is already a networks file")
    load_networks(bundle, device="cpu")  # both networks, the classes the pipeline needs
    ckpt = read_checkpoint(bundle)
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
            for tensor_name, tensor in value["state_dict"].items():
                tensors[f"{key}.{tensor_name}"] = _compact(tensor)
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
                        **provenance)
        write_json(tmp / f"{name}.json", record.to_dict())
        read_networks(tmp / file_name)  # reads back
    return record
