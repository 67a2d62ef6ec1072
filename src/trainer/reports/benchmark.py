"""trainer-benchmark: what a model costs on this CPU, for a bare backbone, a checkpoint or an export folder.

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

The config is train.yaml plus the keys below; a bare backbone has `model.num_classes` classes (null: 1000) and
is built without pretrained weights (they do not change its cost).
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import onnx
import onnxruntime as ort
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainer.cli import CONFIG_DIR, exit_on_user_error
from trainer.export.checkpoint import load_checkpoint
from trainer.export.manifest import MANIFEST_NAME, record_errors, size_bytes
from trainer.export.onnx import export_onnx, onnx_predictor, quantize_int8
from trainer.export.pipeline import ONNX_INT8_NAME, ONNX_NAME, TORCHSCRIPT_NAME
from trainer.export.predict import load_predictor
from trainer.export.torchscript import export_torchscript, load_torchscript
from trainer.export.verify import Predict, latency_ms, torch_predictor
from trainer.models import build_classifier, count_macs, count_params
from trainer.reports.collect import BENCHMARK_NAME, CONFIG_PATH, METRICS_NAME, read_config, read_json
from trainer.reports.table import runtime_key
from trainer.training.run import apply_cpu_threads
from trainer.utils.cpus import usable_cpus
from trainer.utils.files import write_json

log = logging.getLogger(__name__)

DEFAULT_NUM_CLASSES = 1000
ARTIFACT_SUFFIXES = {
    ".pt": "torchscript",
    ".ptl": "torchscript_lite",
    ".onnx": "onnx",
    ".mlpackage": "coreml",
}
RUNTIMES = ("pytorch", "torchscript", "onnx", "onnx_int8")
Candidate = tuple[str, Path | None, Callable[[], Predict]]  # runtime name, its file (None: eager), its loader

ConfigStore.instance().store(
    name="benchmark",
    node={
        "defaults": ["train", "_self_"],
        "ckpt": None,  # a Lightning checkpoint of train.py: model, classes and resolution come from it
        "artifacts": None,  # an export folder (manifest.json beside the files) or any folder of .onnx/.pt
        "model": {"num_classes": None},
        "benchmark": {
            "runs": 50,
            "warmup": 10,
            "runtimes": list(RUNTIMES),  # for a backbone or checkpoint; an export folder times what it holds
            "calibration_images": 8,
        },
        "task_name": "benchmark",
        "hydra": {"run": {"dir": "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}_benchmark"}},
    },
)


@dataclass
class Subject:
    """What is measured: identity and cost figures (metrics.json's keys), and either a model or artifacts."""

    mode: str  # backbone | checkpoint | artifacts
    figures: dict[str, Any]
    model: nn.Module | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # manifest-style entries with a `file`
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """Runtimes measured, skipped and failed, as benchmark.json lists them."""

    runtimes: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    def guard(self, name: str) -> AbstractContextManager[None]:
        """A runtime that fails to export, load or run is recorded; the others are still measured."""
        return record_errors(self.errors, "runtime", name)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else whatever platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where the latency figures were taken: they mean little without it."""
    return {
        "cpu_model": cpu_model(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cpus(),
    }


def peak_rss_mb() -> float | None:
    """The process's peak resident memory so far, in MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1e6 if sys.platform == "darwin" else 1e3), 1)


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


def find_source_run(path: Path) -> Path | None:
    """The training run a checkpoint (`<run>/checkpoints/x.ckpt`) or export (`<run>/export`) belongs to."""
    path = Path(path).resolve()
    for candidate in [path, *list(path.parents)[:2]]:
        if (candidate / METRICS_NAME).is_file() or (candidate / CONFIG_PATH).is_file():
            return candidate
    return None


def _model_figures(model_cfg: dict[str, Any], num_classes: int, image_size: int, model: nn.Module) -> dict:
    return {
        "model": model_cfg.get("name"),
        "alpha": model_cfg.get("alpha"),
        "image_size": image_size,
        "num_classes": num_classes,
        "params": count_params(model),
        "macs": count_macs(model, image_size),
        "model_config": model_cfg,
    }


def backbone_subject(cfg: DictConfig) -> Subject:
    """The configured backbone, untrained, with `model.num_classes` (default 1000) classes."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["pretrained"] = False
    num_classes = int(model_cfg.pop("num_classes", None) or DEFAULT_NUM_CLASSES)
    model = build_classifier(model_cfg, num_classes).model.eval()
    figures = _model_figures(model_cfg, num_classes, int(cfg.dataset.image_size), model)
    return Subject("backbone", figures, model=model)


def checkpoint_subject(path: Path) -> Subject:
    """The trained model of a train.py checkpoint, rebuilt from the config and classes saved in it."""
    classifier, record = load_checkpoint(path)
    model_cfg = {**record["config"]["model"], "pretrained": False}
    figures = _model_figures(model_cfg, len(record["classes"]), int(record["image_size"]), classifier.model)
    figures["dataset"] = (record["config"].get("dataset") or {}).get("name")
    return Subject("checkpoint", figures, model=classifier.model)


def _onnx_image_size(entries: list[dict[str, Any]]) -> int | None:
    """The input resolution fixed in the first ONNX file's graph (None without one)."""
    for entry in entries:
        if entry["file"].suffix == ".onnx":
            graph = onnx.load(str(entry["file"]), load_external_data=False).graph
            return graph.input[0].type.tensor_type.shape.dim[-1].dim_value or None
    return None


def artifacts_subject(folder: Path, source_run: Path | None, image_size: int) -> Subject:
    """The artifacts of an export folder (as its manifest lists them), or every model file in a plain folder.

    Identity and cost come from the run the folder belongs to (its metrics.json, or benchmark.json for a
    benchmark's own artifacts), then the manifest; the resolution from those, an ONNX graph, or `image_size`.
    """
    manifest = read_json(folder / MANIFEST_NAME)
    if manifest:
        entries = [{**e, "file": folder / e["path"]} for e in manifest.get("artifacts", [])]
    else:
        entries = [
            {
                "format": ARTIFACT_SUFFIXES[p.suffix],
                "precision": "int8" if "int8" in p.stem else "fp32",
                "file": p,
            }
            for p in sorted(folder.iterdir())
            if p.suffix in ARTIFACT_SUFFIXES
        ]
    if not entries:
        raise ValueError(f"{folder} holds no model files ({', '.join(ARTIFACT_SUFFIXES)})")
    metrics: dict[str, Any] = {}
    if source_run:
        metrics = read_json(source_run / METRICS_NAME) or read_json(source_run / BENCHMARK_NAME)
    metadata = manifest.get("metadata") or {}
    figures = {
        "model": metrics.get("model", metadata.get("backbone")),
        "alpha": metrics.get("alpha", metadata.get("alpha")),
        "image_size": int(
            manifest.get("image_size") or metrics.get("image_size") or _onnx_image_size(entries) or image_size
        ),
        "num_classes": len(manifest["classes"]) if manifest.get("classes") else metrics.get("num_classes"),
        "dataset": metrics.get("dataset", metadata.get("dataset")),
        "params": metrics.get("params"),
        "macs": metrics.get("macs"),
        "model_config": metrics.get("model_config")
        or (read_config(source_run).get("model") if source_run else None),
    }
    return Subject("artifacts", figures, artifacts=entries, manifest=manifest)


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
            path = out_dir / TORCHSCRIPT_NAME
            export_torchscript(model, example, path)
            found.append(("torchscript_fp32", path, lambda: torch_predictor(load_torchscript(path))))
    onnx_path, onnx_exported = out_dir / ONNX_NAME, False
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
            int8_path = out_dir / ONNX_INT8_NAME
            generator = torch.Generator().manual_seed(0)
            images = torch.randn(calibration_images, 3, image_size, image_size, generator=generator).numpy()
            quantize_int8(onnx_path, int8_path, images)
            found.append(("onnx_int8", int8_path, lambda: onnx_predictor(int8_path, threads)))
    return found


def _artifact_runtimes(subject: Subject, outcome: Outcome) -> list[Candidate]:
    """(runtime, file, loader) for each artifact, loaded as trainer-predict loads it (Core ML: macOS only)."""
    found = []
    for entry in subject.artifacts:
        name, file = runtime_key(entry), entry["file"]
        if file.suffix == ".mlpackage" and sys.platform != "darwin":
            outcome.skipped.append({"runtime": name, "reason": "Core ML models run only on macOS"})
            continue
        found.append((name, file, lambda file=file: load_predictor(file, subject.manifest)[0]))
    return found


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
            figures = time_predictor(load(), sample, runs, warmup)
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
        candidates = _artifact_runtimes(subject, outcome)
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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="benchmark")
def main(cfg: DictConfig) -> None:
    """Console entry point (trainer-benchmark); exits 1 on a bad setting or path, or when a runtime failed."""
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one INFO line per deduplicated int8 initializer
    result = exit_on_user_error(lambda cfg: run_benchmark(cfg, Path(cfg.paths.output_dir)), cfg)
    if result["errors"]:
        sys.exit(1)
