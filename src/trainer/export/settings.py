"""The `export` config node as a typed, validated object.

Checked before anything is written, so that a typo in a variant name fails in a second rather than after the
ONNX and TorchScript exports have spent minutes. Author, license and version are never empty in what app
developers receive: unset, they default to the git (or OS) user, LICENSE_UNSET and trainer's own version.
"""

from __future__ import annotations

import getpass
import re
import subprocess
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from omegaconf import DictConfig, OmegaConf

import trainer
from trainer.export.formats import FORMATS, unknown_formats_message

UPDATABLE_KINDS = ("knn", "head")
PALETTE_BITS = (1, 2, 3, 4, 6, 8)
_PALETTIZE = re.compile(r"palettize(\d+)")
LICENSE_UNSET = "unspecified (set export.license)"


def default_author() -> str:
    """`git config user.name`, else the OS login name, else 'unknown'."""
    try:
        done = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True, timeout=10)
        name = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    if name:
        return name
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment or the password database
        return "unknown"


def default_version() -> str:
    """The installed trainer package's version (the source tree's when it is not installed)."""
    try:
        return metadata.version("trainer")
    except metadata.PackageNotFoundError:
        return trainer.__version__


def _or_default(value: Any, default: Callable[[], str]) -> str:
    """`value` as a string, or default() when it is null or blank."""
    text = "" if value is None else str(value).strip()
    return text or default()


def palette_bits(variant: str) -> int | None:
    """N for a `palettizeN` variant name, None for any other name."""
    match = _PALETTIZE.fullmatch(variant)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class OnDeviceSettings:
    """`export.on_device`: how UpdatableClassifier.mlmodel is seeded and updated, and the personalization
    experiment that measures it."""

    samples_per_class: int
    k: int
    learning_rate: float
    batch_size: int
    epochs: int
    holdout_class: str | None
    shots: int

    def validate(self) -> None:
        counts = {"samples_per_class": self.samples_per_class, "k": self.k, "batch_size": self.batch_size}
        counts |= {"epochs": self.epochs, "shots": self.shots}
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"export.on_device.{name} must be >= 1, not {value}")
        if not 0.0 < self.learning_rate <= 1.0:
            raise ValueError(f"export.on_device.learning_rate must be in (0, 1], not {self.learning_rate}")

    def check_data(self, kind: str | None, classes: Sequence[str], train_labels: Sequence[int]) -> None:
        """Raise ValueError when the training set cannot seed the k-NN or run the experiment as configured."""
        if kind is None:
            return
        if self.holdout_class is not None and self.holdout_class not in classes:
            raise ValueError(
                f"export.on_device.holdout_class: '{self.holdout_class}' is not a class of this dataset "
                f"({list(classes)}); use one of them or null (the last class)"
            )
        if kind != "knn":
            return
        counts = Counter(train_labels)
        short = [(classes[c], counts[c]) for c in range(len(classes)) if counts[c] < self.samples_per_class]
        if short:
            name, count = short[0]
            raise ValueError(
                f"export.on_device.samples_per_class={self.samples_per_class} asks for more k-NN seed "
                f"images than the training set has: class '{name}' has {count} training image(s) "
                f"({len(train_labels)} in all); lower it to at most {min(c for _, c in short)}"
            )


@dataclass(frozen=True)
class ExportSettings:
    formats: tuple[str, ...]
    torchscript_lite: bool
    onnx_opset: int | None
    onnx_int8: bool
    calibration_images: int
    coreml_quantize: tuple[str, ...]
    deployment_target: str
    litert_fp16: bool
    litert_int8: bool
    executorch_int8: bool
    headless: bool
    updatable: str | None
    on_device: OnDeviceSettings
    max_images: int | None
    latency_runs: int
    latency_warmup: int
    author: str
    license: str
    version: str
    description: str

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping[str, Any]) -> ExportSettings:
        """Read the `export` node (conf/export/default.yaml); every key must be present."""
        node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)

        def get(dotted: str) -> Any:
            value: Any = node
            for key in dotted.split("."):
                if not isinstance(value, Mapping) or key not in value:
                    raise ValueError(f"export config lacks '{dotted}' (see conf/export/default.yaml)")
                value = value[key]
            return value

        settings = cls(
            formats=tuple(get("formats")),
            torchscript_lite=bool(get("torchscript.lite")),
            onnx_opset=get("onnx.opset"),
            onnx_int8=bool(get("onnx.int8")),
            calibration_images=int(get("onnx.calibration_images")),
            coreml_quantize=tuple(get("coreml.quantize")),
            deployment_target=str(get("coreml.minimum_deployment_target")),
            litert_fp16=bool(get("litert.fp16")),
            litert_int8=bool(get("litert.int8")),
            executorch_int8=bool(get("executorch.int8")),
            headless=bool(get("headless")),
            updatable=get("updatable"),
            on_device=OnDeviceSettings(
                samples_per_class=int(get("on_device.samples_per_class")),
                k=int(get("on_device.k")),
                learning_rate=float(get("on_device.learning_rate")),
                batch_size=int(get("on_device.batch_size")),
                epochs=int(get("on_device.epochs")),
                holdout_class=get("on_device.holdout_class"),
                shots=int(get("on_device.shots")),
            ),
            max_images=get("verify.max_images"),
            latency_runs=int(get("latency.runs")),
            latency_warmup=int(get("latency.warmup")),
            author=_or_default(get("author"), default_author),
            license=_or_default(get("license"), lambda: LICENSE_UNSET),
            version=_or_default(get("version"), default_version),
            description=str(get("description")),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(unknown_formats_message(unknown))
        for variant in self.coreml_quantize:
            bits = palette_bits(variant)
            if variant not in ("fp32", "fp16", "int8", "w8a8") and bits is None:
                raise ValueError(
                    f"export.coreml.quantize: unknown variant '{variant}'; "
                    "choose from fp32, fp16, int8, palettizeN, w8a8"
                )
            if bits is not None and bits not in PALETTE_BITS:
                raise ValueError(f"export.coreml.quantize: {variant}: N must be one of {PALETTE_BITS}")
        if "coreml" in self.formats:
            from trainer.export.coreml import deployment_target  # coremltools loads only when wanted

            deployment_target(self.deployment_target)
        if self.latency_runs < 1 or self.latency_warmup < 0:
            raise ValueError("export.latency: runs must be >= 1 and warmup >= 0")
        if self.calibration_images < 1:
            raise ValueError("export.onnx.calibration_images must be >= 1")
        if self.updatable is not None and self.updatable not in UPDATABLE_KINDS:
            raise ValueError(
                f"export.updatable: unknown '{self.updatable}'; choose from null (none), "
                f"{', '.join(UPDATABLE_KINDS)}"
            )
        self.on_device.validate()
