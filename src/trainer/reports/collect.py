"""Find the runs under a folder and read what each left behind: config, metrics, export manifest, benchmark.

A folder may be one run, a Hydra multirun sweep (`<sweep>/<job>/`) or any tree of runs
(`outputs/<day>/<run>`). A run is a folder with `.hydra/config.yaml`, `metrics.json` or `benchmark.json`. One
with a config but neither result is a job that failed, or one still running: its Hydra job log says which.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METRICS_NAME = "metrics.json"
BENCHMARK_NAME = "benchmark.json"
MANIFEST_PATH = Path("export") / "manifest.json"
CONFIG_PATH = Path(".hydra") / "config.yaml"
MAX_ERROR_CHARS = 500

OK, FAILED, INCOMPLETE, BENCHMARK = "ok", "failed", "incomplete", "benchmark"

_LOG_RECORD = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[(?P<level>[A-Z]+)\] - (?P<message>.*)$")


@dataclass
class Run:
    """Everything one run folder holds that a report needs; missing files are empty dicts."""

    path: Path
    status: str  # ok | failed | incomplete | benchmark (a benchmark run with no training run of its own)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    benchmark: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object at `path`, or {} when it is missing or half-written (a run still writing it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's composed config as Hydra saved it, unresolved (its `${hydra:...}` values need Hydra)."""
    try:
        data = yaml.safe_load((run_dir / CONFIG_PATH).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in (CONFIG_PATH, METRICS_NAME, BENCHMARK_NAME))


def _natural_key(path: Path) -> list[Any]:
    """Sort `2_...` before `10_...`, as Hydra numbers jobs."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def find_run_dirs(root: Path) -> list[Path]:
    """`root` itself when it is a run, else every run folder below it, in job order: a folder of links to
    runs (a suite gathered from several places) counts too."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found = {p.parent for name in (METRICS_NAME, BENCHMARK_NAME) for p in root.rglob(name)}
    found |= {p.parent.parent for p in root.rglob(CONFIG_PATH.as_posix())}
    found |= {child for child in root.iterdir() if is_run_dir(child)}  # also links to runs kept elsewhere
    return sorted(found, key=_natural_key)


def _last_traceback_line(lines: list[str], start: int) -> str:
    """The exception line closing the traceback at `start`: its last line before the next log record."""
    block = []
    for line in lines[start + 1 :]:
        if _LOG_RECORD.match(line):
            break
        if line.strip():
            block.append(line.strip())
    return block[-1] if block else lines[start].strip()


def log_error(run_dir: Path) -> str | None:
    """The last ERROR record or traceback in the run's Hydra job log(s) (`<run dir>/*.log`), None if none."""
    error = None
    for log_path in sorted(run_dir.glob("*.log")):
        try:
            lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines):
            record = _LOG_RECORD.match(line)
            if record and record["level"] in ("ERROR", "CRITICAL"):
                error = record["message"].strip() or _last_traceback_line(lines, i)
            elif line.startswith("Traceback (most recent call last):"):
                error = _last_traceback_line(lines, i)
    return error[:MAX_ERROR_CHARS] if error else None


def read_run(run_dir: Path) -> Run:
    """Read one run folder and decide its status."""
    run_dir = Path(run_dir)
    run = Run(
        path=run_dir,
        status=OK,
        config=read_config(run_dir),
        metrics=read_json(run_dir / METRICS_NAME),
        manifest=read_json(run_dir / MANIFEST_PATH),
        benchmark=read_json(run_dir / BENCHMARK_NAME),
    )
    if not run.metrics:
        run.error = log_error(run_dir)
        if run.benchmark:
            run.status = BENCHMARK
        else:
            run.status = FAILED if run.error else INCOMPLETE
    return run


def _merge_benchmarks(runs: list[Run]) -> list[Run]:
    """Fold a benchmark of a run's checkpoint or export (its `source_run`) into that run's row."""
    by_path = {run.path.resolve(): run for run in runs}
    kept = []
    for run in runs:
        source = run.benchmark.get("source_run") if run.status == BENCHMARK else None
        target = by_path.get(Path(source).resolve()) if source else None
        if target is not None and target is not run and not target.benchmark:
            target.benchmark = run.benchmark
        else:
            kept.append(run)
    return kept


def collect_runs(root: Path) -> list[Run]:
    """Every run under `root` (see the module docstring), benchmarks merged into the runs they measured."""
    return _merge_benchmarks([read_run(path) for path in find_run_dirs(root)])


def sweep_overrides(root: Path) -> list[str]:
    """What the multirun whose folder is `root` swept: its command line, then an experiment's sweeper params.

    Empty for a folder that is not a multirun.
    """
    try:
        hydra = yaml.safe_load((Path(root) / "multirun.yaml").read_text(encoding="utf-8"))["hydra"]
        overrides = [str(o) for o in hydra["overrides"]["task"] or []]
        params = (hydra.get("sweeper") or {}).get("params") or {}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return []
    return overrides + [f"{key}={value}" for key, value in params.items()]
