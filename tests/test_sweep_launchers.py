"""The sweeps extra for real: a 2-trial Optuna study, 2 jobs in parallel under joblib and 2 through submitit
(the path submitit_slurm takes on a cluster), each on tiny demo data and ending with its report."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from trainer.cli import CONFIG_DIR
from trainer.reports.collect import OK, read_json
from trainer.utils.cpus import usable_cpus

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model=demo",
    "model.alpha=0.25",
    "dataset.image_size=32",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "dataset.train_per_class=12",
    "dataset.val_per_class=4",
    "dataset.num_workers=0",
    "export.enabled=false",
]


def sweep(tmp_path: Path, plugin: str, *overrides: str) -> tuple[Path, str]:
    """Run `train.py -m` on tiny demo data; returns the sweep folder and the console output."""
    pytest.importorskip(plugin, reason="needs the sweeps extra: pip install -e '.[sweeps]'")
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *TINY,
        *overrides,
        f"dataset.root={tmp_path / 'data'}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    done = subprocess.run(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:]
    return sweep_dir, done.stdout


def finished_runs(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "results.csv", newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row["status"] == OK]


@pytest.mark.slow
def test_optuna_sweep_keeps_its_study_in_sqlite(tmp_path: Path) -> None:
    sweep_dir, out = sweep(
        tmp_path,
        "hydra_plugins.hydra_optuna_sweeper",
        "experiment=optuna_lr_dropout_aug",
        "hydra.sweeper.n_trials=2",
    )
    import optuna

    storage = f"sqlite:///{tmp_path / 'multirun' / 'optuna.db'}"  # the preset's default, under the cwd
    study = optuna.load_study(study_name="lr_dropout_aug_demo_mobilenet_v2", storage=storage)
    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(values) == 2 and set(study.trials[0].params) == {
        "optim.lr",
        "model.dropout",
        "augment.random_erasing",
        "augment.auto_augment",
    }
    runs = finished_runs(sweep_dir)
    assert sorted(float(r["top1"]) / 100 for r in runs) == pytest.approx(sorted(values), abs=1e-4)
    report = (sweep_dir / "report.md").read_text(encoding="utf-8")
    assert "## Optuna study" in report and storage in report
    assert (
        "Optuna study lr_dropout_aug_demo_mobilenet_v2" in out and f"Report: {sweep_dir / 'report.md'}" in out
    )


@pytest.mark.slow
def test_joblib_runs_jobs_side_by_side_on_a_share_of_the_cores(tmp_path: Path) -> None:
    sweep_dir, out = sweep(
        tmp_path,
        "hydra_plugins.hydra_joblib_launcher",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "dataset.image_size=32,40",
    )
    runs = finished_runs(sweep_dir)
    assert sorted(r["resolution"] for r in runs) == ["32", "40"]
    threads = {read_json(sweep_dir / r["run"] / "metrics.json")["threads"] for r in runs}
    assert threads == {max(1, usable_cpus() // 2)}  # 2 jobs at once: half the cores each
    assert f"Sweep {sweep_dir}" in out and "Joblib.Parallel(n_jobs=2" in out


@pytest.mark.slow
def test_submitit_local_runs_the_jobs_the_way_slurm_would(tmp_path: Path) -> None:
    sweep_dir, out = sweep(
        tmp_path,
        "hydra_plugins.hydra_submitit_launcher",
        "hydra/launcher=submitit_local",
        "hydra.launcher.cpus_per_task=1",
        "dataset.image_size=32,40",
    )
    runs = finished_runs(sweep_dir)
    assert sorted(r["resolution"] for r in runs) == ["32", "40"]
    assert {read_json(sweep_dir / r["run"] / "metrics.json")["threads"] for r in runs} == {1}
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2
    assert f"Sweep {sweep_dir}" in out


def test_slurm_preset_asks_for_a_partition_and_one_gpu_per_job() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the sweeps extra")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.timeout_min) == (1, 1, 240)
