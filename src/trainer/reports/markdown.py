"""report.md: the results table, the Pareto front, the plots, and every run that did not finish, with why."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from trainer.reports.collect import BENCHMARK, FAILED, INCOMPLETE, OK, Run
from trainer.reports.plots import run_label
from trainer.reports.quantized import quantized_markdown
from trainer.reports.table import IDENTITY_COLUMNS, LATENCY_PREFIX, SIZE_PREFIX, Table

_HEADERS = {
    "alpha": "α",
    "resolution": "px",
    "mmacs": "MMACs",
    "mparams": "M params",
    "top1": "top-1 %",
    "top5": "top-5 %",
    "int8_top1_drop": "int8 top-1 drop (pts)",
    "train_s": "train s",
    "pareto": "Pareto",
}
NO_ERROR_FOUND = "no metrics.json and no error in the job log: still running, or stopped"
_LISTED_BELOW = {"export_errors", "error"}  # long texts: in their own section, not the table


def _header(column: str) -> str:
    if column.startswith(LATENCY_PREFIX):
        return f"{column.removeprefix(LATENCY_PREFIX)} ms"
    if column.startswith(SIZE_PREFIX):
        return f"{column.removeprefix(SIZE_PREFIX)} MB"
    return _HEADERS.get(column, column)


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "★" if value else ""
    if isinstance(value, float) and column not in IDENTITY_COLUMNS:
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    columns: list[str], rows: list[dict[str, Any]], headers: list[str] | None = None
) -> list[str]:
    """A Markdown table of `rows` (dicts) in `columns`, for report.md and the Optuna section."""
    lines = [
        "| " + " | ".join(headers or [_header(c) for c in columns]) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(_cell(row.get(c), c) for c in columns) + " |" for row in rows]
    return lines


def _conditions(runs: list[Run]) -> list[str]:
    """Where and how latency was measured: the benchmark's machine and threads, the export's threads."""
    seen = []
    for run in runs:
        bench = run.benchmark
        if bench.get("machine"):
            machine = bench["machine"]
            seen.append(
                f"benchmark: {machine.get('cpu_model') or machine.get('processor') or 'unknown CPU'}, "
                f"{machine.get('cores')} cores, {bench.get('threads')} thread(s), batch 1, "
                f"median of {bench.get('runs')} runs after {bench.get('warmup')} warm-up"
            )
        if run.manifest.get("threads") is not None:
            seen.append(f"export verification: {run.manifest['threads']} thread(s), batch 1, median")
    return [f"- {line}" for line in dict.fromkeys(seen)]


def render(table: Table, runs: list[Run], root: Path, plots: dict[str, Path | None], swept: list[str]) -> str:
    """The whole report as Markdown; `plots` maps a title to its PNG (None: nothing to plot)."""
    counts = Counter(row["status"] for row in table.rows)
    summary = ", ".join(f"{counts[s]} {s}" for s in (OK, FAILED, INCOMPLETE, BENCHMARK) if counts[s])
    runs_text = f"{len(table.rows)} run" + ("" if len(table.rows) == 1 else "s")
    lines = [f"# Report: {root.name}", "", f"`{root}`: {runs_text} ({summary}).", ""]
    if swept:
        lines += ["Sweep: " + " ".join(f"`{o}`" for o in swept), ""]
    shown = [
        c
        for c in table.columns
        if c not in _LISTED_BELOW and any(row.get(c) not in (None, "", False) for row in table.rows)
    ]
    lines += ["## Results", "", *markdown_table(shown, table.rows), ""]
    lines += [
        "Top-1 on the val split; latency on CPU at batch 1 (median); MB = 10^6 bytes; "
        "int8 drop = ONNX fp32 minus ONNX int8 top-1. Every column is in results.csv.",
        "",
    ]
    conditions = _conditions(runs)
    if conditions:
        lines += ["Latency measured with:", *conditions, ""]
    front = sorted((r for r in table.rows if r["pareto"]), key=lambda r: r["mmacs"])
    if front:
        lines += ["## Pareto front (top-1 against MMACs)", ""]
        lines += [f"- {run_label(r)}: {_cell(r['mmacs'])} MMACs, {_cell(r['top1'])} % top-1" for r in front]
        lines.append("")
    lines += quantized_markdown(runs)
    lines += ["## Plots", ""]
    for title, path in plots.items():
        lines += [f"![{title}]({path.name})" if path else f"{title}: no run has these figures yet.", ""]
    unfinished = [
        {**r, "error": r["error"] or NO_ERROR_FOUND}
        for r in table.rows
        if r["status"] in (FAILED, INCOMPLETE)
    ]
    if unfinished:
        lines += ["## Failed or unfinished runs", ""]
        lines += markdown_table(
            ["run", "status", "error"], unfinished, ["run", "status", "error (from the job log)"]
        )
        lines.append("")
    export_errors = [r for r in table.rows if r["export_errors"]]
    if export_errors:
        lines += [
            "## Export errors",
            "",
            *markdown_table(["run", "export_errors"], export_errors, ["run", "errors"]),
            "",
        ]
    return "\n".join(lines)
