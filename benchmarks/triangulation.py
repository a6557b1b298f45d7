"""Triangulation benchmark: drrkit.triangulate vs a vectorised NumPy einsum + solve baseline.

Run (about 2 minutes on 2 cores)::

    uv run python benchmarks/triangulation.py                  # 1e6 problems x 10 rays, float64
    uv run python benchmarks/triangulation.py --problems 100000 --repeats 5

Problems: ``--problems`` points uniform in a 200 mm cube about the isocentre, each seen
by the ``--rays`` sources of :func:`drrkit.circular_orbit` (sad 500 mm) through a
detection with 1 mm isotropic noise; origins and directions are full (N, K, 3) float64
arrays (directions not normalised). The baseline is the plain vectorised form of the
paper's Eq. 4-5: normalise, ``S = K I - einsum(n, n)``, ``q = sum(a) - einsum(n . a, n)``,
``np.linalg.solve(S, q)``.

Method (as ``benchmarks/cpu_projectors.py``, see ``benchmarks/README.md``): thread
count fixed before any pool starts (``--threads``, recorded); every runner first makes
``--warmup`` untimed calls (Numba compilation, caches); then ``--repeats`` timed calls,
interleaved round-robin across runners so drifts in background load hit all alike;
GPU runners synchronise. Reported: the median wall time with IQR, minimum and median
process CPU time; the JSON also keeps every time. Recorded: CPU model, threads, load
average before and after, versions, git commit, whether ``drrkit/`` had uncommitted
changes and a hash of the kernel sources. The robust variant and the torch autograd
path are timed on fewer problems (``--robust-problems``, ``--autograd-problems``).
The correspondence section runs :func:`drrkit.match_views` on ``--subjects`` synthetic
spines and reports assignment accuracy against ground truth.

Writes ``benchmarks/results/triangulation-<cpu model>-<threads>t.json`` (``<gpu
model>`` instead when a GPU runner ran) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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

KERNELS = ("drrkit/triangulation.py", "drrkit/_triangulation_numba.py",
           "drrkit/cuda/triangulate.cu", "drrkit/correspondence.py")
BASELINE = "numpy einsum + linalg.solve"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problems", type=int, default=1_000_000)
    p.add_argument("--rays", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="threads for Numba and torch")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    p.add_argument("--repeats", type=int, default=15, help="timed calls (median reported)")
    p.add_argument("--robust-problems", type=int, default=20_000)
    p.add_argument("--autograd-problems", type=int, default=100_000)
    p.add_argument("--subjects", type=int, default=200, help="correspondence subjects (0: skip)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: named by machine)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- problems
def baseline(origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Vectorised NumPy least-squares points, (N, K, 3) -> (N, 3) (no validity checks)."""
    k = origins.shape[1]
    n = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    s = k * np.eye(3) - np.einsum("nki,nkj->nij", n, n)
    q = origins.sum(axis=1) - np.einsum("nk,nki->ni", np.einsum("nki,nki->nk", n, origins), n)
    return np.linalg.solve(s, q[..., None])[..., 0]


def make_problems(n: int, k: int, seed: int = 0, noise_mm: float = 1.0):
    """n problems of k rays from a circular orbit to points near the isocentre."""
    import drrkit

    rng = np.random.default_rng(seed)
    g = drrkit.circular_orbit(views=k, sad=500, sid=1000)
    points = rng.uniform(-100, 100, (n, 3))
    origins = np.ascontiguousarray(np.broadcast_to(g.sources, (n, k, 3)))
    directions = points[:, None, :] + rng.normal(0, noise_mm, (n, k, 3)) - origins
    directions *= rng.uniform(0.5, 2.0, (n, k, 1))  # not normalised
    return origins, directions


# ---------------------------------------------------------------------------- timing
@dataclass
class Runner(TimedRunner):
    """One timed call: ``run()`` returns (N, 3) points (any array type); ``sync`` (if
    given) waits for the GPU after each call."""

    name: str
    backend: str
    problems: int
    run: Callable[[], object]
    sync: Callable[[], None] | None = None


def to_numpy(points) -> np.ndarray:
    if hasattr(points, "detach"):
        return points.detach().cpu().numpy()
    if hasattr(points, "get"):
        return points.get()
    return np.asarray(points)


def make_runners(origins, directions, args) -> list[Runner]:
    from drrkit import cuda_available
    from drrkit.triangulation import triangulate

    n = len(origins)
    weights = np.random.default_rng(1).uniform(0.5, 1.5, origins.shape[:2])
    o32, d32 = origins.astype(np.float32), directions.astype(np.float32)
    runners = [
        Runner(BASELINE, "numpy", n, lambda: baseline(origins, directions)),
        Runner("drrkit float64", "numpy (Numba)", n,
               lambda: triangulate(origins, directions).points),
        Runner("drrkit float64, weights", "numpy (Numba)", n,
               lambda: triangulate(origins, directions, weights).points),
        Runner("drrkit float32 in", "numpy (Numba)", n, lambda: triangulate(o32, d32).points),
    ]
    try:
        import torch
    except ImportError:
        return runners
    to, td = torch.from_numpy(origins), torch.from_numpy(directions)
    m = min(args.autograd_problems, n)
    tg = to[:m].clone().requires_grad_()
    runners += [
        Runner("drrkit float64", "torch CPU (no grad: Numba)", n,
               lambda: triangulate(to, td).points),
        Runner("drrkit float64, autograd forward", "torch CPU (array path)", m,
               lambda: triangulate(tg, td[:m]).points),
    ]
    if torch.cuda.is_available():
        go, gd = to.cuda(), td.cuda()
        for acc in ("float64", "input"):
            runners.append(Runner(f"drrkit float64, accumulate={acc}", "torch CUDA", n,
                                  lambda acc=acc: triangulate(go, gd, accumulate=acc).points,
                                  sync=torch.cuda.synchronize))
    if cuda_available():
        import cupy

        for dtype in (np.float64, np.float32):
            co, cd = cupy.asarray(origins, dtype), cupy.asarray(directions, dtype)
            runners.append(Runner(f"drrkit {np.dtype(dtype).name}", "CuPy kernel", n,
                                  lambda co=co, cd=cd: triangulate(co, cd).points,
                                  sync=cupy.cuda.Device().synchronize))
    return runners


# ---------------------------------------------------------------------------- correspondence
def synthetic_spine(rng, n):
    """(n, 3) points 25-35 mm apart along a curved vertical line (as the tests)."""
    z = -np.concatenate([[0.0], np.cumsum(rng.uniform(25, 35, n - 1))])
    z -= z.mean()
    t = (z - z.min()) / max(np.ptp(z), 1.0)
    x = rng.uniform(-20, 20) + rng.uniform(-15, 15) * np.sin(
        np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 2 * np.pi))
    y = rng.uniform(-20, 20) + rng.uniform(-25, 25) * np.sin(
        np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 2 * np.pi))
    return np.stack([x, y, z], axis=1)


def correspondence_accuracy(subjects: int, seed: int = 0) -> dict:
    """match_views on synthetic spines: 5-25 points, 10% dropout, ~1 false per view, 1-2 px."""
    from scipy.optimize import linear_sum_assignment

    import drrkit

    g = drrkit.circular_orbit(views=10, sad=500, sid=1000, size=1024, pixel_spacing=2.0)
    rng = np.random.default_rng(seed)
    counts = {"true_right": 0, "true_wrong_track": 0, "true_unassigned": 0,
              "false_assigned": 0, "false_unassigned": 0}
    tracks_extra = tracks_missing = 0
    errors, times = [], []
    for _ in range(subjects):
        n = int(rng.integers(5, 26))
        points = synthetic_spine(rng, n)
        pixels = drrkit.project_points(points, g).pixels
        noise = rng.uniform(1, 2)
        detections, truth = [], []
        for k in range(10):
            kept = np.flatnonzero(rng.uniform(size=n) >= 0.1)
            px = pixels[k, kept] + rng.normal(0, noise, (len(kept), 2))
            n_false = rng.poisson(1.0)
            lo, hi = pixels[k].min(0) - [40, 20], pixels[k].max(0) + [40, 20]
            px = np.concatenate([px, rng.uniform(lo, hi, (n_false, 2))])
            label = np.concatenate([kept, -np.ones(n_false, np.int64)])
            order = rng.permutation(len(px))
            detections.append(px[order])
            truth.append(label[order])
        start = time.perf_counter()
        result = drrkit.match_views(detections, g)
        times.append(time.perf_counter() - start)
        votes = np.zeros((len(result.points), n))
        for t, row in enumerate(result.assignments):
            for k, j in enumerate(row):
                if j >= 0 and truth[k][j] >= 0:
                    votes[t, truth[k][j]] += 1
        rows, cols = linear_sum_assignment(-votes)
        label = np.full(len(result.points), -2)
        label[rows] = cols
        errors.extend(np.linalg.norm(result.points[rows] - points[cols], axis=1))
        tracks_extra += max(len(result.points) - n, 0)
        tracks_missing += max(n - len(result.points), 0)
        for k in range(10):
            predicted = np.full(len(truth[k]), -1)
            for t, j in enumerate(result.assignments[:, k]):
                if j >= 0:
                    predicted[j] = label[t]
            true = truth[k]
            counts["true_right"] += int(((true >= 0) & (predicted == true)).sum())
            counts["true_unassigned"] += int(((true >= 0) & (predicted == -1)).sum())
            counts["true_wrong_track"] += int(((true >= 0) & (predicted != true)
                                               & (predicted != -1)).sum())
            counts["false_assigned"] += int(((true < 0) & (predicted != -1)).sum())
            counts["false_unassigned"] += int(((true < 0) & (predicted == -1)).sum())
    total = sum(counts.values())
    return {
        "subjects": subjects, "seed": seed, "views": 10, "sad_mm": 500, "sid_mm": 1000,
        "detector": "1024 x 1024, 2 mm pixels",
        "points_per_subject": "5-25, 25-35 mm apart", "dropout": 0.1,
        "false_per_view": ("Poisson(1), uniform within 40 px (columns) / 20 px (rows) "
                           "of the projected spine's bounding box"),
        "noise_px": "Gaussian, sigma uniform 1-2 per subject",
        "detection_accuracy": (counts["true_right"] + counts["false_unassigned"]) / total,
        "counts": counts, "extra_tracks": tracks_extra, "missing_tracks": tracks_missing,
        "point_error_mm_median": float(np.median(errors)),
        "point_error_mm_max": float(np.max(errors)),
        "seconds_per_subject_median": statistics.median(times),
    }


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from drrkit import config
    from drrkit.triangulation import triangulate_robust

    start = time.perf_counter()
    load_before = check_load()
    try:
        import torch

        torch.set_num_threads(args.threads)
        torch_threads = torch.get_num_threads()
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        torch_threads = gpu = None
    origins, directions = make_problems(args.problems, args.rays)
    reference = baseline(origins, directions)
    runners = make_runners(origins, directions, args)
    m = min(args.robust_problems, args.problems)
    runners.append(Runner("drrkit robust (RANSAC over pairs)", "numpy (Numba + NumPy)", m,
                          lambda: triangulate_robust(origins[:m], directions[:m]).points))
    print(f"timing {len(runners)} runners, {args.repeats} interleaved rounds ...", flush=True)
    time_runners(runners, args.warmup, args.repeats)
    rows = []
    for r in runners:
        diff = np.abs(to_numpy(r.result) - reference[:r.problems]).max()
        rows.append({"name": r.name, "backend": r.backend, "problems": r.problems,
                     "max_abs_diff_vs_baseline_mm": float(diff), **summary(r.wall, r.cpu)})
    per_problem = rows[0]["median_s"] / rows[0]["problems"]
    for row in rows:
        row["speedup_vs_baseline"] = per_problem * row["problems"] / row["median_s"]
    result = {
        "benchmark": "triangulation",
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
                    "threads": args.threads, "numba_threads": config.cpu_threads(),
                    "torch_threads": torch_threads, "gpu": gpu,
                    "platform": platform.platform()},
        "versions": versions(),
        **provenance(KERNELS, "triangulation_sources_sha256"),
        "problems": args.problems, "rays": args.rays, "dtype": "float64",
        "method": {"warmup": args.warmup, "repeats": args.repeats, "schedule": "interleaved",
                   "clock": "time.perf_counter (wall); cpu_median_s from time.process_time",
                   "statistic": "median; IQR = 75th - 25th percentile",
                   "speedup": "baseline time per problem / this runner's time per problem",
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "results": rows,
    }
    if args.subjects:
        print(f"correspondence on {args.subjects} synthetic spines ...", flush=True)
        result["correspondence"] = correspondence_accuracy(args.subjects)
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    result["wall_s"] = time.perf_counter() - start
    name = slug(gpu) if gpu else f"{slug(cpu_model())}-{args.threads}t"
    out = args.out or RESULTS / f"triangulation-{name}.json"
    write_json(out, result)
    from make_table import triangulation_table

    print(triangulation_table([result]))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
