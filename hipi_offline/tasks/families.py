"""Reward families: each is a small frozen record whose ``reward`` is one
vectorized torch function ``(fields, tasks) -> rewards [C, K]``, registered in
:data:`FAMILIES` by the one function that builds it from its spec keys.

``fields`` maps the store paths the family reads (``steps/infos/speed``, ...)
to float64 tensors of C rows; ``tasks`` is [K, task_dim]. The same function is
used by relabeling, data collection and evaluation, so a reward is written once.
Families expose the pieces that the relabeling engine exploits for speed
(linear features, the scalar feature of a target reward); the engine's fast
paths are tested against ``reward`` itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hipi_offline.errors import InputError
from hipi_offline.store.backends import ArrayInfo
from hipi_offline.tasks.registry import FAMILIES, RewardFamily

ACTIONS = "steps/actions"
VELOCITY_X, VELOCITY_Y = "velocity_x", "velocity_y"
"""Names of the step fields holding world-frame velocity (a linear task's direction)."""


def _as_matrix(x: Tensor) -> Tensor:
    """[C] -> [C, 1]; [C, d1, d2, ...] -> [C, d1*d2*...]."""
    return x.reshape(x.shape[0], -1)


def field_columns(store_fields: Mapping[str, ArrayInfo], name: str, where: str) -> int:
    """Number of columns of a step field, or an InputError if the store lacks it."""
    if name not in store_fields:
        known = ", ".join(sorted(store_fields)) or "none"
        raise InputError(f"{where}: field {name} is not in the store (step fields: {known})")
    info = store_fields[name]
    if info.dtype.kind not in "fiub":
        raise InputError(f"{where}: field {name} has non-numeric dtype {info.dtype}")
    cols = 1
    for size in info.shape[1:]:
        cols *= size
    return cols


def _check_dims(dims: tuple[int, ...] | None, cols: int, name: str, where: str) -> int:
    if dims is None:
        return cols
    bad = [d for d in dims if not 0 <= d < cols]
    if bad:
        raise InputError(f"{where}.dims: index {bad[0]} out of range for {name} ({cols} columns)")
    return len(dims)


def distance(x: Tensor, goals: Tensor) -> Tensor:
    """Exact Euclidean distances [C, K] between rows of x [C, D] and goals [K, D]."""
    if x.shape[1] == 1:
        return (x - goals.T).abs()
    return torch.cdist(x, goals, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")


def _select(x: Tensor, dims: tuple[int, ...] | None) -> Tensor:
    x = _as_matrix(x)
    return x if dims is None else x[:, list(dims)]


@dataclass(frozen=True)
class LinearFamily:
    """r_psi(s, a) = psi . phi(s, a), phi = the listed fields' columns concatenated."""

    features: tuple[str, ...]
    name: str = "linear"

    @property
    def fields(self) -> tuple[str, ...]:
        return self.features

    def columns(self, store_fields: Mapping[str, ArrayInfo]) -> int:
        return sum(field_columns(store_fields, f, "features") for f in self.features)

    def phi(self, fields: Mapping[str, Tensor]) -> Tensor:
        """Feature matrix [C, D]."""
        return torch.cat([_as_matrix(fields[f]) for f in self.features], dim=1)

    def reward(self, fields: Mapping[str, Tensor], tasks: Tensor) -> Tensor:
        return self.phi(fields) @ tasks.T

    @property
    def direction(self) -> tuple[int, int] | None:
        """The task entries weighting the features ``.../velocity_x`` and
        ``.../velocity_y`` (world-frame velocity, as environments record it), or None
        without both. Entry = the feature's position in ``features``: the features
        up to them are scalar step fields (as every ``steps/infos/`` velocity is)."""
        leaves = [f.rsplit("/", 1)[-1] for f in self.features]
        if VELOCITY_X not in leaves or VELOCITY_Y not in leaves:
            return None
        return leaves.index(VELOCITY_X), leaves.index(VELOCITY_Y)


@FAMILIES.add("linear", keys={"features"})
def parse_linear(body: Mapping[str, Any]) -> LinearFamily:
    """``features``: one step field or a list of them."""
    features = body["features"]
    if isinstance(features, str):
        features = [features]
    if not isinstance(features, list) or not features:
        raise InputError("features: expected a non-empty list of step fields")
    return LinearFamily(tuple(_field_name(f, "features") for f in features))


@dataclass(frozen=True)
class TargetFamily:
    """r_psi = -||f(s) - psi|| - ctrl_cost * ||a||^2 (|.| for a scalar feature)."""

    feature: str
    dims: tuple[int, ...] | None = None
    ctrl_cost: float = 0.0
    name: str = "target"

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.feature, ACTIONS) if self.ctrl_cost else (self.feature,)

    def columns(self, store_fields: Mapping[str, ArrayInfo]) -> int:
        cols = field_columns(store_fields, self.feature, "feature")
        if self.ctrl_cost:
            field_columns(store_fields, ACTIONS, "ctrl_cost")
        return _check_dims(self.dims, cols, self.feature, "feature")

    def value(self, fields: Mapping[str, Tensor]) -> Tensor:
        """The feature f(s), [C, D]."""
        return _select(fields[self.feature], self.dims)

    def task_free(self, fields: Mapping[str, Tensor]) -> Tensor:
        """The part of the reward that no task changes, [C]: -ctrl_cost * ||a||^2."""
        if not self.ctrl_cost:
            return fields[self.feature].new_zeros(fields[self.feature].shape[0])
        return -self.ctrl_cost * _as_matrix(fields[ACTIONS]).square().sum(dim=1)

    def reward(self, fields: Mapping[str, Tensor], tasks: Tensor) -> Tensor:
        return -distance(self.value(fields), tasks) + self.task_free(fields)[:, None]


@FAMILIES.add("target", keys={"feature"}, optional={"dims", "ctrl_cost"})
def parse_target(body: Mapping[str, Any]) -> TargetFamily:
    """``feature``, optional ``dims`` and ``ctrl_cost``."""
    return TargetFamily(
        feature=_field_name(body["feature"], "feature"),
        dims=_dims(body.get("dims"), "dims"),
        ctrl_cost=_number(body.get("ctrl_cost", 0.0), "ctrl_cost"),
    )


@dataclass(frozen=True)
class GoalFamily:
    """r_psi = -||x[dims] - g||, or 1[||x[dims] - g|| < m] - 1 with a margin m.

    ``margin`` is None (distance reward), a number, or ``"sampled"``: then the
    task is (g, m) and the margin is the task's last entry.
    """

    field: str
    dims: tuple[int, ...] | None = None
    margin: float | str | None = None
    name: str = "goal"

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field,)

    def columns(self, store_fields: Mapping[str, ArrayInfo]) -> int:
        cols = field_columns(store_fields, self.field, "field")
        goal_dim = _check_dims(self.dims, cols, self.field, "field")
        return goal_dim + (1 if self.margin == "sampled" else 0)

    def reward(self, fields: Mapping[str, Tensor], tasks: Tensor) -> Tensor:
        x = _select(fields[self.field], self.dims)
        goals = tasks[:, : x.shape[1]]
        dist = distance(x, goals)
        if self.margin is None:
            return -dist
        margin = tasks[:, -1] if self.margin == "sampled" else float(self.margin)
        return (dist < margin).to(dist.dtype) - 1.0


@FAMILIES.add("goal", keys={"field"}, optional={"dims", "margin"})
def parse_goal(body: Mapping[str, Any]) -> GoalFamily:
    """``field``, optional ``dims`` and ``margin`` (a number or ``sampled``)."""
    margin = body.get("margin")
    if margin is not None and margin != "sampled":
        margin = _number(margin, "margin", positive=True)
    return GoalFamily(
        field=_field_name(body["field"], "field"),
        dims=_dims(body.get("dims"), "dims"),
        margin=margin,
    )


@dataclass(frozen=True)
class Predicate:
    """Success indicator of one discrete task: ``above < field[column] < below``."""

    field: str
    column: int | None = None
    above: float | None = None
    below: float | None = None
    reward: float = 1.0

    def indicator(self, fields: Mapping[str, Tensor]) -> Tensor:
        x = _as_matrix(fields[self.field])
        x = x[:, 0] if self.column is None else x[:, self.column]
        hit = torch.ones_like(x, dtype=torch.bool)
        if self.above is not None:
            hit &= x > self.above
        if self.below is not None:
            hit &= x < self.below
        return hit.to(x.dtype) * self.reward


@dataclass(frozen=True)
class DiscreteFamily:
    """A finite set of named tasks with success predicates; tasks are one-hot rows
    (mixtures of tasks give mixed rewards)."""

    task_names: tuple[str, ...]
    predicates: tuple[Predicate, ...]
    name: str = "discrete"

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.field for p in self.predicates))

    def columns(self, store_fields: Mapping[str, ArrayInfo]) -> int:
        for task, p in zip(self.task_names, self.predicates, strict=True):
            cols = field_columns(store_fields, p.field, f"tasks.{task}")
            if p.column is None and cols != 1:
                raise InputError(f"tasks.{task}: field {p.field} has {cols} columns; give `column`")
            if p.column is not None and not 0 <= p.column < cols:
                raise InputError(f"tasks.{task}.column: {p.column} out of range ({cols} columns)")
        return len(self.task_names)

    def indicators(self, fields: Mapping[str, Tensor]) -> Tensor:
        """Per-task rewards [C, K_tasks]."""
        return torch.stack([p.indicator(fields) for p in self.predicates], dim=1)

    def reward(self, fields: Mapping[str, Tensor], tasks: Tensor) -> Tensor:
        return self.indicators(fields) @ tasks.T


@FAMILIES.add("discrete", keys={"tasks"})
def parse_discrete(body: Mapping[str, Any]) -> DiscreteFamily:
    """``tasks``: task name -> success predicate."""
    tasks = body["tasks"]
    if not isinstance(tasks, Mapping) or not tasks:
        raise InputError("tasks: expected a non-empty mapping of task name -> predicate")
    names = tuple(str(n) for n in tasks)
    return DiscreteFamily(names, tuple(_predicate(n, tasks[n]) for n in names))


@dataclass(frozen=True)
class BiasedFamily:
    """Another family's reward plus a constant ``value`` on every rewarded step, for
    the tasks inside the closed box ``low <= psi <= high`` (the spec key ``bias``;
    the paper's Fig. 7b corruption). It keeps the wrapped family's name, fields and
    columns, so stores, label sets and policies treat it as that family."""

    inner: RewardFamily
    value: float
    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def fields(self) -> tuple[str, ...]:
        return self.inner.fields

    def columns(self, store_fields: Mapping[str, ArrayInfo]) -> int:
        return self.inner.columns(store_fields)

    def in_box(self, tasks: Tensor) -> Tensor:
        """Boolean [K]: which tasks get the bias."""
        low = torch.tensor(self.low, dtype=tasks.dtype, device=tasks.device)
        high = torch.tensor(self.high, dtype=tasks.dtype, device=tasks.device)
        return ((tasks >= low) & (tasks <= high)).all(dim=1)

    def reward(self, fields: Mapping[str, Tensor], tasks: Tensor) -> Tensor:
        base = self.inner.reward(fields, tasks)
        return base + self.value * self.in_box(tasks).to(base.dtype)[None, :]


def base_family(family: RewardFamily) -> RewardFamily:
    """The family under any ``bias`` wrapper."""
    while isinstance(family, BiasedFamily):
        family = family.inner
    return family


def named_tasks(family: RewardFamily) -> tuple[str, ...] | None:
    """The task names of a family whose tasks are a finite set of named one-hot rows
    (``discrete``, under any ``bias``); None for families of task vectors."""
    base = base_family(family)
    return base.task_names if isinstance(base, DiscreteFamily) else None


def task_direction(family: RewardFamily) -> tuple[int, int] | None:
    """The task entries weighting world x and y velocity (a commanded direction of
    travel), for a ``linear`` family (under any ``bias``) with both velocity
    features; None for every other family."""
    base = base_family(family)
    return base.direction if isinstance(base, LinearFamily) else None


def parse_bias(value: Any, dim: int) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    """``{value: b, low: [..], high: [..]}`` -> (b, low, high); low/high default to
    the whole task space and take ``dim`` numbers each (a bare number for dim 1)."""
    if not isinstance(value, Mapping):
        raise InputError(f"bias: expected a mapping {{value, low, high}}, got {value!r}")
    unknown = sorted(set(value) - {"value", "low", "high"})
    if unknown:
        raise InputError(f"bias: unknown key {unknown[0]!r} (allowed: high, low, value)")
    if "value" not in value:
        raise InputError("bias: missing key 'value'")
    b = _number(value["value"], "bias.value")
    bounds = []
    for key, default in (("low", float("-inf")), ("high", float("inf"))):
        raw = value.get(key)
        if raw is None:
            bounds.append((default,) * dim)
            continue
        items = raw if isinstance(raw, list) else [raw]
        if len(items) != dim:
            raise InputError(f"bias.{key}: expected {dim} numbers (task dimension), got {raw!r}")
        bounds.append(tuple(_number(x, f"bias.{key}") for x in items))
    low, high = bounds
    bad = [j for j in range(dim) if low[j] > high[j]]
    if bad:
        j = bad[0]
        raise InputError(f"bias.low: entry {j} ({low[j]}) exceeds bias.high ({high[j]})")
    return b, low, high


RewardFn = Callable[[Mapping[str, Tensor], Tensor | None, Tensor], Tensor]


@dataclass(frozen=True)
class CustomFamily:
    """A user's vectorized torch reward ``fn(fields, actions, tasks) -> [C, K]``,
    imported from the ``module:function`` that the spec names (that code runs)."""

    function: str
    inputs: tuple[str, ...]
    fn: RewardFn
    name: str = "custom"

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.inputs, ACTIONS)))

    def columns(self, store_fields: Mapping[str, ArrayInfo]) -> int:
        for name in self.fields:
            field_columns(store_fields, name, "fields")
        return -1  # the prior decides

    def reward(self, fields: Mapping[str, Tensor], tasks: Tensor) -> Tensor:
        out = self.fn(fields, fields.get(ACTIONS), tasks)
        rows = next(iter(fields.values())).shape[0]
        if not isinstance(out, Tensor) or tuple(out.shape) != (rows, tasks.shape[0]):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise InputError(
                f"function: {self.function} returned {shape}, expected a tensor of shape "
                f"({rows}, {tasks.shape[0]})"
            )
        out = out.to(tasks.dtype)
        if not bool(torch.isfinite(out).all()):  # one reduction over the user's output
            raise NonFiniteReward(self.function, out)
        return out


@FAMILIES.add("custom", keys={"function", "fields"})
def parse_custom(body: Mapping[str, Any]) -> CustomFamily:
    """``function`` (``module:function``, imported now) and its input ``fields``."""
    inputs = body["fields"]
    if not isinstance(inputs, list):
        raise InputError("fields: expected a list of step fields")
    function = body["function"]
    if not isinstance(function, str):
        raise InputError(f"function: expected 'module:function', got {function!r}")
    return CustomFamily(
        function, tuple(_field_name(f, "fields") for f in inputs), load_function(function)
    )


class NonFiniteReward(InputError):
    """A custom reward function returned NaN or inf; ``row`` (of the rows passed in)
    and ``task`` (column) locate the first such value."""

    def __init__(self, function: str, out: Tensor) -> None:
        bad = (~torch.isfinite(out)).flatten().nonzero()[0].item()
        self.function, self.row, self.task = function, bad // out.shape[1], bad % out.shape[1]
        self.kind = "NaN" if bool(out.flatten()[bad].isnan()) else "inf"
        super().__init__(
            f"function: {function} returned {self.kind} (row {self.row}, task {self.task})"
        )

    def at_episode(self, episode: int, first_task: int = 0) -> InputError:
        """The same error, naming the episode (which the reward function does not see)
        and the candidate (the tasks passed in start at candidate ``first_task``)."""
        return InputError(
            f"function: {self.function} returned {self.kind} for episode {episode}, "
            f"candidate {first_task + self.task}; the reward must be finite"
        )


def load_function(target: str) -> RewardFn:
    """Import exactly the ``module:function`` named by a custom spec."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"function: expected 'module:function', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(f"function: cannot import module {module_name!r} ({err})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise InputError(f"function: {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise InputError(f"function: {target!r} is not callable")
    return fn  # type: ignore[return-value]


def _field_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith(("steps/",)):
        raise InputError(
            f"{where}: expected a step field path like steps/infos/speed, got {value!r}"
        )
    return value


def _dims(value: Any, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or any(isinstance(d, bool) or not isinstance(d, int) for d in value)
    ):
        raise InputError(f"{where}: expected a list of column indices, got {value!r}")
    return tuple(value)


def _number(value: Any, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: expected a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:
        raise InputError(f"{where}: too large for float64") from None
    if value != value or value in (float("inf"), float("-inf")) or (positive and value <= 0):
        raise InputError(f"{where}: expected a {'positive ' if positive else ''}finite number")
    return value


def _predicate(name: str, body: Any) -> Predicate:
    where = f"tasks.{name}"
    if not isinstance(body, Mapping):
        raise InputError(f"{where}: expected a mapping with field and above/below")
    unknown = sorted(set(body) - {"field", "column", "above", "below", "reward"})
    if unknown:
        allowed = "field, column, above, below, reward"
        raise InputError(f"{where}: unknown key {unknown[0]!r} (allowed: {allowed})")
    if "field" not in body:
        raise InputError(f"{where}: missing key 'field'")
    if "above" not in body and "below" not in body:
        raise InputError(f"{where}: give `above`, `below` or both")
    column = body.get("column")
    if column is not None and (isinstance(column, bool) or not isinstance(column, int)):
        raise InputError(f"{where}.column: expected an integer, got {column!r}")
    above = None if body.get("above") is None else _number(body["above"], f"{where}.above")
    below = None if body.get("below") is None else _number(body["below"], f"{where}.below")
    if above is not None and below is not None and above >= below:
        raise InputError(f"{where}: above ({above}) must be less than below ({below})")
    return Predicate(
        field=_field_name(body["field"], f"{where}.field"),
        column=column,
        above=above,
        below=below,
        reward=_number(body.get("reward", 1.0), f"{where}.reward"),
    )
