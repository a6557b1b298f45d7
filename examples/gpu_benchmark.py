"""Time drrkit's CUDA projector on a synthetic CT (exits cleanly without a GPU).

Builds one benchmark scene (a torso-like CT of ``--volume``^3 voxels of 1 mm, K views of
``--size``^2 pixels) and times a batched render of all K views per CUDA configuration
(sampling: global memory or texture; storage: float32 or float16) with the method of
``drrkit bench`` (:mod:`drrkit.bench`: warm-up, CUDA events, median and spread). With
``--cpu`` the CPU reference renders the same scene once for comparison.

    $ python examples/gpu_benchmark.py
    $ python examples/gpu_benchmark.py --volume 512 --views 10 --size 1024 --cpu
"""

from __future__ import annotations

import argparse
import sys

from drrkit import bench, cuda_available


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=int, default=256, help="CT voxels per side (1 mm)")
    parser.add_argument("--views", type=int, default=16, help="views K per batched render")
    parser.add_argument("--size", type=int, default=512, help="detector pixels per side")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed renders per configuration")
    parser.add_argument("--cpu", action="store_true", help="also time the CPU reference")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if min(args.volume, args.views, args.size, args.repeats) < 1:
        print("error: --volume, --views, --size and --repeats must be positive", file=sys.stderr)
        return 2
    if not cuda_available():
        print("no CUDA GPU with CuPy found: nothing to time here (drrkit bench --backend cpu "
              "times the CPU reference)")
        return 0
    n = args.volume
    scene = bench.Scene(f"ct{n}-{args.size}", (n, n, n), (1.0, 1.0, 1.0), views=args.views,
                        size=(args.size, args.size),
                        pixel_spacing=1.6 * n * 2.0 / args.size)  # covers the CT, magnified 2x
    floor = bench.texture_floor(bench.scene_volume(scene), scene.size)
    rows = [bench.run_scene(scene, "cuda", sampling, storage, repeats=args.repeats, floor=floor)
            for sampling, storage in bench.CUDA_CONFIGS]
    if args.cpu:
        rows.append(bench.run_scene(scene, "cpu", repeats=1, warmup=1))
    print(f"{bench.device_name('cuda')}: {scene.name}, {scene.views} views, "
          f"{rows[0]['samples'] / 1e9:.2f} G samples per render")
    print(bench.format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
