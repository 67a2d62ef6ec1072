"""What a model costs on this CPU, for a bare backbone, a checkpoint or an export folder (trainer-benchmark,
scripts/benchmark.py; its config is conf/benchmark.yaml).

    python scripts/benchmark.py model=mobilenet_v1 model.alpha=0.25 model.num_classes=1000 \
        dataset.image_size=224
    python scripts/benchmark.py ckpt=outputs/<run>/checkpoints/best.ckpt
    python scripts/benchmark.py artifacts=outputs/<run>/export

Params and MACs at the resolution, then per runtime (PyTorch eager, TorchScript, ONNX Runtime fp32 and
int8) the batch-1 latency (median, p10, p90 of `benchmark.runs` calls after `benchmark.warmup`), frames per
second and file size, with the thread count and the machine. A bare backbone or checkpoint is exported to
TorchScript and ONNX first, by the format table's own export (export.pipeline.export_formats, with the
config's `export` settings; int8 calibrated on random images: its latency and size are real, its accuracy is
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
from omegaconf import DictConfig, OmegaConf

from trainer.export.formats import FORMATS, RuntimeUnavailable
from trainer.export.job import ExportJob
from trainer.export.manifest import record_errors, size_bytes
from trainer.export.metadata import ArtifactMetadata
from trainer.export.pipeline import export_formats
from trainer.export.predict import load_predictor
from trainer.export.settings import ExportSettings
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

TIMED = {  # benchmark.runtimes -> the runtime it times (the artifact's runtime_key, `<format>_<precision>`)
    "pytorch": "pytorch_fp32",
    "torchscript": "torchscript_fp32",
    "onnx": "onnx_fp32",
    "onnx_int8": "onnx_int8",
}
RUNTIMES = tuple(TIMED)
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


def _export_job(subject: Subject, cfg: DictConfig, out_dir: Path, wanted: list[str]) -> ExportJob:
    """An export of the subject's model in the table's rows that `wanted` needs, with the config's export
    settings (no lite file). There are no val images, so nothing is verified (the benchmark measures cost, not
    accuracy), and int8 is calibrated on `benchmark.calibration_images` random images."""
    formats = [name for name in FORMATS if any(runtime.startswith(f"{name}_") for runtime in wanted)]
    chosen = {"formats": formats, "torchscript": {"lite": False}, "onnx": {"int8": "onnx_int8" in wanted}}
    settings = ExportSettings.from_config(OmegaConf.merge(cfg.export, chosen))
    data_config = subject.data_config
    assert subject.model is not None and data_config is not None  # a backbone or checkpoint subject
    size, count = data_config.size, int(cfg.benchmark.calibration_images)
    generator = torch.Generator().manual_seed(0)
    calibration = torch.randn(count, 3, size, size, generator=generator).numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    return ExportJob(
        model=subject.model,
        classes=subject.classes,
        data_config=data_config,
        out_dir=out_dir,
        settings=settings,
        inputs=np.zeros((0, 3, size, size), np.float32),
        labels=np.zeros(0, np.int64),
        reference=np.zeros((0, len(subject.classes)), np.float32),
        example=torch.randn(1, 3, size, size),
        model_metadata=ArtifactMetadata.build(subject.classes, data_config, {}, settings).to_dict(),
        read_calibration=lambda: calibration,
        threads=torch.get_num_threads(),
    )


def _export_runtimes(subject: Subject, cfg: DictConfig, out_dir: Path, outcome: Outcome) -> list[Candidate]:
    """Export the subject's model as trainer-export does (export_formats); returns the wanted runtimes to
    time, and lists the export's errors and skips in `outcome`."""
    wanted = [TIMED[name] for name in cfg.benchmark.runtimes]
    found: list[Candidate] = []
    if "pytorch_fp32" in wanted:
        model = subject.model
        found.append(("pytorch_fp32", None, lambda: torch_predictor(model)))
    if set(wanted) <= {"pytorch_fp32"}:
        return found  # nothing to export
    job = _export_job(subject, cfg, out_dir, wanted)
    export_formats(job)
    outcome.errors += [{"runtime": error["artifact"], "error": error["error"]} for error in job.errors]
    outcome.skipped += [{"runtime": skip["name"], "reason": skip["reason"]} for skip in job.skipped]
    entries = [{**entry, "file": out_dir / entry["path"]} for entry in job.artifacts]
    return found + _artifact_runtimes([entry for entry in entries if runtime_key(entry) in wanted], {})


def _artifact_runtimes(entries: list[dict[str, Any]], manifest: dict[str, Any]) -> list[Candidate]:
    """(runtime, file, loader) for each artifact entry (with its `file`), loaded as trainer-predict does."""
    return [
        (runtime_key(entry), entry["file"], lambda file=entry["file"]: load_predictor(file, manifest)[0])
        for entry in entries
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
        candidates = _export_runtimes(subject, cfg, out_dir / "artifacts", outcome)
    else:
        candidates = _artifact_runtimes(subject.artifacts, subject.manifest)
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
