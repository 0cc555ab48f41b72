"""Export a store as a Minari dataset (HDF5 storage, Minari 0.5 layout).

Writes ``DEST/data/main_data.hdf5`` and ``DEST/data/metadata.json``, which is what
``minari.MinariDataset(DEST / "data")`` reads, and what ``minari.load_dataset(ID)``
reads when DEST is ``$MINARI_DATASETS_PATH/ID``. Per episode ``episode_{i}``:

* ``observations``: T+1 rows (``steps/observations[/<key>]`` plus
  ``episodes/final_observations``; without it the last row is repeated and
  ``final_observation_repeated`` is set in the metadata). Groups of observation
  arrays become a Dict space (a Tuple when the keys are ``_index_0..n``).
* ``actions``, ``rewards`` (zeros when not stored), ``terminations`` (False
  when not stored), ``truncations`` (when not stored: True at the last step
  unless it terminated).
* ``infos/<key>``: T+1 rows from ``steps/infos/<key>`` (other extra step fields
  too, under their own path) plus ``episodes/final_infos/<key>`` or the last
  row repeated.
* attrs ``id``, ``total_steps``, ``seed`` (from ``episodes/seed`` where
  ``episodes/has_seed``), ``episode_fields/<name>`` for the other small episode
  fields, and for every label set ``labels/<name>/task`` (the most probable
  candidate), ``labels/<name>/topk_index``, ``labels/<name>/topk_logprob`` and
  ``labels/<name>/entropy``. Minari returns these, nested at the slashes, from
  ``dataset.storage.get_episode_metadata([i])``.

The folder holds the marker ``.hipi-offline`` (kind ``minari-export``): ``--overwrite``
replaces only such a folder, and never the store itself, its label folder or a
folder that contains them.

The metadata holds the spaces (Box with infinite/dtype bounds, MultiBinary for
bool), the fill-in flags and, under ``hipi_labels``, each label set's
candidates, k and attrs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.errors import InputError, one_line
from hipi_offline.io.common import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_STEPS,
    UnsupportedValue,
    check_free_space,
    check_parent,
    episode_batches,
    jsonable,
    refuse_link,
    rows_per_batch,
    staged_folder,
)
from hipi_offline.ownership import check_disjoint, check_replaceable_folder, write_marker
from hipi_offline.progress import progress_bar
from hipi_offline.store import LabelSet, TrajectoryStore, open_store
from hipi_offline.store.backends import ArrayInfo, backend_for
from hipi_offline.store.location import Location, is_url, store_location, url_name

MINARI_VERSION = "0.5.0"
"""Written as ``minari_version``: the oldest release of this layout, so every 0.5.x reads it."""
MAIN_FILE = "main_data.hdf5"
METADATA_FILE = "metadata.json"
MAX_EPISODE_ATTR_BYTES = 8192
EXPORT_KIND = "minari-export"
"""Kind of the ownership marker in every exported dataset folder."""
_DATASET_ID = re.compile(r"^(?:[-_\w][-_\w/]*[-_\w]+/)?[-_\w]+?-v\d+$")
_TUPLE_KEY = re.compile(r"^_index_(\d+)$")


def export_minari(
    store_path: str | Path,
    dest: str | Path,
    *,
    overwrite: bool = False,
    dataset_id: str | None = None,
    batch_steps: int = DEFAULT_BATCH_STEPS,
) -> Path:
    """Write the store at ``store_path`` as a Minari dataset directory ``dest``;
    ``dataset_id`` defaults to DEST's name (``-v0`` added when it has no version)."""
    store_path, dest = store_location(store_path), Path(dest)  # a path, or a URL string
    dataset_id = _dataset_id(dest, dataset_id)
    check_export_destination(store_path, dest, overwrite)
    with open_store(store_path) as store:
        plan = ExportPlan.of(store)
        labels = [_checked_labels(store, name) for name in store.label_names()]
        metadata = _dataset_metadata(store, plan, labels, dataset_id)
        check_free_space(dest, _export_bytes(store, plan, labels))
        with staged_folder(dest) as tmp:
            data_dir = tmp / "data"
            data_dir.mkdir(parents=True)
            _write_main_file(store, plan, labels, data_dir / MAIN_FILE, batch_steps)
            metadata["dataset_size"] = _size_mb(data_dir)
            (data_dir / METADATA_FILE).write_text(json.dumps(metadata))
            write_marker(tmp, EXPORT_KIND)
    return dest


def _name(location: Location) -> str:
    """The store's file or folder name (the last part of a URL)."""
    return url_name(str(location)) if is_url(location) else Path(location).name


def check_export_destination(store_path: Location, dest: Path, overwrite: bool) -> None:
    """Refuse a DEST that overlaps the store (or an HDF5 store's label folder), an
    existing one without ``overwrite``, and with it anything but an earlier export."""
    if not is_url(store_path):  # a local DEST cannot overlap a store at a URL
        check_disjoint(store_path, dest, also=backend_for(store_path).side_paths(store_path))
    refuse_link(dest)
    if dest.exists():
        if not overwrite:
            raise InputError(f"{dest}: already exists; pass --overwrite to replace it")
        check_replaceable_folder(dest, EXPORT_KIND)
    check_parent(dest)


def _checked_labels(store: TrajectoryStore, name: str) -> LabelSet:
    """A label set whose arrays fit the store and each other, or an InputError."""
    try:
        labels = store.read_labels(name)
    except InputError:
        raise
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise _damaged(name, one_line(err, 120)) from None
    _check_label_arrays(labels, name, store.num_episodes)
    return labels


def _check_label_arrays(labels: LabelSet, name: str, n: int) -> None:
    """Numeric arrays of matching shapes; top-k indices into the candidates."""
    shapes = {}
    for key in ("candidates", "topk_index", "topk_logprob", "entropy"):
        value = np.asarray(getattr(labels, key))
        if value.dtype.kind not in "iuf":
            raise _damaged(name, f"{key} has dtype {value.dtype}")
        shapes[key] = value.shape
    count = shapes["candidates"][0] if len(shapes["candidates"]) == 2 else 0
    k = shapes["topk_index"][1] if len(shapes["topk_index"]) == 2 else 0
    expected = {"candidates": (count, -1), "topk_index": (n, k), "topk_logprob": (n, k)}
    for key, shape in {**expected, "entropy": (n,)}.items():
        got = shapes[key]
        if len(got) != len(shape) or any(e not in (-1, g) for e, g in zip(shape, got, strict=True)):
            raise _damaged(name, f"{key} has shape {got}, expected {shape}".replace("-1", "D"))
    if count == 0 or not 1 <= k <= count or shapes["candidates"][1] == 0:
        raise _damaged(name, f"{count} candidates with top-{k} indices")
    top = np.asarray(labels.topk_index)
    if top.dtype.kind not in "iu" or top.size and (top.min() < 0 or top.max() >= count):
        raise _damaged(name, f"topk_index is not an index into the {count} candidates")


def _damaged(name: str, reason: str) -> InputError:
    return InputError(f"labels/{name}: damaged label set ({reason}); relabel with --overwrite")


def _export_bytes(store: TrajectoryStore, plan: ExportPlan, labels: list[LabelSet]) -> int:
    """Bytes the export writes, about (steps, final rows, episode attrs, labels)."""
    info = plan.step_info
    per_row = {
        name: info[name].dtype.itemsize * int(np.prod(info[name].shape[1:])) for name in info
    }
    steps = sum(per_row[name] for name in plan.step_fields()) + 10  # filled outcomes
    finals = sum(per_row[name] for name in [*plan.observations.values(), *plan.infos.values()])
    episode_info = store.episode_fields()
    episodes = sum(
        episode_info[name].dtype.itemsize * int(np.prod(episode_info[name].shape))
        for name in plan.episode_fields()
    )
    label_row = sum(12 * label.k + 4 + 4 * label.candidates.shape[1] for label in labels)
    return store.num_steps * steps + store.num_episodes * (finals + label_row) + episodes


def _dataset_id(dest: Path, dataset_id: str | None) -> str:
    if dataset_id is None:
        name = re.sub(r"[^-\w]", "_", dest.name) or "dataset"
        dataset_id = name if _DATASET_ID.match(name) else f"{name}-v0"
    if not _DATASET_ID.match(dataset_id):
        raise InputError(
            f"dataset_id: {dataset_id!r} is not a Minari id ((namespace/)name-v<version>)"
        )
    return dataset_id


# ---------------------------------------------------------------- plan
@dataclass
class ExportPlan:
    """Which store field goes where in each Minari episode group."""

    observations: dict[str, str]
    """Minari path (``observations``, ``observations/pos``) -> step field."""
    final_observations: dict[str, str]
    """Minari observation path -> episode field holding its final row (empty: repeat)."""
    actions: dict[str, str]
    rewards: str | None
    terminations: str | None
    truncations: str | None
    infos: dict[str, str]
    """Minari path ``infos/...`` -> step field."""
    final_infos: dict[str, str]
    """Minari infos path -> episode field holding its final row (others repeat)."""
    episode_attrs: dict[str, str]
    """Episode attr name ``episode_fields/...`` -> episode field."""
    skipped_episode_fields: list[str] = field(default_factory=list)
    seeds: bool = False
    step_info: dict[str, ArrayInfo] = field(default_factory=dict)

    @classmethod
    def of(cls, store: TrajectoryStore) -> ExportPlan:
        steps, eps = store.step_fields(), store.episode_fields()
        observations = _subtree(steps, "steps/observations", "observations")
        finals = {
            path: "episodes/final_" + path
            for path in observations
            if "episodes/final_" + path in eps
        }
        special = {"steps/rewards", "steps/terminations", "steps/truncations"}
        infos = {
            "infos/" + _strip(name, "steps/infos"): name
            for name in steps
            if not name.startswith(("steps/observations", "steps/actions")) and name not in special
        }
        final_infos = {p: "episodes/final_" + p for p in infos if "episodes/final_" + p in eps}
        attrs, skipped = _episode_attrs(eps)
        return cls(
            observations=observations,
            final_observations=finals if len(finals) == len(observations) else {},
            actions=_subtree(steps, "steps/actions", "actions"),
            rewards="steps/rewards" if "steps/rewards" in steps else None,
            terminations="steps/terminations" if "steps/terminations" in steps else None,
            truncations="steps/truncations" if "steps/truncations" in steps else None,
            infos=infos,
            final_infos=final_infos,
            episode_attrs=attrs,
            skipped_episode_fields=skipped,
            seeds="episodes/seed" in eps and "episodes/has_seed" in eps,
            step_info=steps,
        )

    def step_fields(self) -> list[str]:
        optional = [self.rewards, self.terminations, self.truncations]
        named = [*self.observations.values(), *self.actions.values(), *self.infos.values()]
        return [*named, *(name for name in optional if name)]

    def episode_fields(self) -> list[str]:
        names = [*self.final_observations.values(), *self.final_infos.values()]
        names += list(self.episode_attrs.values())
        return names + (["episodes/seed", "episodes/has_seed"] if self.seeds else [])


def _strip(name: str, prefix: str) -> str:
    if name.startswith(prefix + "/"):
        return name[len(prefix) + 1 :]
    return name[len("steps/") :]


def _subtree(fields: dict[str, ArrayInfo], prefix: str, path: str) -> dict[str, str]:
    """Minari path -> store field for ``prefix`` and the fields below it."""
    found = {}
    for name in fields:
        if name == prefix or name.startswith(prefix + "/"):
            found[path + name[len(prefix) :]] = name
    return found


def _episode_attrs(eps: dict[str, ArrayInfo]) -> tuple[dict[str, str], list[str]]:
    """Small episode fields as episode attrs; the names of the large ones skipped."""
    attrs, skipped = {}, []
    reserved = ("episodes/final_observations", "episodes/final_infos")
    for name, info in eps.items():
        if name.startswith(reserved) or name in ("episodes/seed", "episodes/has_seed"):
            continue
        row_bytes = info.dtype.itemsize * int(np.prod(info.shape[1:], dtype=np.int64))
        if row_bytes > MAX_EPISODE_ATTR_BYTES:
            skipped.append(name)
        else:
            attrs["episode_fields/" + name[len("episodes/") :]] = name
    return attrs, skipped


# ---------------------------------------------------------------- episodes
def _write_main_file(
    store: TrajectoryStore, plan: ExportPlan, labels: list[LabelSet], path: Path, batch_steps: int
) -> None:
    import h5py

    starts, ends = store.starts, store.ends
    per_episode = {name: store.read_episode_field(name) for name in plan.episode_fields()}
    row_bytes = sum(
        plan.step_info[name].dtype.itemsize * int(np.prod(plan.step_info[name].shape[1:]))
        for name in plan.step_fields()
    )
    rows = rows_per_batch(row_bytes, batch_steps, DEFAULT_BATCH_BYTES)
    with (
        h5py.File(path, "w", track_order=True) as out,
        progress_bar(total=store.num_episodes, desc="minari export", unit="ep") as bar,
    ):
        for i, j in episode_batches(ends, rows):
            a, b = int(starts[i]), int(ends[j - 1])
            chunk = {name: store.read_steps(name, a, b) for name in plan.step_fields()}
            for e in range(i, j):
                lo, hi = int(starts[e]) - a, int(ends[e]) - a
                steps = {name: values[lo:hi] for name, values in chunk.items()}
                rows_e = {name: values[e] for name, values in per_episode.items()}
                group = out.create_group(f"episode_{e}")
                _write_episode(group, e, steps, rows_e, plan)
                _write_label_attrs(group, e, labels)
            bar.update(j - i)


def _with_final(values: np.ndarray, final: np.ndarray | None) -> np.ndarray:
    last = values[-1:] if final is None else np.asarray(final, dtype=values.dtype)[None]
    return np.concatenate([values, last])


def _write_episode(
    group: Any,
    index: int,
    steps: dict[str, np.ndarray],
    episode: dict[str, np.ndarray],
    plan: ExportPlan,
) -> None:
    length = len(next(iter(steps.values())))
    group.attrs["id"] = index
    group.attrs["total_steps"] = length
    if plan.seeds and bool(episode["episodes/has_seed"]):
        group.attrs["seed"] = np.uint64(episode["episodes/seed"])
    for path, name in plan.observations.items():
        final = plan.final_observations.get(path)
        group.create_dataset(path, data=_with_final(steps[name], episode.get(final)))
    for path, name in plan.actions.items():
        group.create_dataset(path, data=steps[name])
    _write_outcomes(group, steps, plan, length)
    group.create_group("infos")
    for path, name in plan.infos.items():
        final = plan.final_infos.get(path)
        group.create_dataset(path, data=_with_final(steps[name], episode.get(final)))
    for attr, name in plan.episode_attrs.items():
        group.attrs[attr] = episode[name]


def _write_outcomes(group: Any, steps: dict[str, np.ndarray], plan: ExportPlan, n: int) -> None:
    """rewards, terminations, truncations (filled in where the store has none)."""
    rewards = steps[plan.rewards] if plan.rewards else np.zeros(n, np.float64)
    terminated = steps[plan.terminations].astype(bool) if plan.terminations else np.zeros(n, bool)
    if plan.truncations:
        truncated = steps[plan.truncations].astype(bool)
    else:
        truncated = np.zeros(n, bool)
        truncated[-1] = not terminated[-1]
    group.create_dataset("rewards", data=rewards)
    group.create_dataset("terminations", data=terminated)
    group.create_dataset("truncations", data=truncated)


def _write_label_attrs(group: Any, index: int, labels: list[LabelSet]) -> None:
    for label in labels:
        top = label.topk_index[index]
        prefix = f"labels/{label.name}/"
        group.attrs[prefix + "task"] = np.asarray(label.candidates[top[0]], np.float32)
        group.attrs[prefix + "topk_index"] = np.asarray(top, np.int64)
        group.attrs[prefix + "topk_logprob"] = np.asarray(label.topk_logprob[index], np.float32)
        group.attrs[prefix + "entropy"] = np.float32(label.entropy[index])


# ---------------------------------------------------------------- metadata
def _leaf_space(info: ArrayInfo) -> dict[str, Any]:
    """A Minari-serialized space for rows of ``info`` (bounds: dtype range / +-inf)."""
    shape, dtype = list(info.shape[1:]), np.dtype(info.dtype)
    if dtype == np.bool_:
        if not shape:
            return {"type": "Discrete", "dtype": "int64", "start": 0, "n": 2}
        return {"type": "MultiBinary", "n": shape}
    if dtype.kind in "iu":
        low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
    elif dtype.kind == "f":
        low, high = -np.inf, np.inf
    else:
        raise InputError(f"dtype {dtype}: cannot be described as a Minari space")
    return {
        "type": "Box",
        "dtype": str(dtype),
        "shape": shape,
        "low": np.full(shape, low, dtype=dtype).tolist(),
        "high": np.full(shape, high, dtype=dtype).tolist(),
    }


def _space(paths: dict[str, str], info: dict[str, ArrayInfo], root: str) -> dict[str, Any]:
    """The space of the arrays at Minari ``paths`` below ``root``."""
    tree: dict[str, Any] = {}
    for path, name in paths.items():
        if path == root:
            return _leaf_space(info[name])
        node = tree
        *parents, leaf = path[len(root) + 1 :].split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = info[name]
    return _tree_space(tree)


def _tree_space(node: dict[str, Any] | ArrayInfo) -> dict[str, Any]:
    if isinstance(node, ArrayInfo):
        return _leaf_space(node)
    indices = [_TUPLE_KEY.match(key) for key in node]
    if (
        indices
        and all(indices)
        and sorted(int(m.group(1)) for m in indices) == list(range(len(node)))
    ):
        items = [node[f"_index_{i}"] for i in range(len(node))]
        return {"type": "Tuple", "subspaces": [_tree_space(item) for item in items]}
    return {"type": "Dict", "subspaces": {key: _tree_space(node[key]) for key in node}}


def _size_mb(directory: Path) -> float:
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    return round(size / 1e6, 1)


def _dataset_metadata(
    store: TrajectoryStore, plan: ExportPlan, labels: list[LabelSet], dataset_id: str
) -> dict[str, Any]:
    """The dataset's metadata.json (without ``dataset_size``); an InputError when a
    store attribute or label attribute has no JSON form."""
    try:
        metadata = _metadata_values(store, plan, labels, dataset_id)
        json.dumps(metadata)
    except InputError:
        raise
    except (UnsupportedValue, TypeError, ValueError, RecursionError) as err:
        raise InputError(
            f"{store.path}: an attribute has no JSON form ({one_line(err, 120)}); "
            "cannot write metadata.json"
        ) from None
    return metadata


def _metadata_values(
    store: TrajectoryStore, plan: ExportPlan, labels: list[LabelSet], dataset_id: str
) -> dict[str, Any]:
    attrs = store.attrs
    metadata: dict[str, Any] = {
        "dataset_id": dataset_id,
        "minari_version": MINARI_VERSION,
        "total_episodes": store.num_episodes,
        "total_steps": store.num_steps,
        "data_format": "hdf5",
        "jpeg_encoding": False,
        "observation_space": json.dumps(_space(plan.observations, plan.step_info, "observations")),
        "action_space": json.dumps(_space(plan.actions, plan.step_info, "actions")),
        "description": f"Exported by hipi-offline from {_name(store.path)}",
        "final_observation_repeated": not plan.final_observations,
        "final_info_repeated": sorted(set(plan.infos) - set(plan.final_infos)),
        "rewards_filled_with_zeros": plan.rewards is None,
        "terminations_filled": plan.terminations is None,
        "truncations_filled": plan.truncations is None,
        "skipped_episode_fields": plan.skipped_episode_fields,
        "hipi_offline": {
            "store": store.path if is_url(store.path) else str(Path(store.path).resolve()),
            "env": jsonable(attrs.get("env", "")),
            "source_format": jsonable(attrs.get("source_format")),
            "source": jsonable(attrs.get("source")),
        },
        "hipi_labels": {label.name: _label_metadata(label) for label in labels},
    }
    if isinstance(attrs.get("env_spec"), str):
        metadata["env_spec"] = attrs["env_spec"]
    return metadata


def _label_metadata(label: LabelSet) -> dict[str, Any]:
    try:
        attrs = jsonable(dict(label.attrs))
    except (UnsupportedValue, RecursionError) as err:
        raise _damaged(label.name, f"an attribute is {err}") from None
    return {
        "candidates": np.asarray(label.candidates, np.float32).tolist(),
        "k": label.k,
        "attrs": attrs,
        "episode_attrs": [f"labels/{label.name}/{key}" for key in _LABEL_ATTRS],
    }


_LABEL_ATTRS = ("task", "topk_index", "topk_logprob", "entropy")
