"""The common environment interface: written once for collection and evaluation.

An environment steps a MuJoCo simulation and reports, for every transition, the
named step fields that its task family reads (``infos/speed``, ...). The store
keeps, for step t: ``steps/observations`` = the observation before the action,
``steps/actions`` = the action, ``steps/<name>`` = each field of ``StepResult.fields``
measured after the action. The task reward of a transition is *the* family reward
of the environment's task spec evaluated on those same fields
(:func:`transition_rewards`), so rollout returns equal offline returns exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from hipi_offline.errors import InputError
from hipi_offline.tasks.spec import TaskSpec, load_task_spec


def headless_gl() -> None:
    """Render with EGL when there is no display (must run before dm_control or
    mujoco's renderer first loads its GL backend)."""
    if "DISPLAY" not in os.environ:
        os.environ.setdefault("MUJOCO_GL", "egl")


@dataclass(frozen=True)
class EnvInfo:
    """Static description of an environment."""

    name: str
    """Registry name, e.g. ``cheetah``."""
    task_spec: str
    """Built-in task spec whose family rewards this environment's tasks."""
    observation_dim: int
    action_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    control_dt: float
    """Seconds of simulated time per ``step``."""
    default_steps: int
    """Episode length used by ``collect`` and ``evaluate`` unless told otherwise."""


@dataclass(frozen=True, repr=False)
class StepResult:
    """What one ``step`` returns."""

    observation: np.ndarray
    """The next observation, float32 [observation_dim]."""
    fields: dict[str, np.ndarray]
    """Step fields of this transition by store name without the ``steps/`` prefix,
    e.g. ``{"infos/speed": array(1.3)}``; the same names every step."""

    def __repr__(self) -> str:
        shapes = {k: tuple(np.shape(v)) for k, v in self.fields.items()}
        return f"StepResult(observation={self.observation.shape}, fields={shapes})"


class TaskEnv(Protocol):
    """What every environment provides."""

    info: EnvInfo

    def reset(self, seed: int) -> np.ndarray:
        """Start an episode deterministically for ``seed``; return the first observation."""
        ...

    def step(self, action: np.ndarray) -> StepResult:
        """Apply an action (clipped to the action bounds) for one control step."""
        ...

    def render(self, width: int = 320, height: int = 240) -> np.ndarray:
        """uint8 [height, width, 3] image of the current state (headless: MUJOCO_GL=egl)."""
        ...

    def close(self) -> None: ...


_REGISTRY: dict[str, Callable[..., TaskEnv]] = {}


def register(name: str) -> Callable[[Callable[..., TaskEnv]], Callable[..., TaskEnv]]:
    """Decorator adding an environment constructor to the registry."""

    def add(factory: Callable[..., TaskEnv]) -> Callable[..., TaskEnv]:
        _REGISTRY[name] = factory
        return factory

    return add


def env_names() -> list[str]:
    """Names of the registered environments."""
    import hipi_offline.envs  # noqa: F401  (registers the built-in environments)

    return sorted(_REGISTRY)


def make_env(name: str, **options: Any) -> TaskEnv:
    """Construct a registered environment by name."""
    names = env_names()
    if name not in _REGISTRY:
        raise InputError(f"ENV: unknown environment {name!r} (have: {', '.join(names)})")
    return _REGISTRY[name](**options)


def env_task_spec(env: TaskEnv) -> TaskSpec:
    """The task spec (reward family, prior) of an environment."""
    return load_task_spec(env.info.task_spec)


def transition_rewards(
    spec: TaskSpec,
    observations: np.ndarray,
    actions: np.ndarray,
    fields: Mapping[str, np.ndarray],
    tasks: np.ndarray,
) -> np.ndarray:
    """float64 [T, K] rewards of T transitions for K tasks, by the family's reward:
    the very function that relabeling sums over stored steps."""
    rows = len(actions)
    named = {
        "steps/observations": observations,
        "steps/actions": actions,
        **{f"steps/{name}": np.asarray(value) for name, value in fields.items()},
    }
    tensors = {
        name: torch.from_numpy(np.ascontiguousarray(value).reshape(rows, *np.shape(value)[1:])).to(
            torch.float64
        )
        for name, value in named.items()
        if name in spec.family.fields
    }
    task_tensor = torch.from_numpy(np.asarray(tasks, dtype=np.float32).astype(np.float64))
    return spec.family.reward(tensors, task_tensor.reshape(len(task_tensor), -1)).numpy()
