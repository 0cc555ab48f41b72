"""Storage backends: the same flat layout written through h5py or zarr 3.

A backend only knows how to list, read, create and extend arrays addressed by
slash-separated paths (``steps/infos/speed``) and how to read and write the
root attributes. Everything hipi-offline specific lives in ``store.py``.
Backends are chosen by file suffix and import their library lazily.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from hipi_offline.errors import InputError
from hipi_offline.store.atomic import check_plain_tree, special_file_error

Compression = Literal["none", "fast", "small"]
COMPRESSIONS: tuple[str, ...] = ("none", "fast", "small")
HDF5_SUFFIXES = (".h5", ".hdf5")
ZARR_SUFFIXES = (".zarr",)


@dataclass(frozen=True)
class ArrayInfo:
    """Shape, dtype and on-disk chunk rows of one stored array."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunk_rows: int


class Backend(Protocol):
    kind: str
    path: Path
    writable: bool

    def arrays(self, prefix: str) -> dict[str, ArrayInfo]: ...
    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray: ...
    def attrs(self) -> dict[str, Any]: ...
    def set_attrs(self, values: dict[str, Any]) -> None: ...
    def create(self, name: str, data: np.ndarray, chunk_rows: int, compression: str) -> None: ...
    def resize(self, name: str, rows: int) -> None: ...
    def write(self, name: str, start: int, data: np.ndarray) -> None: ...
    def clear_data(self) -> None: ...
    def close(self) -> None: ...


def backend_kind(path: Path) -> str:
    """``"hdf5"`` or ``"zarr"`` from the suffix, or an InputError naming the suffix."""
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix in ZARR_SUFFIXES:
        return "zarr"
    raise InputError(
        f"{path}: unknown store suffix {suffix!r}; use .h5/.hdf5 (HDF5) or .zarr (Zarr)"
    )


def open_backend(path: Path, mode: Literal["r", "a", "w"]) -> Backend:
    """Open (``r``/``a``) or create (``w``) the backend that the suffix names."""
    kind = backend_kind(path)
    if mode != "w":
        check_store_files(path, kind)
    if kind == "hdf5":
        return Hdf5Backend(path, mode)
    return ZarrBackend(path, mode)


def check_store_files(path: Path, kind: str) -> None:
    """Before opening: the path is a regular file (HDF5) or a folder of regular files
    and folders (Zarr; its label area is checked by ``labels.py``). A FIFO or other
    special file is refused at once instead of hanging the read."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such store") from None
    except OSError as err:
        raise InputError(f"{path}: cannot open the store ({err.strerror})") from None
    if kind == "hdf5" and stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: is a directory, not an HDF5 file")
    if kind == "zarr" and stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: is a file, not a Zarr store folder")
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise special_file_error(path, info.st_mode)
    if kind == "zarr":
        check_plain_tree(path, f"the store {path}", skip=("labels",))


# what h5py, zarr and their codecs raise on damaged metadata or chunks (a JSON
# decoding error is a ValueError)
DAMAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, RuntimeError)


def damaged(path: Path, what: str, err: BaseException) -> InputError:
    """The one-line InputError for a damaged (e.g. truncated) part of a store."""
    reason = " ".join(str(err).split())[:200] or type(err).__name__
    return InputError(f"{path}: {what} is damaged or unreadable ({reason})")


def _rows(start: int | None, stop: int | None) -> str:
    return "" if start is None and stop is None else f" (rows [{start or 0}, {stop}))"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class Hdf5Backend:
    """HDF5 through h5py; one file, arrays resizable along axis 0."""

    kind = "hdf5"

    def __init__(self, path: Path, mode: Literal["r", "a", "w"]) -> None:
        import h5py

        self.path = path
        self.writable = mode != "r"
        try:
            self._file = h5py.File(path, {"r": "r", "a": "r+", "w": "w"}[mode])
        except OSError as err:
            reason = str(err).split("(")[0].strip() or "unreadable"
            raise InputError(f"{path}: not a readable HDF5 file ({reason})") from None

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

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        try:
            dataset = self._file[name]
            if dataset.shape == ():
                return np.asarray(dataset[()])
            return np.asarray(dataset[start:stop])
        except DAMAGE_ERRORS as err:
            raise damaged(self.path, name + _rows(start, stop), err) from None

    def attrs(self) -> dict[str, Any]:
        return {key: _jsonable(value) for key, value in self._file.attrs.items()}

    def set_attrs(self, values: dict[str, Any]) -> None:
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
        """Remove every array but ``episodes/ends`` (leftovers of an uncommitted append)."""
        if "steps" in self._file:
            del self._file["steps"]
        for key in list(self._file.get("episodes", {})):
            if key != "ends":
                del self._file["episodes"][key]

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()


class ZarrBackend:
    """Zarr 3 directory store; each array chunked along axis 0."""

    kind = "zarr"

    def __init__(self, path: Path, mode: Literal["r", "a", "w"]) -> None:
        import zarr

        self.path = path
        self.writable = mode != "r"
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

    def arrays(self, prefix: str) -> dict[str, ArrayInfo]:
        import zarr

        found: dict[str, ArrayInfo] = {}
        try:
            group = self._root[prefix]
        except KeyError:
            return found
        except DAMAGE_ERRORS as err:
            raise damaged(self.path, f"{prefix}/zarr.json", err) from None
        if not isinstance(group, zarr.Group):
            raise InputError(f"{self.path}: {prefix} must be a group of arrays, not an array")
        try:
            for name, member in group.members(max_depth=None):
                if isinstance(member, zarr.Array):
                    found[f"{prefix}/{name}"] = ArrayInfo(
                        tuple(member.shape), np.dtype(member.dtype), int(member.chunks[0])
                    )
        except DAMAGE_ERRORS as err:
            raise damaged(self.path, f"the metadata under {prefix}/", err) from None
        return found

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        try:
            array = self._array(name)
            if array.shape == ():
                return np.asarray(array[()])
            return np.asarray(array[start:stop])
        except DAMAGE_ERRORS as err:
            raise damaged(self.path, name + _rows(start, stop), err) from None

    def attrs(self) -> dict[str, Any]:
        return dict(self._root.attrs)

    def set_attrs(self, values: dict[str, Any]) -> None:
        self._root.attrs.update({key: _jsonable(value) for key, value in values.items()})

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
        """Remove every array but ``episodes/ends`` (leftovers of an uncommitted append,
        whose metadata may be half written: removed as files, not read)."""
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
