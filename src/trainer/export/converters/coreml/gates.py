"""Core ML variants measured where Core ML does not run: the reference executor, accuracy gates, own metadata.

Every .mlpackage runs through `CoreMLExecutor` on the val images like the ONNX files run through ONNX Runtime,
so each variant carries its own val top-1, its top-1 agreement with PyTorch and its drop against the fp32
PyTorch model. The gates (Apple publishes MobileNetV2 at fp16 71.86, int8 71.78, 6-bit 70.89 ImageNet
top-1): fp16 must pick PyTorch's class on >= 99.5% of the images, 8-bit weights may lose <= 0.5 point and
6- or 8-bit palettes <= 1 point, unless the drop cannot be told from chance: on a small val set one image
is more than the limit (0.65 points of 153), so a drop fails only when a one-sided sign test over the
images the two models disagree on also says it is real (p < 0.05); every seed of every recipe in
docs/recipes.md tripped the bare limits by one to three photos. Other palette sizes are reported without a
gate. A disagreement where
PyTorch's own probabilities for the two classes are within FP16_TIE is a tie that fp16 rounding may break
either way: the fp16 gate counts only the other disagreements (the raw agreement is reported beside it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.export.converters.coreml.executor import CoreMLExecutor
from trainer.export.converters.coreml.executor.program import load_program
from trainer.export.converters.coreml.variants import WEIGHT_THRESHOLD, compressed_bits
from trainer.export.pixels import PixelNormalization
from trainer.export.verify import Predict, compare, drop_gate, lost_and_gained, run_batches

RUNTIME = "reference executor (torch ops, Core ML fp16 rounding)"
MIN_FP16_AGREEMENT = 0.995
FP16_TIE = 0.02  # probability gap under which PyTorch's top-1 and the fp16 choice are a tie
MAX_TOP1_DROP = {"int8": 0.5, "w8a8": 0.5, "palettize8": 1.0, "palettize6": 1.0}  # points vs fp32 PyTorch
# scales, zero points, look-up tables and blob headers on top of the compressed weights: a fixed cost per
# tensor, so largest for small models (measured 0.020 for MobileNetV2 alpha 0.35 int8 at 224 px)
RATIO_MARGIN = 0.03


def pixel_arrays(inputs: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the normalization of preprocessed (N, 3, S, S) inputs: the raw uint8 RGB pixels an app passes."""
    return PixelNormalization.of(mean, std).uint8_pixels(inputs)


def reference_predictor(
    package: Path, *, classes: Sequence[str] | None, mean: Sequence[float], std: Sequence[float]
) -> Predict:
    """Predict with the reference executor from normalized batches: probabilities in `classes` order, or
    embeddings. The package gets the raw pixels an app passes, so its own scale/bias/correction run too."""
    executor = CoreMLExecutor(package)
    if classes is not None and sorted(executor.classes or []) != sorted(classes):
        raise ValueError(f"{package}: class labels are {executor.classes}, expected {list(classes)}")
    if classes is None and len(executor.output_names) != 1:
        raise ValueError(f"{package}: an embedding model has one output, not {executor.output_names}")
    order = [executor.classes.index(c) for c in classes] if classes is not None else None

    def predict(batch: np.ndarray) -> np.ndarray:
        outputs = executor.run(pixel_arrays(batch, mean, std))
        if order is None:
            return outputs[executor.output_names[0]].reshape(len(batch), -1)
        return outputs[executor.probabilities_output][:, order]

    return predict


def measure(
    predict: Predict,
    inputs: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray | None,
    pytorch_top1: float | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Outputs on `inputs` and the figures: agreement with PyTorch, val top-1, its drop against PyTorch's
    (in points), and the executor's wall time per image (batched)."""
    start = time.perf_counter()
    outputs = run_batches(predict, inputs)
    elapsed = time.perf_counter() - start
    stats = compare(reference, outputs, labels)
    if labels is not None and len(inputs):
        rows = np.arange(len(reference))
        gap = reference[rows, reference.argmax(1)] - reference[rows, outputs.argmax(1)]
        stats["top1_agreement_beyond_ties"] = float((gap <= FP16_TIE).mean())
        stats.update({f"{k}_vs_pytorch": v for k, v in lost_and_gained(reference, outputs, labels).items()})
    if stats.get("val_top1") is not None and pytorch_top1 is not None:
        stats["top1_drop_vs_pytorch"] = round(100.0 * (pytorch_top1 - stats["val_top1"]), 3)
    stats["runtime"] = RUNTIME
    stats["executor_ms_per_image"] = round(1000.0 * elapsed / len(inputs), 3) if len(inputs) else None
    return outputs, stats


def gate(variant: str, stats: dict[str, Any]) -> dict[str, Any] | None:
    """The variant's accuracy gate with the measured value (None: no gate, or nothing measured)."""
    if variant in MAX_TOP1_DROP:  # a drop against fp32 PyTorch fails only where it is not chance
        drop = stats.get("top1_drop_vs_pytorch")
        p_value = stats.get("top1_drop_p_value_vs_pytorch")
        if drop is None:
            return None
        return drop_gate("top1_drop_vs_pytorch", drop, MAX_TOP1_DROP[variant], p_value, "error")
    metric = "top1_agreement_beyond_ties"
    value = stats.get(metric) if variant == "fp16" else None
    if value is None:
        return None
    limit = MIN_FP16_AGREEMENT
    return {"rule": f"{metric} >= {limit}", "value": value, "passed": value >= limit, "on_failure": "error"}


def gate_problem(name: str, check: dict[str, Any] | None) -> list[str]:
    """The failed check as one line with its figures (empty when it passed or there was none)."""
    if check is None or check["passed"]:
        return []
    p_value = f" (p {check['p_value']})" if "p_value" in check else ""
    return [f"{name}: failed check {check['rule']}: measured {check['value']}{p_value}"]


def weight_ratio_problems(
    package: Path, variant: str, ratio: float, kept_float: int = 0
) -> tuple[float, list[str]]:
    """The weight size (fraction of fp16) a compressed package should have given what it compressed, and
    the problems when its actual `ratio` is larger or weights it should have compressed stayed in fp16.

    coremltools compresses conv/linear weights of at least WEIGHT_THRESHOLD elements and leaves smaller
    ones (and biases) in fp16, so small models (e.g. alpha 0.35) rightly land above bits/16; so do the
    `kept_float` layers left float on purpose (export.int8.keep_float), whose weights are not counted as
    missed. The expected ratio is (compressed elements * bits/16 + fp16 elements) / all elements; scales,
    look-up tables and blob headers come on top (RATIO_MARGIN).
    """
    bits = compressed_bits(variant)
    if bits is None:
        raise ValueError(f"'{variant}' is not a weight-compression variant")
    compressed, plain, missed = 0, 0, []
    for op in load_program(package)[1].functions["main"].operations:
        if op.op_type not in ("conv", "linear"):
            continue
        for key in ("weight", "bias"):
            var = op.inputs.get(key)
            if var is None or var.op is None:
                continue
            elements = int(np.prod(var.shape))
            if var.op.op_type.startswith("constexpr_"):
                compressed += elements
            else:
                plain += elements
                if key == "weight" and elements >= WEIGHT_THRESHOLD:
                    missed.append(f"{op.name} ({elements} elements)")
    total = compressed + plain
    expected = (compressed * bits / 16 + plain) / total if total else 1.0
    problems = []
    if len(missed) > kept_float:
        problems.append(f"{variant}: weights over the compression threshold left in fp16: {missed}")
    if ratio > expected + RATIO_MARGIN:
        problems.append(
            f"{variant}: weights are {ratio:.3f}x the fp16 size, expected {expected:.3f}x (+{RATIO_MARGIN}) "
            f"from the {compressed} of {total} weight elements it compressed to {bits} bits"
        )
    return expected, problems
