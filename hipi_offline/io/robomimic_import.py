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
    EpisodeWriter,
    check_destination,
    check_rows,
    jsonable,
    leaf_datasets,
    metadata_json,
    new_store,
    open_hdf5_source,
    require,
    require_numeric,
    sorted_numbered,
    store_metadata,
)

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
    src, dest = Path(src), Path(dest)
    check_destination(dest, overwrite)
    with open_hdf5_source(src) as source:
        data = require(source, "data", src)
        demos = sorted_numbered(list(data), "demo_")
        if not demos:
            raise InputError(f"{src}: data has no demo_N groups; nothing to import")
        filters = _filter_masks(source, [name for _, name in demos], src)
        metadata, env = _metadata(data, src)
        with (
            new_store(dest, overwrite, env, metadata) as store,
            EpisodeWriter(store, len(demos), "robomimic demos", batch_steps, batch_bytes) as writer,
        ):
            for index, (number, name) in enumerate(demos):
                steps, final, length = _read_demo(data[name], src)
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
    length = int(actions.shape[0]) if actions.shape else 0
    if length == 0:
        raise InputError(f"{src}: {demo.name.lstrip('/')}/actions has no rows")
    declared = demo.attrs.get("num_samples")
    if declared is not None and int(declared) != length:
        raise InputError(
            f"{src}: {demo.name.lstrip('/')} attr num_samples={int(declared)} but actions has "
            f"{length} rows"
        )
    sources = leaf_datasets(require(demo, "obs", src), "observations")
    sources["actions"] = actions
    for key, name in _RENAMED.items():
        if key in demo:
            sources.update(leaf_datasets(demo[key], name))
    steps = {}
    for name, dataset in sources.items():
        require_numeric(src, dataset)
        check_rows(src, dataset, length)
        values = np.asarray(dataset[()])
        steps[name] = values.astype(bool) if name == "terminations" else values
    return steps, _final_observations(demo, src, length), length


def _final_observations(demo: Any, src: Path, length: int) -> dict[str, np.ndarray]:
    """Last ``next_obs`` row of every observation key (empty without ``next_obs``)."""
    if "next_obs" not in demo:
        return {}
    found = leaf_datasets(demo["next_obs"], "final_observations")
    final = {}
    for name, dataset in found.items():
        require_numeric(src, dataset)
        check_rows(src, dataset, length)
        final[name] = np.asarray(dataset[length - 1 : length])
    return final


def _filter_masks(source: Any, demo_names: list[str], src: Path) -> dict[str, np.ndarray]:
    """``mask/<key>`` as bool arrays over the demos in import order."""
    if "mask" not in source:
        return {}
    position = {name: i for i, name in enumerate(demo_names)}
    masks = {}
    for key, dataset in leaf_datasets(source["mask"], "").items():
        mask = np.zeros(len(demo_names), dtype=bool)
        for raw in np.asarray(dataset[()]).reshape(-1):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            if name not in position:
                raise InputError(f"{src}: mask{key} lists {name}, which is not in data")
            mask[position[name]] = True
        masks[key.lstrip("/")] = mask
    return masks


def _metadata(data: Any, src: Path) -> tuple[dict[str, Any], str]:
    """Store metadata and env name from the ``data`` group's attrs."""
    attrs = {key: jsonable(value) for key, value in data.attrs.items()}
    env_args = attrs.pop("env_args", None)
    env = ""
    if isinstance(env_args, str):
        try:
            env = str(json.loads(env_args).get("env_name", ""))
        except (json.JSONDecodeError, AttributeError):
            raise InputError(f"{src}: data attr env_args is not a JSON object") from None
    text, dropped = metadata_json(attrs)
    extra: dict[str, Any] = {"env_args": env_args, "source_metadata": text}
    if "total" in attrs:
        extra["robomimic_total"] = int(attrs["total"])
    if dropped:
        extra["source_metadata_dropped"] = dropped
    return store_metadata("robomimic", src, extra), env
