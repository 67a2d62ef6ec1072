"""Structural checks of a saved .mlpackage: input, scale/bias and the stored per-channel correction, the
class labels in order, the outputs and the metadata app developers read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np

from trainer.export.converters.coreml.convert import (
    CORRECTION_TOLERANCE,
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    LABEL_OUTPUT,
    PREVIEW_KEY,
    PROBS_OUTPUT,
    ImageNormalization,
)


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
    from trainer.export.converters.coreml.executor.program import load_program

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
    model_metadata_keys: Sequence[str],
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
    expected_keys = [*model_metadata_keys, PREVIEW_KEY] if classes is not None else list(model_metadata_keys)
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
