"""The report's PNG plots: accuracy against compute and latency (Pareto front marked), and artifact sizes.

Drawn on bare matplotlib Figures (no pyplot): no GUI backend, no global figure state, safe in any process.
Each function returns the PNG's path, or None when no run has the figures it plots.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from trainer.reports.collect import OK
from trainer.reports.table import LATENCY_PREFIX, SIZE_PREFIX, Table

MAX_POINT_LABELS = 24  # above this many points, labels would hide the plot
DPI = 120


LABEL_FIELDS = ("backbone", "alpha", "resolution", "variant")


def run_label(row: dict[str, Any], fields: Sequence[str] = LABEL_FIELDS) -> str:
    """Short name of a run from `fields` of its row: backbone, alpha, resolution, variant."""
    formats = {"backbone": "{}", "alpha": "α{}", "resolution": "{}px", "variant": "{}"}
    return " ".join(formats[f].format(row[f]) for f in fields if row.get(f) not in (None, ""))


def _point_labeler(rows: list[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
    """Labels for points that name only what differs between `rows` (α0.5, or 160px, or the backbone)."""
    varying = [f for f in LABEL_FIELDS if len({r.get(f) for r in rows}) > 1]
    return lambda row: run_label(row, varying)


def _series(rows: list[dict[str, Any]], by_resolution: bool) -> dict[str, list[dict[str, Any]]]:
    """Lines to draw: one per alpha along resolution when resolutions differ, else one per resolution along
    alpha (a width sweep), each also split by backbone and variant."""
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        name = f"{row['backbone']} {row['variant']}".strip()
        fixed = f"α={row['alpha']}" if by_resolution else f"{row['resolution']}px"
        lines[f"{name} {fixed}"].append(row)
    return lines


def _log_x(ax: Axes) -> None:
    """Log x axis with plain numbers (5, 20, 300) rather than powers of ten."""
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def plot_top1_vs_macs(table: Table, path: Path) -> Path | None:
    """Top-1 against MMACs (log x), a line per alpha or per resolution, the Pareto front ringed and joined."""
    rows = [r for r in table.rows if r["status"] == OK and r["mmacs"] and r["top1"] is not None]
    if not rows:
        return None
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    label = _point_labeler(rows)
    for name, line in sorted(_series(rows, len({r["resolution"] for r in rows}) > 1).items()):
        line.sort(key=lambda r: r["mmacs"])
        ax.plot([r["mmacs"] for r in line], [r["top1"] for r in line], marker="o", label=name)
        if len(rows) <= MAX_POINT_LABELS:
            for r in line:
                ax.annotate(
                    label(r),
                    (r["mmacs"], r["top1"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["mmacs"])
    ax.plot(
        [r["mmacs"] for r in front],
        [r["top1"] for r in front],
        linestyle="--",
        color="black",
        marker="o",
        markersize=12,
        markerfacecolor="none",
        label="Pareto front",
    )
    _log_x(ax)
    ax.set_xlabel("multiply-adds per image (millions, log scale)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("Accuracy against compute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _runtime_top1(row: dict[str, Any], runtime: str) -> float:
    """The runtime's own top-1: ONNX int8 loses `int8_top1_drop` points; fp32 runtimes match PyTorch."""
    if runtime == "onnx_int8" and row.get("int8_top1_drop") is not None:
        return row["top1"] - row["int8_top1_drop"]
    return row["top1"]


def plot_top1_vs_latency(table: Table, path: Path) -> Path | None:
    """Top-1 against CPU batch-1 latency (log x), one marker series per runtime."""
    columns = [c for c in table.columns if c.startswith(LATENCY_PREFIX)]
    rows = [r for r in table.rows if r["status"] == OK and r["top1"] is not None]
    points = {c: [r for r in rows if r.get(c)] for c in columns}
    points = {c: found for c, found in points.items() if found}
    if not points:
        return None
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    markers = "osD^vP*X"
    for i, (column, found) in enumerate(points.items()):
        runtime = column.removeprefix(LATENCY_PREFIX)
        ax.scatter(
            [r[column] for r in found],
            [_runtime_top1(r, runtime) for r in found],
            marker=markers[i % len(markers)],
            label=runtime,
        )
    if sum(len(found) for found in points.values()) <= MAX_POINT_LABELS:
        label = _point_labeler(rows)
        for column, found in points.items():
            for r in found:
                ax.annotate(
                    label(r),
                    (r[column], _runtime_top1(r, column.removeprefix(LATENCY_PREFIX))),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
    _log_x(ax)
    ax.set_xlabel("CPU latency, batch 1, median (ms, log scale)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("Accuracy against latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="runtime", fontsize=8)
    return _save(fig, path)


def plot_sizes(table: Table, path: Path) -> Path | None:
    """File size of every artifact of every run, as grouped horizontal bars labelled with their MB."""
    columns = [c for c in table.columns if c.startswith(SIZE_PREFIX)]
    rows = [r for r in table.rows if any(r.get(c) for c in columns)]
    if not rows:
        return None
    fig = Figure(figsize=(8, 1.5 + 0.25 * len(rows) * len(columns)))
    ax = fig.add_subplot()
    height = 0.8 / len(columns)
    for i, column in enumerate(columns):
        sizes = [r.get(column) for r in rows]
        bars = ax.barh(
            [k + i * height for k in range(len(rows))],
            [size or 0.0 for size in sizes],
            height=height,
            label=column.removeprefix(SIZE_PREFIX),
        )
        ax.bar_label(bars, [f"{size:.3g}" if size else "" for size in sizes], padding=2, fontsize=7)
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(rows))], [run_label(r) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.12)
    ax.set_xlabel("file size (MB)")
    ax.set_title("Size per artifact")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(title="artifact", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)
