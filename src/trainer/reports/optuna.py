"""The Optuna study behind a sweep: where it is stored, and its trials for the report.

hydra-optuna-sweeper writes only the best trial (optimization_results.yaml) into the sweep folder. The study
itself lives in its storage (SQLite by default, see conf/experiment/optuna_lr_dropout_aug.yaml), which the
sweep folder points at through optuna_study.yaml, so a report read later finds every trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

POINTER_NAME = "optuna_study.yaml"
SQLITE_PREFIX = "sqlite:///"


def prepare_storage(sweep_dir: Path, storage: str | None, study_name: str | None) -> None:
    """Create a SQLite storage's folder (SQLite will not) and record the study in the sweep folder."""
    if not storage:
        return
    if storage.startswith(SQLITE_PREFIX):
        Path(storage.removeprefix(SQLITE_PREFIX)).parent.mkdir(parents=True, exist_ok=True)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    pointer = {"storage": storage, "study_name": study_name}
    (sweep_dir / POINTER_NAME).write_text(yaml.safe_dump(pointer), encoding="utf-8")


def study_trials(sweep_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]] | None:
    """(the pointer, one row per trial: number, state, value, params, the sorted param names) of the sweep's
    study; None without one.

    The study holds every trial run against it, this sweep's and those of earlier runs it resumed.
    """
    try:
        pointer = yaml.safe_load((Path(sweep_dir) / POINTER_NAME).read_text(encoding="utf-8"))
        import optuna
    except (OSError, yaml.YAMLError, ImportError):
        return None
    study = optuna.load_study(study_name=pointer["study_name"], storage=pointer["storage"])
    rows = [
        {"trial": t.number, "state": t.state.name.lower(), "value": t.value, **t.params}
        for t in study.get_trials(deepcopy=False)
    ]
    params = sorted({key for row in rows for key in row} - {"trial", "state", "value"})
    return pointer, rows, params


def study_markdown(sweep_dir: Path) -> list[str]:
    """report.md's section on the sweep's Optuna study: every trial, best first."""
    from trainer.reports.markdown import markdown_table

    found = study_trials(sweep_dir)
    if found is None:
        return []
    pointer, rows, params = found
    ranked = sorted(rows, key=lambda r: (r["value"] is None, -(r["value"] or 0.0)))
    return [
        "## Optuna study",
        "",
        f"`{pointer['study_name']}` in `{pointer['storage']}` ({len(rows)} trials; inspect or resume it with "
        "Optuna's tools, e.g. `optuna.load_study`):",
        "",
        *markdown_table(["trial", "state", "value", *params], ranked),
        "",
    ]
