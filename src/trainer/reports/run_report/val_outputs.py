"""The fp32 model's logits on every val image (in the index's order), and the confidence figures made from
them: what report.html and the "not sure" rule read. Run once after training, before the export."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.data.data_config import DataConfig
from trainer.export.verify import load_inputs, run_batches, torch_predictor
from trainer.reports.run_report.calibration import calibrate, fold_temperature
from trainer.utils.files import write_json

CHUNK = 64  # images preprocessed at a time: a large val split never sits in memory at once
CALIBRATION_NAME = "calibration.json"


@dataclass
class ValOutputs:
    """The val images that could be read, their labels, the model's logits (before temperature) on them."""

    paths: list[str]
    labels: np.ndarray
    logits: np.ndarray
    calibration: dict[str, Any]


def val_outputs(model: nn.Module, samples: list[tuple[str, int]], data_config: DataConfig) -> ValOutputs:
    """Run `model` over `samples` with the eval preprocessing; unreadable images are left out."""
    predict = torch_predictor(model.eval())
    paths, labels, logits = [], [], []
    for start in range(0, len(samples), CHUNK):
        chunk = samples[start : start + CHUNK]
        inputs, kept, _ = load_inputs([p for p, _ in chunk], data_config)
        paths += [chunk[i][0] for i in kept]
        labels += [chunk[i][1] for i in kept]
        if len(inputs):
            logits.append(run_batches(predict, inputs))
    scores = np.concatenate(logits) if logits else np.zeros((0, 0), np.float32)
    label_array = np.asarray(labels, dtype=np.int64)
    return ValOutputs(paths, label_array, scores, calibrate(scores, label_array))


def apply_confidence(
    model: nn.Module, head_name: str, outputs: ValOutputs, image_size: int, run_dir: Path
) -> dict[str, Any]:
    """Fold the fitted temperature into `model` (in place: every format exported from it then carries it),
    write calibration.json, and return the figures metrics.json and the export's provenance keep."""
    calibration = outputs.calibration
    example = torch.randn(2, 3, image_size, image_size)
    calibration["in_model"] = fold_temperature(model, head_name, calibration["temperature"], example)
    write_json(run_dir / CALIBRATION_NAME, calibration)
    return _figures(calibration)


def reapply_confidence(model: nn.Module, head_name: str, image_size: int, run_dir: Path) -> dict[str, Any]:
    """For an export from a checkpoint: fold the temperature its run fitted (run_dir/calibration.json) into
    `model` in place, and return the figures for the export's provenance ({} for runs without one)."""
    path = run_dir / CALIBRATION_NAME
    if not path.is_file():
        return {}
    calibration = json.loads(path.read_text())
    example = torch.randn(2, 3, image_size, image_size)
    calibration["in_model"] = fold_temperature(model, head_name, calibration["temperature"], example)
    return _figures(calibration)


def _figures(calibration: dict[str, Any]) -> dict[str, Any]:
    thresholds = calibration["not_sure_thresholds"]
    return {
        "temperature": round(calibration["temperature"], 5),
        "temperature_in_model": calibration["in_model"],
        "ece_before_temperature": round(calibration["before"]["ece"], 5),
        "ece_after_temperature": round(calibration["after"]["ece"], 5),
        "not_sure_below_95": thresholds["0.95"],
        "not_sure_below_99": thresholds["0.99"],
    }


CONFIDENCE_KEYS = ("temperature", "temperature_in_model", "not_sure_below_95", "not_sure_below_99")
