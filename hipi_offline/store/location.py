"""Where a store lives: a local path, or an fsspec URL (``s3://bucket/x.zarr``).

A ``str`` that holds ``://`` is a URL and stays a ``str`` (``Path`` would fold its
``//``); a ``file://`` URL is a local path and gets every local check. Everything
else is a :class:`~pathlib.Path`. Options for the URL's file system (endpoint,
credentials, region) come from the usual environment variables of its package
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...) and from the JSON object in
:data:`STORAGE_OPTIONS_ENV`, which ``hipi-offline --storage-options`` sets (so Dask
worker processes started by the command inherit it).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from hipi_offline.errors import InputError

Location = Path | str
"""A store location: a local path, or an fsspec URL string."""
STORAGE_OPTIONS_ENV = "HIPI_STORAGE_OPTIONS"
"""Environment variable holding the JSON object of fsspec storage options."""
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")


def is_url(location: object) -> bool:
    """True for a store location given as a URL string (``scheme://...``)."""
    return isinstance(location, str) and "://" in location


def store_location(location: str | os.PathLike[str]) -> Location:
    """A URL string as given (trailing ``/`` removed), a ``file://`` URL as its local
    path, anything else a :class:`Path`; an InputError for a malformed scheme."""
    if not is_url(location):
        return Path(location)
    text = str(location)
    scheme, _, rest = text.partition("://")
    if not _SCHEME.fullmatch(scheme):
        raise InputError(f"{text}: {scheme!r} is not a URL scheme (such as s3, gs or file)")
    if scheme.lower() == "file":
        host, slash, tail = rest.partition("/")
        if host not in ("", "localhost"):
            raise InputError(f"{text}: a file:// URL names a local path (file:///abs/path)")
        return Path(slash + tail if host == "" else "/" + tail)
    bucket = rest.strip("/").split("/", 1)
    if not bucket[0] or len(bucket) < 2:
        raise InputError(f"{text}: a store URL names a bucket and a path (s3://bucket/x.zarr)")
    return text.rstrip("/")


def url_name(url: str) -> str:
    """The last part of a URL's path (``x.zarr``)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def parse_storage_options(text: str, field: str) -> dict[str, Any]:
    """The JSON object ``text`` (fsspec storage options), or an InputError naming ``field``."""
    try:
        options = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise InputError(f"{field}: not valid JSON ({err})") from None
    if not isinstance(options, dict):
        raise InputError(
            f"{field}: must be a JSON object such as "
            '\'{"endpoint_url": "http://127.0.0.1:9000"}\', got ' + type(options).__name__
        )
    return options


def storage_options() -> dict[str, Any]:
    """The fsspec storage options of this process (from :data:`STORAGE_OPTIONS_ENV`)."""
    text = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    return parse_storage_options(text, STORAGE_OPTIONS_ENV) if text else {}
