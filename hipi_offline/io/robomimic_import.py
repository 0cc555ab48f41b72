"""Import a robomimic HDF5 file.

Source layout: ``data/demo_N`` groups (sorted by N, so demo_2 precedes demo_10)
holding ``obs/<key>`` [T, ...], ``actions`` [T, A], optional ``next_obs/<key>``,
``rewards``, ``dones`` and ``states``; demo attrs ``num_samples`` (checked) and
``model_file`` (dropped); ``data`` attrs ``env_args`` (JSON) and ``total``;
optional ``mask/<filter_key>`` datasets listing demo names.

Mapping::

    obs/<key>               -> steps/observations/<key>
    actions                 -> steps/actions
    rewards                 -> steps/rewards
    dones                   -> steps/terminations          (bool)
    states                  -> steps/physics/states
    next_obs/<key>[-1]      -> episodes/final_observations/<key>
    N of demo_N             -> episodes/source_id          (int64)
    mask/<filter_key>       -> episodes/filter/<filter_key> (bool)
    data attrs env_args     -> store metadata ``env_args`` (JSON string)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.errors import InputError
from hipi_offline.io.common import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_STEPS,
    MAX_ATTR_JSON,
    EpisodeWriter,
    check_rows,
    check_store_destination,
    child,
    count_value,
    dataset_bytes,
    is_numeric,
    leaf_datasets,
    metadata_json,
    new_store,
    open_hdf5_source,
    read_attrs,
    read_rows,
    require,
    require_group,
    require_numeric,
    sorted_numbered,
    source_name,
    store_metadata,
    text_value,
)
from hipi_offline.store.location import store_location

_RENAMED = {"rewards": "rewards", "dones": "terminations", "states": "physics/states"}


def import_robomimic(
    src: str | Path,
    dest: str | Path,
    *,
    overwrite: bool = False,
    batch_steps: int = DEFAULT_BATCH_STEPS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> Path:
    """Convert the robomimic HDF5 file ``src`` into a new store at ``dest``."""
    src, dest = Path(src), store_location(dest)  # a path, or a URL
    check_store_destination(src, dest, overwrite)
    with open_hdf5_source(src) as source:
        data = require_group(source, "data", src)
        demos = sorted_numbered(list(data), "demo_")
        if not demos:
            raise InputError(f"{src}: data has no demo_N groups; nothing to import")
        groups = {name: require_group(data, name, src) for _, name in demos}
        filters = _filter_masks(source, [name for _, name in demos], src)
        metadata, env = _metadata(data, src)
        needed = sum(_demo_bytes(group, src) for group in groups.values())
        with (
            new_store(src, dest, overwrite, env, metadata, needed) as store,
            EpisodeWriter(store, len(demos), "robomimic demos", batch_steps, batch_bytes) as writer,
        ):
            for index, (number, name) in enumerate(demos):
                steps, final, length = _read_demo(groups[name], src)
                episodes = {
                    "source_id": np.array([number], dtype=np.int64),
                    **final,
                    **{f"filter/{key}": mask[index : index + 1] for key, mask in filters.items()},
                }
                writer.add(steps, [length], episodes, where=f"{src}: data/{name}")
    return dest


def _read_demo(demo: Any, src: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Step fields, final observations and length of one demo."""
    actions = require(demo, "actions", src)
    if not hasattr(actions, "dtype"):
        raise InputError(f"{src}: {source_name(actions)} must be a dataset, not a group")
    length = int(actions.shape[0]) if actions.shape else 0
    if length == 0:
        raise InputError(f"{src}: {demo.name.lstrip('/')}/actions has no rows")
    where = demo.name.lstrip("/")
    declared = read_attrs(demo, src).get("num_samples")
    if declared is not None:
        declared = count_value(declared, f"{where} attr num_samples", src)
        if declared != length:
            raise InputError(
                f"{src}: {where} attr num_samples={declared} but actions has {length} rows"
            )
    sources = leaf_datasets(require(demo, "obs", src), "observations", src)
    sources["actions"] = actions
    for key, name in _RENAMED.items():
        if key in demo:
            sources.update(leaf_datasets(child(demo, key, src), name, src))
    steps = {}
    for name, dataset in sources.items():
        require_numeric(src, dataset)
        check_rows(src, dataset, length)
        values = read_rows(src, dataset)
        steps[name] = values.astype(bool) if name == "terminations" else values
    return steps, _final_observations(demo, src, length), length


def _final_observations(demo: Any, src: Path, length: int) -> dict[str, np.ndarray]:
    """Last ``next_obs`` row of every observation key (empty without ``next_obs``)."""
    if "next_obs" not in demo:
        return {}
    found = leaf_datasets(child(demo, "next_obs", src), "final_observations", src)
    final = {}
    for name, dataset in found.items():
        require_numeric(src, dataset)
        check_rows(src, dataset, length)
        final[name] = read_rows(src, dataset, length - 1, length)
    return final


def _demo_bytes(demo: Any, src: Path) -> int:
    """Bytes a demo adds to the store (``next_obs`` is left out: one row is kept)."""
    keys = [key for key in demo if key != "next_obs"]
    found: dict[str, Any] = {}
    for key in keys:
        found.update(leaf_datasets(child(demo, key, src), key, src))
    return dataset_bytes(d for d in found.values() if is_numeric(d))


def _filter_masks(source: Any, demo_names: list[str], src: Path) -> dict[str, np.ndarray]:
    """``mask/<key>`` as bool arrays over the demos in import order."""
    if "mask" not in source:
        return {}
    position = {name: i for i, name in enumerate(demo_names)}
    masks = {}
    for key, dataset in leaf_datasets(child(source, "mask", src), "", src).items():
        mask = np.zeros(len(demo_names), dtype=bool)
        for raw in read_rows(src, dataset).reshape(-1):
            name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            if name not in position:
                raise InputError(f"{src}: mask{key} lists {name}, which is not in data")
            mask[position[name]] = True
        masks[key.lstrip("/")] = mask
    return masks


def _metadata(data: Any, src: Path) -> tuple[dict[str, Any], str]:
    """Store metadata and env name from the ``data`` group's attrs."""
    attrs = read_attrs(data, src)
    env_args = text_value(attrs.pop("env_args", None), "data attr env_args", src)
    env = _env_name(env_args, src) if env_args is not None else ""
    text, dropped = metadata_json(attrs)
    extra: dict[str, Any] = {"env_args": env_args, "source_metadata": text}
    if "total" in attrs:
        extra["robomimic_total"] = count_value(attrs["total"], "data attr total", src)
    if dropped:
        extra["source_metadata_dropped"] = dropped
    return store_metadata("robomimic", src, extra), env


def _env_name(env_args: str, src: Path) -> str:
    """``env_name`` of the ``env_args`` JSON object (empty when absent)."""
    try:
        values = json.loads(env_args)
    except (ValueError, RecursionError):
        values = None
    if not isinstance(values, dict):
        raise InputError(f"{src}: data attr env_args is not a JSON object")
    name = values.get("env_name", "")
    return text_value(name, "env_args env_name", src, MAX_ATTR_JSON) or ""
