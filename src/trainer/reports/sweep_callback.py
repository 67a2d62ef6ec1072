"""Hydra callback: at the end of a multirun, write the sweep's report and print its table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from trainer.console.table import text_table
from trainer.reports import build_report
from trainer.reports.collect import collect_runs
from trainer.reports.optuna import prepare_storage, study_trials
from trainer.reports.table import build_table

log = logging.getLogger(__name__)
COLUMNS = {
    "run": "run",
    "status": "status",
    "alpha": "α",
    "resolution": "px",
    "mmacs": "MMACs",
    "top1": "top-1 %",
    "train_s": "train s",
    "error": "error",
}
MAX_CELL = 60


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = "" if value is None else " ".join(str(value).split())
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def sweep_table(sweep_dir: Path) -> list[str]:
    """The report's main columns for the console, one line per run."""
    rows = build_table(collect_runs(sweep_dir), sweep_dir).rows
    shown = [c for c in COLUMNS if any(row.get(c) not in (None, "") for row in rows)]
    return text_table([COLUMNS[c] for c in shown], [[_cell(row.get(c)) for c in shown] for row in rows])


def study_lines(sweep_dir: Path) -> list[str]:
    """The Optuna study's trials (with the best one named), when the sweep has a study."""
    found = study_trials(sweep_dir)
    if found is None:
        return []
    pointer, rows, params = found
    table = [
        [str(r["trial"]), r["state"], _cell(r["value"]), *(_cell(r.get(p)) for p in params)] for r in rows
    ]
    done = [r for r in rows if r["value"] is not None]
    lines = [f"Optuna study {pointer['study_name']} ({pointer['storage']}): {len(rows)} trial(s)"]
    lines += text_table(["trial", "state", "value", *params], table)
    if done:
        best = max(done, key=lambda r: r["value"])
        lines.append(f"  best: trial {best['trial']}, value {best['value']:.4f}")
    return lines


class SweepReport(Callback):
    """report.md, results.csv and plots in the sweep folder when a multirun ends, and its table printed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        if "storage" in sweeper:  # the Optuna sweeper
            prepare_storage(Path(config.hydra.sweep.dir), sweeper.storage, sweeper.get("study_name"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        try:
            report = build_report(sweep_dir)
        except FileNotFoundError as exc:
            log.warning("no report: %s", exc)
            return
        lines = [f"Sweep {sweep_dir}", *sweep_table(sweep_dir), *study_lines(sweep_dir), f"Report: {report}"]
        log.info("%s", "\n".join(lines))
