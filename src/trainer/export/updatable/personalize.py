"""What MLUpdateTask does on the phone, in numpy: the k-NN rule and the head's SGD step.

Both take embeddings computed by the exported feature extractor (see neuralnetwork_executor) and the
parameters read back from the saved .mlmodel, so the figures are those of the artifact the app ships.

Core ML semantics reproduced here (from Core ML's model specification):
- k-NN: squared Euclidean distance over the whole index, the k nearest vote with equal weight; an update
  appends the examples to the index. Ties between labels are broken towards the nearest neighbour (Core ML
  does not document its tie rule; with odd k and two labels there are none).
- head: softmax, categorical cross-entropy averaged over each mini-batch, plain SGD (momentum 0) with the
  stored learning rate, mini-batch size and epochs, examples shuffled every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.export.verify import softmax

# the head's re-fit without the held-out class: a fixed budget, independent of the on-device settings
HOLDOUT_FIT = {"learning_rate": 0.01, "batch_size": 32, "epochs": 30}


def knn_predict(index: np.ndarray, index_labels: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Labels the k-NN classifier predicts for `queries` (rows) given its index and the index's labels."""
    index64, queries64 = index.astype(np.float64), queries.astype(np.float64)
    distances = (
        (queries64**2).sum(1, keepdims=True) - 2.0 * queries64 @ index64.T + (index64**2).sum(1)[None, :]
    )
    k = min(k, len(index))
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    predictions = np.empty(len(queries), dtype=index_labels.dtype)
    for row, neighbours in enumerate(nearest):
        labels = index_labels[neighbours]
        values, counts = np.unique(labels, return_counts=True)
        tied = set(values[counts == counts.max()].tolist())
        predictions[row] = next(label for label in labels if label in tied)  # nearest first
    return predictions


def head_predict(weight: np.ndarray, bias: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Class indices the linear head predicts."""
    return (embeddings @ weight.T + bias).argmax(1)


def sgd_update(
    weight: np.ndarray,
    bias: np.ndarray,
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The head after an on-device update: SGD on mean cross-entropy of softmax(xW^T + b)."""
    w, b = weight.astype(np.float64).copy(), bias.astype(np.float64).copy()
    x, rng = embeddings.astype(np.float64), np.random.default_rng(seed)
    targets = np.eye(len(b))[labels]
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            grad = (softmax(x[batch] @ w.T + b) - targets[batch]) / len(batch)  # d(mean CE)/d(logits)
            w -= learning_rate * grad.T @ x[batch]
            b -= learning_rate * grad.sum(0)
    return w.astype(np.float32), b.astype(np.float32)


def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float | None:
    return float((predicted == labels).mean()) if len(labels) else None


@dataclass(frozen=True)
class Experiment:
    """Embeddings (from the exported extractor) and labels for one personalization experiment."""

    val: np.ndarray
    val_labels: np.ndarray
    update: np.ndarray  # `shots` training images of the held-out class
    holdout: int
    holdout_name: str


def _split(exp: Experiment, predicted_before: np.ndarray, predicted_after: np.ndarray) -> dict[str, Any]:
    held, others = exp.val_labels == exp.holdout, exp.val_labels != exp.holdout
    before = _accuracy(predicted_before[others], exp.val_labels[others])
    after = _accuracy(predicted_after[others], exp.val_labels[others])
    return {
        "holdout_class": exp.holdout_name,
        "update_examples": len(exp.update),
        "holdout_val_images": int(held.sum()),
        "other_val_images": int(others.sum()),
        "holdout_top1_before": _accuracy(predicted_before[held], exp.val_labels[held]),
        "holdout_top1_after": _accuracy(predicted_after[held], exp.val_labels[held]),
        "others_top1_before": before,
        "others_top1_after": after,
        "others_drop_points": None if before is None or after is None else round(100.0 * (before - after), 3),
    }


def knn_experiment(exp: Experiment, index: np.ndarray, index_labels: np.ndarray, k: int) -> dict[str, Any]:
    """Drop the held-out class from the seeded index, then add `shots` examples of it, as an update would."""
    keep = index_labels != exp.holdout
    before = knn_predict(index[keep], index_labels[keep], exp.val, k)
    grown = np.concatenate([index[keep], exp.update])
    grown_labels = np.concatenate([index_labels[keep], np.full(len(exp.update), exp.holdout)])
    return _split(exp, before, knn_predict(grown, grown_labels, exp.val, k))


def head_experiment(
    exp: Experiment,
    weight: np.ndarray,
    bias: np.ndarray,
    train: tuple[np.ndarray, np.ndarray],
    sgd: dict[str, Any],
) -> dict[str, Any]:
    """Hold the class out of the head's training, then run the on-device SGD update on `shots` examples.

    Holding out: the held-out class's row starts at zero (bias: the lowest) and the head is fitted again on
    `train`, the embeddings and labels of the other classes' training images (SGD, `HOLDOUT_FIT`), so the
    class is pushed down as if the head had never seen it. The backbone is not retrained.
    """
    w, b = weight.copy(), bias.copy()
    w[exp.holdout], b[exp.holdout] = 0.0, bias.min()
    w, b = sgd_update(w, b, train[0], train[1], **HOLDOUT_FIT)
    before = head_predict(w, b, exp.val)
    w, b = sgd_update(w, b, exp.update, np.full(len(exp.update), exp.holdout), **sgd)
    return _split(exp, before, head_predict(w, b, exp.val))
