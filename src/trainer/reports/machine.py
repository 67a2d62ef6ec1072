"""The machine a measurement ran on: CPU model, cores, platform, and the process's peak memory."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from trainer.utils.cpus import usable_cpus


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else whatever platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where the latency figures were taken: they mean little without it."""
    return {
        "cpu_model": cpu_model(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cpus(),
    }


def peak_rss_mb() -> float | None:
    """The process's peak resident memory so far, in MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1e6 if sys.platform == "darwin" else 1e3), 1)
