"""Projection study: render K views of a CT, project 3-D points, triangulate them back.

Renders K digitally reconstructed radiographs on a circular orbit (drrkit), projects N
random points inside the CT into every view, moves each 2-D point by Gaussian noise of
``--noise-px`` pixels (a detector's localisation error), casts the rays back through the
noisy pixels and triangulates each point by least squares. Prints the 3-D error (mm) with
and without the noise, and saves the views with the projected points as a PNG.

    $ python examples/projection_study.py                       # the built-in phantom
    $ python examples/projection_study.py ct.nii.gz --views 12 --noise-px 1.0
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

import drrkit
from drrkit.images import to_uint8
from drrkit.phantoms import default_phantom


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct", nargs="?", type=Path,
                        help="CT file or DICOM folder (default: drrkit's torso phantom)")
    parser.add_argument("--views", type=int, default=8, help="views K on a 360 degree orbit")
    parser.add_argument("--size", type=int, default=256, help="detector pixels per side")
    parser.add_argument("--points", type=int, default=20, help="random 3-D points N")
    parser.add_argument("--noise-px", type=float, default=0.5,
                        help="standard deviation of the 2-D point noise, detector pixels")
    parser.add_argument("--phantom-size", type=int, default=128,
                        help="voxels per side of the built-in phantom")
    parser.add_argument("--backend", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("projection_study.png"),
                        help="PNG of the views with the projected points")
    return parser.parse_args(argv)


def orbit(volume: drrkit.Volume, views: int, size: int) -> drrkit.Geometry:
    """K views about the CT's centre whose detector (magnification 2) covers the CT."""
    corners = volume.corners - volume.center
    extent = 2.0 * max(np.hypot(corners[:, 0], corners[:, 1]).max(), np.abs(corners[:, 2]).max())
    magnification = 1000.0 / 500.0
    return drrkit.circular_orbit(volume, views=views, sad=500.0, sid=1000.0, size=size,
                                 pixel_spacing=1.1 * extent * magnification / size)


def random_points(volume: drrkit.Volume, n: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 3) world mm, uniform in the middle half of the CT's index box."""
    shape = np.asarray(volume.shape_xyz, dtype=np.float64)
    index = rng.uniform(0.25, 0.75, size=(n, 3)) * (shape - 1)
    return volume.voxel_to_world(index)


def triangulation_error(points: np.ndarray, geometry: drrkit.Geometry, noise_px: float,
                        rng: np.random.Generator) -> np.ndarray:
    """(N,) distance in mm between each point and its triangulation from noisy pixels."""
    pixels = drrkit.project_points(points, geometry).pixels  # (K, N, 2)
    pixels = pixels + noise_px * rng.standard_normal(pixels.shape)
    origins, directions = drrkit.pixel_rays(geometry, pixels)  # (K, N, 3)
    found = drrkit.triangulate(origins.transpose(1, 0, 2), directions.transpose(1, 0, 2))
    return np.linalg.norm(found.points - points, axis=-1)


def picture(images: np.ndarray, geometry: drrkit.Geometry, points: np.ndarray, errors_mm,
            columns: int = 4, tile: int = 256):
    """The views in a grid, each with the projected points as red dots (larger for larger
    3-D errors) and its angle; a PIL RGB image."""
    from PIL import Image, ImageDraw

    grey = to_uint8(images)
    k, h, w = grey.shape
    scale = tile / max(h, w)
    tw, th = round(w * scale), round(h * scale)
    rows = math.ceil(k / columns)
    sheet = Image.new("RGB", (columns * tw, rows * th), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    pixels = drrkit.project_points(points, geometry).pixels  # (K, N, 2) (col, row)
    for view in range(k):
        x0, y0 = (view % columns) * tw, (view // columns) * th
        sheet.paste(Image.fromarray(grey[view]).convert("RGB").resize((tw, th)), (x0, y0))
        for (col, row), error in zip(pixels[view], errors_mm):
            x, y = x0 + (col + 0.5) * scale, y0 + (row + 0.5) * scale
            r = 2.0 + min(4.0, float(error))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 40, 40))
        draw.text((x0 + 4, y0 + 4), f"{geometry.angles_deg[view]:.0f} deg", fill=(255, 255, 0))
    return sheet


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.views < 2 or args.points < 1 or args.size < 8 or args.noise_px < 0:
        print("error: need --views >= 2, --points >= 1, --size >= 8, --noise-px >= 0",
              file=sys.stderr)
        return 2
    try:
        volume = (drrkit.load_volume(args.ct) if args.ct is not None
                  else default_phantom(args.phantom_size))
        geometry = orbit(volume, args.views, args.size)
        start = time.perf_counter()
        images = drrkit.render(volume, geometry, backend=args.backend)
        seconds = time.perf_counter() - start
    except drrkit.DrrkitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    points = random_points(volume, args.points, rng)
    exact = triangulation_error(points, geometry, 0.0, rng)
    noisy = triangulation_error(points, geometry, args.noise_px, rng)
    print(f"{args.views} views of {args.size}^2 px rendered in {seconds:.2f} s "
          f"(pixel {geometry.pixel_spacing[0, 0]:.2f} mm on the detector)")
    print(f"{args.points} points, exact pixels: max error {exact.max():.2e} mm")
    print(f"{args.points} points, {args.noise_px:g} px noise: mean error {noisy.mean():.3f} mm, "
          f"max {noisy.max():.3f} mm")
    picture(images, geometry, points, noisy, columns=min(4, args.views)).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
