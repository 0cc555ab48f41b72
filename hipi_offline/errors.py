"""Errors the command line turns into one ``error:`` line.

* :class:`InputError`: the user's input is wrong (exit code 2).
* :class:`ResourceError`: the environment failed us: no space left, a read-only
  filesystem, no GL library, out of memory (exit code 1).

:func:`describe_os_error` turns an ``OSError`` raised by the filesystem into the
matching one-line error of either kind.
"""

from __future__ import annotations

import errno


class InputError(ValueError):
    """Bad user input: a malformed spec, a missing field, a damaged store.

    The message is one line that names the offending field or file and, where
    there is one, the fix. The command line prints it and exits with code 2.
    """


class ResourceError(RuntimeError):
    """The environment cannot do what was asked (disk full, read-only, no memory,
    a missing system library). One line; exit code 1 at the command line."""


# errno values that mean the user named a path that cannot be used as given
_INPUT_ERRNOS = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ELOOP,
        errno.EEXIST,
        errno.EINVAL,
        errno.ENXIO,
    }
)


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace, shorten very long words (paths) in the middle so that the
    reason after them survives, and cut to ``limit`` characters."""
    words = [
        word if len(word) <= 120 else f"{word[:50]}…{word[-50:]}" for word in str(text).split()
    ]
    text = " ".join(words)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_os_error(err: OSError) -> InputError | ResourceError:
    """The one-line error for a filesystem failure: names the path and the cause."""
    where = err.filename if err.filename is not None else None
    reason = err.strerror or type(err).__name__
    if err.errno == errno.ENOSPC:
        reason = "no space left on device"
    elif err.errno == errno.EROFS:
        reason = "read-only file system"
    elif err.errno == errno.EDQUOT:
        reason = "disk quota exceeded"
    text = one_line(f"{where}: {reason}" if where is not None else reason)
    if err.errno in _INPUT_ERRNOS:
        return InputError(text)
    return ResourceError(text)
