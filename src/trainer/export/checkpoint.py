"""Export a trained model: straight after training, or later from a checkpoint alone (no retraining)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from trainer.data.data_config import data_config_from_meta
from trainer.data.index import DatasetIndex, build_index
from trainer.export.pipeline import export_all
from trainer.models import Backbone, build_backbone, headless_copy

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable, or was not written by trainer."""


def load_checkpoint(path: str | Path) -> tuple[Backbone, dict[str, Any]]:
    """Rebuild the trained model from `path` (a best.ckpt/last.ckpt) and return it with the run's metadata."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if "trainer_meta" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} was not written by trainer (no trainer_meta)")
    meta = ckpt["trainer_meta"]
    model_cfg = OmegaConf.create(meta["config"]["model"])
    model_cfg.pretrained = False  # the checkpoint holds every weight
    backbone = build_backbone(model_cfg, len(meta["classes"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    backbone.model.load_state_dict(state)
    backbone.model.eval()
    return backbone, meta


def export_trained(
    backbone: Backbone,
    meta: dict[str, Any],
    export_cfg: Any,
    out_dir: Path,
    index: DatasetIndex | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export `backbone` with everything the run knows: classes, the data config the run resolved (kept in
    the checkpoint: every input and the app's preprocessing follow it), val images, metrics."""
    config = OmegaConf.create(meta["config"])
    if index is None:  # from a checkpoint: the same dataset config finds the same images
        index = build_index(config.dataset)
    data_config = data_config_from_meta(meta)
    metadata = {
        "backbone": config.model.name,
        "alpha": config.model.get("alpha"),
        "dataset": index.name,
        "config_hash": (metrics or {}).get("config_hash"),
        **{k: v for k, v in (metrics or {}).items() if k.startswith("val_") and v is not None},
    }
    model = backbone.model.cpu().eval()
    return export_all(
        model,
        classes=list(meta["classes"]),
        data_config=data_config,
        out_dir=Path(out_dir),
        cfg=export_cfg,
        calibration_paths=[p for p, _ in index.train],
        val_samples=index.val,
        metadata=metadata,
        headless=headless_copy(backbone) if export_cfg.get("headless") else None,
    )


def mai_score(top1: float, top3: float, runtime_s: float) -> float:
    """Mobile AI 2021 scene-detection score, 2^((top1-96) + (top3-99)) / runtime, in percent and seconds."""
    return 2 ** ((100 * top1 - 96) + (100 * top3 - 99)) / runtime_s
