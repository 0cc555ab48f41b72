"""Task specs: the YAML that names a reward family, its prior, candidates and
temperature. Parsed once into a frozen :class:`TaskSpec`; every key is checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hipi_offline.errors import InputError
from hipi_offline.store.backends import ArrayInfo
from hipi_offline.tasks.families import (
    FAMILY_KEYS,
    BiasedFamily,
    DiscreteFamily,
    RewardFamily,
    parse_bias,
    parse_family,
    unwrap,
)
from hipi_offline.tasks.priors import CategoricalPrior, Prior, parse_prior

COMMON_KEYS = {
    "family",
    "prior",
    "candidates",
    "temperature",
    "gamma",
    "at",
    "bias",
    "name",
    "description",
}


@dataclass(frozen=True, repr=False)
class TaskSpec:
    """A validated task spec."""

    family: RewardFamily
    """The reward family (its ``reward`` is the one reward function)."""
    prior: Prior
    """p(psi); for ``discrete`` a categorical over the one-hot task rows."""
    candidates: int | np.ndarray
    """K draws from the prior, or an explicit float array [K, task_dim]."""
    temperature: float = 1.0
    """alpha in q(psi | tau) ~ p(psi) exp(R / alpha - log Z)."""
    gamma: float = 1.0
    """Discount of the return R = sum_t gamma^t r_t (1: plain sums, as in the paper)."""
    at: str = "all"
    """``all`` steps are rewarded, or only each episode's ``final`` step (paper Eq. 9)."""
    source: str = ""
    """The YAML text the spec was read from."""
    origin: str = "<spec>"
    """Where the spec came from (path or built-in name), for messages."""

    def __repr__(self) -> str:
        k = self.candidates if isinstance(self.candidates, int) else self.candidates.shape
        return (
            f"TaskSpec({self.family.name}, fields={self.family.fields}, "
            f"prior={type(self.prior).__name__}, "
            f"candidates={k}, temperature={self.temperature}, gamma={self.gamma}, at={self.at!r})"
        )

    @property
    def task_names(self) -> tuple[str, ...] | None:
        family = unwrap(self.family)
        return family.task_names if isinstance(family, DiscreteFamily) else None

    def task_dim(self, store_fields: Mapping[str, ArrayInfo]) -> int:
        """Check the family's fields against a store; return the task dimension."""
        try:
            columns = self.family.columns(store_fields)
        except InputError as err:
            raise InputError(f"{self.origin}: {err}") from None
        if columns >= 0 and columns != self.prior.dim:
            raise InputError(
                f"{self.origin}: prior: has dimension {self.prior.dim} but the {self.family.name} "
                f"family needs {columns} on this store"
            )
        return self.prior.dim

    def draw_candidates(
        self, seed: int, count: int | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Candidates float32 [K, D] and, for explicit lists, log p(psi_j) [K].

        Candidates drawn from the prior carry no prior term (it is uniform over
        the draws); explicit lists and categorical priors do.
        """
        if isinstance(self.prior, CategoricalPrior) and count is not None:
            raise InputError("--candidates: a categorical prior's candidates are all of its tasks")
        if isinstance(self.prior, CategoricalPrior) and isinstance(self.candidates, int):
            tasks = self.prior.tasks.astype(np.float32)
            return tasks, self.prior.log_prob(tasks.astype(np.float64), "candidates")
        if count is None and not isinstance(self.candidates, int):
            tasks = self.candidates.astype(np.float32)
            return tasks, self.prior.log_prob(tasks.astype(np.float64), "candidates")
        k = int(count if count is not None else self.candidates)
        if k < 1:
            raise InputError(f"candidates: must be at least 1, got {k}")
        rng = np.random.default_rng(seed)
        return self.prior.sample(k, rng).astype(np.float32), None


def builtin_spec_names() -> list[str]:
    """Names of the task specs that ship with the package."""
    folder = resources.files("hipi_offline.tasks") / "builtin"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_task_spec(spec: str | Path) -> TaskSpec:
    """Load a spec from a YAML path or a built-in name (``cheetah-velocity``)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise InputError(f"{path}: no such task spec file")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path}: not a task spec (not UTF-8 YAML text)") from None
        except OSError as err:
            raise InputError(f"{path}: cannot read the task spec ({err.strerror})") from None
        return parse_task_spec(text, origin=str(path))
    name = str(spec)
    resource = resources.files("hipi_offline.tasks") / "builtin" / f"{name}.yaml"
    if not resource.is_file():
        known = ", ".join(builtin_spec_names())
        raise InputError(f"--tasks: {name!r} is neither a YAML file nor a built-in spec ({known})")
    return parse_task_spec(resource.read_text(), origin=name)


def parse_task_spec(text: str, origin: str = "<spec>") -> TaskSpec:
    """Parse and validate spec YAML text; errors name the origin and the key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{origin}: malformed YAML{where}") from None
    if not isinstance(data, Mapping):
        raise InputError(f"{origin}: expected a YAML mapping with a `family` key")
    try:
        return _build(data, text, origin)
    except InputError as err:
        raise InputError(f"{origin}: {err}") from None


def _build(data: Mapping[str, Any], text: str, origin: str) -> TaskSpec:
    family_name = data.get("family")
    if family_name not in FAMILY_KEYS:
        raise InputError(f"family: unknown family {family_name!r} (use {', '.join(FAMILY_KEYS)})")
    required, optional = FAMILY_KEYS[family_name]
    unknown = sorted(set(data) - COMMON_KEYS - required - optional)
    if unknown:
        allowed = ", ".join(sorted(COMMON_KEYS | required | optional))
        raise InputError(
            f"unknown key {unknown[0]!r} for family {family_name} (allowed: {allowed})"
        )
    missing = sorted(required - set(data))
    if missing:
        raise InputError(f"missing key {missing[0]!r} for family {family_name}")
    family = parse_family(family_name, data)
    prior = _prior(family, data)
    candidates = _candidates(family, data, prior)
    temperature = _positive(data.get("temperature", 1.0), "temperature")
    gamma = _positive(data.get("gamma", 1.0), "gamma")
    if gamma > 1:
        raise InputError(f"gamma: must be in (0, 1], got {gamma}")
    at = data.get("at", "all")
    if at not in ("all", "final"):
        raise InputError(f"at: expected 'all' or 'final', got {at!r}")
    if "bias" in data:
        value, low, high = parse_bias(data["bias"], prior.dim)
        family = BiasedFamily(family, value, low, high)
    return TaskSpec(family, prior, candidates, temperature, gamma, at, text, origin)


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < np.inf:
        raise InputError(f"{where}: expected a positive number, got {value!r}")
    return float(value)


def _prior(family: RewardFamily, data: Mapping[str, Any]) -> Prior:
    if isinstance(family, DiscreteFamily):
        names = family.task_names
        probs: Any = None
        if "prior" in data:
            body = data["prior"]
            if (
                not isinstance(body, Mapping)
                or set(body) != {"categorical"}
                or not isinstance(body["categorical"], Mapping)
                or set(body["categorical"]) - {"probs"}
            ):
                raise InputError("prior: a discrete family takes only {categorical: {probs: ...}}")
            probs = body["categorical"].get("probs")
            if isinstance(probs, Mapping):
                extra = sorted(set(probs) - set(names))
                if extra:
                    raise InputError(f"prior.categorical.probs: unknown task {extra[0]!r}")
                probs = [probs.get(n, 0.0) for n in names]
        one_hot = np.eye(len(names)).tolist()
        body = {"tasks": one_hot, **({"probs": probs} if probs is not None else {})}
        return parse_prior({"categorical": body})
    if "prior" not in data:
        raise InputError(f"missing key 'prior' for family {family.name}")
    return parse_prior(data["prior"])


def _candidates(family: RewardFamily, data: Mapping[str, Any], prior: Prior) -> int | np.ndarray:
    value = data.get("candidates", 256)
    if isinstance(family, DiscreteFamily):
        if "candidates" in data:
            raise InputError("candidates: a discrete family's candidates are all of its tasks")
        return len(family.task_names)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise InputError(f"candidates: must be at least 1, got {value}")
        return value
    if not isinstance(value, list) or not value:
        raise InputError("candidates: expected a count or a non-empty list of task vectors")
    rows = [row if isinstance(row, list) else [row] for row in value]
    for j, row in enumerate(rows):
        if len(row) != prior.dim or any(
            isinstance(x, bool) or not isinstance(x, (int, float)) for x in row
        ):
            raise InputError(f"candidates[{j}]: expected {prior.dim} numbers, got {row!r}")
    array = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(array).all():
        raise InputError("candidates: must be finite")
    prior.log_prob(array, "candidates")  # checks the support
    return array
