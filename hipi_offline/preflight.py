"""Checks made before the first byte is written: seeds, writable folders, free disk
space and free memory. Every command uses these, so each rule has one home.

A missing or wrong path is the user's input (:class:`InputError`, exit 2); a
read-only file system, a folder without write permission, a full disk or too
little memory is the environment (:class:`ResourceError`, exit 1).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hipi_offline.errors import InputError, ResourceError

MAX_SEED = 2**63 - 1
"""Largest seed accepted (seeds are stored as int64 attributes; numpy and torch take it)."""


def human_bytes(size: float) -> str:
    """``size`` bytes as a short text (``1.5 MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TiB"


def existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent folder."""
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(folder: Path, what: str) -> None:
    """Fail before any work when nothing can be created in ``folder``: a missing
    folder or a file in its place is the user's input; a read-only file system or
    missing write permission is the environment. Writes nothing."""
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"{what}: folder {folder} {problem}")
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise ResourceError(f"{what}: folder {folder} is on a read-only file system")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ResourceError(f"{what}: folder {folder} is not writable (permission denied)")


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """A ResourceError (needed vs free) when ``folder``'s file system (or, for a path
    still to be made, its nearest existing parent's) has less than ``needed`` bytes."""
    where = existing_ancestor(Path(folder))
    free = shutil.disk_usage(where).free
    if free < needed:
        raise ResourceError(
            f"not enough free space for {what}: needs about {human_bytes(needed)}, {where} "
            f"has {human_bytes(free)} free; free some space or choose another place"
        )


def available_memory() -> int | None:
    """Bytes a new host allocation can get: /proc/meminfo's MemAvailable, capped by a
    cgroup v2 memory limit; else the free physical pages; None where nothing is known."""
    known = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                known.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            known.append(max(0, int(limit) - int(used)))
    except (OSError, ValueError):
        pass
    if not known:
        try:
            known.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return None
    return min(known)
