"""One training run from a composed config: data, classifier, fit, evaluation, metrics.json, export."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from trainer.checks import check_train_settings
from trainer.console.summary import run_summary
from trainer.data.audit import audit_dataset
from trainer.data.data_config import DataConfig
from trainer.data.datamodule import ImageDataModule
from trainer.data.index import DatasetIndex, build_index
from trainer.data.scan import drop_bad_images
from trainer.export.manifest import MANIFEST_NAME, failure_message
from trainer.models import Classifier, build_classifier, count_macs, count_params
from trainer.record import CheckpointError, export_trained, read_checkpoint
from trainer.reports.run_report.page import write_run_report
from trainer.reports.run_report.val_outputs import apply_confidence, val_outputs
from trainer.training.callbacks import (
    AtomicCheckpointIO,
    ThroughputMeter,
    evaluation_results,
    write_evaluation,
)
from trainer.training.guards import SaveOnInterrupt, StopOnNonFiniteLoss, claim_run_folder
from trainer.training.metrics import mai_score
from trainer.training.module import ClassifierModule, run_record
from trainer.training.speed import resolve_memory_format, resolve_precision
from trainer.training.threads import apply_cpu_threads
from trainer.utils.files import write_json
from trainer.utils.signals import Interrupted, interrupts_say

log = logging.getLogger(__name__)


def config_hash(cfg: DictConfig) -> str:
    """Stable hash of everything that shapes the model (paths excluded)."""
    keep = {k: cfg[k] for k in ("dataset", "model", "augment", "optim", "finetune", "seed") if k in cfg}
    text = json.dumps(OmegaConf.to_container(OmegaConf.create(keep), resolve=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _metric(values: dict[str, torch.Tensor], key: str) -> float | None:
    return float(values[key]) if key in values else None


def cpu_overrides(trainer_cfg: DictConfig) -> dict[str, Any]:
    """What a GPU setting becomes when `trainer.accelerator=cpu` (so `trainer=ddp` runs on CPU, over gloo).

    SyncBatchNorm and fp16 mixed precision exist only on GPUs; on CPU BatchNorm statistics stay per process
    and training runs in fp32.
    """
    if trainer_cfg.get("accelerator") != "cpu":
        return {}
    overrides: dict[str, Any] = {}
    if trainer_cfg.get("sync_batchnorm"):
        overrides["sync_batchnorm"] = False
    if str(trainer_cfg.get("precision")) in ("16-mixed", "16"):
        overrides["precision"] = "32-true"
    if overrides:
        log.info("On CPU: %s", ", ".join(f"trainer.{k}={v}" for k, v in overrides.items()))
    return overrides


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[L.Callback]:
    """The `callbacks` config group, instantiated in its order.

    An entry that builds None (EMA without finetune.ema_decay) is left out, and so is what Lightning refuses:
    a progress bar when the Trainer shows none, a learning-rate monitor without a logger.
    """
    shows_progress = cfg.trainer.get("enable_progress_bar", True)
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    return [
        c
        for c in callbacks
        if c is not None
        and (shows_progress or not isinstance(c, ProgressBar))
        and (has_logger or not isinstance(c, LearningRateMonitor))
    ]


@dataclass
class RunParts:
    """What a run trains, built from its config as train.py builds it."""

    index: DatasetIndex
    classifier: Classifier
    data_config: DataConfig  # the eval preprocessing every input and the export follow
    datamodule: ImageDataModule
    record: dict[str, Any]  # what the checkpoint keeps (run_record)
    module: ClassifierModule
    memory_format: torch.memory_format


def build_run(cfg: DictConfig, index: DatasetIndex | None = None) -> RunParts:
    """The run's objects from `cfg` (the dataset's `index` when already built and checked): used by
    training, scripts/benchmark_throughput.py and the tests, so they all train what train.py trains."""
    index = build_index(cfg.dataset) if index is None else index
    classifier = build_classifier(cfg.model, index.num_classes, restoring=bool(cfg.get("ckpt_path")))
    data_config = DataConfig.resolve(classifier.data_config, int(cfg.dataset.image_size))
    datamodule = ImageDataModule.from_config(index, data_config, cfg)
    record = run_record(cfg, index.classes, data_config)
    memory_format = resolve_memory_format(cfg.get("memory_format"), cfg.trainer)
    module = ClassifierModule(**record, classifier=classifier, memory_format=memory_format)
    return RunParts(index, classifier, data_config, datamodule, record, module, memory_format)


def build_trainer(
    cfg: DictConfig, run_dir: Path | str, **overrides: Any
) -> tuple[L.Trainer, ThroughputMeter | None, ModelCheckpoint]:
    """The Lightning Trainer of `cfg.trainer` (`overrides` win) writing to `run_dir`, with the config's
    callbacks and loggers and atomic checkpoint writes; also its throughput meter and checkpoint callback."""
    cfg = copy.deepcopy(cfg)  # the config as this Trainer runs it: callbacks and loggers read paths, trainer
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.trainer.merge_with(overrides)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    callbacks = build_callbacks(cfg, has_logger=bool(loggers))
    throughput = next((c for c in callbacks if isinstance(c, ThroughputMeter)), None)
    checkpoints = next((c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    if checkpoints is None:
        raise ValueError(
            "callbacks: a run needs a ModelCheckpoint with a monitor (callbacks.checkpoint) to keep its best"
        )
    settings = {"precision": resolve_precision(cfg.trainer), **cpu_overrides(cfg.trainer), **overrides}
    guards = [SaveOnInterrupt(Path(run_dir) / "checkpoints"), StopOnNonFiniteLoss()]  # not optional
    trainer = instantiate(
        cfg.trainer,
        callbacks=[*callbacks, *guards],
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        **settings,
    )
    return trainer, throughput, checkpoints


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the whole job described by `cfg`; returns (and writes) the run's metrics."""
    if rank_zero_only.rank != 0:  # DDP: the other processes repeat rank 0's lines; keep only their errors
        logging.getLogger("trainer").setLevel(logging.ERROR)
    resumed, settings = check_train_settings(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # rank 0 holds the folder until train() returns: a second train.py into it stops with one line
    run_lock = claim_run_folder(run_dir, resumed is not None) if rank_zero_only.rank == 0 else None  # noqa: F841
    L.seed_everything(cfg.seed, workers=True)
    apply_cpu_threads(cfg)

    index = build_index(cfg.dataset)
    if resumed is not None and list(resumed["classes"]) != index.classes:
        raise CheckpointError(
            f"ckpt_path={cfg.ckpt_path} was trained on classes {resumed['classes']}, "
            f"this dataset has {index.classes}: resume on the same dataset"
        )
    drop_bad_images(index, cfg.dataset.on_bad_image)
    audit = audit_dataset(index, int(cfg.dataset.image_size), cfg.dataset.on_leakage)
    if rank_zero_only.rank == 0:
        write_json(run_dir / "audit.json", audit)
    log.info(
        "Dataset %s: %d classes, %d train / %d val images",
        index.name,
        index.num_classes,
        len(index.train),
        len(index.val),
    )
    if settings is not None:  # a bad export setting fails now, not after training
        settings.on_device.check_data(settings.updatable, index.classes, [label for _, label in index.train])
    run = build_run(cfg, index)
    classifier, datamodule, record, module = run.classifier, run.datamodule, run.record, run.module
    image_size, memory_format = run.data_config.size, run.memory_format
    log.info("Eval preprocessing: %s", run.data_config.describe())

    trainer, throughput, checkpoints = build_trainer(cfg, run_dir)
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    except (KeyboardInterrupt, SystemExit, Interrupted):  # Lightning's ways out on SIGINT and SIGTERM
        saver = next(c for c in trainer.callbacks if isinstance(c, SaveOnInterrupt))
        if saver.signum is None:
            raise
        raise saver.interrupted() from None
    train_seconds = time.perf_counter() - started

    best = checkpoints.best_model_path
    saved = read_checkpoint(best)
    module.load_state_dict(saved["state_dict"])
    module.full_precision_eval = True  # metrics.json reports the fp32 model the export ships
    values = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    evaluation = evaluation_results(module)  # every DDP process takes part in the gather
    trainer.strategy.barrier("evaluated")
    if not trainer.is_global_zero:  # rank 0 alone writes the run's files, once the others are done
        return {"val_top1": _metric(values, "val/top1")}
    write_evaluation(evaluation, run_dir)
    model = module.model.cpu().eval()
    metrics: dict[str, Any] = {
        "model": cfg.model.name,
        "alpha": cfg.model.get("alpha"),
        "image_size": image_size,
        "dataset": index.name,
        "num_classes": index.num_classes,
        "classes": index.classes,
        "val_top1": _metric(values, "val/top1"),
        "val_top3": _metric(values, "val/top3"),
        "val_top5": _metric(values, "val/top5"),
        "val_loss": _metric(values, "val/loss"),
        "val_images": len(index.val),
        "val_images_evaluated": int(sum(map(sum, evaluation["confusion_matrix"]))),
        "processes": trainer.world_size,
        "train_images": len(index.train),
        "params": count_params(model),
        "macs": count_macs(model, image_size),
        "epochs": trainer.current_epoch,
        "best_epoch": saved["epoch"] + 1,
        "threads": torch.get_num_threads(),
        "train_images_per_sec": throughput.images_per_sec if throughput else None,
        "precision": str(trainer.precision),
        "memory_format": str(memory_format).removeprefix("torch."),
        "train_seconds": train_seconds,
        "best_checkpoint": str(Path(best).resolve()),
        "pretrained_tensors_loaded": classifier.loaded_tensors,
        "per_class_accuracy": evaluation["per_class_accuracy"],
        "config_hash": config_hash(cfg),
    }
    outputs = val_outputs(model, index.val, run.data_config)
    metrics.update(apply_confidence(model, classifier.head_name, outputs, image_size, run_dir))
    write_json(run_dir / "metrics.json", metrics)
    log.info("Trained: val top-1 %.4f (%s)", metrics["val_top1"], run_dir / "metrics.json")
    manifest = None
    if settings is not None:
        with interrupts_say("export", f"the model is trained: export it with scripts/export.py ckpt={best}"):
            manifest = export_trained(
                classifier, record, settings, run_dir / "export", index, metrics, checkpoint=best
            )
        log.info("Exported %d artifacts to %s", len(manifest["artifacts"]), run_dir / "export")
        metrics.update(export_summary(manifest, metrics, cfg.dataset.get("mai_score", False)))
        write_json(run_dir / "metrics.json", metrics)
    write_run_report(
        run_dir, metrics, index.classes, outputs, manifest, int(cfg.get("report_mistakes_per_class", 12))
    )
    log.info("%s", run_summary(metrics, run_dir, run_dir / "export", manifest))
    if manifest is not None and manifest["errors"]:
        raise ExportError(failure_message(manifest, run_dir / "export" / MANIFEST_NAME))
    return metrics


class ExportError(RuntimeError):
    """Some artifact failed; the checkpoint, metrics and the other artifacts are kept."""


def export_summary(manifest: dict[str, Any], metrics: dict[str, Any], with_mai_score: bool) -> dict[str, Any]:
    """What reports need from the export in metrics.json: errors, and the challenge score where asked."""
    summary: dict[str, Any] = {"export_manifest": "export/manifest.json", "export_errors": manifest["errors"]}
    if with_mai_score:
        timed = [
            a for a in manifest["artifacts"] if a.get("format") == "onnx" and a.get("precision") == "fp32"
        ]
        latency = timed[0].get("latency_ms") if timed else None
        summary["runtime_s"] = latency / 1000 if latency else None
        summary["runtime"] = "onnxruntime CPU fp32, batch 1, median" if latency else None
        top1, top3 = metrics["val_top1"], metrics["val_top3"]
        ok = latency and top1 is not None and top3 is not None
        summary["mai_score"] = mai_score(top1, top3, latency / 1000) if ok else None
    return summary
