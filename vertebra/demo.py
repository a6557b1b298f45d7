"""The whole method on synthetic spines, on a CPU: ``vertebra demo``.

Steps (each reuses its output when the folder already holds it, so an interrupted demo
continues where it stopped):

1. ``data``: training phantoms rendered once per network's views into a prerender cache
   (:func:`vertebra.training.rendered.prerender_many`, ``orbits`` orbits each): seeds
   ``0 .. train_phantoms - 1`` for the localizer, ``0 .. identifier_phantoms - 1`` for the
   identifier (telling levels apart needs more spines than finding vertebrae does),
   and held-out phantoms (seeds from ``held_out_start``, never used for training) written
   in the VerSe folder layout (CT, mask, centroid JSON).
2. ``pretrain``: multi-view SimSiam pre-training of the encoder
   (:func:`vertebra.training.pretraining.pretrain_views`).
3. ``localizer`` and ``identifier``: the two U-Nets trained with
   :meth:`vertebra.training.config.TrainConfig.cpu_demo`
   (:func:`vertebra.training.trainer.train`); the identifier from the pre-trained
   encoder and with the Sequence Loss, the localizer from random weights, as the
   paper's published code trains them (``DemoConfig.pretrained``).
4. ``label``: every held-out CT is read from disk and labelled by
   :func:`vertebra.pipeline.label_ct` with both networks (bundled into one checkpoint),
   writing what ``vertebra label`` writes (JSON, CSV, PNGs with the ground truth as rings).
5. ``score``: the predictions are scored against the held-out ground truth with the
   VerSe metrics (:func:`vertebra.report.score_folder`): id rate and localization error
   per region.

Folder layout::

    OUT/data/train_localization/, OUT/data/train_identification/
                           prerender caches of the training phantoms, one per
                           network's views
    OUT/data/held_out/     held-out phantoms, VerSe layout
    OUT/models/            simsiam.pt, localizer.pt, identifier.pt, networks.pt (+ loss logs)
    OUT/labels/STEM/       outputs per held-out CT
    OUT/report.json        the scores, per case and pooled, and the time of each step

An ensemble (:func:`run_ensemble`, ``vertebra train-default --members N``) adds, on the
same phantoms::

    OUT/member-K/          the run of seed + K (K >= 1), laid out as above without data/
    OUT/models/ensemble.pt all members' networks in one bundle
    OUT/labels-ensemble/, OUT/report-ensemble.json
                           the held-out phantoms labelled by the ensemble
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from drrkit.dense import DENSE_HU
from vertebra.errors import VertebraError

#: Augmentation strengths of :attr:`DemoConfig.augment`.
AUGMENTS = ("mild", "strong")

#: The issue's targets on held-out phantoms.
TARGET_ID_RATE = 0.95
TARGET_ERROR_MM = 2.0


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo.

    Attributes:
        train_phantoms: the localizer's training phantoms (seeds 0 .. N-1).
        identifier_phantoms: the identifier's training phantoms (seeds 0 .. M-1, the first
            N shared with the localizer; None: ``train_phantoms``). Short scans with no
            landmark in view are only labelled right when the identifier has seen many
            spines (decision ``identifier-phantoms``).
        orbits: prerendered orbits per training phantom.
        c1_share: share of the training phantoms whose scan starts at C1 (see
            :class:`vertebra.training.sources.PhantomSource`).
        sacrum_share: share of the localizer's training phantoms whose scan ends at L5
            with the sacrum in view (see the same class; decision ``sacrum-share``).
        identifier_sacrum_share: the same for the identifier's phantoms (None:
            ``sacrum_share``). The identifier has the sacrum class
            (``TrainConfig.sacrum_class``), which it only learns from enough scans that
            show S1 (decision ``sacrum-share``).
        identifier_voxel_scale: the identifier's training phantoms are built in voxels this
            many times larger (``make_spine_phantom(voxel_scale=)``): it sees them through
            4 mm pixels, and the build is most of the data step's time (decision
            ``identifier-voxel-scale``).
        crops: shorter scans cut from each training phantom, each prerendered too
            (:class:`vertebra.training.sources.CroppedSource`; 0: none).
        localizer_crops: the same for the localizer's phantoms (None: ``crops``).
        crop_min_vertebrae, crop_reach: the fewest vertebrae a crop keeps and the range
            of its cuts' reaches (``CroppedSource``'s ``min_vertebrae`` and ``reach``).
        held_out: held-out phantoms (seeds ``held_out_start`` ..).
        held_out_start: first held-out seed (far from the training seeds).
        pretrain_steps: SimSiam steps (0 skips pre-training).
        pretrained: the tasks whose network starts from the SimSiam encoder. The paper's
            code loads it into the identification network only (its localization script
            starts from random weights), and so does the demo (decision
            ``pretrained-identifier``).
        pretrain_batch: SimSiam pairs per step.
        localizer_iterations, identifier_iterations: optimiser steps (None: the
            ``TrainConfig.cpu_demo`` preset's).
        localizer_views: K of the localizer's orbit when labelling (stored in the networks
            bundle, ``PipelineConfig.localizer_views``; None: the training K of 10).
        peak_threshold, extend_threshold: the detection thresholds stored in the networks
            bundle (``PipelineConfig``'s fields of those names; None: its defaults). The
            cpu-demo localizer's 4 mm Gaussians give lower peaks than the defaults
            (0.4, 0.2) were chosen for.
        allow_t13: stored in the networks bundle (``PipelineConfig.allow_t13``; None: the
            pipeline's default, allowed). The demo's identifier sees a handful of T13
            spines (5 % of the phantoms) and cannot tell them: on 72 validation phantoms
            its DP chose the T13 chain in 6-8 scans, wrongly every time, shifting their
            lumbar labels, and missed both real T13s. So the demo labels without it.
        tolerance_mm: the largest reprojection error of a detection in a 3-D track,
            stored in the networks bundle (``PipelineConfig.tolerance_mm``; None: its
            default). The ``real-ct`` recipe widens it (decision ``match-tolerance``).
        mirror: test-time mirroring, stored in the networks bundle
            (``PipelineConfig.mirror``; None: the pipeline's default, off). The
            ``real-ct`` recipe turns it on (decision ``test-time-mirroring``).
        chain_weight: weight of the chain placement's spacing prior, stored in the
            networks bundle (``PipelineConfig.chain_weight``; None: off). The ``real-ct``
            recipe turns it on (decision ``chain-placement``).
        complete_body: show the networks scans whose small field of view the body
            fills inside a completed trunk, in training
            (:class:`vertebra.training.sources.SceneSource`) and in labelling, where
            the networks bundle stores it (``PipelineConfig.complete_body``); None: off.
            The ``real-ct`` recipe turns it on (decision ``body-completion``).
        dense_hu: render voxels above this CT number (and their bright rim) as soft
            tissue, in training (:class:`vertebra.training.sources.SceneSource`) and in
            labelling, where the networks bundle stores it (``PipelineConfig.dense_hu``);
            None: off. The ``real-ct`` recipe sets it (decision ``dense-contrast``).
        seed: training seed of both networks and the pre-training
            (``TrainConfig.seed``); runs that differ only in it are ensemble members.
        threads: torch CPU threads (None: torch's default).
        pictures: write the PNGs of every held-out case.
        recipe: the recipe's name, recorded in the report and the networks bundle.
        cache_mib: MiB of decompressed training views each network keeps in memory
            (``RenderedCache``); below the cache's size, training reads views from disk
            again and again, several times slower.
        clinical_share: share of the training phantoms that hold organs, contrast, arms
            and leads and vary their bone density and field of view
            (``make_spine_phantom(clinical=True)``, drawn per seed:
            ``PhantomSource(clinical_share=)``); the held-out phantoms stay plain.
        localizer_spine_fov_share, identifier_spine_fov_share: share of each network's
            clinical phantoms with a spine protocol's small field of view
            (``make_spine_phantom(spine_fov_share=)``; None: the generator's default,
            :data:`vertebra.data.phantom.SPINE_FOV_SHARE`).
        identifier_ribless_share: share of the identifier's clinical phantoms whose ribs
            do not show (``make_spine_phantom(ribless_share=)``), so that it also learns to
            count without them.
        calcified_disc_share: share of both networks' clinical phantoms with calcified
            or ossified discs (``make_spine_phantom(calcified_disc_share=)``).
        max_t1_lean: largest forward lean of the spine at T1 of every training phantom,
            degrees (``make_spine_phantom(max_t1_lean=)``).
        thick_slice_share: share of both networks' clinical phantoms reconstructed in
            3-5 mm slices (``make_spine_phantom(thick_slice_share=)``; None: the
            generator's default, :data:`vertebra.data._clinical.THICK_SLICE_SHARE`).
        sagittal_share: share of both networks' clinical phantoms stored as sagittal
            reformats, 2-4 mm thick from left to right (``make_spine_phantom(sagittal_share=)``).
        augment: "mild" (``AugmentConfig()``) or "strong" (``AugmentConfig.strong()``:
            wide intensity, gamma, blur and noise ranges and bright distractors).
        device: torch device that trains and runs the networks ("cpu", "cuda",
            "cuda:N", "auto"). The recipe was made for a CPU; on a GPU the networks train
            in float32 (``cpu_bf16`` applies to CPUs only), so the scores differ a little
            from a CPU run's. Rendering uses drrkit's default backend either way (the
            CUDA backend's exact path where a GPU is present). Checked by
            :func:`run_demo` before any work (``trainer.resolve_device``).
    """

    train_phantoms: int = 40
    identifier_phantoms: int | None = 240
    orbits: int = 2
    c1_share: float = 0.2
    sacrum_share: float = 0.0
    identifier_sacrum_share: float | None = 0.3
    identifier_voxel_scale: float = 2.0
    crops: int = 0
    localizer_crops: int | None = None
    crop_min_vertebrae: int = 4
    crop_reach: tuple[float, float] = (0.3, 0.7)
    held_out: int = 24
    held_out_start: int = 3000
    pretrain_steps: int = 40
    pretrain_batch: int = 32
    pretrained: tuple[str, ...] = ("identification",)
    localizer_iterations: int | None = None
    identifier_iterations: int | None = None
    localizer_views: int | None = 20
    peak_threshold: float | None = 0.3
    extend_threshold: float | None = 0.15
    allow_t13: bool | None = False
    tolerance_mm: float | None = None
    mirror: bool | None = None
    chain_weight: float | None = None
    complete_body: bool | None = None
    dense_hu: float | None = None
    seed: int = 0
    threads: int | None = None
    pictures: bool = True
    device: str = "cpu"
    recipe: str = "cpu-demo"
    cache_mib: float = 2048.0
    clinical_share: float = 0.0
    localizer_spine_fov_share: float | None = None
    identifier_spine_fov_share: float | None = None
    identifier_ribless_share: float = 0.0
    calcified_disc_share: float = 0.0
    max_t1_lean: float = 30.0
    thick_slice_share: float | None = None
    sagittal_share: float = 0.0
    augment: str = "mild"

    def __post_init__(self) -> None:
        for name in ("train_phantoms", "orbits", "held_out"):
            if int(getattr(self, name)) < 1:
                raise VertebraError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.seed) < 0:
            raise VertebraError(f"seed must be >= 0, got {self.seed}")
        if self.identifier_phantoms is not None and int(self.identifier_phantoms) < 1:
            raise VertebraError(f"identifier_phantoms must be >= 1, got {self.identifier_phantoms}")
        if self.held_out_start < max(self.train_phantoms, self.phantoms("identification")):
            raise VertebraError("held-out seeds must not overlap the training seeds")
        if self.localizer_views is not None and int(self.localizer_views) < 2:
            raise VertebraError(f"localizer_views must be >= 2, got {self.localizer_views}")
        if not float(self.identifier_voxel_scale) >= 1.0:
            raise VertebraError(f"identifier_voxel_scale must be >= 1, got "
                                f"{self.identifier_voxel_scale}")
        from vertebra.data.anatomy import check_max_t1_lean

        check_max_t1_lean(self.max_t1_lean)
        if self.augment not in AUGMENTS:
            raise VertebraError(f"augment must be one of {', '.join(AUGMENTS)}, got "
                                f"{self.augment!r}")
        for name in ("clinical_share", "localizer_spine_fov_share",
                     "identifier_spine_fov_share", "identifier_ribless_share",
                     "calcified_disc_share", "thick_slice_share", "sagittal_share"):
            value = getattr(self, name)
            if value is not None and not 0 <= float(value) <= 1:
                raise VertebraError(f"{name} must lie in [0, 1], got {value}")
        for name in ("crops", "localizer_crops"):
            value = getattr(self, name)
            if value is not None and int(value) < 0:
                raise VertebraError(f"{name} must be >= 0, got {value}")
        if int(self.crop_min_vertebrae) < 1:
            raise VertebraError(f"crop_min_vertebrae must be >= 1, got {self.crop_min_vertebrae}")
        from vertebra.training.sources import check_reach

        object.__setattr__(self, "crop_reach", check_reach(self.crop_reach, "crop_reach"))
        if self.pretrain_steps < 0 or self.pretrain_batch < 2:
            raise VertebraError("need pretrain_steps >= 0 and pretrain_batch >= 2")
        object.__setattr__(self, "pretrained", tuple(self.pretrained))
        unknown = set(self.pretrained) - {"localization", "identification"}
        if unknown:
            raise VertebraError(f"pretrained names tasks: localization, identification; got "
                                f"{', '.join(sorted(unknown))}")

    def sacrum_share_of(self, task: str) -> float:
        """``sacrum_share`` of the training phantoms of the network for ``task``."""
        if task == "identification" and self.identifier_sacrum_share is not None:
            return float(self.identifier_sacrum_share)
        return float(self.sacrum_share)

    def crops_of(self, task: str) -> int:
        """Shorter scans cut from each training phantom of ``task``'s network."""
        if task == "localization" and self.localizer_crops is not None:
            return int(self.localizer_crops)
        return int(self.crops)

    def phantom_options(self, task: str) -> dict:
        """``make_spine_phantom`` options of the training phantoms of ``task``'s network."""
        ident = task == "identification"
        scale = float(self.identifier_voxel_scale) if ident else 1.0
        share = self.identifier_spine_fov_share if ident else self.localizer_spine_fov_share
        options = {} if scale == 1.0 else {"voxel_scale": scale}
        if share is not None:
            options["spine_fov_share"] = float(share)
        if ident and self.identifier_ribless_share:
            options["ribless_share"] = float(self.identifier_ribless_share)
        if self.calcified_disc_share:
            options["calcified_disc_share"] = float(self.calcified_disc_share)
        if self.thick_slice_share is not None:
            options["thick_slice_share"] = float(self.thick_slice_share)
        if self.sagittal_share:
            options["sagittal_share"] = float(self.sagittal_share)
        from vertebra.data.anatomy import MAX_T1_LEAN

        if float(self.max_t1_lean) != MAX_T1_LEAN:  # the default leaves the caches' keys
            options["max_t1_lean"] = float(self.max_t1_lean)
        return options

    def train_changes(self) -> dict:
        """:class:`TrainConfig` fields this recipe sets on top of ``TrainConfig.cpu_demo``."""
        from vertebra.training.config import AugmentConfig

        changes = {} if self.augment == "mild" else {"augment": AugmentConfig.strong()}
        if self.seed:
            changes["seed"] = int(self.seed)
        return changes

    def phantoms(self, task: str) -> int:
        """Training phantoms of the network for ``task``."""
        if task == "identification" and self.identifier_phantoms is not None:
            return int(self.identifier_phantoms)
        return int(self.train_phantoms)

    def pipeline_settings(self) -> dict:
        """:class:`vertebra.pipeline.PipelineConfig` fields stored in the networks bundle."""
        names = ("localizer_views", "peak_threshold", "extend_threshold", "allow_t13",
                 "tolerance_mm", "mirror", "chain_weight", "complete_body", "dense_hu")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @classmethod
    def real_ct(cls, **changes) -> DemoConfig:
        """The ``real-ct`` recipe: the cpu-demo networks trained on phantoms of which 70 %
        are clinical, with strong augmentation, more phantoms and more steps, for real
        scans; the identifier's clinical phantoms include spine protocols' small fields of
        view, the localizer's show the whole trunk; both see upper spines leaning up to 50
        degrees and half the clinical scans in 3-5 mm slices, the mix the shipped
        localizers were last fine-tuned on (decisions ``real-ct-recipe``, ``spine-fov`` and
        ``recipe-from-scratch`` in ``benchmarks/decisions.md``)."""
        values = {"recipe": "real-ct", "clinical_share": 0.7, "augment": "strong",
                  "localizer_spine_fov_share": 0.0,
                  "train_phantoms": 192, "identifier_phantoms": 400,
                  "localizer_iterations": 18000, "identifier_iterations": 7000,
                  "max_t1_lean": 50.0, "thick_slice_share": 0.5,
                  "cache_mib": 8192.0, "tolerance_mm": 8.0, "mirror": True,
                  "chain_weight": 3.0, "complete_body": True, "dense_hu": DENSE_HU}
        values.update(changes)
        return cls(**values)

    @classmethod
    def quick(cls) -> DemoConfig:
        """A smoke run of every step in a couple of minutes (far from the targets)."""
        return cls(train_phantoms=4, identifier_phantoms=None, orbits=1, held_out=2, pretrain_steps=3, pretrain_batch=4,
                   localizer_iterations=10, identifier_iterations=10)


#: Named recipes: the networks' training data, schedules and pipeline settings.
RECIPES: dict[str, Callable[[], DemoConfig]] = {
    "cpu-demo": DemoConfig,
    "real-ct": DemoConfig.real_ct,
}


def recipe_config(name: str) -> DemoConfig:
    """The :class:`DemoConfig` of the recipe called ``name`` (see :data:`RECIPES`)."""
    key = str(name).strip().lower()
    if key not in RECIPES:
        raise VertebraError(f"unknown recipe {name!r}; choose {', '.join(RECIPES)}")
    return RECIPES[key]()


@dataclass
class DemoResult:
    """What :func:`run_demo` returns (also written to ``OUT/report.json``)."""

    pooled: dict
    cases: dict
    seconds: dict = field(default_factory=dict)
    labelling_seconds: dict = field(default_factory=dict)
    out: Path | None = None

    @property
    def meets_targets(self) -> bool:
        return bool(self.pooled["id_rate"] >= TARGET_ID_RATE
                    and self.pooled["l_error"] <= TARGET_ERROR_MM)


def _machine(device: str) -> dict:
    """Where the demo ran: the CPU, its cores, torch's device and (on CUDA) the GPU."""
    import os

    import torch

    from drrkit.bench import cpu_model

    machine = {"cpu": cpu_model(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return machine


def _train_config(task: str, iterations: int | None, init: str, device: str = "cpu",
                  **changes):
    from vertebra.training.config import TrainConfig

    changes = {"init": init, "device": device, **changes}
    if iterations is not None:  # the learning-rate decay keeps its place in the schedule
        preset = TrainConfig.cpu_demo(task)
        changes["iterations"] = int(iterations)
        changes["lr_step"] = max(1, round(preset.lr_step * int(iterations) / preset.iterations))
        changes["checkpoint_every"] = max(1, min(int(iterations), preset.checkpoint_every))
    return TrainConfig.cpu_demo(task, **changes)


def prepare_data(data: Path, config: DemoConfig, log: Callable[[str], None] = print):
    """Training caches ``data/train_<task>`` and held-out VerSe folder ``data/held_out``.

    The two networks see the training phantoms through their own views (the cpu-demo
    localizer on fine pixels, the identifier on coarse ones), so each task gets its own
    prerender cache of the same phantoms and orbits; each phantom is built once for both
    (:func:`vertebra.training.rendered.prerender_many`). Existing folders are reused.

    Returns:
        ({task: its training ``RenderedCache``}, the held-out folder).
    """
    from vertebra.data.phantom import write_phantoms
    from vertebra.training.rendered import (
        CACHE_VERSION,
        RenderedCache,
        differing_settings,
        prerender_many,
        read_manifest,
    )
    from vertebra.training.sources import CroppedSource, PhantomSource, SceneSource

    def copies(task: str) -> int:  # items per phantom: the whole scan and its crops
        return config.crops_of(task) + 1

    def source(task: str, n: int):  # n phantoms as ``task``'s network sees them
        cropped = CroppedSource(PhantomSource(range(n), c1_share=config.c1_share,
                                              sacrum_share=config.sacrum_share_of(task),
                                              clinical_share=config.clinical_share,
                                              **config.phantom_options(task)),
                                crops=config.crops_of(task),
                                min_vertebrae=config.crop_min_vertebrae,
                                reach=config.crop_reach)
        if not config.complete_body and config.dense_hu is None:
            return cropped
        return SceneSource(cropped, complete_body=bool(config.complete_body),
                           dense_hu=config.dense_hu)

    caches, todo = {}, {}
    for task in ("localization", "identification"):
        base = _train_config(task, None, "none")
        train_dir = data / f"train_{task}"
        reuse = (train_dir / "cache.json").is_file()
        manifest = read_manifest(train_dir) if reuse else {}
        if reuse and manifest.get("version") != CACHE_VERSION:
            log(f"  {train_dir} was made by another vertebra version: rendering it again")
            reuse = False
        if reuse and differing_settings(manifest, {"source": source(task, 1).describe()}):
            raise VertebraError(f"{train_dir} holds phantoms made with other settings (scan "
                                "shares or crops); use another --out")
        if reuse:
            caches[task] = RenderedCache(train_dir, cache_mib=config.cache_mib)
            if len(caches[task]) != config.phantoms(task) * copies(task):
                raise VertebraError(f"{train_dir} holds {len(caches[task])} CTs, not "
                                    f"{config.phantoms(task) * copies(task)}; use another --out")
            log(f"  reusing {train_dir}")
        else:  # grouped by target sizes and scans: each group builds every phantom once
            key = (base.sigma_mm, base.square_mm, config.sacrum_share_of(task),
                   tuple(config.phantom_options(task).items()), config.crops_of(task))
            todo.setdefault(key, {})[train_dir] = (task, base.views)
    for (sigma_mm, square_mm, *_), group in todo.items():  # a group's tasks share a source
        task = next(iter(group.values()))[0]
        counts = {d: config.phantoms(t) * copies(t) for d, (t, _) in group.items()}
        made = prerender_many(source(task, max(counts.values()) // copies(task)),
                              {d: views for d, (_, views) in group.items()},
                              orbits=config.orbits, sigma_mm=sigma_mm, square_mm=square_mm,
                              counts=counts, cache_mib=config.cache_mib)
        caches.update({group[d][0]: cache for d, cache in made.items()})
    held_dir = data / "held_out"
    if held_dir.is_dir():
        log(f"  reusing {held_dir}")
    else:
        write_phantoms(held_dir, range(config.held_out_start,
                                       config.held_out_start + config.held_out))
    return caches, held_dir


def pretrain_encoder(cache, path: Path, config: DemoConfig, log: Callable[[str], None] = print
                     ) -> str:
    """SimSiam pre-training into ``path`` (reused if present); returns the ``init`` string.

    ``cache`` is the identifier's training cache (whole spines on coarse pixels).
    """
    from vertebra.training.pretraining import pretrain_views

    if path.is_file():
        log(f"  reusing {path}")
    else:
        base = _train_config("identification", None, "none", device=config.device,
                             **config.train_changes())
        pretrain_views(cache, path, base, steps=config.pretrain_steps,
                       batch_size=config.pretrain_batch, dim=512, pred_dim=128)
    return f"simsiam:{path}"


def train_network(cache, path: Path, task: str, iterations: int | None, init: str, *,
                  progress: bool = True, log: Callable[[str], None] = print, **changes):
    """Train (or finish training) one U-Net with the cpu-demo recipe into ``path``."""
    from vertebra.training.trainer import train

    cfg = _train_config(task, iterations, init, **changes)
    log(f"  {task}: {cfg.encoder} U-Net, {cfg.iterations} iterations of {cfg.batch_size} "
        f"crops of {cfg.crop_size} px, init {init}"
        + ("" if task == "localization" else f", Sequence Loss {cfg.sequence_loss}"))
    return train(cfg, cache, path, resume=path.is_file(), progress=progress)


def label_folder(networks: Path, held_dir: Path, labels: Path, *, pictures: bool = True,
                 log: Callable[[str], None] = print, device: str = "cpu",
                 **pipeline_changes):
    """Label every CT of a VerSe folder with a network bundle, write outputs, score them.

    Args:
        networks: a bundle from :func:`vertebra.pipeline.bundle_networks`.
        held_dir: VerSe-layout folder with ground truth.
        labels: output folder (one sub-folder per case).
        pictures: write the PNGs (ground truth drawn as rings).
        device: torch device of the networks.
        pipeline_changes: :class:`vertebra.pipeline.PipelineConfig` fields (e.g. voting).

    Returns:
        (pooled scores, per-case scores, mean seconds per stage per CT).
    """
    import warnings

    from vertebra.data.dataset import VerseDataset
    from vertebra.labelling import label_file, pipeline_config
    from vertebra.pipeline import load_networks
    from vertebra.report import score_folder

    nets = load_networks(networks, device=device)
    pipe = pipeline_config(nets, **pipeline_changes)
    totals: dict[str, float] = {}
    cases = VerseDataset(held_dir).cases
    for case in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result, _ = label_file(case.ct, nets, pipe, out=labels / case.name,
                                   stem=case.name, pictures=pictures, truth=case.centroids())
        for w in caught:
            log(f"  warning: {case.name}: {w.message}")
        for k, v in result.timings.items():
            totals[k] = totals.get(k, 0.0) + v
    pooled, scores, missing = score_folder(labels, held_dir)
    if missing:
        raise VertebraError(f"no predictions were written for {', '.join(missing)}")
    return pooled, scores, {k: v / max(len(cases), 1) for k, v in totals.items()}


def _write_report(path: Path, config: DemoConfig, result: DemoResult, device: str) -> None:
    """``report.json``: the configuration, pooled and per-case scores, the time of each
    step, the machine and whether the targets are met."""
    from drrkit.io import json_safe, write_json

    report = {
        "config": asdict(config),
        "pooled": result.pooled,
        "cases": {name: {k: r[k] for k in ("n_gt", "identified", "id_rate", "l_error",
                                           "misses", "false_positives")}
                  for name, r in result.cases.items()},
        "seconds": result.seconds,
        "labelling_seconds_per_ct": result.labelling_seconds,
        "machine": _machine(device),
        "targets": {"id_rate": TARGET_ID_RATE, "l_error_mm": TARGET_ERROR_MM,
                    "met": result.meets_targets},
    }
    write_json(path, json_safe(report))


def run_demo(out: str | Path, config: DemoConfig | None = None, *,
             log: Callable[[str], None] = print, progress: bool = True,
             data: str | Path | None = None) -> DemoResult:
    """Run the demo into ``out`` (see the module docstring).

    Args:
        out: the demo folder (created; reused if it holds an earlier run).
        config: sizes (default :class:`DemoConfig`).
        log: called with one line per step.
        progress: show training progress bars.
        data: the data folder (default ``out/data``); runs that differ only in their
            training seed may share one, since the phantoms do not depend on it.

    Returns:
        :class:`DemoResult`.
    """
    import torch

    from vertebra.pipeline import bundle_networks

    config = DemoConfig() if config is None else config
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VertebraError(f"{out} exists and is not a folder")
    if config.threads:
        torch.set_num_threads(int(config.threads))
    from vertebra.training.trainer import resolve_device

    device = str(resolve_device(config.device))  # fails now, not after the data step
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    log(f"[data] training phantoms x {config.orbits} orbit(s): localizer "
        f"{config.phantoms('localization')}, identifier {config.phantoms('identification')}; "
        f"{config.held_out} held-out phantoms (seeds {config.held_out_start}..)")
    caches, held_dir = prepare_data(out / "data" if data is None else Path(data), config, log)
    seconds["data"] = time.perf_counter() - t

    init = "none"
    if config.pretrain_steps and config.pretrained:
        t = time.perf_counter()
        log(f"[pretrain] SimSiam, {config.pretrain_steps} steps of {config.pretrain_batch} "
            "view pairs")
        init = pretrain_encoder(caches["identification"], models / "simsiam.pt", config, log)
        seconds["pretrain"] = time.perf_counter() - t

    paths = {}
    for task, name, iterations in (
            ("localization", "localizer", config.localizer_iterations),
            ("identification", "identifier", config.identifier_iterations)):
        t = time.perf_counter()
        log(f"[{name}]")
        paths[name] = models / f"{name}.pt"
        train_network(caches[task], paths[name], task, iterations,
                      init if task in config.pretrained else "none", progress=progress,
                      log=log, device=device, **config.train_changes())
        seconds[name] = time.perf_counter() - t
    bundle = models / "networks.pt"
    bundle_networks(paths["localizer"], paths["identifier"], bundle,
                    pipeline=config.pipeline_settings())

    t = time.perf_counter()
    log(f"[label] {config.held_out} held-out CTs -> {out / 'labels'}")
    pooled, cases, per_ct = label_folder(bundle, held_dir, out / "labels",
                                         pictures=config.pictures, log=log, device=device)
    seconds["label"] = time.perf_counter() - t
    result = DemoResult(pooled, cases, seconds, per_ct, out)
    _write_report(out / "report.json", config, result, device)
    return result


def finished_run(out: Path, config: DemoConfig) -> DemoResult | None:
    """The result of the run of ``config`` in ``out`` if it is complete: its
    ``report.json`` was written after its ``models/networks.pt`` by the same
    configuration (threads and device aside). None otherwise."""
    import json

    from drrkit.io import json_safe

    report, bundle = out / "report.json", out / "models" / "networks.pt"
    if not (report.is_file() and bundle.is_file()
            and report.stat().st_mtime >= bundle.stat().st_mtime):
        return None
    stored = json.loads(report.read_text())
    ours = json.loads(json.dumps(json_safe(asdict(config))))
    if any(stored["config"].get(k) != v for k, v in ours.items()
           if k not in ("threads", "device")):
        return None
    return DemoResult(stored["pooled"], stored["cases"], stored["seconds"],
                      stored["labelling_seconds_per_ct"], out)


def run_ensemble(out: str | Path, config: DemoConfig, members: int, *,
                 log: Callable[[str], None] = print, progress: bool = True
                 ) -> tuple[DemoResult, Path]:
    """Train ``members`` runs of ``config`` that differ only in their training seed
    (``config.seed``, ``config.seed + 1``, ...), join them into one ensemble bundle and
    label the held-out phantoms with it.

    Member 0 is a run in ``out`` itself, laid out as :func:`run_demo` lays out one run;
    member k > 0 trains into ``out/member-k`` on the phantoms of ``out/data``. Every step
    reuses what the folders already hold, so a stopped run continues where it stopped.

    Returns:
        (the ensemble's :class:`DemoResult`, written to ``out/report-ensemble.json``;
        the ensemble bundle ``out/models/ensemble.pt``, or the single run's
        ``out/models/networks.pt`` when ``members`` is 1).
    """
    from dataclasses import replace

    from vertebra.pipeline import bundle_networks
    from vertebra.training.trainer import resolve_device

    if int(members) < 1:
        raise VertebraError(f"members must be >= 1, got {members}")
    out = Path(out)
    runs = []
    for k in range(int(members)):
        where = out if k == 0 else out / f"member-{k}"
        member = replace(config, seed=config.seed + k)
        log(f"[member {k + 1} of {members}] seed {member.seed} -> {where}")
        done = finished_run(where, member) if members > 1 else None
        if done is not None:
            log(f"  reusing {where} (labelled after its networks were trained)")
        runs.append(done or run_demo(where, member, log=log, progress=progress,
                                     data=out / "data"))
    if members == 1:
        return runs[0], out / "models" / "networks.pt"
    bundle = out / "models" / "ensemble.pt"
    nets = [r.out / "models" / "networks.pt" for r in runs]
    bundle_networks(nets, nets, bundle, pipeline=config.pipeline_settings())
    t = time.perf_counter()
    log(f"[label] the ensemble of {members} -> {out / 'labels-ensemble'}")
    held_dir = out / "data" / "held_out"
    device = str(resolve_device(config.device))
    pooled, cases, per_ct = label_folder(bundle, held_dir, out / "labels-ensemble",
                                         pictures=config.pictures, log=log, device=device)
    seconds = {f"member-{k}": sum(r.seconds.values()) for k, r in enumerate(runs)}
    seconds["label"] = time.perf_counter() - t
    result = DemoResult(pooled, cases, seconds, per_ct, out)
    _write_report(out / "report-ensemble.json", config, result, device)
    return result, bundle
