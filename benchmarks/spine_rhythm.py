"""Where along the spine the localizer fires on a real CT, and why: two diagnostics.

Run::

    uv run --group bench python benchmarks/spine_rhythm.py [--model M] [--seeds 3,11]

1. **Heatmaps against the projected truth.** The chest CT of ``real_ct.py`` is labelled
   with the networks ``M`` (default: the packaged ones); each whole vertebra's ground-truth
   centroid is projected into every localizer view, and the heatmap's maximum within
   16 mm of it is found. Printed per vertebra: the median over the views of that maximum's
   offset along the projected spine (mm at the isocentre, + = superior) and of its
   height. A localizer that marks the junctions between vertebrae instead of the
   vertebrae shows offsets near half a vertebra (10-13 mm) and low heights. Beside them,
   the mean over the views of the heatmap at each projected centroid and at the point
   midway to the next vertebra: where the two are alike, the heatmaps are a ridge along
   the spine with no vertebra to pick out. The picture
   (``--out``, default ``runs/spine_rhythm/heatmaps.png``) shows six views of the lower
   spine with the heatmap and the projected truth.
2. **CT numbers along the spine.** Per axial slice, the mean CT number in a 10 x 10 mm
   square at the centre of the vertebral body (the anterior 35 % of the slice's vertebra
   mask), for the chest CT and for clinical phantoms of ``--seeds`` covering T1-L2.
   Printed per scan: the median CT number of the body's core (slices more than 3 mm from
   a change of label, below their 75th percentile) and the medians over the junctions
   (slices within 3 mm of a change of label) of their darkest and brightest slice. In
   real scans the junction (two endplates and a thin disc) is the densest part of the
   column; a dark disc between thin shells shows as a junction minimum below the core.
3. **The mean heatmap along the spine.** The mean over the views of the heatmap
   (:func:`drrkit.refinement.response`) along the polyline through the chest's
   ground-truth centroids, with the truth and the labelled points of the networks'
   settings with and without the chain placement (:mod:`vertebra.chain`) marked where
   they lie along it (``--profile-out``, default ``runs/spine_rhythm/profile.png``). A
   plateau over two vertebrae (a bright disc) shows as a flat stretch with one point in it.

All three use only the files the ``bench`` group's wheels ship; nothing is written under
``benchmarks/results``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Search radius (mm at the isocentre) around a projected centroid.
SEARCH_MM = 16.0

#: Views of the picture (indices of the 20 localizer views).
PICTURE_VIEWS = (0, 3, 5, 10, 13, 15)


def heatmap_offsets(result, truth: dict[int, np.ndarray], pixel_mm: float):
    """The heatmap maxima near each projected truth.

    Returns:
        (ids (N,) VerSe ids, projected truth (K, N, 2) pixels (col, row), offsets (N, K) mm
        at the isocentre along the projected spine (+ superior), heights (N, K)); NaN
        where the truth projects off the detector.
    """
    import drrkit

    ids = list(truth)
    points = np.array([truth[i] for i in ids])
    at = drrkit.project_points(points, result.geometry).pixels  # (K, N, 2) col, row
    up = drrkit.project_points(points + [0.0, 0.0, 10.0], result.geometry).pixels
    n_views, height, width = result.heatmaps.shape
    rows, cols = np.mgrid[0:height, 0:width]
    offsets = np.full((len(ids), n_views), np.nan)
    heights = np.full((len(ids), n_views), np.nan)
    for k in range(n_views):
        heat = result.heatmaps[k]
        for n in range(len(ids)):
            c, r = at[k, n]
            near = (rows - r) ** 2 + (cols - c) ** 2 <= (SEARCH_MM / pixel_mm) ** 2
            if not near.any():
                continue
            best = np.argmax(np.where(near, heat, -np.inf))
            r0, c0 = divmod(int(best), width)
            spine = up[k, n] - at[k, n]
            spine /= np.linalg.norm(spine)
            offsets[n, k] = np.dot([c0 - c, r0 - r], spine) * pixel_mm
            heights[n, k] = heat[r0, c0]
    return ids, at, offsets, heights


def mean_heat(result, points: np.ndarray) -> np.ndarray:
    """(N,) mean over the views of the heatmap at the pixel each point projects to (views
    where it falls off the detector left out)."""
    import drrkit

    at = np.rint(drrkit.project_points(points, result.geometry).pixels).astype(int)
    n_views, height, width = result.heatmaps.shape
    col, row = at[..., 0], at[..., 1]  # (K, N)
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    views = np.arange(n_views)[:, None]
    values = result.heatmaps[views, np.clip(row, 0, height - 1), np.clip(col, 0, width - 1)]
    count = inside.sum(axis=0)
    total = np.where(inside, values, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def picture(result, ids, at, out: Path, names: dict[int, str]) -> None:
    """Six views of the lower spine: heatmap, input contours and the projected truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lower = slice(len(ids) // 2, len(ids))
    fig, axes = plt.subplots(1, len(PICTURE_VIEWS), figsize=(3.2 * len(PICTURE_VIEWS), 6))
    for ax, k in zip(axes, PICTURE_VIEWS):
        p = at[k][lower]
        image = result.inputs[k]
        c0, c1 = p[:, 0].min() - 20, p[:, 0].max() + 20
        r0, r1 = p[:, 1].min() - 10, p[:, 1].max() + 10
        window = image[max(int(r0), 0):int(r1), max(int(c0), 0):int(c1)]
        ax.imshow(result.heatmaps[k], cmap="magma", vmin=0, vmax=1)
        ax.contour(image, levels=np.percentile(window, [60, 85, 95]),
                   colors=["#335", "#66a", "#aaf"], linewidths=0.6)
        ax.plot(p[:, 0], p[:, 1], "c+", ms=12, mew=2)
        for v, (x, y) in zip(ids[lower], p):
            ax.text(x + 3, y, names[v], color="c", fontsize=8)
        ax.set_xlim(c0, c1)
        ax.set_ylim(r1, r0)
        ax.set_title(f"view {k}")
        ax.axis("off")
    fig.suptitle("localizer heatmap (colour), input (contours), projected truth (+)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=70)
    plt.close(fig)


def profile_picture(results: dict, truth: dict[int, np.ndarray], names: dict[int, str],
                    out: Path) -> None:
    """The mean heatmap along the truth's polyline (1 mm steps, 15 mm past each end) with
    the truth and each labelling's points at their nearest place along it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from drrkit.refinement import response
    from vertebra.chain import along_curve, arc_lengths

    ids = sorted(truth, key=lambda v: -truth[v][2])  # superior first
    points = np.array([truth[v] for v in ids])
    s = arc_lengths(points)
    arc = np.arange(-15.0, s[-1] + 15.0, 1.0)
    curve = along_curve(points, arc)
    first = next(iter(results.values()))
    fig, ax = plt.subplots(figsize=(12, 3.6))
    ax.plot(arc, response(curve, first.heatmaps, first.geometry), color="k", lw=1)
    for x, v in zip(s, ids):
        ax.axvline(x, color="0.8", lw=0.8)
        ax.text(x, 1.0, names[v], ha="center", va="bottom", fontsize=8,
                transform=ax.get_xaxis_transform())
    for row, (label, result) in enumerate(results.items()):
        near = [arc[np.argmin(np.linalg.norm(curve - v.world, axis=1))] for v in result.vertebrae]
        ax.plot(near, np.full(len(near), -0.03 - 0.04 * row), "v", ms=7,
                label=f"{label}: {len(near)} labelled points")
    ax.set_xlabel("mm along the spine through the ground-truth centroids (superior first)")
    ax.set_ylabel("mean heatmap over the views")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def body_profile(hu: np.ndarray, labels: np.ndarray, spacing_zyx) -> tuple[np.ndarray, ...]:
    """Per axial slice of a (Z, Y, X) scan with y posterior: body-centre CT number and label.

    Returns (z mm, mean HU in a 10 x 10 mm square at the body's centre, the slice's most
    common vertebra label), for the slices holding at least 20 vertebra voxels.
    """
    z, mean, label = [], [], []
    hy = max(1, round(5.0 / spacing_zyx[1]))
    hx = max(1, round(5.0 / spacing_zyx[2]))
    for k in range(hu.shape[0]):
        ys, xs = np.nonzero(labels[k] > 0)
        if len(ys) < 20:
            continue
        front = ys <= ys.min() + 0.35 * (ys.max() - ys.min())  # the body
        yc, xc = int(ys[front].mean()), int(xs[front].mean())
        z.append(k * spacing_zyx[0])
        mean.append(float(hu[k, max(yc - hy, 0):yc + hy + 1, max(xc - hx, 0):xc + hx + 1].mean()))
        label.append(int(np.bincount(labels[k][ys, xs].astype(int)).argmax()))
    return np.array(z), np.array(mean), np.array(label)


def junction_summary(z, mean, label) -> dict[str, float]:
    """Medians over a scan's junctions of their darkest and brightest slice, and the core.

    A junction is the slices within 3 mm of a change of label; the core is the other
    slices below their 75th percentile. A dark disc between two thin shells gives a
    junction minimum far below the core; a thin disc between sclerotic endplates, blurred
    by the slice profile, does not.
    """
    change = np.nonzero(np.diff(label) != 0)[0]
    edges = 0.5 * (z[change] + z[change + 1])
    near = [m for m in (np.abs(z - e) <= 3.0 for e in edges) if m.any()]
    if not near:
        raise ValueError("no slice lies within 3 mm of a change of vertebra label")
    inside = np.any(near, axis=0)
    core = mean[~inside]
    core = core[core < np.percentile(core, 75)]
    return {"core_hu": float(np.median(core)),
            "junction_min_hu": float(np.median([mean[m].min() for m in near])),
            "junction_max_hu": float(np.median([mean[m].max() for m in near]))}


def chest_scan():
    """The chest CT and its VerSe-id mask as (Z, Y, X) arrays, z superior, y posterior."""
    import nibabel as nib
    import real_ct

    files = real_ct.case_files("chest")
    ct = nib.as_closest_canonical(nib.load(str(files.ct)))  # RAS: x right, y anterior
    mask = nib.as_closest_canonical(nib.load(str(files.mask)))
    hu = np.asarray(ct.dataobj, dtype=np.float32).transpose(2, 1, 0)[:, ::-1]
    ids = np.asarray(mask.dataobj).astype(int).transpose(2, 1, 0)[:, ::-1]
    table = np.zeros(ids.max() + 1, dtype=int)
    for source, verse in real_ct.totalsegmentator_to_verse(files.id_table).items():
        table[source] = verse
    return hu, table[ids], tuple(float(s) for s in ct.header.get_zooms()[::-1])


def phantom_scan(seed: int):
    """A clinical phantom covering T1-L2 as (Z, Y, X) arrays, z superior, y posterior."""
    from vertebra.data.phantom import make_spine_phantom

    ph = make_spine_phantom(seed, clinical=True, orientation="canonical", levels=("T1", "L2"))
    return ph.ct.data, ph.labels.data, tuple(float(s) for s in ph.ct.spacing[::-1])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="networks bundle (default: the packaged ones)")
    p.add_argument("--seeds", default="3,11", help="clinical phantom seeds (comma-separated)")
    p.add_argument("--out", type=Path, default=Path("runs/spine_rhythm/heatmaps.png"))
    p.add_argument("--profile-out", type=Path, default=Path("runs/spine_rhythm/profile.png"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import real_ct

    from vertebra import labels as vlabels
    from vertebra.labelling import label_file
    from vertebra.pipeline import load_networks

    nets = load_networks(args.model, device="cpu")
    files = real_ct.case_files("chest")
    truth = real_ct.load_truth(files).centroids
    result, _ = label_file(files.ct, nets)
    names = {v: vlabels.name_of(v) for v in truth}
    ids, at, offsets, heights = heatmap_offsets(result, truth, nets.views.mm_per_pixel)
    points = np.array([truth[v] for v in ids])
    at_centroid = mean_heat(result, points)
    midway = mean_heat(result, 0.5 * (points[:-1] + points[1:]))
    print("chest CT: heatmap maximum within 16 mm of each projected centroid, median over "
          f"{offsets.shape[1]} views; mean heatmap over the views at the centroid and midway "
          "to the next vertebra")
    print(f"{'vertebra':>8} {'offset mm (+ superior)':>24} {'|offset| mm':>12} {'height':>7} "
          f"{'at centroid':>12} {'midway below':>13}")
    for n, v in enumerate(ids):
        below = f"{midway[n]:>13.2f}" if n < len(midway) else f"{'-':>13}"
        print(f"{names[v]:>8} {np.nanmedian(offsets[n]):>24.1f} "
              f"{np.nanmedian(np.abs(offsets[n])):>12.1f} {np.nanmedian(heights[n]):>7.2f} "
              f"{at_centroid[n]:>12.2f} {below}")
    picture(result, ids, at, args.out, names)
    print(f"picture: {args.out}")
    from vertebra.labelling import pipeline_config

    unchained, _ = label_file(files.ct, nets, pipeline_config(nets, chain_weight=None))
    profile_picture({"shipped settings": result, "without the chain placement": unchained},
                    truth, names, args.profile_out)
    print(f"mean heatmap along the spine: {args.profile_out}")

    print("\nCT numbers at the vertebral body's centre, per axial slice (median HU)")
    print(f"{'scan':>19} {'core':>6} {'junction min':>13} {'junction max':>13}")
    scans = [("chest CT", chest_scan)] + [
        (f"clinical phantom {s}", lambda s=s: phantom_scan(s))
        for s in (int(x) for x in args.seeds.split(","))]
    for name, load in scans:
        summary = junction_summary(*body_profile(*load()))
        print(f"{name:>19} {summary['core_hu']:>6.0f} {summary['junction_min_hu']:>13.0f} "
              f"{summary['junction_max_hu']:>13.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
