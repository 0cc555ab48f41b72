"""The trajectory store: flat concatenated steps plus episode end offsets.

Layout (documented in docs/FORMAT.md)::

    attrs            hipi_offline_format=1, env, created, free metadata
    steps/<field>    S rows each; steps/observations and steps/actions required
    episodes/ends    int64 [N], cumulative exclusive end offsets
    episodes/<field> N rows of per-episode data (e.g. episodes/task)
    labels/<name>    label sets, written atomically (see labels.py)

Rows past ``episodes/ends[-1]`` are ignored (left by an interrupted append) and
overwritten by the next append, so ``ends`` is written last and is the commit.
The backend (chosen once, by suffix; see ``backends.py``) owns the files: how an
append is made crash-safe, which ``ends`` are committed, and the label sets.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hipi_offline.errors import InputError
from hipi_offline.preflight import check_free_space, check_writable
from hipi_offline.store.atomic import remove_path, replace_path, sibling
from hipi_offline.store.backends import (
    COMPRESSIONS,
    ArrayInfo,
    StorageBackend,
    backend_for,
    open_backend,
)
from hipi_offline.store.labels import LabelSet, list_label_sets, read_label_set
from hipi_offline.store.location import Location, is_url, store_location

FORMAT_VERSION = 1
FORMAT_ATTR = "hipi_offline_format"
REQUIRED_STEP_FIELDS = ("steps/observations", "steps/actions")
DEFAULT_CHUNK_ROWS = 65536
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


@dataclass(frozen=True, repr=False)
class StepChunk:
    """Rows ``[start, stop)`` of some step fields, read together."""

    start: int
    stop: int
    fields: dict[str, np.ndarray]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.fields.items())
        return f"StepChunk(rows=[{self.start}, {self.stop}), {shapes})"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _relative(name: str, prefix: str) -> str:
    name = name.strip("/")
    return name[len(prefix) + 1 :] if name.startswith(prefix + "/") else name


class TrajectoryStore:
    """A lazily read trajectory store on HDF5 or Zarr. Use :func:`open_store` or
    :func:`create_store`; close it (or use ``with``) when done."""

    def __init__(
        self, backend: StorageBackend, path: Location | None = None, staging: bool = False
    ) -> None:
        self._backend = backend
        self.path: Location = path or backend.path
        self.kind = backend.kind
        self._staging = backend.path if staging else None
        self._created_at_url = False  # created in place at a URL: removed unless committed
        self._overwrite = False
        self._ends: np.ndarray | None = None
        self._step_fields: dict[str, ArrayInfo] | None = None  # kept when read-only

    # ---------------------------------------------------------------- constructors
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        env: str = "",
        metadata: Mapping[str, Any] | None = None,
        compression: str = "none",
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        overwrite: bool = False,
        expected_bytes: int = 0,
    ) -> TrajectoryStore:
        """Create an empty store (episodes are added with :meth:`append_episodes`).

        The store is built under a hidden temporary name beside ``path`` and moved
        into place when closed without an error (a failed or killed creation leaves
        any existing store at ``path`` untouched). Only a hipi-offline store is ever
        replaced, and only with ``overwrite``; a link or anything else is refused.
        ``expected_bytes``: the size the caller will write, checked against the free
        space before anything is written. At a URL see :meth:`_create_at_url`."""
        location = store_location(path)
        storage = backend_for(location)
        if compression not in COMPRESSIONS:
            raise InputError(f"compression: {compression!r} is not one of {COMPRESSIONS}")
        if is_url(location):
            return cls._create_at_url(
                str(location), env, metadata, compression, chunk_rows, overwrite
            )
        path = Path(location)
        _check_replaceable(path, overwrite)
        check_writable(path.parent, f"the store {path.name}")
        storage.remove_leftovers(path)
        check_free_space(path.parent, expected_bytes, f"the store {path.name}")
        staging = sibling(path, "creating")
        try:
            started = cls._start(staging, env, metadata, compression, chunk_rows)
        except BaseException:
            remove_path(staging)
            raise
        store = cls(started, path=path, staging=True)
        store._overwrite = overwrite
        return store

    @classmethod
    def _create_at_url(
        cls,
        url: str,
        env: str,
        metadata: Mapping[str, Any] | None,
        compression: str,
        chunk_rows: int,
        overwrite: bool,
    ) -> TrajectoryStore:
        """Create a store at a URL. Object stores cannot rename a finished store into
        place, so it is written where it belongs: after every check (what is there,
        ``overwrite``, a write probe) an old store of the toolkit is deleted (its root
        ``zarr.json`` last), and a creation that fails deletes what it wrote. Its
        ``episodes/ends`` is still the commit of every append."""
        storage = backend_for(url)
        if storage.prepare_create(url, overwrite, FORMAT_ATTR):  # type: ignore[attr-defined]
            storage.discard(url)  # type: ignore[attr-defined]
        try:
            started = cls._start(url, env, metadata, compression, chunk_rows)
        except BaseException:
            storage.discard(url)  # type: ignore[attr-defined]
            raise
        store = cls(started)
        store._created_at_url = True
        return store

    @staticmethod
    def _start(
        staging: Location,
        env: str,
        metadata: Mapping[str, Any] | None,
        compression: str,
        chunk_rows: int,
    ) -> StorageBackend:
        """Write the empty store's root attributes and ``episodes/ends`` at ``staging``."""
        backend = open_backend(staging, "w")
        attrs = {
            FORMAT_ATTR: FORMAT_VERSION,
            "env": env,
            "created": _now(),
            "compression": compression,
            "chunk_rows": int(chunk_rows),
        }
        attrs.update(dict(metadata or {}))
        try:
            backend.start(attrs)
        except BaseException:
            backend.close()
            raise
        return backend

    @classmethod
    def open(cls, path: str | Path, mode: Literal["r", "a"] = "r") -> TrajectoryStore:
        """Open and validate an existing store (a path or an fsspec URL); read-only
        unless ``mode="a"``."""
        store = cls(open_backend(store_location(path), mode))
        try:
            store._validate()
        except BaseException:
            store.close()
            raise
        return store

    def __enter__(self) -> TrajectoryStore:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(commit=exc_type is None)

    def close(self, commit: bool = True) -> None:
        """Close the store; a store being created is moved into place (``commit``)
        or discarded (also when closing or moving it fails: nothing is left behind).
        A store created at a URL is deleted unless ``commit``."""
        staging, self._staging = self._staging, None
        if self._created_at_url:
            self._created_at_url = False
            self._backend.close()
            if not commit:
                type(self._backend).discard(self.path)  # type: ignore[attr-defined]
            return
        if staging is None:
            self._backend.close()
            return
        retired: Path | None = None
        try:
            self._backend.close()
            if commit:
                _check_replaceable(self.path, self._overwrite)
                # labels kept beside the old store go aside first: a kill never
                # leaves them on the new data
                retired = type(self._backend).retire_labels(self.path)
                replace_path(staging, self.path)
        except BaseException:
            remove_path(staging)
            if retired is not None:  # not replaced: the old store keeps its labels
                type(self._backend).restore_labels(self.path, retired)
            raise
        if retired is not None:
            remove_path(retired)
        if not commit:
            remove_path(staging)

    def __repr__(self) -> str:
        return (
            f"TrajectoryStore({str(self.path)!r}, {self.kind}, episodes={self.num_episodes}, "
            f"steps={self.num_steps}, labels={self.label_names()})"
        )

    # ---------------------------------------------------------------- validation
    def _nothing_committed(self) -> bool:
        """True for a store without a committed episode: one just created, or one whose
        first append was killed (its half-written fields are ignored, and removed by
        the next append, so that the store stays resumable)."""
        try:
            ends = self._backend.read("episodes/ends")
        except InputError:
            return False
        if ends.ndim != 1 or ends.dtype.kind not in "iu":
            return False
        self._ends = None
        return len(self._read_ends()) == 0

    def _validate(self) -> None:
        attrs = self._backend.attrs()
        if FORMAT_ATTR not in attrs:
            raise InputError(
                f"{self.path}: not a hipi-offline store (root attribute {FORMAT_ATTR} missing); "
                "use `hipi-offline import` to convert other formats"
            )
        if attrs[FORMAT_ATTR] != FORMAT_VERSION:
            raise InputError(
                f"{self.path}: {FORMAT_ATTR}={attrs[FORMAT_ATTR]} is not supported "
                f"(this version reads {FORMAT_VERSION})"
            )
        if self._nothing_committed():
            # a store created but never appended to (or whose first append was
            # killed) opens (commands that need episodes say so), so appends resume
            self._ends = np.zeros(0, np.int64)
            return
        fields = self.step_fields()
        info = self._backend.arrays("episodes").get("episodes/ends")
        for required in REQUIRED_STEP_FIELDS:
            if not any(k == required or k.startswith(required + "/") for k in fields):
                raise InputError(f"{self.path}: required field {required} is missing")
        if info is None:
            raise InputError(f"{self.path}: episodes/ends is missing")
        if len(info.shape) != 1 or info.dtype.kind not in "iu":
            raise InputError(
                f"{self.path}: episodes/ends must be a 1-D integer array, "
                f"got shape {info.shape} dtype {info.dtype}"
            )
        ends = self._read_ends()
        if len(ends):
            if ends[0] <= 0 or np.any(np.diff(ends) <= 0):
                bad = int(np.argmax(np.diff(np.concatenate([[0], ends])) <= 0))
                raise InputError(
                    f"{self.path}: episodes/ends must be strictly increasing and positive "
                    f"(episode {bad} has length <= 0)"
                )
            for name, field in fields.items():
                if len(field.shape) == 0 or field.shape[0] < ends[-1]:
                    rows = field.shape[0] if field.shape else 0
                    raise InputError(
                        f"{self.path}: {name} has {rows} rows but episodes/ends needs {ends[-1]}"
                    )
            for name, field in self.episode_fields().items():
                if len(field.shape) == 0 or field.shape[0] < len(ends):
                    raise InputError(
                        f"{self.path}: {name} has fewer rows than the {len(ends)} episodes"
                    )
        self._ends = ends

    # ---------------------------------------------------------------- metadata
    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (format version, env, created, free metadata)."""
        return self._backend.attrs()

    @property
    def ends(self) -> np.ndarray:
        """int64 [N] cumulative exclusive end offsets of the episodes."""
        if self._ends is None:
            self._ends = self._read_ends()
        return self._ends

    def _read_ends(self) -> np.ndarray:
        """``episodes/ends`` as committed (the backend knows what an interrupted
        append leaves behind)."""
        return self._backend.committed_ends()

    @property
    def starts(self) -> np.ndarray:
        """int64 [N] first row of each episode."""
        return np.concatenate([[0], self.ends[:-1]]).astype(np.int64)

    @property
    def lengths(self) -> np.ndarray:
        """int64 [N] number of steps in each episode."""
        return np.diff(np.concatenate([[0], self.ends])).astype(np.int64)

    @property
    def num_episodes(self) -> int:
        return len(self.ends)

    @property
    def num_steps(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def step_fields(self) -> dict[str, ArrayInfo]:
        """Every array under ``steps/``, by full path (``steps/infos/speed``); a store
        opened read-only lists them once (a scan of the file costs ~1 ms)."""
        found = self._step_fields
        if found is None:
            found = dict(sorted(self._backend.arrays("steps").items()))
            if not self._backend.writable:
                self._step_fields = found
        return dict(found)

    def episode_fields(self) -> dict[str, ArrayInfo]:
        """Every array under ``episodes/`` except ``episodes/ends``."""
        found = self._backend.arrays("episodes")
        found.pop("episodes/ends", None)
        return dict(sorted(found.items()))

    def field_info(self, name: str) -> ArrayInfo:
        """Shape and dtype of a step field, or an InputError naming it."""
        fields = self.step_fields()
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise InputError(f"field {name} is not in {self.path} (step fields: {known})")
        return fields[name]

    # ---------------------------------------------------------------- reading
    def read_steps(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` of one step field (stop defaults to the last valid row)."""
        self.field_info(name)
        return self._backend.read(name, start, self.num_steps if stop is None else stop)

    def read_episode_field(self, name: str) -> np.ndarray:
        """All N rows of ``episodes/<name>`` (full path or relative name)."""
        full = "episodes/" + _relative(name, "episodes")
        if full not in self.episode_fields():
            raise InputError(f"field {full} is not in {self.path}")
        return self._backend.read(full, 0, self.num_episodes)

    def episode(self, index: int, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The step fields of one episode, by full path."""
        if not -self.num_episodes <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range for {self.num_episodes} episodes")
        index %= self.num_episodes
        start, stop = int(self.starts[index]), int(self.ends[index])
        names = list(fields) if fields is not None else list(self.step_fields())
        return {name: self.read_steps(name, start, stop) for name in names}

    def chunk_bounds(
        self, chunk_steps: int, start: int = 0, stop: int | None = None
    ) -> list[tuple[int, int]]:
        """Row ranges of about ``chunk_steps`` rows covering ``[start, stop)`` (default:
        every step), cut where the whole store's ranges are cut (storage aligned)."""
        if chunk_steps <= 0:
            raise InputError(f"chunk_steps: must be positive, got {chunk_steps}")
        stop = self.num_steps if stop is None else stop
        if not 0 <= start <= stop <= self.num_steps:
            raise ValueError(f"rows [{start}, {stop}) out of range for {self.num_steps} steps")
        storage = min((f.chunk_rows for f in self.step_fields().values()), default=1)
        if chunk_steps >= storage:
            chunk_steps = (chunk_steps // storage) * storage
        if start == stop:
            return []
        cuts = [start, *range((start // chunk_steps + 1) * chunk_steps, stop, chunk_steps), stop]
        return list(zip(cuts[:-1], cuts[1:], strict=True))

    def iter_chunks(
        self,
        fields: Sequence[str],
        chunk_steps: int = DEFAULT_CHUNK_ROWS,
        prefetch: bool = True,
        start: int = 0,
        stop: int | None = None,
    ) -> Iterator[StepChunk]:
        """Stream the named step fields over rows ``[start, stop)`` in the chunks of
        :meth:`chunk_bounds`; with ``prefetch`` the next chunk is read in a background
        thread while the caller works on the current one."""
        for name in fields:
            self.field_info(name)
        bounds = self.chunk_bounds(chunk_steps, start, stop)

        def load(bound: tuple[int, int]) -> StepChunk:
            a, b = bound
            return StepChunk(a, b, {name: self._backend.read(name, a, b) for name in fields})

        if not prefetch or len(bounds) < 2:
            for bound in bounds:
                yield load(bound)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(load, bounds[0])
            for nxt in bounds[1:]:
                current = pending.result()
                pending = pool.submit(load, nxt)
                yield current
            yield pending.result()

    # ---------------------------------------------------------------- writing
    def append_episodes(
        self,
        steps: Mapping[str, np.ndarray],
        lengths: Sequence[int],
        episodes: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append episodes: ``steps`` maps field names (``observations``,
        ``infos/speed``; a ``steps/`` prefix is optional) to rows of all new episodes
        concatenated; ``lengths`` gives each new episode's number of steps.
        ``episodes/ends`` is written last, so an interrupted append changes nothing
        that readers see."""
        if not self._backend.writable:
            raise InputError(f"{self.path}: opened read-only; open with mode='a' to append")
        if self._staging is not None:  # a store being created is moved into place whole
            self._append(steps, lengths, episodes)
            return
        try:
            with self._backend.appending(self._append_bytes(steps, episodes)):
                self._append(steps, lengths, episodes)
        except BaseException:
            self._ends = None
            raise

    def _append_bytes(
        self, steps: Mapping[str, np.ndarray], episodes: Mapping[str, np.ndarray] | None
    ) -> int:
        """At most what an append adds: the new rows and one fresh chunk per field."""
        chunk_rows = int(self.attrs.get("chunk_rows", DEFAULT_CHUNK_ROWS))
        arrays = [np.asarray(v) for v in [*steps.values(), *(episodes or {}).values()]]
        rows = sum(a.nbytes for a in arrays)
        chunks = sum(a.itemsize * int(np.prod(a.shape[1:])) * chunk_rows for a in arrays)
        return rows + chunks

    def _append(
        self,
        steps: Mapping[str, np.ndarray],
        lengths: Sequence[int],
        episodes: Mapping[str, np.ndarray] | None,
    ) -> None:
        lengths_arr = np.asarray(lengths, dtype=np.int64)
        if lengths_arr.ndim != 1 or len(lengths_arr) == 0 or np.any(lengths_arr <= 0):
            raise InputError("lengths: need a non-empty list of positive episode lengths")
        new_rows = int(lengths_arr.sum())
        steps = {"steps/" + _relative(k, "steps"): np.asarray(v) for k, v in steps.items()}
        eps = {
            "episodes/" + _relative(k, "episodes"): np.asarray(v)
            for k, v in (episodes or {}).items()
        }
        if self.num_episodes == 0:
            self._backend.clear_data()  # leftovers of a killed first append
        self._check_append(steps, eps, new_rows, len(lengths_arr))
        old_rows, old_eps = self.num_steps, self.num_episodes
        chunk_rows = int(self.attrs.get("chunk_rows", DEFAULT_CHUNK_ROWS))
        compression = str(self.attrs.get("compression", "none"))
        existing = {**self.step_fields(), **self.episode_fields()}
        for name, data in [*steps.items(), *eps.items()]:
            offset = old_rows if name.startswith("steps/") else old_eps
            if name in existing:
                self._backend.resize(name, offset + len(data))
                self._backend.write(name, offset, data)
            else:
                rows = chunk_rows if name.startswith("steps/") else 4096
                self._backend.create(name, data, rows, compression)
        ends = old_rows + np.cumsum(lengths_arr)
        self._backend.resize("episodes/ends", old_eps + len(ends))
        self._backend.write("episodes/ends", old_eps, ends)
        self._ends = np.concatenate([self.ends, ends])

    def _check_append(
        self, steps: dict[str, np.ndarray], eps: dict[str, np.ndarray], rows: int, count: int
    ) -> None:
        for name in [*steps, *eps]:
            if not _FIELD_NAME.match(name) or name == "episodes/ends":
                raise InputError(f"{name}: not an allowed field name")
        existing_steps, existing_eps = self.step_fields(), self.episode_fields()
        if self.num_episodes == 0:
            for required in REQUIRED_STEP_FIELDS:
                if not any(k == required or k.startswith(required + "/") for k in steps):
                    raise InputError(f"{required}: required step field missing from the append")
        else:
            missing = sorted(set(existing_steps) - set(steps))
            if missing:
                raise InputError(f"{missing[0]}: stored field missing from the append")
            missing_eps = sorted(set(existing_eps) - set(eps))
            if missing_eps:
                raise InputError(f"{missing_eps[0]}: stored field missing from the append")
            new = sorted((set(steps) - set(existing_steps)) | (set(eps) - set(existing_eps)))
            if new:
                raise InputError(
                    f"{new[0]}: not in the store; fields are fixed by the first append"
                )
        for group, expected, existing in (
            (steps, rows, existing_steps),
            (eps, count, existing_eps),
        ):
            for name, data in group.items():
                if data.ndim == 0 or len(data) != expected:
                    got = len(data) if data.ndim else "a scalar"
                    raise InputError(f"{name}: has {got} rows, expected {expected}")
                if name in existing:
                    info = existing[name]
                    if tuple(data.shape[1:]) != info.shape[1:]:
                        raise InputError(
                            f"{name}: rows of shape {data.shape[1:]} do not match the stored "
                            f"{info.shape[1:]}"
                        )
                    if not np.can_cast(data.dtype, info.dtype, casting="same_kind"):
                        raise InputError(
                            f"{name}: dtype {data.dtype} cannot be stored as {info.dtype}"
                        )

    # ---------------------------------------------------------------- labels
    def label_names(self) -> list[str]:
        """Names of the label sets stored with this store."""
        return list_label_sets(self.path)

    def read_labels(self, name: str) -> LabelSet:
        """One label set as a :class:`~hipi_offline.store.labels.LabelSet`."""
        labels = read_label_set(self.path, name)
        if labels.num_episodes != self.num_episodes:
            raise InputError(
                f"labels/{name}: has {labels.num_episodes} episodes but the store has "
                f"{self.num_episodes}; relabel with --overwrite"
            )
        return labels


def _check_replaceable(path: Path, overwrite: bool) -> None:
    """Creating at ``path``: nothing there, or (with ``overwrite``) a hipi-offline store
    and nothing beside it that its backend refuses to replace (an HDF5 label link)."""
    from hipi_offline.ownership import check_replaceable_store  # (imports this package)

    if not os.path.lexists(path):
        return
    check_replaceable_store(path)  # a link or anything but a store: never replaced
    if not overwrite:
        raise InputError(f"{path}: already exists; pass --overwrite to replace it")
    backend_for(path).check_replaceable(path)


def store_exists(location: str | os.PathLike[str]) -> bool:
    """Whether anything is at a local path (a dangling link included), or whether a
    Zarr store (its root ``zarr.json``) is at a URL."""
    where = store_location(location)
    if not is_url(where):
        return os.path.lexists(where)
    from hipi_offline.store.remote import filesystem, remote_errors

    fs, root = filesystem(str(where))
    with remote_errors(str(where)):
        return bool(fs.exists(f"{root}/zarr.json"))


def same_store(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two locations name one store (local paths resolved, URLs as written)."""
    first, second = store_location(a), store_location(b)
    if is_url(first) or is_url(second):
        return str(first) == str(second)
    return Path(first).resolve() == Path(second).resolve()


def open_store(path: str | Path, mode: Literal["r", "a"] = "r") -> TrajectoryStore:
    """Open and validate a store; the backend follows the suffix (.h5/.hdf5, .zarr) and
    whether it is a path or an fsspec URL (``s3://bucket/x.zarr``)."""
    return TrajectoryStore.open(path, mode)


def create_store(path: str | Path, **options: Any) -> TrajectoryStore:
    """Create an empty store; see :meth:`TrajectoryStore.create` for options."""
    return TrajectoryStore.create(path, **options)
