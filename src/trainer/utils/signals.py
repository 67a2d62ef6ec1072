"""Ctrl-C (SIGINT) and SIGTERM (a scheduler, `docker stop`) as one exception with the shell's exit code, and
one line saying what was stopped. Light on purpose: the CLI imports it before Hydra sets up logging, and
importing Lightning then would give Lightning's loggers console handlers of their own."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Interrupted(BaseException):
    """A signal ended the job; `code` is the shell's 128 + signal number. A BaseException, like
    KeyboardInterrupt, so that no library's `except Exception` swallows it."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.code = 128 + self.signum


@contextmanager
def interrupts_say(what: str, after: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM inside the block end the job in one line: `what` stopped by which signal, `after`."""
    try:
        yield
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        raise Interrupted(signum, f"{what} stopped by {SIGNAL_NAMES[signum]}; {after}") from None


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum, f"stopped by {SIGNAL_NAMES.get(signum, signum)}")


def stop_on_sigterm() -> None:
    """SIGTERM raises `Interrupted` (exit 143 with one line) instead of killing the process mid-write.

    During `fit` Lightning calls its own handler first, then this one: the exception reaches the callbacks'
    `on_exception` (training/guards.py saves last.ckpt there).
    """
    if threading.current_thread() is threading.main_thread():  # signal.signal works only there
        signal.signal(signal.SIGTERM, _raise_interrupted)


EXPORT_KEPT = "the export folder keeps its previous contents, unchanged"
