"""trainer-report on hand-built run folders: a MobileNetV1 width sweep as Hydra and export_all leave it on
disk, with one job that crashed and one still running, plus a benchmark of one run's export."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainer.reports import build_report, main
from trainer.reports.collect import FAILED, INCOMPLETE, OK, collect_runs, log_error
from trainer.reports.quantized import pool_copies
from trainer.reports.table import pareto_flags

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# (alpha, MMACs, top-1): alpha 0.75 is dominated by 0.5 (fewer MACs, better top-1); the others form the front.
WIDTHS = [(1.0, 569.0, 0.70), (0.75, 325.0, 0.68), (0.5, 149.0, 0.69), (0.25, 41.0, 0.50)]
CRASH_LOG = """\
[2026-05-01 12:00:00,000][trainer.training.run][INFO] - Dataset imagenette: 10 classes, 9469 train / 3925 val
[2026-05-01 12:00:01,000][trainer.cli][ERROR] - training crashed
Traceback (most recent call last):
  File "/work/main/src/trainer/training/run.py", line 120, in train
    trainer.fit(module, datamodule=datamodule)
RuntimeError: DataLoader worker (pid 4242) is killed by signal: Killed.
"""
RUNNING_LOG = "[2026-05-01 12:00:00,000][trainer.training.run][INFO] - Dataset imagenette: 10 classes\n"


def write_config(run_dir: Path, alpha: float, image_size: int = 224, **model: Any) -> None:
    config = {
        "model": {"name": "mobilenet_v1", "alpha": alpha, "conv": "separable", "shallow": False, **model},
        "dataset": {"name": "imagenette", "image_size": image_size},
        "paths": {"output_dir": "${hydra:runtime.output_dir}"},  # unresolvable outside Hydra, as saved
    }
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))


def write_finished(run_dir: Path, alpha: float, mmacs: float, top1: float) -> None:
    """metrics.json and export/manifest.json as train.py and export_all write them."""
    write_config(run_dir, alpha)
    metrics = {
        "model": "mobilenet_v1",
        "alpha": alpha,
        "image_size": 224,
        "dataset": "imagenette",
        "num_classes": 10,
        "classes": [f"c{i}" for i in range(10)],
        "val_top1": top1,
        "val_top3": top1 + 0.1,
        "val_top5": top1 + 0.2,
        "val_loss": 1.0,
        "params": int(4.2e6 * alpha**2),
        "macs": int(mmacs * 1e6),
        "epochs": 10,
        "train_images_per_sec": 100.0,
        "train_seconds": 600.0,
        "best_checkpoint": str(run_dir / "checkpoints" / "best.ckpt"),
        "config_hash": "abc",
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    artifact = {"kind": "classifier", "sha256": "0" * 64, "top1_agreement": 1.0, "threads": 1}
    manifest = {
        "classes": metrics["classes"],
        "image_size": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "pytorch_latency_ms": 20.0 * alpha,
        "threads": 1,
        "artifacts": [
            artifact
            | {"format": "torchscript", "precision": "fp32", "path": "model_torchscript.pt"}
            | {"size_bytes": 17_000_000, "val_top1": top1, "latency_ms": 15.0 * alpha},
            artifact
            | {"format": "onnx", "precision": "fp32", "path": "model.onnx"}
            | {"size_bytes": 16_800_000, "val_top1": top1, "latency_ms": 10.0 * alpha},
            artifact
            | {"format": "onnx", "precision": "int8", "path": "model_int8.onnx"}
            | {"size_bytes": 4_300_000, "val_top1": top1 - 0.015, "latency_ms": 6.0 * alpha},
            artifact
            | {"format": "coreml", "precision": "fp16", "path": "ImageClassifier_fp16.mlpackage"}
            | {"size_bytes": 8_400_000, "val_top1": None, "latency_ms": None, "reason": "macOS only"},
        ],
        "errors": [],
    }
    (run_dir / "export").mkdir()
    (run_dir / "export" / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """multirun/<day>/<time>: four finished jobs, one crashed, one still running."""
    root = tmp_path / "multirun" / "2026-05-01" / "12-00-00"
    for num, (alpha, mmacs, top1) in enumerate(WIDTHS):
        write_finished(root / f"{num}_mobilenet_v1_a{alpha}_224px", alpha, mmacs, top1)
    crashed = root / "4_mobilenet_v1_a0.1_224px"
    write_config(crashed, 0.1)
    (crashed / "cli.log").write_text(CRASH_LOG)
    running = root / "5_mobilenet_v1_a0.2_224px"
    write_config(running, 0.2)
    (running / "cli.log").write_text(RUNNING_LOG)
    multirun = {"hydra": {"overrides": {"task": ["dataset=imagenette"]}, "sweeper": {"params": {"a": "1,2"}}}}
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_results_csv_has_a_row_per_job_with_the_comparison_columns(sweep: Path) -> None:
    build_report(sweep)
    rows = read_rows(sweep / "results.csv")
    assert [r["status"] for r in rows] == [OK] * 4 + [FAILED, INCOMPLETE]
    for column in (
        "backbone",
        "alpha",
        "resolution",
        "mmacs",
        "mparams",
        "top1",
        "top5",
        "latency_ms_pytorch_fp32",
        "latency_ms_torchscript_fp32",
        "latency_ms_onnx_fp32",
        "latency_ms_onnx_int8",
        "size_mb_onnx_fp32",
        "size_mb_onnx_int8",
        "size_mb_coreml_fp16",
        "int8_top1_drop",
        "train_s",
        "pareto",
        "error",
    ):
        assert column in rows[0], column
    first = rows[0]
    assert (first["backbone"], first["alpha"], first["resolution"]) == ("mobilenet_v1", "1.0", "224")
    assert float(first["mmacs"]) == 569.0
    assert float(first["top1"]) == pytest.approx(70.0)
    assert float(first["top5"]) == pytest.approx(90.0)
    assert float(first["int8_top1_drop"]) == pytest.approx(1.5)
    assert float(first["latency_ms_onnx_int8"]) == 6.0
    assert float(first["size_mb_onnx_int8"]) == 4.3
    assert "latency_ms_coreml_fp16" not in first  # Core ML was not timed on Linux: no empty column for it
    assert rows[4]["alpha"] == "0.1" and rows[4]["mmacs"] == ""  # identity from the failed job's config


def test_failed_job_is_listed_with_its_error_and_a_running_one_as_incomplete(sweep: Path) -> None:
    report = build_report(sweep).read_text(encoding="utf-8")
    rows = read_rows(sweep / "results.csv")
    error = "RuntimeError: DataLoader worker (pid 4242) is killed by signal: Killed."
    assert rows[4]["error"] == error
    assert rows[5]["error"] == ""
    section = report.split("## Failed or unfinished runs")[1]
    assert f"| 4_mobilenet_v1_a0.1_224px | failed | {error} |" in section
    assert "5_mobilenet_v1_a0.2_224px | incomplete | no metrics.json" in section
    assert "6 runs (4 ok, 1 failed, 1 incomplete)" in report
    assert "`dataset=imagenette`" in report and "`a=1,2`" in report


def test_pareto_front_flags(sweep: Path) -> None:
    build_report(sweep)
    flags = [r["pareto"] for r in read_rows(sweep / "results.csv")]
    assert flags == ["True", "False", "True", "True", "False", "False"]
    assert pareto_flags([(1.0, 50.0), (1.0, 50.0), (2.0, 40.0), (0.5, 10.0)]) == [True, True, False, True]


def test_plots_are_written_as_png_and_linked_from_the_report(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    for name in ("top1_vs_mmacs.png", "top1_vs_latency.png", "artifact_sizes.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC), name
        assert f"]({name})" in report
    assert not (sweep / "results.csv").exists()  # --out leaves the sweep folder alone


def test_single_run_and_a_plain_tree_of_runs(sweep: Path, tmp_path: Path) -> None:
    single = sweep / "2_mobilenet_v1_a0.5_224px"
    rows = read_rows(build_report(single).with_name("results.csv"))
    assert len(rows) == 1 and rows[0]["run"] == single.name and rows[0]["pareto"] == "True"

    outputs = tmp_path / "outputs"
    write_finished(outputs / "2026-05-01" / "10-00-00_imagenette_mobilenet_v1", 1.0, 569.0, 0.7)
    write_finished(outputs / "2026-05-02" / "09-00-00_imagenette_mobilenet_v1", 0.5, 149.0, 0.69)
    rows = read_rows(build_report(outputs).with_name("results.csv"))
    assert [r["run"] for r in rows] == [
        "2026-05-01/10-00-00_imagenette_mobilenet_v1",
        "2026-05-02/09-00-00_imagenette_mobilenet_v1",
    ]


def test_benchmark_of_a_runs_export_lands_in_that_runs_row(tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs" / "train"
    write_finished(run_dir, 1.0, 569.0, 0.7)
    bench_dir = tmp_path / "outputs" / "bench"
    write_config(bench_dir, 0.5)  # the benchmark app's own config: not the measured model
    measured = {"format": "onnx", "precision": "fp32", "size_bytes": 16_800_000, "latency_ms": 7.5}
    benchmark = {
        "mode": "artifacts",
        "source_run": str(run_dir),
        "model": "mobilenet_v1",
        "runtimes": {"onnx_fp32": measured},
    }
    (bench_dir / "benchmark.json").write_text(json.dumps(benchmark))
    standalone = tmp_path / "outputs" / "bench_backbone"
    write_config(standalone, 0.5)
    backbone = {"model": "mobilenet_v2", "alpha": 0.35, "image_size": 96, "macs": 5.9e6, "params": 1.7e6}
    backbone["runtimes"] = {"pytorch_fp32": measured}
    (standalone / "benchmark.json").write_text(json.dumps(backbone))

    rows = read_rows(build_report(tmp_path / "outputs").with_name("results.csv"))
    assert [(r["run"], r["status"]) for r in rows] == [("bench_backbone", "benchmark"), ("train", OK)]
    assert float(rows[1]["latency_ms_onnx_fp32"]) == 7.5  # the benchmark's figure replaces the export's
    assert float(rows[1]["latency_ms_onnx_int8"]) == 6.0  # ... and the export's others stay
    assert (rows[0]["backbone"], rows[0]["alpha"], rows[0]["resolution"]) == ("mobilenet_v2", "0.35", "96")
    assert rows[0]["pareto"] == "False"  # no top-1: never on the front


def test_log_error_reads_error_records_and_bare_tracebacks(tmp_path: Path) -> None:
    (tmp_path / "cli.log").write_text(
        "[2026-05-01 12:00:00,000][trainer.cli][INFO] - start\n"
        "[2026-05-01 12:00:01,000][trainer.cli][ERROR] - model.alpha=2.0 must be in (0, 1.4]\n"
    )
    assert log_error(tmp_path) == "model.alpha=2.0 must be in (0, 1.4]"
    (tmp_path / "cli.log").write_text("Traceback (most recent call last):\n  File 'x'\nKeyError: 'root'\n")
    assert log_error(tmp_path) == "KeyError: 'root'"
    (tmp_path / "cli.log").write_text(RUNNING_LOG)
    assert log_error(tmp_path) is None


def test_half_written_metrics_reads_as_unfinished(tmp_path: Path) -> None:
    write_config(tmp_path / "run", 1.0)
    (tmp_path / "run" / "metrics.json").write_text('{"model": "mobilenet_v1", "val_to')
    assert [run.status for run in collect_runs(tmp_path)] == [INCOMPLETE]


def test_no_runs_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no runs under" in capsys.readouterr().err


def add_int8_figures(run_dir: Path, photos: int, lost_gained: list[int], agreement: float) -> None:
    """The ONNX int8 entry's agreement gate and photos lost / gained, as the export writes them; the
    Core ML int8 entry measured against PyTorch (no Core ML fp32 file off macOS)."""
    path = run_dir / "export" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["val_images"] = photos
    gate = {"rule": "top1_agreement >= 0.95", "passed": agreement >= 0.95}
    for entry in manifest["artifacts"]:
        if entry["precision"] == "int8":
            entry |= {"top1_agreement": agreement, "agreement_gate": gate}
            entry["top1_images_lost_gained"] = lost_gained
    coreml = {"format": "coreml", "precision": "int8", "kind": "classifier", "top1_agreement": 0.99}
    coreml |= {"agreement_gate": gate | {"passed": True}, "top1_images_lost_gained_vs_pytorch": [0, 1]}
    manifest["artifacts"].append(coreml)
    path.write_text(json.dumps(manifest))


def test_compressed_copies_are_pooled_over_runs_gathered_by_links(tmp_path: Path) -> None:
    """Two runs on 150-photo sets, each losing a photo or two net: alone each is a 0.67-1.3 point drop, pooled
    the interval says what the suite can tell; the runs live elsewhere and are gathered by links."""
    elsewhere = tmp_path / "elsewhere"
    for name, lost_gained, agreement in (("a", [2, 0], 0.94), ("b", [3, 2], 0.98)):
        write_finished(elsewhere / name, 1.0, 569.0, 0.7)
        add_int8_figures(elsewhere / name, 150, lost_gained, agreement)
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in ("a", "b"):
        (suite / name).symlink_to(elsewhere / name, target_is_directory=True)

    runs = collect_runs(suite)
    assert [run.path.name for run in runs] == ["a", "b"]
    onnx, coreml = pool_copies(runs)
    assert (onnx.key, onnx.photos, onnx.lost, onnx.gained, onnx.gate_passed) == ("onnx_int8", 300, 5, 2, 1)
    assert onnx.drop_points == pytest.approx(1.0)
    low, high = onnx.drop_interval  # 7 discordant photos of 300: +-1.96 * sqrt(7 - 3**2 / 300) photos
    assert (low, high) == pytest.approx((1.0 - 1.7248, 1.0 + 1.7248), abs=1e-3)
    assert onnx.p_value == pytest.approx(29 / 128)  # P(at least 5 of 7 lost) under no difference
    assert (coreml.key, coreml.lost, coreml.gained) == ("coreml_int8", 0, 2)

    report = build_report(suite).read_text()
    row = "| onnx_int8 | 2 | 94.0% / 96.0% | 1 of 2 | 5 / 2 of 300 | +1.00 pts (-0.72 to +2.72) | 0.23 |"
    assert row in report
    assert "| coreml_int8 | 2 |" in report


def test_no_compressed_copies_no_section(sweep: Path) -> None:
    assert "Compressed copies" not in build_report(sweep).read_text()
