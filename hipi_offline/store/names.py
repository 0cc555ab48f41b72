"""Label-set names: what a name may hold, checked once for every backend.

A name becomes a file or folder name inside the store's label area, so it is
refused when it could be read as something else (hidden, reserved, a path).
"""

from __future__ import annotations

import re

from hipi_offline.errors import InputError

NAME_TEXT = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
"""The pattern of a label-set name (also used inside backends' temporary names)."""
_NAME = re.compile(NAME_TEXT)  # always used with fullmatch (``$`` lets "x\n" through)
MAX_NAME_LENGTH = 100
RESERVED_NAMES = frozenset({"zarr.json", ".sets", ".zgroup", ".zattrs", ".zarray", ".zmetadata"})


def is_label_name(name: str) -> bool:
    """True for a name :func:`check_label_name` accepts (used to filter listings)."""
    return (
        bool(_NAME.fullmatch(name))
        and name.lower() not in RESERVED_NAMES
        and len(name) <= MAX_NAME_LENGTH
    )


def check_label_name(name: str) -> str:
    """Refuse names that are empty, too long, reserved, hidden or hold other characters
    than letters, digits, ``_ . -`` (control characters and newlines included)."""
    if not isinstance(name, str) or not name:
        raise InputError("name: the label-set name is empty; give a name such as hipi")
    if len(name) > MAX_NAME_LENGTH:
        raise InputError(
            f"name: {name[:20]!r}... is {len(name)} characters; label-set names have at most "
            f"{MAX_NAME_LENGTH}"
        )
    if name.lower() in RESERVED_NAMES:
        raise InputError(f"name: {name!r} is reserved by the store format; choose another name")
    if not _NAME.fullmatch(name):
        raise InputError(
            f"name: {name!r} is not a valid label-set name (letters, digits, _ . -; "
            "not starting with . or -)"
        )
    return name
