"""`trainer=ddp` on CPU (gloo): two processes train together, rank 0 alone writes, val images count once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_class_folder

from trainer.cli import compose_config
from trainer.models import build_classifier

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_cpu_ddp_writes_once_and_counts_every_val_image_once(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    make_class_folder(root / "train", {"red": 8, "green": 8, "blue": 8}, size=40)
    make_class_folder(root / "val", {"red": 3, "green": 3, "blue": 3}, size=40)  # 9: odd, so padding shows
    weights = tmp_path / "backbone.pth"  # "pretrained" weights, so the linear probe runs (its head broadcast)
    demo = compose_config(["model=demo", "model.alpha=0.25"], output_dir=str(tmp_path / "weights"))
    torch.save(build_classifier(demo.model, 1000).model.state_dict(), weights)
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAINER_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_epochs=1",
            "dataset=folder",
            f"dataset.root={root}",
            "dataset.image_size=32",
            "dataset.batch_size=4",
            "model=demo",
            "model.alpha=0.25",
            f"model.pretrained={weights}",
            "export.formats=[torchscript]",
            "export.latency.runs=2",
            "export.latency.warmup=0",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    run_log = next(run_dir.glob("*.log")).read_text()  # Lightning's info lines: the log file, not the console
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in run_log
    assert log.count("Audit: ") == 1, "the second process does not repeat rank 0's lines"
    assert log.count("Head fitted by a linear probe on 24 train images") == 1
    assert log.count("Exported 1 artifacts") == 1, "rank 0 alone exports"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics["val_images"] == metrics["val_images_evaluated"] == 9
    per_class = json.loads((run_dir / "per_class_accuracy.json").read_text())
    assert sum(map(sum, per_class["confusion_matrix"])) == 9
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert manifest["errors"] == [] and [a["name"] for a in manifest["artifacts"]] == ["model_torchscript.pt"]
    assert not [p for p in (run_dir / "export").iterdir() if p.name.startswith(".")]
