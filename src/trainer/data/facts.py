"""What the pre-training scan learns about one file in its single decode.

Readable or why not, the stored size, whether it is grayscale, and fingerprints for the dataset audit: the
SHA-256 of the bytes (exact copies), a difference hash of the picture and its coarse colour layout (resized or
re-encoded copies).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from trainer.data.images import decode_checked
from trainer.utils.files import sha256_file

GRAY_TOLERANCE = 6  # JPEG chroma noise on a gray photo stays within a few levels between channels


def dhash(img: Image.Image) -> str:
    """64-bit difference hash (brighter-than-right-neighbour bits of a 9x8 grayscale thumbnail), as hex."""
    small = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def colour_layout(img: Image.Image) -> list[int]:
    """Mean RGB of each quarter (12 values): near copies keep it, look-alike textures do not."""
    return np.asarray(img.resize((2, 2), Image.Resampling.BOX), dtype=np.uint8).flatten().tolist()


def is_gray(img: Image.Image) -> bool:
    """True when the (RGB) picture carries no colour: its channels agree within GRAY_TOLERANCE everywhere."""
    arr = np.asarray(img.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.int16)
    return int(np.abs(arr - arr[..., :1]).max()) <= GRAY_TOLERANCE


def inspect_file(path: str) -> dict[str, Any]:
    """{"error": reason} for a file we cannot use, else its stored size, grayscale flag, sha256 and dhash."""
    img, reason = decode_checked(path)
    if img is None:
        return {"error": reason}
    try:
        with Image.open(path) as header:  # the stored size (decoding may have drafted a smaller one)
            size = list(header.size)
        sha = sha256_file(path)
    except OSError as exc:  # changed or vanished since the decode
        return {"error": f"cannot read: {exc}"}
    return {
        "error": None,
        "size": size,
        "gray": is_gray(img),
        "dhash": dhash(img),
        "colours": colour_layout(img),
        "sha256": sha,
    }
