"""Label sets: the posterior over tasks of every episode, written atomically.

A label set is never written into the main store file, so relabeling cannot
damage the data. It is committed by one atomic rename:

* HDF5 store ``X.h5``: the set is the file ``X.h5.labels/<name>.h5``, written
  under a temporary name, fsynced, then ``os.replace``-d into place.
* Zarr store ``X.zarr``: the set is the group ``X.zarr/labels/<name>``, a
  symlink to ``labels/.sets/<name>.<token>``; a new version is written beside
  it and the link is swapped with one ``os.replace``.

A kill at any moment leaves either the old or the new label set, never a mix.

A store is untrusted input: the label area (``X.h5.labels/``, ``X.zarr/labels/``
and ``labels/.sets/``) must be real folders, a Zarr label link must point at one
of its own versions in ``labels/.sets``, and no path that a link leads out of the
area is ever read, replaced or deleted. Writers of one label set are serialized
by an exclusive ``flock`` on a lock file inside the area.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import shutil
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.errors import InputError, describe_os_error
from hipi_offline.preflight import check_free_space, check_writable
from hipi_offline.store.atomic import (
    abandoned,
    atomic_write_bytes,
    check_plain_tree,
    fsync_path,
    special_file_error,
    writer_token,
)
from hipi_offline.store.backends import backend_kind

LABEL_ARRAYS = ("candidates", "log_z", "topk_index", "topk_logprob", "entropy", "coverage")
_NAME_TEXT = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
_NAME = re.compile(_NAME_TEXT)  # always used with fullmatch (``$`` lets "x\n" through)
MAX_NAME_LENGTH = 100
RESERVED_NAMES = frozenset({"zarr.json", ".sets", ".zgroup", ".zattrs", ".zarray", ".zmetadata"})
_TOKEN_TEXT = r"(?P<token>\d+-[0-9a-f]{32})"
_VERSION = re.compile(rf"(?P<name>{_NAME_TEXT})\.{_TOKEN_TEXT}")  # labels/.sets/<name>.<token>
_LINK_TMP = re.compile(rf"\.link-{_TOKEN_TEXT}")  # labels/.sets/.link-<token>
_HDF5_TMP = re.compile(rf"\.(?P<name>{_NAME_TEXT})\.{_TOKEN_TEXT}\.tmp")  # X.h5.labels/
LABEL_OVERHEAD_BYTES = 256 * 1024
_HELD_LOCKS: dict[str, int] = {}
_GROUP_JSON = b'{"zarr_format": 3, "node_type": "group", "attributes": {}}'


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


def hdf5_sidecar(store_path: Path) -> Path:
    """Directory holding the label sets of an HDF5 store."""
    return Path(str(store_path) + ".labels")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _real_folder(path: Path) -> bool:
    """True for a real folder, False when absent; an InputError for a link or a file."""
    info = _lstat(path)
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


def label_area(store_path: Path) -> Path | None:
    """The checked folder of a store's label sets (``X.h5.labels/`` or ``X.zarr/labels/``
    with its ``.sets/``), or None when there is none yet."""
    if backend_kind(store_path) == "hdf5":
        area = hdf5_sidecar(store_path)
        return area if _real_folder(area) else None
    area = store_path / "labels"
    if not _real_folder(area):
        return None
    _real_folder(area / ".sets")
    return area


def ensure_zarr_labels_group(store_path: Path) -> list[Path]:
    """Create ``labels/`` and ``labels/.sets/`` as Zarr groups if missing; return the
    folders it created."""
    labels = store_path / "labels"
    created = []
    for group in (labels, labels / ".sets"):
        if not _real_folder(group):
            group.mkdir()
            created.append(group)
        if _lstat(group / "zarr.json") is None:
            atomic_write_bytes(group / "zarr.json", _GROUP_JSON)
    return created


def prepare_label_area(store_path: Path) -> tuple[Path, list[Path]]:
    """The label area, created if missing and checked to be writable (before any work),
    and the folders that were created for it."""
    try:
        if backend_kind(store_path) == "hdf5":
            area, created = hdf5_sidecar(store_path), []
            if not _real_folder(area):
                check_writable(area.parent, "label sets")
                area.mkdir()
                created.append(area)
        else:
            check_writable(store_path, "label sets")
            area, created = store_path / "labels", ensure_zarr_labels_group(store_path)
    except OSError as err:
        raise describe_os_error(err) from None
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


def _zarr_version(store_path: Path, name: str) -> Path | None:
    """The version folder ``labels/<name>`` links to, checked to be one of this label
    set's own versions in ``labels/.sets``; None when there is no such entry."""
    entry = store_path / "labels" / name
    info = _lstat(entry)
    if info is None:
        return None
    if not stat.S_ISLNK(info.st_mode):
        raise InputError(
            f"{entry}: is not a label set written by hipi-offline (expected a link into "
            "labels/.sets); remove it yourself"
        )
    target = os.readlink(entry)
    version = _VERSION.fullmatch(target[len(".sets/") :]) if target.startswith(".sets/") else None
    if version is None or version["name"] != name:
        raise InputError(
            f"{entry}: links to {target}, not to a version of this label set in labels/.sets; "
            "links out of the label area are never followed (remove the link yourself)"
        )
    folder = store_path / "labels" / ".sets" / version.group(0)
    found = _lstat(folder)
    if found is not None and not stat.S_ISDIR(found.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(found.st_mode) else "not a folder"
        raise InputError(
            f"{entry}: its version {folder} is {what}; links are never followed "
            "(remove it yourself)"
        )
    return folder


def list_label_sets(store_path: Path) -> list[str]:
    """Names of the committed label sets of a store, sorted (links are not followed;
    a damaged or crafted entry is listed and refused when read)."""
    area = label_area(store_path)
    if area is None:
        return []
    names = []
    hdf5 = backend_kind(store_path) == "hdf5"
    for entry in os.scandir(area):
        name = entry.name[: -len(".h5")] if hdf5 and entry.name.endswith(".h5") else entry.name
        if (hdf5 and name == entry.name) or not _NAME.fullmatch(name):
            continue
        if name.lower() in RESERVED_NAMES or len(name) > MAX_NAME_LENGTH:
            continue
        if entry.is_symlink() or entry.is_dir(follow_symlinks=False) != hdf5:
            names.append(name)
    return sorted(names)


def _attr_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode()
    return value


def _checked_hdf5_file(path: Path) -> Path:
    info = _lstat(path)
    if info is None:
        raise InputError(f"{path}: label file is missing; relabel with --overwrite")
    if stat.S_ISLNK(info.st_mode):
        raise InputError(
            f"{path}: is a symbolic link (to {os.readlink(path)}); label files are never "
            "followed through links (remove it yourself)"
        )
    if not stat.S_ISREG(info.st_mode):
        raise special_file_error(path, info.st_mode)
    return path


def _read_hdf5(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import h5py

    with h5py.File(_checked_hdf5_file(path), "r") as f:
        for key in LABEL_ARRAYS:
            link = f.get(key, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise InputError(f"{path}: {key} is a link to another file; refusing to follow it")
            dataset = f[key]
            if not isinstance(dataset, h5py.Dataset) or dataset.is_virtual or dataset.external:
                raise InputError(f"{path}: {key} is not a plain array inside the label file")
        arrays = {key: np.asarray(f[key][()]) for key in LABEL_ARRAYS}
        attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
    return arrays, attrs


def _read_zarr(store_path: Path, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import zarr

    folder = _zarr_version(store_path, name)
    if folder is None or _lstat(folder) is None:
        raise InputError(f"labels/{name}: its version folder is missing; relabel with --overwrite")
    check_plain_tree(folder, f"label set {name}")
    group = zarr.open_group(str(folder), mode="r")
    arrays = {key: np.asarray(group[key][...]) for key in LABEL_ARRAYS}
    return arrays, dict(group.attrs)


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


def read_label_set(store_path: Path, name: str) -> LabelSet:
    """Load one committed label set; an InputError if it is missing, damaged or leads
    out of the store through a link."""
    check_label_name(name)
    if name not in list_label_sets(store_path):
        known = ", ".join(list_label_sets(store_path)) or "none"
        raise InputError(f"labels/{name}: no such label set in {store_path} (have: {known})")
    try:
        if backend_kind(store_path) == "hdf5":
            arrays, attrs = _read_hdf5(hdf5_sidecar(store_path) / f"{name}.h5")
        else:
            arrays, attrs = _read_zarr(store_path, name)
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


def check_can_write(store_path: Path, name: str, overwrite: bool) -> None:
    """Refuse early (before any work) an invalid name, an entry that cannot be
    replaced safely, and an existing label set without ``overwrite``."""
    check_label_name(name)
    area = label_area(store_path)
    if area is None:
        return
    if backend_kind(store_path) == "hdf5":
        entry = area / f"{name}.h5"
        exists = _lstat(entry) is not None
        if exists:
            _checked_hdf5_file(entry)
    else:
        exists = _lstat(area / name) is not None
        _zarr_version(store_path, name)
    if exists and not overwrite:
        raise InputError(f"labels/{name}: already exists; pass --overwrite to replace it")


def _lock_path(store_path: Path, area: Path, name: str) -> Path:
    """The lock file of one label set, inside the label area."""
    if backend_kind(store_path) == "hdf5":
        return area / f".{name}.lock"
    return area / ".sets" / f".{name}.lock"


def _same_file(fd: int, path: Path) -> bool:
    found = _lstat(path)
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
def label_lock(store_path: Path, name: str) -> Iterator[Path]:
    """Hold the exclusive lock of label set ``name`` (creating the label area, checked
    writable); a second writer, in any process, gets an InputError at once. Yields the
    label area. Re-entrant within one process. The lock file is removed on release,
    and so is a label area it created when nothing was committed into it."""
    check_label_name(name)
    area, created = prepare_label_area(store_path)
    path = _lock_path(store_path, area, name)
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


def check_label_space(store_path: Path, name: str, needed: int) -> None:
    """A ResourceError before any work when the label area lacks ``needed`` bytes."""
    area, _ = prepare_label_area(store_path)
    check_free_space(area, needed, f"label set {name}")


def write_label_set(store_path: Path, labels: LabelSet, overwrite: bool = False) -> None:
    """Commit a label set atomically (see the module docstring) under its lock."""
    with label_lock(store_path, labels.name):
        check_can_write(store_path, labels.name, overwrite)
        arrays = _label_arrays(labels)
        attrs = {k: _attr_value(v) for k, v in labels.attrs.items()}
        if backend_kind(store_path) == "hdf5":
            _write_hdf5(store_path, labels.name, arrays, attrs)
        else:
            _write_zarr(store_path, labels.name, arrays, attrs)


def _remove_stale_hdf5(directory: Path) -> None:
    """Delete temporaries of killed writers: our pattern, plain files, dead pid."""
    for entry in os.scandir(directory):
        found = _HDF5_TMP.fullmatch(entry.name)
        if found and entry.is_file(follow_symlinks=False) and abandoned(found["token"]):
            os.unlink(entry.path)


def _hdf5_bytes(arrays: dict, attrs: dict) -> bytes:
    """The label file built in memory: h5py never writes to disk itself (a full
    disk under h5py can crash the process), plain writes fail cleanly."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        for key, value in attrs.items():
            f.attrs[key] = value if value is not None else "null"
    return buffer.getvalue()


def _write_hdf5(store_path: Path, name: str, arrays: dict, attrs: dict) -> None:
    directory = hdf5_sidecar(store_path)
    _remove_stale_hdf5(directory)
    data = _hdf5_bytes(arrays, attrs)
    final = directory / f"{name}.h5"
    tmp = directory / f".{name}.{writer_token()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_path(directory)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_zarr(labels_dir: Path) -> None:
    """Delete versions and link temporaries of killed writers: our patterns only, real
    folders (never through a link), not linked from ``labels/``, dead pid."""
    live = {
        os.readlink(entry.path)[len(".sets/") :]
        for entry in os.scandir(labels_dir)
        if entry.is_symlink()
    }
    for entry in os.scandir(labels_dir / ".sets"):
        version = _VERSION.fullmatch(entry.name)
        if version and entry.is_dir(follow_symlinks=False) and entry.name not in live:
            if abandoned(version["token"]):
                shutil.rmtree(entry.path, ignore_errors=True)
            continue
        temporary = _LINK_TMP.fullmatch(entry.name)
        if temporary and entry.is_symlink() and abandoned(temporary["token"]):
            os.unlink(entry.path)


def _write_zarr(store_path: Path, name: str, arrays: dict, attrs: dict) -> None:
    import zarr

    labels_dir = store_path / "labels"
    versions = labels_dir / ".sets"
    old = _zarr_version(store_path, name)  # checked: a version of this set, or None
    _remove_stale_zarr(labels_dir)
    token = f"{name}.{writer_token()}"
    target = versions / token
    tmp_link = versions / f".link-{writer_token()}"
    try:
        group = zarr.open_group(str(target), mode="w")
        for key, value in arrays.items():
            group.create_array(key, data=value, chunks=value.shape or None)
        group.attrs.update(attrs)
        for path in sorted(target.rglob("*"), reverse=True):
            fsync_path(path)
        fsync_path(target)
        os.symlink(f".sets/{token}", tmp_link)
        os.replace(tmp_link, labels_dir / name)
    except BaseException:
        if _lstat(tmp_link) is not None:
            os.unlink(tmp_link)
        shutil.rmtree(target, ignore_errors=True)
        raise
    fsync_path(labels_dir)
    if old is not None and old.name != token:
        shutil.rmtree(old, ignore_errors=True)
