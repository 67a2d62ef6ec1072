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


META_KEYS = ("config", "classes")  # what rebuilding the model needs


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable, or was not written by trainer."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def read_checkpoint(path: str | Path, setting: str = "ckpt") -> dict[str, Any]:
    """Read a checkpoint written by trainer, never executing pickle code.

    `weights_only=True` is passed explicitly, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off; a file
    that is missing, truncated, not a checkpoint or carries code ends in one CheckpointError line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"{setting}={path}: no such file; give a run's checkpoints/last.ckpt or best.ckpt"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{setting}={path} is not a readable checkpoint, or holds code, which is never run "
            f"({_first_line(exc)})"
        ) from None
    meta = ckpt.get("trainer_meta") if isinstance(ckpt, dict) else None
    complete = (
        isinstance(meta, dict)
        and isinstance(ckpt.get("state_dict"), dict)
        and isinstance(meta.get("config"), dict)
        and isinstance(meta["config"].get("model"), dict)
        and all(key in meta for key in META_KEYS)
    )
    if not complete:
        raise CheckpointError(
            f"{setting}={path} was not written by trainer (no trainer_meta with {', '.join(META_KEYS)})"
        )
    return ckpt


def read_resume_checkpoint(path: str | Path, cfg: Any) -> dict[str, Any]:
    """The metadata of a checkpoint `ckpt_path=` can resume: full training state, the same model config."""
    ckpt = read_checkpoint(path, "ckpt_path")
    missing = [k for k in ("loops", "optimizer_states", "epoch") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"ckpt_path={path} cannot resume training (no {', '.join(missing)}): give checkpoints/last.ckpt"
        )
    meta = ckpt["trainer_meta"]
    saved = meta.get("config", {}).get("model", {})
    for key in ("name", "impl", "alpha"):
        if saved.get(key) != cfg.model.get(key):
            raise CheckpointError(
                f"ckpt_path={path} was trained with model.{key}={saved.get(key)!r}, this run has "
                f"model.{key}={cfg.model.get(key)!r}: resume with the run's own settings"
            )
    return meta


def load_checkpoint(path: str | Path) -> tuple[Backbone, dict[str, Any]]:
    """Rebuild the trained model from `path` (a best.ckpt/last.ckpt) and return it with the run's metadata."""
    ckpt = read_checkpoint(path)
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
    # Trained in channels_last and/or bf16 autocast or not, every format is made from fp32 NCHW weights.
    model = backbone.model.cpu().float().to(memory_format=torch.contiguous_format).eval()
    return export_all(
        model,
        classes=list(meta["classes"]),
        data_config=data_config,
        out_dir=Path(out_dir),
        cfg=export_cfg,
        calibration_paths=[p for p, _ in index.train],
        val_samples=index.val,
        metadata=metadata,
        headless=headless_copy(backbone)
        if export_cfg.get("headless") or export_cfg.get("updatable")
        else None,
        head=model.get_submodule(backbone.head_name),
        train_samples=index.train,
    )


def mai_score(top1: float, top3: float, runtime_s: float) -> float:
    """Mobile AI 2021 scene-detection score, 2^((top1-96) + (top3-99)) / runtime, in percent and seconds."""
    return 2 ** ((100 * top1 - 96) + (100 * top3 - 99)) / runtime_s
