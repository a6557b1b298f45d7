"""GPU projectors side by side: drrkit's CUDA kernels, nanodrr (Triton) and DiffDRR.

Every projector renders the same volume from the same K views (the standard scenes of
:mod:`drrkit.bench`) on the same GPU; each is timed with CUDA events after warm-up
(median of ``--repeats`` batched renders, no autograd), and each competitor's image is
compared with drrkit's so a mistranslated geometry shows up as a large difference
instead of a flattering time.

Usage, on a machine with a CUDA GPU (CuPy, torch with CUDA, diffdrr; nanodrr optional)::

    uv run --extra cuda --group bench python benchmarks/gpu_projectors.py
    uv run ... python benchmarks/gpu_projectors.py --scenes ct256-512 --tune-blocks
    uv run python benchmarks/gpu_projectors.py --check-geometry   # CPU, tiny scene

Results go to ``benchmarks/results/gpu_projectors-<gpu>.json`` (``--out`` to change).
A competitor that is not installed, fails or runs out of memory is recorded with its
error rather than stopping the run.

Settings compared (all float32, line integrals of mu):

* drrkit: ``sampling`` global / texture, ``storage`` float32 / float16, step half the
  smallest voxel spacing, samples only inside the volume.
* nanodrr ``backend="triton"``: samples the whole source-to-pixel segment uniformly;
  run with its default ``n_samples=500`` and with ``n_samples`` matched to drrkit's step
  (segment length / step + 1).
* DiffDRR: ``renderer="siddon"`` (its default, exact voxel traversal, nearest voxel) and
  ``renderer="trilinear"`` with ``n_points`` matched to drrkit's step.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import traceback
from functools import partial
from pathlib import Path

import numpy as np
from _common import RESULTS, slug

from drrkit import bench
from drrkit.geometry import Geometry
from drrkit.volume import Volume

#: LPS (drrkit) <-> RAS (torchio, nanodrr, DiffDRR) world frames.
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Block shapes (x, y) tried by --tune-blocks.
BLOCKS = ((32, 8), (16, 16), (32, 4), (64, 4), (8, 8), (16, 8), (32, 16), (128, 2), (64, 2))


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


# ---------------------------------------------------------------------- competitors
class NanoDRR:
    """nanodrr's ``render`` with the Triton backend on our geometry."""

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


# ---------------------------------------------------------------------- measuring
def time_torch(fn, repeats: int, warmup: int) -> list[float]:
    """Seconds per call, CUDA events around each call (host timer on the CPU)."""
    import torch

    if not torch.cuda.is_available():
        return bench._time_cpu(fn, repeats, warmup)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    seconds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) * 1e-3)
    return seconds


def agreement(image: np.ndarray, reference: np.ndarray) -> dict:
    """How far ``image`` is from drrkit's, where drrkit's is above 10 % of its maximum."""
    mask = reference > 0.1 * reference.max()
    rel = np.abs(image - reference)[mask] / reference[mask]
    return {"median_rel_diff": float(np.median(rel)), "p99_rel_diff": float(np.percentile(rel, 99)),
            "sum_ratio": float(image.sum() / reference.sum())}


def competitor_row(scene, label: str, make, reference: np.ndarray, repeats: int,
                   warmup: int) -> dict:
    """Build, check and time one competitor configuration; errors become the row's result."""
    import torch

    row = {"scene": scene.name, "label": label, "projector": label.split()[0],
           "views": scene.views, "height": scene.size[0], "width": scene.size[1]}
    try:
        projector = make()
        row.update(projector.settings)
        image = projector().float().cpu().numpy()
        row.update(agreement(image, reference))
        seconds = time_torch(projector, repeats, warmup)
        row.update(bench._summary(seconds))
        row["ms_per_view"] = row["ms_median"] / scene.views
        row["views_per_s"] = 1e3 * scene.views / row["ms_median"]
        if torch.cuda.is_available():
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except Exception as error:  # noqa: BLE001 - record and go on
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        row["traceback"] = traceback.format_exc(limit=3)
    finally:
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


def run(scenes, repeats: int, warmup: int, device: str, tune_blocks: bool,
        competitors: bool = True) -> dict:
    import torch

    from drrkit.cuda import CudaProjector

    result = {"environment": environment(), "drrkit": [], "competitors": [], "block_sweep": []}
    for name in scenes:
        scene = bench.SCENES[name]
        print(f"[{name}] drrkit", file=sys.stderr)
        floor = bench.texture_floor(bench.scene_volume(scene), scene.size)
        for sampling, storage in bench.CUDA_CONFIGS:
            result["drrkit"].append(bench.run_scene(scene, "cuda", sampling, storage, repeats,
                                                    warmup, floor))
        if tune_blocks:
            result["block_sweep"] += block_sweep(scene, repeats, warmup)
        if not competitors:
            continue
        volume = bench.scene_volume(scene)
        geometry = bench.scene_geometry(scene, volume)
        reference = CudaProjector(volume).render(geometry, scene.step, out="numpy")
        segment = float(np.linalg.norm(geometry.detector_centers[0] - geometry.sources[0]))
        matched = math.ceil(segment / scene.step) + 1
        # the in-volume chord is at most the box diagonal: DiffDRR's trilinear spans it
        chord = float(np.linalg.norm(np.asarray(volume.shape_xyz) * volume.spacing))
        points = math.ceil(chord / scene.step) + 1
        makers = {
            "nanodrr triton n_samples=500":
                partial(NanoDRR, volume, geometry, device, n_samples=500),
            f"nanodrr triton n_samples={matched} (matched step)":
                partial(NanoDRR, volume, geometry, device, n_samples=matched),
            "diffdrr siddon": partial(DiffDRR, volume, geometry, device, "siddon"),
            "diffdrr siddon one view per call":
                partial(DiffDRR, volume, geometry, device, "siddon", views_per_call=1),
            f"diffdrr trilinear n_points={points} (matched step)":
                partial(DiffDRR, volume, geometry, device, "trilinear", n_points=points),
        }
        for label, make in makers.items():
            print(f"[{name}] {label}", file=sys.stderr)
            result["competitors"].append(competitor_row(scene, label, make, reference,
                                                        repeats, warmup))
        del reference
        torch.cuda.empty_cache()
    result["summary"] = summarise(result)
    return result


def summarise(result: dict) -> list[dict]:
    """Best drrkit time per scene against each competitor's best successful time."""
    lines = []
    for scene in sorted({row["scene"] for row in result["drrkit"]}):
        ours = min((r for r in result["drrkit"] if r["scene"] == scene),
                   key=lambda r: r["ms_median"])
        for name in ("nanodrr", "diffdrr"):
            theirs = [r for r in result["competitors"] if r["scene"] == scene
                      and r.get("projector") == name and "ms_median" in r]
            if not theirs:
                continue
            best = min(theirs, key=lambda r: r["ms_median"])
            lines.append({"scene": scene, "competitor": name,
                          "drrkit_ms": ours["ms_median"],
                          "drrkit_config": f"{ours['sampling']}/{ours['storage']}",
                          "competitor_ms": best["ms_median"],
                          "competitor_settings": {k: best.get(k) for k in
                                                  ("backend", "n_samples", "renderer",
                                                   "n_points", "views_per_call")},
                          "speedup": best["ms_median"] / ours["ms_median"]})
    return lines


def environment() -> dict:
    info = bench.environment("cuda")
    import torch

    info["torch"] = torch.__version__
    for module in ("nanodrr", "diffdrr", "triton", "torchio"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001
            info[module] = None
    info["platform"] = platform.platform()
    return info


# ---------------------------------------------------------------------- CPU geometry check
def check_geometry() -> int:
    """Tiny scene on the CPU: each competitor's image against drrkit's (geometry check)."""
    from drrkit._cpu import render_cpu

    scene = bench.Scene("check", (40, 48, 56), (2.0, 2.0, 2.5), views=3, size=(40, 48),
                        pixel_spacing=5.0)
    volume = bench.scene_volume(scene)
    data = volume.data.copy()
    data[28:36, 8:16, 36:46] = 0.08  # an off-centre bead, so any flip or mirror shows
    volume = volume.with_data(data)
    geometry = bench.scene_geometry(scene, volume)
    reference = render_cpu(volume, geometry, scene.step)
    status = 0
    makers = {"diffdrr-siddon": lambda: DiffDRR(volume, geometry, "cpu", "siddon"),
              "diffdrr-trilinear": lambda: DiffDRR(volume, geometry, "cpu", "trilinear",
                                                   n_points=400),
              "nanodrr-torch": lambda: NanoDRR(volume, geometry, "cpu", 600, backend="torch")}
    for name, make in makers.items():
        try:
            image = make()().float().numpy()
        except ImportError as error:
            print(f"{name}: not installed ({error})")
            continue
        stats = agreement(image, reference)
        ok = (stats["median_rel_diff"] < 0.02 and stats["p99_rel_diff"] < 0.5
              and abs(stats["sum_ratio"] - 1) < 0.02)
        status |= not ok
        print(f"{name}: {'ok' if ok else 'MISMATCH'} {json.dumps(stats)}")
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
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--check-geometry", action="store_true",
                        help="compare the competitors' images with drrkit's on the CPU")
    args = parser.parse_args(argv)
    if args.check_geometry:
        return check_geometry()
    scenes = [s for s in args.scenes.split(",") if s]
    result = run(scenes, args.repeats, args.warmup, args.device, args.tune_blocks,
                 not args.no_competitors)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_projectors-{slug(result['environment']['device'])}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(bench.format_table(result["drrkit"]))
    for line in result["summary"]:
        print(f"{line['scene']}: drrkit {line['drrkit_ms']:.3f} ms ({line['drrkit_config']}) vs "
              f"{line['competitor']} {line['competitor_ms']:.3f} ms -> {line['speedup']:.1f}x")
    for row in result["competitors"]:
        if "error" in row:
            print(f"{row['scene']}: {row['label']} failed: {row['error']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
