"""The Zarr 3 backend: a folder ``X.zarr``, label sets inside it under ``labels/``.

An append grows the arrays in place; ``episodes/ends`` is written last and is the
commit (a kill between growing ``ends`` and writing its chunk leaves fill-value
zeros, which are not committed). A label set is the group ``X.zarr/labels/<name>``,
a symlink to ``labels/.sets/<name>.<token>``; a new version is written beside it
and the link is swapped with one ``os.replace``. ``labels/`` and ``labels/.sets/``
must be real folders, and a label link must point at one of its own versions in
``labels/.sets``: no path that a link leads out of the area is ever read,
replaced or deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.errors import InputError
from hipi_offline.preflight import check_writable
from hipi_offline.store import backends as base
from hipi_offline.store.atomic import (
    TOKEN_TEXT,
    abandoned,
    atomic_write_bytes,
    check_plain_tree,
    fsync_path,
    lstat_or_none,
    special_file_error,
    writer_token,
)
from hipi_offline.store.backends import ArrayInfo, Mode, StorageBackend
from hipi_offline.store.names import NAME_TEXT, is_label_name

_VERSION = re.compile(rf"(?P<name>{NAME_TEXT})\.{TOKEN_TEXT}")  # labels/.sets/<name>.<token>
_LINK_TMP = re.compile(rf"\.link-{TOKEN_TEXT}")  # labels/.sets/.link-<token>
_GROUP_JSON = b'{"zarr_format": 3, "node_type": "group", "attributes": {}}'


class ZarrBackend(StorageBackend):
    """Zarr 3 directory store; each array chunked along axis 0."""

    kind = "zarr"

    def __init__(self, path: Path, mode: Mode) -> None:
        import zarr

        super().__init__(path, mode)
        if mode != "w" and not (path / "zarr.json").is_file():
            raise InputError(f"{path}: not a Zarr 3 store (zarr.json missing)")
        try:
            self._root = zarr.open_group(str(path), mode={"r": "r", "a": "r+", "w": "w"}[mode])
        except (ValueError, OSError, json.JSONDecodeError, KeyError) as err:
            raise InputError(f"{path}: not a readable Zarr store ({err})") from None
        self._cache: dict[str, Any] = {}

    def _array(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = self._root[name]
        return self._cache[name]

    # ------------------------------------------------------------ arrays
    def arrays(self, prefix: str) -> dict[str, ArrayInfo]:
        import zarr

        found: dict[str, ArrayInfo] = {}
        try:
            group = self._root[prefix]
        except KeyError:
            return found
        except base.DAMAGE_ERRORS as err:
            raise base.damaged(self.path, f"{prefix}/zarr.json", err) from None
        if not isinstance(group, zarr.Group):
            raise InputError(f"{self.path}: {prefix} must be a group of arrays, not an array")
        try:
            for name, member in group.members(max_depth=None):
                if isinstance(member, zarr.Array):
                    found[f"{prefix}/{name}"] = ArrayInfo(
                        tuple(member.shape), np.dtype(member.dtype), int(member.chunks[0])
                    )
        except base.DAMAGE_ERRORS as err:
            raise base.damaged(self.path, f"the metadata under {prefix}/", err) from None
        return found

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        try:
            array = self._array(name)
            if array.shape == ():
                return np.asarray(array[()])
            return np.asarray(array[start:stop])
        except base.DAMAGE_ERRORS as err:
            raise base.damaged(self.path, name + base.rows_text(start, stop), err) from None

    def attrs(self) -> dict[str, Any]:
        return dict(self._root.attrs)

    def set_attrs(self, values: Mapping[str, Any]) -> None:
        self._root.attrs.update({key: base.jsonable(value) for key, value in values.items()})

    def create(self, name: str, data: np.ndarray, chunk_rows: int, compression: str) -> None:
        import zarr

        compressors: Any = None
        if compression == "fast":
            compressors = zarr.codecs.BloscCodec(cname="lz4", clevel=3)
        elif compression == "small":
            compressors = zarr.codecs.ZstdCodec(level=3)
        array = self._root.create_array(
            name,
            shape=data.shape,
            dtype=data.dtype,
            chunks=(max(1, chunk_rows), *data.shape[1:]),
            compressors=compressors,
        )
        if data.size:
            array[...] = data
        self._cache[name] = array

    def resize(self, name: str, rows: int) -> None:
        array = self._array(name)
        array.resize((rows, *array.shape[1:]))

    def write(self, name: str, start: int, data: np.ndarray) -> None:
        self._array(name)[start : start + len(data)] = data

    def clear_data(self) -> None:
        """Remove every array but ``episodes/ends`` (their metadata may be half
        written: removed as files, not read)."""
        self._cache.clear()
        steps = self.path / "steps"
        if steps.is_dir() and not steps.is_symlink():
            shutil.rmtree(steps)
        episodes = self.path / "episodes"
        for entry in os.scandir(episodes) if episodes.is_dir() else ():
            if entry.name in ("ends", "zarr.json"):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)

    def close(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------ store life cycle
    @classmethod
    def check_files(cls, path: Path) -> None:
        """A folder of regular files and folders (the label area is checked when
        label sets are used)."""
        info = base.stat_store(path)
        if stat.S_ISREG(info.st_mode):
            raise InputError(f"{path}: is a file, not a Zarr store folder")
        if not stat.S_ISDIR(info.st_mode):
            raise special_file_error(path, info.st_mode)
        check_plain_tree(path, f"the store {path}", skip=("labels",))

    def start(self, attrs: Mapping[str, Any]) -> None:
        super().start(attrs)
        _ensure_labels_group(self.path)

    def committed_ends(self) -> np.ndarray:
        """A tail of fill-value zeros (growing ``ends`` was killed before its chunk
        was written) is not committed."""
        ends = super().committed_ends()
        if len(ends) and ends[-1] == 0:
            nonzero = np.flatnonzero(ends)
            ends = ends[: nonzero[-1] + 1] if len(nonzero) else ends[:0]
        return ends

    # ------------------------------------------------------------ label sets
    @classmethod
    def label_area(cls, path: Path) -> Path | None:
        area = path / "labels"
        if not base.real_folder(area):
            return None
        base.real_folder(area / ".sets")
        return area

    @classmethod
    def make_label_area(cls, path: Path) -> tuple[Path, list[Path]]:
        check_writable(path, "label sets")
        return path / "labels", _ensure_labels_group(path)

    @classmethod
    def label_lock_path(cls, area: Path, name: str) -> Path:
        return area / ".sets" / f".{name}.lock"

    @classmethod
    def label_entry_name(cls, entry: os.DirEntry[str]) -> str | None:
        if not is_label_name(entry.name):
            return None
        return entry.name if entry.is_symlink() or entry.is_dir(follow_symlinks=False) else None

    @classmethod
    def read_labels(
        cls, path: Path, name: str, keys: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        import zarr

        folder = _version(path, name)
        if folder is None or lstat_or_none(folder) is None:
            raise InputError(
                f"labels/{name}: its version folder is missing; relabel with --overwrite"
            )
        check_plain_tree(folder, f"label set {name}")
        group = zarr.open_group(str(folder), mode="r")
        arrays = {key: np.asarray(group[key][...]) for key in keys}
        return arrays, dict(group.attrs)

    @classmethod
    def label_exists(cls, path: Path, area: Path, name: str) -> bool:
        exists = lstat_or_none(area / name) is not None
        _version(path, name)
        return exists

    @classmethod
    def commit_labels(
        cls, path: Path, name: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]
    ) -> None:
        import zarr

        labels_dir = path / "labels"
        versions = labels_dir / ".sets"
        old = _version(path, name)  # checked: a version of this set, or None
        _remove_stale(labels_dir)
        token = f"{name}.{writer_token()}"
        target = versions / token
        tmp_link = versions / f".link-{writer_token()}"
        try:
            group = zarr.open_group(str(target), mode="w")
            for key, value in arrays.items():
                group.create_array(key, data=value, chunks=value.shape or None)
            group.attrs.update(attrs)
            for file in sorted(target.rglob("*"), reverse=True):
                fsync_path(file)
            fsync_path(target)
            os.symlink(f".sets/{token}", tmp_link)
            os.replace(tmp_link, labels_dir / name)
        except BaseException:
            if lstat_or_none(tmp_link) is not None:
                os.unlink(tmp_link)
            shutil.rmtree(target, ignore_errors=True)
            raise
        fsync_path(labels_dir)
        if old is not None and old.name != token:
            shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def remove_labels(cls, path: Path, name: str) -> None:
        """Unlink the label link (the commit), then delete the version it named."""
        labels_dir = path / "labels"
        version = _version(path, name)  # checked: a link to this set's own version
        if version is None:
            raise InputError(f"labels/{name}: no such label set in {path}")
        os.unlink(labels_dir / name)
        fsync_path(labels_dir)
        if lstat_or_none(version) is not None:
            shutil.rmtree(version)


def _ensure_labels_group(store_path: Path) -> list[Path]:
    """Create ``labels/`` and ``labels/.sets/`` as Zarr groups if missing; return the
    folders it created."""
    labels = store_path / "labels"
    created = []
    for group in (labels, labels / ".sets"):
        if not base.real_folder(group):
            group.mkdir()
            created.append(group)
        if lstat_or_none(group / "zarr.json") is None:
            atomic_write_bytes(group / "zarr.json", _GROUP_JSON)
    return created


def _version(store_path: Path, name: str) -> Path | None:
    """The version folder ``labels/<name>`` links to, checked to be one of this label
    set's own versions in ``labels/.sets``; None when there is no such entry."""
    entry = store_path / "labels" / name
    info = lstat_or_none(entry)
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
    found = lstat_or_none(folder)
    if found is not None and not stat.S_ISDIR(found.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(found.st_mode) else "not a folder"
        raise InputError(
            f"{entry}: its version {folder} is {what}; links are never followed "
            "(remove it yourself)"
        )
    return folder


def _remove_stale(labels_dir: Path) -> None:
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
