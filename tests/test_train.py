"""End to end through train(): real images in, checkpoints, metrics.json and evaluation files out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.cli import compose_config
from trainer.data.data_config import data_config_from_record
from trainer.training.module import ClassifierModule
from trainer.training.run import train

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "model=demo",
    "model.alpha=0.25",
    "dataset.image_size=32",
    "dataset.batch_size=8",
    "export.enabled=false",
]
METRIC_KEYS = {
    "model",
    "alpha",
    "image_size",
    "num_classes",
    "classes",
    "val_top1",
    "val_top5",
    "val_loss",
    "params",
    "macs",
    "epochs",
    "train_images_per_sec",
    "train_seconds",
    "best_checkpoint",
    "val_top3",
}


def run(tmp_path: Path, *overrides: str) -> dict:
    cfg = compose_config([*FAST, *overrides], output_dir=str(tmp_path / "run"))
    return train(cfg)


def test_folder_run_writes_metrics_checkpoints_and_evaluation(tmp_path, tiny_folder):
    metrics = run(tmp_path, "dataset=folder", f"dataset.root={tiny_folder}", "trainer.max_epochs=2")
    run_dir = tmp_path / "run"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved) >= METRIC_KEYS and saved["val_top1"] == metrics["val_top1"]
    assert saved["classes"] == ["blue", "green", "red"] and saved["num_classes"] == 3
    assert saved["val_top5"] is None and saved["val_top3"] is None  # undefined for 3 classes
    assert 0 <= saved["val_top1"] <= 1 and saved["epochs"] == 2
    assert saved["macs"] > 0 and saved["params"] > 0 and saved["train_images_per_sec"] > 0
    assert Path(saved["best_checkpoint"]).name == "best.ckpt" and (run_dir / "checkpoints/last.ckpt").exists()
    assert (run_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    per_class = json.loads((run_dir / "per_class_accuracy.json").read_text())
    assert set(per_class["per_class_accuracy"]) == {"blue", "green", "red"}
    assert sum(map(sum, per_class["confusion_matrix"])) == 12
    ckpt = torch.load(saved["best_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["classes"] == saved["classes"]
    stored = data_config_from_record(ckpt["hyper_parameters"])  # resolved once at the start of the run
    assert stored.to_dict() == {
        "size": 32,
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "crop_mode": "center",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "resize": 36,
        "crop_fraction": 32 / 36,
    }
    module = ClassifierModule.load_from_checkpoint(saved["best_checkpoint"])  # Lightning's own reload
    assert module.classes == saved["classes"] and module.hparams.data_config == stored.to_dict()
    assert all(torch.equal(v, ckpt["state_dict"][k]) for k, v in module.state_dict().items())
    assert (run_dir / "csv" / "metrics.csv").exists()
    audit = json.loads((run_dir / "audit.json").read_text())
    assert audit["images"] == {"train": 36, "val": 12} and audit["leaked_val_images"] == []
    assert not list(run_dir.rglob("*.tmp*"))


def test_resume_from_last_checkpoint(tmp_path, tiny_folder):
    run(tmp_path, "dataset=folder", f"dataset.root={tiny_folder}", "trainer.max_epochs=1")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    metrics = run(
        tmp_path, "dataset=folder", f"dataset.root={tiny_folder}", "trainer.max_epochs=2", f"ckpt_path={last}"
    )
    assert metrics["epochs"] == 2


def test_freeze_then_unfreeze_with_frozen_batchnorm(tmp_path, tiny_folder):
    metrics = run(
        tmp_path,
        "dataset=folder",
        f"dataset.root={tiny_folder}",
        "trainer.max_epochs=2",
        "finetune.freeze_epochs=1",
        "finetune.freeze_bn=true",
        "optim=sgd",
        "augment=strong",
    )
    assert metrics["epochs"] == 2


def test_split_from_single_folder_and_top_k(tmp_path):
    from conftest import make_class_folder

    root = make_class_folder(tmp_path / "flat", {f"c{i}": 6 for i in range(6)}, size=40)
    metrics = run(
        tmp_path,
        "dataset=folder",
        f"dataset.root={root}",
        "trainer.max_epochs=1",
        "dataset.val_fraction=0.34",
    )
    assert metrics["val_images"] == 12 and metrics["val_top5"] is not None
    assert metrics["val_top5"] >= metrics["val_top3"] >= metrics["val_top1"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_cfg_job_prints_composed_config(tmp_path):
    out = _cli(
        "dataset=folder",
        "dataset.root=/photos",
        "model=mobilenet_v2",
        "model.alpha=0.75",
        "--cfg",
        "job",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "alpha: 0.75" in out.stdout and "root: /photos" in out.stdout and "lr:" in out.stdout


def test_bad_input_exits_with_one_clear_line(tmp_path):
    out = _cli("dataset=folder", f"dataset.root={tmp_path / 'missing'}", "trainer.max_epochs=1", cwd=tmp_path)
    assert out.returncode == 1
    assert "is not a folder" in out.stdout + out.stderr and "Traceback" not in out.stdout + out.stderr


@pytest.mark.slow
def test_default_job_runs_offline_on_demo_data(tmp_path):
    out = _cli(
        "trainer.max_epochs=1",
        "dataset.train_per_class=16",
        "dataset.val_per_class=4",
        "export.enabled=false",
        f"dataset.root={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "demo" and metrics["num_classes"] == 6
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()


@pytest.mark.slow
def test_second_run_into_one_folder_and_resume_at_another_size_are_refused(tmp_path, tiny_folder, caplog):
    """Poor: a second train.py into a run folder died on "dict contains fields not in fieldnames"; a resume
    at another dataset.image_size switched size silently; both printed "training from scratch"."""
    from trainer.record import CheckpointError

    folder = ("dataset=folder", f"dataset.root={tiny_folder}")
    run(tmp_path, *folder, "trainer.max_epochs=1")
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoints/\).*ckpt_path="):
        run(tmp_path, *folder, "trainer.max_epochs=1")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="dataset.image_size=32, this run has dataset.image_size=48"):
        run(
            tmp_path,
            "dataset=folder",
            f"dataset.root={tiny_folder}",
            "dataset.image_size=48",
            f"ckpt_path={last}",
        )
    caplog.clear()
    run(
        tmp_path, "dataset=folder", f"dataset.root={tiny_folder}", "trainer.max_epochs=2", f"ckpt_path={last}"
    )
    assert "from scratch" not in caplog.text
