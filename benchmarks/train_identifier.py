"""One identifier of a named recipe, trained from scratch and bundled with other localizers.

Builds the recipe's identifier phantoms (``vertebra.demo.prepare_data``, with a single
localizer phantom, since only the identifier is trained), pre-trains its SimSiam encoder
and trains it (``pretrain_encoder``, ``train_network``), then bundles it with the given
localizer checkpoints and the pipeline settings stored in a networks file, so that
``benchmarks/real_ct.py --model OUT/networks.pt`` scores the new identifier beside
localizers already shipped. Prints the time of each step.

Run::

    uv run python benchmarks/train_identifier.py OUT --seed 0 \\
        --localizers L1.pt L2.pt L3.pt --settings vertebra/weights/default.safetensors \\
        [--max-t1-lean 30 --thick-slice-share 0.3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="run folder (reused if it holds a run)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--recipe", default="real-ct", help="named recipe")
    parser.add_argument("--localizers", nargs="+", required=True,
                        help="localizer checkpoints to bundle with the identifier")
    parser.add_argument("--settings", required=True,
                        help="networks file or bundle whose pipeline settings the bundle keeps")
    parser.add_argument("--held-out", type=Path, default=None,
                        help="an existing held-out phantom folder to reuse (a link to it)")
    parser.add_argument("--max-t1-lean", type=float, default=None,
                        help="the phantoms' largest lean at T1, degrees (default: the recipe's)")
    parser.add_argument("--thick-slice-share", type=float, default=None,
                        help="share of clinical phantoms in 3-5 mm slices (default: the "
                        "recipe's)")
    args = parser.parse_args(argv)

    from dataclasses import replace

    from vertebra.demo import prepare_data, pretrain_encoder, recipe_config, train_network
    from vertebra.pipeline import bundle_networks, stored_pipeline

    config = replace(recipe_config(args.recipe), train_phantoms=1, seed=args.seed)
    if args.max_t1_lean is not None:
        config = replace(config, max_t1_lean=args.max_t1_lean)
    if args.thick_slice_share is not None:
        config = replace(config, thick_slice_share=args.thick_slice_share)
    models = args.out / "models"
    models.mkdir(parents=True, exist_ok=True)
    held = args.out / "data" / "held_out"
    if args.held_out is not None and not held.exists():
        held.parent.mkdir(parents=True, exist_ok=True)
        held.symlink_to(args.held_out.resolve())
    t = time.time()
    caches, _ = prepare_data(args.out / "data", config)
    print(f"data {time.time() - t:.0f} s", flush=True)
    t = time.time()
    init = pretrain_encoder(caches["identification"], models / "simsiam.pt", config)
    print(f"pretrain {time.time() - t:.0f} s", flush=True)
    t = time.time()
    train_network(caches["identification"], models / "identifier.pt", "identification",
                  config.identifier_iterations, init, progress=False, **config.train_changes())
    print(f"identifier {time.time() - t:.0f} s", flush=True)
    bundle_networks(list(args.localizers), [models / "identifier.pt"], args.out / "networks.pt",
                    pipeline=stored_pipeline(args.settings))
    print(f"wrote {args.out / 'networks.pt'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
