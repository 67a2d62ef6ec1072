"""Train and eval transforms from timm, fed by the backbone's own preprocessing config."""

from __future__ import annotations

from typing import Any

from timm.data import create_transform
from torchvision import transforms as T


def eval_transform(image_size: int, data_config: dict[str, Any]) -> T.Compose:
    """Resize to image_size / crop_pct, center crop, normalize with the backbone's mean/std."""
    return create_transform(
        input_size=image_size,
        is_training=False,
        interpolation=data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
        crop_pct=data_config["crop_pct"],
    )


def train_transform(image_size: int, data_config: dict[str, Any], augment: Any) -> T.Compose:
    """RandomResizedCrop + flip, plus the `augment` policy (RandAugment, AutoAugment, TrivialAugment...)."""
    policy = augment.get("auto_augment")
    trivial = policy == "trivialaugment"
    primary, secondary, final = create_transform(
        input_size=image_size,
        is_training=True,
        scale=tuple(augment.scale),
        ratio=tuple(augment.ratio),
        hflip=augment.hflip,
        color_jitter=augment.get("color_jitter") or None,
        auto_augment=None if trivial else policy,
        interpolation=augment.get("interpolation") or data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
        re_prob=augment.get("random_erasing", 0.0),
        separate=True,
    )
    extra = [T.TrivialAugmentWide()] if trivial else []
    return T.Compose([*primary.transforms, *secondary.transforms, *extra, *final.transforms])
