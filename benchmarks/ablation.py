"""The paper's ablation (Wu et al., MICCAI 2023, Table 2) on synthetic spines.

Run (the default size takes about 25 to 35 minutes on 2 CPU cores; ``--quick`` checks the
plumbing in about 2 minutes)::

    uv run python benchmarks/ablation.py --out runs/ablation
    uv run python benchmarks/ablation.py --out runs/ablation --train-phantoms 80 --iterations 1500

Rows (each measured the same way: the networks label the same held-out phantoms with
:func:`vertebra.pipeline.label_ct`, scored with the VerSe metrics, 20 mm):

=================  =================  ==============================  ================
row                identifier init    identification loss             view fusion
=================  =================  ==============================  ================
baseline           random init        cross-entropy                   mean of views
+ pre-train        multi-view SimSiam cross-entropy                   mean of views
+ Sequence Loss    multi-view SimSiam cross-entropy + Sequence Loss   mean of views
+ voting           multi-view SimSiam cross-entropy + Sequence Loss   Eq. 6 weights
=================  =================  ==============================  ================

"mean of views" is ``V = (1/K) sum_k P_k``; "+ voting" weighs the views by
``W_k = (1 - L_s^k) / sum (1 - L_s^k)`` (Eq. 6). Every row uses the DP label correction
(the paper's rows all use its correction step). "Pre-train" starts the networks of ``--pretrained`` (default the
demo's, ``DemoConfig.pretrained``: the identifier only, as the paper's code does) from the
SimSiam encoder; the others train from random weights in every row. With the default,
four trainings: the localizer (shared by all rows), the CE-only identifier from scratch
and from the SimSiam encoder, and the identifier with the Sequence Loss from the SimSiam
encoder; row 4 reuses row 3's networks (``--pretrained localization,identification``
adds the localizer from the encoder: five).
All trainings use :meth:`TrainConfig.cpu_demo` (its iterations, or ``--iterations`` for
both networks) and the same seed, on the demo's prerender caches (one per network's views)
of ``--train-phantoms`` phantoms (seeds 0..N-1, ``--orbits`` orbits); the held-out phantoms are seeds ``--held-out-start`` .. (never trained on).

Every step reuses its output in ``--out`` (data, checkpoints), so a long run can be
stopped and continued. Writes ``OUT/ablation.json`` and
``benchmarks/results/ablation-<cpu>-<size>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import RESULTS, commit, cpu_model, set_threads, slug, utc_now

ROWS = (
    # name, pretrained encoders, sequence loss, voting
    ("baseline", False, False, "mean"),
    ("+ pre-train", True, False, "mean"),
    ("+ Sequence Loss", True, True, "mean"),
    ("+ voting", True, True, "weighted"),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-phantoms", type=int, default=40, help="the localizer's")
    p.add_argument("--identifier-phantoms", type=int, default=None,
                   help="the identifier's (default: the demo's, DemoConfig)")
    p.add_argument("--orbits", type=int, default=2)
    p.add_argument("--held-out", type=int, default=24)
    p.add_argument("--held-out-start", type=int, default=3000)
    p.add_argument("--iterations", type=int, default=None,
                   help="steps per training (default: the cpu-demo preset's)")
    p.add_argument("--pretrain-steps", type=int, default=40)
    p.add_argument("--pretrain-batch", type=int, default=32)
    p.add_argument("--pretrained", default=None,
                   help="comma-separated tasks that '+ pre-train' starts from the SimSiam "
                        "encoder (default: the demo's, DemoConfig.pretrained)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny sizes: plumbing only")
    p.add_argument("--pictures", action="store_true", help="also write the PNGs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads, wait_policy=None)  # training: see _common.set_threads
    import torch

    torch.set_num_threads(args.threads)
    from vertebra.demo import (
        DemoConfig,
        label_folder,
        prepare_data,
        pretrain_encoder,
        train_network,
    )
    from vertebra.pipeline import bundle_networks

    if args.quick:
        args.train_phantoms, args.identifier_phantoms, args.orbits, args.held_out = 4, 4, 1, 2
        args.iterations, args.pretrain_steps, args.pretrain_batch = 10, 3, 4
    identifier_phantoms = args.identifier_phantoms or DemoConfig().identifier_phantoms
    pretrained = (DemoConfig().pretrained if args.pretrained is None else
                  tuple(t.strip() for t in args.pretrained.split(",") if t.strip()))
    config = DemoConfig(train_phantoms=args.train_phantoms,
                        identifier_phantoms=identifier_phantoms, orbits=args.orbits,
                        held_out=args.held_out, held_out_start=args.held_out_start,
                        pretrain_steps=args.pretrain_steps, pretrain_batch=args.pretrain_batch,
                        pretrained=pretrained)
    out = args.out
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    seconds = {}
    t = time.perf_counter()
    caches, held_dir = prepare_data(out / "data", config)
    seconds["data"] = time.perf_counter() - t
    t = time.perf_counter()
    simsiam = pretrain_encoder(caches["identification"], models / "simsiam.pt", config)
    seconds["pretrain"] = time.perf_counter() - t

    def net(task: str, pretrained: bool, sequence: bool) -> Path:
        pretrained = pretrained and task in config.pretrained
        name = f"{task[:3]}-{'simsiam' if pretrained else 'scratch'}" + (
            "-seq" if task == "identification" and sequence else "")
        path = models / f"{name}.pt"
        t0 = time.perf_counter()
        train_network(caches[task], path, task, args.iterations,
                      simsiam if pretrained else "none", sequence_loss=sequence, progress=False)
        seconds.setdefault(f"train {name}", time.perf_counter() - t0)  # rows share some
        return path

    rows = []
    for name, pretrained, sequence, voting in ROWS:
        loc = net("localization", pretrained, False)
        ide = net("identification", pretrained, sequence)
        bundle = models / f"bundle-{loc.stem}-{ide.stem}.pt"
        bundle_networks(loc, ide, bundle, pipeline=config.pipeline_settings())
        t0 = time.perf_counter()
        slug_name = name.strip("+ ").replace(" ", "-").lower()
        pooled, _, per_ct = label_folder(bundle, held_dir, out / "labels" / slug_name,
                                         pictures=args.pictures, voting=voting)
        seconds[f"label {name}"] = time.perf_counter() - t0
        rows.append({"row": name,
                     "pretrained": [t for t in config.pretrained if pretrained],
                     "sequence_loss": sequence,
                     "voting": voting, "localizer": loc.name, "identifier": ide.name,
                     "id_rate": pooled["id_rate"], "l_error_mm": pooled["l_error"],
                     "n_gt": pooled["n_gt"], "identified": pooled["identified"],
                     "n_pred": pooled["n_pred"],
                     "regions": pooled["regions"], "seconds_per_ct": per_ct})
        print(f"{name}: id rate {100 * pooled['id_rate']:.2f} %, error "
              f"{pooled['l_error']:.2f} mm", flush=True)

    record = {
        "benchmark": "ablation",
        "config": {**vars(args), "out": str(args.out)},
        "rows": rows,
        "seconds": seconds,
        "cpu": cpu_model(),
        "commit": commit(),
        "date": utc_now(),
    }
    from drrkit.io import json_safe

    text = json.dumps(json_safe(record), indent=1) + "\n"
    (out / "ablation.json").write_text(text)
    size = "quick" if args.quick else f"n{args.train_phantoms}-it{args.iterations or 'preset'}"
    result = RESULTS / f"ablation-{slug(cpu_model())}-{size}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(text)
    print("\n| row | pre-train | Sequence Loss | voting | id rate % | l_error mm |")
    print("|---|:-:|:-:|:-:|---:|---:|")
    for r in rows:
        print(f"| {r['row']} | {'x' if r['pretrained'] else ''} | "
              f"{'x' if r['sequence_loss'] else ''} | "
              f"{'x' if r['voting'] == 'weighted' else ''} | {100 * r['id_rate']:.2f} | "
              f"{r['l_error_mm']:.2f} |")
    print(f"\n{args.held_out} held-out phantoms ({rows[0]['n_gt']} vertebrae); "
          f"wrote {result}; time {sum(seconds.values()):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
