"""Training progress: a bar per epoch in a terminal, one line per epoch everywhere else (CI, nohup, pipes)."""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

log = logging.getLogger(__name__)


def _format(name: str, value: Any) -> str:
    """`val/top1` 0.567 -> `val top-1 56.7%`; `train/loss_epoch` 1.2345 -> `train loss 1.234`."""
    label = name.removesuffix("_epoch").replace("/", " ")
    if "top" in label:
        return f"{label.replace('top', 'top-')} {100 * float(value):.1f}%"
    return f"{label} {float(value):.4g}"


class EpochLines(ProgressBar):
    """One log line per finished epoch with its metrics and duration: readable in a file, no carriage returns.

    It is Lightning's progress bar (a ProgressBar), so Lightning adds no tqdm bar of its own next to it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._started = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        metrics = self.get_metrics(trainer, pl_module)
        shown = [_format(k, v) for k, v in metrics.items() if k != "v_num" and not k.endswith("_step")]
        seconds = time.perf_counter() - self._started
        log.info(
            "epoch %d/%d: %s (%.0f s)",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            ", ".join(shown),
            seconds,
        )


def progress_bar(stream: Any = None) -> ProgressBar:
    """In a terminal, a bar per epoch that stays (Rich's where `rich` is installed, else tqdm's); anywhere
    else, EpochLines."""
    stream = sys.stdout if stream is None else stream
    if not stream.isatty():
        return EpochLines()
    return RichProgressBar(leave=True) if importlib.util.find_spec("rich") else TQDMProgressBar(leave=True)
