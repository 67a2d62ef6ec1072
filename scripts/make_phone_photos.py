"""Make a folder of phone-sized JPEGs (12 MP by default) from a train/val class folder, to time decoding.

  python scripts/make_phone_photos.py ../shared/data/hymenoptera /tmp/photos12mp
  python scripts/benchmark_throughput.py dataset=folder dataset.root=/tmp/photos12mp model=mobilenet_v2 ...

Every image is upscaled (bicubic) to 4000x3000 (or 3000x4000, following its orientation) and saved at JPEG
quality 90, as a phone writes them; the class folders and the train/val split are kept.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from PIL import Image

from trainer.data.images import list_image_files, load_rgb


def phone_size(width: int, height: int, megapixels: float) -> tuple[int, int]:
    """The 4:3 size of `megapixels` in the image's orientation."""
    long_side = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    short_side = round(long_side * 3 / 4)
    return (long_side, short_side) if width >= height else (short_side, long_side)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="ROOT with train/<class>/ and val/<class>/")
    parser.add_argument("target", type=Path)
    parser.add_argument("--megapixels", type=float, default=12.0)
    args = parser.parse_args(argv)
    folders = sorted(p for split in ("train", "val") for p in (args.source / split).glob("*") if p.is_dir())
    if not folders:
        raise SystemExit(f"{args.source} has no train/<class>/ or val/<class>/ folders")
    count = 0
    for folder in folders:
        out = args.target / folder.relative_to(args.source)
        out.mkdir(parents=True, exist_ok=True)
        for path in list_image_files(folder):
            image = load_rgb(path)
            image.resize(phone_size(*image.size, args.megapixels), Image.BICUBIC).save(
                out / f"{path.stem}.jpg", quality=90
            )
            count += 1
    print(f"{count} JPEGs of {args.megapixels:g} MP in {args.target}")


if __name__ == "__main__":
    main(sys.argv[1:])
