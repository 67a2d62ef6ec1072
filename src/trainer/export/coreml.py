"""Core ML: ML Program conversion with raw-pixel image input, compression variants, and spec checks.

Apps hand the model raw RGB pixels (0-255). Core ML's ImageType applies `scale * pixel + bias[c]` with one
scalar scale, so the per-channel std of the training normalization cannot be expressed exactly there: the
ImageType gets scale = 1 / (255 * mean(std)) and bias[c] = -mean[c] / std[c], and where the stds differ the
traced graph starts with a per-channel affine correction (see `ImageNormalization`). In an fp16 model the
correction's coefficients are stored in fp16, so it is exact only to CORRECTION_TOLERANCE.

The `coreml` row of the format table (formats.py): `export`, `export_headless`, and `verify`, the one place
that decides how a saved .mlpackage is run on the val images (the reference executor everywhere, and
MLModel.predict beside it on macOS).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import coremltools as ct
import coremltools.optimize.coreml as cto
import numpy as np
import torch
from PIL import Image
from torch import nn

from trainer.export.coreml_verify import (
    WEIGHT_THRESHOLD,
    compressed_bits,
    gate,
    gate_problem,
    measure,
    package_metadata,
    pixel_arrays,
    reference_predictor,
    weight_ratio_problems,
)
from trainer.export.formats import RuntimeUnavailable
from trainer.export.job import ExportJob
from trainer.export.manifest import atomic_output, size_bytes
from trainer.export.settings import ExportSettings, palette_bits
from trainer.export.torchscript import trace
from trainer.export.verify import Predict, evaluate, fp32_problems, softmax, top1

INPUT_NAME = "image"
LABEL_OUTPUT = "classLabel"
PROBS_OUTPUT = "classLabel_probs"
EMBEDDING_OUTPUT = "embedding"
PREVIEW_KEY = "com.apple.coreml.model.preview.type"
WEIGHTS_DIR = "Data/com.apple.CoreML/weights"
NOT_MACOS_REASON = f"Core ML runs models only on macOS (MLModel.predict); this is {sys.platform}"
CLASSIFIER_STEM = "ImageClassifier"
HEADLESS_STEM = "FeatureExtractor"
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
        bias = tuple(float(b) for b in -mean64 / std64)
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


def deployment_target(name: str) -> ct.target:
    """The coremltools target for a config name such as 'iOS16' or 'macOS14'."""
    target = getattr(ct.target, name, None)
    if not isinstance(target, ct.target):
        raise ValueError(
            f"export.coreml.minimum_deployment_target: unknown target '{name}' (e.g. iOS16, iOS17)"
        )
    return target


def w8a8_skip_reason(target_name: str) -> str | None:
    """Why the W8A8 variant cannot be made here (None when it can)."""
    if deployment_target(target_name).value < ct.target.iOS17.value:
        return f"w8a8 needs minimum_deployment_target iOS17 or later, not {target_name}"
    if sys.platform != "darwin":
        return "w8a8 calibrates activations by running the model (MLModel.predict), which needs macOS"
    return None


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


def compress(base: ct.models.MLModel, variant: str, calibration: list[Image.Image]) -> ct.models.MLModel:
    """A compressed copy of an fp16 model: 'int8', 'palettizeN' or 'w8a8' (see w8a8_skip_reason)."""
    int8 = cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", weight_threshold=WEIGHT_THRESHOLD
        )
    )
    if variant == "int8":
        return cto.linear_quantize_weights(base, int8)
    bits = palette_bits(variant)
    if bits is not None:
        config = cto.OptimizationConfig(
            global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=bits, weight_threshold=WEIGHT_THRESHOLD)
        )
        return cto.palettize_weights(base, config)
    if variant == "w8a8":
        activations = cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric")
        )
        samples = [{INPUT_NAME: image} for image in calibration]
        return cto.linear_quantize_weights(cto.linear_quantize_activations(base, activations, samples), int8)
    raise ValueError(f"unknown Core ML compression variant '{variant}'")


def save(
    mlmodel: ct.models.MLModel,
    path: Path,
    *,
    settings: ExportSettings,
    user_metadata: dict[str, Any],
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
    for key, value in user_metadata.items():
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


def _values(value: Any) -> list[Any]:
    """The flat contents of an immediate MIL value (a tensor, or a list of tensors such as class labels)."""
    immediate = value.immediateValue
    if immediate.WhichOneof("value") == "list":
        return [v for item in immediate.list.values for v in _values(item)]
    tensor = immediate.tensor
    return list(getattr(tensor, tensor.WhichOneof("value")).values)


def _input_values(ops: dict[str, Any], op: Any, name: str) -> list[Any]:
    """Values bound to input `name` of `op`: inline, or produced by a const op."""
    binding = op.inputs[name].arguments[0]
    if binding.WhichOneof("binding") == "name":
        return _values(ops[binding.name].attributes["val"])
    return _values(binding.value)


def _channel_values(var: Any) -> np.ndarray | None:
    """A constant's per-channel values (3, or 1 broadcast to 3); None when `var` is not such a constant."""
    if var is None or var.val is None or np.size(var.val) not in (1, 3):
        return None
    return np.broadcast_to(np.asarray(var.val, np.float64).reshape(-1), (3,))


def stored_correction(package: Path) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel affine (gain, offset) that the ops after the image's scale/bias apply, as stored.

    Follows the image through casts and the batch_norm / mul / add ops with per-channel constants that the
    converter makes of `CoreMLWrapper`'s correction, up to the first other op (the backbone's first layer).
    """
    from trainer.export.coreml_executor.program import load_program

    main = load_program(package)[1].functions["main"]
    var = main.inputs[INPUT_NAME]
    image_ops = {f"{INPUT_NAME}__scaled__", f"{INPUT_NAME}__biased__"}
    gain, offset = np.ones(3), np.zeros(3)
    while len(var.child_ops) == 1:
        op = var.child_ops[0]
        inputs = op.inputs
        if op.outputs[0].name in image_ops or op.op_type == "cast":
            pass
        elif op.op_type == "batch_norm":
            consts = [_channel_values(inputs.get(k)) for k in ("mean", "variance", "gamma", "beta")]
            if consts[0] is None or consts[1] is None:
                break
            mean, variance = consts[0], consts[1]
            gamma = consts[2] if consts[2] is not None else np.ones(3)
            beta = consts[3] if consts[3] is not None else np.zeros(3)
            scale = gamma / np.sqrt(variance + float(inputs["epsilon"].val))
            gain, offset = gain * scale, (offset - mean) * scale + beta
        elif op.op_type in ("mul", "add"):
            other = inputs["y"] if inputs["x"] is var else inputs["x"]
            values = _channel_values(other)
            if values is None:
                break
            gain, offset = (
                (gain * values, offset * values) if op.op_type == "mul" else (gain, offset + values)
            )
        else:
            break
        var = op.outputs[0]
    return gain, offset


def check_spec(
    package: Path,
    *,
    image_size: int,
    norm: ImageNormalization,
    classes: list[str] | None,
    user_metadata_keys: Sequence[str],
) -> list[str]:
    """Problems with a saved .mlpackage's interface (empty when it is what apps expect).

    Checks the image input (RGB, size), the scale/bias ops the converter inserts, the per-channel correction
    after them (to CORRECTION_TOLERANCE: it is stored in fp16), the outputs, the class labels and their
    order, and the metadata (author, license, version and description non-empty; for a classifier Xcode's
    preview type).
    """
    spec = ct.models.utils.load_spec(str(package))
    problems = []
    inputs = spec.description.input
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type.WhichOneof("Type") != "imageType":
        problems.append(f"input is not one image named '{INPUT_NAME}'")
    else:
        image = inputs[0].type.imageType
        if (image.width, image.height) != (image_size, image_size):
            problems.append(f"input is {image.width}x{image.height}, expected {image_size}x{image_size}")
        if image.colorSpace != ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB:
            problems.append("input color space is not RGB")

    main = spec.mlProgram.functions["main"]
    ops = {out.name: op for op in main.block_specializations[main.opset].operations for out in op.outputs}
    # the converter inserts these ops only for a scale other than 1 and a bias other than 0
    scale_op, bias_op = ops.get(f"{INPUT_NAME}__scaled__"), ops.get(f"{INPUT_NAME}__biased__")
    scale = _input_values(ops, scale_op, "y") if scale_op is not None else [1.0]
    bias = _input_values(ops, bias_op, "y") if bias_op is not None else [0.0, 0.0, 0.0]
    if not np.allclose(scale, [norm.scale], rtol=1e-6) or not np.allclose(bias, norm.bias, rtol=1e-6):
        problems.append(f"image scale/bias are {scale}/{bias}, expected {norm.scale}/{list(norm.bias)}")
    gain, offset = stored_correction(package)
    error = norm.correction_error(gain, offset)
    if error > CORRECTION_TOLERANCE:
        problems.append(
            f"in-graph correction is gain {gain.round(5).tolist()} / offset {offset.round(5).tolist()}, "
            f"expected {norm.gain or [1.0] * 3} / {norm.offset or [0.0] * 3}: off by up to {error:.3g} "
            f"normalized units (tolerance {CORRECTION_TOLERANCE})"
        )

    outputs = {o.name: o.type.WhichOneof("Type") for o in spec.description.output}
    if classes is None:
        if outputs != {EMBEDDING_OUTPUT: "multiArrayType"}:
            problems.append(f"outputs are {outputs}, expected one multiarray '{EMBEDDING_OUTPUT}'")
    else:
        if outputs != {LABEL_OUTPUT: "stringType", PROBS_OUTPUT: "dictionaryType"}:
            problems.append(f"outputs are {outputs}, expected '{LABEL_OUTPUT}' and '{PROBS_OUTPUT}'")
        classify = [op for op in ops.values() if op.type == "classify"]
        labels = _input_values(ops, classify[0], "classes") if classify else None
        if labels != list(classes):
            problems.append(f"class labels are {labels}, expected {classes} in that order")

    meta = spec.description.metadata
    expected_keys = [*user_metadata_keys, PREVIEW_KEY] if classes is not None else list(user_metadata_keys)
    missing = [k for k in expected_keys if k not in meta.userDefined]
    if missing:
        problems.append(f"user metadata lacks {missing}")
    if classes is not None and meta.userDefined.get(PREVIEW_KEY) != "imageClassifier":
        problems.append(f"{PREVIEW_KEY} is not 'imageClassifier'")
    fields = {
        "author": meta.author,
        "license": meta.license,
        "version": meta.versionString,
        "short description": meta.shortDescription,
    }
    empty = [name for name, value in fields.items() if not value]
    if empty:
        problems.append(f"metadata fields {empty} are empty")
    return problems


def to_pixels(inputs: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> list[Image.Image]:
    """The RGB images of preprocessed (N, 3, S, S) inputs, as Core ML's image input takes them."""
    return [Image.fromarray(a) for a in pixel_arrays(inputs, mean, std).transpose(0, 2, 3, 1)]


def coreml_predictor(
    package: Path, *, classes: list[str] | None, mean: Sequence[float], std: Sequence[float]
) -> Predict:
    """Predict with Core ML on the CPU (macOS only): class probabilities, or embeddings."""
    model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_ONLY)

    def predict(batch: np.ndarray) -> np.ndarray:
        rows = []
        for image in to_pixels(batch, mean, std):
            result = model.predict({INPUT_NAME: image})
            if classes is None:
                rows.append(np.asarray(result[EMBEDDING_OUTPUT], np.float32).reshape(-1))
            else:
                rows.append(np.asarray([result[PROBS_OUTPUT][c] for c in classes], np.float32))
        return np.stack(rows)

    return predict


def export(job: ExportJob) -> None:
    """ImageClassifier_<variant>.mlpackage for each coreml.quantize variant, from one fp32 or fp16 conversion;
    each is measured by the reference executor (`verify`), gets its own figures in its metadata, and is
    size-checked when compressed and spec-checked."""
    norm = ImageNormalization.from_stats(job.mean, job.std)
    target = job.settings.coreml.minimum_deployment_target
    bases: dict[str, Any] = {}

    def base(precision: str) -> Any:
        """The converted model at `precision`, converted once (None once it failed)."""
        if precision not in bases:
            bases[precision] = None
            with job.guard(f"coreml_{precision} conversion"):
                bases[precision] = convert(
                    job.model,
                    image_size=job.image_size,
                    norm=norm,
                    classes=job.classes,
                    target_name=target,
                    precision=precision,
                )
        return bases[precision]

    for variant in job.settings.coreml.quantize:
        name = f"coreml_{variant}"
        reason = w8a8_skip_reason(target) if variant == "w8a8" else None
        if reason:
            job.skip(name, reason)
            continue
        precision = "fp32" if variant == "fp32" else "fp16"
        if base(precision) is None:
            job.skip(name, f"the Core ML {precision} conversion failed")
            continue
        with job.guard(name):
            mlmodel = base(precision)
            if variant not in ("fp32", "fp16"):
                mlmodel = compress(mlmodel, variant, to_pixels(job.calibration, job.mean, job.std))
            path = job.out_dir / f"{CLASSIFIER_STEM}_{variant}.mlpackage"
            save(mlmodel, path, settings=job.settings, user_metadata=job.user_metadata, classifier=True)
            extra: dict[str, Any] = {
                "minimum_deployment_target": target,
                "weights_bytes": weights_bytes(path),
            }
            if compressed_bits(variant) is not None:
                ratio = extra["weights_bytes"] / in_memory_weights_bytes(base("fp16"))
                expected, problems = weight_ratio_problems(path, variant, ratio)
                extra.update(weights_ratio_vs_fp16=round(ratio, 4), weights_ratio_expected=round(expected, 4))
                job.fail(name, [f"{name}: {p}" for p in problems])
            stats = verify(job, name, variant, path, job.classes, softmax(job.reference))
            metadata = package_metadata(job.user_metadata, stats)
            save(mlmodel, path, settings=job.settings, user_metadata=metadata, classifier=True)
            job.add(path, format="coreml", precision=variant, **extra, **stats)
            job.fail(name, _check_saved(job, path, norm, job.classes, metadata))


def export_headless(job: ExportJob, extractor: nn.Module, reference: np.ndarray) -> None:
    """FeatureExtractor_fp16.mlpackage: output `embedding`, compared with PyTorch's `reference` embeddings."""
    with job.guard("headless_coreml_fp16"):
        norm = ImageNormalization.from_stats(job.mean, job.std)
        target = job.settings.coreml.minimum_deployment_target
        mlmodel = convert(
            extractor,
            image_size=job.image_size,
            norm=norm,
            classes=None,
            target_name=target,
            precision="fp16",
        )
        path = job.out_dir / f"{HEADLESS_STEM}_fp16.mlpackage"
        save(mlmodel, path, settings=job.settings, user_metadata=job.user_metadata, classifier=False)
        stats = verify(job, "headless_coreml_fp16", "fp16", path, None, reference)
        job.add(
            path,
            format="coreml",
            precision="fp16",
            kind="embedding",
            minimum_deployment_target=target,
            **stats,
        )
        job.fail("headless_coreml_fp16", _check_saved(job, path, norm, None, job.user_metadata))


def _check_saved(
    job: ExportJob,
    path: Path,
    norm: ImageNormalization,
    classes: list[str] | None,
    metadata: dict[str, Any],
) -> list[str]:
    return check_spec(
        path,
        image_size=job.image_size,
        norm=norm,
        classes=classes,
        user_metadata_keys=list(metadata),
    )


def verify(
    job: ExportJob,
    name: str,
    variant: str,
    path: Path,
    classes: list[str] | None,
    reference: np.ndarray,
) -> dict[str, Any]:
    """A saved package's figures from the reference executor on the val images (compared in probability
    space for a classifier) with its gate; on macOS MLModel.predict's figures beside them. Failed checks
    go to the job's errors."""
    labels = job.labels if classes is not None else None
    predict = reference_predictor(path, classes=classes, mean=job.mean, std=job.std)
    _, stats = measure(predict, job.inputs, reference, labels, top1(job.reference, job.labels))
    if variant == "fp32":
        job.fail(name, fp32_problems(name, stats, reference))
    stats["gate"] = gate(variant, stats)
    job.fail(name, gate_problem(name, stats["gate"]))
    try:
        check_runtime()
    except RuntimeUnavailable as exc:
        stats.update(latency_ms=None, reason=f"latency: {exc}")
        return stats
    _, stats["mlmodel_predict"] = evaluate(
        coreml_predictor(path, classes=classes, mean=job.mean, std=job.std),
        job.inputs,
        reference,
        labels,
        runs=job.settings.latency.runs,
        warmup=job.settings.latency.warmup,
        threads=job.threads,
    )
    stats["latency_ms"] = stats["mlmodel_predict"].get("latency_ms")
    return stats


def check_runtime() -> None:
    """Raise RuntimeUnavailable where Core ML cannot run models (everywhere but macOS)."""
    if sys.platform != "darwin":
        raise RuntimeUnavailable(NOT_MACOS_REASON)


def load(path: Path, manifest: dict[str, Any]) -> Predict:
    """Class probabilities of a classifier .mlpackage (trainer-predict, the benchmark)."""
    check_runtime()
    prep = manifest["preprocess"]
    return coreml_predictor(path, classes=manifest["classes"], mean=prep["mean"], std=prep["std"])
