"""Console log policy, used by conf/hydra/job_logging/trainer.yaml (Hydra builds these through dictConfig).

The console shows our own messages from INFO and other libraries' from WARNING: converters log hundreds of
INFO lines per export. `verbose=true` (or `hydra.verbose=true`) shows everything. The job's log file gets
every record whatever the console shows, so nothing is lost for debugging.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence


def is_own(name: str, own: Sequence[str]) -> bool:
    """Whether logger `name` is one of the packages `own` or below one (`trainer.x`, not `trainer_x`)."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in own)


class ConsoleFilter(logging.Filter):
    """Pass records of `own` loggers from INFO, of any other from WARNING, all of them when verbose.

    `hushed` are patterns of other libraries' warnings a user can do nothing about (a converter saying on
    import that it cannot run models on Linux): console only when verbose, the file keeps them.
    """

    def __init__(self, own: Sequence[str], verbose: bool = False, hushed: Sequence[str] = ()) -> None:
        super().__init__()
        self.own = tuple(own)
        self.verbose = bool(verbose)
        self.hushed = [re.compile(pattern) for pattern in hushed]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or logging.getLogger().isEnabledFor(logging.DEBUG):  # hydra.verbose sets root DEBUG
            return True
        if is_own(record.name, self.own):
            return record.levelno >= logging.INFO
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in self.hushed)


class DropFilter(logging.Filter):
    """Drop records matching any of `patterns` everywhere (advertisements, not information)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(pattern) for pattern in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in self.patterns)


class ConsoleFormatter(logging.Formatter):
    """Plain text for our INFO lines; the level (and the library, when not ours) in front of the rest."""

    def __init__(self, own: Sequence[str] = ()) -> None:
        super().__init__()
        self.own = tuple(own)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ours = is_own(record.name, self.own)
        if ours and record.levelno < logging.WARNING:
            return text
        return f"{record.levelname}{'' if ours else f' [{record.name}]'}: {text}"


DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """warnings.showwarning for jobs: a record of `py.warnings`. Deprecation notices concern the library that
    triggers them, not the user: INFO (the log file; the console with verbose); other warnings: WARNING."""
    level = logging.INFO if issubclass(category, DEPRECATIONS) else logging.WARNING
    logging.getLogger("py.warnings").log(
        level, "%s (%s:%s: %s)", message, filename, lineno, category.__name__
    )


def capture_warnings() -> None:
    """Route Python warnings into logging (like logging.captureWarnings, with levels by category)."""
    import warnings

    warnings.showwarning = _show_warning
