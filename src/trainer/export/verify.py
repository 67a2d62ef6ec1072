"""Run artifacts on the val images and measure them against PyTorch: agreement, accuracy, CPU latency.

Every runtime (eager PyTorch, TorchScript, ONNX Runtime, Core ML on macOS) is wrapped as a `Predict`, a
function from a normalized (N, 3, S, S) float32 batch to an (N, K) float32 array, so one helper runs images
through any of them and one compares the results.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from trainer.data.data_config import DataConfig
from trainer.data.images import load_rgb
from trainer.data.transforms import eval_transform
from trainer.utils.stats import sign_test

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]

MIN_TOP1_AGREEMENT = 0.995  # fp32 artifacts must pick PyTorch's top-1 class on at least this share of images
FP32_RELATIVE_TOLERANCE = 1e-3  # ... and stay within this fraction of the largest |output| (at least 1)
# A quantized copy's top-1 drop over its limit counts where the sign test's p-value is below this.
SIGNIFICANCE = 0.05
MAX_CHANGED_LISTED = 200  # images whose answer a quantized copy changed, listed in the manifest
OWN_FIGURES = (
    "val_top1",
    "top1_agreement",
    "top1_agreement_vs_fp32",
    "top1_drop_vs_fp32",
    "top1_drop_vs_pytorch",
)


def load_inputs(paths: Sequence[str], data_config: DataConfig) -> tuple[np.ndarray, list[int], list[str]]:
    """Preprocess images into one (N, 3, S, S) float32 array, decoded and transformed as validation does.

    Returns the array, the indices of the paths that made it in, and one 'path: reason' line for each
    unreadable image (skipped rather than fatal: one bad val file must not cost the whole export).
    """
    preprocess = eval_transform(data_config)
    arrays, kept, unreadable = [], [], []
    for index, path in enumerate(paths):
        try:
            image = load_rgb(path, data_config.decode_min_side)
            arrays.append(np.asarray(preprocess(image), dtype=np.float32))
        except (OSError, ValueError, SyntaxError) as exc:
            log.warning("skipping unreadable image %s: %s", path, exc)
            unreadable.append(f"{path}: {exc}")
            continue
        kept.append(index)
    size = data_config.size
    batch = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.float32)
    return batch, kept, unreadable


def torch_predictor(module: Callable[[torch.Tensor], torch.Tensor]) -> Predict:
    """Predict with an eager, TorchScript or lite-interpreter module on CPU."""

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).float().numpy()

    return predict


def run_batches(predict: Predict, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Outputs of `predict` over all `inputs`, run `batch_size` at a time."""
    outputs = [predict(inputs[start : start + batch_size]) for start in range(0, len(inputs), batch_size)]
    if not outputs:
        return np.zeros((0, 0), np.float32)
    return np.concatenate([np.asarray(o, dtype=np.float32).reshape(len(o), -1) for o in outputs])


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, the probabilities Core ML's classifier output reports."""
    if not logits.size:
        return logits
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def top1(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of rows whose argmax is the label (None without images)."""
    return float((scores.argmax(1) == labels).mean()) if len(labels) else None


def lost_and_gained(reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The images a copy gets wrong that the `reference` got right (lost) and the reverse (gained), and the
    sign test's p-value of that drop. A drop of a photo or two on a small val set is chance
    (p >= SIGNIFICANCE): the gates and warnings on quantized copies do not count it against them."""
    was_right, is_right = reference.argmax(1) == labels, outputs.argmax(1) == labels
    lost, gained = int((was_right & ~is_right).sum()), int((~was_right & is_right).sum())
    return {"top1_images_lost_gained": [lost, gained], "top1_drop_p_value": round(sign_test(lost, gained), 4)}


def changed_answers(
    reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray, paths: Sequence[str]
) -> list[dict[str, Any]]:
    """The val images whose top-1 class differs between `reference` and `outputs` (at most
    MAX_CHANGED_LISTED): what report.html shows for each quantized copy."""
    changed = np.flatnonzero(reference.argmax(1) != outputs.argmax(1))[:MAX_CHANGED_LISTED]
    return [
        {"image": paths[i] if i < len(paths) else None, "label": int(labels[i]),
         "fp32": int(reference[i].argmax()), "this": int(outputs[i].argmax())}
        for i in changed
    ]  # fmt: skip


def agreement_gate(stats: dict[str, Any], min_agreement: float) -> dict[str, Any] | None:
    """A quantized copy's agreement gate: the share of val photos on which it picks fp32 PyTorch's class
    must be at least `min_agreement` (export.min_agreement). Top-1 alone hides a copy whose losses and gains
    cancel; agreement is how often the phone answers differently from the evaluation. The top-1 drop and
    its sign-test p are kept beside it (None: not a classifier, or nothing measured)."""
    agreement = stats.get("top1_agreement")
    if agreement is None:
        return None
    against = "_vs_pytorch" if stats.get("top1_drop_vs_pytorch") is not None else ""  # Core ML: no fp32 file
    return {
        "rule": f"top1_agreement >= {min_agreement}",
        "value": round(float(agreement), 4),
        "passed": bool(agreement >= min_agreement),
        "top1_drop": stats.get(f"top1_drop{against or '_vs_fp32'}"),
        "top1_drop_p_value": stats.get(f"top1_drop_p_value{against}"),
    }


def different_answers(check: dict[str, Any]) -> str:
    """The agreement gate in the words a user needs, with the top-1 sign test's view beside it."""
    share = 100 * (1 - check["value"])
    text = f"the phone gives a different answer than the evaluation on {share:.1f}% of photos"
    drop, p_value = check.get("top1_drop"), check.get("top1_drop_p_value")
    if drop is not None and p_value is not None:
        chance = "more than chance" if drop > 0 and p_value < SIGNIFICANCE else "within chance"
        text += f" (top-1 {0.0 - drop:+.2f} points vs fp32, {chance}: sign-test p {p_value})"
    return text


def drop_gate(
    metric: str, drop: float, limit: float, p_value: float | None, on_failure: str
) -> dict[str, Any]:
    """The gate on a top-1 drop of `metric` points: passed within `limit`, or with the sign test's `p_value`
    where the drop is chance (p >= SIGNIFICANCE). `on_failure` says what a failure is: error or warning."""
    check = {"rule": f"{metric} <= {limit}", "value": drop, "passed": drop <= limit}
    if p_value is not None:
        check["rule"] += f" or sign-test p >= {SIGNIFICANCE}"
        check.update(p_value=p_value, passed=check["passed"] or p_value >= SIGNIFICANCE)
    return {**check, "on_failure": on_failure}


def compare(reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """Agreement of `outputs` with the PyTorch `reference` (same kind: logits, probabilities or embeddings).

    With `labels` (a classifier) the top-1 agreement and accuracy; without (embeddings) the cosine similarity.
    """
    if not len(reference):
        return {"max_abs_diff": None}
    stats: dict[str, Any] = {"max_abs_diff": float(np.abs(reference - outputs).max())}
    if labels is None:
        norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(outputs, axis=1)
        cosine = (reference * outputs).sum(1) / np.maximum(norms, 1e-12)
        stats["min_cosine_similarity"] = float(cosine.min())
    else:
        stats["val_top1"] = top1(outputs, labels)
        stats["top1_agreement"] = float((reference.argmax(1) == outputs.argmax(1)).mean())
    return stats


def fp32_problems(name: str, stats: dict[str, Any], reference: np.ndarray) -> list[str]:
    """Why an fp32 artifact does not compute what PyTorch computes (empty when it does).

    Records the tolerance it applied in `stats`, so the manifest shows what "agrees" meant.
    """
    problems = []
    agreement = stats.get("top1_agreement")
    if agreement is not None and agreement < MIN_TOP1_AGREEMENT:
        problems.append(
            f"{name}: top-1 agrees with PyTorch on {agreement:.2%} of images (< {MIN_TOP1_AGREEMENT:.1%})"
        )
    if stats["max_abs_diff"] is not None:
        tolerance = FP32_RELATIVE_TOLERANCE * max(1.0, float(np.abs(reference).max()))
        stats["tolerance"] = tolerance
        if stats["max_abs_diff"] > tolerance:
            problems.append(f"{name}: max |output diff| {stats['max_abs_diff']:.3g} exceeds {tolerance:.3g}")
    return problems


def measured_metadata(
    model_metadata: dict[str, Any], stats: dict[str, Any], measured_by: str
) -> dict[str, Any]:
    """The metadata a verified artifact carries: its own val figures (an int8 copy must not repeat PyTorch's
    accuracy as its own), PyTorch's renamed `pytorch_val_*`, and the runtime that measured them."""
    own = {key: stats.get(key) for key in OWN_FIGURES}
    pytorch = {f"pytorch_{k}": v for k, v in model_metadata.items() if k.startswith("val_")}
    rest = {k: v for k, v in model_metadata.items() if not k.startswith("val_")}
    return {**rest, **pytorch, **{k: v for k, v in own.items() if v is not None}, "measured_by": measured_by}


def latency_ms(predict: Predict, sample: np.ndarray, runs: int, warmup: int) -> float:
    """Median wall time of one batch-1 call, in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        predict(sample)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predict(sample)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000.0, 3)


def evaluate(
    predict: Predict,
    inputs: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray | None,
    *,
    runs: int,
    warmup: int,
    threads: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Outputs on `inputs`, and the manifest figures: agreement with `reference` and batch-1 latency."""
    outputs = run_batches(predict, inputs)
    stats = compare(reference, outputs, labels)
    if len(inputs):
        stats["latency_ms"] = latency_ms(predict, inputs[:1], runs, warmup)
        stats["threads"] = threads
    return outputs, stats
