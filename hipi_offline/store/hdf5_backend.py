"""The HDF5 backend (h5py): one file ``X.h5``, label sets in the folder ``X.h5.labels/``.

HDF5 is not crash-safe in place, so an append works on a copy of the file that
replaces it at the end. A label set is the file ``X.h5.labels/<name>.h5``, written
under a temporary name, fsynced, then ``os.replace``-d into place. The label folder
must be a real folder and a label file a regular file (never a link).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.errors import InputError
from hipi_offline.preflight import check_free_space, check_writable
from hipi_offline.store.atomic import (
    TOKEN_TEXT,
    abandoned,
    fsync_path,
    lstat_or_none,
    remove_abandoned_siblings,
    remove_path,
    replace_path,
    sibling,
    special_file_error,
    writer_token,
)
from hipi_offline.store.backends import (
    DAMAGE_ERRORS,
    ArrayInfo,
    Mode,
    StorageBackend,
    damaged,
    jsonable,
    real_folder,
    rows_text,
    stat_store,
)
from hipi_offline.store.names import NAME_TEXT, is_label_name

APPEND_OVERHEAD_BYTES = 256 * 1024
_TMP = re.compile(rf"\.(?P<name>{NAME_TEXT})\.{TOKEN_TEXT}\.tmp")  # X.h5.labels/ temporaries


def hdf5_sidecar(store_path: Path) -> Path:
    """Directory holding the label sets of an HDF5 store."""
    return Path(str(store_path) + ".labels")


def _checked_label_file(path: Path) -> Path:
    """A label file that is a regular file (never followed through a link)."""
    info = lstat_or_none(path)
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


class Hdf5Backend(StorageBackend):
    """HDF5 through h5py; one file, arrays resizable along axis 0."""

    kind = "hdf5"
    append_copies = True

    def __init__(self, path: Path, mode: Mode) -> None:
        super().__init__(path, mode)
        self._open(path, mode)

    def _open(self, path: Path, mode: Mode) -> None:
        import h5py

        self.path = path
        self._datasets: dict[str, Any] = {}  # handles by name: a lookup costs ~0.1 ms
        try:
            self._file = h5py.File(path, {"r": "r", "a": "r+", "w": "w"}[mode])
        except OSError as err:
            reason = str(err).split("(")[0].strip() or "unreadable"
            raise InputError(f"{path}: not a readable HDF5 file ({reason})") from None

    # ------------------------------------------------------------ arrays
    def arrays(self, prefix: str) -> dict[str, ArrayInfo]:
        import h5py

        found: dict[str, ArrayInfo] = {}
        if prefix not in self._file:
            return found
        if not isinstance(self._file[prefix], h5py.Group):
            raise InputError(f"{self.path}: {prefix} must be a group of arrays, not an array")

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                chunks = obj.chunks[0] if obj.chunks else max(obj.shape[0] if obj.shape else 1, 1)
                found[f"{prefix}/{name}"] = ArrayInfo(tuple(obj.shape), obj.dtype, int(chunks))

        try:
            self._file[prefix].visititems(visit)
        except DAMAGE_ERRORS as err:
            raise damaged(self.path, f"the {prefix}/ group", err) from None
        return found

    def _dataset(self, name: str) -> Any:
        """The open dataset ``name`` (its handle kept for the next chunk's read)."""
        dataset = self._datasets.get(name)
        if dataset is None:
            dataset = self._datasets[name] = self._file[name]
        return dataset

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        try:
            dataset = self._dataset(name)
            if dataset.shape == ():
                return np.asarray(dataset[()])
            return np.asarray(dataset[start:stop])
        except DAMAGE_ERRORS as err:
            raise damaged(self.path, name + rows_text(start, stop), err) from None

    def attrs(self) -> dict[str, Any]:
        return {key: jsonable(value) for key, value in self._file.attrs.items()}

    def set_attrs(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            self._file.attrs[key] = value

    def create(self, name: str, data: np.ndarray, chunk_rows: int, compression: str) -> None:
        options: dict[str, Any] = {}
        if compression == "fast":
            options = {"compression": "lzf"}
        elif compression == "small":
            options = {"compression": "gzip", "compression_opts": 4}
        self._file.create_dataset(
            name,
            data=data,
            maxshape=(None, *data.shape[1:]),
            chunks=(max(1, chunk_rows), *data.shape[1:]),
            **options,
        )

    def resize(self, name: str, rows: int) -> None:
        dataset = self._file[name]
        dataset.resize((rows, *dataset.shape[1:]))

    def write(self, name: str, start: int, data: np.ndarray) -> None:
        self._file[name][start : start + len(data)] = data

    def clear_data(self) -> None:
        self._datasets.clear()
        if "steps" in self._file:
            del self._file["steps"]
        for key in list(self._file.get("episodes", {})):
            if key != "ends":
                del self._file["episodes"][key]

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    # ------------------------------------------------------------ store life cycle
    @classmethod
    def check_files(cls, path: Path) -> None:
        info = stat_store(path)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{path}: is a directory, not an HDF5 file")
        if not stat.S_ISREG(info.st_mode):
            raise special_file_error(path, info.st_mode)

    @contextmanager
    def appending(self, new_bytes: int) -> Iterator[None]:
        """Append to a copy, then replace the file. The free space for the copy is
        checked first (h5py may crash the process when the disk fills under it)."""
        home = self.path
        needed = os.path.getsize(home) + new_bytes + APPEND_OVERHEAD_BYTES
        check_free_space(home.parent, needed, f"appending to {home.name}")
        self.close()
        remove_abandoned_siblings(home)
        work = sibling(home, "append")
        try:
            shutil.copy2(home, work)
            self._open(work, "a")
            yield
            self.close()
            replace_path(work, home)
        finally:
            self.close()
            remove_path(work)
            self.check_files(home)
            self._open(home, "a")

    @classmethod
    def remove_leftovers(cls, path: Path) -> None:
        remove_abandoned_siblings(path)
        remove_abandoned_siblings(hdf5_sidecar(path))

    @classmethod
    def check_replaceable(cls, path: Path) -> None:
        sidecar = hdf5_sidecar(path)
        if sidecar.is_symlink():
            raise InputError(f"{sidecar}: is a symbolic link; --overwrite never replaces a link")

    @classmethod
    def side_paths(cls, path: Path) -> tuple[Path, ...]:
        return (hdf5_sidecar(path),)

    @classmethod
    def retire_labels(cls, path: Path) -> Path | None:
        """The label folder lives beside the file: moved aside before the file is
        replaced, so that a kill at any moment never leaves the old labels on the new
        data (at worst the old store is left without its labels; the hidden folder
        is removed by the next writer)."""
        labels = hdf5_sidecar(path)
        if labels.is_symlink() or not labels.is_dir():
            return None
        retired = sibling(labels, "old")
        os.rename(labels, retired)
        return retired

    @classmethod
    def restore_labels(cls, path: Path, retired: Path) -> None:
        os.rename(retired, hdf5_sidecar(path))

    # ------------------------------------------------------------ label sets
    @classmethod
    def label_area(cls, path: Path) -> Path | None:
        area = hdf5_sidecar(path)
        return area if real_folder(area) else None

    @classmethod
    def make_label_area(cls, path: Path) -> tuple[Path, list[Path]]:
        area, created = hdf5_sidecar(path), []
        if not real_folder(area):
            check_writable(area.parent, "label sets")
            area.mkdir()
            created.append(area)
        return area, created

    @classmethod
    def label_lock_path(cls, area: Path, name: str) -> Path:
        return area / f".{name}.lock"

    @classmethod
    def label_entry_name(cls, entry: os.DirEntry[str]) -> str | None:
        name = entry.name[: -len(".h5")]
        if not entry.name.endswith(".h5") or not is_label_name(name):
            return None
        return name if entry.is_symlink() or not entry.is_dir(follow_symlinks=False) else None

    @classmethod
    def read_labels(
        cls, path: Path, name: str, keys: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        import h5py

        file = hdf5_sidecar(path) / f"{name}.h5"
        with h5py.File(_checked_label_file(file), "r") as f:
            for key in keys:
                link = f.get(key, getlink=True)
                if not isinstance(link, h5py.HardLink):
                    raise InputError(
                        f"{file}: {key} is a link to another file; refusing to follow it"
                    )
                dataset = f[key]
                if not isinstance(dataset, h5py.Dataset) or dataset.is_virtual or dataset.external:
                    raise InputError(f"{file}: {key} is not a plain array inside the label file")
            arrays = {key: np.asarray(f[key][()]) for key in keys}
            attrs = dict(f.attrs.items())
        return arrays, attrs

    @classmethod
    def label_exists(cls, path: Path, area: Path, name: str) -> bool:
        entry = area / f"{name}.h5"
        exists = lstat_or_none(entry) is not None
        if exists:
            _checked_label_file(entry)
        return exists

    @classmethod
    def commit_labels(
        cls, path: Path, name: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]
    ) -> None:
        directory = hdf5_sidecar(path)
        _remove_stale(directory)
        data = _label_file_bytes(arrays, attrs)
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

    @classmethod
    def remove_labels(cls, path: Path, name: str) -> None:
        directory = hdf5_sidecar(path)
        if cls.label_area(path) is None:
            raise InputError(f"labels/{name}: no label folder {directory}")
        os.unlink(_checked_label_file(directory / f"{name}.h5"))
        fsync_path(directory)


def _remove_stale(directory: Path) -> None:
    """Delete temporaries of killed writers: our pattern, plain files, dead pid."""
    for entry in os.scandir(directory):
        found = _TMP.fullmatch(entry.name)
        if found and entry.is_file(follow_symlinks=False) and abandoned(found["token"]):
            os.unlink(entry.path)


def _label_file_bytes(arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> bytes:
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
