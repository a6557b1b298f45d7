"""Views rendered from a CT with their targets, in memory or cached on disk as ``.npz``.

:func:`render_views` is the one place where training data is made from a CT: the CT's
attenuation volume -> :meth:`ViewConfig.geometry` (one orbit per start angle) ->
:meth:`ViewConfig.render` -> :func:`vertebra.targets.make_targets`. The result, a
:class:`RenderedViews`, is what the training datasets crop and augment.

On a CPU, rendering for every step is slow next to a small network's step, so
``vertebra prerender`` writes one ``.npz`` per CT into a folder with a ``cache.json``
manifest (:func:`prerender`); :class:`RenderedCache` reads such a folder back (or wraps
a list of :class:`RenderedViews` held in memory).

File layout of ``CASE.npz`` (written atomically)::

    images    (V, H, W) float32   network inputs (line integrals / intensity_scale)
    heatmaps  (V, H, W) float32   Gaussian heatmaps, max over vertebrae
    id_maps   (V, H, W) uint8     network class per pixel (0 background; 27 the sacrum,
                                  when the CT's S1 is known and in view)
    pixel_mm  (V, 2)    float64   pixel size at the isocentre (column, row), mm
    labels    (N,)      int64     VerSe ids of the centroids, cranio-caudal
    pixels    (V, N, 2) float64   projected centroids (col, row)
    visible   (V, N)    bool      centroid projects onto the detector and lies in the CT
    meta      ()        str       JSON: format, version, name, t13, view_config,
                                  geometry (drrkit.io geometry JSON), sigma_mm,
                                  square_mm, sacrum, start_angles ((R,) orbit start
                                  angles, degrees; null when not recorded)

A rerun of :func:`prerender` into the same folder keeps a ``CASE.npz`` only when its
``meta``, less the fields that describe the CT itself (:data:`CT_FIELDS`), equals what
this run would write: same cache version, views, target sizes and orbit angles. Version
2 reads VerSe CT numbers as attenuation correctly; older folders are refused by
:class:`RenderedCache` and rendered again by ``vertebra prerender``.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vertebra.errors import VertebraError
from vertebra.training.collection import LazyCollection, TrainingCT
from vertebra.views import ViewConfig

CACHE_FORMAT = "vertebra.prerender"
CACHE_VERSION = 2  # 2: VerSe CT numbers read as attenuation, start angles

#: ``meta`` fields that follow from the CT (its name, and the version that read it), not
#: from the render settings; every other field must match for a cached file to be reused.
CT_FIELDS = ("name", "t13", "geometry", "sacrum")


def render_settings(view_config: ViewConfig, start_angles, sigma_mm: float,
                    square_mm: float) -> dict:
    """The ``meta`` fields of a ``CASE.npz`` other than :data:`CT_FIELDS`, as JSON reads
    them back (lists for tuples).

    Args:
        view_config: the C-arm.
        start_angles: (R,) orbit start angles in degrees, or None when not recorded.
        sigma_mm, square_mm: target sizes at the isocentre, mm.
    """
    angles = None if start_angles is None else [float(a) for a in start_angles]
    return json.loads(json.dumps({
        "format": CACHE_FORMAT, "version": CACHE_VERSION,
        "view_config": view_config.to_dict(), "sigma_mm": float(sigma_mm),
        "square_mm": float(square_mm), "start_angles": angles}))


@dataclass(frozen=True, eq=False)
class RenderedViews:
    """V views of one CT with their training targets (see the module docstring).

    Attributes:
        name: case name.
        images: (V, H, W) float32 network inputs.
        heatmaps: (V, H, W) float32.
        id_maps: (V, H, W) uint8 network classes.
        pixel_mm: (V, 2) mm at the isocentre per pixel (column, row).
        labels: (N,) int64 VerSe ids, cranio-caudal.
        pixels: (V, N, 2) projected centroids (col, row).
        visible: (V, N) bool.
        t13: whether the spine has a T13.
        geometry: ``drrkit.Geometry`` of the V views.
        view_config: the :class:`ViewConfig` used.
        sigma_mm: heatmap sigma at the isocentre, mm.
        square_mm: identification square side at the isocentre, mm.
        sacrum: the CT's first sacral body was known, so ``id_maps`` hold the sacrum class
            where it is in view (:data:`vertebra.labels.SACRUM_CLASS`).
        start_angles: (R,) start angle of each orbit in degrees, when recorded
            (:func:`prerender` does; a cached file is reused only for the same angles).
    """

    name: str
    images: np.ndarray
    heatmaps: np.ndarray
    id_maps: np.ndarray
    pixel_mm: np.ndarray
    labels: np.ndarray
    pixels: np.ndarray
    visible: np.ndarray
    t13: bool
    geometry: object
    view_config: ViewConfig
    sigma_mm: float
    square_mm: float
    sacrum: bool = False
    start_angles: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return len(self.images)

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` described in the module docstring, atomically."""
        from drrkit.io import atomic_write, geometry_to_json

        meta = {
            **render_settings(self.view_config, self.start_angles, self.sigma_mm,
                              self.square_mm),
            "name": self.name, "t13": bool(self.t13),
            "geometry": geometry_to_json(self.geometry), "sacrum": bool(self.sacrum),
        }
        arrays = {"images": self.images.astype(np.float32),
                  "heatmaps": self.heatmaps.astype(np.float32),
                  "id_maps": self.id_maps.astype(np.uint8), "pixel_mm": self.pixel_mm,
                  "labels": self.labels.astype(np.int64), "pixels": self.pixels,
                  "visible": self.visible, "meta": np.array(json.dumps(meta))}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a handle: np.savez would append ".npz"
                np.savez_compressed(handle, **arrays)

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RenderedViews:
        """Read a file written by :meth:`save`."""
        from drrkit.io import geometry_from_json

        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(str(arrays.pop("meta")))
        except (OSError, ValueError, KeyError) as exc:
            raise VertebraError(f"cannot read rendered views {path}: {exc}") from None
        if meta.get("format") != CACHE_FORMAT:
            raise VertebraError(f"{path} is not a vertebra prerender file")
        if meta.get("version") != CACHE_VERSION:
            raise VertebraError(f"{path} was written by prerender cache version "
                                f"{meta.get('version')}, not {CACHE_VERSION}; run vertebra "
                                "prerender again")
        return cls(
            name=meta["name"], images=arrays["images"], heatmaps=arrays["heatmaps"],
            id_maps=arrays["id_maps"], pixel_mm=arrays["pixel_mm"], labels=arrays["labels"],
            pixels=arrays["pixels"], visible=arrays["visible"], t13=bool(meta["t13"]),
            geometry=geometry_from_json(meta["geometry"]),
            view_config=ViewConfig.from_dict(meta["view_config"]),
            sigma_mm=float(meta["sigma_mm"]), square_mm=float(meta["square_mm"]),
            sacrum=bool(meta.get("sacrum", False)),
            start_angles=None if meta.get("start_angles") is None
            else tuple(float(a) for a in meta["start_angles"]))


def concat_geometries(parts):
    """Several ``drrkit.Geometry`` of one detector size -> one with all their views."""
    from drrkit.geometry import Geometry

    first = parts[0]
    if any((g.height, g.width) != (first.height, first.width) for g in parts):
        raise VertebraError("cannot join geometries of different detector sizes")
    cat = [np.concatenate([getattr(g, a) for g in parts]) for a in
           ("sources", "detector_origins", "u", "v")]
    return Geometry(*cat, first.height, first.width,
                    np.concatenate([g.angles_deg for g in parts]))


def render_views(ct: TrainingCT, view_config: ViewConfig, start_angles=(0.0,), *,
                 views=None, sigma_mm: float = 3.0, square_mm: float = 22.0,
                 backend: str = "auto") -> RenderedViews:
    """Render one CT on one or more orbits and make every view's targets.

    Args:
        ct: the CT (attenuation volume and centroids).
        view_config: the C-arm; each orbit has ``view_config.views`` views.
        start_angles: (R,) start angle of each orbit in degrees.
        views: optional view indices within each orbit to keep (default all K).
        sigma_mm, square_mm: target sizes at the isocentre (see :func:`make_targets`).
        backend: drrkit render backend.

    Returns:
        :class:`RenderedViews` with V = R * (number of kept views).
    """
    from vertebra.targets import make_targets

    angles = np.atleast_1d(np.asarray(start_angles, dtype=np.float64))
    if angles.ndim != 1 or len(angles) == 0 or not np.all(np.isfinite(angles)):
        raise VertebraError("start_angles must be a non-empty list of finite degrees")
    size = view_config.detector_size(ct.volume)
    parts = [view_config.geometry(ct.volume, start_angle=float(a), size=size) for a in angles]
    if views is not None:
        parts = [g[np.asarray(views)] for g in parts]
    geometry = concat_geometries(parts) if len(parts) > 1 else parts[0]
    images = view_config.render(ct.volume, geometry, backend=backend)
    targets = make_targets(ct.centroids, geometry, ct.volume, sigma_mm=sigma_mm,
                           square_mm=square_mm, anchors=ct.anchors)
    p = targets.projected
    return RenderedViews(
        name=ct.name, images=np.asarray(images, dtype=np.float32),
        heatmaps=targets.heatmaps, id_maps=targets.id_maps.astype(np.uint8),
        pixel_mm=targets.pixel_mm, labels=p.labels, pixels=p.pixels, visible=p.visible,
        t13=bool(ct.t13), geometry=geometry, view_config=view_config,
        sigma_mm=float(sigma_mm), square_mm=float(square_mm), sacrum=bool(ct.anchors))


def read_manifest(root: str | Path) -> dict:
    """The ``cache.json`` of a prerender folder, any version (DrrkitError if not one)."""
    manifest = Path(root) / "cache.json"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise VertebraError(f"cannot read {manifest}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise VertebraError(f"{manifest} is not a vertebra prerender manifest")
    return data


class RenderedCache(LazyCollection):
    """Rendered CTs: a ``vertebra prerender`` folder, or a list held in memory.

    ``len(cache)`` CTs; ``cache.load(i)`` -> :class:`RenderedViews`.

    Args:
        root: the folder holding ``cache.json`` and the ``.npz`` files.
        cache_mib: MiB of decompressed views kept in memory (the files are compressed;
            reading one again costs ~10 ms, a quarter of a cpu-demo training step).
    """

    def __init__(self, root: str | Path | None = None, cache_mib: float = 2048, *,
                 items: list[RenderedViews] | None = None) -> None:
        super().__init__(cache_mib)
        self.root = None if root is None else Path(root)
        self._items = items
        if items is not None:
            if not items:
                raise VertebraError("no rendered views given")
            self.names = [v.name for v in items]
            first = items[0]
            self.view_config = first.view_config
            self.sigma_mm, self.square_mm = first.sigma_mm, first.square_mm
            return
        data = read_manifest(self.root)
        if data.get("version") != CACHE_VERSION:
            raise VertebraError(f"{self.root} was made by another vertebra version (prerender "
                                f"cache version {data.get('version')}, this one reads "
                                f"{CACHE_VERSION}); run vertebra prerender again")
        self.names = list(data["cases"])
        if not self.names:
            raise VertebraError(f"{self.root}: the prerender cache holds no cases")
        missing = [n for n in self.names if not (self.root / f"{n}.npz").is_file()]
        if missing:
            raise VertebraError(f"{self.root}: {len(missing)} cached files missing, e.g. "
                                f"{missing[0]}.npz (run vertebra prerender again)")
        self.view_config = ViewConfig.from_dict(data["view_config"])
        self.sigma_mm, self.square_mm = float(data["sigma_mm"]), float(data["square_mm"])

    @classmethod
    def from_views(cls, items: list[RenderedViews]) -> RenderedCache:
        """Wrap rendered views held in memory."""
        return cls(items=list(items))

    def __len__(self) -> int:
        return len(self.names)

    def name(self, index: int) -> str:
        return self.names[index]

    def _weight(self, item: RenderedViews) -> float:
        return sum(a.nbytes for a in (item.images, item.heatmaps, item.id_maps)) / 2**20

    def _load(self, index: int) -> RenderedViews:
        if self._items is not None:
            return self._items[index]
        return RenderedViews.load(self.root / f"{self.names[index]}.npz")


def _cached_settings(path: Path) -> dict | None:
    """The ``meta`` of a ``CASE.npz`` less :data:`CT_FIELDS` (None if it cannot be read).

    Compared whole with :func:`render_settings`, so a field added to ``meta`` later counts
    unless it is listed in :data:`CT_FIELDS`. Only the small ``meta`` entry is read.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if not isinstance(meta, dict):
        return None
    return {k: v for k, v in meta.items() if k not in CT_FIELDS}


def orbit_angles(orbits: int, views: int, rng: np.random.Generator) -> np.ndarray:
    """(orbits,) start angles: 0 (the inference views) then random within half a view step."""
    half = 180.0 / views
    extra = rng.uniform(-half, half, size=max(int(orbits) - 1, 0))
    return np.concatenate([[0.0], extra])


def render_all(source, view_config: ViewConfig, *, orbits: int = 1, seed: int = 0,
               sigma_mm: float = 3.0, square_mm: float = 22.0, backend: str = "auto",
               progress=None) -> list[RenderedViews]:
    """Render every CT of a CT source into memory (``orbits`` orbits each)."""
    out = []
    for i in range(len(source)):
        angles = orbit_angles(orbits, view_config.views, np.random.default_rng([seed, i]))
        out.append(render_views(source.load(i), view_config, angles, sigma_mm=sigma_mm,
                                square_mm=square_mm, backend=backend))
        if progress is not None:
            progress(i + 1, len(source))
    return out


def prerender(source, out: str | Path, view_config: ViewConfig, *, orbits: int = 1,
              seed: int = 0, sigma_mm: float = 3.0, square_mm: float = 22.0,
              backend: str = "auto", progress=None) -> RenderedCache:
    """Render a CT source into a cache folder: ``OUT/<case>.npz`` + ``OUT/cache.json``.

    A ``CASE.npz`` already present (an interrupted run) is kept only when its ``meta``
    says this run would write the same (cache version, views, target sizes, orbit
    angles; see the module docstring); others are rendered again, with a warning, as is
    a folder whose ``cache.json`` has another cache version. The manifest is written
    last, so a folder with a ``cache.json`` is always complete.

    Args:
        source: a :class:`vertebra.training.sources.CTSource`.
        out: the folder (created).
        view_config: the C-arm.
        orbits: orbits per CT: the first at start angle 0, the others at random angles
            within half a view step (``seed``), for more training views.
        seed, sigma_mm, square_mm, backend: see :func:`render_views`.
        progress: optional ``progress(done, total)`` callback.
    """
    caches = prerender_many(source, {out: view_config}, orbits=orbits, seed=seed,
                            sigma_mm=sigma_mm, square_mm=square_mm, backend=backend,
                            progress=progress)
    return next(iter(caches.values()))


def differing_settings(previous: dict, wanted: dict) -> list[str]:
    """Keys of ``wanted`` whose value the manifest ``previous`` (a ``cache.json``) holds
    otherwise. Caches written before sources were described have no ``"source"`` and are
    not held to one."""
    return [k for k, v in wanted.items()
            if (k != "source" or "source" in previous) and previous.get(k) != v]


def _cache_folder(out, manifest: dict) -> Path:
    """``out`` as a Path, created, after checking that a cache already there was made
    with ``manifest``'s settings (one of another cache version is rendered again)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VertebraError(f"{out} exists and is not a folder")
    if (out / "cache.json").is_file():
        previous = read_manifest(out)
        differs = differing_settings(previous, manifest)
        if previous.get("version") != CACHE_VERSION:
            warnings.warn(f"{out} holds a prerender cache of version "
                          f"{previous.get('version')}, not {CACHE_VERSION} (another "
                          "vertebra version): rendering it again", stacklevel=3)
        elif differs:
            raise VertebraError(f"{out} holds a cache made with other settings "
                                f"({', '.join(differs)}); use a new folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def prerender_many(source, outputs: dict, *, orbits: int = 1, seed: int = 0,
                   sigma_mm: float = 3.0, square_mm: float = 22.0, backend: str = "auto",
                   progress=None, counts: dict | None = None, cache_mib: float = 2048
                   ) -> dict[Path, RenderedCache]:
    """:func:`prerender` into several folders, each with its own views, loading each CT once.

    Used when networks see the same CTs through different views (e.g. the cpu-demo
    localizer on 2 mm pixels and identifier on 4 mm ones): building or reading a CT is
    often the costlier part.

    Args:
        source: a :class:`vertebra.training.sources.CTSource`.
        outputs: {folder: :class:`ViewConfig`}.
        orbits, seed, sigma_mm, square_mm, backend, progress: as :func:`prerender`; the
            orbit angles of a CT are the same in every folder with the same view count.
        counts: {folder: n} for folders that get only the source's first n CTs (e.g. a
            network that trains on fewer CTs than the other); the others get all.
        cache_mib: memory budget of each returned cache (:class:`RenderedCache`).

    Returns:
        {folder as a Path: its :class:`RenderedCache`}, in the order given.
    """
    from drrkit.io import write_json

    if int(orbits) < 1:
        raise VertebraError(f"orbits must be >= 1, got {orbits}")
    if not outputs:
        raise VertebraError("prerender needs at least one output folder")
    folders = {}
    for out, view_config in outputs.items():
        manifest = {"format": CACHE_FORMAT, "version": CACHE_VERSION,
                    "view_config": view_config.to_dict(), "orbits": int(orbits),
                    "seed": int(seed), "sigma_mm": float(sigma_mm),
                    "square_mm": float(square_mm), "source": source.describe()}
        folders[_cache_folder(out, manifest)] = (view_config, manifest)
    limit = {Path(k): int(v) for k, v in (counts or {}).items()}
    if any(out not in folders or not 1 <= n <= len(source) for out, n in limit.items()):
        raise VertebraError(f"counts must name output folders, each with 1..{len(source)} CTs")
    names, stale = [], {out: [] for out in folders}
    for i in range(len(source)):
        name = source.name(i)
        ct = None
        for out, (view_config, _) in folders.items():
            path = out / f"{name}.npz"
            if i >= limit.get(out, len(source)):
                continue
            angles = orbit_angles(orbits, view_config.views, np.random.default_rng([seed, i]))
            settings = render_settings(view_config, angles, sigma_mm, square_mm)
            if path.is_file():
                if _cached_settings(path) == settings:
                    continue
                stale[out].append(path.name)
            ct = source.load(i) if ct is None else ct
            views = render_views(ct, view_config, angles, sigma_mm=sigma_mm,
                                 square_mm=square_mm, backend=backend)
            replace(views, start_angles=tuple(float(a) for a in angles)).save(path)
        names.append(name)
        if progress is not None:
            progress(i + 1, len(source))
    if len(set(names)) != len(names):
        raise VertebraError("two CTs of the source share a name")
    for out, files in stale.items():
        if files:
            warnings.warn(f"{out}: rendered {len(files)} cached file(s) again (made with "
                          f"other settings or by another version, e.g. {files[0]})",
                          stacklevel=2)
    for out, (_, manifest) in folders.items():
        write_json(out / "cache.json",
                   {**manifest, "cases": names[:limit.get(out, len(source))]})
    return {out: RenderedCache(out, cache_mib=cache_mib) for out in folders}
