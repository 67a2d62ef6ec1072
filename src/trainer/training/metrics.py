"""Scores of a trained classifier: torchmetrics top-k accuracy during training, the MAI challenge score after
export."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

TOP_K = (1, 3, 5)


def topk_metrics(num_classes: int) -> MetricCollection:
    """Top-1 always; top-k only where there are more than k classes (else it is trivially 1.0)."""
    metrics = {
        f"top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
        for k in TOP_K
        if k == 1 or num_classes > k
    }
    return MetricCollection(metrics, compute_groups=False)  # groups would merge top-3 and top-5 states


def mai_score(top1: float, top3: float, runtime_s: float) -> float:
    """Mobile AI 2021 scene-detection score, 2^((top1-96) + (top3-99)) / runtime, in percent and seconds."""
    return 2 ** ((100 * top1 - 96) + (100 * top3 - 99)) / runtime_s
