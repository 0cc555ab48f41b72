"""The expert interface: a task-conditioned controller that needs no training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from hipi_offline.envs.base import TaskEnv
from hipi_offline.errors import InputError


class Expert(Protocol):
    """Acts for any task of its environment's family."""

    def reset(self, env: TaskEnv, task: np.ndarray, seed: int) -> None:
        """Prepare for a new episode of ``env`` (already reset) commanded ``task``."""
        ...

    def act(self, env: TaskEnv, observation: np.ndarray) -> np.ndarray:
        """The action for the current state of ``env``."""
        ...


_EXPERTS: dict[str, Callable[..., Expert]] = {}


def register_expert(env_name: str) -> Callable[[Callable[..., Expert]], Callable[..., Expert]]:
    """Decorator adding the expert constructor of an environment."""

    def add(factory: Callable[..., Expert]) -> Callable[..., Expert]:
        _EXPERTS[env_name] = factory
        return factory

    return add


def make_expert(env_name: str, **options: Any) -> Expert:
    """The expert of a registered environment."""
    import hipi_offline.experts  # noqa: F401  (registers the built-in experts)

    if env_name not in _EXPERTS:
        raise InputError(f"ENV: no expert for environment {env_name!r}")
    return _EXPERTS[env_name](**options)
