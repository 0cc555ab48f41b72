"""Priors p(psi) over task vectors: seeded sampling and log-densities.

YAML forms (exactly one key)::

    {uniform: {low: [..], high: [..]}}
    {normal: {mean: [..], std: [..]}}
    {sphere: {dim: 3, radius: 1.0}}
    {categorical: {tasks: [[..], ..], probs: [..]}}   # probs optional (uniform)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hipi_offline.errors import InputError

FLOAT32_MAX = float(np.finfo(np.float32).max)  # candidates are stored as float32
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32
NORMAL_REACH = 8.0  # normal draws are checked to stay in float32 up to this many std


class Prior(Protocol):
    dim: int

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray: ...
    def log_prob(self, tasks: np.ndarray, where: str) -> np.ndarray: ...


def _vector(value: Any, where: str, length: int | None = None) -> np.ndarray:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: expected a non-empty list of numbers, got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise InputError(f"{where}: expected numbers, got {item!r}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except OverflowError:
        raise InputError(f"{where}: a number is too large for float64") from None
    if not np.isfinite(array).all():
        raise InputError(f"{where}: must be finite, got {value!r}")
    check_float32(array, where)
    if length is not None and len(array) != length:
        raise InputError(f"{where}: expected {length} numbers, got {len(array)}")
    return array


def check_float32(array: np.ndarray, where: str) -> None:
    """InputError unless every entry fits float32, the dtype candidates are stored in."""
    big = np.abs(array) > FLOAT32_MAX
    if big.any():
        value = float(array.reshape(-1)[int(np.argmax(big.reshape(-1)))])
        raise InputError(
            f"{where}: {value:.6g} is outside the float32 range (|x| <= {FLOAT32_MAX:.6g}) "
            "in which candidates are stored"
        )


def _keys(value: Any, where: str, required: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - required - optional)
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise InputError(f"{where}: unknown key {unknown[0]!r} (allowed: {allowed})")
    missing = sorted(required - set(value))
    if missing:
        raise InputError(f"{where}: missing key {missing[0]!r}")
    return dict(value)


@dataclass(frozen=True)
class UniformPrior:
    """Independent uniform on the box [low, high]."""

    low: np.ndarray
    high: np.ndarray

    @property
    def dim(self) -> int:
        return len(self.low)

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.low, self.high, size=(count, self.dim))

    def log_prob(self, tasks: np.ndarray, where: str) -> np.ndarray:
        inside = np.all((tasks >= self.low) & (tasks <= self.high), axis=1)
        if not inside.all():
            j = int(np.argmin(inside))
            raise InputError(f"{where}[{j}]: {tasks[j].tolist()} lies outside the uniform prior")
        return np.full(len(tasks), -float(np.sum(np.log(self.high - self.low))))


@dataclass(frozen=True)
class NormalPrior:
    """Independent normal with the given mean and standard deviation."""

    mean: np.ndarray
    std: np.ndarray

    @property
    def dim(self) -> int:
        return len(self.mean)

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(self.mean, self.std, size=(count, self.dim))

    def log_prob(self, tasks: np.ndarray, where: str) -> np.ndarray:
        z = (tasks - self.mean) / self.std
        return np.sum(-0.5 * z**2 - np.log(self.std) - 0.5 * math.log(2 * math.pi), axis=1)


@dataclass(frozen=True)
class SpherePrior:
    """Uniform on the sphere of the given radius in R^dim."""

    dim: int
    radius: float = 1.0

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        x = rng.standard_normal((count, self.dim))
        return self.radius * x / np.linalg.norm(x, axis=1, keepdims=True)

    def log_prob(self, tasks: np.ndarray, where: str) -> np.ndarray:
        norms = np.linalg.norm(tasks, axis=1)
        off = np.abs(norms - self.radius) > 1e-4 * self.radius
        if off.any():
            j = int(np.argmax(off))
            raise InputError(f"{where}[{j}]: norm {norms[j]:.6g} is not the sphere's radius")
        d = self.dim
        log_area = math.log(2) + (d / 2) * math.log(math.pi) - math.lgamma(d / 2)
        return np.full(len(tasks), -(log_area + (d - 1) * math.log(self.radius)))


@dataclass(frozen=True)
class CategoricalPrior:
    """A finite set of task vectors with probabilities; its candidates are all of them."""

    tasks: np.ndarray  # [M, D]
    probs: np.ndarray  # [M]

    @property
    def dim(self) -> int:
        return int(self.tasks.shape[1])

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return self.tasks[rng.choice(len(self.tasks), size=count, p=self.probs)]

    def log_prob(self, tasks: np.ndarray, where: str) -> np.ndarray:
        out = np.empty(len(tasks))
        for j, task in enumerate(tasks):
            match = np.flatnonzero(np.all(np.isclose(self.tasks, task, atol=1e-6), axis=1))
            if len(match) == 0:
                raise InputError(f"{where}[{j}]: {task.tolist()} is not one of the prior's tasks")
            mass = float(self.probs[match].sum())
            out[j] = math.log(mass) if mass > 0 else -math.inf  # -inf: never sampled, q = 0
        return out


def parse_prior(value: Any, where: str = "prior") -> Prior:
    """Build a prior from its YAML mapping, or an InputError naming the bad key."""
    if not isinstance(value, Mapping) or len(value) != 1:
        raise InputError(
            f"{where}: expected exactly one of uniform, normal, sphere, categorical; got {value!r}"
        )
    ((kind, body),) = value.items()
    at = f"{where}.{kind}"
    if kind == "uniform":
        body = _keys(body, at, {"low", "high"})
        low = _vector(body["low"], f"{at}.low")
        high = _vector(body["high"], f"{at}.high", len(low))
        if np.any(high <= low):
            raise InputError(f"{at}: high must exceed low in every dimension")
        return UniformPrior(low, high)
    if kind == "normal":
        body = _keys(body, at, {"mean", "std"})
        mean = _vector(body["mean"], f"{at}.mean")
        std = _vector(body["std"], f"{at}.std", len(mean))
        if np.any(std <= 0):
            raise InputError(f"{at}.std: must be positive")
        if np.any(np.abs(mean) + NORMAL_REACH * std > FLOAT32_MAX):
            raise InputError(
                f"{at}: draws overflow float32 (|mean| + {NORMAL_REACH:g} std must stay "
                f"<= {FLOAT32_MAX:.6g}); narrow the prior"
            )
        return NormalPrior(mean, std)
    if kind == "sphere":
        body = _keys(body, at, {"dim"}, {"radius"})
        dim, radius = body["dim"], body.get("radius", 1.0)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InputError(f"{at}.dim: expected a positive integer, got {dim!r}")
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0:
            raise InputError(f"{at}.radius: expected a positive number, got {radius!r}")
        if not FLOAT32_TINY <= radius <= FLOAT32_MAX:
            raise InputError(
                f"{at}.radius: {radius!r} is outside the float32 range "
                f"[{FLOAT32_TINY:.6g}, {FLOAT32_MAX:.6g}] in which candidates are stored"
            )
        return SpherePrior(dim, float(radius))
    if kind == "categorical":
        body = _keys(body, at, {"tasks"}, {"probs"})
        rows = body["tasks"]
        if not isinstance(rows, list) or not rows:
            raise InputError(f"{at}.tasks: expected a non-empty list of task vectors")
        tasks = (
            np.stack([_vector(r, f"{at}.tasks[{i}]") for i, r in enumerate(rows)])
            if all(isinstance(r, list) for r in rows)
            else _vector(rows, f"{at}.tasks")[:, None]
        )
        probs = (
            _vector(body["probs"], f"{at}.probs", len(tasks))
            if "probs" in body
            else np.full(len(tasks), 1.0 / len(tasks))
        )
        if np.any(probs < 0) or not math.isclose(probs.sum(), 1.0, rel_tol=1e-6):
            raise InputError(f"{at}.probs: must be non-negative and sum to 1")
        return CategoricalPrior(tasks, probs)
    raise InputError(f"{where}: unknown prior {kind!r} (use uniform, normal, sphere, categorical)")
