"""The Core ML weight variants of `export.coreml.quantize` and what each compresses: read by the settings
check, the converter and the size gate, so it imports nothing (not even coremltools)."""

from __future__ import annotations

import re

PALETTE_BITS = (1, 2, 3, 4, 6, 8)
WEIGHT_THRESHOLD = 2048  # coremltools.optimize's default weight_threshold: smaller weights stay in fp16
_PALETTIZE = re.compile(r"palettize(\d+)")


def palette_bits(variant: str) -> int | None:
    """N for a `palettizeN` variant name, None for any other name."""
    match = _PALETTIZE.fullmatch(variant)
    return int(match.group(1)) if match else None


def compressed_bits(variant: str) -> int | None:
    """Bits per compressed weight of a variant (None: not a weight-compression variant)."""
    return 8 if variant in ("int8", "w8a8") else palette_bits(variant)
