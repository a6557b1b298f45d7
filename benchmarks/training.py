"""Training speed: iterations per second of the U-Nets, and the cost of feeding them.

Measured per configuration and task (localization, identification with Sequence Loss):

* **step**: one optimiser step (forward, loss, backward, Adam) on a fixed batch of real
  training views, i.e. the network's speed without the data pipeline. Warm-up steps
  first, then ``--repeats`` timed steps (synchronised on CUDA); the median and quartiles
  are reported, iterations/s = 1 / median.
* **data**: building one batch from a prerender cache (crop + augmentation) and from a
  CT rendered on the fly (drrkit, one view per item), median over batches.

Configurations: the paper's ResNet-50 U-Net at 256 x 256, batch 2, and the CPU demo
preset (``TrainConfig.cpu_demo``: ResNet-10t, 64 x 64, batch 16; the identifier with a
narrower decoder). The batches come from one synthetic phantom
(``vertebra.data.phantom``, seed 0) rendered with each
configuration's views. The machine's load average is recorded before and after: on a
shared machine, other processes slow the numbers down.

Run::

    uv run python benchmarks/training.py                 # CPU, all threads
    uv run python benchmarks/training.py --device cuda   # on a GPU (also mixed precision)

Mixed precision (``amp``) is timed too where the device has it: autocast to bfloat16
(float16 on GPUs without it); on a CPU with native bfloat16 (AMX / AVX-512 BF16) also
channels-last tensors, as ``TrainConfig(cpu_bf16=True)`` trains.

Writes ``benchmarks/results/training-<cpu or gpu>-<threads>t.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

from _common import RESULTS, commit, cpu_model, quartiles, slug, utc_now, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--configs", default="paper,cpu-demo", help="comma-separated presets")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def step_stats(times: list[float]) -> dict:
    """:func:`_common.quartiles` of ``times`` (seconds), iterations per second
    (1 / median) and every time."""
    q = quartiles(times)
    return {**q, "it_per_s": float(1.0 / q["median_s"]), "times_s": [float(t) for t in times]}


def config_for(name: str, task: str):
    from vertebra.training.config import TrainConfig

    if name == "paper":
        return TrainConfig.paper(task, crop_size=256, batch_size=2, device="cpu")
    return TrainConfig.preset(name, task, device="cpu")


def time_steps(config, batch, device, warmup: int, repeats: int, amp: bool) -> dict:
    import torch

    from vertebra.sequence import SequenceDP
    from vertebra.training.trainer import build_model, make_optimizer, precision, train_step

    torch.manual_seed(0)
    config = replace(config, amp=amp, cpu_bf16=amp)
    model = build_model(config).to(device)
    prec = precision(device, config)
    model = prec.model(model)
    optimizer = make_optimizer(model, config, device)
    dp = SequenceDP(config.alpha, config.beta)
    batch = prec.batch({k: v.to(device) for k, v in batch.items()})

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        train_step(model, optimizer, batch, config, dp, prec.autocast, prec.scaler)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        train_step(model, optimizer, batch, config, dp, prec.autocast, prec.scaler)
        sync()
        times.append(time.perf_counter() - t0)
    return step_stats(times)


def time_data(dataset, batch_size: int, batches: int) -> dict:
    from torch.utils.data import default_collate

    times = []
    for b in range(batches + 1):
        t0 = time.perf_counter()
        default_collate([dataset[b * batch_size + i] for i in range(batch_size)])
        if b:  # the first batch loads / generates the CT
            times.append(time.perf_counter() - t0)
    return step_stats(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from torch.utils.data import default_collate

    from vertebra.training.dataset import ViewDataset
    from vertebra.training.rendered import RenderedCache, render_views
    from vertebra.training.sources import PhantomSource
    from vertebra.training.trainer import cpu_has_bf16

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model())
    load_before = os.getloadavg()
    source = PhantomSource([0], cache=1)
    rows = []
    for name in args.configs.split(","):
        for task in ("localization", "identification"):
            config = config_for(name, task)
            ct = source.load(0)
            rendered = render_views(ct, config.views, [0.0], sigma_mm=config.sigma_mm,
                                    square_mm=config.square_mm, backend="auto")
            cached = ViewDataset(RenderedCache.from_views([rendered]), config)
            batch = default_collate([cached[i] for i in range(config.batch_size)])
            amp_modes = (False, True) if device.type == "cuda" or cpu_has_bf16() else (False,)
            for amp in amp_modes:
                step = time_steps(config, batch, device, args.warmup, args.repeats, amp)
                row = {"config": name, "task": task, "encoder": config.encoder,
                       "crop_size": config.crop_size, "batch_size": config.batch_size,
                       "sequence_loss": config.sequence_loss and task == "identification",
                       "device": device.type, "amp": amp, "step": step}
                if not amp:
                    row["data_cached"] = time_data(cached, config.batch_size, 5)
                    row["data_on_the_fly"] = time_data(ViewDataset(source, config),
                                                       config.batch_size, 2)
                rows.append(row)
                print(f"{name:9s} {task:14s} amp={amp!s:5s} {step['it_per_s']:7.2f} it/s "
                      f"(median step {step['median_s'] * 1e3:.0f} ms)"
                      + (f"; batch from cache {row['data_cached']['median_s'] * 1e3:.0f} ms, "
                         f"rendered on the fly {row['data_on_the_fly']['median_s']:.2f} s"
                         if not amp else ""), flush=True)
    result = {
        "benchmark": "training",
        "hardware": {"name": hardware, "threads": args.threads, "device": device.type,
                     "cpu": cpu_model(), "platform": platform.platform()},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "commit": commit(),
        "date": utc_now(),
        "method": {"warmup": args.warmup, "repeats": args.repeats, "statistic": "median"},
        "rows": rows,
    }
    tag = slug(hardware) + (f"-{args.threads}t" if device.type == "cpu" else "")
    out = args.out or RESULTS / f"training-{tag}.json"
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
