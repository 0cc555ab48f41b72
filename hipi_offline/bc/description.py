"""What a train-bc run is: the store, the label set, the network, the statistics and
the config it was trained with (``config.json``, and every checkpoint's metadata).

:class:`RunDescription` is the typed form of that JSON object; ``to_json`` writes the
object of format :data:`RUN_FORMAT` exactly as earlier versions did, and
``from_json`` reads any of them back, refusing a damaged or crafted one (wrong
types, unknown fields) with one :class:`~hipi_offline.errors.InputError` that names
the field.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.bc.config import ACTIVATIONS, HEADS, MAX_LAYERS, BCConfig
from hipi_offline.bc.data import Normalization
from hipi_offline.errors import InputError, one_line
from hipi_offline.store.label_attrs import DISCRETE, label_task_names
from hipi_offline.store.labels import LabelSet
from hipi_offline.store.location import is_url
from hipi_offline.store.store import TrajectoryStore

RUN_FORMAT = "hipi_offline.bc.run/1"
MAX_DIM = 2**40
"""Sizes in a run description (dimensions, layer widths) stay below this."""


def _describe(value: Any) -> str:
    return one_line(repr(value), 60)


def _damaged(where: str, name: str, want: str, value: Any) -> InputError:
    return InputError(
        f"{where}: run description field {name} must be {want}, got {_describe(value)}; "
        "it is damaged"
    )


# ---------------------------------------------------------------- checks
def _int_field(value: Any, name: str, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < MAX_DIM:
        raise _damaged(where, name, f"an integer from {low} to {MAX_DIM - 1}", value)
    return value


def _optional(run: Mapping[str, Any], key: str, kind: type, where: str) -> None:
    value = run.get(key)
    if value is not None and not isinstance(value, kind):
        raise InputError(
            f"{where}: run description field {key} must be a {kind.__name__} or null, "
            f"got {_describe(value)}; it is damaged"
        )


def _check_labels_entry(labels: Any, where: str) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        raise InputError(f"{where}: run description field labels is not an object; it is damaged")
    for key in ("name", "family", "method"):
        _optional(labels, key, str, f"{where} (labels)")
    names = labels.get("task_names")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) for n in names)
    ):
        raise InputError(
            f"{where}: run description field labels.task_names must be a list of strings; "
            "it is damaged"
        )


def _check_frame(frame: Any, spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A run description's ``network.task_frame``: a rotation index whose 9 entries
    lie in the observation and two distinct task entries."""
    rotation = frame.get("rotation") if isinstance(frame, dict) else None
    direction = frame.get("direction") if isinstance(frame, dict) else None
    ints = [rotation, *(direction if isinstance(direction, list) else [])]
    ok = (
        isinstance(direction, list)
        and len(direction) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in ints)
        and 0 <= rotation <= spec["obs_dim"] - 9
        and all(0 <= d < spec["task_dim"] for d in direction)
        and direction[0] != direction[1]
    )
    if not ok:
        raise InputError(
            f"{where}: run description field network.task_frame must be a rotation index "
            f"within the {spec['obs_dim']} observation entries and two distinct task entries "
            f"below {spec['task_dim']}, got {_describe(frame)}; it is damaged"
        )
    return {"rotation": rotation, "direction": list(direction)}


def check_run(run: Any, where: str) -> dict[str, Any]:
    """The network arguments of a run description (config.json's content or a
    checkpoint's metadata), after checking every field a policy reads; a damaged or
    crafted description is one InputError naming ``where`` and the field."""
    if not isinstance(run, dict):
        raise InputError(f"{where}: the run description is not a JSON object; it is damaged")
    net = run.get("network")
    if not isinstance(net, dict):
        raise InputError(f"{where}: the run description lacks its network object; it is damaged")
    spec: dict[str, Any] = {
        key: _int_field(net.get(key), f"network.{key}", where, low)
        for key, low in (("obs_dim", 1), ("act_dim", 1), ("task_dim", 0), ("task_embedding", 0))
    }
    hidden = net.get("hidden")
    if not isinstance(hidden, list) or not 1 <= len(hidden) <= MAX_LAYERS:
        raise InputError(
            f"{where}: run description field network.hidden must list 1 to {MAX_LAYERS} layer "
            f"sizes, got {_describe(hidden)}; it is damaged"
        )
    spec["hidden"] = tuple(_int_field(h, "network.hidden", where, 1) for h in hidden)
    for key, allowed in (("activation", ACTIVATIONS), ("head", HEADS)):
        if net.get(key) not in allowed:
            raise _damaged(where, f"network.{key}", f"one of {', '.join(allowed)}", net.get(key))
        spec[key] = net[key]
    dims = run.get("dims")
    shape = dims.get("obs_shape") if isinstance(dims, dict) else None
    if not (
        isinstance(shape, list)
        and len(shape) <= 8
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < MAX_DIM for d in shape)
        and math.prod(shape) == spec["obs_dim"]
    ):
        raise _damaged(where, "dims.obs_shape", f"a shape of {spec['obs_dim']} values", shape)
    if net.get("task_frame") is not None:
        spec["task_frame"] = _check_frame(net["task_frame"], spec, where)
    _optional(run, "store", dict, where)
    _optional(run.get("store") or {}, "env", str, f"{where} (store)")
    _check_labels_entry(run.get("labels"), where)
    return spec


def _typed(
    data: Mapping[str, Any], key: str, kinds: tuple[type, ...], where: str, name: str
) -> Any:
    """``data[key]`` when it is one of ``kinds`` (bool is never an int here)."""
    value = data[key]
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        want = " or ".join(_JSON_NAMES[k] for k in kinds)
        raise _damaged(where, f"{name}{key}", want, value)
    return value


def _known(cls: type, data: Mapping[str, Any], where: str, name: str) -> None:
    """Refuse fields of ``data`` that ``cls`` does not have, naming the first."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise InputError(
            f"{where}: run description has unknown field {name}{one_line(unknown[0], 40)}; "
            "it is damaged or from a newer version"
        )


def _fill(
    cls: type, data: Mapping[str, Any], where: str, name: str, kinds: Mapping[str, tuple]
) -> dict[str, Any]:
    """The fields of ``cls`` present in ``data``, each checked against its ``kinds``."""
    _known(cls, data, where, name)
    return {key: _typed(data, key, want, where, name) for key, want in kinds.items() if key in data}


_JSON_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "an object",
    type(None): "null",
}
_STR = (str, type(None))
_INT = (int, type(None))


# ---------------------------------------------------------------- the records
@dataclass(frozen=True)
class StoreInfo:
    """The store a run was trained on."""

    path: str = ""
    env: str = ""
    """The environment the store was collected in ("" when it does not say)."""
    num_episodes: int = 0
    num_steps: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> StoreInfo:
        kinds = {"path": (str,), "env": (str,), "num_episodes": (int,), "num_steps": (int,)}
        return cls(**_fill(cls, data, where, "store.", kinds))


@dataclass(frozen=True)
class LabelsInfo:
    """The label set a task-conditioned run drew its tasks from."""

    name: str | None = None
    method: str | None = None
    family: str | None = None
    task_names: tuple[str, ...] = ()
    """Discrete families: the name of each one-hot task."""
    spec: str | None = None
    """The task spec's YAML text."""
    spec_origin: str | None = None
    num_candidates: int | None = None
    k: int | None = None
    created: str | None = None
    candidate_stats: Mapping[str, list[float]] | None = None
    """mean, std, min and max of the candidate tasks."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> LabelsInfo:
        kinds = {
            "name": _STR,
            "method": _STR,
            "family": _STR,
            "task_names": (list, type(None)),
            "spec": _STR,
            "spec_origin": _STR,
            "num_candidates": _INT,
            "k": _INT,
            "created": _STR,
            "candidate_stats": (dict, type(None)),
        }
        values = _fill(cls, data, where, "labels.", kinds)
        values["task_names"] = tuple(values.get("task_names") or ())
        return cls(**values)

    @property
    def is_discrete(self) -> bool:
        """Tasks of a discrete family: one-hot rows, also given by index or name."""
        return self.family == DISCRETE

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["task_names"] = list(self.task_names)
        return data


@dataclass(frozen=True)
class Dims:
    """Sizes of the observation, action and task inputs."""

    obs: int
    obs_shape: tuple[int, ...]
    """The observation's shape in the store (flattened for the network)."""
    act: int
    task: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> Dims:
        kinds = {"obs": (int,), "obs_shape": (list,), "act": (int,), "task": (int,)}
        values = _fill(cls, data, where, "dims.", kinds)
        missing = [f.name for f in fields(cls) if f.name not in values]
        if missing:
            raise InputError(
                f"{where}: run description lacks field dims.{missing[0]}; it is damaged"
            )
        return cls(**{**values, "obs_shape": tuple(values["obs_shape"])})

    def to_json(self) -> dict[str, Any]:
        return {
            "obs": self.obs,
            "obs_shape": list(self.obs_shape),
            "act": self.act,
            "task": self.task,
        }


@dataclass(frozen=True)
class RunDescription:
    """What a train-bc run is (config.json's content, typed)."""

    network: Mapping[str, Any]
    """The network's constructor arguments as written (see :meth:`network_args`)."""
    dims: Dims
    format: str = RUN_FORMAT
    config: Mapping[str, Any] | None = None
    """The :class:`BCConfig` as JSON (see :meth:`bc_config`)."""
    store: StoreInfo | None = None
    labels: LabelsInfo | None = None
    """None for a task-agnostic run."""
    normalization: Mapping[str, list[float]] | None = None
    action_bounds: Mapping[str, list[float]] | None = None
    fingerprint: Mapping[str, Any] | None = None
    """What identifies the training data (compared on resume)."""
    tensorboard: bool = False
    created: str | None = None
    versions: Mapping[str, str] | None = None

    def __repr__(self) -> str:
        labels = "task-agnostic" if self.labels is None else f"labels={self.labels.name!r}"
        return (
            f"RunDescription(env={self.env!r}, {labels}, head={self.network.get('head')!r}, "
            f"obs={self.dims.obs_shape}, act={self.dims.act}, task={self.dims.task})"
        )

    @property
    def env(self) -> str:
        """The environment of the training data ("" when unknown)."""
        return "" if self.store is None else self.store.env

    def network_args(self) -> dict[str, Any]:
        """The checked keyword arguments of :class:`~hipi_offline.bc.policy.BCNetwork`."""
        return check_run(self.to_json(), "run description")

    def bc_config(self) -> BCConfig:
        """The config the run was trained with."""
        return BCConfig.from_json(dict(self.config or {}))

    def to_json(self) -> dict[str, Any]:
        """The JSON object of config.json (keys in the order earlier versions wrote)."""
        return {
            "format": self.format,
            "config": None if self.config is None else dict(self.config),
            "store": None if self.store is None else dict(self.store.__dict__),
            "labels": None if self.labels is None else self.labels.to_json(),
            "dims": self.dims.to_json(),
            "network": dict(self.network),
            "normalization": None if self.normalization is None else dict(self.normalization),
            "action_bounds": None if self.action_bounds is None else dict(self.action_bounds),
            "fingerprint": None if self.fingerprint is None else dict(self.fingerprint),
            "tensorboard": self.tensorboard,
            "created": self.created,
            "versions": None if self.versions is None else dict(self.versions),
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> RunDescription:
        """The description in ``data`` (a parsed config.json or checkpoint metadata), or
        one InputError naming ``where`` and the damaged field."""
        check_run(data, where)
        kinds = {
            "network": (dict,),
            "dims": (dict,),
            "format": (str,),
            "config": (dict, type(None)),
            "store": (dict, type(None)),
            "labels": (dict, type(None)),
            "normalization": (dict, type(None)),
            "action_bounds": (dict, type(None)),
            "fingerprint": (dict, type(None)),
            "tensorboard": (bool,),
            "created": _STR,
            "versions": (dict, type(None)),
        }
        values = _fill(cls, data, where, "", kinds)
        values["dims"] = Dims.from_json(values["dims"], where)
        if values.get("store") is not None:
            values["store"] = StoreInfo.from_json(values["store"], where)
        if values.get("labels") is not None:
            values["labels"] = LabelsInfo.from_json(values["labels"], where)
        return cls(**values)


# ---------------------------------------------------------------- a new run's description
def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def data_fingerprint(store: TrajectoryStore, labels: LabelSet | None) -> dict[str, Any]:
    """What identifies the training data (compared on resume)."""
    found: dict[str, Any] = {
        "env": str(store.attrs.get("env", "")),
        "num_episodes": store.num_episodes,
        "num_steps": store.num_steps,
        "ends": _digest(store.ends),
    }
    if labels is not None:
        found["labels"] = _digest(labels.candidates, labels.topk_index, labels.topk_logprob)
    return found


def labels_info(labels: LabelSet, task_mean: np.ndarray, task_std: np.ndarray) -> LabelsInfo:
    """The description of the label set a run trains on."""
    attrs = labels.attrs
    cand = np.asarray(labels.candidates, np.float64)
    return LabelsInfo(
        name=labels.name,
        method=attrs.get("method"),
        family=attrs.get("family"),
        task_names=tuple(label_task_names(attrs)),
        spec=attrs.get("spec"),
        spec_origin=attrs.get("spec_origin"),
        num_candidates=labels.num_candidates,
        k=labels.k,
        created=attrs.get("created"),
        candidate_stats={
            "mean": task_mean.tolist(),
            "std": task_std.tolist(),
            "min": cand.min(axis=0).tolist(),
            "max": cand.max(axis=0).tolist(),
        },
    )


@dataclass(frozen=True)
class NewRun:
    """What a new run's description is made of (all known before the first step)."""

    store_path: Path
    store: TrajectoryStore
    config: BCConfig
    labels: LabelSet | None
    norm: Normalization
    obs_shape: tuple[int, ...]
    fingerprint: dict[str, Any]
    network: dict[str, Any]
    tensorboard: bool


def describe_new_run(new: NewRun) -> RunDescription:
    """The description of a run that starts now."""
    from importlib import metadata

    import torch

    try:
        version = metadata.version("hipi-offline")
    except metadata.PackageNotFoundError:
        version = "unknown"
    norm = new.norm
    return RunDescription(
        config=new.config.to_json(),
        store=StoreInfo(
            path=str(new.store_path if is_url(new.store_path) else new.store_path.resolve()),
            env=str(new.store.attrs.get("env", "")),
            num_episodes=new.store.num_episodes,
            num_steps=new.store.num_steps,
        ),
        labels=None
        if new.labels is None
        else labels_info(new.labels, norm.task_mean, norm.task_std),
        dims=Dims(
            obs=len(norm.obs_mean),
            obs_shape=tuple(new.obs_shape),
            act=len(norm.act_mean),
            task=len(norm.task_mean),
        ),
        network=dict(new.network),
        normalization=norm.to_json(),
        action_bounds={"low": norm.act_low.tolist(), "high": norm.act_high.tolist()},
        fingerprint=new.fingerprint,
        tensorboard=new.tensorboard,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        versions={"hipi_offline": version, "torch": torch.__version__},
    )
