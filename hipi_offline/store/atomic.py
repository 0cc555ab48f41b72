"""Crash-safe file operations: write beside, fsync, rename into place.

Temporary names carry the writing process's id, so a later writer removes the
leftovers of killed runs without touching the files of a concurrent writer.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import uuid
from pathlib import Path

from hipi_offline.errors import InputError

TOKEN_TEXT = r"(?P<token>\d+-[0-9a-f]{32})"
"""The pattern of :func:`writer_token` (the writer's pid, then a random hex part)."""
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


SIBLING_PURPOSES = ("creating", "append", "old")


def sibling(path: Path, purpose: str) -> Path:
    """A hidden temporary path beside ``path`` with the same suffix (``purpose`` is
    one of :data:`SIBLING_PURPOSES`, which :func:`remove_abandoned_siblings` knows)."""
    assert purpose in SIBLING_PURPOSES, purpose
    return path.with_name(f".{path.name}.{purpose}-{writer_token()}{path.suffix}")


def remove_abandoned_siblings(path: Path) -> None:
    """Delete the temporaries that killed writers left beside ``path`` (only names
    :func:`sibling` makes, of processes that no longer run; links are unlinked, never
    followed)."""
    if not path.parent.is_dir():
        return
    purposes = "|".join(SIBLING_PURPOSES)
    ours = re.compile(  # exactly the names that :func:`sibling` makes
        re.escape(f".{path.name}.") + rf"(?:{purposes})-{TOKEN_TEXT}" + re.escape(path.suffix)
    )
    for leftover in path.parent.iterdir():
        found = ours.fullmatch(leftover.name)
        if found and abandoned(found["token"]):
            remove_path(leftover)


def lstat_or_none(path: Path) -> os.stat_result | None:
    """``os.lstat`` (links are not followed), or None when nothing is there."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


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


def special_file_error(path: Path, mode: int) -> InputError:
    """The one-line error for a path that is neither a regular file nor a folder."""
    kind = (
        "a named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a special file"
    )
    return InputError(f"{path}: is {kind}, not a regular file or folder")


def check_plain_tree(root: Path, what: str, skip: tuple[str, ...] = ()) -> None:
    """Refuse a folder tree holding a symbolic link or a special file (a FIFO would
    hang a read; a link could lead out of the store). Never follows links; ``skip``
    names top-level entries checked elsewhere. Uses the directory entries' types
    (no stat call per file on common file systems)."""
    pending = [(Path(root), skip)]
    while pending:
        folder, skipped = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name in skipped:
                    continue
                path = folder / entry.name
                if entry.is_symlink():
                    raise InputError(
                        f"{path}: is a symbolic link (to {os.readlink(path)}) inside {what}; "
                        "stores may not hold links (remove it)"
                    )
                if entry.is_dir(follow_symlinks=False):
                    pending.append((path, ()))
                elif not entry.is_file(follow_symlinks=False):
                    raise special_file_error(path, os.lstat(path).st_mode)
