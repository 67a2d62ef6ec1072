"""Hydra entry points: train.py and scripts/*.py at the repo root and the trainer-* console scripts call
these."""

from __future__ import annotations

import errno
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from trainer.export.settings import register_schema
from trainer.utils.signals import EXPORT_KEPT, Interrupted, interrupts_say, stop_on_sigterm

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
log = logging.getLogger(__name__)
trace = logging.getLogger("trace")  # not ours: the console shows it only from WARNING, the log file always
T = TypeVar("T")
register_schema()


def _exit_with_line(exc: BaseException, message: str, code: int) -> NoReturn:
    """One line on the console, the whole traceback in the run's log file only (a logger the console hides
    below WARNING: `trace`)."""
    trace.info("traceback of the error below", exc_info=exc)
    log.error("%s", message)
    sys.exit(code)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, MissingMandatoryValue):
        key = exc.full_key
        return f"the setting {key} has no value (???): give it on the command line, {key}=..."
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename or "the output"
        return f"no space left on the device writing {where}: free some space and run again"
    return str(exc)


def exit_on_user_error(job: Callable[[DictConfig], T], cfg: DictConfig) -> T | None:
    """Bad input (a setting, a file, a full disk) ends the command with one clear line and exit code 1; Ctrl-C
    and SIGTERM with one line and 130 / 143.

    In a multirun a failed job is logged (with its traceback, for the report) and the sweep goes on.
    """
    stop_on_sigterm()
    try:
        return job(cfg)
    except KeyboardInterrupt as exc:
        _exit_with_line(exc, "stopped by Ctrl-C (SIGINT)", 128 + signal.SIGINT)
    except Interrupted as exc:
        _exit_with_line(exc, str(exc), exc.code)
    except Exception as exc:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            log.exception("job failed: %s", exc)
            return None
        from lightning.fabric.utilities.exceptions import MisconfigurationException  # bad trainer.* values

        user_errors = ValueError | RuntimeError | OSError | MisconfigurationException | MissingMandatoryValue
        if cfg.get("debug") or not isinstance(exc, user_errors):
            raise
        _exit_with_line(exc, _one_line(exc), 1)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train(cfg: DictConfig) -> float | None:
    """Train (and export); returns val top-1 so Hydra sweepers (Optuna) can optimise it."""
    from trainer.training.run import train as run_training

    metrics = exit_on_user_error(run_training, cfg)
    return metrics.get("val_top1") if metrics else None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export_checkpoint")
def export(cfg: DictConfig) -> None:
    """Export a checkpoint without retraining; exits 1 if any format failed (the others are kept)."""
    from trainer.checks import SettingError, check_export
    from trainer.console.summary import artifact_table
    from trainer.data.data_config import data_config_from_record
    from trainer.export.manifest import MANIFEST_NAME, failure_message
    from trainer.record import export_trained, load_checkpoint
    from trainer.reports.run_report.val_outputs import reapply_confidence

    def job(cfg: DictConfig) -> dict:
        if OmegaConf.is_missing(cfg, "ckpt"):
            raise SettingError("scripts/export.py needs ckpt=PATH, a run's checkpoints/best.ckpt")
        settings = check_export(cfg.export)
        classifier, record = load_checkpoint(cfg.ckpt)
        run_dir = Path(cfg.ckpt).resolve().parents[1]
        out_dir = Path(cfg.out_dir) if cfg.out_dir else run_dir / "export"
        size = data_config_from_record(record).size
        confidence = reapply_confidence(classifier.model, classifier.head_name, size, run_dir)
        with interrupts_say("export", EXPORT_KEPT):
            manifest = export_trained(
                classifier, record, settings, out_dir, metrics=confidence, checkpoint=cfg.ckpt
            )
        log.info("%s", "\n".join([f"Exported to {out_dir}", *artifact_table(manifest)]))
        if manifest["errors"]:
            raise RuntimeError(failure_message(manifest, out_dir / MANIFEST_NAME))
        return manifest

    exit_on_user_error(job, cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="benchmark")
def benchmark(cfg: DictConfig) -> None:
    """Measure a backbone, checkpoint or export folder; exits 1 on a bad setting or path, or when a runtime
    failed."""
    from trainer.reports.benchmark import run_benchmark

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one INFO line per deduplicated int8 initializer
    result = exit_on_user_error(lambda cfg: run_benchmark(cfg, Path(cfg.paths.output_dir)), cfg)
    if result["errors"]:
        sys.exit(1)


def compose_config(overrides: list[str], output_dir: str | None = None) -> DictConfig:
    """The same composed config `train.py` would see, for scripts and tests that run outside @hydra.main."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    if output_dir is not None:
        cfg.paths.output_dir = output_dir
    return cfg
