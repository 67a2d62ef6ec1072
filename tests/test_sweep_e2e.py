"""Sweeps: the experiment presets compose, and a real 2x2 multirun (alpha x resolution) on the demo data plus
a job that fails ends in a report.

The multirun is tiny on purpose (12 train images per class, one epoch, 32/48 px): it checks the plumbing
between train.py, Hydra's sweep folders, a checkpoint benchmark and the report, not accuracy.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from trainer.cli import CONFIG_DIR
from trainer.reports import build_report
from trainer.reports.benchmark import run_benchmark
from trainer.reports.collect import FAILED, OK

ROOT = Path(__file__).resolve().parents[1]
BAD_ALPHA_ERROR = "model.alpha=2.0 must be in (0, 1.4]"
# preset -> (model it selects, what its sweeper sweeps)
PRESETS = {
    "mobilenet_v1_width_sweep": ("mobilenet_v1", {"model.alpha": "1.0,0.75,0.5,0.25"}),
    "mobilenet_v1_resolution_sweep": ("mobilenet_v1", {"dataset.image_size": "224,192,160,128"}),
    "mobilenet_v1_full_vs_separable": (
        "mobilenet_v1",
        {"model.conv": "full,separable", "model.shallow": "false,true"},
    ),
    "mobilenet_v2_grid": ("mobilenet_v2", {"model.alpha": "1.4,1.0,0.75,0.5,0.35"}),
    "camera_scene_backbones": ("mobilenet_v2", {"model": "mobilenet_v2,efficientnet_b2,resnet50"}),
    "coreml_sizes": ("mobilenet_v2", {"model": "mobilenet_v2,squeezenet1_1,resnet50"}),
    "optuna_lr_dropout_aug": ("mobilenet_v2", {"optim.lr": "tag(log, interval(1e-4, 1e-2))"}),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_experiment_presets_compose(name: str) -> None:
    if name.startswith("optuna"):
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the sweeps extra")
    model, swept = PRESETS[name]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", [f"experiment={name}"], return_hydra_config=True)
    assert cfg.model.name == model
    params = cfg.hydra.sweeper.params
    assert {key: params[key] for key in swept} == swept


def test_sweep_then_report(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "model=demo",
        "model.alpha=0.25,0.5,2.0",  # 2.0 is out of range: those jobs fail
        "dataset.image_size=32,48",
        "trainer.max_epochs=1",
        "dataset.train_per_class=12",
        "dataset.val_per_class=4",
        "dataset.num_workers=0",
        f"dataset.root={tmp_path / 'data'}",
        "export.enabled=false",
        "threads=1",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]  # a failed job is logged; the sweep goes on
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == [
        "0_mobilenet_v2_a0.25_32px",
        "1_mobilenet_v2_a0.25_48px",
        "2_mobilenet_v2_a0.5_32px",
        "3_mobilenet_v2_a0.5_48px",
        "4_mobilenet_v2_a2.0_32px",
        "5_mobilenet_v2_a2.0_48px",
    ], done.stderr[-3000:]

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        ckpt = sweep / jobs[0] / "checkpoints" / "best.ckpt"
        cfg = compose("benchmark", [f"ckpt={ckpt}", "benchmark.runtimes=[pytorch]", "threads=1"])
    run_benchmark(cfg, tmp_path / "outputs" / "bench")  # outside the sweep: reported with `outputs` only

    report = build_report(sweep).read_text(encoding="utf-8")
    with open(sweep / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    ok = [r for r in rows if r["status"] == OK]
    failed = [r for r in rows if r["status"] == FAILED]
    assert [(r["alpha"], r["resolution"]) for r in ok] == [
        ("0.25", "32"),
        ("0.25", "48"),
        ("0.5", "32"),
        ("0.5", "48"),
    ]
    assert all(r["top1"] and r["mmacs"] and r["mparams"] and r["train_s"] for r in ok)
    assert float(ok[0]["mmacs"]) < float(ok[1]["mmacs"]) < float(ok[3]["mmacs"])
    assert ok[0]["pareto"] == "True"  # the cheapest finished run is always on the front
    assert len(failed) == 2 and all(r["alpha"] == "2.0" and BAD_ALPHA_ERROR in r["error"] for r in failed)
    assert BAD_ALPHA_ERROR in report.split("## Failed or unfinished runs")[1]
    assert (sweep / "top1_vs_mmacs.png").is_file()

    build_report(tmp_path)  # the sweep and the benchmark of its first job's checkpoint, together
    with open(tmp_path / "results.csv", newline="", encoding="utf-8") as handle:
        first = next(r for r in csv.DictReader(handle) if r["run"] == f"multirun/{jobs[0]}")
    assert float(first["latency_ms_pytorch_fp32"]) > 0
