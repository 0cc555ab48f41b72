"""Object storage through fsspec: one file system per call, errors as one line.

A file system is made once per scheme, storage options and provider environment
variables (``AWS_*``, ``GOOGLE_*``, ...), so a changed endpoint or credential is
seen at once. :func:`remote_errors` turns what fsspec, s3fs,
gcsfs and botocore raise into an :class:`InputError` (a wrong URL, a missing
bucket or object) or a :class:`ResourceError` (missing credentials, access denied,
an unreachable endpoint, a missing protocol package), each naming the URL.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hipi_offline.errors import InputError, ResourceError, one_line
from hipi_offline.store.atomic import writer_token
from hipi_offline.store.location import storage_options

PROBE_PREFIX = ".hipi-offline-probe-"
"""Name of the small object written and deleted to check that a URL is writable."""
_CREDENTIAL_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the provider's usual variables), "
    "or pass credentials with hipi-offline --storage-options JSON"
)
_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCSFS_", "AZURE_", "FSSPEC_")
_FILESYSTEMS: dict[tuple[Any, ...], Any] = {}
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs"}


def _reason(err: BaseException) -> str:
    return one_line(str(err), 200) or type(err).__name__


def _translate(url: str, err: BaseException) -> InputError | ResourceError:
    """The one-line error for a failure of the object store at ``url``."""
    scheme = url.partition("://")[0].lower()
    name = type(err).__name__
    module = type(err).__module__ or ""
    if isinstance(err, ImportError):
        package = _PACKAGES.get(scheme, f"the fsspec package for {scheme}://")
        return ResourceError(
            f"{url}: {scheme}:// needs {package}, which is not installed "
            f"({_reason(err)}); install it (pip install {package})"
        )
    if isinstance(err, ValueError) and "protocol not known" in str(err).lower():
        return InputError(f"{url}: unknown URL scheme {scheme!r} (use s3://, gs:// or file://)")
    if "Credentials" in name or "credential" in str(err).lower():
        return ResourceError(f"{url}: no usable credentials ({_reason(err)}); {_CREDENTIAL_HINT}")
    if isinstance(err, PermissionError):
        return ResourceError(f"{url}: access denied ({_reason(err)}); {_CREDENTIAL_HINT}")
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return InputError(f"{url}: {_reason(err)}")
    if "EndpointConnection" in name or "ConnectTimeout" in name or "Connect" in name:
        return ResourceError(f"{url}: cannot reach the storage endpoint ({_reason(err)})")
    if isinstance(err, TypeError):  # an option the file system does not take
        return InputError(f"--storage-options: not accepted for {url} ({_reason(err)})")
    if module.startswith(("botocore", "aiobotocore", "google", "gcsfs", "s3fs", "aiohttp")):
        return ResourceError(f"{url}: the object store failed ({name}: {_reason(err)})")
    return ResourceError(f"{url}: {name}: {_reason(err)}")


@contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """Turn an object-store failure inside the block into one error naming ``url``."""
    try:
        yield
    except (InputError, ResourceError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # fsspec back ends raise many unrelated types
        raise _translate(url, err) from None


def _cached_fs(url: str, asynchronous: bool) -> tuple[Any, str]:
    """The file system of ``url`` for these storage options and this environment (one
    per combination and process: a changed credential makes a new one)."""
    import fsspec

    options = storage_options()
    scheme = url.partition("://")[0].lower()
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))
    key = (scheme, asynchronous, json.dumps(options, sort_keys=True, default=str), env)
    with remote_errors(url):
        if key not in _FILESYSTEMS:
            fs, _ = fsspec.core.url_to_fs(
                url,
                asynchronous=asynchronous,
                skip_instance_cache=True,
                use_listings_cache=False,  # other writers (Zarr's file system) change them
                **options,
            )
            _FILESYSTEMS[key] = fs
        fs = _FILESYSTEMS[key]
        return fs, fs._strip_protocol(url)


@atexit.register
def _close_async_sessions() -> None:
    """Close the HTTP sessions of the asynchronous file systems Zarr used (on Zarr's
    event loop), so that exiting prints no "Unclosed client session" warnings."""
    sessions = [fs for key, fs in _FILESYSTEMS.items() if key[1]]
    if not sessions:
        return
    try:
        from zarr.core.sync import sync
    except ImportError:
        return
    for fs in sessions:
        client = getattr(fs, "_s3", None)
        if client is not None:
            with contextlib.suppress(Exception):  # best effort at exit
                sync(client.close())


def filesystem(url: str) -> tuple[Any, str]:
    """The (synchronous) fsspec file system of ``url`` and the path inside it."""
    return _cached_fs(url, asynchronous=False)


def zarr_store(url: str, read_only: bool) -> Any:
    """A Zarr ``FsspecStore`` at ``url`` (on an asynchronous file system)."""
    from zarr.storage import FsspecStore

    fs, path = _cached_fs(url, asynchronous=True)
    with remote_errors(url):
        if not fs.async_impl:
            raise InputError(f"{url}: its file system is not asynchronous; Zarr cannot use it")
        return FsspecStore(fs, path=path, read_only=read_only)


def join(url: str, *parts: str) -> str:
    """``url/part/...`` (parts hold no leading or trailing ``/``)."""
    return "/".join([url.rstrip("/"), *parts])


def probe_writable(url: str, what: str) -> None:
    """Write and delete one small object under ``url`` (a toolkit-owned name), so that a
    missing bucket, missing credentials or a read-only grant fail before any work."""
    fs, root = filesystem(url)
    probe = f"{root}/{PROBE_PREFIX}{writer_token()}"
    try:
        fs.pipe_file(probe, b"hipi-offline write probe")
        fs.rm_file(probe)
    except (InputError, ResourceError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:
        found = _translate(url, err)
        raise type(found)(f"{what}: cannot write there: {found}") from None


def object_sizes(fs: Any, root: str) -> dict[str, int]:
    """Every object under ``root``, by its key relative to ``root``, with its size."""
    found = fs.find(root, detail=True) if fs.exists(root) else {}
    prefix = root.rstrip("/") + "/"
    return {
        key[len(prefix) :]: int(info.get("size") or 0)
        for key, info in found.items()
        if key.startswith(prefix) and info.get("type", "file") != "directory"
    }


def remove_tree(fs: Any, root: str, last: str | None = None) -> None:
    """Delete every object under ``root``; the object ``root/last`` (the one that makes
    the prefix recognizable as the toolkit's) goes last, so that a kill midway leaves
    a prefix the next ``--overwrite`` still recognizes and removes."""
    keys = [f"{root}/{key}" for key in object_sizes(fs, root) if key != last]
    if keys:
        fs.rm(keys)
    if last is not None and fs.exists(f"{root}/{last}"):
        fs.rm_file(f"{root}/{last}")
