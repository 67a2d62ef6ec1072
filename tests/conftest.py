"""Shared fixtures: real image files of every kind a photo folder holds, made in the test."""

from __future__ import annotations

import random
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"


def pytest_sessionstart(session: pytest.Session) -> None:
    """absl (the LiteRT converter's logging) binds its handler to the sys.stderr of the moment it is first
    imported: inside a test that is pytest's capture buffer, which the next in-process CLI test's Hydra
    logging setup closes (logging.config closes old handlers), and pytest then crashes on exit. Bind it to
    the process's real stderr before any test imports it."""
    try:
        from absl import logging as absl_logging
    except ImportError:  # the [mobile] extra is not installed
        return
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Scan verdicts go to a per-test cache so tests never see each other's results."""
    monkeypatch.setenv("TRAINER_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whichever tests ran (or were skipped) before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Two shared cores: torch's default two threads spin against other processes and run far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def class_image(label: int, size: int = 48, seed: int = 0) -> Image.Image:
    """An RGB image whose class is visible: a distinct hue per label, with noise."""
    rng = np.random.default_rng(seed)
    hue = np.array([[255, 40, 40], [40, 200, 40], [40, 40, 255], [230, 230, 40]][label % 4], dtype=np.float32)
    arr = np.clip(hue + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_class_folder(root: Path, classes: dict[str, int], size: int = 48) -> Path:
    """root/<class>/img_i.jpg with `classes[name]` images each.

    The images depend on the folder's name, so root/train and root/val never share a picture (the audit
    would rightly call that leakage).
    """
    base = zlib.crc32(root.name.encode())
    for label, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            class_image(label, size, seed=base + label * 1000 + i).save(folder / f"img_{i}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """A train/val class folder small enough to train on in seconds."""
    root = tmp_path / "photos"
    make_class_folder(root / "train", {"red": 12, "green": 12, "blue": 12})
    make_class_folder(root / "val", {"red": 4, "green": 4, "blue": 4})
    return root


def fit_with(cfg, run_dir: Path, callback, max_epochs: int, batches_only: bool = False):
    """Fit the classifier `cfg` describes, built as train.py builds it, with `callback` added (no final
    evaluation or export); the Classifier. `batches_only`: the train loader alone, no datamodule (as
    scripts/benchmark_throughput.py feeds batches)."""
    from trainer.training.run import build_run, build_trainer

    run = build_run(cfg)
    trainer, _, _ = build_trainer(cfg, run_dir, max_epochs=max_epochs, enable_progress_bar=False)
    trainer.callbacks.append(callback)
    if batches_only:
        trainer.fit(run.module, train_dataloaders=run.datamodule.train_dataloader())
    else:
        trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    return run.classifier
