"""How many CPU cores this process may use."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """Cores this process may run on: its affinity mask where the OS has one (a container, `taskset`, a
    SLURM allocation), else every core; os.cpu_count() alone would count cores the process cannot use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
