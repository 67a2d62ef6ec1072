"""The eval transform written down as data, so trainer-predict can redo it from manifest.json alone.

Export records the resize / center-crop / normalize steps it finds in the eval transform; `apply_preprocess`
replays them with torchvision's functional ops. Export then checks the replay against the real transform on a
val image and warns in the manifest when they differ (a custom transform this description cannot capture).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F


def describe_preprocess(
    preprocess: Callable[[Image.Image], torch.Tensor],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> dict[str, Any]:
    """Resize size (int: shorter side, [h, w]: exact), interpolation, crop and normalization of `preprocess`.

    Without a torchvision Resize / CenterCrop in it, the shorter side is scaled to `image_size` and the centre
    cropped, which is also what Vision's `.centerCrop` does in the app.
    """
    steps = list(getattr(preprocess, "transforms", []))
    resize = next((t for t in steps if isinstance(t, T.Resize)), None)
    crop = next((t for t in steps if isinstance(t, T.CenterCrop)), None)
    size = resize.size if resize is not None else image_size
    return {
        "resize": size if isinstance(size, int) else [int(s) for s in size],
        "interpolation": resize.interpolation.value if resize is not None else "bilinear",
        "crop": [int(s) for s in crop.size] if crop is not None else [image_size, image_size],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


def apply_preprocess(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """(3, H, W) float32 array for an RGB image, following a `describe_preprocess` description."""
    img = F.resize(img, spec["resize"], interpolation=T.InterpolationMode(spec["interpolation"]))
    img = F.center_crop(img, spec["crop"])
    return F.normalize(F.to_tensor(img), spec["mean"], spec["std"]).numpy()
