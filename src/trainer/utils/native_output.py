"""Keep what native libraries print off the console: LiteRT, TensorFlow's logging and ExecuTorch's runtime
write straight to the process's stdout and stderr (file descriptors 1 and 2, past Python's logging), a dozen
lines per conversion or interpreter. Around the calls that do, both descriptors (and Python's sys.stdout and
sys.stderr) go to a temporary file, whose text then goes to the log at DEBUG: the run's log file keeps it,
the console shows it with verbose=true."""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout

log = logging.getLogger(__name__)


@contextmanager
def native_output_to_log(what: str) -> Iterator[None]:
    """Capture everything printed during the block and log it at DEBUG as `what` printed it."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    python_text = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with redirect_stdout(python_text), redirect_stderr(python_text):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text = (sink.read().decode(errors="replace") + python_text.getvalue()).strip()
            if text:
                log.debug("%s printed:\n%s", what, text)
