"""The run's eval preprocessing (size, interpolation, crop, mean/std): resolved once, stored with the model.

timm's `resolve_data_config` merges the run's input size over the backbone's pretrained config. The result is
saved in the checkpoint and the export manifest, and everything that measures the model or hands it over is
built from it: validation during training, export verification and int8 calibration, trainer-predict, the
Core ML input's scale/bias and correction, and the crop region Classifier.swift gives Vision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from timm.data import resolve_data_config

# timm's crop modes that an app can reproduce with Vision (a region of interest scaled to the input):
# `center` keeps a centred square of the shorter side, `squash` a centred fraction of each side.
CROP_MODES = ("center", "squash")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class DataConfig:
    """Eval preprocessing: resize to floor(size / crop_pct) (timm's rule), center crop `size`, normalize."""

    size: int
    interpolation: str
    crop_pct: float
    crop_mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        problems = []
        if self.size < 1:
            problems.append(f"size {self.size} must be >= 1")
        if not 0 < self.crop_pct <= 1:
            problems.append(f"crop_pct {self.crop_pct} must be in (0, 1]")
        if self.crop_mode not in CROP_MODES:
            problems.append(
                f"crop_mode '{self.crop_mode}' is not one of {list(CROP_MODES)} (the app's Vision crop "
                "cannot reproduce it): choose a backbone whose timm pretrained_cfg uses one of them"
            )
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation '{self.interpolation}' is not one of {list(INTERPOLATIONS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append(f"mean {self.mean} / std {self.std} must be 3 values each, std > 0")
        if problems:
            raise ValueError(f"data config: {'; '.join(problems)}")

    @classmethod
    def resolve(cls, pretrained_cfg: Mapping[str, Any], image_size: int) -> DataConfig:
        """The backbone's pretrained config (mean, std, crop_pct, interpolation, crop_mode) at image_size."""
        resolved = resolve_data_config(
            {"input_size": (3, int(image_size), int(image_size))}, pretrained_cfg=dict(pretrained_cfg)
        )
        return cls(
            size=int(resolved["input_size"][-1]),
            interpolation=str(resolved["interpolation"]),
            crop_pct=float(resolved["crop_pct"]),
            crop_mode=str(resolved["crop_mode"]),
            mean=tuple(float(m) for m in resolved["mean"]),
            std=tuple(float(s) for s in resolved["std"]),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], image_size: int | None = None) -> DataConfig:
        """From `to_dict`, or an older checkpoint's data_config (no size or crop_mode) and its image_size."""
        size = data.get("size", image_size)
        if size is None:
            raise ValueError(f"data config {dict(data)} has no size and no image_size was given")
        return cls(
            size=int(size),
            interpolation=str(data["interpolation"]),
            crop_pct=float(data["crop_pct"]),
            crop_mode=str(data.get("crop_mode", "center")),
            mean=tuple(float(m) for m in data["mean"]),
            std=tuple(float(s) for s in data["std"]),
        )

    @property
    def resize_size(self) -> int:
        """The shorter side (center) or both sides (squash) before the crop: timm's floor(size / crop_pct)."""
        return math.floor(self.size / self.crop_pct)

    @property
    def decode_min_side(self) -> int:
        """The shorter side JPEGs may be decoded down to (libjpeg's DCT scaling) before the eval transform.

        Twice the resize size, so that the resize's filter, not the DCT scaling, shapes the pixels: on 60 real
        photos at 64 px this kept the mean |difference| to a full decode at 0.02 (normalized units), against
        0.07 when decoding down to the resize size itself.
        """
        return 2 * self.resize_size

    @property
    def crop_fraction(self) -> float:
        """The share of the resized side that the crop keeps: what the app's region of interest must span."""
        return self.size / self.resize_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the resolved fields, plus the derived resize size and crop fraction for readers."""
        return {
            "size": self.size,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize_size,
            "crop_fraction": self.crop_fraction,
        }

    def describe(self) -> str:
        """One sentence for the model card and ONNX metadata readers."""
        return (
            f"{self.describe_geometry()}, then (pixel / 255 - mean) / std with mean {list(self.mean)} and "
            f"std {list(self.std)}"
        )

    def describe_geometry(self) -> str:
        """The resize and crop alone: what an app does for a model that normalizes the pixels itself."""
        if self.crop_mode == "squash":
            resize = f"resize both sides to {self.resize_size} px ({self.interpolation})"
        else:
            resize = f"resize the shorter side to {self.resize_size} px ({self.interpolation}, same aspect)"
        return f"{resize}, center crop {self.size}x{self.size}"


def data_config_from_record(record: Mapping[str, Any]) -> DataConfig:
    """The DataConfig stored in a checkpoint's run record (old checkpoints kept the size beside it)."""
    return DataConfig.from_dict(record["data_config"], image_size=record.get("image_size"))
