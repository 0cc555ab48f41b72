"""Zarr 3 stores at fsspec URLs (``s3://bucket/x.zarr``, ``gs://...``).

The arrays are laid out exactly as in a local ``X.zarr`` folder, and an append is
committed the same way (data arrays first, ``episodes/ends`` last). Object stores
have neither atomic renames nor links, so a label set is committed manifest-last::

    URL/labels/<name>/v-<UTC time>-<hex32>/   one version: a Zarr group of the arrays
    URL/labels/<name>/CURRENT                 pointer: the version, and the size and
                                              SHA-256 of each of its objects (JSON)

A commit writes a new version under a unique prefix, then ``CURRENT`` with one
PUT (atomic on S3 and GCS): a version without a pointer is invisible. Readers
follow the pointer and read exactly the objects it lists, each checked against its
size and SHA-256 (a set replaced while it was read is read again; a missing chunk
can never read as Zarr's fill value). The version it replaced
is deleted after the pointer; versions no pointer names are deleted by the next
writer of that set once they are older than :data:`STALE_AFTER_S` (a concurrent
writer's version is never younger than its commit). There are no locks: of two
concurrent writers of one set the last pointer wins, and readers see one whole
version or the other.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from hipi_offline.errors import InputError
from hipi_offline.store import backends as base
from hipi_offline.store import remote
from hipi_offline.store.backends import Mode, StorageBackend
from hipi_offline.store.names import is_label_name
from hipi_offline.store.remote import filesystem, join, remote_errors
from hipi_offline.store.zarr_backend import ZarrBackend

POINTER = "CURRENT"
"""The pointer object of a label set: the last write of its commit."""
POINTER_KIND = "label-set-pointer"
POINTER_MAX_BYTES = 1 << 20
STORE_JSON_MAX_BYTES = 16 << 20
STALE_AFTER_S = 3600
"""Age (by the time in its name) after which an unpointed version is a killed writer's."""
_VERSION = re.compile(r"v-(?P<time>\d{8}T\d{6}Z)-[0-9a-f]{32}")
_TIME = "%Y%m%dT%H%M%SZ"
_READ_TRIES = 3
_MAX_OBJECTS = 1000
_OBJECT_KEY = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def new_version_name(now: dt.datetime | None = None) -> str:
    """A unique version prefix: ``v-<UTC time>-<hex32>``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"v-{now.strftime(_TIME)}-{uuid.uuid4().hex}"


def stale_version(version: str, now: dt.datetime) -> bool:
    """True for a name of :func:`new_version_name`'s form older than :data:`STALE_AFTER_S`."""
    found = _VERSION.fullmatch(version)
    if found is None:
        return False
    made = dt.datetime.strptime(found["time"], _TIME).replace(tzinfo=dt.timezone.utc)
    return (now - made).total_seconds() > STALE_AFTER_S


class ObjectZarrBackend(ZarrBackend):
    """A Zarr 3 store at an fsspec URL (``path`` is the URL string)."""

    locks_labels: ClassVar[bool] = False

    def __init__(self, path: str, mode: Mode) -> None:  # type: ignore[override]
        import zarr

        StorageBackend.__init__(self, path, mode)  # type: ignore[arg-type]
        self._cache: dict[str, Any] = {}
        self._store = remote.zarr_store(path, read_only=mode == "r")
        self._root: Any = None
        if mode == "w":  # the root group is made with its attributes by start()
            return
        with remote_errors(path):
            try:
                self._root = zarr.open_group(self._store, mode="r" if mode == "r" else "r+")
            except (ValueError, json.JSONDecodeError, KeyError) as err:
                raise InputError(f"{path}: not a readable Zarr store ({err})") from None

    # ------------------------------------------------------------ arrays
    def arrays(self, prefix: str) -> dict[str, base.ArrayInfo]:
        with remote_errors(str(self.path)):
            return super().arrays(prefix)

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        with remote_errors(str(self.path)):
            return super().read(name, start, stop)

    def attrs(self) -> dict[str, Any]:
        with remote_errors(str(self.path)):
            return super().attrs()

    def set_attrs(self, values: Mapping[str, Any]) -> None:
        with remote_errors(str(self.path)):
            super().set_attrs(values)

    def create(self, name: str, data: np.ndarray, chunk_rows: int, compression: str) -> None:
        with remote_errors(str(self.path)):
            super().create(name, data, chunk_rows, compression)

    def resize(self, name: str, rows: int) -> None:
        with remote_errors(str(self.path)):
            super().resize(name, rows)

    def write(self, name: str, start: int, data: np.ndarray) -> None:
        with remote_errors(str(self.path)):
            super().write(name, start, data)

    def clear_data(self) -> None:
        """Delete every object of an array but ``episodes/ends`` (their metadata may be
        half written: removed as objects, not read)."""
        self._cache.clear()
        url = str(self.path)
        fs, root = filesystem(url)
        with remote_errors(url):
            doomed = [f"{root}/{key}" for key in remote.object_sizes(fs, root) if _data(key)]
            if doomed:
                fs.rm(doomed)

    # ------------------------------------------------------------ store life cycle
    @classmethod
    def check_files(cls, path: str) -> None:  # type: ignore[override]
        """The store's root ``zarr.json`` is there (object stores hold no links)."""
        fs, root = filesystem(path)
        with remote_errors(path):
            if fs.exists(f"{root}/zarr.json"):
                return
            bucket = root.split("/", 1)[0]
            if not fs.exists(bucket):
                raise InputError(f"{path}: bucket {bucket} does not exist (or is not visible)")
        raise InputError(f"{path}: no such store (no zarr.json there)")

    def start(self, attrs: Mapping[str, Any]) -> None:
        """The root group is written with its attributes at once (a store killed right
        after it is still recognized as the toolkit's), then ``episodes/ends``."""
        import zarr

        values = {key: base.jsonable(value) for key, value in attrs.items()}
        with remote_errors(str(self.path)):
            self._root = zarr.open_group(self._store, mode="w-", attributes=values)
        self.create("episodes/ends", np.zeros(0, np.int64), 4096, "none")

    @classmethod
    def prepare_create(cls, path: str, overwrite: bool, format_attr: str) -> bool:
        """Before creating a store at ``path``: True when a store of this toolkit (root
        attribute ``format_attr``) is there and ``overwrite`` allows replacing it;
        refuses anything else there; checks writability with a probe object."""
        fs, root = filesystem(path)
        with remote_errors(path):
            found = _root_attrs(fs, root, path)
            if found is None:
                others = _some_objects(fs, root)
                if others:
                    raise InputError(
                        f"{path}: holds objects that are not a hipi-offline store (such as "
                        f"{others[0]}); choose another URL or remove them yourself"
                    )
            elif format_attr not in found:
                raise InputError(
                    f"{path}: is a Zarr store that hipi-offline did not write (no root "
                    f"attribute {format_attr}); it is never replaced (remove it yourself)"
                )
            elif not overwrite:
                raise InputError(f"{path}: already exists; pass --overwrite to replace it")
        remote.probe_writable(path, f"the store {path}")
        return found is not None

    @classmethod
    def discard(cls, path: str) -> None:
        """Delete the store at ``path`` (checked to be the toolkit's by the caller); its
        root ``zarr.json`` goes last."""
        fs, root = filesystem(path)
        with remote_errors(path):
            remote.remove_tree(fs, root, last="zarr.json")

    # ------------------------------------------------------------ label sets
    @classmethod
    def label_area(cls, path: str) -> str:  # type: ignore[override]
        return join(path, "labels")

    @classmethod
    def make_label_area(cls, path: str) -> tuple[str, list[Any]]:  # type: ignore[override]
        """Nothing to create on object storage; a probe object checks writability."""
        remote.probe_writable(path, "label sets")
        return join(path, "labels"), []

    @classmethod
    def list_labels(cls, path: str) -> list[str]:  # type: ignore[override]
        """Label sets with a pointer (a version without one is invisible)."""
        fs, root = filesystem(path)
        with remote_errors(path):
            try:
                entries = fs.ls(f"{root}/labels", detail=False, refresh=True)
            except FileNotFoundError:
                return []
            names = {entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries}
            return sorted(
                name
                for name in names
                if is_label_name(name) and fs.exists(f"{root}/labels/{name}/{POINTER}")
            )

    @classmethod
    def read_labels(  # type: ignore[override]
        cls, path: str, name: str, keys: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Follow the pointer and read the objects it lists, each checked against its
        size and SHA-256 (a set replaced meanwhile is read again, up to three times)."""
        import zarr
        from zarr.core.buffer import cpu
        from zarr.storage import MemoryStore

        fs, root = filesystem(path)
        with remote_errors(path):
            for _ in range(_READ_TRIES):
                pointer = _pointer(fs, root, path, name)
                if pointer is None:
                    raise InputError(f"labels/{name}: no such label set in {path}")
                found = _fetch_version(fs, f"{root}/labels/{name}/{pointer['version']}", pointer)
                if found is None:  # missing or changed objects
                    if _pointer(fs, root, path, name) != pointer:
                        continue  # replaced while we read it: read the new one
                    raise InputError(
                        f"labels/{name}: version {pointer['version']} does not match its "
                        "pointer (objects missing or changed); relabel with --overwrite"
                    )
                buffers = {key: cpu.Buffer.from_bytes(raw) for key, raw in found.items()}
                group = zarr.open_group(MemoryStore(buffers, read_only=True), mode="r")
                arrays = {key: np.asarray(group[key][...]) for key in keys}
                return arrays, dict(group.attrs)
        raise InputError(
            f"labels/{name}: was replaced while being read, {_READ_TRIES} times; try again"
        )

    @classmethod
    def label_exists(cls, path: str, area: Any, name: str) -> bool:  # type: ignore[override]
        fs, root = filesystem(path)
        with remote_errors(path):
            return _pointer(fs, root, path, name) is not None

    @classmethod
    def commit_labels(  # type: ignore[override]
        cls, path: str, name: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]
    ) -> None:
        """A new version (its objects written concurrently), then its pointer; then the
        replaced version is deleted."""
        fs, root = filesystem(path)
        folder = f"{root}/labels/{name}"
        version = new_version_name()
        with remote_errors(path):
            old = _pointer(fs, root, path, name)  # checked: a pointer of ours, or None
            _remove_stale(fs, folder, keep=old["version"] if old else None)
            encoded = _encode(arrays, attrs)
            pointer = {
                "made_by": "hipi-offline",
                "kind": POINTER_KIND,
                "format": 1,
                "label_set": name,
                "version": version,
                "objects": {
                    key: {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
                    for key, raw in encoded.items()
                },
            }
            try:
                fs.pipe({f"{folder}/{version}/{key}": raw for key, raw in encoded.items()})
                fs.pipe_file(f"{folder}/{POINTER}", json.dumps(pointer, sort_keys=True).encode())
            except BaseException:
                _remove_unpointed(fs, root, path, name, version)
                raise
            if old is not None and old["version"] != version:
                remote.remove_tree(fs, f"{folder}/{old['version']}")

    @classmethod
    def remove_labels(cls, path: str, name: str) -> None:  # type: ignore[override]
        """Delete the pointer (the commit), then the version it named."""
        fs, root = filesystem(path)
        folder = f"{root}/labels/{name}"
        with remote_errors(path):
            pointer = _pointer(fs, root, path, name)
            if pointer is None:
                raise InputError(f"labels/{name}: no such label set in {path}")
            fs.rm_file(f"{folder}/{POINTER}")
            remote.remove_tree(fs, f"{folder}/{pointer['version']}")
            _remove_stale(fs, folder, keep=None)


def _data(key: str) -> bool:
    """True for an object of an array but ``episodes/ends`` (what ``clear_data`` deletes)."""
    if key.startswith("steps/"):
        return True
    kept = ("episodes/zarr.json", "episodes/ends/")
    return key.startswith("episodes/") and not key.startswith(kept)


def _read_small(fs: Any, key: str, limit: int, what: str) -> bytes | None:
    """The bytes of a small object, None when missing; an InputError when too big."""
    try:
        size = int(fs.info(key).get("size") or 0)
    except FileNotFoundError:
        return None
    if size > limit:
        raise InputError(f"{what}: is {size} bytes, more than the {limit} this toolkit writes")
    return fs.cat_file(key)


def _root_attrs(fs: Any, root: str, url: str) -> dict[str, Any] | None:
    """The root attributes of the Zarr store at ``root`` (None when no ``zarr.json``)."""
    raw = _read_small(fs, f"{root}/zarr.json", STORE_JSON_MAX_BYTES, f"{url}/zarr.json")
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise InputError(f"{url}/zarr.json: is not JSON; the store is damaged") from None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return attrs if isinstance(attrs, dict) else {}


def _some_objects(fs: Any, root: str) -> list[str]:
    """A few entries under ``root`` (empty when nothing is there)."""
    try:
        return sorted(fs.ls(root, detail=False, refresh=True))[:3]
    except FileNotFoundError:
        return []


def _object_entry(key: object, entry: object) -> bool:
    """True for a pointer's ``key: {"size", "sha256"}`` as this toolkit writes them."""
    return (
        isinstance(key, str)
        and _OBJECT_KEY.fullmatch(key) is not None
        and ".." not in key.split("/")
        and isinstance(entry, dict)
        and isinstance(entry.get("size"), int)
        and not isinstance(entry.get("size"), bool)
        and isinstance(entry.get("sha256"), str)
        and _SHA256.fullmatch(entry["sha256"]) is not None
    )


def _pointer(fs: Any, root: str, url: str, name: str) -> dict[str, Any] | None:
    """The checked pointer of label set ``name``, or None when it has none."""
    where = f"{url}/labels/{name}/{POINTER}"
    raw = _read_small(fs, f"{root}/labels/{name}/{POINTER}", POINTER_MAX_BYTES, where)
    if raw is None:
        return None
    try:
        pointer = json.loads(raw)
    except (ValueError, RecursionError):
        pointer = None
    objects = pointer.get("objects") if isinstance(pointer, dict) else None
    if (
        not isinstance(pointer, dict)
        or pointer.get("made_by") != "hipi-offline"
        or pointer.get("kind") != POINTER_KIND
        or pointer.get("label_set") != name
        or not isinstance(pointer.get("version"), str)
        or not _VERSION.fullmatch(pointer["version"])
        or not isinstance(objects, dict)
        or not 0 < len(objects) <= _MAX_OBJECTS
        or not all(_object_entry(key, entry) for key, entry in objects.items())
    ):
        raise InputError(
            f"{where}: is not a label-set pointer written by hipi-offline; it is never "
            "followed or replaced (remove it yourself)"
        )
    return pointer


def _encode(arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> dict[str, bytes]:
    """The objects of a Zarr group holding ``arrays`` (one chunk each) and ``attrs``."""
    import zarr
    from zarr.storage import MemoryStore

    objects: dict[str, Any] = {}
    group = zarr.open_group(MemoryStore(objects), mode="w-")
    for key, value in arrays.items():
        group.create_array(key, data=value, chunks=value.shape or None)
    group.attrs.update(dict(attrs))
    return {key: buffer.to_bytes() for key, buffer in objects.items()}


def _fetch_version(fs: Any, version: str, pointer: Mapping[str, Any]) -> dict[str, bytes] | None:
    """The objects the pointer lists, read under ``version``; None when one is missing
    or differs from the pointer's size and SHA-256."""
    listed = pointer["objects"]
    keys = sorted(listed)
    try:
        found = fs.cat([f"{version}/{key}" for key in keys], on_error="raise")
    except FileNotFoundError:
        return None
    out = {}
    for key in keys:
        raw = found.get(f"{version}/{key}")
        if raw is None or len(raw) != listed[key]["size"]:
            return None
        if hashlib.sha256(raw).hexdigest() != listed[key]["sha256"]:
            return None
        out[key] = raw
    return out


def _remove_stale(fs: Any, folder: str, keep: str | None) -> None:
    """Delete versions under ``folder`` that match our name pattern, are not ``keep``
    (the pointed one) and are older than :data:`STALE_AFTER_S`."""
    try:
        entries = fs.ls(folder, detail=False, refresh=True)
    except FileNotFoundError:
        return
    now = dt.datetime.now(dt.timezone.utc)
    for entry in entries:
        version = entry.rstrip("/").rsplit("/", 1)[-1]
        if version != keep and stale_version(version, now):
            remote.remove_tree(fs, f"{folder}/{version}")


def _remove_unpointed(fs: Any, root: str, url: str, name: str, version: str) -> None:
    """After a failed commit: delete our new version unless the pointer names it (the
    pointer's PUT may have landed although its reply was lost). Best effort."""
    try:
        pointer = _pointer(fs, root, url, name)
        if pointer is None or pointer["version"] != version:
            remote.remove_tree(fs, f"{root}/labels/{name}/{version}")
    except Exception:  # the original failure is what the user needs to see
        pass
