"""GPU projectors side by side: drrkit's CUDA kernels, FlashDRR, nanodrr and DiffDRR.

Every projector renders the same voxel grid from the same K views (the standard scenes
of :mod:`drrkit.bench`) on the same GPU; each is timed with CUDA events after warm-up
(median of ``--repeats`` batched renders, no autograd, fewer where one render is slow:
``--row-seconds``), and each image is scored against the exact line integrals, so a
mistranslated geometry shows up as a large error instead of a flattering time.

Usage, on a machine with a CUDA GPU (CuPy, torch with CUDA; the competitors optional)::

    uv run --extra cuda --group bench python benchmarks/gpu_projectors.py
    uv run ... python benchmarks/gpu_projectors.py --scenes ct256-512 --tune-blocks
    uv run python benchmarks/gpu_projectors.py --check-geometry   # CPU, tiny scenes

``--check-geometry`` runs each competitor's torch (not Triton) path on the CPU against
drrkit's image and the exact integrals: it checks the geometry conversions.

On a lent machine ``benchmarks/gpu_session.sh`` runs it (step ``projectors``) after
installing the competitors' wheels from ``.whl/``. Results go to
``benchmarks/results/gpu_projectors-<gpu>.json`` (``--out`` to change), rewritten after
every row so a run stopped by a time limit keeps what it measured; ``competitor_status``
in it says, with the card's name, which competitors ran and why any did not (not
importable, failed, skipped at the ``--budget``). A competitor that fails or runs out of
memory is recorded with its error rather than stopping the run. Where SimpleITK is not
installed (its wheel is too large to carry to a lent machine), a stand-in module lets
torchio import (nanodrr and DiffDRR need torchio); any call into it raises.

**Accuracy, against exact line integrals.** For each scene the analytic torso of
:mod:`drrkit.phantoms` (the CPU benchmark's phantom, scaled to fill the scene's box as
0.8 fills 256 mm) is voxelised on the scene's grid (2^3 sub-samples per voxel, on the
GPU) and rendered by every projector from the scene's views; every ``--stride``-th
pixel is compared with the phantom's exact integrals in the CPU benchmark's terms
(``benchmarks/cpu_projectors.py``: relative error where the exact value exceeds 1 % of
its maximum, mean and max, over all rays and over interior rays that graze no
ellipsoid surface by 2 voxels). drrkit's rows keep the timings of ``drrkit bench`` (its
cylinder CT, the same grid, views and step: drrkit's work depends on the box, not on
the content) and get the phantom's errors; competitor rows are timed on the phantom.
A competitor whose interior mean error exceeds 5 % has a wrong geometry conversion
(``conversion_ok``). The summary pairs drrkit's fastest configuration with each
competitor's fastest run and its fastest run at drrkit's accuracy (interior mean error
at most 1.25 times drrkit's), where one reaches it.

Settings compared (all float32 volumes of mu in 1/mm; images are line integrals):

* drrkit: ``sampling`` global / texture, ``storage`` float32 / float16, step half the
  smallest voxel spacing, samples only inside the volume.
* FlashDRR 0.6.0 (:class:`FlashDRR`): its fused Triton kernel; ``n_samples`` points per
  ray, evenly spaced over one depth range per view (the volume box's corners projected
  on the central ray, 30 mm margin each side); run with ``n_samples=512`` (the figure
  of its published benchmark) and with the count that makes its spacing drrkit's step.
* nanodrr 0.1.7 ``backend="triton"``: ``n_samples`` midpoints of each ray's chord
  through the volume's box (half a voxel wider each side); run with its default
  ``n_samples=500`` and with the count that gives the longest chord drrkit's step.
* DiffDRR 0.6.1: ``renderer="siddon"`` (its default, exact voxel traversal, nearest
  voxel), batched and one view per call, and ``renderer="trilinear"`` with ``n_points``
  over the box diagonal at drrkit's step (it samples one range for all rays).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import platform
import sys
import time
import traceback
import types
from functools import partial
from pathlib import Path

import numpy as np
from _common import RESULTS, slug
from cpu_projectors import INTERIOR_MARGIN_VOXELS, interior_rays
from cpu_projectors import accuracy as exact_accuracy

from drrkit import bench
from drrkit.geometry import Geometry
from drrkit.volume import Volume

#: LPS (drrkit) <-> RAS (torchio, nanodrr, DiffDRR, FlashDRR) world frames.
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Block shapes (x, y) tried by --tune-blocks.
BLOCKS = ((32, 8), (16, 16), (32, 4), (64, 4), (8, 8), (16, 8), (32, 16), (128, 2), (64, 2))
#: Competitors: name -> the module the adapter imports first (its import is the check).
COMPETITORS = {"flashdrr": "flashdrr.rendering", "nanodrr": "nanodrr.drr",
               "diffdrr": "diffdrr.drr"}
#: The torso phantom fills this fraction of the box, relative to its extent at scale 1
#: (300 x 200 x 280 mm): 0.8 in a 256 mm box, as in the CPU benchmark.
PHANTOM_FILL = 0.9375
#: Interior mean relative error against the exact integrals above which a geometry
#: conversion is called wrong (as in the CPU benchmark).
CONVERSION_TOLERANCE = 0.05
#: A competitor run is "at drrkit's accuracy" if its interior mean error is at most this
#: multiple of that of drrkit's fastest configuration.
EQUAL_ACCURACY = 1.25
#: Timed renders each row keeps at least, whatever ``row_seconds`` says.
MIN_REPEATS = 3


# ---------------------------------------------------------------------- environment
def simpleitk_standin() -> str:
    """Make ``import SimpleITK`` work where SimpleITK is not installed; say which it is.

    torchio imports SimpleITK at import time, and nanodrr and DiffDRR import torchio,
    though neither touches SimpleITK for an image built from a tensor and an affine, as
    here. The stand-in module answers every attribute with a class that nothing is an
    instance of and that raises ImportError when called, so a code path that does need
    SimpleITK fails loudly (and that row records the error). Only this process sees it.
    """
    try:
        import SimpleITK
    except ImportError:
        pass
    else:
        return f"installed {getattr(SimpleITK, '__version__', '?')}"

    class Absent(type):
        def __call__(cls, *args, **kwargs):
            raise ImportError(f"SimpleITK is not installed (stand-in for torchio): {cls.__name__}")

        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return absent(f"{cls.__name__}.{name}")

    made = {}

    def absent(name):
        if name not in made:
            made[name] = Absent(name, (), {})
        return made[name]

    def module_getattr(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return absent(name)

    module = types.ModuleType("SimpleITK", "Stand-in for SimpleITK (not installed).")
    module.__getattr__ = module_getattr
    module.__version__ = "0+stand-in"
    sys.modules["SimpleITK"] = module
    return "stand-in (not installed)"


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to ``limit`` characters."""
    text = str(error)
    return text.splitlines()[0][:limit] if text else ""


def competitor_status() -> dict:
    """Per competitor: its version and, if it does not import, why; then rows are counted."""
    status = {}
    for name, module in COMPETITORS.items():
        entry = {"version": None, "ran": False, "rows_ok": 0, "rows_failed": 0,
                 "rows_skipped_for_time": 0, "skipped": None}
        try:
            importlib.import_module(module)
            entry["version"] = importlib.metadata.version(name)
        except Exception as error:  # noqa: BLE001 - record and go on
            entry["skipped"] = f"not importable: {type(error).__name__}: {first_line(error)}"
        status[name] = entry
    return status


# ---------------------------------------------------------------------- shared frames
def torchio_image(volume: Volume):
    """The volume as a torchio ScalarImage: tensor (1, X, Y, Z), RAS voxel-to-world affine."""
    import torch
    import torchio

    tensor = torch.from_numpy(np.ascontiguousarray(volume.data.transpose(2, 1, 0))[None])
    return torchio.ScalarImage(tensor=tensor, affine=FLIP @ volume.index_to_world)


def camera_to_world(geometry: Geometry, flip_u: bool, flip_v: bool) -> np.ndarray:
    """(K, 4, 4) RAS camera-to-world maps: camera z from the source to the detector,
    camera x along +-u (columns) and y along +-v (rows), origin at the source."""
    k = len(geometry)
    unit_u = geometry.u / np.linalg.norm(geometry.u, axis=1, keepdims=True)
    unit_v = geometry.v / np.linalg.norm(geometry.v, axis=1, keepdims=True)
    matrices = np.tile(np.eye(4), (k, 1, 1))
    matrices[:, :3, 0] = -unit_u if flip_u else unit_u
    matrices[:, :3, 1] = -unit_v if flip_v else unit_v
    matrices[:, :3, 2] = geometry.normals
    matrices[:, :3, 3] = geometry.sources
    return FLIP @ matrices


def check_centred(geometry: Geometry) -> None:
    """The competitors take a principal point; ours must be the detector centre."""
    foot = geometry.sources + geometry.normals * geometry.source_to_detector[:, None]
    offset = np.linalg.norm(foot - geometry.detector_centers, axis=1)
    if np.any(offset > 1e-6 * geometry.source_to_detector):
        raise ValueError("the comparison needs the principal point at the detector centre")


def camera_directions(geometry: Geometry) -> np.ndarray:
    """(H, W, 3) unit directions of the pixels' rays in the camera frame of
    :func:`camera_to_world` with ``flip_v`` (x along u, y against v, z to the detector).

    Raises ValueError unless every view has the same camera (pixel vectors, source to
    detector offset) and perpendicular u and v: such a table serves all views.
    """
    unit_u = geometry.u / np.linalg.norm(geometry.u, axis=1, keepdims=True)
    unit_v = geometry.v / np.linalg.norm(geometry.v, axis=1, keepdims=True)
    if np.any(np.abs(np.einsum("ki,ki->k", unit_u, unit_v)) > 1e-9):
        raise ValueError("a shared camera needs perpendicular detector vectors u and v")
    frame = np.stack([unit_u, -unit_v, geometry.normals], axis=1)  # (K, 3 axes, 3)
    offset = np.einsum("kai,ki->ka", frame, geometry.detector_origins - geometry.sources)
    step_u = np.einsum("kai,ki->ka", frame, geometry.u)
    step_v = np.einsum("kai,ki->ka", frame, geometry.v)
    intrinsics = np.concatenate([offset, step_u, step_v], axis=1)
    if np.any(np.abs(intrinsics - intrinsics[0]) > 1e-6 * np.abs(offset[0]).max()):
        raise ValueError("a shared camera needs the same detector and distance in every view")
    cols = np.arange(geometry.width, dtype=np.float64)[None, :, None]
    rows = np.arange(geometry.height, dtype=np.float64)[:, None, None]
    rays = offset[0] + cols * step_u[0] + rows * step_v[0]
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


# ---------------------------------------------------------------------- competitors
class NanoDRR:
    """nanodrr's ``render`` with the Triton backend on our geometry.

    nanodrr 0.1.7 clips each ray to the volume's box (half a voxel wider each side) and
    takes ``n_samples`` midpoints of that chord; its camera puts pixel (c, r) at
    ``((c + 0.5 - W/2) delx, (r + 0.5 - H/2) dely, sdd)``, so the camera axes are +u,
    +v and the source-to-detector normal, with the source at the origin.
    """

    name = "nanodrr"

    def __init__(self, volume: Volume, geometry: Geometry, device: str, n_samples: int,
                 backend: str = "triton"):
        import torch

        try:
            from nanodrr.drr.renderer import render
        except ImportError:
            from nanodrr.drr import render
        from nanodrr.camera import make_k_inv
        from nanodrr.data import Subject

        check_centred(geometry)
        self.settings = {"backend": backend, "n_samples": int(n_samples)}
        subject = Subject.from_images(torchio_image(volume), convert_to_mu=False)
        self.subject = subject.to(device)
        sdd = float(geometry.source_to_detector[0])
        (delx, dely) = geometry.pixel_spacing[0]
        k_inv = make_k_inv(sdd, float(delx), float(dely), 0.0, 0.0, geometry.height,
                           geometry.width).to(device=device, dtype=torch.float32)
        self.args = {
            "k_inv": k_inv.expand(len(geometry), -1, -1).contiguous(),
            "rt_inv": torch.tensor(camera_to_world(geometry, False, False),
                                   dtype=torch.float32, device=device),
            "sdd": torch.tensor(geometry.source_to_detector, dtype=torch.float32, device=device),
            "height": geometry.height, "width": geometry.width, "n_samples": int(n_samples),
            "backend": backend,
        }
        self._render = render

    def __call__(self):
        import torch

        with torch.inference_mode():
            return self._render(self.subject, **self.args)[:, 0]


class DiffDRR:
    """DiffDRR's ``DRR`` module on our geometry (density = mu / max mu, rescaled back)."""

    name = "diffdrr"

    def __init__(self, volume: Volume, geometry: Geometry, device: str,
                 renderer: str = "siddon", n_points: int | None = None,
                 views_per_call: int | None = None):
        import torch
        from diffdrr.data import read
        from diffdrr.drr import DRR
        from diffdrr.pose import RigidTransform

        check_centred(geometry)
        self.settings = {"renderer": renderer, "n_points": n_points,
                         "views_per_call": views_per_call}
        subject = read(torchio_image(volume), orientation=None, center_volume=False)
        self.scale = float(volume.data.max() - volume.data.min())
        (delx, dely) = geometry.pixel_spacing[0]
        self.drr = DRR(subject, sdd=float(geometry.source_to_detector[0]),
                       height=geometry.height, width=geometry.width, delx=float(delx),
                       dely=float(dely), renderer=renderer).to(device)
        # DiffDRR's detector: +column -> -x, +row -> -y (reverse_x_axis=True)
        self.poses = torch.tensor(camera_to_world(geometry, True, True), dtype=torch.float32,
                                  device=device)
        self.rigid = RigidTransform
        self.kwargs = {} if n_points is None else {"n_points": int(n_points)}
        self.views_per_call = views_per_call or len(geometry)

    def __call__(self):
        import torch

        with torch.no_grad():
            parts = [self.drr(self.rigid(self.poses[i:i + self.views_per_call]), **self.kwargs)
                     for i in range(0, len(self.poses), self.views_per_call)]
        return torch.cat(parts)[:, 0] * self.scale


class FlashDRR:
    """FlashDRR's ``VolumeRaycaster`` (fused Triton kernel, ``triton=True``) on our geometry.

    Conversion of drrkit's :class:`Volume` and :class:`Geometry` to FlashDRR 0.6.0:

    * **Volume**: ``vol`` is (B, C, I, J, K) in index order (i, j, k) = (x, y, z); ours is
      (Z, Y, X), so it is passed as the transposed view ``data.permute(2, 1, 0)`` (same
      memory, x fastest, which FlashDRR's own transpose turns back into a contiguous
      array for its kernel), expanded (stride 0) to one entry per view: its batch of
      one volume per view then costs no copies (no ``repeat_interleave``).
    * **Index convention**: FlashDRR maps its ``ras2ijk`` coordinate ``e`` to the sampled
      voxel index ``e n / (n - 1) - 0.5`` (n voxels along the axis; the
      ``align_corners=True`` normalisation read back with ``align_corners=False``), so
      its coordinates 0 and n - 1 are the box's outer faces, not the end voxels'
      centres. Handing it ``e = (p + 0.5) (n - 1) / n`` of our index ``p`` makes it
      sample voxel ``p`` exactly; given our index itself it would render the volume
      shrunk by (n - 1) / n about its centre.
    * **Camera**: the view matrix is camera-to-world (columns right, up, forward,
      position); FlashDRR's rays are its ``dirs_cam`` table of camera-frame directions,
      normally (x, -y, 1) from a vertical field of view with rows counting down. We
      write the table from the detector (:func:`camera_directions`: x along u, y against
      v, z along the source-to-detector normal), which for a square detector of square
      pixels equals its own ``set_fov`` of ``2 atan((H - 1) dy / 2 sdd)`` (in degrees),
      and give the view matrix the same axes (:func:`camera_to_world` with ``flip_v``).
      Worlds are RAS (``FLIP``), as FlashDRR names them; only its unused C-arm helpers
      care.
    * **Integral**: with ``return_tau=True`` it returns ``0.1 (far - near) / N`` times
      the sum of its N samples, which lie ``(far - near) / (N - 1)`` apart along each
      (unit) ray; the adapter multiplies by ``10 N / (N - 1)`` so its image is the
      line integral in the volume's units times mm, like the others'.
    * **Samples**: N points over one depth range per view, ``[near, far]`` = the box's
      corners projected on the view's central ray, 30 mm margin each side; ``step``
      instead of ``n_samples`` picks the N whose spacing is at most ``step`` in every view.

    Its fused kernel swaps height and width internally, which is harmless only for a
    square detector: ``triton=True`` refuses others. ``triton=False`` (its tiled
    ``grid_sample`` path, same geometry) runs on the CPU, for :func:`check_geometry`.
    """

    name = "flashdrr"

    def __init__(self, volume: Volume, geometry: Geometry, device: str,
                 n_samples: int | None = 512, step: float | None = None,
                 triton: bool = True):
        import torch
        from flashdrr.rendering import VolumeRaycaster

        if triton and geometry.height != geometry.width:
            raise ValueError("FlashDRR's fused kernel needs a square detector")
        k = len(geometry)
        n = np.asarray(volume.shape_xyz, dtype=np.float64)
        to_edges = np.eye(4)
        to_edges[:3, :3] = np.diag((n - 1) / n)
        to_edges[:3, 3] = 0.5 * (n - 1) / n
        ras2ijk = to_edges @ volume.world_to_index @ FLIP
        view_mat = camera_to_world(geometry, False, True)
        if step is not None:  # N - 1 spacings of at most `step` over the longest range
            near, far = VolumeRaycaster.compute_clipping_distances(
                torch.tensor(view_mat, dtype=torch.float32), tuple(int(v) for v in n),
                torch.tensor(np.linalg.inv(ras2ijk), dtype=torch.float32))
            n_samples = math.ceil(float((far - near).max()) / step) + 1
        n_samples = int(n_samples)
        self.settings = {"n_samples": n_samples, "step_mm": step, "triton": triton}
        data = torch.from_numpy(np.ascontiguousarray(volume.data, dtype=np.float32))
        self.vol = data.to(device).permute(2, 1, 0)[None, None].expand(k, -1, -1, -1, -1)
        self.view_mat = torch.tensor(view_mat, dtype=torch.float32, device=device)
        self.ras2ijk = torch.tensor(ras2ijk, dtype=torch.float32, device=device)
        self.raycaster = VolumeRaycaster(ray_samples=n_samples, return_tau=True,
                                         resolution=(geometry.width, geometry.height))
        self.raycaster = self.raycaster.to(device).eval()
        self.raycaster.dirs_cam = torch.tensor(camera_directions(geometry),
                                               dtype=torch.float32, device=device)
        self.scale = 10.0 * n_samples / (n_samples - 1)
        self.triton = triton

    def __call__(self):
        import torch

        with torch.inference_mode():
            image = self.raycaster(self.vol, self.view_mat, self.ras2ijk, triton=self.triton)
        return image[:, 0] * self.scale


# ---------------------------------------------------------------------- exact integrals
def torso_phantom(shape_zyx, spacing, device: str = "cpu", supersample: int = 2,
                  extra=()) -> tuple[Volume, list]:
    """The torso of :func:`drrkit.phantoms.torso_ellipsoids`, scaled to fill the grid's box
    (:data:`PHANTOM_FILL`), plus ``extra`` ellipsoids, voxelised on the grid (centred on
    the world origin) by :func:`voxelize_torch`. Returns the volume and the ellipsoids."""
    from drrkit import phantoms

    extent = np.array([300.0, 200.0, 280.0])  # torso_ellipsoids(1.0), mm along x, y, z
    box = np.asarray(shape_zyx[::-1], dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    ellipsoids = phantoms.torso_ellipsoids(PHANTOM_FILL * float(np.min(box / extent)))
    ellipsoids += list(extra)
    return voxelize_torch(ellipsoids, shape_zyx, spacing, device, supersample), ellipsoids


def voxelize_torch(ellipsoids, shape_zyx, spacing, device: str = "cpu",
                   supersample: int = 2) -> Volume:
    """:func:`drrkit.phantoms.voxelize` (grid centred on the world origin, no rotation) in
    torch float64 on ``device``: the fraction of sub-samples inside each ellipsoid, times
    its mu, summed; each ellipsoid only over the voxels of its bounding box."""
    import torch

    spacing = np.asarray(spacing, dtype=np.float64)
    n_xyz = np.asarray(shape_zyx[::-1])
    origin = -spacing * (n_xyz - 1) / 2.0
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    f64 = {"dtype": torch.float64, "device": device}
    data = torch.zeros(tuple(shape_zyx), **f64)
    for e in ellipsoids:
        rotation = np.asarray(e.rotation, dtype=np.float64)
        half = np.abs(rotation * np.asarray(e.semi_axes)[None, :]).sum(axis=1)
        lo = np.clip(np.floor((np.asarray(e.center) - half - origin) / spacing) - 1, 0, n_xyz - 1)
        hi = np.clip(np.ceil((np.asarray(e.center) + half - origin) / spacing) + 1, 0, n_xyz - 1)
        lo, hi = lo.astype(int), hi.astype(int)
        axes = [torch.arange(lo[a], hi[a] + 1, **f64) for a in range(3)]  # index along x, y, z
        r = torch.tensor(rotation, **f64)
        centre = torch.tensor(e.center, **f64)
        inv_semi = 1.0 / torch.tensor(e.semi_axes, **f64)
        inside = torch.zeros(len(axes[2]), len(axes[1]), len(axes[0]), **f64)
        for oz in offsets:
            for oy in offsets:
                for ox in offsets:
                    zz, yy, xx = torch.meshgrid(
                        origin[2] + spacing[2] * (axes[2] + oz),
                        origin[1] + spacing[1] * (axes[1] + oy),
                        origin[0] + spacing[0] * (axes[0] + ox), indexing="ij")
                    local = ((torch.stack([xx, yy, zz], dim=-1) - centre) @ r) * inv_semi
                    inside += (local * local).sum(dim=-1) <= 1.0
        data[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] += e.mu * inside
    data = (data / supersample**3).float().cpu().numpy()
    return Volume(data, spacing=tuple(spacing), origin=tuple(origin))


def exact_reference(ellipsoids, volume: Volume, geometry: Geometry, stride: int) -> dict:
    """Exact line integrals and interior-ray mask (as the CPU benchmark's) of every
    ``stride``-th pixel, and the longest chord of those rays through the volume's box."""
    from drrkit import phantoms
    from drrkit.reference import chord_lengths

    sub = Geometry(geometry.sources, geometry.detector_origins, geometry.u * stride,
                   geometry.v * stride, -(-geometry.height // stride),
                   -(-geometry.width // stride), geometry.angles_deg)
    margin = INTERIOR_MARGIN_VOXELS * float(np.min(volume.spacing))
    return {"stride": stride, "exact": phantoms.line_integrals(ellipsoids, sub),
            "interior": interior_rays(ellipsoids, sub, margin),
            "max_chord_mm": float(chord_lengths(volume, sub).max())}


def score(image: np.ndarray, reference: dict) -> dict:
    """The CPU benchmark's accuracy numbers of ``image`` (K, H, W) on the reference's pixels."""
    s = reference["stride"]
    return exact_accuracy(np.asarray(image)[:, ::s, ::s], reference["exact"],
                          reference["interior"])


# ---------------------------------------------------------------------- measuring
def time_torch(fn, repeats: int, warmup: int, budget_s: float | None = None) -> list[float]:
    """Seconds per call, CUDA events around each call (host timer on the CPU).

    With ``budget_s``, warm-up stops once it has taken half of it and timing once it has
    taken all of it and :data:`MIN_REPEATS` calls are timed.
    """
    import torch

    if not torch.cuda.is_available():
        return bench._time_cpu(fn, repeats, warmup)
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
        torch.cuda.synchronize()
        if budget_s is not None and time.perf_counter() - started > budget_s / 2:
            break
    seconds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) * 1e-3)
        if (budget_s is not None and len(seconds) >= MIN_REPEATS
                and time.perf_counter() - started > budget_s):
            break
    return seconds


def agreement(image: np.ndarray, reference: np.ndarray) -> dict:
    """How far ``image`` is from drrkit's, where drrkit's is above 10 % of its maximum."""
    mask = reference > 0.1 * reference.max()
    rel = np.abs(image - reference)[mask] / reference[mask]
    return {"median_rel_diff": float(np.median(rel)), "p99_rel_diff": float(np.percentile(rel, 99)),
            "sum_ratio": float(image.sum() / reference.sum())}


def competitor_row(scene, label: str, make, reference: dict, repeats: int, warmup: int,
                   budget_s: float | None = None) -> dict:
    """Build, check and time one competitor configuration; errors become the row's result.

    ``reference`` holds drrkit's image (``image``, for the ``*_rel_diff`` agreement
    numbers) and :func:`exact_reference`'s (``exact``, ``conversion_ok``); the first
    render (JIT compilation, autotuning) is timed apart as ``first_call_s``.
    """
    import torch

    row = {"scene": scene.name, "label": label, "projector": label.split()[0],
           "views": scene.views, "height": scene.size[0], "width": scene.size[1]}
    try:
        started = time.perf_counter()
        projector = make()
        row.update(projector.settings)
        row["setup_s"] = time.perf_counter() - started
        started = time.perf_counter()
        image = projector().float().cpu().numpy()
        row["first_call_s"] = time.perf_counter() - started
        row.update(agreement(image, reference["image"]))
        row["exact"] = score(image, reference)
        row["conversion_ok"] = row["exact"]["interior_mean_rel"] < CONVERSION_TOLERANCE
        del image
        seconds = time_torch(projector, repeats, warmup, budget_s)
        row.update(bench._summary(seconds))
        row["ms_per_view"] = row["ms_median"] / scene.views
        row["views_per_s"] = 1e3 * scene.views / row["ms_median"]
        if torch.cuda.is_available():
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except Exception as error:  # noqa: BLE001 - record and go on
        row["error"] = f"{type(error).__name__}: {first_line(error, 300)}"
        row["traceback"] = traceback.format_exc(limit=3)
    finally:
        projector = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return row


def block_sweep(scene, repeats: int, warmup: int) -> list[dict]:
    """ms per render of drrkit's kernels for each block shape in :data:`BLOCKS`."""
    from drrkit.cuda import CudaProjector

    volume = bench.scene_volume(scene)
    geometry = bench.scene_geometry(scene, volume)
    rows = []
    for sampling in ("global", "texture"):
        projector = CudaProjector(volume, sampling=sampling)
        for block in BLOCKS:
            projector.block = block
            render = partial(projector.render, geometry, scene.step)
            seconds = bench._time_cuda(render, repeats, warmup)
            rows.append({"scene": scene.name, "sampling": sampling, "block": list(block),
                         **bench._summary(seconds)})
    return rows


def competitor_makers(scene, volume: Volume, geometry: Geometry, reference: dict,
                      device: str) -> dict:
    """Label -> constructor of each competitor configuration, most telling first."""
    step = scene.step
    # nanodrr: n midpoints over the chord, which is up to a voxel longer than ours
    nano = math.ceil((reference["max_chord_mm"] + float(np.max(volume.spacing))) / step)
    # DiffDRR trilinear spans one range for all rays: at most the box diagonal
    chord = float(np.linalg.norm(np.asarray(volume.shape_xyz) * volume.spacing))
    points = math.ceil(chord / step) + 1
    return {
        "flashdrr triton n_samples=512 (published)":
            partial(FlashDRR, volume, geometry, device, n_samples=512),
        "nanodrr triton n_samples=500 (default)":
            partial(NanoDRR, volume, geometry, device, n_samples=500),
        f"flashdrr triton step={step:g} mm (matched step)":
            partial(FlashDRR, volume, geometry, device, n_samples=None, step=step),
        f"nanodrr triton n_samples={nano} (matched step)":
            partial(NanoDRR, volume, geometry, device, n_samples=nano),
        "diffdrr siddon": partial(DiffDRR, volume, geometry, device, "siddon"),
        "diffdrr siddon one view per call":
            partial(DiffDRR, volume, geometry, device, "siddon", views_per_call=1),
        f"diffdrr trilinear n_points={points} (matched step)":
            partial(DiffDRR, volume, geometry, device, "trilinear", n_points=points),
    }


def score_drrkit(scene, rows: list[dict], stride: int):
    """The scene's phantom, views and :func:`exact_reference`, with drrkit's image
    (global, float32) as ``image``; each of drrkit's ``rows`` gets its ``exact`` scores."""
    import cupy
    import torch

    from drrkit.cuda import CudaProjector

    volume, ellipsoids = torso_phantom(scene.shape, scene.spacing,
                                       "cuda" if torch.cuda.is_available() else "cpu")
    geometry = bench.scene_geometry(scene, volume)
    reference = exact_reference(ellipsoids, volume, geometry, stride)
    for row in rows:
        projector = CudaProjector(volume, sampling=row["sampling"], storage=row["storage"])
        image = projector.render(geometry, scene.step, out="numpy")
        row["exact"] = score(image, reference)
        if (row["sampling"], row["storage"]) == ("global", "float32"):
            reference["image"] = image
        del projector
    cupy.get_default_memory_pool().free_all_blocks()
    return volume, geometry, reference


def run(scenes, repeats: int, warmup: int, device: str, tune_blocks: bool,
        competitors: bool = True, budget_s: float | None = None,
        row_seconds: float | None = None, stride: int = 4, save=None) -> dict:
    """Time drrkit (and the competitors) on ``scenes``; ``save(result)`` after each part.

    Competitor rows that would start after ``budget_s`` seconds are recorded as skipped.
    """
    import torch

    started = time.perf_counter()
    save = save or (lambda result: None)
    result = {"environment": environment(),
              "settings": {"repeats": repeats, "warmup": warmup, "budget_s": budget_s,
                           "row_seconds": row_seconds, "accuracy_stride": stride},
              "competitor_status": {"card": bench.device_name("cuda")},
              "drrkit": [], "competitors": [], "block_sweep": []}
    status = result["competitor_status"]
    if competitors:
        status["libraries"] = competitor_status()
    else:
        status["libraries"] = {name: {"skipped": "--no-competitors"} for name in COMPETITORS}
    for name in scenes:
        scene = bench.SCENES[name]
        print(f"[{name}] drrkit", file=sys.stderr)
        floor = bench.texture_floor(bench.scene_volume(scene), scene.size)
        ours = [bench.run_scene(scene, "cuda", sampling, storage, repeats, warmup, floor)
                for sampling, storage in bench.CUDA_CONFIGS]
        result["drrkit"] += ours
        if tune_blocks:
            result["block_sweep"] += block_sweep(scene, repeats, warmup)
        save(result)
        print(f"[{name}] phantom and exact integrals", file=sys.stderr)
        volume, geometry, reference = score_drrkit(scene, ours, stride)
        save(result)
        if not competitors:
            continue
        makers = competitor_makers(scene, volume, geometry, reference, device)
        for label, make in makers.items():
            entry = status["libraries"][label.split()[0]]
            if entry["version"] is None:
                continue
            if budget_s is not None and time.perf_counter() - started > budget_s:
                entry["rows_skipped_for_time"] += 1
                result["competitors"].append({"scene": name, "label": label,
                                              "projector": label.split()[0],
                                              "skipped": f"time budget ({budget_s:g} s)"})
                continue
            print(f"[{name}] {label}", file=sys.stderr)
            row = competitor_row(scene, label, make, reference, repeats, warmup, row_seconds)
            result["competitors"].append(row)
            if "error" in row:
                entry["rows_failed"] += 1
            else:
                entry["rows_ok"] += 1
                entry["ran"] = True
            save(result)
        del reference, volume
        torch.cuda.empty_cache()
    for entry in status["libraries"].values():
        if entry.get("version") and not entry["ran"] and not entry["skipped"]:
            entry["skipped"] = ("no row succeeded" if entry["rows_failed"]
                                else "no row started (time budget)")
    result["summary"] = summarise(result)
    result["elapsed_s"] = time.perf_counter() - started
    save(result)
    return result


def summarise(result: dict) -> list[dict]:
    """Per scene and competitor: drrkit's fastest configuration against the competitor's
    fastest run, and against its fastest run at drrkit's accuracy (:data:`EQUAL_ACCURACY`)."""
    lines = []
    for scene in sorted({row["scene"] for row in result["drrkit"]}):
        ours = min((r for r in result["drrkit"] if r["scene"] == scene),
                   key=lambda r: r["ms_median"])
        our_error = ours.get("exact", {}).get("interior_mean_rel")
        for name in COMPETITORS:
            theirs = [r for r in result["competitors"] if r["scene"] == scene
                      and r.get("projector") == name and "ms_median" in r]
            if not theirs:
                continue
            line = {"scene": scene, "competitor": name, "drrkit_ms": ours["ms_median"],
                    "drrkit_config": f"{ours['sampling']}/{ours['storage']}",
                    "drrkit_interior_mean_rel": our_error}
            matched = [r for r in theirs if our_error is not None
                       and r["exact"]["interior_mean_rel"] <= EQUAL_ACCURACY * our_error]
            for key, rows in (("fastest", theirs), ("at_drrkit_accuracy", matched)):
                if not rows:
                    line[key] = None
                    continue
                best = min(rows, key=lambda r: r["ms_median"])
                line[key] = {"label": best["label"], "ms": best["ms_median"],
                             "interior_mean_rel": best["exact"]["interior_mean_rel"],
                             "speedup": best["ms_median"] / ours["ms_median"]}
            lines.append(line)
    return lines


def environment() -> dict:
    info = bench.environment("cuda")
    import torch

    info["torch"] = torch.__version__
    info["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info["simpleitk"] = simpleitk_standin()
    for module in ("flashdrr", "nanodrr", "diffdrr", "triton", "torchio"):
        try:
            info[module] = importlib.metadata.version(module)
        except Exception:  # noqa: BLE001
            info[module] = None
    info["platform"] = platform.platform()
    return info


# ---------------------------------------------------------------------- CPU geometry check
def check_geometry() -> int:
    """Tiny scenes on the CPU: each competitor's image against drrkit's (an off-centre bead
    shows any flip or mirror) and against the exact integrals of a small torso phantom."""
    from drrkit._cpu import render_cpu
    from drrkit.phantoms import Ellipsoid

    print(f"SimpleITK: {simpleitk_standin()}")
    scene = bench.Scene("check", (40, 48, 56), (2.0, 2.0, 2.5), views=3, size=(40, 48),
                        pixel_spacing=5.0)
    volume = bench.scene_volume(scene)
    data = volume.data.copy()
    data[28:36, 8:16, 36:46] = 0.08  # an off-centre bead, so any flip or mirror shows
    volume = volume.with_data(data)
    geometry = bench.scene_geometry(scene, volume)
    # the torso (its marker bead enlarged) in 3 mm voxels, 3 views of 40 x 48 pixels of 12 mm
    torso = bench.Scene("check-torso", (80, 72, 96), (3.0, 3.0, 3.0), views=3, size=(40, 48),
                        pixel_spacing=12.0)
    bead = Ellipsoid((60.0, -30.0, 50.0), (20.0, 15.0, 25.0), 0.04)
    torso_volume, ellipsoids = torso_phantom(torso.shape, torso.spacing, extra=[bead])
    torso_geometry = bench.scene_geometry(torso, torso_volume)
    reference = exact_reference(ellipsoids, torso_volume, torso_geometry, stride=1)
    print(f"drrkit-cpu vs exact: "
          f"{json.dumps(score(render_cpu(torso_volume, torso_geometry, torso.step), reference))}")
    status = 0
    makers = {
        "diffdrr-siddon": lambda v, g, s: DiffDRR(v, g, "cpu", "siddon"),
        "diffdrr-trilinear": lambda v, g, s: DiffDRR(v, g, "cpu", "trilinear", n_points=400),
        "nanodrr-torch": lambda v, g, s: NanoDRR(v, g, "cpu", 600, backend="torch"),
        "flashdrr-torch": lambda v, g, s: FlashDRR(v, g, "cpu", step=s, triton=False),
    }
    for name, make in makers.items():
        try:
            image = make(volume, geometry, scene.step)().float().numpy()
        except ImportError as error:
            print(f"{name}: not installed ({error})")
            continue
        stats = agreement(image, render_cpu(volume, geometry, scene.step))
        ok = (stats["median_rel_diff"] < 0.02 and stats["p99_rel_diff"] < 0.5
              and abs(stats["sum_ratio"] - 1) < 0.02)
        image = make(torso_volume, torso_geometry, torso.step)().float().numpy()
        exact = score(image, reference)
        ok = ok and exact["interior_mean_rel"] < CONVERSION_TOLERANCE
        status |= not ok
        print(f"{name}: {'ok' if ok else 'MISMATCH'} vs drrkit {json.dumps(stats)}; "
              f"vs exact {json.dumps(exact)}")
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", default="ct256-512,ct512x400-1024",
                        help="comma-separated drrkit.bench scene names")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tune-blocks", action="store_true",
                        help="also time drrkit's kernels for each block shape in BLOCKS")
    parser.add_argument("--no-competitors", action="store_true")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="start no competitor row after this many seconds (recorded "
                        "as skipped)")
    parser.add_argument("--row-seconds", type=float, default=None, metavar="SECONDS",
                        help="stop warming up / timing a competitor row after about this "
                        f"long (at least {MIN_REPEATS} timed renders)")
    parser.add_argument("--stride", type=int, default=4,
                        help="compare every STRIDE-th pixel (each way) with the exact integrals")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--check-geometry", action="store_true",
                        help="compare the competitors' images with drrkit's on the CPU")
    args = parser.parse_args(argv)
    if args.check_geometry:
        return check_geometry()
    scenes = [s for s in args.scenes.split(",") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_projectors-{slug(bench.device_name('cuda'))}.json"

    def save(result: dict) -> None:
        path.write_text(json.dumps(result, indent=2) + "\n")

    result = run(scenes, args.repeats, args.warmup, args.device, args.tune_blocks,
                 not args.no_competitors, args.budget, args.row_seconds, args.stride, save)
    print(bench.format_table(result["drrkit"]))
    for row in result["drrkit"]:
        if "exact" in row:
            print(f"{row['scene']}: drrkit {row['sampling']}/{row['storage']} interior mean "
                  f"error {row['exact']['interior_mean_rel']:.2e}")
    for row in result["competitors"]:
        if "ms_median" in row:
            print(f"{row['scene']}: {row['label']}: {row['ms_median']:.3f} ms, interior mean "
                  f"error {row['exact']['interior_mean_rel']:.2e}, first call "
                  f"{row['first_call_s']:.1f} s")
        else:
            print(f"{row['scene']}: {row['label']}: {row.get('error') or row.get('skipped')}")
    for line in result["summary"]:
        for key in ("fastest", "at_drrkit_accuracy"):
            theirs = line[key]
            if theirs is None:
                print(f"{line['scene']}: {line['competitor']} {key}: none")
                continue
            print(f"{line['scene']}: drrkit {line['drrkit_ms']:.3f} ms "
                  f"({line['drrkit_config']}) vs {line['competitor']} {key} "
                  f"{theirs['ms']:.3f} ms ({theirs['label']}) -> {theirs['speedup']:.1f}x")
    card = result["competitor_status"]["card"]
    for name, entry in result["competitor_status"]["libraries"].items():
        print(f"{card}: {name} {entry.get('version')}: "
              f"{'ran' if entry.get('ran') else 'skipped: ' + str(entry.get('skipped'))}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
