"""Time each stage of `vertebra label` on a 512 x 512 x 400 synthetic CT.

Run (CPU, about 3 to 6 minutes on 2 cores, most of it the ResNet-50 U-Nets)::

    uv run python benchmarks/label_timing.py                        # paper views + ResNet-50
    uv run python benchmarks/label_timing.py --preset cpu-demo      # 2 mm / 4 mm views + ResNet-10t
    uv run python benchmarks/label_timing.py --preset cpu-demo --localizer-views 20  # as the demo labels
    uv run python benchmarks/label_timing.py --device cuda --backend cuda   # on a GPU
    uv run python benchmarks/label_timing.py --save-ct ct512.nii.gz  # the CT, for
    time uv run --extra learn vertebra label ct512.nii.gz --out labels/  # end to end

CT: a synthetic spine (:func:`vertebra.data.phantom.make_spine_phantom`, seed
``--seed``, levels T1-L5, canonical orientation, 0.8 x 0.8 x 1.0 mm voxels, in-plane field
of view 409.6 mm) cropped or padded (air) to exactly ``--shape`` (Z, Y, X) = 400 x 512 x 512
voxels, float32 attenuation (420 MB).

Pipeline: :func:`vertebra.pipeline.label_ct` with the views of the preset
(``paper``: :class:`vertebra.views.ViewConfig` defaults, 10 views, 2 mm pixels at the
isocentre; ``cpu-demo``: :meth:`TrainConfig.cpu_demo`'s 2 mm pixels for the localizer and its
own 4 mm views for the identifier, rendered in the identify stage) and two U-Nets of
the preset's encoder (``paper``: ResNet-50; ``cpu-demo``: ResNet-10t), randomly
initialised: the forward passes cost the same whatever the weights. So that the stages
after the networks see a realistic input (the right number of detections, not the
noise of random weights), each network callable runs the real forward pass (timed) and
then returns the ground-truth target maps of :func:`vertebra.targets.make_targets`; the
script checks that every vertebra is labelled right and within 1 mm.

Method: thread count fixed before any pool starts (``--threads``, recorded);
``--warmup`` untimed labellings (Numba compilation, torch's first calls), then
``--repeats`` timed ones; per stage the median and min of
:attr:`LabelResult.timings` (``time.perf_counter`` around each stage; the network
stages copy their outputs to host NumPy arrays, which synchronises a GPU). Reading the
CT from disk is not included (the CT is in memory). Writes
``benchmarks/results/label-timing-<cpu or gpu>-<threads>t-<preset>.json`` and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import RESULTS, commit, cpu_model, set_threads, slug, utc_now, versions, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=("paper", "cpu-demo"), default="paper")
    p.add_argument("--shape", type=int, nargs=3, default=(400, 512, 512),
                   metavar=("Z", "Y", "X"))
    p.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 1.0),
                   metavar=("SX", "SY", "SZ"))
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--encoder", default=None, help="override the preset's encoder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="cpu", help="drrkit render backend")
    p.add_argument("--batch-size", type=int, default=5, help="views per forward pass")
    p.add_argument("--localizer-views", type=int, default=None,
                   help="K of the localizer's orbit (PipelineConfig.localizer_views; the "
                        "demo's bundle uses 20)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--save-ct", type=Path, default=None,
                   help="only write the CT (HU, NIfTI) to this path and stop: a file to "
                        "time `vertebra label` on, end to end")
    return p.parse_args(argv)


def make_ct(shape, spacing, seed):
    """(phantom centroids, attenuation Volume of exactly ``shape``)."""
    import drrkit
    from vertebra.data.phantom import make_spine_phantom

    nz, ny, nx = shape
    ph = make_spine_phantom(seed, levels=("T1", "L5"), spacing=spacing, fov=nx * spacing[0],
                            size=(max(nz, 1), ny, nx), orientation="canonical", metal=False)
    ct = ph.ct
    data = np.full(shape, -1000.0, dtype=np.float32)
    z0 = max((ct.data.shape[0] - nz) // 2, 0)
    src = ct.data[z0:z0 + nz, :ny, :nx]
    dz = (nz - src.shape[0]) // 2
    data[dz:dz + src.shape[0], :src.shape[1], :src.shape[2]] = src
    origin = ct.origin + ct.direction @ (np.array([0.0, 0.0, z0 - dz]) * ct.spacing)
    volume = drrkit.Volume(drrkit.hu_to_mu(data), ct.spacing, origin, ct.direction)
    index = volume.world_to_voxel(np.array(list(ph.centroids.values())))
    inside = np.all((index >= 0) & (index <= np.array([nx, ny, nz]) - 1), axis=1)
    centroids = {k: v for (k, v), ok in zip(ph.centroids.items(), inside) if ok}
    return centroids, volume


class TimedOracle:
    """Runs the real network (for its cost), returns the ground-truth maps."""

    def __init__(self, network, maps):
        self.network = network
        self.maps = maps

    def __call__(self, inputs):
        out = self.network(inputs)
        assert out.shape == self.maps.shape, (out.shape, self.maps.shape)
        return self.maps


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from vertebra import labels as vl
    from vertebra.models import create_model
    from vertebra.pipeline import PipelineConfig, TorchNetwork, label_ct
    from vertebra.targets import make_targets
    from vertebra.training.config import TrainConfig

    train = TrainConfig.preset(args.preset)
    train_id = TrainConfig.preset(args.preset, "identification")
    views = train.views
    id_views = train_id.views if train_id.views != views else None
    loc_views = views if args.localizer_views is None else replace(
        views, views=args.localizer_views)
    encoder = args.encoder or train.encoder
    t = time.perf_counter()
    centroids, volume = make_ct(tuple(args.shape), tuple(args.spacing), args.seed)
    build_s = time.perf_counter() - t
    if args.save_ct is not None:
        import drrkit

        hu = np.round((volume.data / drrkit.MU_WATER - 1.0) * 1000.0).astype(np.int16)
        volume.with_data(hu).save(args.save_ct)
        print(f"wrote {args.save_ct} ({' x '.join(map(str, hu.shape))} voxels, HU)")
        return 0
    geometry = loc_views.geometry(volume)
    targets = make_targets(centroids, geometry, volume, sigma_mm=train.sigma_mm,
                           square_mm=train.square_mm)
    id_targets = targets if (id_views or views) == loc_views else make_targets(
        centroids, (id_views or views).geometry(volume), volume, sigma_mm=train.sigma_mm,
        square_mm=train.square_mm)
    probs = np.eye(vl.NUM_CLASSES, dtype=np.float32)[id_targets.id_maps].transpose(0, 3, 1, 2)
    nets = [create_model("unet", encoder=encoder, task=task)
            for task in ("localization", "identification")]
    localizer = TimedOracle(TorchNetwork(nets[0], "heatmap", args.device, args.batch_size),
                            targets.heatmaps)
    identifier = TimedOracle(TorchNetwork(nets[1], "probabilities", args.device,
                                          args.batch_size), np.ascontiguousarray(probs))
    config = PipelineConfig(square_mm=train.square_mm, localizer_views=args.localizer_views)
    load = [os.getloadavg()[0]]
    print(f"CT {volume.data.shape} {np.round(volume.spacing, 2).tolist()} mm built in "
          f"{build_s:.0f} s; {len(centroids)} vertebrae; views {geometry.shape}; "
          f"encoder {encoder}", flush=True)

    runs = []
    for i in range(args.warmup + args.repeats):
        res = label_ct(volume, localizer, identifier, views=views, identifier_views=id_views,
                       config=config, backend=args.backend)
        got = res.centroids()
        ok = list(got) == list(centroids) and all(
            np.linalg.norm(got[k] - centroids[k]) < 1.0 for k in centroids)
        if not ok:
            print("error: the oracle labelling is wrong", flush=True)
            return 1
        if i >= args.warmup:
            runs.append(dict(res.timings))
        print(f"run {i}: {res.total_seconds:.2f} s "
              f"({'warm-up' if i < args.warmup else 'timed'})", flush=True)
    load.append(os.getloadavg()[0])

    stages = list(runs[0])
    table = {s: {"median_s": statistics.median(r[s] for r in runs),
                 "min_s": min(r[s] for r in runs), "all_s": [r[s] for r in runs]}
             for s in stages}
    totals = [sum(r.values()) for r in runs]
    gpu = None
    if args.device.startswith("cuda"):
        gpu = torch.cuda.get_device_name()
    hardware = slug(gpu) if gpu else slug(cpu_model())
    record = {
        "benchmark": "label_timing",
        "preset": args.preset,
        "encoder": encoder,
        "shape_zyx": list(args.shape),
        "spacing_mm": list(args.spacing),
        "views": list(geometry.shape),
        "view_config": views.to_dict(),
        "localizer_views": loc_views.views,
        "vertebrae": len(centroids),
        "device": args.device,
        "backend": args.backend,
        "threads": args.threads,
        "cpu": cpu_model(),
        "gpu": gpu,
        "load_average": load,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "stages": table,
        "total_median_s": statistics.median(totals),
        "total_min_s": min(totals),
        "versions": versions(),
        "commit": commit(),
        "date": utc_now(),
        "platform": platform.platform(),
    }
    suffix = "" if args.localizer_views is None else f"-{args.localizer_views}loc"
    out = args.out or RESULTS / (f"label-timing-{hardware}-{args.threads}t-{args.preset}"
                                 f"{suffix}.json")
    write_json(out, record)
    print("\n| stage | median s | min s |\n|---|---:|---:|")
    for s in stages:
        print(f"| {s} | {table[s]['median_s']:.3f} | {table[s]['min_s']:.3f} |")
    print(f"| **total** | **{record['total_median_s']:.2f}** | {record['total_min_s']:.2f} |")
    print(f"\n{args.preset}: {encoder}, views {geometry.shape}, {args.device}/{args.backend}, "
          f"{args.threads} threads, load {load[0]:.1f} -> {load[1]:.1f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
