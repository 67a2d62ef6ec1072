"""Every option of every config group composes, and every node in it with a `_target_` instantiates (and the
objects that take part in training are exercised a little: a model family builds, an optimizer steps its
schedule, a Trainer is built with the config's callbacks and loggers)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trainer.cli import CONFIG_DIR, compose_config
from trainer.models import build_classifier
from trainer.models.families import ModelFamily
from trainer.training.run import build_trainer

CONF = Path(CONFIG_DIR)
GROUPS = sorted(d.name for d in CONF.iterdir() if d.is_dir() and d.name != "hydra")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("[!_]*.yaml"))]
# What an option needs on the command line before it can be built here: a network for the by-name families,
# a folder for your own photos.
NEEDS = {
    ("model", "timm"): ["model.name=test_efficientnet"],
    ("model", "torchvision"): ["model.name=mobilenet_v3_small"],
    ("dataset", "folder"): ["dataset.root=PHOTOS"],
}
EXTRAS = {"MLFlowLogger": "mlflow", "TensorBoardLogger": "tensorboard"}  # pip install -e ".[loggers]"


def targets(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every config node with a `_target_` (instantiate builds what is nested in one)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
            return
        for key in node:
            yield from targets(node._get_node(key), f"{path}.{key}".lstrip("."))


def compose(group: str, option: str, tmp_path: Path) -> DictConfig:
    needs = [n.replace("PHOTOS", str(tmp_path)) for n in NEEDS.get((group, option), [])]
    overrides = [f"{group}={option}", *needs, "model.pretrained=false", "trainer.accelerator=cpu"]
    cfg = compose_config(overrides, output_dir=str(tmp_path / "run"))
    assert OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    return cfg


def exercise(path: str, obj: Any, cfg: DictConfig) -> None:
    """Use what was built the way the run does, at a tiny size."""
    if isinstance(obj, ModelFamily):
        obj.check()
        alpha = 0.25 if obj.supports_alpha() else None
        classifier = build_classifier({**OmegaConf.to_container(cfg.model), "alpha": alpha}, 3)
        assert classifier.head_parameters() and classifier.feature_parameters()
    elif path == "optim.optimizer":
        optimizer = obj([{"params": torch.nn.Linear(2, 3).parameters()}])
        scheduler = instantiate(cfg.optim.scheduler)(optimizer, total_steps=8, epochs=2)
        for _ in range(8):
            optimizer.step()
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr * cfg.optim.min_lr_ratio)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_instantiates(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose(group, option, tmp_path)
    built = 0
    for path, node in targets(cfg):
        if path == "trainer":
            continue  # built below the way a run builds it (precision auto, CPU fallbacks for GPU settings)
        extra = EXTRAS.get(str(node._target_).rsplit(".", 1)[-1])
        if extra and importlib.util.find_spec(extra) is None:
            continue  # an optional extra that is not installed here
        exercise(path, instantiate(node), cfg)
        built += 1
    assert built >= 5  # at least the model family, optimizer, scheduler and callbacks
    missing = [e for t, e in EXTRAS.items() if t in str(cfg) and importlib.util.find_spec(e) is None]
    if missing:
        pytest.skip(f"the Trainer is built with loggers that need {missing}")
    trainer, throughput, checkpoints = build_trainer(cfg, tmp_path / "run", enable_progress_bar=False)
    assert isinstance(trainer, L.Trainer) and throughput is not None and checkpoints.monitor == "val/top1"
