"""Label the vertebrae of a CT and look at the result.

Labels one CT with the default networks (or ``--model``) through ``vertebra.label``,
prints each vertebra (level, centroid in LPS mm, confidence), and writes every output of
``vertebra label`` into ``--out``: the VerSe centroid JSON, a CSV, a label map on the CT's
grid, 3D Slicer markups, and the pictures (views with the labelled centroids, sagittal and
coronal reformats through the spine, :mod:`vertebra.report`).

    $ python examples/label_ct.py ct.nii.gz --out labels/
    $ python examples/label_ct.py ct.nii.gz --model vertebra-demo/models/networks.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct", type=Path, help="CT file (NIfTI, MHA, NRRD) or DICOM folder")
    parser.add_argument("--model", type=Path, default=None,
                        help="networks file or bundle (default: the packaged networks)")
    parser.add_argument("--out", type=Path, default=Path("labels"), help="output folder")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda")
    parser.add_argument("--backend", default="auto", help="DRR backend: auto, cpu, cuda")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import vertebra
    from drrkit.errors import DrrkitError
    from vertebra.report import case_stem

    try:
        result = vertebra.label(args.ct, args.out, model=args.model, device=args.device,
                                backend=args.backend)
    except (DrrkitError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(result.vertebrae)} vertebrae ({result.status}) in {result.total_seconds:.1f} s")
    for v in result.vertebrae:
        x, y, z = v.world
        print(f"  {v.name:>4}  ({x:7.1f}, {y:7.1f}, {z:7.1f}) mm  confidence {v.confidence:.2f}")
    stem = case_stem(args.ct)
    pictures = ", ".join(sorted(p.name for p in args.out.glob(f"{stem}_*.png")))
    print(f"outputs in {args.out}; pictures: {pictures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
