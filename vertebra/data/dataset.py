"""Index a VerSe-layout folder into cases; centroids from JSON or from the vertebra mask.

Layout (the restructured VerSe releases, BIDS-like)::

    ROOT/rawdata/sub-verse004/sub-verse004_ct.nii.gz
    ROOT/derivatives/sub-verse004/sub-verse004_seg-vert_msk.nii.gz
    ROOT/derivatives/sub-verse004/sub-verse004_seg-subreg_ctd.json

A case is one CT; its *stem* is the file name before ``_ct.nii[.gz]`` (it may carry more
entities, e.g. ``sub-verse500_split-verse251`` or ``sub-gl003_dir-ax``), and its
derivatives are the files under ``derivatives/`` named ``<stem>_seg-...``: a mask ending
in ``_msk.nii[.gz]`` (``seg-vert`` preferred) and a centroid file ending in
``_ctd.json``. Folders without ``rawdata/`` are searched recursively for ``*_ct.nii*``
with derivatives anywhere under the root.

Centroids come from the JSON when there is one, otherwise from the mask: the centre of
mass of each label's voxels, mapped to world mm through the mask's own geometry (so any
orientation and anisotropic spacing are handled). A vertebra cut by the edge of the
field of view has a centre of mass biased towards the inside; ``truncated="drop"`` leaves
out labels that touch the volume's boundary.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vertebra import labels as vlabels
from vertebra.data.verse import read_centroids
from vertebra.errors import VertebraError

_CT = re.compile(r"^(?P<stem>.+)_ct\.nii(\.gz)?$")
_MASK = re.compile(r"^(?P<stem>.+?)_seg-(?P<kind>[A-Za-z0-9]+)_msk\.nii(\.gz)?$")
_CTD = re.compile(r"^(?P<stem>.+?)_seg-(?P<kind>[A-Za-z0-9]+)_ctd\.json$")


@dataclass(frozen=True)
class VerseCase:
    """One CT of a VerSe-layout folder and its derivatives.

    Attributes:
        name: the file stem, e.g. "sub-verse004" or "sub-verse500_split-verse251".
        subject: the subject id, e.g. "sub-verse004".
        ct: path of the CT (NIfTI, Hounsfield units).
        mask: path of the vertebra mask (voxel values = VerSe ids), or None.
        centroid_file: path of the centroid JSON, or None.
    """

    name: str
    subject: str
    ct: Path
    mask: Path | None = None
    centroid_file: Path | None = None

    def load_ct(self, units: str = "hu", **kwargs):
        """The CT as a ``drrkit.Volume`` of attenuation in 1/mm (``drrkit.load_volume``).

        ``units`` names what the *file* holds: "hu" (CT numbers, as in VerSe; converted
        with ``drrkit.hu_to_mu``) or "mu" (already 1/mm, taken unchanged).
        """
        import drrkit

        return drrkit.load_volume(self.ct, units=units, **kwargs)

    def load_mask(self):
        """The vertebra mask as a ``drrkit.Volume`` holding int32 VerSe ids."""
        if self.mask is None:
            raise VertebraError(f"case {self.name} has no vertebra mask")
        return _load_label_volume(self.mask)

    def centroids(self, *, source: str = "auto", format: str = "verse20",
                  vertebrae_only: bool = True, truncated: str = "keep") -> dict[int, np.ndarray]:
        """Centroids in world LPS mm, {VerSe id: (3,)}, in anatomical order.

        Args:
            source: "auto" (JSON if present, else mask), "json" or "mask".
            format: centroid file format, "verse20" or "verse19" (see vertebra.data.verse).
            vertebrae_only: keep only the 26 vertebra targets (drop sacrum, coccyx, others).
            truncated: for centroids from the mask, "keep" or "drop" labels touching the
                volume boundary.
        """
        if source not in ("auto", "json", "mask"):
            raise VertebraError(f"unknown centroid source {source!r}; choose auto, json or mask")
        if source == "json" or (source == "auto" and self.centroid_file is not None):
            if self.centroid_file is None:
                raise VertebraError(f"case {self.name} has no centroid file")
            # the JSON refers to the CT's (= the mask's) voxel grid; read the header only
            out = read_centroids(self.centroid_file, self.ct, format=format)
        elif self.mask is not None:
            out = centroids_from_mask(self.mask, truncated=truncated,
                                      vertebrae_only=vertebrae_only)
        else:
            raise VertebraError(f"case {self.name} has neither a centroid file nor a mask")
        if vertebrae_only:
            out = {k: v for k, v in out.items() if vlabels.is_vertebra(k)}
        return {k: out[k] for k in _anatomical_keys(out)}


def _anatomical_keys(d: dict[int, Any]) -> list[int]:
    targets = [k for k in d if vlabels.is_vertebra(k)]
    others = sorted(k for k in d if not vlabels.is_vertebra(k))
    return vlabels.sort_anatomical(targets) + others


class VerseDataset:
    """The cases of a VerSe-layout folder, sorted by name.

    Args:
        root: the folder holding ``rawdata/`` and ``derivatives/`` (or any folder with
            ``*_ct.nii[.gz]`` files).
        require: "none", "mask", "centroids" (a JSON or a mask) or "json": leave out cases
            that lack it.

    Example:
        >>> ds = VerseDataset("/data/verse20/training")  # doctest: +SKIP
        >>> case = ds[0]; ctd = case.centroids()          # doctest: +SKIP
    """

    def __init__(self, root: str | Path, *, require: str = "none") -> None:
        if require not in ("none", "mask", "centroids", "json"):
            raise VertebraError(
                f"unknown requirement {require!r}; choose none, mask, centroids or json")
        self.root = Path(root)
        cases = index_verse(self.root)
        if require == "mask":
            cases = [c for c in cases if c.mask is not None]
        elif require == "json":
            cases = [c for c in cases if c.centroid_file is not None]
        elif require == "centroids":
            cases = [c for c in cases if c.mask is not None or c.centroid_file is not None]
        self.cases: list[VerseCase] = cases

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int | str) -> VerseCase:
        """A case by position or by name."""
        if isinstance(index, str):
            for case in self.cases:
                if case.name == index:
                    return case
            raise KeyError(index)
        return self.cases[index]

    def __iter__(self) -> Iterator[VerseCase]:
        return iter(self.cases)

    def __repr__(self) -> str:
        return f"VerseDataset({str(self.root)!r}, {len(self)} cases)"


def index_verse(root: str | Path) -> list[VerseCase]:
    """All CTs under ``root`` with their derivatives, sorted by name (see module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise VertebraError(f"no such folder: {root}")
    raw = root / "rawdata"
    ct_root = raw if raw.is_dir() else root
    deriv = root / "derivatives"
    deriv_root = deriv if deriv.is_dir() else root

    masks: dict[str, list[tuple[str, Path]]] = {}
    jsons: dict[str, list[tuple[str, Path]]] = {}
    for path in sorted(deriv_root.rglob("*_seg-*")):
        if not path.is_file():
            continue
        m = _MASK.match(path.name)
        if m:
            masks.setdefault(m["stem"], []).append((m["kind"], path))
            continue
        m = _CTD.match(path.name)
        if m:
            jsons.setdefault(m["stem"], []).append((m["kind"], path))

    cases = []
    for path in sorted(ct_root.rglob("*_ct.nii*")):
        m = _CT.match(path.name)
        if not m or not path.is_file():
            continue
        stem = m["stem"]
        subject = stem.split("_")[0]
        cases.append(VerseCase(
            name=stem,
            subject=subject,
            ct=path,
            mask=_pick(masks.get(stem), "vert", stem, "mask"),
            centroid_file=_pick(jsons.get(stem), "subreg", stem, "centroid file"),
        ))
    names = [c.name for c in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise VertebraError(f"{root}: more than one CT named {dup[0]}_ct")
    return sorted(cases, key=lambda c: c.name)


def _pick(found: list[tuple[str, Path]] | None, preferred: str, stem: str, what: str
          ) -> Path | None:
    if not found:
        return None
    best = [p for kind, p in found if kind == preferred]
    if len(best) == 1:
        return best[0]
    if len(found) == 1:
        return found[0][1]
    warnings.warn(f"{stem}: {len(found)} candidate {what}s; using {found[0][1].name}",
                  stacklevel=3)
    return found[0][1]


# ---------------------------------------------------------------------- centroids from masks
def _load_label_volume(mask: Any):
    import drrkit

    if isinstance(mask, (str, Path)):
        from drrkit.volume import _read_sitk

        mask = _read_sitk(Path(mask))
    if hasattr(mask, "GetSize"):
        mask = drrkit.Volume.from_sitk(mask)
    if not isinstance(mask, drrkit.Volume):
        raise VertebraError(
            f"expected a mask as a drrkit.Volume, SimpleITK image or path, got {type(mask).__name__}")
    data = np.asarray(mask.data)
    if not np.issubdtype(data.dtype, np.integer):
        finite = np.isfinite(data)
        if not finite.all():
            data = np.where(finite, data, 0)
        rounded = np.rint(data)
        if np.any(np.abs(rounded - data) > 1e-3):
            raise VertebraError("a label mask must hold whole numbers")
        data = rounded
    return mask.with_data(data.astype(np.int32, copy=False))


def label_centers(mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Voxel count and centre of mass of every positive label, plus boundary contact.

    Args:
        mask: a ``drrkit.Volume`` / SimpleITK image / path of integer labels.

    Returns:
        labels (L,) int64 present (> 0), counts (L,) int64 voxels, index centres (L, 3)
        float64 continuous voxel index (i, j, k), and touches_border (L,) bool.
    """
    vol = _load_label_volume(mask)
    data = vol.data
    data = np.where(data > 0, data, 0)
    top = int(data.max()) if data.size else 0
    if top == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0, bool)
    nz, ny, nx = data.shape
    jj, ii = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64),
                         indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    count = np.zeros(top + 1)
    sums = np.zeros((3, top + 1))
    # one slice at a time: memory stays O(slice) for any volume size
    for k in range(nz):
        lab = data[k].ravel()
        c = np.bincount(lab, minlength=top + 1)
        count += c
        sums[0] += np.bincount(lab, weights=ii, minlength=top + 1)
        sums[1] += np.bincount(lab, weights=jj, minlength=top + 1)
        sums[2] += k * c
    present = np.flatnonzero(count[1:] > 0) + 1
    centres = (sums[:, present] / count[present]).T
    faces = [data[0], data[-1], data[:, 0], data[:, -1], data[:, :, 0], data[:, :, -1]]
    on_border = np.unique(np.concatenate([f.ravel() for f in faces]))
    touches = np.isin(present, on_border)
    return present.astype(np.int64), count[present].astype(np.int64), centres, touches


def centroids_from_mask(
    mask: Any,
    *,
    vertebrae_only: bool = True,
    truncated: str = "keep",
    min_voxels: int = 1,
) -> dict[int, np.ndarray]:
    """Centre of mass of each vertebra label, in world LPS mm.

    Args:
        mask: integer label image (VerSe ids): ``drrkit.Volume``, SimpleITK image or path.
        vertebrae_only: keep only the 26 vertebra targets (drop 26 sacrum, 27 coccyx, ...).
        truncated: "keep" or "drop" labels whose voxels touch the volume's boundary
            (vertebrae cut by the field of view, whose centre of mass is biased).
        min_voxels: leave out labels with fewer voxels than this.

    Returns:
        {VerSe id: (3,) world mm}, in anatomical order.
    """
    if truncated not in ("keep", "drop"):
        raise VertebraError(f"truncated must be 'keep' or 'drop', got {truncated!r}")
    vol = _load_label_volume(mask)
    labs, counts, centres, touches = label_centers(vol)
    keep = counts >= min_voxels
    if truncated == "drop":
        keep &= ~touches
    labs, centres = labs[keep], centres[keep]
    world = vol.voxel_to_world(centres)
    out = {int(lab): world[n] for n, lab in enumerate(labs)}
    if vertebrae_only:
        out = {k: v for k, v in out.items() if vlabels.is_vertebra(k)}
    return {k: out[k] for k in _anatomical_keys(out)}
