"""Does a CT's slice thickness move the labeller's centroids? Phantoms re-sliced thicker.

Run::

    uv run --group bench python benchmarks/slice_thickness.py RUN_DIR [--count 8]
        [--thickness 2.5,4] [--model M]

Each of the first ``--count`` held-out phantoms of a ``vertebra demo`` folder
(``RUN_DIR/data/held_out``) is labelled as it is and re-sliced into slabs ``--thickness``
mm thick (:func:`reslice`: the mean of the CT over each slab, as a scanner's thick
reconstruction integrates it, sampled at the slab centres); phantoms whose slices are
already thicker than a slab are left out. Printed per thickness: the
identified vertebrae's mean error and their mean offset from the truth in world LPS mm.
A labeller that thick slices bias shows an offset along z that grows with the thickness.
Writes ``benchmarks/results/slice-thickness-NAME.json`` (NAME: ``RUN_DIR``'s name).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def reslice(volume, thickness: float):
    """``volume`` averaged over slabs ``thickness`` mm thick along its slice axis.

    Args:
        volume: drrkit.Volume, data (Z, Y, X), spacing (3,) mm along the (x, y, z) index
            axes; the slice axis is ``volume.slice_axis``.
        thickness: slab thickness (mm), at least the volume's slice spacing.

    Returns:
        drrkit.Volume of floor(n * spacing / thickness) slabs along the slice axis, each
        the exact mean of the piecewise-constant slices over its extent, placed at the
        slab centres.
    """
    import drrkit

    a = volume.slice_axis
    dz = float(volume.spacing[a])
    if thickness < dz:
        raise ValueError(f"thickness {thickness} mm is below the slice spacing {dz} mm")
    data = np.moveaxis(volume.data, 2 - a, 0)  # data axes are the index axes reversed
    nz = data.shape[0]
    flat = data.reshape(nz, -1).astype(np.float64)
    integral = np.concatenate([np.zeros((1, flat.shape[1])), np.cumsum(flat, 0)]) * dz
    edges = (np.arange(nz + 1) - 0.5) * dz  # slice boundaries, mm along the axis

    def at(z):  # the integral of the slices from edges[0] to z, per voxel column
        k = np.clip(np.searchsorted(edges, z) - 1, 0, nz - 1)
        f = (z - edges[k]) / dz
        return integral[k] + (integral[k + 1] - integral[k]) * f[:, None]

    n = int(nz * dz // thickness)
    centres = (np.arange(n) + 0.5) * thickness - 0.5 * dz
    slabs = (at(centres + thickness / 2) - at(centres - thickness / 2)) / thickness
    slabs = np.moveaxis(slabs.reshape((n,) + data.shape[1:]), 0, 2 - a)
    origin = volume.origin + np.asarray(volume.direction)[:, a] * centres[0]
    spacing = np.array(volume.spacing, dtype=np.float64)
    spacing[a] = thickness
    return drrkit.Volume(np.ascontiguousarray(slabs, dtype=np.float32), spacing, origin,
                         volume.direction)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a vertebra demo folder")
    p.add_argument("--model", type=Path, default=None,
                   help="networks (default: RUN/models/networks.pt)")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--thickness", default="2.5,4", help="slab thicknesses (mm), comma-separated")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from _common import RESULTS, commit, write_json
    from real_ct import truth_from_mask

    import drrkit
    from vertebra.labelling import label_file
    from vertebra.pipeline import load_networks

    model = args.model or args.run / "models" / "networks.pt"
    nets = load_networks(model, device="cpu")
    held = args.run / "data" / "held_out"
    cases = sorted(p.name for p in (held / "rawdata").iterdir())[:args.count]
    kinds = {"as stored": None} | {f"{t} mm": float(t) for t in args.thickness.split(",")}
    offsets: dict[str, list] = {k: [] for k in kinds}
    used = []
    for case in cases:
        ct = drrkit.load_volume(held / "rawdata" / case / f"{case}_ct.nii.gz")
        if any(t and t < ct.spacing[ct.slice_axis] for t in kinds.values()):
            print(f"{case}: slices thicker than some slabs, left out", flush=True)
            continue
        used.append(case)
        mask = drrkit.load_volume(held / "derivatives" / case / f"{case}_seg-vert_msk.nii.gz",
                                  units="mu")
        truth = truth_from_mask(mask).centroids
        for kind, t in kinds.items():
            result, _ = label_file(ct if t is None else reslice(ct, t), nets, pictures=False)
            for v in result.vertebrae:
                if v.verse_id in truth and np.linalg.norm(v.world - truth[v.verse_id]) <= 20:
                    offsets[kind].append(v.world - truth[v.verse_id])
        print(f"{case} done", flush=True)
    rows = {}
    for kind, values in offsets.items():
        e = np.array(values).reshape(-1, 3)
        rows[kind] = {"identified": len(e),
                      "error_mm": float(np.linalg.norm(e, axis=1).mean()) if len(e) else None,
                      "mean_offset_lps_mm": [round(float(x), 2) for x in e.mean(0)]
                      if len(e) else None}
        r = rows[kind]
        print(f"{kind:>10}: {r['identified']} identified, error {r['error_mm']:.2f} mm, "
              f"mean offset LPS {r['mean_offset_lps_mm']}")
    out = RESULTS / f"slice-thickness-{args.run.name}.json"
    write_json(out, {"benchmark": "slice_thickness", "model": str(model), "cases": used,
                     "commit": commit(), "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
