"""What the benchmark measures: a bare backbone (from the model config), a checkpoint (its model, classes
and resolution), or an export folder (its artifacts, with the figures of the run that made them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainer.data.data_config import DataConfig, data_config_from_record
from trainer.export.formats import suffix_formats
from trainer.export.manifest import MANIFEST_NAME
from trainer.models import build_classifier, count_macs, count_params
from trainer.record import load_checkpoint
from trainer.reports.collect import BENCHMARK_NAME, CONFIG_PATH, METRICS_NAME, read_config, read_json

log = logging.getLogger(__name__)

DEFAULT_NUM_CLASSES = 1000


@dataclass
class Subject:
    """What is measured: identity and cost figures (metrics.json's keys), and either a model (with the class
    names and eval preprocessing its export needs) or artifacts."""

    mode: str  # backbone | checkpoint | artifacts
    figures: dict[str, Any]
    model: nn.Module | None = None
    classes: list[str] = field(default_factory=list)
    data_config: DataConfig | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # manifest-style entries with a `file`
    manifest: dict[str, Any] = field(default_factory=dict)


def find_source_run(path: Path) -> Path | None:
    """The training run a checkpoint (`<run>/checkpoints/x.ckpt`) or export (`<run>/export`) belongs to."""
    path = Path(path).resolve()
    for candidate in [path, *list(path.parents)[:2]]:
        if (candidate / METRICS_NAME).is_file() or (candidate / CONFIG_PATH).is_file():
            return candidate
    return None


def _model_figures(model_cfg: dict[str, Any], num_classes: int, image_size: int, model: nn.Module) -> dict:
    return {
        "model": model_cfg.get("name"),
        "alpha": model_cfg.get("alpha"),
        "image_size": image_size,
        "num_classes": num_classes,
        "params": count_params(model),
        "macs": count_macs(model, image_size),
        "model_config": model_cfg,
    }


def backbone_subject(cfg: DictConfig) -> Subject:
    """The configured backbone, untrained, with `model.num_classes` (default 1000) classes."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["pretrained"] = False
    num_classes = int(model_cfg.pop("num_classes", None) or DEFAULT_NUM_CLASSES)
    classifier = build_classifier(model_cfg, num_classes)
    image_size = int(cfg.dataset.image_size)
    figures = _model_figures(model_cfg, num_classes, image_size, classifier.model.eval())
    data_config = DataConfig.resolve(classifier.data_config, image_size)  # what its pretrained weights imply
    classes = [str(i) for i in range(num_classes)]
    return Subject("backbone", figures, classifier.model, classes, data_config)


def checkpoint_subject(path: Path) -> Subject:
    """The trained model of a train.py checkpoint, rebuilt from the config and classes saved in it."""
    classifier, record = load_checkpoint(path)
    model_cfg = {**record["config"]["model"], "pretrained": False}
    figures = _model_figures(model_cfg, len(record["classes"]), int(record["image_size"]), classifier.model)
    figures["dataset"] = (record["config"].get("dataset") or {}).get("name")
    if record.get("data_config"):
        data_config = data_config_from_record(record)
    else:  # a record without one: what the backbone's preprocessing implies at the run's resolution
        data_config = DataConfig.resolve(classifier.data_config, int(record["image_size"]))
    return Subject("checkpoint", figures, classifier.model, list(record["classes"]), data_config)


def _onnx_image_size(entries: list[dict[str, Any]]) -> int | None:
    """The input resolution fixed in the first ONNX file's graph (None without one)."""
    for entry in entries:
        if entry["file"].suffix == ".onnx":
            graph = onnx.load(str(entry["file"]), load_external_data=False).graph
            return graph.input[0].type.tensor_type.shape.dim[-1].dim_value or None
    return None


def artifacts_subject(folder: Path, source_run: Path | None, image_size: int) -> Subject:
    """The artifacts of an export folder (as its manifest lists them), or every model file in a plain folder.

    Identity and cost come from the run the folder belongs to (its metrics.json, or benchmark.json for a
    benchmark's own artifacts), then the manifest; the resolution from those, an ONNX graph, or `image_size`.
    """
    manifest = read_json(folder / MANIFEST_NAME)
    suffixes = suffix_formats()
    if manifest:
        entries = [{**e, "file": folder / e["path"]} for e in manifest.get("artifacts", [])]
    else:
        entries = [
            {
                "format": suffixes[p.suffix],
                "precision": "int8" if "int8" in p.stem else "fp32",
                "file": p,
            }
            for p in sorted(folder.iterdir())
            if p.suffix in suffixes
        ]
    if not entries:
        raise ValueError(f"{folder} holds no model files ({', '.join(suffixes)})")
    metrics: dict[str, Any] = {}
    if source_run:
        metrics = read_json(source_run / METRICS_NAME) or read_json(source_run / BENCHMARK_NAME)
    metadata = manifest.get("metadata") or {}
    figures = {
        "model": metrics.get("model", metadata.get("backbone")),
        "alpha": metrics.get("alpha", metadata.get("alpha")),
        "image_size": int(
            manifest.get("image_size") or metrics.get("image_size") or _onnx_image_size(entries) or image_size
        ),
        "num_classes": len(manifest["classes"]) if manifest.get("classes") else metrics.get("num_classes"),
        "dataset": metrics.get("dataset", metadata.get("dataset")),
        "params": metrics.get("params"),
        "macs": metrics.get("macs"),
        "model_config": metrics.get("model_config")
        or (read_config(source_run).get("model") if source_run else None),
    }
    return Subject("artifacts", figures, artifacts=entries, manifest=manifest)
