"""Core ML conversion: an ML Program with raw-pixel image input, its compression variants, and saving.

Apps hand the model raw RGB pixels (0-255). Core ML's ImageType applies `scale * pixel + bias[c]` with one
scalar scale, so the per-channel std of the training normalization cannot be expressed exactly there: the
ImageType gets scale = 1 / (255 * mean(std)) and bias[c] = -mean[c] / std[c], and where the stds differ the
traced graph starts with a per-channel affine correction (see `ImageNormalization`). In an fp16 model the
correction's coefficients are stored in fp16, so it is exact only to CORRECTION_TOLERANCE.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import coremltools as ct
import coremltools.optimize.coreml as cto
import numpy as np
import torch
from torch import nn

from trainer.export.converters.coreml.executor.program import parse_program
from trainer.export.converters.coreml.target import deployment_target
from trainer.export.converters.coreml.variants import WEIGHT_THRESHOLD, palette_bits
from trainer.export.converters.tracing import trace
from trainer.export.manifest import size_bytes
from trainer.export.pixels import PixelNormalization
from trainer.export.settings import ExportSettings
from trainer.utils.files import atomic_output

INPUT_NAME = "image"
LABEL_OUTPUT = "classLabel"
PROBS_OUTPUT = "classLabel_probs"
EMBEDDING_OUTPUT = "embedding"
PREVIEW_KEY = "com.apple.coreml.model.preview.type"
WEIGHTS_DIR = "Data/com.apple.CoreML/weights"
# Largest error the stored correction may add, in normalized units over the whole 0-255 pixel range: fp16
# coefficients near 1 are within 2^-11 (4.9e-4) relatively, times |input| <= 2.7 for ImageNet statistics,
# plus the converter's batch_norm epsilon (1e-5). A missing correction errs by about 0.03 there.
CORRECTION_TOLERANCE = 2e-3


@dataclass(frozen=True)
class ImageNormalization:
    """ImageType scale/bias plus the in-graph correction that makes them equal (pixel/255 - mean) / std
    (to CORRECTION_TOLERANCE once the correction is stored in fp16).

    ImageType gives y[c] = pixel / (255 * s) - mean[c] / std[c] with s = mean(std). The wanted value is
    pixel / (255 * std[c]) - mean[c] / std[c] = gain[c] * y[c] + offset[c] with gain[c] = s / std[c] and
    offset[c] = (gain[c] - 1) * mean[c] / std[c]. With equal stds gain is 1 and no correction is added.
    """

    scale: float
    bias: tuple[float, ...]
    gain: tuple[float, ...] | None
    offset: tuple[float, ...] | None

    @classmethod
    def from_stats(cls, mean: Sequence[float], std: Sequence[float]) -> ImageNormalization:
        mean64, std64 = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        shared = float(std64.mean())
        bias = tuple(float(b) for b in PixelNormalization.of(mean, std).shift)
        if np.all(std64 == std64[0]):
            return cls(1.0 / (255.0 * shared), bias, None, None)
        gain = shared / std64
        offset = (gain - 1.0) * mean64 / std64
        return cls(1.0 / (255.0 * shared), bias, tuple(map(float, gain)), tuple(map(float, offset)))

    def correction_error(self, gain: np.ndarray, offset: np.ndarray) -> float:
        """Largest |difference| between a stored correction (gain, offset) and this one, in normalized units,
        over every input the ImageType can give (pixels 0..255)."""
        want_gain = np.ones(3) if self.gain is None else np.asarray(self.gain)
        want_offset = np.zeros(3) if self.offset is None else np.asarray(self.offset)
        ends = np.stack([np.asarray(self.bias), 255.0 * self.scale + np.asarray(self.bias)])
        return float(np.abs((gain - want_gain) * ends + (offset - want_offset)).max())

    def image_type_output(self, pixels: np.ndarray) -> np.ndarray:
        """What Core ML feeds the graph for (N, 3, H, W) raw pixels: scale * pixel + bias[c]."""
        bias = np.asarray(self.bias).reshape(1, 3, 1, 1)
        return (self.scale * pixels.astype(np.float64) + bias).astype(np.float32)


WRAPPED_PREFIX = "model_"  # CoreMLWrapper.model: coremltools names a weight const after its parameter's path


class CoreMLWrapper(nn.Module):
    """The graph Core ML runs: per-channel correction, the model, then softmax (classifier) or flatten."""

    def __init__(self, model: nn.Module, norm: ImageNormalization, classifier: bool):
        super().__init__()
        self.model = model
        self.classifier = classifier
        self.correct = norm.gain is not None
        if self.correct:
            self.register_buffer("gain", torch.tensor(norm.gain, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("offset", torch.tensor(norm.offset, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.correct:
            x = x * self.gain + self.offset
        out = self.model(x)
        return torch.softmax(out, dim=1) if self.classifier else out.flatten(1)


def image_input(image_size: int, norm: ImageNormalization) -> ct.ImageType:
    """The raw-pixel RGB image input every Core ML artifact shares, with the normalization folded in."""
    return ct.ImageType(
        name=INPUT_NAME,
        shape=(1, 3, image_size, image_size),
        scale=norm.scale,
        bias=list(norm.bias),
        color_layout=ct.colorlayout.RGB,
    )


def convert(
    module: nn.Module,
    *,
    image_size: int,
    norm: ImageNormalization,
    classes: list[str] | None,
    target_name: str,
    precision: str,
) -> ct.models.MLModel:
    """Trace and convert to an ML Program: a classifier when `classes` is given, else an embedding model."""
    wrapper = CoreMLWrapper(module, norm, classifier=classes is not None)
    traced = trace(wrapper, torch.rand(1, 3, image_size, image_size))
    head: dict[str, Any] = (
        {"classifier_config": ct.ClassifierConfig(list(classes))}
        if classes is not None
        else {"outputs": [ct.TensorType(name=EMBEDDING_OUTPUT)]}
    )
    with warnings.catch_warnings():  # the classifier head renames the traced output var: expected, not news
        warnings.filterwarnings("ignore", message=r"Output, '.*', of the source model, has been renamed")
        return ct.convert(
            traced,
            inputs=[image_input(image_size, norm)],
            convert_to="mlprogram",
            minimum_deployment_target=deployment_target(target_name),
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            **head,
        )


def compress(base: ct.models.MLModel, variant: str, keep: Sequence[str] = ()) -> ct.models.MLModel:
    """A weight-compressed copy of an fp16 model: 'int8' or 'palettizeN' (W8A8 is its own conversion:
    w8a8.py); the weight consts named in `keep` stay fp16 (weight_const)."""
    skipped: dict[str, Any] = dict.fromkeys(keep)
    if variant == "int8":
        config = cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", weight_threshold=WEIGHT_THRESHOLD
            ),
            op_name_configs=skipped,
        )
        return cto.linear_quantize_weights(base, config)
    bits = palette_bits(variant)
    if bits is None:
        raise ValueError(f"unknown Core ML compression variant '{variant}'")
    config = cto.OptimizationConfig(
        global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=bits, weight_threshold=WEIGHT_THRESHOLD),
        op_name_configs=skipped,
    )
    return cto.palettize_weights(base, config)


def weight_consts(base: ct.models.MLModel) -> set[str]:
    """The names of the converted program's const ops (weights among them)."""
    program = parse_program(base.get_spec(), base.weights_dir)
    return {op.name for op in program.functions["main"].operations if op.op_type == "const"}


def weight_const(consts: set[str], layer: str) -> str | None:
    """The weight const of `layer` (a module name) where the program still names it after its module
    (`model_classifier_weight_to_fp16`): the Linear head, in practice. A conv folded with its BatchNorm at
    conversion gets an anonymous const (`const_12_to_fp16`) and cannot be kept by name."""
    stem = f"{WRAPPED_PREFIX}{layer.replace('.', '_')}_weight"
    return next((c for c in sorted(consts) if c == stem or c.startswith(f"{stem}_to_")), None)


def save(
    mlmodel: ct.models.MLModel,
    path: Path,
    *,
    settings: ExportSettings,
    model_metadata: dict[str, Any],
    classifier: bool,
) -> None:
    """Fill what Xcode shows (author, license, description, version, user metadata, input/output notes) and
    write the .mlpackage atomically.

    The preview key makes Xcode's model viewer offer its drag-an-image classifier preview.
    """
    mlmodel.author = settings.author
    mlmodel.license = settings.license
    mlmodel.version = settings.version
    mlmodel.short_description = (
        settings.description if classifier else f"Feature extractor (embeddings): {settings.description}"
    )
    for key, value in model_metadata.items():
        mlmodel.user_defined_metadata[key] = value if isinstance(value, str) else json.dumps(value)
    mlmodel.input_description[INPUT_NAME] = "RGB image, raw pixels (normalization is built into the model)"
    if classifier:
        mlmodel.user_defined_metadata[PREVIEW_KEY] = "imageClassifier"
        mlmodel.output_description[LABEL_OUTPUT] = "Most likely class"
        mlmodel.output_description[PROBS_OUTPUT] = "Probability of each class"
    else:
        mlmodel.output_description[EMBEDDING_OUTPUT] = "Image embedding (feature vector)"
    with atomic_output(path) as tmp:
        mlmodel.save(str(tmp))
        _usual_permissions(tmp)


def _usual_permissions(package: Path) -> None:
    """Give every file of the package the mode a plain write would (0644 under the usual umask).

    coremltools writes model.mlmodel through a private temporary file (mode 0600) and moves it into the
    package, so colleagues and build machines could read the weights but not the model itself.
    """
    umask = os.umask(0)
    os.umask(umask)
    for item in [package, *package.rglob("*")]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


def weights_bytes(package: Path) -> int:
    """Bytes of the weight files inside an .mlpackage (what compression shrinks)."""
    return size_bytes(package / WEIGHTS_DIR)


def in_memory_weights_bytes(mlmodel: ct.models.MLModel) -> int:
    """Weight bytes of a converted, unsaved model (its weights live in a temporary folder)."""
    return size_bytes(Path(mlmodel.weights_dir))
