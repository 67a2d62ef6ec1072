"""The embedded demo dataset: six visually distinct texture classes drawn deterministically, cached on disk.

It lets `python train.py` run end to end on a machine with no network and no photos: generated once into
`<dataset.root>/demo/{train,val}/<class>/`, then reused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw, ImageFilter

from trainer.data.index import DatasetIndex
from trainer.data.sources.folder import index_folder
from trainer.utils.files import atomic_output

DEMO_CLASSES = ("checkerboard", "dots", "horizontal_stripes", "plain", "rings", "vertical_stripes")
_MARKER = ".complete"


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def draw_demo_image(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of class `kind`: a texture that survives random crops and flips, in random colours/scales."""
    fg, bg = _random_colour(rng), _random_colour(rng)
    while sum(abs(a - b) for a, b in zip(fg, bg, strict=True)) < 150:
        fg = _random_colour(rng)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    step = max(3, int(size * rng.uniform(0.08, 0.16)))
    offset = int(rng.integers(0, step))
    if kind == "horizontal_stripes":
        for y in range(offset - step, size, 2 * step):
            draw.rectangle([0, y, size, y + step - 1], fill=fg)
    elif kind == "vertical_stripes":
        for x in range(offset - step, size, 2 * step):
            draw.rectangle([x, 0, x + step - 1, size], fill=fg)
    elif kind == "checkerboard":
        for y in range(-step, size, step):
            for x in range(-step, size, step):
                if ((x + step) // step + (y + step) // step) % 2 == 0:
                    draw.rectangle(
                        [x + offset, y + offset, x + offset + step - 1, y + offset + step - 1], fill=fg
                    )
    elif kind == "dots":
        r = step / 3
        for y in range(offset, size + step, step):
            for x in range(offset, size + step, step):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=fg)
    elif kind == "rings":
        cx, cy = size * rng.uniform(0.2, 0.8, 2)
        for r in range(int(size * 1.5), 0, -step):
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg if (r // step) % 2 else bg)
    elif kind != "plain":
        raise ValueError(f"unknown demo class {kind!r}")
    noise = rng.normal(0, 10, (size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.6)))


def generate_demo(target: Path, train_per_class: int, val_per_class: int, size: int, seed: int = 0) -> Path:
    """Write the demo set to `target` once (atomically, safe with parallel runs) and return it."""
    if (target / _MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _MARKER).exists():
            return target
        with atomic_output(target) as tmp:
            rng = np.random.default_rng(seed)
            for split, count in (("train", train_per_class), ("val", val_per_class)):
                for kind in DEMO_CLASSES:
                    folder = tmp / split / kind
                    folder.mkdir(parents=True)
                    for i in range(count):
                        draw_demo_image(kind, size, rng).save(folder / f"{kind}_{i:04d}.jpg", quality=90)
            (tmp / _MARKER).write_text("ok\n")
    return target


def demo_source(cfg) -> DatasetIndex:
    """dataset=demo: the synthetic texture set, generated under dataset.root the first time."""
    target = Path(cfg.root).expanduser() / f"demo-{cfg.generate_size}px"
    generate_demo(target, cfg.train_per_class, cfg.val_per_class, cfg.generate_size)
    index = index_folder(target)
    index.name = "demo"
    return index
