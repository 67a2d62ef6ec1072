"""Compare runs: results.csv, report.md and PNG plots for a sweep, a run, or a folder of runs.

python scripts/report.py multirun/2026-05-01/12-00-00          (or: trainer-report ...)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from trainer.reports.collect import collect_runs, sweep_overrides
from trainer.reports.markdown import render
from trainer.reports.optuna import study_markdown
from trainer.reports.plots import plot_sizes, plot_top1_vs_latency, plot_top1_vs_macs
from trainer.reports.table import build_table, write_csv

__all__ = ["build_report", "main"]

RESULTS_NAME = "results.csv"
REPORT_NAME = "report.md"
PLOTS = {
    "Top-1 against MMACs": ("top1_vs_mmacs.png", plot_top1_vs_macs),
    "Top-1 against latency": ("top1_vs_latency.png", plot_top1_vs_latency),
    "Size per artifact": ("artifact_sizes.png", plot_sizes),
}
EXIT_USAGE = 2


def build_report(sweep_dir: Path, out_dir: Path | None = None) -> Path:
    """Write results.csv, report.md and the plots for every run under `sweep_dir` into `out_dir` (default:
    `sweep_dir` itself); returns report.md's path. Raises FileNotFoundError when there is no run to report."""
    root = Path(sweep_dir).resolve()
    runs = collect_runs(root) if root.is_dir() else []
    if not runs:
        raise FileNotFoundError(
            f"no runs under {root}: expected folders with .hydra/config.yaml, metrics.json or benchmark.json"
        )
    out = Path(out_dir) if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(runs, root)
    write_csv(table, out / RESULTS_NAME)
    plots = {title: draw(table, out / name) for title, (name, draw) in PLOTS.items()}
    report = out / REPORT_NAME
    text = render(table, runs, root, plots, sweep_overrides(root))
    report.write_text("\n".join([text, *study_markdown(root)]), encoding="utf-8")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (trainer-report); returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="trainer-report",
        description="Tabulate and plot the runs of a sweep (multirun/...), one run, or a folder of runs.",
    )
    parser.add_argument("runs", type=Path, help="a multirun sweep folder, a run folder, or a folder of runs")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the runs folder)")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.runs, args.out)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(report)
    return 0
