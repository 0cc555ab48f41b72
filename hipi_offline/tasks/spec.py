"""Task specs: the YAML that names a reward family, its prior, candidates and
temperature. Parsed once into a frozen :class:`TaskSpec`; every key is checked."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from hipi_offline.errors import InputError
from hipi_offline.store.backends import ArrayInfo
from hipi_offline.tasks.families import (
    BiasedFamily,
    base_family,
    named_tasks,
    parse_bias,
    task_direction,
)
from hipi_offline.tasks.priors import CategoricalPrior, Prior, check_float32, parse_prior
from hipi_offline.tasks.registry import FAMILIES, RewardFamily

MAX_SPEC_BYTES = 1 << 20  # a task spec is a short YAML file
MAX_SPEC_DEPTH = 32  # nesting of YAML collections
MAX_SPEC_NODES = 250_000  # YAML nodes after alias expansion (what 1 MiB of text can hold)
MIN_TEMPERATURE = sys.float_info.min  # smaller (subnormal) alphas overflow 1 / alpha

COMMON_KEYS = {  # every family's spec may give these; each family adds its own (FAMILIES)
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
    def base_family(self) -> RewardFamily:
        """The family under any ``bias`` wrapper."""
        return base_family(self.family)

    @property
    def task_names(self) -> tuple[str, ...] | None:
        """The names of a discrete family's tasks (one-hot rows, in order); else None."""
        return named_tasks(self.family)

    @property
    def is_discrete(self) -> bool:
        """Whether the tasks are a finite set of named one-hot rows (``discrete``)."""
        return self.task_names is not None

    @property
    def direction(self) -> tuple[int, int] | None:
        """The task entries weighting world x and y velocity, the commanded direction
        of travel (``linear`` tasks over ``velocity_x`` and ``velocity_y`` features,
        e.g. ``quadruped-linear``: (0, 1)); None when the tasks command no direction."""
        return task_direction(self.family)

    @property
    def weights_every_step(self) -> bool:
        """Whether R is the plain sum of rewards (``gamma`` 1, ``at: all``): then
        :meth:`rewarded_steps` and :meth:`discounts` are both None."""
        return self.at == "all" and self.gamma == 1.0

    def rewarded_steps(self, offset: Tensor, length: Tensor) -> Tensor | None:
        """bool [C]: which steps count toward the return, for steps ``offset`` steps
        into episodes of ``length`` steps (``at: final``: each episode's last step);
        None when every step counts."""
        return offset == length - 1 if self.at == "final" else None

    def discounts(self, offset: Tensor) -> Tensor | None:
        """float64 [C]: gamma^t of steps t = ``offset`` steps into their episode;
        None when gamma is 1 (every weight is exactly 1)."""
        if self.gamma == 1.0:
            return None
        gamma = torch.tensor(self.gamma, dtype=torch.float64, device=offset.device)
        return torch.pow(gamma, offset.to(torch.float64))

    def discounted_return(self, rewards: np.ndarray) -> float:
        """R = sum_t w_t r_t of one episode's rewards [T] (float64), with the weights
        the relabeling pass uses: :meth:`rewarded_steps` and :meth:`discounts`."""
        rewards = np.asarray(rewards, np.float64).reshape(-1)
        offset = torch.arange(len(rewards))
        keep = self.rewarded_steps(offset, torch.tensor(len(rewards)))
        if keep is not None:
            rewards, offset = rewards[keep.numpy()], offset[keep]
        weight = self.discounts(offset)
        if weight is not None:
            rewards = rewards * weight.numpy()
        return float(rewards.sum())

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
        k = self.candidate_count(count)
        if isinstance(self.prior, CategoricalPrior) and isinstance(self.candidates, int):
            return self._listed(self.prior.tasks)
        if count is None and not isinstance(self.candidates, int):
            return self._listed(self.candidates)
        rng = np.random.default_rng(seed)
        tasks = self.prior.sample(k, rng).astype(np.float32)
        if not np.isfinite(tasks).all():  # K x D, cheap; the prior's bounds make this rare
            raise InputError(f"{self.origin}: prior: a draw overflows float32; narrow the prior")
        return tasks, None

    def _listed(self, tasks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Listed candidates as float32 and their log prior (checked)."""
        tasks = tasks.astype(np.float32)
        log_prior = self.prior.log_prob(tasks.astype(np.float64), "candidates")
        return tasks, _checked_log_prior(log_prior)

    def candidate_count(self, count: int | None = None) -> int:
        """K: the number of candidates a run with ``--candidates count`` uses."""
        if isinstance(self.prior, CategoricalPrior) and count is not None:
            raise InputError("--candidates: a categorical prior's candidates are all of its tasks")
        if count is None:
            return self.candidates if isinstance(self.candidates, int) else len(self.candidates)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InputError(f"--candidates: must be a positive integer, got {count!r}")
        return count


def _checked_log_prior(log_prior: np.ndarray) -> np.ndarray:
    """log p(psi_j) of explicit candidates: -inf (zero mass) is allowed, NaN and +inf are
    not, and at least one candidate must have positive mass."""
    if np.isnan(log_prior).any() or np.isposinf(log_prior).any():
        raise InputError("candidates: the prior's log-density is not finite")
    if not np.isfinite(log_prior).any():
        raise InputError("candidates: every candidate has prior probability 0")
    return log_prior


def check_temperature(value: Any, where: str) -> float:
    """alpha: a positive finite number whose reciprocal is finite in float64."""
    alpha = _positive(value, where)
    if alpha < MIN_TEMPERATURE:
        raise InputError(
            f"{where}: {alpha:.6g} is too small for float64 (R / alpha overflows); "
            f"use at least {MIN_TEMPERATURE:.6g}"
        )
    return alpha


def builtin_spec_names() -> list[str]:
    """Names of the task specs that ship with the package."""
    folder = resources.files("hipi_offline.tasks") / "builtin"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_task_spec(spec: str | Path) -> TaskSpec:
    """Load a spec from a YAML path or a built-in name (``cheetah-velocity``)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return parse_task_spec(_read_spec_file(path), origin=str(path))
    name = str(spec)
    resource = resources.files("hipi_offline.tasks") / "builtin" / f"{name}.yaml"
    if not resource.is_file():
        known = ", ".join(builtin_spec_names())
        raise InputError(f"--tasks: {name!r} is neither a YAML file nor a built-in spec ({known})")
    return parse_task_spec(resource.read_text(), origin=name)


def _read_spec_file(path: Path) -> str:
    """The text of a spec file: a regular file of at most MAX_SPEC_BYTES of UTF-8."""
    if not path.exists():
        raise InputError(f"{path}: no such task spec file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file; give a task spec YAML file")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise InputError(f"{path}: cannot read the task spec ({err.strerror})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise InputError(f"{path}: task spec larger than {MAX_SPEC_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a task spec (not UTF-8 YAML text)") from None


def parse_task_spec(text: str, origin: str = "<spec>") -> TaskSpec:
    """Parse and validate spec YAML text; errors name the origin and the key."""
    try:
        data = load_yaml_bounded(text)
    except InputError as err:
        raise InputError(f"{origin}: {err}") from None
    if not isinstance(data, Mapping):
        raise InputError(f"{origin}: expected a YAML mapping with a `family` key")
    try:
        return _build(data, text, origin)
    except InputError as err:
        raise InputError(f"{origin}: {err}") from None


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that refuses collections nested deeper than MAX_SPEC_DEPTH while
    composing (so deep input cannot exhaust the recursion stack)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > MAX_SPEC_DEPTH:
                raise InputError(_too_deep(self.peek_event().start_mark))
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _too_deep(mark: Any) -> str:
    return f"YAML nested deeper than {MAX_SPEC_DEPTH} levels at line {mark.line + 1}"


def load_yaml_bounded(text: str) -> Any:
    """``yaml.safe_load`` with limits: at most MAX_SPEC_BYTES of text, MAX_SPEC_DEPTH
    levels and MAX_SPEC_NODES nodes once aliases are expanded (no "billion laughs"),
    no recursive aliases, and string mapping keys. Every failure is one InputError line."""
    if len(text) > MAX_SPEC_BYTES:
        raise InputError(f"task spec larger than {MAX_SPEC_BYTES} bytes")
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader refuses control characters here
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded(node, 1, {}, set())
        return loader.construct_document(node)
    except InputError:
        raise
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"malformed YAML{where}") from None
    except (ValueError, OverflowError) as err:  # e.g. a timestamp 2020-13-45
        raise InputError(f"malformed YAML ({err})") from None
    finally:
        if loader is not None:
            loader.dispose()


_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


def _children(node: yaml.Node) -> list[yaml.Node]:
    """The child nodes of a collection; mapping keys must be plain strings."""
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        out = []
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag not in (_STR, _MERGE):
                line = key.start_mark.line + 1
                raise InputError(f"YAML mapping key at line {line} must be a string (quote it)")
            out += [key, value]
        return out
    return []


def _expanded(
    node: yaml.Node, level: int, memo: dict[int, tuple[int, int]], path: set[int]
) -> tuple[int, int]:
    """(nodes, height) of ``node`` with every alias expanded, memoized per shared node;
    InputError once the expansion passes MAX_SPEC_NODES or MAX_SPEC_DEPTH."""
    key = id(node)
    if key in path:
        raise InputError(f"recursive YAML alias at line {node.start_mark.line + 1}")
    if key not in memo:
        if level > MAX_SPEC_DEPTH:
            raise InputError(_too_deep(node.start_mark))
        path.add(key)
        nodes, height = 1, 0
        for child in _children(node):
            count, child_height = _expanded(child, level + 1, memo, path)
            nodes, height = nodes + count, max(height, child_height + 1)
            if nodes > MAX_SPEC_NODES:
                raise InputError(
                    f"YAML holds more than {MAX_SPEC_NODES} values (counting every alias "
                    "expansion); shorten the spec"
                )
        path.discard(key)
        memo[key] = (nodes, height)
    if level + memo[key][1] > MAX_SPEC_DEPTH:
        raise InputError(_too_deep(node.start_mark))
    return memo[key]


def _build(data: Mapping[str, Any], text: str, origin: str) -> TaskSpec:
    family = FAMILIES.parse(data, COMMON_KEYS)
    prior = _prior(family, data)
    candidates = _candidates(family, data, prior)
    temperature = check_temperature(data.get("temperature", 1.0), "temperature")
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
    if value > sys.float_info.max:  # an integer beyond float64
        raise InputError(f"{where}: {str(value)[:20]}... is too large for float64")
    return float(value)


def _prior(family: RewardFamily, data: Mapping[str, Any]) -> Prior:
    names = named_tasks(family)
    if names is not None:
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
    names = named_tasks(family)
    if names is not None:
        if "candidates" in data:
            raise InputError("candidates: a discrete family's candidates are all of its tasks")
        return len(names)
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
    try:
        array = np.asarray(rows, dtype=np.float64)
    except OverflowError:
        raise InputError("candidates: a number is too large for float64") from None
    if not np.isfinite(array).all():
        raise InputError("candidates: must be finite")
    check_float32(array, "candidates")
    _checked_log_prior(prior.log_prob(array, "candidates"))  # checks the support
    return array
