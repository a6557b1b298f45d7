"""CPU DRR benchmark: drrkit (Numba) vs RTK Joseph vs DiffDRR trilinear, same volume and detector.

Run (3.5 minutes on the shared 2-core machine under load; the method is in benchmarks/README.md)::

    uv run --group bench python benchmarks/cpu_projectors.py

Volume: the analytic torso phantom of :mod:`drrkit.phantoms` (scaled by 0.8 to fit)
voxelised on a 256^3 grid of 1 mm voxels centred on the world origin, so exact line
integrals are known for every pixel. Detector: 200 x 200 pixels of 2 mm, SAD 850 mm,
SID 1020 mm, on :func:`drrkit.circular_orbit` about the volume centre; one view (AP,
angle 0) and a batch of 10 views 36 degrees apart.

Every library renders from the same :class:`drrkit.Geometry`, converted to its own
conventions (``rtk_geometry``, ``diffdrr_pose``); each conversion is checked by comparing
the library's image with the exact line integrals (and RTK's projection matrices with
drrkit's). Writes ``benchmarks/results/cpu-<cpu model>-<threads>t.json`` and prints a
Markdown table (``benchmarks/make_table.py`` prints the same table from the JSON files).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import (
    RESULTS,
    ROOT,
    TimedRunner,
    check_load,
    cpu_model,
    provenance,
    set_threads,
    slug,
    summary,
    time_runners,
    versions,
    write_json,
)

#: Distributions whose versions the results record.
PACKAGES = ("numpy", "numba", "llvmlite", "itk-rtk", "itk-core", "diffdrr", "torch", "torchio")

#: Detector and orbit of issue 2.
SAD_MM, SID_MM, DETECTOR_PX, PIXEL_MM = 850.0, 1020.0, 200, 2.0
#: Phantom: torso_ellipsoids(PHANTOM_SCALE) spans 240 x 160 x 224 mm, inside a 256 mm box.
PHANTOM_SCALE = 0.8
#: Accuracy is measured on pixels whose exact integral exceeds this fraction of the maximum.
SIGNAL_FRACTION = 0.01
#: "Interior" rays pass at least this many voxels from every ellipsoid surface tangent.
INTERIOR_MARGIN_VOXELS = 2.0
#: drrkit.render keyword sets timed by default: the default (Joseph on the CPU), trilinear
#: every half voxel (the CUDA backend's rule) and every voxel ("voxel" = one voxel
#: spacing); add more with --drrkit-variant '{"step": 0.25}'.
DRRKIT_VARIANTS = ({}, {"method": "trilinear"}, {"step": "voxel"})
#: Mean relative error (interior rays) above which a geometry conversion is called wrong.
CONVERSION_TOLERANCE = 0.05


# ---------------------------------------------------------------------------- setup
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="threads for every library")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    p.add_argument("--repeats", type=int, default=15, help="timed runs (median reported)")
    p.add_argument("--size", type=int, default=256, help="volume voxels per axis")
    p.add_argument("--views", type=int, default=10, help="views in the batched case")
    p.add_argument("--supersample", type=int, default=2, help="phantom voxelisation sub-samples")
    p.add_argument("--skip", nargs="*", default=[], choices=["drrkit", "rtk", "diffdrr"],
                   help="libraries to leave out")
    p.add_argument("--diffdrr-batch", action="store_true",
                   help="also time DiffDRR on the batched case (about 10 s per run)")
    p.add_argument("--drrkit-variant", action="append", type=json.loads, default=[],
                   metavar="JSON", help="extra drrkit.render keywords to time, e.g. "
                   "'{\"step\": \"voxel\", \"method\": \"joseph\"}' (repeatable)")
    p.add_argument("--schedule", choices=["interleaved", "blocked"], default="interleaved",
                   help="round-robin timed runs across libraries, or one library at a time")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: named by machine)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- scene
def make_scene(size: int, views: int, supersample: int):
    """Phantom volume, the two geometries and their exact line integrals and interior masks."""
    import drrkit
    from drrkit import phantoms

    ellipsoids = phantoms.torso_ellipsoids(PHANTOM_SCALE)
    spacing = 256.0 / size  # 1 mm at the default size; the box stays 256 mm
    volume = phantoms.voxelize(ellipsoids, (size,) * 3, (spacing,) * 3, supersample=supersample)
    scene = {"volume": volume, "cases": {}}
    for name, k in (("1 view", 1), (f"{views} views", views)):
        geometry = drrkit.circular_orbit(volume, views=k, sad=SAD_MM, sid=SID_MM,
                                         size=DETECTOR_PX, pixel_spacing=PIXEL_MM)
        exact = phantoms.line_integrals(ellipsoids, geometry)
        interior = interior_rays(ellipsoids, geometry, INTERIOR_MARGIN_VOXELS * spacing)
        scene["cases"][name] = {"geometry": geometry, "exact": exact, "interior": interior}
    return scene


def interior_rays(ellipsoids, geometry, margin_mm: float) -> np.ndarray:
    """(K, H, W) bool: rays that, for every ellipsoid, miss it grown by ``margin_mm`` or hit it
    shrunk by ``margin_mm`` (so no ray grazes a surface, where voxelisation dominates)."""
    from dataclasses import replace

    from drrkit import phantoms, pixel_rays

    cols, rows = np.meshgrid(np.arange(geometry.width), np.arange(geometry.height))
    pixels = np.stack([cols.ravel(), rows.ravel()], -1).astype(np.float64)
    origins, directions = pixel_rays(geometry, pixels)
    ok = np.ones(origins.shape[:2], bool)
    for e in ellipsoids:
        axes = np.asarray(e.semi_axes, dtype=np.float64)
        grown = replace(e, semi_axes=tuple(axes + margin_mm))
        shrunk = replace(e, semi_axes=tuple(np.maximum(axes - margin_mm, 1e-6)))
        hits_grown = phantoms.chord_lengths(grown, origins, directions) > 0
        hits_shrunk = phantoms.chord_lengths(shrunk, origins, directions) > 0
        ok &= ~hits_grown | hits_shrunk
    return ok.reshape(geometry.shape)


def accuracy(image: np.ndarray, exact: np.ndarray, interior: np.ndarray) -> dict:
    """Relative errors |image - exact| / exact over pixels with signal, all and interior."""
    image = np.asarray(image, dtype=np.float64).reshape(exact.shape)
    signal = exact > SIGNAL_FRACTION * exact.max()
    rel = np.abs(image - exact) / np.where(signal, exact, 1.0)
    inner = signal & interior
    return {
        "pixels_with_signal": int(signal.sum()),
        "interior_pixels": int(inner.sum()),
        "max_rel": float(rel[signal].max()),
        "mean_rel": float(rel[signal].mean()),
        "median_rel": float(np.median(rel[signal])),
        "interior_max_rel": float(rel[inner].max()),
        "interior_mean_rel": float(rel[inner].mean()),
        "rmse_over_peak": float(np.sqrt(np.mean((image - exact) ** 2)) / exact.max()),
        "max_abs_over_peak": float(np.abs(image - exact).max() / exact.max()),
    }


# ---------------------------------------------------------------------------- timing
@dataclass
class Runner(TimedRunner):
    """One projector set up for one case: ``run()`` renders and returns a (K, H, W) image."""

    library: str
    method: str
    settings: str
    run: Callable[[], object]
    to_array: Callable[[object], np.ndarray]
    threads: dict
    checks: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- drrkit
def drrkit_runners(scene, case, threads, variants) -> list[Runner]:
    """``drrkit.render(backend="cpu", **variant)`` for each variant (keyword dicts; a
    ``"step"`` of ``"voxel"`` means the smallest voxel spacing)."""
    import numba

    import drrkit
    from drrkit.render import default_step, resolve_method

    numba.set_num_threads(threads)
    volume, geometry = scene["volume"], scene["cases"][case]["geometry"]
    voxel = float(volume.spacing.min())
    runners = []
    for variant in variants:
        kwargs = dict(variant)
        if kwargs.get("step") == "voxel":
            kwargs["step"] = voxel
        method = resolve_method(kwargs.get("method", "auto"), "cpu", kwargs.get("step"))
        default = "method" not in kwargs and "step" not in kwargs
        if method == "joseph":
            settings = "method = joseph (one bilinear sample per slice)"
        else:
            step = kwargs.get("step") or default_step(volume)
            label = ("half voxel (trilinear's default)" if kwargs.get("step") is None
                     else "1 voxel" if step == voxel else f"{step / voxel:g} voxel")
            settings = ", ".join([f"trilinear, step = {label} = {step:g} mm"]
                                 + [f"{k}={v!r}" for k, v in kwargs.items()
                                    if k not in ("step", "method")])
        if default:
            settings += " (the default)"
        runners.append(Runner(
            "drrkit", "drrkit.render(backend='cpu'), Numba", settings,
            lambda kwargs=kwargs: drrkit.render(volume, geometry, backend="cpu", **kwargs),
            np.asarray,
            {"numba": numba.get_num_threads(),
             "DRRKIT_NUM_THREADS": os.environ.get("DRRKIT_NUM_THREADS"),
             "numba_threading_layer": numba.threading_layer()},
            {"render_kwargs": kwargs},
        ))
    return runners


# ---------------------------------------------------------------------------- RTK
def rtk_geometry(geometry):
    """drrkit Geometry -> rtk.ThreeDCircularProjectionGeometry and projection stack layout.

    RTK maps a world point to detector mm ``(x, y) = D + x r + y c`` with ``D`` the
    detector position and ``r``, ``c`` unit row/column vectors; the projection stack
    (W, H, K in ITK order) has origin 0 and spacing (du, dv, 1), so its pixel (c, r) of
    projection k is at ``D0 + c u + r v``, drrkit's pixel centre.
    """
    import itk
    from itk import RTK as rtk

    point, vector = itk.Point[itk.D, 3], itk.Vector[itk.D, 3]
    geo = rtk.ThreeDCircularProjectionGeometry.New()
    spacing = geometry.pixel_spacing
    for k in range(len(geometry)):
        du, dv = spacing[k]
        ok = geo.AddProjection(point(geometry.sources[k].tolist()),
                               point(geometry.detector_origins[k].tolist()),
                               vector((geometry.u[k] / du).tolist()),
                               vector((geometry.v[k] / dv).tolist()))
        if not ok:
            raise RuntimeError(f"RTK refused view {k} of the geometry")
    if not np.allclose(spacing, spacing[0]):
        raise RuntimeError("one projection stack needs the same pixel spacing in every view")
    return geo, (float(spacing[0, 0]), float(spacing[0, 1]), 1.0)


def check_rtk_matrices(geo, geometry, pixel_mm) -> float:
    """Largest pixel disagreement between RTK's and drrkit's projections of random points."""
    import itk

    import drrkit

    points = np.random.default_rng(0).uniform(-120, 120, size=(64, 3))
    ours = drrkit.project_points(points, geometry).pixels
    worst = 0.0
    for k in range(len(geometry)):
        m = itk.array_from_matrix(geo.GetMatrix(k))
        h = points @ m[:, :3].T + m[:, 3]
        theirs = h[:, :2] / h[:, 2:] / np.asarray(pixel_mm[:2])
        worst = max(worst, float(np.abs(theirs - ours[k]).max()))
    return worst


def rtk_runners(scene, case, threads) -> list[Runner]:
    """RTK's Joseph forward projector on the same volume (an itk.Image with drrkit's
    origin, spacing and direction) and geometry."""
    import itk
    from itk import RTK as rtk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    volume, geometry = scene["volume"], scene["cases"][case]["geometry"]
    image_type = itk.Image[itk.F, 3]
    vol = itk.image_from_array(np.ascontiguousarray(volume.data, dtype=np.float32))
    vol.SetOrigin(volume.origin.tolist())
    vol.SetSpacing(volume.spacing.tolist())
    vol.SetDirection(itk.matrix_from_array(np.ascontiguousarray(volume.direction)))
    geo, pixel_mm = rtk_geometry(geometry)
    stack = itk.image_from_array(np.zeros(geometry.shape, np.float32))  # (K, H, W) -> W, H, K
    stack.SetOrigin([0.0, 0.0, 0.0])
    stack.SetSpacing(list(pixel_mm))

    joseph = rtk.JosephForwardProjectionImageFilter[image_type, image_type].New()
    joseph.SetInput(0, stack)  # the output is this stack plus the projections
    joseph.SetInput(1, vol)
    joseph.SetGeometry(geo)
    joseph.SetInPlace(False)  # in place, the second Update fails (the stack's buffer is gone)

    def run():
        joseph.Modified()  # force the pipeline to execute again
        joseph.Update()
        return joseph.GetOutput()

    return [Runner(
        "RTK", "JosephForwardProjectionImageFilter (Update per run)", "defaults", run,
        lambda out: itk.array_from_image(out),
        {"itk_global_default": int(itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads()),
         "work_units": int(joseph.GetNumberOfWorkUnits()),
         "threader": itk.MultiThreaderBase.ThreaderTypeToString(
             itk.MultiThreaderBase.GetGlobalDefaultThreader())},
        {"max_matrix_disagreement_px": check_rtk_matrices(geo, geometry, pixel_mm)},
    )]


# ---------------------------------------------------------------------------- DiffDRR
def diffdrr_pose(geometry):
    """drrkit Geometry -> DiffDRR camera-to-world poses (K, 4, 4) and detector intrinsics.

    DiffDRR (reverse_x_axis=True, identity reorientation) puts pixel (c, r) of an H x W
    detector at camera point ``(-(c - (W-1)/2) dx, -(r - (H-1)/2) dy, sdd)`` with the source
    at the camera origin; the pose maps camera to world. So the pose's columns are
    ``-u/|u|``, ``-v/|v|``, the unit normal towards the detector, and the source.
    """
    centers, sources = geometry.detector_centers, geometry.sources
    sdd = geometry.source_to_detector
    spacing = geometry.pixel_spacing
    if not (np.allclose(sdd, sdd[0]) and np.allclose(spacing, spacing[0])):
        raise RuntimeError("DiffDRR needs one sdd and pixel spacing for the batch")
    axis = centers - sources
    if not np.allclose(np.linalg.norm(axis, axis=-1), sdd, rtol=1e-9):
        raise RuntimeError("DiffDRR conversion assumes the detector centre on the principal ray")
    poses = np.tile(np.eye(4), (len(geometry), 1, 1))
    poses[:, :3, 0] = -geometry.u / spacing[:, :1]
    poses[:, :3, 1] = -geometry.v / spacing[:, 1:]
    poses[:, :3, 2] = axis / sdd[:, None]
    poses[:, :3, 3] = sources
    return poses, float(sdd[0]), (float(spacing[0, 0]), float(spacing[0, 1]))


def diffdrr_runners(scene, case, threads) -> list[Runner]:
    """DiffDRR's trilinear renderer (defaults) on the same volume and geometry."""
    import torch
    import torchio
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform

    torch.set_num_threads(threads)
    volume, geometry = scene["volume"], scene["cases"][case]["geometry"]
    # torchio stores (C, X, Y, Z) with a voxel-to-world affine; DiffDRR uses the affine
    # as given (no RAS/LPS flip) when the subject is built directly, not with diffdrr.data.read.
    data = torch.from_numpy(np.ascontiguousarray(volume.data.transpose(2, 1, 0))[None].copy())
    image = torchio.ScalarImage(tensor=data, affine=volume.index_to_world)
    subject = torchio.Subject(volume=image, density=image, mask=None, reorient=torch.eye(4),
                              orientation=None, fiducials=None)
    poses, sdd, (dx, dy) = diffdrr_pose(geometry)
    drr = DRR(subject, sdd=sdd, height=geometry.height, width=geometry.width, delx=dx,
              dely=dy, renderer="trilinear")
    pose = RigidTransform(torch.tensor(poses, dtype=torch.float32))

    def run():
        with torch.no_grad():
            return drr(pose)

    return [Runner(
        "DiffDRR", "DRR(renderer='trilinear') under torch.no_grad()",
        "defaults (n_points=500 per ray)", run, lambda out: out.numpy()[:, 0],
        {"torch": torch.get_num_threads()},
    )]


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads, wait_policy=None)
    sys.path.insert(0, str(ROOT))
    t_start = time.perf_counter()
    load_before = check_load()
    print(f"building the {args.size}^3 phantom ...", flush=True)
    scene = make_scene(args.size, args.views, args.supersample)
    factories = {"drrkit": drrkit_runners, "rtk": rtk_runners, "diffdrr": diffdrr_runners}
    batch_case = f"{args.views} views"
    rows, failures = [], []
    for case in ("1 view", batch_case):
        runners = []
        for lib, factory in factories.items():
            if lib in args.skip or (lib == "diffdrr" and case == batch_case
                                    and not args.diffdrr_batch):
                continue
            extra = ([*DRRKIT_VARIANTS, *args.drrkit_variant],) if lib == "drrkit" else ()
            runners += factory(scene, case, args.threads, *extra)
        print(f"{case}: timing {', '.join(r.library for r in runners)} "
              f"({args.schedule}) ...", flush=True)
        time_runners(runners, args.warmup, args.repeats, args.schedule)
        truth = scene["cases"][case]
        for r in runners:
            image = r.to_array(r.result)
            if r.library == "RTK":  # runs must not accumulate into the projection stack
                again = r.to_array(r.run())
                r.checks["repeat_identical"] = bool(np.array_equal(again, image))
                if not r.checks["repeat_identical"]:
                    failures.append(f"RTK {case}: output changed between runs")
            acc = accuracy(image, truth["exact"], truth["interior"])
            if acc["interior_mean_rel"] > CONVERSION_TOLERANCE:
                failures.append(f"{r.library} {case}: interior mean relative error "
                                f"{acc['interior_mean_rel']:.1%}")
            rows.append({"library": r.library, "method": r.method, "settings": r.settings,
                         "case": case, "threads": r.threads, "checks": r.checks,
                         "accuracy": acc, **summary(r.wall, r.cpu)})
            print(f"  {r.library:8s} {r.settings}: median {rows[-1]['median_s'] * 1e3:.1f} ms, "
                  f"interior mean rel err {acc['interior_mean_rel']:.2%}", flush=True)

    threads = args.threads
    volume = scene["volume"]
    result = {
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "threads": threads,
                    "platform": platform.platform()},
        "versions": versions(PACKAGES),
        **provenance(["drrkit/_cpu.py"], "drrkit_cpu_sha256"),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "method": {"warmup": args.warmup, "repeats": args.repeats, "schedule": args.schedule,
                   "clock": "time.perf_counter (wall); cpu_median_s from time.process_time",
                   "statistic": "median; IQR = 75th - 25th percentile",
                   "signal_fraction": SIGNAL_FRACTION,
                   "interior_margin_voxels": INTERIOR_MARGIN_VOXELS},
        "scene": {"volume_shape_zyx": list(volume.data.shape),
                  "voxel_mm": volume.spacing.tolist(),
                  "phantom": f"drrkit.phantoms.torso_ellipsoids({PHANTOM_SCALE}), "
                             f"voxelize(supersample={args.supersample})",
                  "detector_px": [DETECTOR_PX, DETECTOR_PX], "pixel_mm": PIXEL_MM,
                  "sad_mm": SAD_MM, "sid_mm": SID_MM,
                  "views": {c: scene["cases"][c]["geometry"].angles_deg.tolist()
                            for c in scene["cases"]}},
        "results": rows,
        "conversion_failures": failures,
        "wall_s": time.perf_counter() - t_start,
    }
    out = args.out or RESULTS / f"cpu-{slug(cpu_model())}-{threads}t.json"
    write_json(out, result)
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} "
          f"({result['wall_s']:.0f} s)\n")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_table import table

    print(table([result]))
    if failures:
        print("\nGEOMETRY CONVERSION SUSPECT:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
