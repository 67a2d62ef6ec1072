"""Hydra entry points; `train.py` at the repo root and the `trainer-train` console script call these."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train(cfg: DictConfig) -> float | None:
    """Train (and export); returns val top-1 so Hydra sweepers (Optuna) can optimise it."""
    from trainer.training.run import train as run_training

    try:
        metrics = run_training(cfg)
    except (ValueError, RuntimeError, OSError) as exc:
        if cfg.get("debug"):
            raise
        log.error("%s", exc)
        sys.exit(1)
    return metrics.get("val_top1")


def compose_config(overrides: list[str], output_dir: str | None = None) -> DictConfig:
    """The same composed config `train.py` would see, for scripts and tests that run outside @hydra.main."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    if output_dir is not None:
        cfg.paths.output_dir = output_dir
    return cfg
