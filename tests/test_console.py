"""The console: the demo job's output to a pipe is short, free of other libraries' INFO lines, and ends with a
summary that matches what the run wrote; plus the pieces (log policy, progress choice, artifact table)."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from trainer.console.logs import ConsoleFilter, ConsoleFormatter
from trainer.console.progress import EpochLines, progress_bar
from trainer.console.summary import artifact_table, run_summary

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 60
# What leaked before: converter internals, Lightning's info lines and advertisement, progress bars.
THIRD_PARTY_INFO = re.compile(
    r"coremltools|onnx_ir|onnxscript|torch\.onnx|Converting PyTorch|Running MIL|GPU available|litlogger|"
    r"Seed set|\[INFO\]|it/s"
)


def _record(name: str, level: int, message: str = "hello") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@pytest.mark.slow
def test_hydra_callbacks_load_before_tqdm() -> None:
    """ConsoleCallback turns coremltools' progress bars off through TQDM_DISABLE, which tqdm reads when it
    is imported: the Hydra callbacks of conf/train.yaml must import neither it nor torch (which imports it).
    The pooled int8 section of the report once imported export.verify, and every bar came back."""
    check = (
        "import sys, trainer.console.hydra_callback, trainer.reports.sweep_callback; "
        "print(sorted(m for m in ('tqdm', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_demo_job_output_is_short_and_ends_with_the_summary(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "trainer.max_epochs=2",
        "dataset.train_per_class=30",  # the demo job, shortened: its console is what is under test
        "dataset.val_per_class=10",
        f"dataset.root={tmp_path / 'data'}",
        f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = done.stdout
    assert done.returncode == 0, out[-3000:]
    lines = out.splitlines()
    assert len(lines) <= MAX_LINES, out
    assert "\r" not in out and not THIRD_PARTY_INFO.search(out), out
    assert "[py.warnings]" not in out and "[torch" not in out, out  # no warning the user cannot act on
    messages = [line for line in lines if not line.startswith("  ")]  # table rows may repeat cells
    assert len(messages) == len(set(messages)), out  # every message once
    assert [line for line in lines if line.startswith("epoch ")][-1].startswith("epoch 2/2: ")

    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    summary = out[out.index("Summary") :]
    assert "demo: 6 classes (checkerboard, dots," in summary and "180 train / 60 val images" in summary
    assert "mobilenet_v2, α=0.5, 64 px" in summary
    assert f"top-1 {100 * metrics['val_top1']:.1f}%, top-3 {100 * metrics['val_top3']:.1f}%" in summary
    assert f"(best epoch {metrics['best_epoch']} of 2)" in summary and "images/s" in summary
    rows = {line.split()[0]: line for line in lines if line.startswith("    ")}
    assert len(manifest["artifacts"]) >= 5 and not manifest["errors"]
    for entry in manifest["artifacts"]:
        assert "passed" in rows[entry["name"]], rows
    assert f"run folder {run_dir}" in summary and f"model card {run_dir / 'export' / 'README.md'}" in summary
    assert lines[-1] == f"  run report {run_dir / 'report.html'} (open in a browser)"
    log_file = next(run_dir.glob("*.log")).read_text()  # Hydra job log
    assert "[coremltools][INFO]" in log_file and "[lightning" in log_file  # the file keeps everything


def test_console_filter_shows_our_info_and_other_libraries_warnings() -> None:
    console = ConsoleFilter(own=["trainer"], hushed=["^Failed to load"])
    assert console.filter(_record("trainer.training.run", logging.INFO))
    assert not console.filter(_record("coremltools", logging.INFO))
    assert not console.filter(_record("trainer_other", logging.INFO))  # a prefix, not a package
    assert console.filter(_record("onnx_ir.passes", logging.WARNING))
    assert not console.filter(_record("coremltools", logging.WARNING, "Failed to load _MLModelProxy"))
    verbose = ConsoleFilter(own=["trainer"], verbose=True)
    assert verbose.filter(_record("coremltools", logging.DEBUG))
    formatter = ConsoleFormatter(own=["trainer"])
    assert formatter.format(_record("trainer.x", logging.INFO, "done")) == "done"
    assert formatter.format(_record("trainer.x", logging.WARNING, "hm")) == "WARNING: hm"
    assert formatter.format(_record("onnx", logging.ERROR, "bad")) == "ERROR [onnx]: bad"


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_is_a_bar_in_a_terminal_and_epoch_lines_elsewhere() -> None:
    assert isinstance(progress_bar(_Stream(tty=False)), EpochLines)
    assert isinstance(progress_bar(_Stream(tty=True)), RichProgressBar | TQDMProgressBar)


def test_summary_table_shows_failed_and_skipped_exports() -> None:
    manifest = {
        "artifacts": [
            {
                "name": "model.onnx",
                "format": "onnx",
                "precision": "fp32",
                "size_bytes": 3_000_000,
                "val_top1": 0.5,
                "top1_agreement": 1.0,
                "latency_ms": 0.4,
            },
            {
                "name": "model_int8.onnx",
                "format": "onnx",
                "precision": "int8",
                "size_bytes": 900_000,
                "val_top1": 0.25,
                "top1_agreement": 0.5,
                "latency_ms": 0.3,
            },
            {
                "name": "Model_fp16.mlpackage",
                "format": "coreml",
                "precision": "fp16",
                "size_bytes": 50_000,
                "reason": "Core ML runs models only on macOS",
            },
        ],
        "errors": [
            {"artifact": "onnx_int8", "error": "onnx_int8 agrees with fp32 on 50% of images"},
            {"artifact": "torchscript", "error": "RuntimeError: tracing failed"},
        ],
        "skipped": [{"name": "torchscript_lite", "reason": "the TorchScript export failed"}],
        "warnings": [],
        "handoff": ["labels.txt", "README.md"],
    }
    lines = artifact_table(manifest)
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["model.onnx"].endswith("passed") and "3.0 MB" in rows["model.onnx"]
    assert "FAILED: onnx_int8 agrees with fp32 on 50%" in rows["model_int8.onnx"]
    assert (
        "passed, not run here *" in rows["Model_fp16.mlpackage"] and "50 kB" in rows["Model_fp16.mlpackage"]
    )
    assert "FAILED: RuntimeError: tracing failed" in rows["torchscript"]
    assert "skipped: the TorchScript export failed" in rows["torchscript_lite"]
    assert "  * Core ML runs models only on macOS" in lines

    metrics = {
        "dataset": "d",
        "num_classes": 2,
        "classes": ["a", "b"],
        "model": "m",
        "alpha": None,
        "image_size": 32,
        "params": 10,
        "macs": 10,
        "val_top1": 0.5,
        "val_top3": None,
        "best_epoch": 1,
        "epochs": 1,
        "train_seconds": 2.0,
        "train_images_per_sec": 10.0,
    }
    text = run_summary(metrics, Path("/r"), Path("/r/export"), manifest)
    assert "m, 32 px" in text and "top-3 -" in text and "model card /r/export/README.md" in text
    assert "artifacts" not in run_summary(metrics, Path("/r"))  # export disabled: no table
