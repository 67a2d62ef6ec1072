"""Read any image a real photo folder holds as an upright RGB PIL image.

Phones write EXIF-rotated JPEGs (iPhones HEIC, read when pillow-heif is installed), scrapers leave GIFs and
CMYK files, scanners write 16-bit TIFFs: every one of them must reach the model as the same thing, 8-bit RGB
the right way up.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HEIF_EXTENSIONS = frozenset(
    {".heic", ".heif"}
)  # what iPhones save; read through pillow-heif (the heic extra)
IMAGE_EXTENSIONS = (
    frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}) | HEIF_EXTENSIONS
)
HEIF_MISSING = (
    "a HEIC/HEIF photo, skipped: reading it needs pillow-heif. Install it with pip install 'trainer[heic]' "
    "(or pip install pillow-heif), or convert the photos to JPEG"
)


def is_image_file(path: str | os.PathLike) -> bool:
    """True for files whose extension names an image format we read (hidden files excluded)."""
    name = os.path.basename(path)
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_heif(path: str | os.PathLike) -> bool:
    return os.path.splitext(path)[1].lower() in HEIF_EXTENSIONS


@functools.cache
def heif_reader() -> bool:
    """Register pillow-heif's opener with PIL (once per process); False when it is not installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white, high bit depths rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Open `path` as an upright RGB image.

    `min_side` lets JPEG decoding skip resolution we would throw away (DCT-domain downscaling keeps the
    shorter side at least `min_side`), which makes 12-megapixel phone photos cheap to train on at 224 px.
    Multi-frame files (GIF, TIFF) give their first frame.
    """
    if is_heif(path) and not heif_reader():
        raise OSError(HEIF_MISSING)
    with Image.open(path) as img:
        if min_side and img.format == "JPEG":
            scale = min_side / min(img.size)
            if scale < 1:
                img.draft("RGB", (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))))
        img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


_FILE_KINDS = {
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
    stat.S_ISDIR: "a folder",
}


def not_regular_reason(path: str | os.PathLike) -> str | None:
    """Why `path` (links followed) is not a regular file, or None when it is one.

    Opening a FIFO or a device named like an image can block forever, so these are refused unopened.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS.items() if test(mode)), "not a regular file")
    return f"not a regular file ({kind}): skipped without opening it"


def decode_checked(path: str | os.PathLike, min_side: int = 32) -> tuple[Image.Image | None, str | None]:
    """(image, None) if `path` decodes, else (None, a short human-readable reason)."""
    reason = not_regular_reason(path)
    if reason:
        return None, reason
    if is_heif(path) and not heif_reader():
        return None, HEIF_MISSING
    try:
        img = load_rgb(path, min_side=min_side)
    except FileNotFoundError:
        return None, "file not found"
    except Image.DecompressionBombError as exc:
        return None, f"too large to decode safely ({exc})"
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        return None, f"cannot decode: {exc}" if str(exc) else f"cannot decode ({type(exc).__name__})"
    if min(img.size) < 1:
        return None, "image has zero size"
    return img, None


def check_image(path: str | os.PathLike) -> str | None:
    """Return None if `path` decodes as an image, else a short human-readable reason."""
    return decode_checked(path)[1]


def list_image_files(folder: Path) -> list[Path]:
    """Image files directly inside `folder` (sorted, non-images such as .DS_Store and Thumbs.db ignored)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
