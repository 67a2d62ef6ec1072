"""Temperature scaling on the val logits, expected calibration error, and the coverage / "not sure" rule.

One scalar T divides the logits (softmax(z / T)): it is fitted by LBFGS on the val split's negative
log-likelihood, so it never changes which class wins, only how sure the model says it is. The val split is
then both where T is fitted and where the calibrated ECE is read: on a few hundred photos one parameter
barely overfits, and the report and the card say so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

ECE_BINS = 15
THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # rows of the coverage table
PRECISIONS = (0.95, 0.99)  # the "not sure" thresholds the card offers
# T is kept in this range. Trained models fit T near 0.5-3; a model near chance fits T in the thousands, which
# flattens its scores below fp16's resolution, so Core ML (fp16 softmax) and int8 copies tie and pick other
# classes than PyTorch: the clip keeps every artifact's answers those of the model.
TEMPERATURE_RANGE = (0.05, 10.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in TEMPERATURE_RANGE that minimizes the NLL of softmax(logits / T) on (logits, labels); 1.0
    without images."""
    if not len(labels):
        return 1.0
    z, y = torch.from_numpy(logits).double(), torch.from_numpy(labels).long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.detach().exp().item(), *TEMPERATURE_RANGE))


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature), row-wise, in float64."""
    z = logits.astype(np.float64) / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins, and each bin's figures for the diagram."""
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows, ece = [], 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            accuracy, mean_conf = float(correct[inside].mean()), float(confidence[inside].mean())
            ece += inside.mean() * abs(accuracy - mean_conf)
            rows.append({"low": float(low), "high": float(high), "count": int(inside.sum()),
                         "accuracy": accuracy, "confidence": mean_conf})  # fmt: skip
    return {"ece": float(ece), "bins": rows}


def coverage(probs: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """At each confidence threshold t: the share of photos answered (top-1 probability >= t), and the
    accuracy on those."""
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    rows = []
    for t in THRESHOLDS:
        answered = confidence >= t
        accuracy = float(correct[answered].mean()) if answered.any() else None
        rows.append({"threshold": t, "answered": float(answered.mean()), "accuracy": accuracy})
    return rows


def precision_threshold(probs: np.ndarray, labels: np.ndarray, precision: float) -> float | None:
    """The lowest threshold t at which the photos answered (confidence >= t) are at least `precision`
    correct; None when no threshold reaches it."""
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    order = np.argsort(-confidence, kind="stable")
    running = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    good = np.flatnonzero(running >= precision)  # running[i]: accuracy of the i+1 most confident photos
    return float(confidence[order][good[-1]]) if len(good) else None


def calibrate(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Everything report.html and the model card say about confidence, fitted and measured on val."""
    temperature = fit_temperature(logits, labels)
    before, after = probabilities(logits), probabilities(logits, temperature)
    return {
        "temperature": temperature,
        "fitted_on": f"val split ({len(labels)} images), LBFGS on the negative log-likelihood",
        "before": reliability(before, labels),
        "after": reliability(after, labels),
        "coverage": coverage(after, labels),
        "not_sure_thresholds": {f"{p:.2f}": precision_threshold(after, labels, p) for p in PRECISIONS},
    }


def fold_temperature(model: nn.Module, head_name: str, temperature: float, example: torch.Tensor) -> bool:
    """Divide the head's last Linear/Conv2d weight and bias by `temperature` in place, so every format
    exported from `model` outputs logits / T (argmax unchanged). Checked on `example`: a head whose later
    layers are not positively homogeneous is put back and False returned (the card then carries T)."""
    layers = [m for m in model.get_submodule(head_name).modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not layers or temperature == 1.0:
        return bool(layers)
    last = layers[-1]
    with torch.no_grad():
        expected = model(example) / temperature
        saved = [p.detach().clone() for p in (last.weight, last.bias) if p is not None]
        for p in (last.weight, last.bias):
            if p is not None:
                p.div_(temperature)
        if torch.allclose(model(example), expected, rtol=1e-4, atol=1e-4):
            return True
        for p, value in zip([p for p in (last.weight, last.bias) if p is not None], saved, strict=True):
            p.copy_(value)
    return False
