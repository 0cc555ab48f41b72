"""What a benchmark records about the machine it ran on: the CPU, the load and the
package versions (the scripts in this folder import it as a sibling module)."""

from __future__ import annotations

import contextlib
import math
import os
import platform
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_description() -> str:
    """The CPU's model and the number of logical CPUs."""
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs"


def load_average() -> float:
    """The 1-minute load average (NaN where the system does not tell)."""
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return math.nan


def package_versions(*names: str) -> dict[str, str]:
    """Python's version and those of the installed ``names`` (missing ones left out)."""
    found = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found
