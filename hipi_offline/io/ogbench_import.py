"""Import an OGBench dataset file (``.npz``, as downloaded by ``ogbench.download_datasets``).

Source layout: ``observations`` [S, ...], ``actions`` [S, ...], ``terminals`` [S] (bool),
and, in the datasets that record them, ``qpos``, ``qvel`` and ``button_states`` [S, ...].
Trajectories are stored back to back; ``terminals`` is 1 at the last row of each.
Row t holds the observation s_t and the action a_t taken there; the last row of a
trajectory holds its last observation, whose action has no recorded next observation
(``ogbench.load_dataset`` drops it from the transitions, and so does this importer).
A file saved from ``load_dataset(compact_dataset=True)`` has ``valids`` (0 at each
trajectory's last row), which then marks the ends instead. ``FILE-val.npz`` is the
validation split of ``FILE.npz`` (``split="val"``).

Mapping (a trajectory of n rows becomes an episode of n - 1 steps)::

    observations[:-1]          -> steps/observations
    actions[:-1]               -> steps/actions
    qpos, qvel, button_states  -> steps/physics/<key>           (rows[:-1])
    observations[-1]           -> episodes/final_observations
    qpos, qvel, button_states  -> episodes/final_physics/<key>  (rows[-1])
    first row of the trajectory -> episodes/source_row          (int64)

Rows after the last end form a final trajectory of their own (flagged by
``ogbench_trailing_partial_episode``). Other arrays are not imported and are listed
in ``ignored_source_fields``. Arrays are streamed from the archive in batches of
whole trajectories, so memory stays bounded for the large datasets.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from hipi_offline.errors import InputError, one_line
from hipi_offline.io.common import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_STEPS,
    EpisodeWriter,
    check_store_destination,
    episode_batches,
    new_store,
    store_metadata,
)
from hipi_offline.store.location import store_location

REQUIRED = ("observations", "actions", "terminals")
PHYSICS = ("qpos", "qvel", "button_states")
SPLITS = ("train", "val")
MAX_MEMBERS = 1000
"""Most arrays an archive may list (real ones hold 3 to 6)."""
_COMPACT = "valids"
_REGULAR = "next_observations"
_VERSIONED = re.compile(r"v\d+")


@dataclass
class NpyMember:
    """One array of the archive: its header and an open stream of its rows."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    stream: IO[bytes]
    where: str

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))

    def read(self, rows: int) -> np.ndarray:
        """The next ``rows`` rows."""
        size = rows * self.row_bytes
        try:
            data = self.stream.read(size)
        except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
            raise InputError(f"{self.where}: is damaged ({one_line(err, 120)})") from None
        if len(data) != size:
            raise InputError(f"{self.where}: ends early (the archive is truncated)")
        return np.frombuffer(data, dtype=self.dtype).reshape(rows, *self.row_shape).copy()


def import_ogbench(
    src: str | Path,
    dest: str | Path,
    *,
    overwrite: bool = False,
    split: str | None = None,
    batch_steps: int = DEFAULT_BATCH_STEPS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> Path:
    """Convert the OGBench ``.npz`` file ``src`` (or, with ``split="val"``, its
    ``-val.npz`` sibling) into a new store at ``dest``."""
    src, dest = Path(src), store_location(dest)  # a path, or a URL
    path, split = split_file(src, split)
    check_store_destination(path, dest, overwrite)
    with open_members(path) as members:
        rows = _check_rows(path, members)
        ends, marker, partial = _ends(path, members, rows)
        fields = {"observations": members["observations"], "actions": members["actions"]}
        fields.update({f"physics/{k}": members[k] for k in PHYSICS if k in members})
        known = {*REQUIRED, *PHYSICS, _COMPACT}
        ignored = sorted(name for name in members.all_names if name not in known)
        dataset = _dataset_name(path)
        env = _env_name(dataset)
        metadata = store_metadata(
            "ogbench",
            path,
            {
                "ogbench_dataset": dataset,
                "ogbench_split": split,
                "ogbench_env": env or None,
                "ogbench_ends_from": marker,
                "ogbench_trailing_partial_episode": partial,
                "ignored_source_fields": ignored,
            },
        )
        row_bytes = sum(m.row_bytes for m in fields.values())
        batch_rows = max(1, min(int(batch_steps), int(batch_bytes) // max(1, row_bytes)))
        with (
            new_store(path, dest, overwrite, env, metadata, rows * row_bytes) as store,
            EpisodeWriter(store, len(ends), "ogbench episodes", batch_steps, batch_bytes) as w,
        ):
            for i, j in episode_batches(ends, batch_rows):
                a, b = (int(ends[i - 1]) if i else 0), int(ends[j - 1])
                block = {name: member.read(b - a) for name, member in fields.items()}
                bounds = np.concatenate([[a], ends[i:j]]) - a
                steps, final = _split_rows(block, bounds)
                final["source_row"] = bounds[:-1] + a
                w.add(steps, _lengths(bounds), final, where=f"{path}: rows {a}..{b - 1}")
    return dest


def _lengths(bounds: np.ndarray) -> list[int]:
    """Steps of each trajectory: its rows less the final one."""
    return (np.diff(bounds) - 1).tolist()


def _split_rows(
    block: dict[str, np.ndarray], bounds: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Rows of several trajectories (``bounds``: their offsets in ``block``) split into
    step rows (all but each last row) and final rows."""
    last = bounds[1:] - 1
    keep = np.ones(int(bounds[-1]), dtype=bool)
    keep[last] = False
    steps = {name: values[keep] for name, values in block.items()}
    final = {f"final_{name}": values[last] for name, values in block.items()}
    return steps, final


# ---------------------------------------------------------------- the file
def split_file(src: Path, split: str | None) -> tuple[Path, str]:
    """The file to read and its split: ``src`` itself, or with ``split="val"`` its
    ``-val.npz`` sibling; an InputError for another split or a mismatched name."""
    if split is not None and split not in SPLITS:
        raise InputError(f"--split: must be train or val, got {one_line(repr(split), 40)}")
    is_val = src.name.endswith("-val.npz")
    if split == "train" and is_val:
        train = src.with_name(src.name[: -len("-val.npz")] + ".npz")
        raise InputError(f"--split train: {src} is the val split; give {train.name}")
    if split == "val" and not is_val:
        if not src.name.endswith(".npz"):
            raise InputError(f"--split val: {src} does not end in .npz; give the train file")
        val = src.with_name(src.name[: -len(".npz")] + "-val.npz")
        if not val.exists():
            raise InputError(f"--split val: {val} (the val split of {src.name}) does not exist")
        return val, "val"
    return src, "val" if is_val else "train"


class Members(dict[str, NpyMember]):
    """The archive's arrays by name (``all_names`` lists every member)."""

    all_names: list[str]


@contextmanager
def open_members(path: Path) -> Iterator[Members]:
    """Every ``.npy`` member of the archive, header read, each with its own stream."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: is not a regular file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{path}: not an .npz archive ({one_line(err, 120)})") from None
    with archive, ExitStack() as streams:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise InputError(f"{path}: lists {len(infos):,} arrays (at most {MAX_MEMBERS:,})")
        members = Members()
        members.all_names = []
        for info in infos:
            name = info.filename[: -len(".npy")] if info.filename.endswith(".npy") else ""
            members.all_names.append(name or info.filename)
            if name in (*REQUIRED, *PHYSICS, _COMPACT, _REGULAR):
                members[name] = _open_member(archive, info, name, path, streams)
        yield members


def _open_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, path: Path, streams: ExitStack
) -> NpyMember:
    where = f"{path}: {name}"
    try:
        stream = streams.enter_context(archive.open(info))
        version = np.lib.format.read_magic(stream)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(stream)
        header = stream.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as err:
        raise InputError(f"{where}: not a readable .npy array ({one_line(err, 120)})") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.names:
        raise InputError(f"{where}: has dtype {dtype}; only numeric and bool arrays are imported")
    if not shape:
        raise InputError(f"{where}: is a scalar; expected one row per step")
    if fortran and len(shape) > 1:
        raise InputError(f"{where}: is stored in Fortran order; save it with C order")
    member = NpyMember(name, tuple(int(n) for n in shape), dtype, stream, where)
    if info.file_size != header + member.shape[0] * member.row_bytes:
        raise InputError(f"{where}: its size does not match its header (a damaged archive)")
    return member


def _check_rows(path: Path, members: Members) -> int:
    for name in REQUIRED:
        if name not in members:
            raise InputError(f"{path}: required array {name} is missing")
    if _REGULAR in members:
        raise InputError(
            f"{path}: holds {_REGULAR}, as saved from ogbench.load_dataset's transitions; "
            "import the .npz as downloaded (observations, actions, terminals)"
        )
    rows = members["observations"].shape[0]
    for member in members.values():
        if member.shape[0] != rows:
            raise InputError(f"{member.where}: has {member.shape[0]} rows, expected {rows}")
    for name in ("terminals", _COMPACT):
        if name in members and members[name].row_shape not in ((), (1,)):
            raise InputError(f"{members[name].where}: must have one value per row")
    if rows == 0:
        raise InputError(f"{path}: observations has 0 rows; nothing to import")
    return rows


def _ends(path: Path, members: Members, rows: int) -> tuple[np.ndarray, str, bool]:
    """Exclusive end rows of the trajectories, the array that marked them, and whether
    trailing rows without an end formed the last trajectory."""
    marker = _COMPACT if _COMPACT in members else "terminals"
    flags = members[marker].read(rows).reshape(rows)
    if not np.isin(flags, (0, 1)).all():
        bad = int(np.argmin(np.isin(flags, (0, 1))))
        raise InputError(f"{members[marker].where}: row {bad} is {flags[bad].item()!r}, not 0 or 1")
    last_rows = np.flatnonzero(flags == 0) if marker == _COMPACT else np.flatnonzero(flags)
    ends = (last_rows + 1).astype(np.int64)
    partial = not len(ends) or int(ends[-1]) != rows
    if partial:
        ends = np.append(ends, rows)
    lengths = np.diff(np.concatenate([[0], ends]))
    if (lengths < 2).any():
        k = int(np.argmax(lengths < 2))
        first = int(ends[k - 1]) if k else 0
        raise InputError(
            f"{members[marker].where}: the trajectory at row {first} has one row (only a "
            "final observation); each needs at least two"
        )
    return ends, marker, partial


def _dataset_name(path: Path) -> str:
    name = path.name[: -len(".npz")] if path.name.endswith(".npz") else path.stem
    return name[: -len("-val")] if name.endswith("-val") else name


def _env_name(dataset: str) -> str:
    """OGBench's environment id of a dataset name (``pointmaze-medium-navigate-v0`` ->
    ``pointmaze-medium-v0``, as ``ogbench.make_env_and_datasets`` derives it); empty
    for names not of that form."""
    parts = dataset.split("-")
    if len(parts) < 4 or not _VERSIONED.fullmatch(parts[-1]) or len(dataset) > 200:
        return ""
    return "-".join(parts[:-2] + parts[-1:])
