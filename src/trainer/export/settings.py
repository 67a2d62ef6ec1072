"""The `export` config node as a typed, validated object: its schema (checked by Hydra at compose time) and
the value checks a schema cannot state (variant names, ranges, the Core ML target).

Checked before anything is written, so that a typo in a variant name fails in a second rather than after the
ONNX and TorchScript exports have spent minutes. Author, license and version are never empty in what app
developers receive: unset, they default to the git (or OS) user, LICENSE_UNSET and trainer's own version.
"""

from __future__ import annotations

import getpass
import subprocess
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import trainer
from trainer.export.converters.coreml.variants import PALETTE_BITS, palette_bits
from trainer.export.formats import FORMATS, unknown_formats_message
from trainer.export.quantize.settings import Int8Settings

UPDATABLE_KINDS = ("knn", "head")
LICENSE_UNSET = "unspecified (set export.license)"
PRETRAINED_DESCRIPTION = "Image classifier fine-tuned from an ImageNet backbone"  # conf/export/default.yaml
SCRATCH_DESCRIPTION = "Image classifier trained from scratch (no pretrained weights)"  # when pretrained=false


def run_description(description: str, pretrained: object) -> str:
    """The default description claims an ImageNet backbone: a run from scratch gets one that does not."""
    return SCRATCH_DESCRIPTION if description == PRETRAINED_DESCRIPTION and not pretrained else description


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


@dataclass
class OnDeviceSettings:
    """`export.on_device`: how UpdatableClassifier.mlmodel is seeded and updated, and the personalization
    experiment that measures it."""

    samples_per_class: int = MISSING
    k: int = MISSING
    learning_rate: float = MISSING
    batch_size: int = MISSING
    epochs: int = MISSING
    holdout_class: str | None = MISSING
    shots: int = MISSING

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


# onnxruntime.quantization.CalibrationMethod members by the names export.onnx.calibration_method takes
ONNX_CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


@dataclass
class TorchscriptSettings:
    lite: bool = MISSING


@dataclass
class OnnxSettings:
    opset: int | None = MISSING
    int8: bool = MISSING
    calibration_method: str = MISSING
    reduce_range: bool = MISSING
    keep_float: list[str] = MISSING
    calibration_images: int | None = None  # renamed export.calibration.images: set, it stops the run


@dataclass
class CalibrationSettings:
    images: int = MISSING


@dataclass
class CoremlSettings:
    quantize: list[str] = MISSING
    minimum_deployment_target: str = MISSING


@dataclass
class LitertSettings:
    fp16: bool = MISSING
    int8: bool = MISSING


@dataclass
class ExecutorchSettings:
    int8: bool = MISSING


@dataclass
class VerifySettings:
    max_images: int | None = MISSING


@dataclass
class LatencySettings:
    runs: int = MISSING
    warmup: int = MISSING


@dataclass
class ExportSettings:
    """The schema of the `export` node: conf/export/default.yaml holds the values and says what each does;
    Hydra checks keys and types against this when it composes the config, so `export.onnx.int88=true` or
    `export.latency.runs=many` fails before anything runs, with Hydra's message."""

    enabled: bool = MISSING
    formats: list[str] = MISSING
    torchscript: TorchscriptSettings = MISSING
    onnx: OnnxSettings = MISSING
    calibration: CalibrationSettings = MISSING
    int8: Int8Settings = MISSING
    coreml: CoremlSettings = MISSING
    litert: LitertSettings = MISSING
    executorch: ExecutorchSettings = MISSING
    min_agreement: float = MISSING
    headless: bool = MISSING
    updatable: str | None = MISSING
    on_device: OnDeviceSettings = MISSING
    verify: VerifySettings = MISSING
    latency: LatencySettings = MISSING
    author: str | None = MISSING
    license: str | None = MISSING
    version: str | None = MISSING
    description: str = MISSING
    keep_other_checkpoints: bool = False  # a default: configs saved in older checkpoints lack it

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping[str, Any]) -> ExportSettings:
        """The validated settings of an `export` node, with author, license and version filled in."""
        try:
            node = OmegaConf.merge(OmegaConf.structured(cls), cfg)
            settings: ExportSettings = OmegaConf.to_object(node)  # type: ignore[assignment]
        except OmegaConfBaseException as exc:  # a node that did not come through Hydra's schema check
            raise ValueError(f"export config (conf/export/default.yaml): {exc}") from exc
        settings.author = _or_default(settings.author, default_author)
        settings.license = _or_default(settings.license, lambda: LICENSE_UNSET)
        settings.version = _or_default(settings.version, default_version)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if self.enabled and not self.formats and self.updatable is None:
            raise ValueError(
                "export.formats=[] exports nothing: list formats, e.g. export.formats=[onnx], add "
                "export.updatable=knn, or turn the export off with export.enabled=false"
            )
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(unknown_formats_message(unknown))
        for variant in self.coreml.quantize:
            bits = palette_bits(variant)
            if variant not in ("fp32", "fp16", "int8", "w8a8") and bits is None:
                raise ValueError(
                    f"export.coreml.quantize: unknown variant '{variant}'; "
                    "choose from fp32, fp16, int8, palettizeN, w8a8"
                )
            if bits is not None and bits not in PALETTE_BITS:
                raise ValueError(f"export.coreml.quantize: {variant}: N must be one of {PALETTE_BITS}")
        if "coreml" in self.formats:
            from trainer.export.converters.coreml.target import (
                deployment_target,  # coremltools loads only when wanted
            )

            deployment_target(self.coreml.minimum_deployment_target)
        if self.latency.runs < 1 or self.latency.warmup < 0:
            raise ValueError("export.latency: runs must be >= 1 and warmup >= 0")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(
                f"export.min_agreement={self.min_agreement}: a share of val photos, between 0 and 1 "
                "(e.g. 0.95: a quantized copy must pick fp32 PyTorch's class on 95% of them)"
            )
        self._validate_int8()
        if self.updatable is not None and self.updatable not in UPDATABLE_KINDS:
            raise ValueError(
                f"export.updatable: unknown '{self.updatable}'; choose from null (none), "
                f"{', '.join(UPDATABLE_KINDS)}"
            )
        self.on_device.validate()

    def _validate_int8(self) -> None:
        """The int8 calibration settings (export.calibration, export.onnx)."""
        if self.onnx.calibration_images is not None:
            raise ValueError(
                "export.onnx.calibration_images was renamed export.calibration.images (it calibrates every "
                f"int8 format, not only ONNX): use export.calibration.images={self.onnx.calibration_images}"
            )
        if self.calibration.images < 1:
            raise ValueError(f"export.calibration.images={self.calibration.images} must be >= 1 (e.g. 64)")
        if self.onnx.calibration_method not in ONNX_CALIBRATION_METHODS:
            raise ValueError(
                f"export.onnx.calibration_method: unknown '{self.onnx.calibration_method}'; choose from "
                f"{', '.join(ONNX_CALIBRATION_METHODS)}"
            )
        self.int8.validate()


def register_schema() -> None:
    """Make the schema available as `export/schema`, which conf/export/default.yaml extends; called before
    Hydra composes (trainer.cli)."""
    ConfigStore.instance().store(group="export", name="schema", node=ExportSettings)
