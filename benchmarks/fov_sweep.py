"""How the labels of a real CT change with the reconstruction's field of view.

Run::

    uv run --group bench python benchmarks/fov_sweep.py [--model M] [--fovs 350,300,250,200,150]

The chest CT of ``real_ct.py`` is cut, CT and mask alike, to square fields of view of each
side (mm) centred on its whole vertebrae (``real_ct.cut_bounds``: what a spine protocol's
reconstruction keeps of the same patient) and labelled with the networks ``M`` (default:
the packaged ones). One line per field of view: the voxels kept, identified of the whole
vertebrae (VerSe's rule), the localization error, and each prediction as ``label@nearest``
(its label at the whole vertebra nearest to it). The field of view at which the labels
first go wrong shows how much of the trunk around the spine the networks count from.
Writes ``benchmarks/results/fov-sweep-NAME.json`` (NAME: ``--name``, else as
``real_ct.py`` names its results).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None,
                   help="networks bundle or networks file (default: the packaged networks)")
    p.add_argument("--fovs", default="350,300,250,200,150",
                   help="comma-separated field-of-view sides, mm")
    p.add_argument("--name", default=None, help="results name")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        fovs = [float(f) for f in args.fovs.split(",") if f.strip()]
    except ValueError:
        fovs = []
    if not fovs or min(fovs) <= 0:
        print(f"error: --fovs takes positive sides in mm, got {args.fovs!r}", file=sys.stderr)
        return 2
    import real_ct as rc

    try:
        rc.case_files("chest")
    except rc.MissingPackage as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import warnings

    import torch
    from _common import RESULTS, commit, utc_now, write_json

    from vertebra.labelling import label_file, pipeline_config
    from vertebra.pipeline import load_networks
    from vertebra.weights import default_path

    torch.set_num_threads(args.threads)
    model = args.model or default_path()
    nets = load_networks(model, device="cpu")
    config = pipeline_config(nets)
    rows = []
    for fov in fovs:
        case = rc.load_case("chest", cut={"fov_mm": fov})
        truth = rc.truth_from_mask(case.mask)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the uncertain flag shows in the row
            result, _ = label_file(case.ct, nets, config, backend="cpu")
        scores = rc.score_case(result, truth)
        pairs = " ".join(f"{p['name']}@{p['nearest_gt']}" for p in scores["predictions"])
        print(f"{fov:5.0f} mm  voxels {case.ct.shape_xyz}  {scores['identified']}/"
              f"{scores['n_gt']} identified  l_error {scores['l_error']:.1f} mm"
              f"{'  uncertain' if result.uncertain else ''}  {pairs}", flush=True)
        rows.append({"fov_mm": fov, "shape_xyz": list(case.ct.shape_xyz),
                     "n_gt": scores["n_gt"], "identified": scores["identified"],
                     "l_error": scores["l_error"], "uncertain": result.uncertain,
                     "median_confidence": round(result.median_confidence, 4),
                     "predictions": scores["predictions"]})
    name = args.name or rc.default_name(Path(model))
    out = write_json(RESULTS / f"fov-sweep-{name}.json",
                     {"benchmark": "fov_sweep", "name": name, "model": str(model),
                      "commit": commit(), "date": utc_now(), "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
