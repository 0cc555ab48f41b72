"""The expert interface: a task-conditioned controller that needs no training."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ExpertEntry:
    """One registered expert of an environment."""

    factory: Callable[..., Expert]
    default: bool
    """The environment's expert when none is named."""
    unnamed: bool
    """The expert of stores collected before experts had names (``collect_expert``
    then held only options, or nothing)."""


_EXPERTS: dict[str, dict[str, ExpertEntry]] = {}


def register_expert(
    env_name: str, name: str, *, default: bool = False, unnamed: bool = False
) -> Callable[[Callable[..., Expert]], Callable[..., Expert]]:
    """Decorator adding an expert constructor ``name`` to an environment."""

    def add(factory: Callable[..., Expert]) -> Callable[..., Expert]:
        _EXPERTS.setdefault(env_name, {})[name] = ExpertEntry(factory, default, unnamed)
        return factory

    return add


def expert_names(env_name: str) -> list[str]:
    """The experts of an environment, its default first."""
    import hipi_offline.experts  # noqa: F401  (registers the built-in experts)

    entries = _EXPERTS.get(env_name, {})
    return sorted(entries, key=lambda name: (not entries[name].default, name))


def _entry(env_name: str, name: str | None, flag: str) -> tuple[str, ExpertEntry]:
    names = expert_names(env_name)
    if not names:
        raise InputError(f"ENV: no expert for environment {env_name!r}")
    entries = _EXPERTS[env_name]
    if name is None:
        chosen = [n for n in names if getattr(entries[n], flag)] or names
        return chosen[0], entries[chosen[0]]
    if name not in entries:
        raise InputError(f"--expert {name}: not an expert of {env_name} (have: {', '.join(names)})")
    return name, entries[name]


def default_expert(env_name: str) -> str:
    """The name of an environment's default expert."""
    return _entry(env_name, None, "default")[0]


def unnamed_expert(env_name: str) -> str:
    """The expert that collected an environment's stores before experts had names."""
    return _entry(env_name, None, "unnamed")[0]


def make_expert(env_name: str, name: str | None = None, **options: Any) -> Expert:
    """Expert ``name`` (default: the environment's default) of a registered environment."""
    return _entry(env_name, name, "default")[1].factory(**options)


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
