"""Where training CTs come from: ``phantoms:N``, a VerSe-layout folder, or a prerender cache.

A *CT source* is a sized collection of :class:`TrainingCT` (an attenuation volume with
its centroids) loaded on demand; :func:`open_data` turns the ``DATA`` argument of the
``vertebra`` commands into one:

* ``phantoms:N`` -- N synthetic spines, seeds 0..N-1 (``phantoms:A:B``: seeds A..B-1),
  from :func:`vertebra.data.phantom.make_spine_phantom`;
* a folder holding ``cache.json`` -- views rendered beforehand by ``vertebra prerender``
  (a :class:`vertebra.training.rendered.RenderedCache`);
* any other folder -- a VerSe-layout dataset (cases with a CT and centroids, a JSON or a
  mask).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from vertebra.errors import VertebraError
from vertebra.training.collection import LazyCollection, TrainingCT

_PHANTOMS = re.compile(r"^phantoms:(?P<a>\d+)(:(?P<b>\d+))?$")


class CTSource(LazyCollection):
    """CTs to render on the fly: ``load(i)`` -> :class:`TrainingCT`."""

    def describe(self) -> dict:
        """What the CTs are, given their names: JSON-ready, recorded in prerender caches
        (which refuse to mix two sources' CTs under the same case names)."""
        return {"kind": type(self).__name__}


class PhantomSource(CTSource):
    """Synthetic spines from :func:`vertebra.data.phantom.make_spine_phantom`.

    A random run of levels covers the ends of the spine rarely (C1 in fewer than one scan
    in ten, L4-L5 with the sacrum in one in five, against three in five for T2), while
    clinical CTs are often neck or lumbar scans. ``c1_share`` and ``sacrum_share`` give
    those ends their own share of the scans; each phantom's draw comes from its seed.

    Args:
        seeds: one phantom per seed.
        cache: phantoms kept in memory.
        c1_share: share of the phantoms whose scan starts at C1 and ends between C4 and
            T4.
        sacrum_share: share of the phantoms whose scan ends at L5 with the sacrum in view
            (unless the phantom has an L6) and starts between T4 and L2.
        clinical_share: share of the phantoms made with ``clinical=True`` (organs,
            contrast, arms; :mod:`vertebra.data._clinical`), drawn per seed.
        **options: passed to ``make_spine_phantom`` (e.g. ``size="small"``).
    """

    #: Last vertebrae of the scans that ``c1_share`` starts at C1.
    C1_ENDS = ("C4", "C5", "C6", "C7", "T1", "T2", "T3", "T4")
    #: First vertebrae of the scans that ``sacrum_share`` ends at L5.
    SACRUM_STARTS = ("T4", "T6", "T8", "T10", "T11", "T12", "L1", "L2")

    def __init__(self, seeds, cache: int = 8, c1_share: float = 0.0,
                 sacrum_share: float = 0.0, clinical_share: float = 0.0, **options) -> None:
        super().__init__(cache)
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise VertebraError("no phantom seeds given")
        for name, share in (("c1_share", c1_share), ("sacrum_share", sacrum_share),
                            ("clinical_share", clinical_share)):
            if not 0 <= share <= 1:
                raise VertebraError(f"{name} must lie in [0, 1], got {share}")
            if share and "levels" in options and name != "clinical_share":
                raise VertebraError(f"give either {name} or levels, not both")
        if c1_share + sacrum_share > 1:
            raise VertebraError(f"c1_share + sacrum_share must be at most 1, got "
                                f"{c1_share + sacrum_share}")
        self.c1_share, self.sacrum_share = float(c1_share), float(sacrum_share)
        self.clinical_share = float(clinical_share)
        if clinical_share and "clinical" in options:
            raise VertebraError("give either clinical_share or clinical, not both")
        self.options = options

    def clinical(self, index: int) -> bool:
        """Whether phantom ``index`` is a clinical one (``clinical_share``)."""
        if not self.clinical_share:
            return bool(self.options.get("clinical", False))
        return bool(np.random.default_rng([self.seeds[index], 0xC11]).random()
                    < self.clinical_share)

    def levels(self, index: int):
        """The ``levels`` argument of phantom ``index`` (None: drawn by the phantom)."""
        if not self.c1_share and not self.sacrum_share:
            return self.options.get("levels")
        rng = np.random.default_rng([self.seeds[index], 0xC1])
        draw = rng.random()
        if draw < self.c1_share:
            return ("C1", self.C1_ENDS[int(rng.integers(len(self.C1_ENDS)))])
        if draw < self.c1_share + self.sacrum_share:
            return (self.SACRUM_STARTS[int(rng.integers(len(self.SACRUM_STARTS)))], "L5")
        return None

    def __len__(self) -> int:
        return len(self.seeds)

    def name(self, index: int) -> str:
        return f"phantom{self.seeds[index]:04d}"

    def describe(self) -> dict:
        from drrkit.io import json_safe

        # a phantom's seed is in its name; these decide the rest of it
        out = {"kind": "phantoms", "c1_share": self.c1_share,
               "sacrum_share": self.sacrum_share, "options": json_safe(self.options)}
        if self.clinical_share:
            out["clinical_share"] = self.clinical_share
        return out

    def _load(self, index: int) -> TrainingCT:
        import drrkit
        from vertebra import labels as vlabels
        from vertebra.data.phantom import make_spine_phantom

        options = {**self.options, "levels": self.levels(index)}
        if self.clinical_share:
            options["clinical"] = self.clinical(index)
        ph = make_spine_phantom(self.seeds[index], **options)
        mu = ph.ct.with_data(drrkit.hu_to_mu(ph.ct.data))
        s1 = {vlabels.SACRUM: np.array(ph.anatomy.sacrum_centres[0], dtype=np.float64)}
        return TrainingCT(self.name(index), mu, dict(ph.centroids), ph.transitional == "t13", s1)


class VerseSource(CTSource):
    """The cases of a VerSe-layout folder that have centroids (JSON or mask).

    Args:
        root: the folder.
        cache_mib: MiB of attenuation volumes kept in memory (a CT is weighed by its
            float32 voxels: a 512 x 512 x 600 scan takes 600 MiB); the last CT loaded
            always stays.
    """

    def __init__(self, root: str | Path, cache_mib: float = 2048) -> None:
        from vertebra.data.dataset import VerseDataset

        super().__init__(cache_mib)
        self.dataset = VerseDataset(root, require="centroids")
        if len(self.dataset) == 0:
            raise VertebraError(
                f"{root}: no CTs with centroids found (expected a VerSe-layout folder with "
                "*_ct.nii.gz and *_ctd.json or *_msk.nii.gz, a prerender cache with "
                "cache.json, or phantoms:N)")

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self) -> dict:
        return {"kind": "verse", "root": str(Path(self.dataset.root).resolve())}

    def name(self, index: int) -> str:
        return self.dataset[index].name

    def _weight(self, item: TrainingCT) -> float:
        return item.volume.data.nbytes / 2**20

    def _load(self, index: int) -> TrainingCT:
        from vertebra import labels as vlabels

        case = self.dataset[index]
        volume = case.load_ct()  # the files hold CT numbers: attenuation in 1/mm
        centroids = {k: np.asarray(v, dtype=np.float64)
                     for k, v in case.centroids().items() if vlabels.is_vertebra(k)}
        t13 = vlabels.by_name("T13").verse_id in centroids
        return TrainingCT(case.name, volume, centroids, t13)


def crop_z(ct: TrainingCT, first: int, last: int, reach: tuple[float, float] = (0.5, 0.5)
           ) -> TrainingCT:
    """A CT cut along the spine to keep vertebrae ``first`` .. ``last`` (a shorter scan).

    Vertebrae are taken in spine order (VerSe ids ascending). The cut above vertebra
    ``first`` lies ``reach[0]`` of the way from its centroid to the centroid of the
    vertebra above it, and likewise below ``last``; a side with no neighbour is not cut.
    The slab is cut along the index axis closest to world z (the voxel slices whose centres
    lie between the cuts, geometry kept exact), and the centroids inside the new box are
    kept -- with reaches under 1,
    exactly ``first`` .. ``last`` when the spine runs along that axis.

    Args:
        ct: the CT, at least two vertebrae.
        first, last: positions in spine order, ``0 <= first <= last < n``.
        reach: fractions in (0, 1) towards the outside neighbours.

    Returns:
        a :class:`TrainingCT` with the cropped volume and the centroids inside it.

    Example:
        >>> import drrkit
        >>> vol = drrkit.Volume(np.zeros((100, 4, 4), np.float32))  # z 0 .. 99 mm
        >>> z = {1: 70.0, 2: 50.0, 3: 30.0, 4: 10.0}  # VerSe id -> z mm, C1 on top
        >>> ct = TrainingCT("a", vol, {k: np.array([0, 0, v]) for k, v in z.items()}, False)
        >>> cut = crop_z(ct, 1, 2)  # C2 and C3: slices 20 .. 60 mm, halfway to C1 and C4
        >>> cut.volume.shape_xyz[2], sorted(cut.centroids), float(cut.volume.origin[2])
        (41, [2, 3], 20.0)
    """
    keys = sorted(ct.centroids)
    if not 0 <= first <= last < len(keys):
        raise VertebraError(f"need 0 <= first <= last < {len(keys)}, got {first}, {last}")
    if not all(0 < r < 1 for r in reach):
        raise VertebraError(f"reach must lie in (0, 1), got {reach}")
    vol = ct.volume
    axis = vol.slice_axis
    n = vol.shape_xyz[axis]
    along = {k: vol.world_to_voxel(ct.centroids[k])[axis] for k in keys}
    lo, hi = -0.5, n - 0.5  # the box in continuous index along the axis
    for inside, outside, r in ((first, first - 1, reach[0]), (last, last + 1, reach[1])):
        if 0 <= outside < len(keys):
            a, b = along[keys[inside]], along[keys[outside]]
            cut = a + r * (b - a)
            if b < a:
                lo = max(lo, cut)
            else:
                hi = min(hi, cut)
    start, stop = max(int(np.ceil(lo)), 0), min(int(np.floor(hi)) + 1, n)
    if stop <= start:
        raise VertebraError(f"the crop of {ct.name} keeps no voxel slice")
    first_voxel, end_voxel = np.zeros(3, np.int64), np.asarray(vol.shape_xyz, np.int64)
    first_voxel[axis], end_voxel[axis] = start, stop
    cropped = vol.crop(first_voxel, end_voxel)
    keep = {k: v for k, v in ct.centroids.items()
            if start - 0.5 <= along.get(k, -np.inf) <= stop - 0.5}
    return TrainingCT(ct.name, cropped, keep, ct.t13, dict(ct.anchors))  # drawn if inside


def check_reach(reach, name: str = "reach") -> tuple[float, float]:
    """``reach`` as a (low, high) tuple of floats with ``0 < low <= high < 1`` (see
    :class:`CroppedSource`); VertebraError naming ``name`` otherwise."""
    try:
        low, high = (float(r) for r in reach)
    except (TypeError, ValueError):
        raise VertebraError(f"{name} must be a (low, high) pair, got {reach!r}") from None
    if not 0 < low <= high < 1:
        raise VertebraError(f"{name} must be a range inside (0, 1), got {tuple(reach)}")
    return low, high


class CroppedSource(CTSource):
    """Each CT of a source, then ``crops`` shorter scans cut from it (:func:`crop_z`).

    Real scans often show four or five vertebrae with no landmark (skull, sacrum) in view;
    cutting long training scans short teaches the networks to label those. Item
    ``i * (crops + 1)`` is CT ``i`` whole, the next ``crops`` items its crops, named
    ``<name>-z1`` ...; each crop keeps ``min_vertebrae`` or more consecutive vertebrae
    (fewer than the whole), chosen by a generator seeded with ``(seed, i, copy)``, and
    cuts each side at a reach (see :func:`crop_z`) drawn uniformly from ``reach``. Reaches
    near 0 cut into the outermost kept vertebrae, reaches near 1 keep most of the
    next vertebra outside (its centroid is not in the scan, so it is no target): real
    scans end anywhere along a vertebra.

    Args:
        source: the CT source.
        crops: shorter scans per CT (0: the source unchanged).
        min_vertebrae: fewest vertebrae a crop keeps (a CT with no more than this is
            repeated whole).
        seed: seed of the crops.
        reach: (low, high) range of the reaches, inside (0, 1).
    """

    def __init__(self, source: CTSource, crops: int = 1, min_vertebrae: int = 4,
                 seed: int = 0, reach: tuple[float, float] = (0.3, 0.7)) -> None:
        super().__init__(cache=1)  # the inner source caches the CTs
        if int(crops) < 0 or int(min_vertebrae) < 1:
            raise VertebraError("need crops >= 0 and min_vertebrae >= 1")
        self.source, self.crops = source, int(crops)
        self.min_vertebrae, self.seed = int(min_vertebrae), int(seed)
        self.reach = check_reach(reach)

    def __len__(self) -> int:
        return len(self.source) * (self.crops + 1)

    def describe(self) -> dict:
        if not self.crops:
            return self.source.describe()
        return {"kind": "cropped", "crops": self.crops, "min_vertebrae": self.min_vertebrae,
                "seed": self.seed, "reach": list(self.reach), "source": self.source.describe()}

    def name(self, index: int) -> str:
        i, copy = divmod(int(index), self.crops + 1)
        return self.source.name(i) + (f"-z{copy}" if copy else "")

    def _load(self, index: int) -> TrainingCT:
        i, copy = divmod(int(index), self.crops + 1)
        ct = self.source.load(i)
        n = len(ct.centroids)
        if copy == 0:
            return ct
        if n > self.min_vertebrae:
            rng = np.random.default_rng([self.seed, i, copy])
            length = int(rng.integers(self.min_vertebrae, n))
            first = int(rng.integers(0, n - length + 1))
            ct = crop_z(ct, first, first + length - 1, tuple(rng.uniform(*self.reach, 2)))
        return replace(ct, name=self.name(index))


class SceneSource(CTSource):
    """Each CT of a source as the pipeline renders it for the networks.

    Every CT goes through :func:`vertebra.scene.network_scene`, the rule labelling
    applies before it renders (``PipelineConfig.dense_hu`` and ``complete_body``): with
    ``dense_hu`` its voxels denser than bone become soft tissue, with ``complete_body`` a
    CT whose small field of view the body fills is placed inside a completed trunk. A CT
    neither changes passes as it is. Training on such views makes training and labelling
    render alike (decisions ``body-completion``, ``dense-contrast``). The centroids, names
    and anchors stay: neither step moves a voxel.

    Args:
        source: the CT source.
        complete_body: complete cut scans' trunks.
        dense_hu: CT number (HU) above which voxels become soft tissue; None keeps them.
    """

    def __init__(self, source: CTSource, *, complete_body: bool = True,
                 dense_hu: float | None = None) -> None:
        from drrkit.dense import check_dense_hu

        super().__init__(cache=1)  # the inner source caches the CTs
        self.source, self.complete_body = source, bool(complete_body)
        self.dense_hu = None if dense_hu is None else check_dense_hu(dense_hu)

    def __len__(self) -> int:
        return len(self.source)

    def describe(self) -> dict:
        if self.complete_body and self.dense_hu is None:  # as caches made before dense_hu
            return {"kind": "completed", "source": self.source.describe()}
        return {"kind": "scene", "complete_body": self.complete_body,
                "dense_hu": self.dense_hu, "source": self.source.describe()}

    def name(self, index: int) -> str:
        return self.source.name(index)

    def _load(self, index: int) -> TrainingCT:
        from vertebra.scene import network_scene

        ct = self.source.load(index)
        _, volume = network_scene(ct.volume, dense_hu=self.dense_hu,
                                  complete_body=self.complete_body)
        return ct if volume is ct.volume else replace(ct, volume=volume)


def parse_phantoms(spec: str) -> list[int] | None:
    """Seeds of a ``phantoms:N`` / ``phantoms:A:B`` spec, or None if ``spec`` is not one."""
    m = _PHANTOMS.match(str(spec).strip())
    if m is None:
        if str(spec).strip().startswith("phantoms"):
            raise VertebraError(f"bad phantom spec {spec!r}; use phantoms:N or phantoms:A:B")
        return None
    a, b = int(m["a"]), m["b"]
    seeds = list(range(a)) if b is None else list(range(a, int(b)))
    if not seeds:
        raise VertebraError(f"{spec!r} selects no phantoms")
    return seeds


def open_data(spec: str | Path, *, cache: int = 8, cache_mib: float = 2048,
              phantom_options: dict | None = None):
    """The ``DATA`` argument -> a :class:`CTSource` or a ``RenderedCache``.

    Args:
        spec: ``phantoms:N``, ``phantoms:A:B``, a prerender cache folder or a VerSe folder.
        cache: phantoms kept in memory.
        cache_mib: MiB of VerSe CTs kept in memory (:class:`VerseSource`).
        phantom_options: passed to ``make_spine_phantom``.
    """
    seeds = parse_phantoms(str(spec))
    if seeds is not None:
        return PhantomSource(seeds, cache=cache, **(phantom_options or {}))
    path = Path(spec)
    if not path.is_dir():
        raise VertebraError(f"{spec}: not a folder and not phantoms:N")
    if (path / "cache.json").is_file():
        from vertebra.training.rendered import RenderedCache

        return RenderedCache(path)
    return VerseSource(path, cache_mib=cache_mib)
