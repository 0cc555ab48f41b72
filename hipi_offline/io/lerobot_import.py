"""Import a LeRobot dataset (format v3.0) from its folder.

Source layout (LeRobot's ``CODEBASE_VERSION = "v3.0"``)::

    meta/info.json                          codebase_version, fps, features, data_path, ...
    meta/tasks.parquet                      task (the string) -> task_index
    meta/episodes/chunk-XXX/file-XXX.parquet  one row per episode: episode_index, tasks,
                                            length, dataset_from_index, dataset_to_index,
                                            data/chunk_index, data/file_index, ...
    data/chunk-XXX/file-XXX.parquet         frame rows of several episodes (``data_path``)
    videos/<key>/chunk-XXX/file-XXX.mp4     camera streams (not read)

Mapping::

    observation.state             -> steps/observations
    action                        -> steps/actions
    every other numeric feature   -> steps/<feature name>  (timestamp, frame_index,
                                     episode_index, index, task_index, next.reward, ...)
    episode_index                 -> episodes/source_id   (int64)
    tasks[0] of the episode       -> episodes/task        (int64 task_index; names in the
                                     store metadata ``lerobot_tasks``, in index order)
    len(tasks)                    -> episodes/num_tasks   (int64)
    video, image, string and language features -> skipped, listed in ``skipped_fields``
                                     (videos also in ``lerobot_video_features``)

A feature of shape ``[1]`` stored as a plain column becomes a 1-D field ``[T]``; any
other shape ``s`` becomes ``[T, *s]``. Each episode's rows are found in its data file
by ``episode_index`` and checked against the episodes table (``length``,
``dataset_from_index`` .. ``dataset_to_index`` against the ``index`` column). LeRobot
v2.x datasets (one file per episode) are refused with a message naming the version.
The dataset is read with pyarrow (``pip install 'hipi-offline[lerobot]'``); the
``lerobot`` package is not needed.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.errors import InputError, one_line
from hipi_offline.io.common import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_STEPS,
    MAX_ATTR_JSON,
    MAX_TEXT_ATTR,
    EpisodeWriter,
    check_store_destination,
    inside,
    metadata_json,
    new_store,
    rows_per_batch,
    store_metadata,
    text_value,
)
from hipi_offline.store.location import store_location

INFO_PATH = "meta/info.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
MAX_INFO_BYTES = 16 << 20
"""Largest meta/info.json read (real ones are a few kilobytes)."""
MAX_ROW_BYTES = 1 << 30
"""Largest declared size of one frame of one feature."""
SUPPORTED_VERSION = 3
_NUMERIC = {
    name: np.dtype(name)
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
}
_SKIPPED = ("video", "image", "string", "language")
_RENAMED = {"observation.state": "observations", "action": "actions"}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
_TEMPLATE_FIELDS = ("chunk_index", "file_index")
_EPISODE_COLUMNS = (
    "episode_index",
    "tasks",
    "length",
    "dataset_from_index",
    "dataset_to_index",
    "data/chunk_index",
    "data/file_index",
)


@dataclass(frozen=True)
class Feature:
    """A numeric LeRobot feature and the store step field it becomes."""

    name: str
    field: str
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Episode:
    """One row of the episodes table, placed in its data file."""

    index: int
    length: int
    start: int  # dataset_from_index
    task: int
    num_tasks: int
    data_file: tuple[int, int]  # (chunk_index, file_index)
    row: int = -1  # first row in the data file


def import_lerobot(
    src: str | Path,
    dest: str | Path,
    *,
    overwrite: bool = False,
    batch_steps: int = DEFAULT_BATCH_STEPS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> Path:
    """Convert the LeRobot v3 dataset folder ``src`` into a new store at ``dest``."""
    src, dest = Path(src), store_location(dest)  # a path, or a URL
    root = _dataset_root(src)
    check_store_destination(root, dest, overwrite)
    pq = _parquet()
    info_path = member(root, INFO_PATH)
    info = _read_info(info_path)
    version = _check_version(info, info_path)
    features, skipped, videos = _features(info, info_path)
    tasks = _read_tasks(pq, root)
    episodes = _read_episodes(pq, root, tasks, info, info_path)
    template = _data_template(info, info_path)
    files = _place_episodes(pq, root, template, episodes, features)
    metadata = _metadata(root, info, info_path, version, tasks, skipped, videos)
    rows = rows_per_batch(_row_bytes(features), batch_steps, batch_bytes)
    needed = sum(e.length for e in episodes) * _row_bytes(features)
    with (
        new_store(root, dest, overwrite, "", metadata, needed) as store,
        EpisodeWriter(store, len(episodes), "lerobot episodes", batch_steps, batch_bytes) as w,
    ):
        for path, placed in files:
            reader = _RowReader(pq, path, [f.name for f in features])
            for batch in _batches(placed, rows):
                first, last = batch[0].row, batch[-1].row + batch[-1].length
                columns = reader.rows(first, last)
                steps = {f.field: _values(columns[f.name], f, path, first, last) for f in features}
                w.add(steps, [e.length for e in batch], _episode_fields(batch), where=str(path))
    return dest


# ---------------------------------------------------------------- source files
def _dataset_root(src: Path) -> Path:
    """The dataset folder: ``src`` itself, or its parent's parent for meta/info.json."""
    if not src.exists():
        raise InputError(f"{src}: no such file or directory")
    if src.is_file() and src.name == "info.json" and src.parent.name == "meta":
        return src.parent.parent
    if not src.is_dir():
        raise InputError(f"{src}: not a folder; give the LeRobot dataset folder (with {INFO_PATH})")
    return src


def member(root: Path, relative: str) -> Path:
    """``root/relative`` as a regular file inside the dataset folder, or an InputError
    (missing, a link leading out of the folder, a FIFO or folder)."""
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts or not parts:
        raise InputError(f"{root}: {relative!r} is not a path inside the dataset folder")
    path = root.joinpath(*parts)
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{root}: {relative} is missing")
    if not inside(path, root):
        raise InputError(f"{path}: is a symbolic link that leads out of the dataset folder")
    if not path.is_file():
        raise InputError(f"{path}: is not a regular file")
    return path


def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            "import lerobot: needs pyarrow (pip install 'hipi-offline[lerobot]')"
        ) from None
    return pq


def _parquet_file(pq: Any, path: Path) -> Any:
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{path}: not a readable Parquet file ({one_line(err, 120)})") from None


def _read_table(pq: Any, path: Path, columns: Sequence[str]) -> Any:
    """The named columns of a Parquet file; an InputError names a missing one."""
    parquet = _parquet_file(pq, path)
    names = set(parquet.schema_arrow.names)
    for name in columns:
        if name not in names:
            raise InputError(f"{path}: column {name} is missing")
    try:
        return parquet.read(columns=list(columns))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: is damaged or unreadable ({one_line(err, 120)})") from None


# ---------------------------------------------------------------- meta/info.json
def _read_info(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size > MAX_INFO_BYTES:
        raise InputError(f"{path}: is {size:,} bytes; at most {MAX_INFO_BYTES:,} are read")
    try:
        info = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:
        raise InputError(f"{path}: not valid JSON ({err.__class__.__name__})") from None
    if not isinstance(info, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def _check_version(info: dict[str, Any], path: Path) -> str:
    """``codebase_version`` when it is v3.x; an InputError naming any other version."""
    version = info.get("codebase_version")
    found = re.fullmatch(r"v(\d+)\.(\d+)", version) if isinstance(version, str) else None
    if found is None:
        shown = one_line(repr(version), 40)
        raise InputError(f"{path}: codebase_version must be a version like 'v3.0', got {shown}")
    major = int(found.group(1))
    if major < SUPPORTED_VERSION:
        raise InputError(
            f"{path}: codebase_version {version} is a LeRobot v{major} dataset; only v3.0 "
            "is supported (convert it with lerobot's convert_dataset_v21_to_v30)"
        )
    if major > SUPPORTED_VERSION:
        raise InputError(f"{path}: codebase_version {version} is newer than v3.x (not supported)")
    return version


def _features(info: dict[str, Any], path: Path) -> tuple[list[Feature], list[str], list[str]]:
    """The numeric features (observation.state and action first), the skipped ones
    and the video ones among them."""
    declared = info.get("features")
    if not isinstance(declared, dict) or not declared:
        raise InputError(f"{path}: features must be a non-empty object")
    numeric: dict[str, Feature] = {}
    skipped: list[str] = []
    videos: list[str] = []
    for name, spec in declared.items():
        where = f"{path}: features.{one_line(str(name), 60)}"
        if not isinstance(spec, dict):
            raise InputError(f"{where} must be an object")
        dtype = spec.get("dtype")
        if dtype in _SKIPPED:
            skipped.append(name)
            if dtype == "video":
                videos.append(name)
            continue
        if not isinstance(dtype, str) or dtype not in _NUMERIC:
            raise InputError(
                f"{where} has dtype {one_line(repr(dtype), 40)}, which this importer does not "
                f"know (one of {', '.join(_NUMERIC)}, or {', '.join(_SKIPPED)}, which are skipped)"
            )
        if not _NAME.match(name):
            raise InputError(f"{where}: the name must be letters, digits, '_', '.' and '-'")
        shape = _shape(spec.get("shape"), where)
        if int(np.prod(shape, dtype=np.int64)) * _NUMERIC[dtype].itemsize > MAX_ROW_BYTES:
            raise InputError(f"{where}: shape {list(shape)} is too large for one frame")
        numeric[name] = Feature(name, _RENAMED.get(name, name), _NUMERIC[dtype], shape)
    for name in _RENAMED:
        if name not in numeric:
            raise InputError(
                f"{path}: features has no numeric {name}, which becomes steps/{_RENAMED[name]}"
            )
    for name, feature in numeric.items():
        if name not in _RENAMED and feature.field in _RENAMED.values():
            raise InputError(f"{path}: features.{name} would overwrite steps/{feature.field}")
    order = [*_RENAMED, *(n for n in numeric if n not in _RENAMED)]
    return [numeric[n] for n in order], sorted(skipped), sorted(videos)


def _shape(value: Any, where: str) -> tuple[int, ...]:
    ok = isinstance(value, list) and 1 <= len(value) <= 8
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value)
    if not ok:
        raise InputError(f"{where}: shape must be a list of 1 to 8 positive integers")
    return tuple(value)


def _data_template(info: dict[str, Any], path: Path) -> str:
    """``data_path``: a relative path whose only fields are chunk_index and file_index."""
    template = info.get("data_path")
    if not isinstance(template, str) or not 0 < len(template) <= 1000:
        raise InputError(f"{path}: data_path must be a path template string")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        parsed = None
    if parsed is None or any(
        field is not None
        and (
            field not in _TEMPLATE_FIELDS or conversion or not re.fullmatch(r"(0?\d{0,2}d)?", spec)
        )
        for _, field, spec, conversion in parsed
    ):
        raise InputError(
            f"{path}: data_path {one_line(repr(template), 80)} may only use "
            "{chunk_index} and {file_index} (with a format such as :03d)"
        )
    return template


# ---------------------------------------------------------------- tasks and episodes
def _read_tasks(pq: Any, root: Path) -> list[str]:
    """Task strings in task_index order (0 .. n-1)."""
    path = member(root, TASKS_PATH)
    names = _parquet_file(pq, path).schema_arrow.names
    column = next((c for c in ("task", "__index_level_0__") if c in names), "task")
    table = _read_table(pq, path, ["task_index", column])
    index = _int_column(table.column("task_index"), "task_index", path)
    text = table.column(column).to_pylist()
    if not all(isinstance(t, str) for t in text):
        raise InputError(f"{path}: column {column} must hold strings")
    if sorted(index.tolist()) != list(range(len(index))):
        raise InputError(f"{path}: task_index must number the tasks 0 .. {len(index) - 1}")
    tasks = [""] * len(index)
    for i, name in zip(index.tolist(), text, strict=True):
        tasks[i] = name
    return tasks


def _int_column(column: Any, name: str, path: Path) -> np.ndarray:
    """An integer column without nulls as int64."""
    import pyarrow as pa

    if column.null_count or not pa.types.is_integer(column.type):
        raise InputError(f"{path}: column {name} must hold integers without nulls")
    return np.asarray(column.to_numpy(), dtype=np.int64)


def _episode_files(root: Path) -> list[Path]:
    folder = root / EPISODES_DIR
    if not folder.is_dir() or not inside(folder, root):
        raise InputError(f"{root}: {EPISODES_DIR}/ is missing; not a LeRobot v3 dataset")
    found = sorted(p.relative_to(root).as_posix() for p in folder.glob("*/*.parquet"))
    if not found:
        raise InputError(f"{root}: {EPISODES_DIR}/ holds no chunk-XXX/file-XXX.parquet")
    return [member(root, rel) for rel in found]


def _read_episodes(
    pq: Any, root: Path, tasks: list[str], info: dict[str, Any], info_path: Path
) -> list[Episode]:
    """The episodes table (all its files), checked, by episode_index."""
    position = {name: i for i, name in enumerate(tasks)}
    found: list[Episode] = []
    for path in _episode_files(root):
        table = _read_table(pq, path, _EPISODE_COLUMNS)
        ints = {
            name: _int_column(table.column(name), name, path)
            for name in _EPISODE_COLUMNS
            if name != "tasks"
        }
        for row, names in enumerate(table.column("tasks").to_pylist()):
            index = int(ints["episode_index"][row])
            where = f"{path}: episode {index}"
            if not isinstance(names, list) or not names:
                raise InputError(f"{where}: tasks must be a non-empty list of task strings")
            unknown = [n for n in names if n not in position]
            if unknown:
                shown = one_line(repr(unknown[0]), 60)
                raise InputError(f"{where}: task {shown} is not in {TASKS_PATH}")
            start, stop = int(ints["dataset_from_index"][row]), int(ints["dataset_to_index"][row])
            length = int(ints["length"][row])
            if length < 1 or stop - start != length:
                raise InputError(
                    f"{where}: length {length} does not match dataset_from_index {start} .. "
                    f"dataset_to_index {stop}"
                )
            chunk, file = int(ints["data/chunk_index"][row]), int(ints["data/file_index"][row])
            if chunk < 0 or file < 0:
                raise InputError(f"{where}: data/chunk_index and data/file_index must be >= 0")
            found.append(
                Episode(index, length, start, position[names[0]], len(names), (chunk, file))
            )
    found.sort(key=lambda e: e.index)
    indices = [e.index for e in found]
    if indices != list(range(len(found))):
        raise InputError(
            f"{root / EPISODES_DIR}: episode_index must number the episodes 0 .. "
            f"{len(found) - 1} once each"
        )
    for key, value in (("total_episodes", len(found)), ("total_frames", _frames(found))):
        declared = info.get(key)
        if declared is not None and declared != value:
            raise InputError(
                f"{info_path}: {key} is {one_line(repr(declared), 30)} but the episodes "
                f"table has {value}"
            )
    return found


def _frames(episodes: Sequence[Episode]) -> int:
    return sum(e.length for e in episodes)


def _place_episodes(
    pq: Any, root: Path, template: str, episodes: list[Episode], features: list[Feature]
) -> list[tuple[Path, list[Episode]]]:
    """Each data file with its episodes in row order, each episode's first row set.
    Checks that every file's rows are exactly its episodes' rows, each episode's rows
    contiguous, of its ``length``, and (with an ``index`` column) its dataset indices."""
    by_file: dict[tuple[int, int], list[Episode]] = {}
    for episode in episodes:
        by_file.setdefault(episode.data_file, []).append(episode)
    placed = []
    for (chunk, file), listed in sorted(by_file.items()):
        path = member(root, template.format(chunk_index=chunk, file_index=file))
        names = set(_parquet_file(pq, path).schema_arrow.names)
        for feature in features:
            if feature.name not in names:
                raise InputError(
                    f"{path}: column {feature.name} (a feature in {INFO_PATH}) is missing"
                )
        columns = ["episode_index", *(["index"] if "index" in names else [])]
        table = _read_table(pq, path, columns)
        owner = _int_column(table.column("episode_index"), "episode_index", path)
        index = _int_column(table.column("index"), "index", path) if "index" in names else None
        placed.append((path, _locate(path, listed, owner, index)))
    return placed


def _locate(
    path: Path, listed: list[Episode], owner: np.ndarray, index: np.ndarray | None
) -> list[Episode]:
    """``listed`` with their first rows in the file, by row; each episode must be one
    run of ``episode_index`` values of its length."""
    starts = np.flatnonzero(np.diff(owner, prepend=owner[:1] - 1) != 0) if len(owner) else owner
    runs: dict[int, tuple[int, int]] = {}
    for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(owner)], strict=True):
        value = int(owner[start])
        if value in runs:
            raise InputError(f"{path}: the rows of episode {value} are not contiguous")
        runs[value] = (start, stop - start)
    expected = {e.index for e in listed}
    stray = sorted(set(runs) - expected)
    if stray:
        raise InputError(
            f"{path}: has rows of episode {stray[0]}, which {EPISODES_DIR} does not "
            "place in this file"
        )
    result = []
    for episode in listed:
        first, rows = runs.get(episode.index, (0, 0))
        where = f"{path}: episode {episode.index}"
        if rows != episode.length:
            raise InputError(
                f"{where} has {rows} rows but length {episode.length} in {EPISODES_DIR}"
            )
        if index is not None and not np.array_equal(
            index[first : first + rows], np.arange(episode.start, episode.start + rows)
        ):
            raise InputError(
                f"{where}: column index does not run from dataset_from_index "
                f"{episode.start} to dataset_to_index {episode.start + rows}"
            )
        result.append(replace(episode, row=first))
    return sorted(result, key=lambda e: e.row)


def _batches(episodes: list[Episode], max_rows: int) -> Iterator[list[Episode]]:
    """Consecutive episodes of at most ``max_rows`` rows together (or one longer)."""
    batch: list[Episode] = []
    rows = 0
    for episode in episodes:
        if batch and rows + episode.length > max_rows:
            yield batch
            batch, rows = [], 0
        batch.append(episode)
        rows += episode.length
    if batch:
        yield batch


def _episode_fields(batch: list[Episode]) -> dict[str, np.ndarray]:
    return {
        "source_id": np.array([e.index for e in batch], dtype=np.int64),
        "task": np.array([e.task for e in batch], dtype=np.int64),
        "num_tasks": np.array([e.num_tasks for e in batch], dtype=np.int64),
    }


# ---------------------------------------------------------------- frame data
class _RowReader:
    """Rows ``[start, stop)`` of some columns of a Parquet file, read by row groups
    (the groups of the last read are kept for the next one)."""

    def __init__(self, pq: Any, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        self.file = _parquet_file(pq, path)
        sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._cached: tuple[int, int, Any] | None = None

    def rows(self, start: int, stop: int) -> dict[str, Any]:
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop, side="left"))
        if self._cached is None or self._cached[:2] != (first, last):
            try:
                table = self.file.read_row_groups(list(range(first, last)), columns=self.columns)
            except (OSError, ValueError) as err:
                raise InputError(
                    f"{self.path}: is damaged or unreadable ({one_line(err, 120)})"
                ) from None
            self._cached = (first, last, table)
        table = self._cached[2]
        offset = start - int(self.offsets[first])
        return {name: table.column(name).slice(offset, stop - start) for name in self.columns}


def _values(column: Any, feature: Feature, path: Path, start: int, stop: int) -> np.ndarray:
    """A column's rows as ``[T]`` (shape [1] scalars) or ``[T, *shape]``, checked
    against the declared dtype and shape."""
    import pyarrow as pa
    import pyarrow.compute as pc

    where = f"{path}: column {feature.name} (rows {start}..{stop - 1})"
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(array)
    depth = 0
    while True:
        if isinstance(array.type, pa.ExtensionType):
            array = array.storage
        if array.null_count:
            raise InputError(f"{where}: holds nulls")
        kind = array.type
        if not (
            pa.types.is_list(kind)
            or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)
        ):
            break
        if depth >= len(feature.shape):
            raise InputError(f"{where}: is nested deeper than the shape {list(feature.shape)}")
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != feature.shape[depth]).any():
            bad = int(lengths[np.argmax(lengths != feature.shape[depth])])
            raise InputError(
                f"{where}: has a row of {bad} values where the shape {list(feature.shape)} "
                f"needs {feature.shape[depth]}"
            )
        array = array.flatten()
        depth += 1
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise InputError(f"{where}: has type {kind}, not a numeric type")
    values = np.asarray(array.to_numpy(zero_copy_only=False))
    if values.dtype != feature.dtype:
        raise InputError(
            f"{where}: is {values.dtype} but {INFO_PATH} declares {feature.dtype.name}"
        )
    if depth == 0:
        if feature.shape != (1,):
            raise InputError(f"{where}: holds scalars but the shape is {list(feature.shape)}")
        return values
    if depth != len(feature.shape):
        raise InputError(f"{where}: is not nested like the shape {list(feature.shape)}")
    return values.reshape(rows, *feature.shape)


def _row_bytes(features: list[Feature]) -> int:
    return sum(f.dtype.itemsize * int(np.prod(f.shape, dtype=np.int64)) for f in features)


# ---------------------------------------------------------------- metadata
def _metadata(
    root: Path,
    info: dict[str, Any],
    info_path: Path,
    version: str,
    tasks: list[str],
    skipped: list[str],
    videos: list[str],
) -> dict[str, Any]:
    text, dropped = metadata_json(info)
    task_json = json.dumps(tasks)
    if len(task_json) > MAX_TEXT_ATTR:
        dropped.append("lerobot_tasks")
    features = info["features"]
    extra: dict[str, Any] = {
        "source_metadata": text,
        "lerobot_codebase_version": version,
        "lerobot_fps": _number(info.get("fps"), "fps", info_path),
        "lerobot_robot_type": text_value(info.get("robot_type"), "robot_type", info_path, 1000),
        "lerobot_tasks": task_json if len(task_json) <= MAX_TEXT_ATTR else None,
        "lerobot_state_names": _names(features["observation.state"]),
        "lerobot_action_names": _names(features["action"]),
        "lerobot_video_features": videos,
        "skipped_fields": skipped,
        "source_metadata_dropped": dropped,
    }
    return store_metadata("lerobot", root, extra)


def _number(value: Any, field: str, path: Path) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value <= 0:
        raise InputError(
            f"{path}: {field} must be a positive number, got {one_line(repr(value), 40)}"
        )
    return float(value)


def _names(feature: dict[str, Any]) -> str | None:
    """The feature's ``names`` as JSON (None when absent or too long)."""
    names = feature.get("names")
    if names is None:
        return None
    text = json.dumps(names) if isinstance(names, list | dict) else None
    return text if text is not None and len(text) <= MAX_ATTR_JSON else None
