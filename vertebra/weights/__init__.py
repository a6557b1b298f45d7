"""Networks stored compactly, and the default networks shipped inside the package.

``vertebra label`` and :func:`vertebra.pipeline.load_networks` use the default networks when
no model is given. A *networks file* is two files side by side (NAME = "default" for the
packaged one, in this folder)::

    NAME.safetensors  both networks' tensors, named "localizer.KEY" and "identifier.KEY"
                      (KEY: the model's state-dict key; an ensemble's further members
                      are the parts "localizer_2", "identifier_2", ...); floating tensors in float16 (one
                      whose values do not fit float16 stays float32), integer buffers as
                      they are. A file of dtype "int8" stores the weight tensors as int8
                      with one float32 scale per output channel, under "PART.KEY#scale"
                      (:func:`vertebra.weights.export.quantize_int8`); one of dtype
                      "int8-identifiers" does so for the identifiers only and keeps the
                      localizers' weights in float16. The safetensors metadata holds,
                      as JSON under "vertebra", every other entry of the bundle that
                      :func:`vertebra.pipeline.bundle_networks` writes (model names and
                      configs, views, training settings, pipeline settings) and the
                      provenance (recipe, training data, commit).
    NAME.json         the record (:class:`Record`): sha256 and size of NAME.safetensors,
                      recipe, training data, commit, source bundle.

A networks file whose record is missing or whose checksum does not match is refused.
Tensors are read back as float32 (int8 ones times their scales), so the networks run as
trained, from rounded weights.

The environment variable ``VERTEBRA_WEIGHTS`` names another networks file (a
``.safetensors`` with its record, or a bundle ``.pt``) to use as the default.

Make the packaged default from a bundle (``vertebra export-default``, which calls
:func:`vertebra.weights.export.export_networks`)::

    $ vertebra export-default runs/demo/models/networks.pt --out vertebra/weights/ \\
          --recipe cpu-demo --data "synthetic spine phantoms"
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from vertebra.errors import VertebraError

#: Folder of the packaged default networks.
WEIGHTS_DIR = Path(__file__).resolve().parent

#: File name (without suffix) of the packaged default networks.
DEFAULT_NAME = "default"

#: Environment variable naming a networks file to use instead of the packaged default.
ENV_VAR = "VERTEBRA_WEIGHTS"

#: Largest size of a networks file that :func:`vertebra.weights.export.export_networks`
#: writes by default (MB): room for an ensemble of three ``real-ct`` networks
#: (decision ``ensemble``).
MAX_MB = 100.0

#: ``format`` entry of the safetensors metadata and of the record.
FORMAT = "vertebra.networks"

SUFFIX = ".safetensors"
#: Storage precisions of a networks file's floating tensors (``Record.dtype``).
DTYPES = ("float16", "int8", "int8-identifiers")
#: Name suffix of the per-output-channel scales of an int8 tensor.
SCALE_SUFFIX = "#scale"
#: The parts every networks file and bundle holds; an ensemble adds members named
#: "localizer_2", "identifier_2", ... (:func:`is_part`).
PARTS = ("localizer", "identifier")


def is_part(key: str) -> bool:
    """Whether a bundle entry holds a network: "localizer", "identifier", or a further
    ensemble member of either ("localizer_2", "identifier_3", ...)."""
    return re.fullmatch(r"(localizer|identifier)(_[2-9]|_[1-9][0-9]+)?", str(key)) is not None



@dataclass(frozen=True)
class Record:
    """What a networks file is, stored beside it as ``NAME.json``.

    Attributes:
        weights: file name of the ``.safetensors`` file (in the same folder).
        sha256: hex SHA-256 of that file.
        bytes: its size in bytes.
        recipe: name of the training recipe (e.g. a preset or an issue's recipe).
        training_data: what the networks were trained on, in words.
        commit: git commit of the code that trained them ("unknown" if not known).
        source: file name of the bundle they were exported from.
        dtype: storage precision of the floating tensors (:data:`DTYPES`).
        format: :data:`FORMAT`.
    """

    weights: str
    sha256: str
    bytes: int
    recipe: str
    training_data: str
    commit: str
    source: str = ""
    dtype: str = "float16"
    format: str = FORMAT

    def to_dict(self) -> dict:
        return asdict(self)


def record_path(path: str | Path) -> Path:
    """The record beside a networks file: ``NAME.safetensors`` -> ``NAME.json``."""
    return Path(path).with_suffix(".json")


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_networks_file(path: str | Path) -> bool:
    """Whether ``path`` names a networks file by its suffix (``.safetensors``)."""
    return Path(path).suffix == SUFFIX


def read_record(path: str | Path) -> Record:
    """The :class:`Record` of the networks file ``path`` (read from ``NAME.json``)."""
    path = Path(path)
    where = record_path(path)
    if not where.is_file():
        raise VertebraError(f"{path} has no record {where.name} beside it (its checksum); "
                            "vertebra export-default writes both")
    try:
        data = json.loads(where.read_text())
        record = Record(**{k: data[k] for k in Record.__dataclass_fields__ if k in data})
    except (json.JSONDecodeError, TypeError, OSError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise VertebraError(f"{where} is not a networks record: {first}") from None
    if record.format != FORMAT:
        raise VertebraError(f"{where} is not a networks record (format {record.format!r})")
    return record


def check_file(path: str | Path) -> Record:
    """Check a networks file against its record's SHA-256; returns the record.

    Raises:
        VertebraError: the file or its record is missing, or the checksum does not match.
    """
    path = Path(path)
    if not path.is_file():
        raise VertebraError(f"networks file not found: {path}")
    record = read_record(path)
    actual = sha256_of(path)
    if actual != record.sha256:
        raise VertebraError(f"{path} does not match its checksum (sha256 {actual[:12]}..., "
                            f"record {record.sha256[:12]}...): a damaged or replaced file; "
                            "export it again")
    return record


def read_networks(path: str | Path) -> dict:
    """A networks file as the bundle dict :func:`vertebra.pipeline.bundle_networks` writes.

    The checksum is checked first (:func:`check_file`).

    Returns:
        ``{"format", "localizer": ckpt, "identifier": ckpt, "view_config", "pipeline",
        "provenance"}`` (and an ensemble's further members, :func:`is_part`) where each
        ``ckpt`` holds ``"model"``, ``"config"`` and a
        ``"state_dict"`` of float32 (floating) CPU tensors.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    check_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FORMAT or "vertebra" not in meta:
                raise VertebraError(f"{path} is a safetensors file but not a vertebra networks "
                                    "file (no 'vertebra' metadata)")
            info = json.loads(meta["vertebra"])
            states: dict[str, dict] = {part: {} for part in info if is_part(part)}
            names = set(handle.keys())  # a safe_open handle is not iterable
            for key in sorted(names):
                part, _, name = key.partition(".")
                if part not in states or not name:
                    raise VertebraError(f"{path}: unexpected tensor {key!r}")
                if name.endswith(SCALE_SUFFIX):
                    if key[:-len(SCALE_SUFFIX)] not in names:
                        raise VertebraError(f"{path}: scales {key!r} of no tensor")
                    continue
                tensor = handle.get_tensor(key)
                if key + SCALE_SUFFIX in names:  # int8 with a scale per output channel
                    scale = handle.get_tensor(key + SCALE_SUFFIX).float()
                    if tensor.dtype != torch.int8 or scale.shape != tensor.shape[:1]:
                        raise VertebraError(f"{path}: {key!r} does not match its scales")
                    tensor = tensor.float() * scale.reshape((-1,) + (1,) * (tensor.dim() - 1))
                states[part][name] = tensor.float() if tensor.is_floating_point() else tensor
    except (SafetensorError, json.JSONDecodeError, OSError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise VertebraError(f"cannot read networks file {path}: {first}") from None
    bundle = {key: value for key, value in info.items() if not is_part(key)}
    for part in PARTS:
        if not isinstance(info.get(part), dict):
            raise VertebraError(f"{path} holds no {part} network")
    for part, state in states.items():
        if not isinstance(info[part], dict):
            raise VertebraError(f"{path}: the entry {part!r} is not a network")
        bundle[part] = {**info[part], "state_dict": state}
    return bundle


def default_path() -> Path:
    """The networks file used when no model is given.

    ``$VERTEBRA_WEIGHTS`` when set, else ``vertebra/weights/default.safetensors``.

    Raises:
        VertebraError: no such file (with how to make or name one).
    """
    named = os.environ.get(ENV_VAR, "").strip()
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise VertebraError(f"{ENV_VAR} names {path}, which is not a file")
        return path
    path = WEIGHTS_DIR / f"{DEFAULT_NAME}{SUFFIX}"
    if not path.is_file():
        raise VertebraError(
            f"no default networks are packaged ({path} is missing): pass --model BUNDLE, "
            f"set {ENV_VAR}, or make them with `vertebra export-default BUNDLE --out "
            f"{WEIGHTS_DIR}`")
    return path


def describe(path: str | Path) -> dict:
    """``{"path", ...record}`` of a networks file, ``{"path"}`` of any other checkpoint."""
    info = {"path": str(path)}
    if is_networks_file(path):
        info.update(read_record(path).to_dict())
    return info
