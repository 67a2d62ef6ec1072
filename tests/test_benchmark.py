"""trainer-benchmark on tiny models: the documented command on a bare backbone (exported by the format table),
a train.py checkpoint, and an export folder made here with torch.onnx.export; and the report picking the
result up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainer.cli import CONFIG_DIR
from trainer.export.converters.torchscript import export_torchscript
from trainer.export.formats import FORMATS
from trainer.models import build_classifier, count_macs, count_params
from trainer.reports import build_report
from trainer.reports.benchmark import run_benchmark, time_predictor
from trainer.reports.collect import collect_runs

ROOT = Path(__file__).resolve().parents[1]
FAST = ["threads=1", "benchmark.runs=5", "benchmark.warmup=1"]
LATENCY_KEYS = {"latency_ms", "latency_p10_ms", "latency_p90_ms", "fps", "size_bytes", "path"}


pytestmark = pytest.mark.usefixtures("one_thread")


def benchmark_config(overrides: list[str]) -> DictConfig:
    """The composed `benchmark` config (train.yaml plus the benchmark keys), as the app sees it."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="benchmark", overrides=[*FAST, *overrides])


def test_documented_command_benchmarks_a_bare_backbone(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "benchmark.py"),
        "model=mobilenet_v1",
        "model.alpha=0.25",
        "model.num_classes=1000",
        "model.pretrained=false",
        "dataset.image_size=64",
        f"hydra.run.dir={out}",
        *FAST,
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "benchmark.json").read_text())
    assert (result["mode"], result["model"], result["alpha"], result["image_size"]) == (
        "backbone",
        "mobilenet_v1",
        0.25,
        64,
    )
    model = build_classifier(OmegaConf.create(result["model_config"]), 1000).model
    assert result["num_classes"] == 1000
    assert result["params"] == count_params(model)
    assert result["macs"] == count_macs(model, 64)
    assert list(result["runtimes"]) == ["pytorch_fp32", "torchscript_fp32", "onnx_fp32", "onnx_int8"]
    for name, figures in result["runtimes"].items():
        assert set(figures) == LATENCY_KEYS, name
        assert figures["latency_p10_ms"] <= figures["latency_ms"] <= figures["latency_p90_ms"]
    assert result["runtimes"]["onnx_int8"]["size_bytes"] < result["runtimes"]["onnx_fp32"]["size_bytes"]
    assert result["threads"] == 1 and result["runs"] == 5 and result["batch_size"] == 1
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu_model"]
    assert result["peak_rss_mb"] > 0 and result["errors"] == []
    assert "onnx_int8" in (out / "benchmark.log").read_text()
    onnx_file = Path(result["runtimes"]["onnx_int8"]["path"])  # written by the format table's own export:
    assert onnx_file.name == FORMATS["onnx"].file("int8")  # its file name, and its metadata
    props = {prop.key: prop.value for prop in onnx.load(str(onnx_file)).metadata_props}
    assert json.loads(props["labels"]) == [str(i) for i in range(1000)]
    assert json.loads(props["preprocess"])["size"] == 64


def make_run(run_dir: Path) -> nn.Module:
    """A finished train.py run of a tiny MobileNetV2: metrics.json and a checkpoint with its trainer_meta."""
    model_cfg = {"name": "mobilenet_v2", "impl": "torchvision", "alpha": 0.25, "pretrained": False}
    model_cfg |= {"dropout": 0.1, "drop_path": None}
    classes = ["a", "b", "c"]
    v2_cfg = {k: v for k, v in model_cfg.items() if k != "impl"}  # the checkpoint below is v1: `impl`
    v2_cfg["_target_"] = "trainer.models.families.TorchvisionFamily"
    model = build_classifier(v2_cfg, len(classes)).model.eval()
    (run_dir / "checkpoints").mkdir(parents=True)
    meta = {"config": {"model": model_cfg, "dataset": {"name": "demo"}}, "classes": classes, "image_size": 32}
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "trainer_meta": meta}, run_dir / "checkpoints" / "best.ckpt")
    metrics = {
        "model": "mobilenet_v2",
        "alpha": 0.25,
        "image_size": 32,
        "dataset": "demo",
        "num_classes": 3,
        "val_top1": 0.5,
        "params": count_params(model),
        "macs": count_macs(model, 32),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return model


def test_checkpoint_is_rebuilt_from_its_saved_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs" / "run"
    model = make_run(run_dir)
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    cfg = benchmark_config([f"ckpt={ckpt}", "benchmark.runtimes=[pytorch]", "dataset.image_size=99"])
    result = run_benchmark(cfg, tmp_path / "outputs" / "bench")
    assert result["mode"] == "checkpoint" and result["source_run"] == str(run_dir.resolve())
    assert (result["model"], result["alpha"], result["num_classes"], result["dataset"]) == (
        "mobilenet_v2",
        0.25,
        3,
        "demo",
    )
    assert result["image_size"] == 32  # the checkpoint's resolution, not the config's
    assert result["params"] == count_params(model)
    assert list(result["runtimes"]) == ["pytorch_fp32"]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def make_export(export: Path) -> None:
    """An export folder as export_all leaves it: ONNX and TorchScript files listed in manifest.json."""
    export.mkdir(parents=True)
    model, example = Tiny().eval(), torch.randn(1, 3, 32, 32)
    torch.onnx.export(model, (example,), str(export / "model.onnx"), input_names=["image"], dynamo=False)
    export_torchscript(model, example, export / "model_torchscript.pt")
    artifacts = [
        {"format": "onnx", "precision": "fp32", "kind": "classifier", "path": "model.onnx"},
        {"format": "torchscript", "precision": "fp32", "kind": "classifier", "path": "model_torchscript.pt"},
    ]
    if sys.platform != "darwin":  # Core ML runs on macOS only: elsewhere it must be skipped, not fail
        (export / "ImageClassifier_fp16.mlpackage").mkdir()
        artifacts.append({"format": "coreml", "precision": "fp16", "path": "ImageClassifier_fp16.mlpackage"})
    preprocess = {"resize": 32, "crop": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    manifest = {
        "classes": ["a", "b", "c"],
        "image_size": 32,
        "preprocess": preprocess,
        "artifacts": artifacts,
    }
    (export / "manifest.json").write_text(json.dumps(manifest))


def test_export_folder_is_timed_and_merged_into_its_runs_report_row(tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs" / "run"
    make_run(run_dir)
    make_export(run_dir / "export")
    bench_dir = tmp_path / "outputs" / "bench"
    result = run_benchmark(benchmark_config([f"artifacts={run_dir / 'export'}"]), bench_dir)
    assert result["mode"] == "artifacts" and result["errors"] == []
    assert sorted(result["runtimes"]) == ["onnx_fp32", "torchscript_fp32"]
    assert result["runtimes"]["onnx_fp32"]["size_bytes"] == (run_dir / "export" / "model.onnx").stat().st_size
    assert (result["model"], result["image_size"], result["num_classes"]) == ("mobilenet_v2", 32, 3)
    if sys.platform != "darwin":
        assert [s["runtime"] for s in result["skipped"]] == ["coreml_fp16"]

    assert [run.path.name for run in collect_runs(tmp_path / "outputs")] == ["run"]
    csv_text = build_report(tmp_path / "outputs").with_name("results.csv").read_text()
    header, row = csv_text.splitlines()
    assert "latency_ms_onnx_fp32" in header and "size_mb_torchscript_fp32" in header
    assert row.startswith("run,ok,mobilenet_v2,0.25,32")


def test_plain_folder_without_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    make_export(folder)
    (folder / "manifest.json").unlink()
    result = run_benchmark(benchmark_config([f"artifacts={folder}"]), tmp_path / "b")
    assert sorted(result["runtimes"]) == ["onnx_fp32", "torchscript_fp32"] and result["errors"] == []
    assert result["image_size"] == 32  # read from the ONNX graph, not the config's 64
    assert result["source_run"] is None and result["params"] is None


def test_bad_runtime_name_is_rejected(tmp_path: Path) -> None:
    cfg = benchmark_config(["model=demo", "dataset.image_size=32", "benchmark.runtimes=[tflite]"])
    with pytest.raises(ValueError, match="tflite"):
        run_benchmark(cfg, tmp_path)


def test_time_predictor_reports_spread_and_fps() -> None:
    def predict(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.001)  # at least 1 ms: far above the 0.001 ms the figures are rounded to
        return batch * 2

    figures = time_predictor(predict, torch.zeros(1, 3, 8, 8).numpy(), runs=7, warmup=2)
    assert figures["latency_p10_ms"] <= figures["latency_ms"] <= figures["latency_p90_ms"]
    assert figures["fps"] == pytest.approx(1000.0 / figures["latency_ms"], rel=0.01)
