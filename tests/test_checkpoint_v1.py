"""A checkpoint written before the module saved its hyperparameters (run description under `trainer_meta`)
still loads, exports and resumes.

tests/fixtures/checkpoint_v1.ckpt is last.ckpt of `train.py model=demo model.alpha=0.05 dataset.image_size=32
dataset.generate_size=40 dataset.train_per_class=8 dataset.val_per_class=2 dataset.batch_size=8
dataset.num_workers=0 trainer.max_epochs=1 trainer.precision=32-true optim=sgd optim.momentum=0
optim.nesterov=false export.enabled=false` (SGD without momentum keeps the file small: no optimizer buffers),
made by the code of commit 49ebd71.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from trainer.cli import compose_config
from trainer.data.sources.demo import DEMO_CLASSES
from trainer.record import load_checkpoint
from trainer.training.run import train

REPO = Path(__file__).resolve().parents[1]
V1 = REPO / "tests" / "fixtures" / "checkpoint_v1.ckpt"
V1_SETTINGS = [
    "model=demo",
    "model.alpha=0.05",
    "dataset.image_size=32",
    "dataset.generate_size=40",
    "dataset.train_per_class=8",
    "dataset.val_per_class=2",
    "dataset.batch_size=8",
    "dataset.num_workers=0",
    "trainer.precision=32-true",
    "optim=sgd",
    "optim.momentum=0",
    "optim.nesterov=false",
    "export.enabled=false",
]


def test_v1_checkpoint_rebuilds_the_trained_model() -> None:
    classifier, description = load_checkpoint(V1)
    saved = torch.load(V1, map_location="cpu", weights_only=True)["state_dict"]
    for name, tensor in classifier.model.state_dict().items():
        assert torch.equal(tensor, saved[f"model.{name}"]), name
    assert list(description["classes"]) == list(DEMO_CLASSES)
    assert description["data_config"]["size"] == 32
    with torch.no_grad():
        assert classifier.model(torch.zeros(1, 3, 32, 32)).shape == (1, len(DEMO_CLASSES))


def test_v1_checkpoint_exports_from_the_command_line(tmp_path: Path) -> None:
    """scripts/export.py rebuilds the demo data from the stored config (relative root, so under tmp_path)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/export.py"), f"ckpt={V1}", "export.formats=[torchscript]"]
        + [f"out_dir={tmp_path / 'export'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert not manifest["errors"]
    assert manifest["classes"] == list(DEMO_CLASSES)
    assert [a["format"] for a in manifest["artifacts"]] == ["torchscript"]


def test_v1_checkpoint_resumes_training(tmp_path: Path) -> None:
    overrides = [*V1_SETTINGS, f"dataset.root={tmp_path / 'data'}", "trainer.max_epochs=2", f"ckpt_path={V1}"]
    metrics = train(compose_config(overrides, output_dir=str(tmp_path / "run")))
    assert metrics["epochs"] == 2 and metrics["classes"] == list(DEMO_CLASSES)
    resumed = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 12  # 6 steps per epoch, the first 6 restored
