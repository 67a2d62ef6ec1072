"""Raw RGB pixels (0-255, what apps pass) <-> the normalized inputs the model takes, in one place for every
format and verifier: Core ML and LiteRT take pixels and normalize inside, so their verifiers turn the
preprocessed val images back into pixels, and their converters build the normalization into the graph."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PixelNormalization:
    """normalized = (pixel / 255 - mean) / std per RGB channel, i.e. pixel * scale + shift."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, mean: Sequence[float], std: Sequence[float]) -> PixelNormalization:
        return cls(tuple(map(float, mean)), tuple(map(float, std)))

    @property
    def scale(self) -> np.ndarray:
        """Per channel (float64): what a pixel is multiplied by."""
        return 1.0 / (255.0 * np.asarray(self.std, np.float64))

    @property
    def shift(self) -> np.ndarray:
        """Per channel (float64): what is added after scaling."""
        return -np.asarray(self.mean, np.float64) / np.asarray(self.std, np.float64)

    def pixels(self, inputs: np.ndarray) -> np.ndarray:
        """Normalized (N, 3, S, S) inputs back to float 0-255 pixels, NCHW, not rounded (an fp32 comparison
        must see the image PyTorch saw)."""
        std, mean = np.reshape(self.std, (1, 3, 1, 1)), np.reshape(self.mean, (1, 3, 1, 1))
        return (inputs * std + mean) * 255.0

    def uint8_pixels(self, inputs: np.ndarray) -> np.ndarray:
        """The raw uint8 RGB pixels (NCHW) of normalized inputs: exact for inputs made from 8-bit images by
        ToTensor + Normalize (the round trip lands on the integers)."""
        return np.clip(np.rint(self.pixels(inputs)), 0, 255).astype(np.uint8)
