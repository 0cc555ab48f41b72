"""What this toolkit made, and may therefore replace.

``--overwrite`` replaces only folders and stores that hipi-offline wrote:

* a folder (a BC run, an exported dataset) carries a marker file,
  :data:`MARKER_NAME`, whose JSON names the kind of folder;
* a store carries its root attribute ``hipi_offline_format``.

Anything else at the destination, a symbolic link included, is refused with an
error that names what is there. A destination that equals, contains or lies
inside the source is refused too (:func:`check_disjoint`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hipi_offline.errors import InputError
from hipi_offline.store.atomic import atomic_write_bytes

MARKER_NAME = ".hipi-offline"
"""File that marks a folder as made by hipi-offline (JSON: ``{"kind": ...}``)."""
MARKER_MAX_BYTES = 4096
FORMAT_ATTR = "hipi_offline_format"


def write_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` as a ``kind`` folder made by this toolkit (atomic)."""
    payload = {"made_by": "hipi-offline", "kind": kind, "version": 1}
    atomic_write_bytes(Path(folder) / MARKER_NAME, json.dumps(payload).encode())


def marker_kind(folder: Path) -> str | None:
    """The kind recorded in ``folder``'s marker, or None (no marker, a link, damaged)."""
    marker = Path(folder) / MARKER_NAME
    try:
        if marker.is_symlink() or not marker.is_file():
            return None
        if marker.stat().st_size > MARKER_MAX_BYTES:
            return None
        payload = json.loads(marker.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("made_by") != "hipi-offline":
        return None
    kind = payload.get("kind")
    return kind if isinstance(kind, str) else None


def check_own_entries(folder: Path, files: frozenset[str], folders: frozenset[str]) -> None:
    """Refuse a folder we made whose own entries (``files``, ``folders``) are links or of
    the wrong kind (a crafted or damaged folder): nothing is read or written through them."""
    for name in sorted(files | folders):
        path = folder / name
        if path.is_symlink():
            raise InputError(
                f"{path}: is a symbolic link; a run folder's entries must be plain files and "
                "folders (remove it yourself)"
            )
        if not path.exists():
            continue
        want_file = name in files
        if (path.is_file() if want_file else path.is_dir()) is False:
            kind = "file" if want_file else "folder"
            raise InputError(f"{path}: is not a {kind}; the run folder is damaged")


def remove_own_entries(folder: Path, names: frozenset[str]) -> None:
    """Delete these entries of ``folder`` (a link as a link, never what it points to);
    anything else in the folder stays."""
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _contents(folder: Path, limit: int = 3) -> str:
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError:
        return "unreadable"
    if not names:
        return "empty"
    shown = ", ".join(names[:limit])
    return f"holds {shown}" + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _absent(path: Path, option: str) -> bool:
    """True when nothing is at ``path``; a link there (even a dangling one) is refused."""
    if path.is_symlink():
        raise InputError(
            f"{path}: is a symbolic link; {option} never replaces a link (remove it yourself)"
        )
    return not path.exists()


def check_replaceable_folder(path: Path, kind: str, option: str = "--overwrite") -> None:
    """Refuse to replace ``path`` unless it is absent or a ``kind`` folder we made."""
    path = Path(path)
    if _absent(path, option):
        return
    if not path.is_dir():
        raise InputError(
            f"{path}: is a file, not a {kind} made by hipi-offline; {option} refuses to replace it"
        )
    found = marker_kind(path)
    if found == kind:
        return
    what = f"a {found} folder" if found else f"not a {kind} made by hipi-offline"
    raise InputError(
        f"{path}: {what} ({_contents(path)}); {option} refuses to replace it "
        "(choose another destination or remove it yourself)"
    )


def is_hipi_store(path: Path) -> bool:
    """True for an HDF5 file or Zarr folder with the ``hipi_offline_format`` attribute."""
    path = Path(path)
    try:
        if path.is_symlink():
            return False
        if path.is_dir():
            meta = path / "zarr.json"
            if meta.is_symlink() or not meta.is_file() or meta.stat().st_size > 1 << 20:
                return False
            attrs = json.loads(meta.read_bytes()).get("attributes", {})
            return isinstance(attrs, dict) and FORMAT_ATTR in attrs
        if not path.is_file():
            return False
        import h5py

        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as f:
            return FORMAT_ATTR in f.attrs
    except (OSError, ValueError, AttributeError, KeyError, RuntimeError):
        return False


def check_replaceable_store(path: Path, option: str = "--overwrite") -> None:
    """Refuse to replace ``path`` unless it is absent or a hipi-offline store."""
    path = Path(path)
    if _absent(path, option):
        return
    if not (path.is_dir() or path.is_file()):
        raise InputError(f"{path}: is a special file, not a store; {option} refuses to replace it")
    if not is_hipi_store(path):
        what = f"a folder ({_contents(path)})" if path.is_dir() else "a file"
        raise InputError(
            f"{path}: is {what}, not a hipi-offline store; {option} never replaces it "
            "(choose another destination or remove it yourself)"
        )


def check_disjoint(source: Path, dest: Path, *, also: tuple[Path, ...] = ()) -> None:
    """Refuse a destination that equals, contains or lies inside the source (or any
    path in ``also``, e.g. an HDF5 store's label folder)."""
    target = Path(os.path.abspath(dest)).resolve(strict=False)
    for item in (source, *also):
        src = Path(os.path.abspath(item)).resolve(strict=False)
        if target == src:
            raise InputError(f"{dest}: is the source {item} itself; choose another destination")
        if target in src.parents:
            raise InputError(f"{dest}: contains the source {item}; choose another destination")
        if src in target.parents:
            raise InputError(f"{dest}: lies inside the source {item}; choose another destination")
