"""Helpers shared by the importers: staged destinations, source HDF5 access and
batched appends of whole episodes to a new store."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline import preflight
from hipi_offline.errors import InputError, one_line
from hipi_offline.ownership import check_disjoint, check_replaceable_store
from hipi_offline.preflight import check_writable, existing_ancestor
from hipi_offline.progress import progress_bar
from hipi_offline.store import TrajectoryStore, create_store
from hipi_offline.store.atomic import remove_abandoned_siblings, remove_path, replace_path, sibling
from hipi_offline.store.backends import backend_for
from hipi_offline.store.location import is_url
from hipi_offline.store.store import FORMAT_ATTR

DEFAULT_BATCH_STEPS = 200_000
"""Steps buffered before one append to the store."""
DEFAULT_BATCH_BYTES = 256 << 20
"""Bytes buffered before one append (bounds memory for image observations)."""
MAX_ATTR_JSON = 16_000
"""Source metadata values longer than this as JSON are dropped (HDF5 attribute limit)."""
MAX_TEXT_ATTR = 1 << 20
"""Longest source string (env_args, env_spec) kept as its own store attribute."""


# ---------------------------------------------------------------- destinations
FREE_SPACE_MARGIN = 4 << 20
"""Bytes kept free beyond the predicted size (file-format overhead, metadata)."""


def check_store_destination(
    src: Path, dest: Path, overwrite: bool, *, also: tuple[Path, ...] = ()
) -> None:
    """Refuse a store DEST that cannot be written or must not be replaced: a bad
    suffix, one that overlaps the source (or a path in ``also``), an existing path
    without ``overwrite``, anything but a hipi-offline store with it, or a stray
    folder kept beside a store (an HDF5 store's labels). At a URL: what is there, and
    a write probe (see ``ObjectZarrBackend.prepare_create``)."""
    backend = backend_for(dest)
    if is_url(dest):
        backend.prepare_create(str(dest), overwrite, FORMAT_ATTR)  # type: ignore[attr-defined]
        return
    check_disjoint(src, dest, also=also)
    refuse_link(dest)
    if dest.exists():
        if not overwrite:
            raise InputError(f"{dest}: already exists; pass --overwrite to replace it")
        check_replaceable_store(dest)
    check_parent(dest)
    for side in backend.side_paths(dest):
        _check_side_path(src, dest, side)


def refuse_link(dest: Path) -> None:
    """A destination that is a symbolic link is never written through or replaced."""
    if dest.is_symlink():
        raise InputError(
            f"{dest}: is a symbolic link; hipi-offline never replaces a link "
            "(remove it or choose another destination)"
        )


def _check_side_path(src: Path, dest: Path, labels: Path) -> None:
    """What a store keeps beside it (an HDF5 store's label folder) is deleted when the
    store is replaced: refuse when it holds the source, is a link, or belongs to no store."""
    if inside(src, labels):
        raise InputError(
            f"{dest}: replacing it deletes {labels}, which holds the source {src}; "
            "choose another destination"
        )
    if labels.is_symlink():
        raise InputError(f"{labels}: is a symbolic link; remove it or choose another destination")
    if labels.exists() and not dest.exists():
        raise InputError(
            f"{labels}: exists without the store {dest.name} and would be deleted; "
            "remove it yourself or choose another destination"
        )


def inside(path: Path, folder: Path) -> bool:
    """True when ``path`` (resolved) equals or lies inside ``folder`` (resolved)."""
    target = Path(os.path.abspath(path)).resolve(strict=False)
    root = Path(os.path.abspath(folder)).resolve(strict=False)
    return target == root or root in target.parents


def check_parent(dest: Path) -> None:
    """DEST's nearest existing ancestor must be a writable folder."""
    check_writable(existing_ancestor(dest.parent), str(dest))


def check_free_space(dest: Path, needed: int) -> None:
    """ResourceError when the filesystem of DEST has less than ``needed`` bytes free
    (plus a margin for metadata)."""
    preflight.check_free_space(dest, needed + FREE_SPACE_MARGIN, str(dest))


def dataset_bytes(datasets: Iterable[Any]) -> int:
    """Bytes the numeric ``datasets`` hold uncompressed."""
    return sum(
        int(np.dtype(d.dtype).itemsize) * int(np.prod(d.shape, dtype=np.int64)) for d in datasets
    )


@contextmanager
def created_parents(dest: Path) -> Iterator[None]:
    """Create DEST's missing parent folders; remove them again if the block fails."""
    missing = []
    parent = Path(os.path.abspath(dest)).parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir()
    try:
        yield
    except BaseException:
        for folder in missing:
            with suppress(OSError):
                folder.rmdir()
        raise


@contextmanager
def staged_folder(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling of the folder ``dest`` to write into; on success it
    replaces ``dest``, on failure it is deleted, so no half-written DEST is left.
    The caller has checked that ``dest`` may be replaced."""
    with created_parents(dest):
        remove_abandoned_siblings(dest)
        tmp = sibling(dest, "creating")
        try:
            yield tmp
            replace_path(tmp, dest)
        finally:
            remove_path(tmp)


# ---------------------------------------------------------------- source HDF5
def open_hdf5_source(path: Path) -> Any:
    """Open a source file read-only with h5py, or an InputError naming it."""
    import h5py

    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an HDF5 file")
    if not path.is_file():
        raise InputError(f"{path}: is a special file (a FIFO or device), not an HDF5 file")
    if not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        reason = str(err).split("(")[0].strip() or "unreadable"
        raise InputError(f"{path}: not a readable HDF5 file ({reason})") from None


# what h5py raises on damaged chunks, broken links and unsupported types
_READ_ERRORS = (OSError, KeyError, TypeError, ValueError, RuntimeError)


def read_rows(source: Path, dataset: Any, start: int | None = None, stop: int | None = None) -> Any:
    """``dataset[start:stop]`` (all of it by default) as an array, or an InputError."""
    try:
        if start is None and stop is None:
            return np.asarray(dataset[()])
        return np.asarray(dataset[start:stop])
    except _READ_ERRORS as err:
        raise InputError(
            f"{source}: {source_name(dataset)} is damaged or unreadable ({one_line(err, 120)})"
        ) from None


def child(group: Any, key: str, source: Path) -> Any:
    """``group[key]`` or an InputError (a broken or external link, a damaged header)."""
    try:
        return group[key]
    except _READ_ERRORS as err:
        where = _join(group.name, key)
        raise InputError(f"{source}: {where} is unreadable ({one_line(err, 120)})") from None


def require_group(group: Any, key: str, source: Path) -> Any:
    """``group[key]`` when it is a group, or an InputError naming the field."""
    import h5py

    node = require(group, key, source)
    if not isinstance(node, h5py.Group):
        raise InputError(f"{source}: {_join(group.name, key)} must be a group, not a dataset")
    return node


def require(group: Any, key: str, source: Path) -> Any:
    """``group[key]`` or an InputError naming the file and the missing field."""
    if key not in group:
        raise InputError(f"{source}: required field {_join(group.name, key)} is missing")
    return child(group, key, source)


def leaf_datasets(node: Any, prefix: str, source: Path) -> dict[str, Any]:
    """The h5py datasets under ``node`` keyed by ``prefix/relative/path``
    (``{prefix: node}`` when ``node`` is itself a dataset)."""
    import h5py

    if isinstance(node, h5py.Dataset):
        return {prefix: node}
    found: dict[str, Any] = {}
    for key in node:
        found.update(leaf_datasets(child(node, key, source), f"{prefix}/{key}", source))
    return found


def _join(group_name: str, key: str) -> str:
    return f"{group_name.rstrip('/')}/{key}".lstrip("/")


def source_name(dataset: Any) -> str:
    """The HDF5 path of a dataset without the leading slash (for messages)."""
    return str(dataset.name).lstrip("/")


def check_rows(source: Path, dataset: Any, expected: int, what: str = "rows") -> None:
    """InputError unless ``dataset`` has ``expected`` rows along axis 0."""
    rows = dataset.shape[0] if dataset.shape else None
    if rows != expected:
        got = "a scalar" if rows is None else f"{rows} {what}"
        raise InputError(f"{source}: {source_name(dataset)} has {got}, expected {expected} {what}")


def is_numeric(dataset: Any) -> bool:
    """True for bool/int/float/complex datasets (what a store can hold)."""
    return np.dtype(dataset.dtype).kind in "biufc"


def require_numeric(source: Path, dataset: Any) -> None:
    if not is_numeric(dataset):
        raise InputError(
            f"{source}: {source_name(dataset)} has dtype {dataset.dtype}; "
            "only numeric and bool data can be imported"
        )


def numeric_only(fields: Mapping[str, Any], skipped: set[str]) -> dict[str, Any]:
    """Keep numeric datasets; add the HDF5 paths of the others to ``skipped``."""
    kept = {}
    for name, dataset in fields.items():
        if is_numeric(dataset):
            kept[name] = dataset
        else:
            skipped.add(source_name(dataset))
    return kept


# ---------------------------------------------------------------- metadata
class UnsupportedValue(TypeError):
    """A source value that has no JSON form (complex, references, empty spaces)."""


def jsonable(value: Any) -> Any:
    """HDF5 attribute / numpy values as plain JSON values; :class:`UnsupportedValue`
    for values that have none (complex numbers, object references, ...)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufSUO" or value.dtype.names:
            raise UnsupportedValue(f"an array of dtype {value.dtype}")
        return [jsonable(v) for v in value.tolist()] if value.ndim else jsonable(value.item())
    if isinstance(value, np.generic) and np.dtype(value.dtype).kind in "biufSU":
        return jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    raise UnsupportedValue(f"a value of type {type(value).__name__}")


def read_attrs(node: Any, source: Path) -> dict[str, Any]:
    """``node``'s HDF5 attributes as JSON values, or an InputError naming the one
    that cannot be read or has no JSON form."""
    where = str(node.name).strip("/") or "the root group"
    try:
        keys = list(node.attrs.keys())
    except _READ_ERRORS as err:
        raise InputError(
            f"{source}: attrs of {where} are unreadable ({one_line(err, 120)})"
        ) from None
    return {key: read_attr(node, key, source) for key in keys}


def read_attr(node: Any, key: str, source: Path) -> Any:
    """One HDF5 attribute of ``node`` as a JSON value (None when absent), or an
    InputError naming it."""
    where = str(node.name).strip("/") or "the root group"
    try:
        return jsonable(node.attrs[key]) if key in node.attrs else None
    except UnsupportedValue as err:
        raise InputError(
            f"{source}: attr {key!r} of {where} is {err}, which cannot be imported; "
            "remove or convert it"
        ) from None
    except (*_READ_ERRORS, RecursionError) as err:
        raise InputError(
            f"{source}: attr {key!r} of {where} is unreadable ({one_line(err, 120)})"
        ) from None


def metadata_json(values: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``values`` as a JSON string, leaving out entries longer than
    :data:`MAX_ATTR_JSON` characters (and ones too deeply nested to encode); also
    returns the names left out."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in values.items():
        try:
            text = json.dumps(jsonable(value))
        except (RecursionError, UnsupportedValue, ValueError):
            text = None
        if text is None or len(text) > MAX_ATTR_JSON:
            dropped.append(str(key))
        else:
            kept[str(key)] = json.loads(text)
    return json.dumps(kept, sort_keys=True), dropped


def text_value(value: Any, field: str, where: Path, limit: int = MAX_TEXT_ATTR) -> str | None:
    """``value`` if it is a string of at most ``limit`` characters (None stays None);
    otherwise an InputError naming ``field``."""
    if value is None or isinstance(value, str) and len(value) <= limit:
        return value
    if isinstance(value, str):
        raise InputError(f"{where}: {field} is {len(value):,} characters long (at most {limit:,})")
    raise InputError(f"{where}: {field} must be a string, got {_kind(value)}")


def count_value(value: Any, field: str, where: Path) -> int:
    """``value`` as a non-negative int64 count, or an InputError naming ``field``."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise InputError(f"{where}: {field} must be a non-negative integer, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return repr(one_line(value, 40))
    if isinstance(value, bool | int | float):
        return one_line(repr(value), 40)
    return f"a {type(value).__name__}"


def numeric_suffix(name: str, prefix: str) -> int | None:
    """``12`` for ``prefix12``; None when ``name`` is not ``prefix`` + digits."""
    rest = name[len(prefix) :]
    return int(rest) if name.startswith(prefix) and rest.isdigit() else None


def sorted_numbered(names: Sequence[str], prefix: str) -> list[tuple[int, str]]:
    """``(number, name)`` for the names ``prefix<number>``, by number."""
    found = [(numeric_suffix(name, prefix), name) for name in names]
    return sorted((n, name) for n, name in found if n is not None)


# ---------------------------------------------------------------- writing
class EpisodeWriter:
    """Buffers whole episodes and appends them to a store in batches of about
    ``batch_steps`` steps (or ``batch_bytes`` bytes), with a progress bar."""

    def __init__(
        self,
        store: TrajectoryStore,
        total_episodes: int,
        desc: str,
        batch_steps: int = DEFAULT_BATCH_STEPS,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> None:
        self.store = store
        self.batch_steps = max(1, int(batch_steps))
        self.batch_bytes = max(1, int(batch_bytes))
        self._steps: dict[str, list[np.ndarray]] = {}
        self._episodes: dict[str, list[np.ndarray]] = {}
        self._lengths: list[int] = []
        self._rows = 0
        self._bytes = 0
        self._bar = progress_bar(total=total_episodes, desc=desc, unit="ep")

    def add(
        self,
        steps: Mapping[str, np.ndarray],
        lengths: Sequence[int],
        episodes: Mapping[str, np.ndarray],
        where: str,
    ) -> None:
        """Buffer episodes (``steps`` rows = sum of ``lengths``; ``episodes`` rows =
        number of episodes); ``where`` names them in errors (file and group)."""
        self._check_fields(steps, episodes, where)
        for name, data in steps.items():
            self._steps.setdefault(name, []).append(np.asarray(data))
        for name, data in episodes.items():
            self._episodes.setdefault(name, []).append(np.asarray(data))
        self._lengths.extend(int(n) for n in lengths)
        self._rows += int(sum(lengths))
        self._bytes += sum(np.asarray(v).nbytes for v in (*steps.values(), *episodes.values()))
        self._bar.update(len(lengths))
        if self._rows >= self.batch_steps or self._bytes >= self.batch_bytes:
            self.flush()

    def _check_fields(
        self, steps: Mapping[str, np.ndarray], episodes: Mapping[str, np.ndarray], where: str
    ) -> None:
        got = {("steps", k) for k in steps} | {("episodes", k) for k in episodes}
        expected = {("steps", k) for k in self._steps} | {("episodes", k) for k in self._episodes}
        if not expected and self.store.num_episodes:
            fields = [*self.store.step_fields(), *self.store.episode_fields()]
            expected = {tuple(name.split("/", 1)) for name in fields}
        if not expected or got == expected:
            return
        missing, extra = sorted(expected - got), sorted(got - expected)
        if missing:
            raise InputError(f"{where}: lacks {'/'.join(missing[0])}, which earlier episodes have")
        raise InputError(f"{where}: has {'/'.join(extra[0])}, which earlier episodes lack")

    def flush(self) -> None:
        """Append what is buffered to the store."""
        if not self._lengths:
            return
        steps = {k: np.concatenate(v) for k, v in self._steps.items()}
        episodes = {k: np.concatenate(v) for k, v in self._episodes.items()}
        self.store.append_episodes(steps, self._lengths, episodes)
        self._steps, self._episodes, self._lengths = {}, {}, []
        self._rows = self._bytes = 0

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self._bar.close()


@contextmanager
def new_store(
    src: Path,
    dest: Path,
    overwrite: bool,
    env: str,
    metadata: Mapping[str, Any],
    needed: int,
    also: tuple[Path, ...] = (),
) -> Iterator[TrajectoryStore]:
    """Create a store at ``dest`` after the last checks (destination, ``needed``
    bytes free): the store stages itself beside ``dest`` and is moved into place
    when the block succeeds (discarded, with any parent folders it made, when it fails)."""
    check_store_destination(src, dest, overwrite, also=also)
    url = is_url(dest)
    if not url:  # object stores report no free space and have no folders to make
        check_free_space(dest, needed)
    with (
        nullcontext() if url else created_parents(dest),
        create_store(dest, env=env, metadata=dict(metadata), overwrite=overwrite) as store,
    ):
        yield store
        if store.num_episodes == 0:
            raise InputError(f"{metadata.get('source', dest)}: no episodes were imported")


def store_metadata(
    source_format: str, source: Path, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Root metadata every import writes: ``source_format``, ``source`` and the
    extras (empty lists and None left out)."""
    kept = {k: v for k, v in (extra or {}).items() if v is not None and not _empty_list(v)}
    return {"source_format": source_format, "source": str(source.resolve()), **kept}


def _empty_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 0


def row_bytes(fields: Mapping[str, Any]) -> int:
    """Bytes of one row of every dataset in ``fields`` together."""
    return sum(
        int(np.dtype(d.dtype).itemsize * np.prod(d.shape[1:], dtype=np.int64))
        for d in fields.values()
    )


def rows_per_batch(bytes_per_row: int, batch_steps: int, batch_bytes: int) -> int:
    """Rows per batch within both the step and the byte budget (at least 1)."""
    return max(1, min(int(batch_steps), int(batch_bytes) // max(1, bytes_per_row)))


def episode_batches(ends: np.ndarray, max_rows: int) -> Iterator[tuple[int, int]]:
    """Episode ranges ``[i, j)`` of at most ``max_rows`` rows (or one longer episode)."""
    ends = np.asarray(ends, dtype=np.int64)
    i = 0
    while i < len(ends):
        start = int(ends[i - 1]) if i else 0
        j = max(i + 1, int(np.searchsorted(ends, start + max_rows, side="right")))
        yield i, j
        i = j
