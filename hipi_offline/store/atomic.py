"""Crash-safe file operations: write beside, fsync, rename into place.

Temporary names carry the writing process's id, so a later writer removes the
leftovers of killed runs without touching the files of a concurrent writer.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

_TOKEN = re.compile(r"(\d+)-[0-9a-f]{32}")


def writer_token() -> str:
    """A unique name part that records this process's id (see :func:`abandoned`)."""
    return f"{os.getpid()}-{uuid.uuid4().hex}"


def abandoned(name: str) -> bool:
    """True for a temporary of a process that no longer runs (a killed writer)."""
    match = _TOKEN.search(name)
    if match is None:
        return True
    pid = int(match.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def sibling(path: Path, purpose: str) -> Path:
    """A hidden temporary path beside ``path`` with the same suffix."""
    return path.with_name(f".{path.name}.{purpose}-{writer_token()}{path.suffix}")


def remove_abandoned_siblings(path: Path) -> None:
    """Delete the temporaries that killed writers left beside ``path``."""
    if not path.parent.is_dir():
        return
    prefix = f".{path.name}."
    for leftover in path.parent.iterdir():
        name = leftover.name
        if name.startswith(prefix) and _TOKEN.search(name) and abandoned(name):
            remove_path(leftover)


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (best effort)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace a small file's content atomically."""
    tmp = path.with_name(f".{path.name}.{writer_token()}.tmp")
    try:
        tmp.write_bytes(data)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def remove_path(path: Path) -> None:
    """Delete a file, link or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_path(source: Path, target: Path) -> None:
    """Move a finished file or folder onto ``target``: one atomic rename for files;
    for folders the old one is renamed away first (and put back if the second
    rename fails), then deleted."""
    if source.is_file():
        fsync_path(source)
        os.replace(source, target)
    else:
        trash = sibling(target, "old") if target.exists() else None
        if trash is not None:
            os.rename(target, trash)
        try:
            os.rename(source, target)
        except OSError:
            if trash is not None:
                os.rename(trash, target)
            raise
        if trash is not None:
            remove_path(trash)
    fsync_path(target.parent)
