"""One row per run: identity (backbone, alpha, resolution), cost, accuracy, latency and size per runtime.

Units are the ones a comparison reads: millions of MACs and parameters, top-1 in percent, the int8 drop in
percentage points, latency in ms (CPU, batch 1, median), sizes in MB (10^6 bytes). A benchmark.json beside a
run supersedes the export manifest's latency for the runtimes it measured (it times more runs).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.export.formats import manifest_format_order
from trainer.reports.collect import BENCHMARK, OK, Run

LATENCY_PREFIX = "latency_ms_"
SIZE_PREFIX = "size_mb_"
IDENTITY_COLUMNS = ["run", "status", "backbone", "alpha", "resolution", "variant", "dataset"]
FIGURE_COLUMNS = ["mmacs", "mparams", "top1", "top5"]
TAIL_COLUMNS = ["int8_top1_drop", "train_s", "epochs", "pareto", "export_errors", "error"]
_FORMAT_ORDER = ["pytorch", *manifest_format_order()]  # eager first, then the export table's order
_PRECISION_ORDER = ["fp32", "fp16", "int8"]


@dataclass
class Table:
    columns: list[str]
    rows: list[dict[str, Any]]


def runtime_key(entry: dict[str, Any]) -> str:
    """`<format>_<precision>` (onnx_int8), prefixed by the kind for non-classifiers (embedding_onnx_fp32)."""
    key = f"{entry.get('format')}_{entry.get('precision')}"
    kind = entry.get("kind") or "classifier"
    return key if kind == "classifier" else f"{kind}_{key}"


def _runtime_rank(key: str) -> tuple[int, int, str]:
    """Order runtime columns eager, then as the format table, fp32 before fp16 before int8."""
    fmt, _, precision = key.rpartition("_")
    fmt_rank = _FORMAT_ORDER.index(fmt) if fmt in _FORMAT_ORDER else len(_FORMAT_ORDER)
    prec_rank = _PRECISION_ORDER.index(precision) if precision in _PRECISION_ORDER else len(_PRECISION_ORDER)
    return fmt_rank, prec_rank, key


def _scaled(value: Any, scale: float, digits: int) -> float | None:
    return None if value is None else round(float(value) * scale, digits)


def _latencies(run: Run) -> dict[str, float]:
    """Median batch-1 CPU latency (ms) per runtime: the manifest's, then the benchmark's on top."""
    found: dict[str, float] = {}
    if run.manifest.get("pytorch_latency_ms") is not None:
        found["pytorch_fp32"] = run.manifest["pytorch_latency_ms"]
    for entry in run.manifest.get("artifacts", []):
        if entry.get("latency_ms") is not None:
            found[runtime_key(entry)] = entry["latency_ms"]
    for key, entry in (run.benchmark.get("runtimes") or {}).items():
        if entry.get("latency_ms") is not None:
            found[key] = entry["latency_ms"]
    return {key: round(float(value), 3) for key, value in found.items()}


def _sizes(run: Run) -> dict[str, float]:
    """File size (MB) per artifact, from the manifest and the benchmark's artifacts."""
    sizes = {runtime_key(e): e.get("size_bytes") for e in run.manifest.get("artifacts", [])}
    for key, entry in (run.benchmark.get("runtimes") or {}).items():
        sizes[key] = sizes.get(key) or entry.get("size_bytes")
    return {key: round(size / 1e6, 3) for key, size in sizes.items() if size is not None}


def int8_top1_drop(manifest: dict[str, Any]) -> float | None:
    """ONNX fp32 val top-1 minus ONNX int8 val top-1, in percentage points (None without both)."""
    top1 = {
        e.get("precision"): e.get("val_top1")
        for e in manifest.get("artifacts", [])
        if e.get("format") == "onnx" and (e.get("kind") or "classifier") == "classifier"
    }
    if top1.get("fp32") is None or top1.get("int8") is None:
        return None
    return round(100.0 * (top1["fp32"] - top1["int8"]), 3)


def _variant(model: dict[str, Any]) -> str:
    """MobileNetV1's paper variants: 'full' convolutions and/or 'shallow'; empty for the standard network."""
    parts = []
    if model.get("conv") not in (None, "separable"):
        parts.append(str(model["conv"]))
    if model.get("shallow"):
        parts.append("shallow")
    return "+".join(parts)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def build_row(run: Run, root: Path) -> dict[str, Any]:
    """The row of one run; figures a run lacks (failed, export disabled) stay None."""
    metrics, bench = run.metrics, run.benchmark
    if run.status == BENCHMARK:  # its own config is the benchmark app's, not the measured model's
        model_cfg, dataset_cfg = bench.get("model_config") or {}, {}
    else:
        model_cfg, dataset_cfg = run.config.get("model") or {}, run.config.get("dataset") or {}
    errors = run.manifest.get("errors") or []
    relative = run.path.relative_to(root).as_posix() if run.path != root else run.path.name
    row: dict[str, Any] = {
        "run": relative,
        "status": run.status,
        "backbone": _first(metrics.get("model"), bench.get("model"), model_cfg.get("name")),
        "alpha": _first(metrics.get("alpha"), bench.get("alpha"), model_cfg.get("alpha")),
        "resolution": _first(
            metrics.get("image_size"), bench.get("image_size"), dataset_cfg.get("image_size")
        ),
        "variant": _variant(model_cfg),
        "dataset": _first(metrics.get("dataset"), bench.get("dataset"), dataset_cfg.get("name")),
        "mmacs": _scaled(_first(metrics.get("macs"), bench.get("macs")), 1e-6, 3),
        "mparams": _scaled(_first(metrics.get("params"), bench.get("params")), 1e-6, 4),
        "top1": _scaled(metrics.get("val_top1"), 100.0, 3),
        "top5": _scaled(metrics.get("val_top5"), 100.0, 3),
        "int8_top1_drop": int8_top1_drop(run.manifest),
        "train_s": _scaled(metrics.get("train_seconds"), 1.0, 1),
        "epochs": metrics.get("epochs"),
        "pareto": False,
        "export_errors": "; ".join(f"{e.get('artifact')}: {e.get('error')}" for e in errors) or None,
        "error": run.error,
    }
    row.update({LATENCY_PREFIX + key: value for key, value in _latencies(run).items()})
    row.update({SIZE_PREFIX + key: value for key, value in _sizes(run).items()})
    return row


def pareto_flags(points: list[tuple[float, float]]) -> list[bool]:
    """For (cost, accuracy) points: True where no other point is at most as costly and at least as accurate
    (and strictly better in one of the two)."""
    return [
        not any(
            c2 <= cost and a2 >= acc and (c2 < cost or a2 > acc)
            for j, (c2, a2) in enumerate(points)
            if j != i
        )
        for i, (cost, acc) in enumerate(points)
    ]


def build_table(runs: list[Run], root: Path) -> Table:
    """Rows for `runs` (found under `root`), Pareto flags set over the finished runs' MACs and top-1."""
    rows = [build_row(run, Path(root)) for run in runs]
    measured = [r for r in rows if r["status"] == OK and r["mmacs"] is not None and r["top1"] is not None]
    for row, flag in zip(measured, pareto_flags([(r["mmacs"], r["top1"]) for r in measured]), strict=True):
        row["pareto"] = flag
    latency, size = _runtime_columns(rows, LATENCY_PREFIX), _runtime_columns(rows, SIZE_PREFIX)
    return Table(IDENTITY_COLUMNS + FIGURE_COLUMNS + latency + size + TAIL_COLUMNS, rows)


def _runtime_columns(rows: list[dict[str, Any]], prefix: str) -> list[str]:
    keys = {key.removeprefix(prefix) for row in rows for key in row if key.startswith(prefix)}
    return [prefix + key for key in sorted(keys, key=_runtime_rank)]


def write_csv(table: Table, path: Path) -> Path:
    """results.csv: one row per run, every column (empty cells where a run has no figure)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=table.columns, restval="")
        writer.writeheader()
        for row in table.rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path
