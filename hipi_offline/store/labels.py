"""Label sets: the posterior over tasks of every episode, written atomically.

A label set is never written into the main store file, so relabeling cannot
damage the data. Where it lives and how it is committed by one atomic step
belongs to the store's backend (``hdf5_backend.py``: ``X.h5.labels/<name>.h5``;
``zarr_backend.py``: ``X.zarr/labels/<name>``, a link to a version folder). A kill
at any moment leaves either the old or the new label set, never a mix.

A store is untrusted input: the label area must be real folders and no path that
a link leads out of the area is ever read, replaced or deleted (each backend
checks its entries). Writers of one label set are serialized by an exclusive
``flock`` on a lock file inside the area. This module holds what every backend
shares: the :class:`LabelSet` record, its checks, names, locks and sizes.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.errors import InputError, describe_os_error
from hipi_offline.preflight import check_free_space, check_writable
from hipi_offline.store.atomic import lstat_or_none, special_file_error
from hipi_offline.store.backends import StorageBackend, backend_for, jsonable
from hipi_offline.store.hdf5_backend import hdf5_sidecar
from hipi_offline.store.location import Location, is_url, store_location
from hipi_offline.store.names import MAX_NAME_LENGTH, RESERVED_NAMES, check_label_name

__all__ = [
    "LABEL_ARRAYS",
    "MAX_NAME_LENGTH",
    "RESERVED_NAMES",
    "LabelSet",
    "PosteriorSpread",
    "check_can_write",
    "check_label_name",
    "check_label_space",
    "hdf5_sidecar",
    "label_area",
    "label_lock",
    "label_set_bytes",
    "list_label_sets",
    "read_label_set",
    "remove_label_set",
    "write_label_set",
]

LABEL_ARRAYS = ("candidates", "log_z", "topk_index", "topk_logprob", "entropy", "coverage")
LABEL_OVERHEAD_BYTES = 256 * 1024
_HELD_LOCKS: dict[str, int] = {}


@dataclass(frozen=True, repr=False)
class LabelSet:
    """Posterior q(psi | tau_i) over K candidate tasks for N episodes (top-k kept)."""

    name: str
    candidates: np.ndarray  # float32 [K, D]
    log_z: np.ndarray  # float64 [K]
    topk_index: np.ndarray  # int64 [N, k], most probable first
    topk_logprob: np.ndarray  # float32 [N, k], normalized over all K
    entropy: np.ndarray  # float32 [N]
    coverage: np.ndarray  # float64 [K]
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"LabelSet({self.name!r}, method={self.attrs.get('method')!r}, "
            f"candidates={self.candidates.shape}, topk={self.topk_index.shape})"
        )

    @property
    def num_episodes(self) -> int:
        return int(self.topk_index.shape[0])

    @property
    def num_candidates(self) -> int:
        return int(self.candidates.shape[0])

    @property
    def k(self) -> int:
        return int(self.topk_index.shape[1])

    def most_probable_tasks(self) -> np.ndarray:
        """float32 [N, D]: each episode's most probable candidate task."""
        return self.candidates[self.topk_index[:, 0]]

    def topk_probabilities(self) -> np.ndarray:
        """float64 [N, k]: the top-k posterior renormalized to sum to one per episode."""
        logp = self.topk_logprob.astype(np.float64)
        logp = logp - logp.max(axis=1, keepdims=True)
        p = np.exp(logp)
        return p / p.sum(axis=1, keepdims=True)

    def topk_cdf(self) -> np.ndarray:
        """float64 [N, k]: the cumulative top-k posterior that task draws invert (here
        and in ``bc.data.TaskSampler``): slot ``j`` is drawn for a uniform u when
        ``cdf[j-1] <= u < cdf[j]``. From each row's last slot of positive probability on
        it is +inf, so a u < 1 never lands past it, whatever the rounding of the sum."""
        probs = self.topk_probabilities()
        cdf = np.cumsum(probs, axis=1)
        k = probs.shape[1]
        last = k - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
        cdf[np.arange(k)[None, :] >= last[:, None]] = np.inf
        return cdf

    def sample_tasks(self, episodes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """float32 [B, D]: one task per given episode, drawn from its (top-k) posterior."""
        u = rng.random((len(episodes), 1))
        choice = (self.topk_cdf()[episodes] <= u).sum(axis=1)  # searchsorted(right=True)
        return self.candidates[self.topk_index[episodes, choice]]


@dataclass(frozen=True)
class PosteriorSpread:
    """How spread the posteriors of a label set are."""

    mean_entropy: float
    """Mean posterior entropy (nats) per episode."""
    effective_tasks: float
    """Mean of exp(entropy): how many tasks each episode is labeled with, in effect."""
    coverage_effective_tasks: float
    """exp(entropy of the coverage): how many tasks the data as a whole teaches."""

    @classmethod
    def of(cls, entropy: np.ndarray, coverage: np.ndarray) -> PosteriorSpread:
        entropy = np.asarray(entropy, np.float64)
        positive = coverage[coverage > 0]
        return cls(
            mean_entropy=float(entropy.mean()),
            effective_tasks=float(np.exp(entropy).mean()),
            coverage_effective_tasks=float(np.exp(-(positive * np.log(positive)).sum())),
        )


def _backend(store_path: Location) -> type[StorageBackend]:
    return backend_for(store_path)


def _where(store_path: str | os.PathLike[str]) -> Any:
    """The store's location as its backend takes it: a Path, or a URL string."""
    return store_location(store_path)


def label_area(store_path: Location) -> Any:
    """The checked folder of a store's label sets (``X.h5.labels/`` or ``X.zarr/labels/``
    with its ``.sets/``; ``URL/labels`` at a URL), or None when there is none yet."""
    return _backend(store_path).label_area(_where(store_path))


def prepare_label_area(store_path: Location) -> tuple[Any, list[Path]]:
    """The label area, created if missing and checked to be writable (before any work;
    at a URL by writing and deleting a probe object), and the folders created for it."""
    try:
        area, created = _backend(store_path).make_label_area(_where(store_path))
    except OSError as err:
        raise describe_os_error(err) from None
    if not is_url(area):
        check_writable(area, "label sets")
    return area, created


def _remove_if_unused(created: list[Path]) -> None:
    """Undo :func:`prepare_label_area` when nothing was committed (best effort)."""
    for folder in reversed(created):
        try:
            if set(os.listdir(folder)) <= {"zarr.json"}:
                (folder / "zarr.json").unlink(missing_ok=True)
                folder.rmdir()
        except OSError:
            pass


def list_label_sets(store_path: Location) -> list[str]:
    """Names of the committed label sets of a store, sorted (links are not followed;
    a damaged or crafted entry is listed and refused when read)."""
    return _backend(store_path).list_labels(_where(store_path))


def _check_listed(store_path: Location, name: str) -> None:
    """An InputError naming the label sets there are, unless ``name`` is one."""
    if name not in list_label_sets(store_path):
        known = ", ".join(list_label_sets(store_path)) or "none"
        raise InputError(f"labels/{name}: no such label set in {store_path} (have: {known})")


def attr_value(value: Any) -> Any:
    """A label-set attribute as a plain Python value (plain bytes decoded)."""
    if isinstance(value, bytes) and not isinstance(value, np.generic):
        return value.decode()
    return jsonable(value)


def _check_label_arrays(name: str, arrays: dict[str, np.ndarray]) -> None:
    """Shapes and index ranges that every reader relies on."""
    cand, topk = arrays["candidates"], arrays["topk_index"]
    k_all = cand.shape[0] if cand.ndim == 2 else -1
    n, k = topk.shape if topk.ndim == 2 else (-1, -1)
    expected = {
        "log_z": (k_all,),
        "coverage": (k_all,),
        "topk_logprob": (n, k),
        "entropy": (n,),
    }
    problem = None
    if cand.ndim != 2 or topk.ndim != 2 or topk.dtype.kind not in "iu":
        problem = "candidates must be 2-D and topk_index a 2-D integer array"
    elif k < 1 or k > k_all:
        problem = f"top-k {k} does not fit {k_all} candidates"
    else:
        wrong = [key for key, shape in expected.items() if arrays[key].shape != shape]
        if wrong:
            problem = (
                f"{wrong[0]} has shape {arrays[wrong[0]].shape}, expected {expected[wrong[0]]}"
            )
        elif topk.size and (topk.min() < 0 or topk.max() >= k_all):
            problem = f"topk_index out of range [0, {k_all})"
    if problem is not None:
        raise InputError(f"labels/{name}: damaged label set ({problem}); relabel with --overwrite")


def read_label_set(store_path: Location, name: str) -> LabelSet:
    """Load one committed label set; an InputError if it is missing, damaged or leads
    out of the store through a link."""
    check_label_name(name)
    _check_listed(store_path, name)
    try:
        arrays, raw = _backend(store_path).read_labels(_where(store_path), name, LABEL_ARRAYS)
        attrs = {key: attr_value(value) for key, value in raw.items()}
    except InputError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise InputError(
            f"labels/{name}: damaged label set ({reason}); relabel with --overwrite"
        ) from None
    _check_label_arrays(name, arrays)
    return LabelSet(name=name, attrs=attrs, **arrays)


def _label_arrays(labels: LabelSet) -> dict[str, np.ndarray]:
    return {
        "candidates": np.asarray(labels.candidates, np.float32),
        "log_z": np.asarray(labels.log_z, np.float64),
        "topk_index": np.asarray(labels.topk_index, np.int64),
        "topk_logprob": np.asarray(labels.topk_logprob, np.float32),
        "entropy": np.asarray(labels.entropy, np.float32),
        "coverage": np.asarray(labels.coverage, np.float64),
    }


def check_can_write(store_path: Location, name: str, overwrite: bool) -> None:
    """Refuse early (before any work) an invalid name, an entry that cannot be
    replaced safely, and an existing label set without ``overwrite``."""
    check_label_name(name)
    area = label_area(store_path)
    if area is None:
        return
    exists = _backend(store_path).label_exists(_where(store_path), area, name)
    if exists and not overwrite:
        raise InputError(f"labels/{name}: already exists; pass --overwrite to replace it")


def _same_file(fd: int, path: Path) -> bool:
    found = lstat_or_none(path)
    mine = os.fstat(fd)
    return found is not None and (found.st_dev, found.st_ino) == (mine.st_dev, mine.st_ino)


def _take_lock(path: Path, name: str) -> int:
    """Open and ``flock`` the lock file; retried when the previous holder removed it
    between our open and our lock (the lock then belongs to a deleted file)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    while True:
        fd = os.open(path, flags, 0o644)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise special_file_error(path, mode)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(
                    f"labels/{name}: another process is writing this label set (lock {path});"
                    " wait for it to finish or choose another --name"
                ) from None
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _release_lock(fd: int, path: Path) -> None:
    """Remove the lock file while still holding it, then let it go."""
    try:
        if _same_file(fd, path):
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def label_lock(store_path: Location, name: str) -> Iterator[Any]:
    """Hold the exclusive lock of label set ``name`` (creating the label area, checked
    writable); a second writer, in any process, gets an InputError at once. Yields the
    label area. Re-entrant within one process. The lock file is removed on release,
    and so is a label area it created when nothing was committed into it. Object
    stores have no locks (see ``object_backend.py``): there it checks writability only."""
    check_label_name(name)
    area, created = prepare_label_area(store_path)
    if not _backend(store_path).locks_labels:
        yield area
        return
    path = _backend(store_path).label_lock_path(area, name)
    key = os.path.realpath(path)
    fd = None
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key] += 1
    else:
        try:
            fd = _take_lock(path, name)
        except BaseException as err:
            _remove_if_unused(created)
            if isinstance(err, OSError):
                raise describe_os_error(err) from None
            raise
        _HELD_LOCKS[key] = 1
    try:
        yield area
    finally:
        _HELD_LOCKS[key] -= 1
        if _HELD_LOCKS[key] == 0:
            del _HELD_LOCKS[key]
        if fd is not None:
            _release_lock(fd, path)
            _remove_if_unused(created)


def label_set_bytes(episodes: int, candidates: int, task_dim: int, top_k: int) -> int:
    """Bytes a label set takes on disk (uncompressed arrays plus metadata)."""
    per_episode = top_k * (8 + 4) + 4
    per_candidate = task_dim * 4 + 8 + 8
    return episodes * per_episode + candidates * per_candidate + LABEL_OVERHEAD_BYTES


def check_label_space(store_path: Location, name: str, needed: int) -> None:
    """A ResourceError before any work when the label area lacks ``needed`` bytes (at a
    URL there is no free space to ask for: writability is checked)."""
    area, _ = prepare_label_area(store_path)
    if not is_url(area):
        check_free_space(area, needed, f"label set {name}")


def write_label_set(store_path: Location, labels: LabelSet, overwrite: bool = False) -> None:
    """Commit a label set atomically (see the backend's docstring) under its lock."""
    with label_lock(store_path, labels.name):
        check_can_write(store_path, labels.name, overwrite)
        arrays = _label_arrays(labels)
        attrs = {k: attr_value(v) for k, v in labels.attrs.items()}
        _backend(store_path).commit_labels(_where(store_path), labels.name, arrays, attrs)


def remove_label_set(store_path: Location, name: str) -> None:
    """Delete one committed label set under its lock. Only an entry that this toolkit
    writes is removed (a label file, or a Zarr link to one of the set's own versions);
    anything else, a link out of the store included, is refused and left in place."""
    with label_lock(store_path, name):
        _check_listed(store_path, name)
        _backend(store_path).remove_labels(_where(store_path), name)
