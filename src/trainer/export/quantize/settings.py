"""The `export.int8` config node (conf/export/default.yaml): how the int8 copies are made."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

INT8_METHODS = ("ptq", "qat")
KEEP_FLOAT = ("auto", "none")


@dataclass
class QatSettings:
    steps: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    images: int = MISSING


@dataclass
class Int8Settings:
    method: str = MISSING
    keep_float: str = MISSING
    max_kl: float = MISSING
    max_float_layers: int = MISSING
    holdout_images: int = MISSING
    qat: QatSettings = MISSING

    def validate(self) -> None:
        """Raise ValueError naming the first bad export.int8 setting."""
        if self.method not in INT8_METHODS:
            raise ValueError(
                f"export.int8.method: unknown '{self.method}'; choose from {', '.join(INT8_METHODS)}"
            )
        if self.keep_float not in KEEP_FLOAT:
            raise ValueError(
                f"export.int8.keep_float: unknown '{self.keep_float}'; choose from {', '.join(KEEP_FLOAT)} "
                "(name ONNX nodes with export.onnx.keep_float)"
            )
        counts = {"max_float_layers": self.max_float_layers, "holdout_images": self.holdout_images}
        counts |= {
            "qat.steps": self.qat.steps,
            "qat.batch_size": self.qat.batch_size,
            "qat.images": self.qat.images,
        }
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"export.int8.{name} must be >= 1, not {value}")
        if not 0.0 < self.max_kl < 1.0:
            raise ValueError(f"export.int8.max_kl={self.max_kl} must be in (0, 1) (e.g. 0.005)")
        if not 0.0 < self.qat.lr <= 0.1:
            raise ValueError(f"export.int8.qat.lr={self.qat.lr} must be in (0, 0.1] (e.g. 1e-5)")
