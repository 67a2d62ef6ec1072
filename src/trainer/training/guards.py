"""What stops a run early, and how: Ctrl-C (SIGINT) and SIGTERM (a scheduler, `docker stop`) save
`last.ckpt` and end with one line on how to resume and exit 130 / 143; a NaN or infinite loss stops at once.

Lightning turns SIGTERM into a `SystemExit` without a code (exit 0, looks like success) and Ctrl-C into
`sys.exit(1)`; both reach the callbacks' `on_exception` first, where the checkpoint is saved.
"""

from __future__ import annotations

import math
import shlex
import signal
import sys
from pathlib import Path

import lightning as L
from filelock import FileLock, Timeout

from trainer.utils.signals import SIGNAL_NAMES, Interrupted


class NonFiniteLoss(ValueError):
    """The training loss became NaN or infinite: the weights are lost, training cannot recover."""


def resume_command(last: Path) -> str:
    """This command line again, with `ckpt_path=` pointing at `last`."""
    args = [a for a in sys.argv[1:] if not a.startswith("ckpt_path=")]
    return shlex.join(["python", Path(sys.argv[0]).name, *args, f"ckpt_path={last}"])


class SaveOnInterrupt(L.Callback):
    """On Ctrl-C or SIGTERM during `fit`, save `last.ckpt` in `checkpoints_dir` and remember the signal."""

    def __init__(self, checkpoints_dir: Path) -> None:
        self.last = Path(checkpoints_dir) / "last.ckpt"
        self.signum: int | None = None

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.signum = signal.SIGINT
        elif isinstance(exception, SystemExit | Interrupted):  # Lightning's SIGTERMException is a SystemExit
            self.signum = signal.SIGTERM
        else:
            return
        trainer.save_checkpoint(self.last)

    def interrupted(self) -> Interrupted:
        """The one line for the console: what stopped training, where the checkpoint is, how to resume."""
        name = SIGNAL_NAMES.get(self.signum, str(self.signum))
        return Interrupted(
            self.signum or signal.SIGTERM,
            f"training stopped by {name}; saved {self.last}. Resume with: {resume_command(self.last)}",
        )


class StopOnNonFiniteLoss(L.Callback):
    """A NaN or infinite training loss stops the run at once, naming the setting that usually causes it."""

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, idx) -> None:  # noqa: ANN001
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss)):
            lr = module.hparams.get("config", {}).get("optim", {}).get("lr", "?")
            raise NonFiniteLoss(
                f"the training loss is {float(loss)} at epoch {trainer.current_epoch + 1} batch {idx + 1}: "
                f"the learning rate is likely too high (optim.lr={lr}); lower it, e.g. optim.lr=1e-3"
            )


def claim_run_folder(run_dir: Path, resuming: bool) -> FileLock:
    """Hold `run_dir` for this run (keep the returned lock while training): a second train.py into the same
    folder, at once or later without `ckpt_path=`, stops with one line instead of mixing two runs' files."""
    lock = FileLock(run_dir / ".run.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValueError(
            f"another train.py is running in {run_dir}: choose another folder with hydra.run.dir=DIR"
        ) from None
    if (run_dir / "checkpoints").is_dir() and not resuming:
        lock.release()
        raise ValueError(
            f"{run_dir} already holds a run (checkpoints/): choose another folder with hydra.run.dir=DIR, "
            f"or resume it with ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
        )
    return lock
