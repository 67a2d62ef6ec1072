"""What a model costs on this CPU, for a bare backbone, a checkpoint or an export folder (trainer-benchmark,
scripts/benchmark.py; its config is conf/benchmark.yaml).

    python scripts/benchmark.py model=mobilenet_v1 model.alpha=0.25 model.num_classes=1000 \
        dataset.image_size=224
    python scripts/benchmark.py ckpt=outputs/<run>/checkpoints/best.ckpt
    python scripts/benchmark.py artifacts=outputs/<run>/export

Params and MACs at the resolution, then per runtime (PyTorch eager, TorchScript, ONNX Runtime fp32 and
int8) the batch-1 latency (median, p10, p90 of `benchmark.runs` calls after `benchmark.warmup`), frames per
second and file size, with the thread count and the machine. A bare backbone or checkpoint is exported to
TorchScript and ONNX first (int8 calibrated on random images: its latency and size are real, its accuracy is
not measured). Everything lands in `<run dir>/benchmark.json`, under the key names of metrics.json, which the
report merges into the row of the run whose checkpoint or export it measured (`source_run`). Peak RSS is the
whole process's (model build and exports included).

A bare backbone has `model.num_classes` classes (null: 1000) and is built without pretrained weights (they do
not change its cost).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from omegaconf import DictConfig
from torch import nn

from trainer.export.converters import onnx as onnx_format
from trainer.export.converters import torchscript as torchscript_format
from trainer.export.converters.onnx import export_onnx, onnx_predictor, quantize_int8
from trainer.export.converters.torchscript import export_torchscript, load_torchscript
from trainer.export.formats import RuntimeUnavailable
from trainer.export.manifest import record_errors, size_bytes
from trainer.export.predict import load_predictor
from trainer.export.verify import Predict, latency_ms, torch_predictor
from trainer.reports.benchmark_subjects import (
    Subject,
    artifacts_subject,
    backbone_subject,
    checkpoint_subject,
    find_source_run,
)
from trainer.reports.collect import BENCHMARK_NAME
from trainer.reports.machine import machine_info, peak_rss_mb
from trainer.reports.table import runtime_key
from trainer.training.threads import apply_cpu_threads
from trainer.utils.files import write_json

log = logging.getLogger(__name__)

RUNTIMES = ("pytorch", "torchscript", "onnx", "onnx_int8")
Candidate = tuple[str, Path | None, Callable[[], Predict]]  # runtime name, its file (None: eager), its loader


@dataclass
class Outcome:
    """Runtimes measured, skipped and failed, as benchmark.json lists them."""

    runtimes: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    def guard(self, name: str) -> AbstractContextManager[None]:
        """A runtime that fails to export, load or run is recorded; the others are still measured."""
        return record_errors(self.errors, "runtime", name)


def time_predictor(predict: Predict, sample: np.ndarray, runs: int, warmup: int) -> dict[str, float]:
    """Batch-1 latency of `predict` by the export's protocol (verify.latency_ms): median, p10 / p90 and FPS.

    All four come from the same timings, so p10 <= median <= p90 holds however noisy the machine is.
    """
    times: list[float] = []

    def timed(batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = predict(batch)
        times.append(time.perf_counter() - start)
        return out

    latency_ms(timed, sample, runs, warmup)
    measured = [t * 1000.0 for t in times[warmup:]]
    median = round(statistics.median(measured), 3)
    deciles = statistics.quantiles(measured, n=10, method="inclusive") if len(measured) > 1 else measured * 9
    return {
        "latency_ms": median,
        "latency_p10_ms": round(deciles[0], 3),
        "latency_p90_ms": round(deciles[-1], 3),
        "fps": round(1000.0 / median, 2) if median > 0 else None,
    }


def _export_runtimes(
    model: nn.Module,
    image_size: int,
    out_dir: Path,
    wanted: list[str],
    calibration_images: int,
    outcome: Outcome,
) -> list[Candidate]:
    """Write the wanted artifacts of `model` under `out_dir`; returns (runtime, file, loader) to time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, 3, image_size, image_size)
    threads = torch.get_num_threads()
    found: list[Candidate] = []
    if "pytorch" in wanted:
        found.append(("pytorch_fp32", None, lambda: torch_predictor(model)))
    if "torchscript" in wanted:
        with outcome.guard("torchscript_fp32"):
            path = out_dir / torchscript_format.FP32_NAME
            export_torchscript(model, example, path)
            found.append(("torchscript_fp32", path, lambda: torch_predictor(load_torchscript(path))))
    onnx_path, onnx_exported = out_dir / onnx_format.FP32_NAME, False
    if "onnx" in wanted or "onnx_int8" in wanted:
        with outcome.guard("onnx_fp32"):
            export_onnx(model, example, onnx_path, opset=None)
            onnx_exported = True
            if "onnx" in wanted:
                found.append(("onnx_fp32", onnx_path, lambda: onnx_predictor(onnx_path, threads)))
    if "onnx_int8" in wanted and not onnx_exported:
        outcome.skipped.append({"runtime": "onnx_int8", "reason": "the ONNX fp32 export failed"})
    elif "onnx_int8" in wanted:
        with outcome.guard("onnx_int8"):
            int8_path = out_dir / onnx_format.INT8_NAME
            generator = torch.Generator().manual_seed(0)
            images = torch.randn(calibration_images, 3, image_size, image_size, generator=generator).numpy()
            quantize_int8(onnx_path, int8_path, images)
            found.append(("onnx_int8", int8_path, lambda: onnx_predictor(int8_path, threads)))
    return found


def _artifact_runtimes(subject: Subject) -> list[Candidate]:
    """(runtime, file, loader) for each artifact, loaded as trainer-predict loads it."""
    return [
        (
            runtime_key(entry),
            entry["file"],
            lambda file=entry["file"]: load_predictor(file, subject.manifest)[0],
        )
        for entry in subject.artifacts
    ]


def _measure(
    candidates: list[Candidate],
    image_size: int,
    runs: int,
    warmup: int,
    outcome: Outcome,
) -> None:
    """Load and time each candidate runtime on one random image; file sizes beside the figures."""
    sample = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size), dtype=np.float32)
    for name, file, load in candidates:
        with outcome.guard(name):
            try:
                predict = load()
            except RuntimeUnavailable as exc:  # e.g. Core ML off macOS: not this artifact's fault
                outcome.skipped.append({"runtime": name, "reason": str(exc)})
                continue
            figures = time_predictor(predict, sample, runs, warmup)
            entry = {"path": str(file) if file else None, "size_bytes": size_bytes(file) if file else None}
            outcome.runtimes[name] = {**entry, **figures}
            log.info(
                "%s: %.3f ms median (p10 %.3f, p90 %.3f), %s fps",
                name,
                figures["latency_ms"],
                figures["latency_p10_ms"],
                figures["latency_p90_ms"],
                figures["fps"],
            )


def run_benchmark(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Measure what `cfg` names (artifacts, else ckpt, else the model config); writes benchmark.json."""
    apply_cpu_threads(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = cfg.benchmark
    runs, warmup = int(settings.runs), int(settings.warmup)
    if runs < 1 or warmup < 0:
        raise ValueError("benchmark.runs must be >= 1 and benchmark.warmup >= 0")
    unknown = sorted(set(settings.runtimes) - set(RUNTIMES))
    if unknown:
        raise ValueError(f"benchmark.runtimes: unknown {unknown}; choose from {list(RUNTIMES)}")
    source = cfg.get("artifacts") or cfg.get("ckpt")
    source_run = find_source_run(Path(source)) if source else None
    if cfg.get("artifacts"):
        subject = artifacts_subject(Path(cfg.artifacts), source_run, int(cfg.dataset.image_size))
    elif cfg.get("ckpt"):
        subject = checkpoint_subject(Path(cfg.ckpt))
    else:
        subject = backbone_subject(cfg)
    image_size = subject.figures["image_size"]
    outcome = Outcome()
    if subject.model is not None:
        candidates = _export_runtimes(
            subject.model,
            image_size,
            out_dir / "artifacts",
            list(settings.runtimes),
            int(settings.calibration_images),
            outcome,
        )
    else:
        candidates = _artifact_runtimes(subject)
    _measure(candidates, image_size, runs, warmup, outcome)
    result: dict[str, Any] = {
        "mode": subject.mode,
        "source": str(Path(source).resolve()) if source else None,
        "source_run": str(source_run) if source_run else None,
        **subject.figures,
        "batch_size": 1,
        "runs": runs,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "machine": machine_info(),
        "runtimes": outcome.runtimes,
        "skipped": outcome.skipped,
        "errors": outcome.errors,
        "peak_rss_mb": peak_rss_mb(),
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
    }
    write_json(out_dir / BENCHMARK_NAME, result)
    log.info("benchmark: %s", out_dir / BENCHMARK_NAME)
    return result
