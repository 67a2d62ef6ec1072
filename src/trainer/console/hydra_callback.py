"""Hydra callback that sets up the console for every job, in whichever process a launcher runs it."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from trainer.console.logs import capture_warnings


def is_verbose(config: DictConfig) -> bool:
    """`verbose=true`, or `hydra.verbose=true` (Hydra's own switch; a list of logger names does not count)."""
    hydra_verbose = config.hydra.get("verbose") if "hydra" in config else False
    return bool(config.get("verbose")) or hydra_verbose is True


def writes_run_folder(config: DictConfig) -> bool:
    """Whether Hydra writes into the run folder (its .hydra/ configs or a log file): not scripts/export.py."""
    handlers = config.hydra.job_logging.get("handlers") or {}
    return config.hydra.output_subdir is not None or "file" in handlers


def require_writable(folder: Path, setting: str) -> None:
    """Exit with one line when the run folder (or the nearest folder above it that exists) cannot be written:
    Hydra would fail later, opening the log file, with two chained tracebacks. Nothing is created here."""
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        sys.stderr.write(
            f"ERROR: cannot write the run folder {folder} ({existing}: {exc.strerror}). Make it writable, or "
            f"choose another with {setting}=DIR\n"
        )
        raise SystemExit(1) from None


class ConsoleCallback(Callback):
    """Converter progress bars off unless verbose; Lightning's and Optuna's records via Hydra's handlers."""

    def _quiet_progress_bars(self, config: DictConfig) -> None:
        """coremltools draws tqdm bars per conversion pass, with no switch of its own. tqdm reads TQDM_*
        defaults when it is imported, so this runs before any job imports it; launchers' workers inherit it.
        Bars that pass `disable` themselves (Lightning's, downloads') are not affected."""
        if not is_verbose(config):
            os.environ.setdefault("TQDM_DISABLE", "1")

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._quiet_progress_bars(config)
        if writes_run_folder(config):
            require_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._quiet_progress_bars(config)
        if writes_run_folder(config):
            require_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")
        if "optuna" in str(config.hydra.sweeper.get("_target_", "")):
            import optuna

            optuna.logging.disable_default_handler()  # its own colored stderr handler: each message once
            optuna.logging.enable_propagation()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Python warnings into the job's log; and `import lightning` adds a console handler to the
        `lightning` logger while its records also reach the job's root handlers: each would print twice."""
        capture_warnings()
        import lightning  # noqa: F401

        logging.getLogger("lightning").handlers.clear()
