"""The expert interface: a task-conditioned controller that needs no training."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
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


def unknown_options(expert: str, options: Iterable[str], known: Iterable[str]) -> None:
    """Refuse option names the expert does not have (one line listing those it has)."""
    names = sorted(known)
    for name in options:
        if name not in names:
            raise InputError(
                f"{name}: not an option of the {expert} expert (have: {', '.join(names)})"
            )


def int_option(name: str, value: Any, low: int, high: int) -> int:
    """An integer option in [low, high], or a one-line InputError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name}={value!r}: must be an integer from {low} to {high}")
    if not low <= value <= high:
        raise InputError(f"{name}={value}: must be an integer from {low} to {high}")
    return int(value)


def float_option(name: str, value: Any, low: float, high: float, *, above: bool = False) -> float:
    """A finite number in [low, high] (``above``: strictly above ``low``), or a one-line
    InputError naming the option."""
    bound = f"above {low:g} and at most {high:g}" if above else f"from {low:g} to {high:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name}={value!r}: must be a number {bound}")
    number = float(value)
    if not math.isfinite(number) or number < low or (above and number == low) or number > high:
        raise InputError(f"{name}={value!r}: must be a finite number {bound}")
    return number
