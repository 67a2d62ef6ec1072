"""Export a trained model: straight after training, or later from a checkpoint alone (no retraining)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from trainer.data.data_config import data_config_from_record
from trainer.data.index import DatasetIndex, build_index
from trainer.export.keep import checkpoint_identity
from trainer.export.pipeline import export_all
from trainer.export.settings import ExportSettings, run_description
from trainer.models import Classifier, build_classifier, headless_copy
from trainer.models.families import MobileNetV1Family, TimmFamily, TorchvisionFamily
from trainer.reports.run_report.val_outputs import CONFIDENCE_KEYS
from trainer.utils.files import check_zip_sizes

log = logging.getLogger(__name__)


RECORD_KEYS = ("config", "classes")  # what rebuilding the model needs
RECORD = "hyper_parameters"  # Lightning's key: ClassifierModule saves the run's record as its hyperparameters
V1_RECORD = "trainer_meta"  # where checkpoints written before that kept it
V1_FAMILIES = {  # v1 model configs named their family by `impl`
    impl: f"{family.__module__}.{family.__qualname__}"
    for impl, family in (
        ("torchvision", TorchvisionFamily),
        ("timm", TimmFamily),
        ("mobilenet_v1", MobileNetV1Family),
    )
}


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
        check_zip_sizes(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{setting}={path} is not a readable checkpoint, or holds code, which is never run "
            f"({_first_line(exc)})"
        ) from None
    if isinstance(ckpt, dict) and RECORD not in ckpt and V1_RECORD in ckpt:
        ckpt[RECORD] = _upgrade_v1(ckpt.pop(V1_RECORD))
    record = ckpt.get(RECORD) if isinstance(ckpt, dict) else None
    complete = (
        isinstance(record, dict)
        and isinstance(ckpt.get("state_dict"), dict)
        and isinstance(record.get("config"), dict)
        and isinstance(record["config"].get("model"), dict)
        and all(key in record for key in RECORD_KEYS)
    )
    if not complete:
        raise CheckpointError(
            f"{setting}={path} was not written by trainer (no {RECORD} with {', '.join(RECORD_KEYS)})"
        )
    return ckpt


def _upgrade_v1(record: Any) -> Any:
    """A v1 run record (`trainer_meta`) as today's: the model config names its family by `_target_`."""
    model = record.get("config", {}).get("model") if isinstance(record, dict) else None
    if isinstance(model, dict) and "_target_" not in model and model.get("impl") in V1_FAMILIES:
        model["_target_"] = V1_FAMILIES[model.pop("impl")]
    return record


def read_resume_checkpoint(path: str | Path, cfg: Any) -> dict[str, Any]:
    """The run record of a checkpoint `ckpt_path=` can resume: full training state, the same model config."""
    ckpt = read_checkpoint(path, "ckpt_path")
    missing = [k for k in ("loops", "optimizer_states", "epoch") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"ckpt_path={path} cannot resume training (no {', '.join(missing)}): give checkpoints/last.ckpt"
        )
    record = ckpt[RECORD]
    saved_size = record["config"].get("dataset", {}).get("image_size")
    if saved_size is not None and saved_size != cfg.dataset.get("image_size"):
        raise CheckpointError(
            f"ckpt_path={path} was trained at dataset.image_size={saved_size}, this run has "
            f"dataset.image_size={cfg.dataset.get('image_size')}: resume with the run's own settings"
        )
    saved = record["config"]["model"]
    for key in ("name", "_target_", "alpha"):
        if saved.get(key) != cfg.model.get(key):
            raise CheckpointError(
                f"ckpt_path={path} was trained with model.{key}={saved.get(key)!r}, this run has "
                f"model.{key}={cfg.model.get(key)!r}: resume with the run's own settings"
            )
    return record


def load_checkpoint(path: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the trained model from `path` (a best.ckpt/last.ckpt) and return it with the run's record."""
    ckpt = read_checkpoint(path)
    record = ckpt[RECORD]
    model_cfg = {**record["config"]["model"], "pretrained": False}  # the checkpoint holds every weight
    classifier = build_classifier(model_cfg, len(record["classes"]), restoring=True)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    classifier.model.load_state_dict(state)
    classifier.model.eval()
    return classifier, record


def export_trained(
    classifier: Classifier,
    record: dict[str, Any],
    settings: ExportSettings,
    out_dir: Path,
    index: DatasetIndex | None = None,
    metrics: dict[str, Any] | None = None,
    checkpoint: Path | str | None = None,
) -> dict[str, Any]:
    """Export `classifier` with everything the run knows: classes, the data config the run resolved (kept in
    the checkpoint: every input and the app's preprocessing follow it), val images, metrics, and the
    `checkpoint` file it was loaded from (named in every manifest entry)."""
    config = OmegaConf.create(record["config"])
    if index is None:  # from a checkpoint: the same dataset config finds the same images
        index = build_index(config.dataset)
    data_config = data_config_from_record(record)
    pretrained = config.model.get("pretrained")
    provenance = {
        "backbone": config.model.name,
        "alpha": config.model.get("alpha"),
        "pretrained": pretrained if isinstance(pretrained, str) else bool(pretrained),
        "epochs": (metrics or {}).get("epochs"),
        "train_images": len(index.train),
        "image_size": data_config.size,
        "dataset": index.name,
        "config_hash": (metrics or {}).get("config_hash"),
        **{k: v for k, v in (metrics or {}).items() if k.startswith("val_") and v is not None},
        **{k: (metrics or {})[k] for k in CONFIDENCE_KEYS if (metrics or {}).get(k) is not None},
    }
    # Trained in channels_last and/or bf16 autocast or not, every format is made from fp32 NCHW weights.
    model = classifier.model.cpu().float().to(memory_format=torch.contiguous_format).eval()
    description = run_description(settings.description, pretrained)
    if description != settings.description:
        settings = dataclasses.replace(settings, description=description)
    return export_all(
        model,
        classes=list(record["classes"]),
        data_config=data_config,
        out_dir=Path(out_dir),
        cfg=settings,
        calibration_paths=[p for p, _ in index.train],
        val_samples=index.val,
        provenance=provenance,
        headless=headless_copy(classifier) if settings.headless or settings.updatable else None,
        head=model.get_submodule(classifier.head_name),
        train_samples=index.train,
        checkpoint=checkpoint_identity(checkpoint) if checkpoint else None,
    )
