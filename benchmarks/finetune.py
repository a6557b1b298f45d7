"""Fine-tune members of a networks bundle on phantoms of the current generator.

Run::

    uv run python benchmarks/finetune.py BUNDLE WORK [--phantoms 64] [--members localizer,...]
        [--iterations 500] [--lr 1e-4] [--max-t1-lean 30] [--keep-dense] [--seed-shift 0]
        [--thick-slice-share S] [--sagittal-share S]

``BUNDLE`` is a networks file or bundle (``vertebra/weights/default.safetensors``, a
``vertebra ensemble`` output). ``WORK/data`` receives the ``real-ct`` recipe's training
caches for ``--phantoms`` phantoms per tuned network, one for the other (:func:`vertebra.demo.prepare_data`: seeds
0.., the recipe's scan mix, completed views with the voxels denser than bone rendered as
soft tissue, or kept with ``--keep-dense``, as the shipped networks before decision
``dense-contrast`` were trained; reused when present), and each named member
(``localizer``, ``localizer_2``, ..., ``identifier``, ...) is trained on its task's cache
for ``--iterations`` more steps at a constant learning rate ``--lr``, from its weights in
the bundle (a fresh Adam state; the recipe's augmentation, batch and crops; its training
seed plus ``--seed-shift``, so that a replicate draws other batches), into
``WORK/nets/<member>.pt``. ``WORK/networks.pt`` then holds the bundle with those members
replaced (its pipeline settings kept): label with ``vertebra label --model
WORK/networks.pt``. It is how a change of the phantom generator is tried on the shipped
networks without their hours of training from scratch on this CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path


def finetune(bundle: Path, work: Path, members: list[str], *, phantoms: int,
             iterations: int, lr: float, max_t1_lean: float = 30.0,
             keep_dense: bool = False, seed_shift: int = 0,
             thick_slice_share: float | None = None, sagittal_share: float = 0.0) -> Path:
    """Fine-tune ``members`` of ``bundle`` (see the module docstring); returns the bundle."""
    import torch

    from vertebra.demo import DemoConfig, prepare_data
    from vertebra.pipeline import _model_from_state, _read_file
    from vertebra.training.checkpoint import save_checkpoint
    from vertebra.training.config import TrainConfig
    from vertebra.training.trainer import make_optimizer, train

    source = _read_file(bundle)  # a bundle as saved, or a networks file's bundle
    unknown = [m for m in members if m not in source]
    if unknown:
        raise SystemExit(f"error: {bundle} has no member {', '.join(unknown)}; it holds "
                         f"{', '.join(k for k in source if k.startswith(('loc', 'ident')))}")
    # a task none of whose members is tuned gets one phantom, and the held-out folder one
    # phantom: neither is used here
    tasks = {"localizer" if m.startswith("loc") else "identifier" for m in members}
    config = DemoConfig.real_ct(train_phantoms=phantoms if "localizer" in tasks else 1,
                                identifier_phantoms=phantoms if "identifier" in tasks else 1,
                                held_out=1, max_t1_lean=max_t1_lean,
                                thick_slice_share=thick_slice_share,
                                sagittal_share=sagittal_share)
    if keep_dense:
        config = dataclasses.replace(config, dense_hu=None)
    caches, _ = prepare_data(work / "data", config)
    out = dict(source)
    for name in members:
        member = source[name]
        cfg = TrainConfig.from_dict(member["train_config"])
        cfg = dataclasses.replace(cfg, iterations=iterations, lr=lr, lr_step=10**9,
                                  checkpoint_every=10**9, seed=cfg.seed + seed_shift)
        path = work / "nets" / f"{name}.pt"
        if not path.exists():
            model = _model_from_state(member, f"{bundle} [{name}]")
            save_checkpoint(path, model, cfg, 0, optimizer=make_optimizer(model, cfg, "cpu"))
        start = time.perf_counter()
        train(cfg, caches[cfg.task], path, resume=True, progress=False)
        tuned = torch.load(path, weights_only=False, map_location="cpu")
        out[name] = {**member, "state_dict": tuned["state_dict"],
                     "train_config": tuned["train_config"], "iteration": tuned["iteration"]}
        print(f"{name}: {iterations} steps in {time.perf_counter() - start:.0f} s", flush=True)
    target = work / "networks.pt"
    torch.save(out, target)
    return target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("work", type=Path)
    p.add_argument("--phantoms", type=int, default=64)
    p.add_argument("--members", default="localizer,localizer_2,localizer_3")
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-t1-lean", type=float, default=30.0,
                   help="the phantoms' largest forward lean at T1, degrees")
    p.add_argument("--keep-dense", action="store_true",
                   help="train on views that keep the voxels denser than bone")
    p.add_argument("--seed-shift", type=int, default=0,
                   help="added to each member's training seed (a replicate's batches)")
    p.add_argument("--thick-slice-share", type=float, default=None,
                   help="share of the clinical phantoms in 3-5 mm slices (default: the "
                   "generator's)")
    p.add_argument("--sagittal-share", type=float, default=0.0,
                   help="share of the clinical phantoms stored as sagittal reformats")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    path = finetune(args.bundle, args.work, [m.strip() for m in args.members.split(",")],
                    phantoms=args.phantoms, iterations=args.iterations, lr=args.lr,
                    max_t1_lean=args.max_t1_lean, keep_dense=args.keep_dense,
                    seed_shift=args.seed_shift, thick_slice_share=args.thick_slice_share,
                    sagittal_share=args.sagittal_share)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
