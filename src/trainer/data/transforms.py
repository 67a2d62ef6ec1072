"""Train and eval transforms from timm, fed by the run's resolved data config."""

from __future__ import annotations

from typing import Any

from timm.data import create_transform
from torchvision import transforms as T

from trainer.data.data_config import DataConfig


def eval_transform(data_config: DataConfig) -> T.Compose:
    """timm's eval transform: resize to floor(size / crop_pct), center crop, normalize.

    Every eval path (val, export, predict) reads images with `load_rgb(path, data_config.decode_min_side)`.
    """
    return create_transform(
        input_size=data_config.size,
        is_training=False,
        interpolation=data_config.interpolation,
        mean=data_config.mean,
        std=data_config.std,
        crop_pct=data_config.crop_pct,
        crop_mode=data_config.crop_mode,
    )


def train_transform(data_config: DataConfig, augment: Any) -> T.Compose:
    """RandomResizedCrop + flip, plus the `augment` policy (RandAugment, AutoAugment, TrivialAugment...)."""
    policy = augment.get("auto_augment")
    trivial = policy == "trivialaugment"
    primary, secondary, final = create_transform(
        input_size=data_config.size,
        is_training=True,
        scale=tuple(augment.scale),
        ratio=tuple(augment.ratio),
        hflip=augment.hflip,
        color_jitter=augment.get("color_jitter") or None,
        auto_augment=None if trivial else policy,
        interpolation=augment.get("interpolation") or data_config.interpolation,
        mean=data_config.mean,
        std=data_config.std,
        re_prob=augment.get("random_erasing", 0.0),
        separate=True,
    )
    extra = [T.TrivialAugmentWide()] if trivial else []
    return T.Compose([*primary.transforms, *secondary.transforms, *extra, *final.transforms])
