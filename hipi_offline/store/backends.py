"""Storage backends: one class per format, registered by name and file suffix.

A backend owns everything that differs between formats: opening and checking its
files, reading and writing the flat arrays (``steps/infos/speed``), the crash-safe
append and which ``episodes/ends`` are committed, and the store's label sets
(list, read, commit, remove). ``store.py`` and ``labels.py`` hold what is common
and ask the backend chosen once, by suffix, for the rest.

Adding a backend: write one :class:`StorageBackend` subclass in its own module
and add one :func:`register_backend` line at the end of this file. The module is
imported only when a store with its suffix is used (so is its library).
"""

from __future__ import annotations

import importlib
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal

import numpy as np

from hipi_offline.errors import InputError
from hipi_offline.store.atomic import lstat_or_none, remove_abandoned_siblings
from hipi_offline.store.location import is_url, store_location

Compression = Literal["none", "fast", "small"]
COMPRESSIONS: tuple[str, ...] = ("none", "fast", "small")
Mode = Literal["r", "a", "w"]


@dataclass(frozen=True)
class ArrayInfo:
    """Shape, dtype and on-disk chunk rows of one stored array."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunk_rows: int


# what h5py, zarr and their codecs raise on damaged metadata or chunks (a JSON
# decoding error is a ValueError)
DAMAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, RuntimeError)


def damaged(path: Path, what: str, err: BaseException) -> InputError:
    """The one-line InputError for a damaged (e.g. truncated) part of a store."""
    reason = " ".join(str(err).split())[:200] or type(err).__name__
    return InputError(f"{path}: {what} is damaged or unreadable ({reason})")


def rows_text(start: int | None, stop: int | None) -> str:
    """`` (rows [a, b))`` for an error message, or nothing for a whole array."""
    return "" if start is None and stop is None else f" (rows [{start or 0}, {stop}))"


def jsonable(value: Any) -> Any:
    """A NumPy scalar or array as the plain Python value JSON can hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def stat_store(path: Path) -> os.stat_result:
    """``os.stat`` of a store about to be opened, or one InputError line."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such store") from None
    except OSError as err:
        raise InputError(f"{path}: cannot open the store ({err.strerror})") from None


def real_folder(path: Path) -> bool:
    """True for a real folder, False when absent; an InputError for a link or a file
    (the label area of a store is never reached through a link)."""
    info = lstat_or_none(path)
    if info is None:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise InputError(
            f"{path}: is a symbolic link (to {os.readlink(path)}); a store's label area must be "
            "a real folder, links are never followed (remove the link yourself)"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: is not a folder; the store's label area is damaged")
    return True


class StorageBackend(ABC):
    """One storage format. An instance is one opened store (its arrays); the class
    methods act on a store's path (files, label sets) without opening it."""

    kind: ClassVar[str]
    """The registered name (``"hdf5"``, ``"zarr"``), shown by ``inspect``."""
    append_copies: ClassVar[bool] = False
    """Whether an append copies the whole store (then it needs room for it twice)."""
    locks_labels: ClassVar[bool] = True
    """Whether writers of a label set take a file lock (object stores have none)."""

    def __init__(self, path: Path, mode: Mode) -> None:
        self.path = path
        self.writable = mode != "r"

    # ------------------------------------------------------------ arrays
    @abstractmethod
    def arrays(self, prefix: str) -> dict[str, ArrayInfo]:
        """Every array under ``prefix`` (``steps``), by full path."""

    @abstractmethod
    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` of one array (all of a scalar)."""

    @abstractmethod
    def attrs(self) -> dict[str, Any]:
        """The root attributes as plain Python values."""

    @abstractmethod
    def set_attrs(self, values: Mapping[str, Any]) -> None:
        """Set root attributes."""

    @abstractmethod
    def create(self, name: str, data: np.ndarray, chunk_rows: int, compression: str) -> None:
        """A new array holding ``data``, resizable along axis 0."""

    @abstractmethod
    def resize(self, name: str, rows: int) -> None:
        """Grow (or shrink) an array along axis 0."""

    @abstractmethod
    def write(self, name: str, start: int, data: np.ndarray) -> None:
        """Write rows from ``start`` on."""

    @abstractmethod
    def clear_data(self) -> None:
        """Remove every array but ``episodes/ends`` (leftovers of an uncommitted append)."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the files (the store may be moved or replaced afterwards)."""

    # ------------------------------------------------------------ store life cycle
    @classmethod
    @abstractmethod
    def check_files(cls, path: Path) -> None:
        """Before opening: the files at ``path`` are the kind this format keeps (no
        link out of the store, no FIFO that would hang the read)."""

    def start(self, attrs: Mapping[str, Any]) -> None:
        """Lay out an empty store: its root attributes and an empty ``episodes/ends``."""
        self.set_attrs(attrs)
        self.create("episodes/ends", np.zeros(0, np.int64), 4096, "none")

    def committed_ends(self) -> np.ndarray:
        """int64 [N]: ``episodes/ends`` as committed (the last write of an append)."""
        return self.read("episodes/ends").astype(np.int64)

    @contextmanager
    def appending(self, new_bytes: int) -> Iterator[None]:
        """Around one append to an existing store: commit it, or leave the store as it
        was. By default the append is written in place and ``episodes/ends``, written
        last, is the commit (rows past its end are ignored and overwritten later).
        ``new_bytes``: at most what the append adds, for a free-space check."""
        yield

    @classmethod
    def remove_leftovers(cls, path: Path) -> None:
        """Delete what killed writers of this format left beside ``path``."""
        remove_abandoned_siblings(path)

    @classmethod
    def check_replaceable(cls, path: Path) -> None:
        """Refuse, before ``--overwrite`` replaces the store at ``path``, what this
        format keeps beside the store and must not be replaced (nothing by default)."""
        return None

    @classmethod
    def side_paths(cls, path: Path) -> tuple[Path, ...]:
        """What this format keeps beside the store at ``path`` and replaces with it
        (nothing by default: the store is one file or folder)."""
        return ()

    @classmethod
    def retire_labels(cls, path: Path) -> Path | None:
        """Move label sets kept beside the store aside before the store is replaced;
        returns where they went (None: the labels live inside the store)."""
        return None

    @classmethod
    def restore_labels(cls, path: Path, retired: Path) -> None:
        """Put label sets moved aside by :meth:`retire_labels` back (not replaced)."""
        return None

    # ------------------------------------------------------------ label sets
    @classmethod
    @abstractmethod
    def label_area(cls, path: Path) -> Path | None:
        """The checked folder of the store's label sets, or None when there is none."""

    @classmethod
    @abstractmethod
    def make_label_area(cls, path: Path) -> tuple[Path, list[Path]]:
        """The label area, created if missing, and the folders created for it."""

    @classmethod
    @abstractmethod
    def label_lock_path(cls, area: Path, name: str) -> Path:
        """The lock file of label set ``name`` inside the label area."""

    @classmethod
    def list_labels(cls, path: Path) -> list[str]:
        """Names of the committed label sets, sorted (a crafted entry is listed and
        refused when read; links are never followed)."""
        area = cls.label_area(path)
        if area is None:
            return []
        with os.scandir(area) as entries:
            names = [cls.label_entry_name(entry) for entry in entries]
        return sorted(name for name in names if name is not None)

    @classmethod
    @abstractmethod
    def label_entry_name(cls, entry: os.DirEntry[str]) -> str | None:
        """The label-set name an entry of the label area stands for, or None when the
        entry is not a label set (temporaries, locks, metadata)."""

    @classmethod
    @abstractmethod
    def read_labels(
        cls, path: Path, name: str, keys: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays ``keys`` and the attributes of a listed label set."""

    @classmethod
    @abstractmethod
    def label_exists(cls, path: Path, area: Path, name: str) -> bool:
        """True when label set ``name`` exists; an InputError when its entry is not
        one this toolkit wrote (it is never replaced or removed)."""

    @classmethod
    @abstractmethod
    def commit_labels(
        cls, path: Path, name: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]
    ) -> None:
        """Write label set ``name`` atomically: a kill at any moment leaves the old or
        the new set, never a mix (the caller holds the set's lock)."""

    @classmethod
    @abstractmethod
    def remove_labels(cls, path: Path, name: str) -> None:
        """Delete label set ``name``, only after checking that its entry is one this
        toolkit wrote (the caller holds the set's lock and has listed the name)."""


@dataclass(frozen=True)
class Registration:
    """Where a backend's class lives and which suffixes choose it."""

    kind: str
    title: str
    suffixes: tuple[str, ...]
    target: str  # "module:Class", imported on first use
    url_target: str | None = None  # the class for stores at fsspec URLs, if any


_REGISTRY: dict[str, Registration] = {}


def register_backend(
    kind: str, title: str, suffixes: Sequence[str], target: str, url_target: str | None = None
) -> None:
    """Register a backend: ``kind`` (its name), ``title`` (for messages), the file
    suffixes that choose it, and ``"module:Class"`` (imported when first used);
    ``url_target``: the class for stores of this format at fsspec URLs (``s3://``),
    None when the format lives on local disks only."""
    taken = {s for r in _REGISTRY.values() for s in r.suffixes} & set(suffixes)
    if kind in _REGISTRY or taken:
        raise ValueError(f"backend {kind}: name or suffix {sorted(taken)} already registered")
    lowered = tuple(s.lower() for s in suffixes)
    _REGISTRY[kind] = Registration(kind, title, lowered, target, url_target)


def backend_names() -> list[str]:
    """The registered backends, in registration order."""
    return list(_REGISTRY)


def backend_suffixes(kind: str) -> tuple[str, ...]:
    """The suffixes that choose backend ``kind`` (the first is the usual one)."""
    return _REGISTRY[kind].suffixes


def backend_class(kind: str, url: bool = False) -> type[StorageBackend]:
    """The class of a registered backend (its module is imported now); ``url``: its
    class for stores at fsspec URLs."""
    registration = _REGISTRY[kind]
    target = registration.url_target if url else registration.target
    if target is None:
        raise InputError(f"{registration.title} stores live on local disks only")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def backend_kind(path: Path | str) -> str:
    """The backend the suffix names, or an InputError naming the suffix (a store at a
    URL: only a format registered with a ``url_target``)."""
    url = is_url(path)
    suffix = (PurePosixPath(str(path).partition("://")[2]) if url else Path(path)).suffix.lower()
    for registration in _REGISTRY.values():
        if suffix in registration.suffixes:
            if url and registration.url_target is None:
                remote = [r for r in _REGISTRY.values() if r.url_target is not None]
                usable = " or ".join(f"{r.suffixes[0]} ({r.title})" for r in remote) or "none"
                raise InputError(
                    f"{path}: {registration.title} stores live on local disks only; "
                    f"a store at a URL must be {usable}"
                )
            return registration.kind
    registrations = [r for r in _REGISTRY.values() if r.url_target is not None or not url]
    choices = [f"{'/'.join(r.suffixes)} ({r.title})" for r in registrations]
    listed = ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else choices[0]
    where = " for a store at a URL" if url else ""
    raise InputError(f"{path}: unknown store suffix {suffix!r}{where}; use {listed}")


def backend_for(path: Path | str) -> type[StorageBackend]:
    """The backend class that the suffix of ``path`` (a path or a URL) chooses."""
    path = store_location(path)
    return backend_class(backend_kind(path), url=is_url(path))


def open_backend(path: Path | str, mode: Mode) -> StorageBackend:
    """Open (``r``/``a``, files checked first) or create (``w``) a store's backend."""
    path = store_location(path)
    cls = backend_for(path)
    if mode != "w":
        cls.check_files(path)  # type: ignore[arg-type]
    return cls(path, mode)  # type: ignore[arg-type]


register_backend("hdf5", "HDF5", (".h5", ".hdf5"), "hipi_offline.store.hdf5_backend:Hdf5Backend")
register_backend(
    "zarr",
    "Zarr",
    (".zarr",),
    "hipi_offline.store.zarr_backend:ZarrBackend",
    url_target="hipi_offline.store.object_backend:ObjectZarrBackend",
)
