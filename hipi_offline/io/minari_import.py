"""Import a Minari dataset (HDF5 storage, Minari 0.4/0.5 layout).

``src`` is the dataset directory (``<id>/`` holding ``data/main_data.hdf5``), its
``data/`` directory, or ``main_data.hdf5`` itself. Minari 0.5 keeps the dataset
metadata in ``metadata.json`` beside ``main_data.hdf5``; Minari 0.4 kept it in
the file's root attrs. Both are read.

Each ``episode_{i}`` group (sorted by i) holds ``observations`` with T+1 rows
(Dict/Tuple spaces are subgroups, Tuple items named ``_index_<j>``), ``actions``,
``rewards``, ``terminations``, ``truncations`` (T rows) and ``infos``. Minari 0.5
records infos at reset and after every step (T+1 rows, row t came with
observation t); some datasets have T rows. Mapping::

    observations[:-1]      -> steps/observations[/<key>...]
    observations[-1]       -> episodes/final_observations[/<key>...]
    actions                -> steps/actions[/<key>...]
    rewards                -> steps/rewards
    terminations           -> steps/terminations  (bool)
    truncations            -> steps/truncations   (bool)
    infos/<key> (T rows)   -> steps/infos/<key>
    infos/<key> (T+1 rows) -> steps/infos/<key> = rows[:-1], episodes/final_infos/<key> = rows[-1]
    i of episode_{i}       -> episodes/source_id  (int64)
    attr seed              -> episodes/seed (uint64: Minari auto-seeds are 64-bit),
                              episodes/has_seed (bool; False where no seed was stored)
"""

from __future__ import annotations

import json
import re
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
    check_rows,
    check_store_destination,
    child,
    dataset_bytes,
    is_numeric,
    leaf_datasets,
    metadata_json,
    new_store,
    numeric_only,
    open_hdf5_source,
    read_attr,
    read_attrs,
    read_rows,
    require,
    require_group,
    require_numeric,
    sorted_numbered,
    store_metadata,
    text_value,
)
from hipi_offline.store.location import store_location

MAIN_FILE = "main_data.hdf5"
METADATA_FILE = "metadata.json"
_FLAGS = ("terminations", "truncations")
MAX_METADATA_BYTES = 64 << 20
"""Largest metadata.json read (real ones are a few kilobytes)."""
MAX_GYM_ID = 200
"""Longest Gymnasium id recorded as ``gymnasium_env``."""
_GYM_ID = re.compile(r"(?:[\w-]+/)?[\w.-]+?(?:-v\d+)?")
"""Gymnasium's id syntax ``[namespace/]name[-vN]``, without its ``module:`` prefix (an
id read from a dataset is never one that names a module to import)."""


def import_minari(
    src: str | Path,
    dest: str | Path,
    *,
    overwrite: bool = False,
    batch_steps: int = DEFAULT_BATCH_STEPS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> Path:
    """Convert the Minari dataset at ``src`` into a new store at ``dest``."""
    src, dest = Path(src), store_location(dest)  # a path, or a URL
    main = locate_main_file(src)
    also = (main.parent / METADATA_FILE,)
    check_store_destination(main, dest, overwrite, also=also)
    with open_hdf5_source(main) as source:
        info = {**read_attrs(source, main), **_read_metadata_file(main)}
        _reject_jpeg(info, main)
        episodes = sorted_numbered(list(source), "episode_")
        if not episodes:
            raise InputError(f"{main}: no episode_N groups; nothing to import")
        groups = {name: require_group(source, name, main) for _, name in episodes}
        seeds = {name: _seed(group, main) for name, group in groups.items()}
        skipped: set[str] = set()
        first_steps, first_final, _ = _read_episode(groups[episodes[0][1]], main, skipped)
        metadata = _metadata(src, info, _infos_rows(first_steps, first_final), sorted(skipped))
        env = _env_name(info, main)
        needed = sum(_episode_bytes(group, main) for group in groups.values())
        with (
            new_store(main, dest, overwrite, env, metadata, needed, also) as store,
            EpisodeWriter(store, len(episodes), "minari episodes", batch_steps, batch_bytes) as w,
        ):
            for number, name in episodes:
                steps, final, length = _read_episode(groups[name], main, skipped)
                episode = {**final, **seeds[name], "source_id": np.array([number], np.int64)}
                w.add(steps, [length], episode, where=f"{main}: {name}")
    return dest


def locate_main_file(src: Path) -> Path:
    """``main_data.hdf5`` of a Minari dataset given the dataset dir, data dir or file."""
    if not src.exists():
        raise InputError(f"{src}: no such file or directory")
    if src.is_file():
        return src
    for directory in (src / "data", src):
        _read_metadata_file(directory / MAIN_FILE)  # names a non-HDF5 data_format
        if (directory / MAIN_FILE).is_file():
            return directory / MAIN_FILE
    raise InputError(f"{src}: no Minari data found (expected data/{MAIN_FILE})")


def _read_metadata_file(main: Path) -> dict[str, Any]:
    path = main.parent / METADATA_FILE
    if not path.is_file():
        return {}
    if path.stat().st_size > MAX_METADATA_BYTES:
        raise InputError(
            f"{path}: is {path.stat().st_size:,} bytes; a Minari metadata file is at most "
            f"{MAX_METADATA_BYTES:,}"
        )
    try:
        values = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:
        raise InputError(f"{path}: not valid JSON ({err.__class__.__name__})") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(values).__name__}")
    data_format = values.get("data_format", "hdf5")
    if data_format != "hdf5":
        shown = one_line(repr(data_format), 60)
        raise InputError(f"{path}: data_format {shown} is not supported (only hdf5)")
    return values


def _is_image_box(space: dict[str, Any]) -> bool:
    """Minari's test for spaces it JPEG-encodes (uint8 Box, >=32x32, bounds 0..255)."""
    shape = space.get("shape", [])
    if not (isinstance(shape, list) and len(shape) in (2, 3)):
        return False
    if not all(isinstance(n, int) for n in shape):
        return False
    try:
        bounds = np.all(np.asarray(space.get("low")) == 0) and np.all(
            np.asarray(space.get("high")) == 255
        )
    except (ValueError, TypeError):
        return False
    return (
        space.get("type") == "Box"
        and space.get("dtype") == "uint8"
        and shape[0] >= 32
        and shape[1] >= 32
        and bool(bounds)
    )


def _has_image(space: Any, depth: int = 0) -> bool:
    if not isinstance(space, dict) or depth > 100:
        return False
    subspaces = space.get("subspaces", [])
    children = list(subspaces.values()) if isinstance(subspaces, dict) else subspaces
    if not isinstance(children, list):
        return False
    return _is_image_box(space) or any(_has_image(c, depth + 1) for c in children)


def _reject_jpeg(info: dict[str, Any], main: Path) -> None:
    """InputError for datasets whose image observations/actions are JPEG bytes."""
    jpeg = info.get("jpeg_encoding", False)
    if not isinstance(jpeg, bool | int):
        raise InputError(f"{main}: metadata jpeg_encoding must be true or false, got {jpeg!r:.40}")
    if not jpeg:
        return
    for key in ("observation_space", "action_space"):
        text = text_value(info.get(key), f"metadata {key}", main, MAX_TEXT_ATTR)
        try:
            space = json.loads(text) if text is not None else None
        except (ValueError, RecursionError):
            raise InputError(f"{main}: metadata {key} is not valid JSON") from None
        if _has_image(space):
            raise InputError(
                f"{main}: {key} holds JPEG-encoded images (jpeg_encoding=true), which this "
                "importer does not decode; re-create the dataset with jpeg_encoding=False"
            )


def _read_episode(
    group: Any, main: Path, skipped: set[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Step fields, per-episode fields (final observation/info) and length T."""
    actions = leaf_datasets(require(group, "actions", main), "actions", main)
    first = next(iter(actions.values()), None)
    length = int(first.shape[0]) if first is not None and first.shape else 0
    if length == 0:
        raise InputError(f"{main}: {group.name.lstrip('/')}/actions has no rows")
    steps: dict[str, np.ndarray] = {}
    final: dict[str, np.ndarray] = {}
    for name, dataset in leaf_datasets(require(group, "observations", main), "", main).items():
        require_numeric(main, dataset)
        check_rows(main, dataset, length + 1)
        values = read_rows(main, dataset)
        steps["observations" + name], final["final_observations" + name] = values[:-1], values[-1:]
    sources = dict(actions)
    for key in ("rewards", *_FLAGS):
        if key in group:
            sources.update(leaf_datasets(child(group, key, main), key, main))
    for name, dataset in sources.items():
        require_numeric(main, dataset)
        check_rows(main, dataset, length)
        values = read_rows(main, dataset)
        steps[name] = values.astype(bool) if name in _FLAGS else values
    if "infos" in group:
        _read_infos(child(group, "infos", main), main, length, skipped, steps, final)
    return steps, final, length


def _read_infos(
    infos: Any,
    main: Path,
    length: int,
    skipped: set[str],
    steps: dict[str, np.ndarray],
    final: dict[str, np.ndarray],
) -> None:
    """Infos aligned to steps: T rows as they are, T+1 rows split like observations."""
    for name, dataset in numeric_only(leaf_datasets(infos, "", main), skipped).items():
        rows = dataset.shape[0] if dataset.shape else None
        if rows not in (length, length + 1):
            check_rows(main, dataset, length)
        values = read_rows(main, dataset)
        if rows == length + 1:
            steps["infos" + name], final["final_infos" + name] = values[:-1], values[-1:]
        else:
            steps["infos" + name] = values


def _seed(group: Any, main: Path) -> dict[str, np.ndarray]:
    """``seed``/``has_seed`` from the episode's attr ``seed`` (an integer or absent)."""
    seed = read_attr(group, "seed", main)
    has_seed = seed is not None and not isinstance(seed, list)
    if has_seed and (isinstance(seed, bool) or not isinstance(seed, int)):
        where = group.name.lstrip("/")
        raise InputError(f"{main}: {where} attr seed must be an integer, got {seed!r:.40}")
    value = int(seed) % (1 << 64) if has_seed else 0
    return {
        "seed": np.array([value], dtype=np.uint64),
        "has_seed": np.array([has_seed], dtype=bool),
    }


def _env_name(info: dict[str, Any], main: Path) -> str:
    """The env id of ``env_spec`` (JSON), else the dataset id, else empty."""
    spec = text_value(info.get("env_spec"), "metadata env_spec", main)
    try:
        values = json.loads(spec) if spec is not None else None
    except (ValueError, RecursionError):
        values = None
    name = values.get("id") if isinstance(values, dict) else None
    if isinstance(name, str) and len(name) <= MAX_ATTR_JSON:
        return name
    return text_value(info.get("dataset_id"), "metadata dataset_id", main, MAX_ATTR_JSON) or ""


def _gymnasium_env(info: dict[str, Any], src: Path) -> dict[str, Any]:
    """``gymnasium_env``: the id of the Gymnasium environment the dataset was collected
    in (``env_spec``'s ``id``; "" when there is none, or it is not a plain Gymnasium
    id), and ``gymnasium_max_episode_steps`` (its time limit) when the spec gives one.
    ``evaluate --env dataset`` reads them back."""
    spec = text_value(info.get("env_spec"), "metadata env_spec", src)
    try:
        values = json.loads(spec) if spec is not None else None
    except (ValueError, RecursionError):
        values = None
    values = values if isinstance(values, dict) else {}
    name = values.get("id")
    ok = isinstance(name, str) and len(name) <= MAX_GYM_ID and _GYM_ID.fullmatch(name)
    found: dict[str, Any] = {"gymnasium_env": name if ok else ""}
    limit = values.get("max_episode_steps")
    if ok and isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < 2**31:
        found["gymnasium_max_episode_steps"] = limit
    return found


def _episode_bytes(group: Any, main: Path) -> int:
    """Bytes an episode adds to the store (its numeric datasets)."""
    found = leaf_datasets(group, "", main)
    return dataset_bytes(d for d in found.values() if is_numeric(d))


def _infos_rows(steps: dict[str, np.ndarray], final: dict[str, np.ndarray]) -> str | None:
    """How many infos rows the (first) episode has: "T+1", "T" or None (no infos)."""
    if any(name.startswith("final_infos/") for name in final):
        return "T+1"
    return "T" if any(name.startswith("infos/") for name in steps) else None


def _metadata(
    src: Path, info: dict[str, Any], infos_rows: str | None, skipped: list[str]
) -> dict[str, Any]:
    text, dropped = metadata_json(info)
    extra: dict[str, Any] = {
        "source_metadata": text,
        "minari_dataset_id": text_value(info.get("dataset_id"), "metadata dataset_id", src),
        "minari_version": text_value(info.get("minari_version"), "metadata minari_version", src),
        "env_spec": text_value(info.get("env_spec"), "metadata env_spec", src),
        **_gymnasium_env(info, src),
        "minari_infos_rows": infos_rows,
        "skipped_fields": skipped,
        "source_metadata_dropped": dropped,
    }
    return store_metadata("minari", src, extra)
