"""Any Gymnasium environment behind the common :class:`~hipi_offline.envs.base.TaskEnv`
interface, named ``gymnasium:ID`` (``gymnasium:Pendulum-v1``).

The registry resolves such names here (:func:`gymnasium_entry`), so evaluation (and
every other caller of ``env_entry``/``make_env``) steps them like a built-in
environment. A Gymnasium environment has no task spec of its own: evaluation takes
the task family from the run's label set or from ``--task-spec``.

Each step reports the fields a Minari import stores (see ``io/minari_import.py``):
``rewards`` (float64, the environment's own reward), ``terminations`` and
``truncations`` (bool). Observations are the flattened Box observation; the action
space must be a Box. An episode ends at termination or truncation (the time limit
the environment is registered with); ``episode_over`` tells the rollout so.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from typing import Any

import numpy as np

from hipi_offline.envs.base import EnvEntry, EnvInfo, StepResult
from hipi_offline.errors import InputError, ResourceError, one_line

PREFIX = "gymnasium:"
"""Registry names of Gymnasium environments start with this."""
MAX_ID_LENGTH = 200
"""Longest Gymnasium id accepted (real ones are under 60 characters)."""
DEFAULT_STEPS = 1000
"""Episode length when the environment is registered without a time limit."""
DEFAULT_DT = 0.05
"""Seconds per step when the environment declares neither ``dt`` nor ``render_fps``."""
STEP_FIELDS = ("rewards", "terminations", "truncations")
"""The step fields every Gymnasium environment reports."""


def is_gymnasium_name(name: str) -> bool:
    """Whether a registry name names a Gymnasium environment."""
    return name.startswith(PREFIX)


def check_gymnasium_id(env_id: str, where: str, *, trusted: bool) -> str:
    """``env_id`` when it is a well-formed Gymnasium id registered in Gymnasium's
    registry; else one InputError line starting with ``where``.

    A ``module:Env-v0`` id makes Gymnasium import ``module``: accepted only when
    ``trusted`` (typed by the user), refused when it comes from a store or a run."""
    if not isinstance(env_id, str) or not env_id or len(env_id) > MAX_ID_LENGTH:
        shown = one_line(repr(env_id), 60)
        raise InputError(
            f"{where}: {shown} is not a Gymnasium environment id "
            f"(1 to {MAX_ID_LENGTH} characters, e.g. Pendulum-v1)"
        )
    gym = _gymnasium()
    from gymnasium.envs.registration import ENV_ID_RE

    module, _, name = env_id.rpartition(":")
    if module and not trusted:
        raise InputError(
            f"{where}: {one_line(repr(env_id), 80)} names a module to import ({module!r}); "
            "an id read from a store or run is never imported: pass --env gymnasium:ID"
        )
    if not ENV_ID_RE.fullmatch(name) or (module and not _is_module_name(module)):
        raise InputError(
            f"{where}: {one_line(repr(env_id), 80)} is not a Gymnasium environment id "
            "([module:][namespace/]name-vN)"
        )
    if module:
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - any failure of the user's module
            reason = one_line(f"{type(err).__name__}: {err}", 120)
            raise InputError(f"{where}: cannot import {module!r} ({reason})") from None
    if name not in gym.envs.registry:
        close = difflib.get_close_matches(name, list(gym.envs.registry), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InputError(
            f"{where}: unknown Gymnasium environment {name!r}{hint}; install the package "
            "that registers it"
        )
    return env_id


def _is_module_name(module: str) -> bool:
    return all(part.isidentifier() for part in module.split("."))


def _gymnasium() -> Any:
    try:
        import gymnasium
    except ImportError:
        raise ResourceError(
            "Gymnasium environments need the gymnasium package: pip install gymnasium"
        ) from None
    return gymnasium


def gymnasium_entry(name: str) -> EnvEntry:
    """The registry entry of ``gymnasium:ID`` (the id checked, nothing built)."""
    env_id = check_gymnasium_id(name[len(PREFIX) :], "ENV", trusted=True)
    factory = functools.partial(GymnasiumEnv, env_id)
    return EnvEntry(name, "", "commanded", None, factory)


class GymnasiumEnv:
    """A Gymnasium environment with a Box observation and a Box action space."""

    def __init__(self, env_id: str, max_episode_steps: int | None = None) -> None:
        gym = _gymnasium()
        kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        try:
            self.env = gym.make(env_id, **kwargs)
        except gym.error.Error as err:
            raise InputError(f"ENV: gymnasium:{env_id}: {one_line(str(err), 200)}") from None
        except ImportError as err:
            raise ResourceError(
                f"ENV: gymnasium:{env_id} needs a package that is not installed "
                f"({one_line(str(err), 160)})"
            ) from None
        obs_space, act_space = self.env.observation_space, self.env.action_space
        for what, space in (("observation", obs_space), ("action", act_space)):
            if not isinstance(space, gym.spaces.Box):
                self.env.close()
                raise InputError(
                    f"ENV: gymnasium:{env_id} has a {type(space).__name__} {what} space; "
                    "only Box observations and actions are supported"
                )
        unwrapped = self.env.unwrapped
        fps = (unwrapped.metadata or {}).get("render_fps")
        dt = getattr(unwrapped, "dt", None) or (1.0 / fps if fps else DEFAULT_DT)
        limit = self.env.spec.max_episode_steps if self.env.spec is not None else None
        self.info = EnvInfo(
            name=PREFIX + env_id,
            task_spec="",
            observation_dim=int(np.prod(obs_space.shape)),
            action_dim=int(np.prod(act_space.shape)),
            action_low=np.asarray(act_space.low, np.float32).reshape(-1),
            action_high=np.asarray(act_space.high, np.float32).reshape(-1),
            control_dt=float(dt),
            default_steps=int(limit) if limit else DEFAULT_STEPS,
        )
        self._act_shape = act_space.shape
        self.episode_over = False
        """The episode terminated or was truncated: step no further before a reset."""

    def reset(self, seed: int) -> np.ndarray:
        """Start an episode deterministically for ``seed``."""
        obs, _ = self.env.reset(seed=int(seed))
        self.episode_over = False
        return np.asarray(obs, np.float32).reshape(-1)

    def step(self, action: np.ndarray) -> StepResult:
        """One environment step with the action clipped to the bounds."""
        if self.episode_over:
            raise RuntimeError(f"{self.info.name}: step after the episode ended; reset first")
        info = self.info
        clipped = np.clip(
            np.asarray(action, np.float32).reshape(-1), info.action_low, info.action_high
        )
        obs, reward, terminated, truncated, _ = self.env.step(clipped.reshape(self._act_shape))
        self.episode_over = bool(terminated or truncated)
        fields = {
            "rewards": np.asarray(reward, np.float64),
            "terminations": np.asarray(bool(terminated)),
            "truncations": np.asarray(bool(truncated)),
        }
        return StepResult(np.asarray(obs, np.float32).reshape(-1), fields)

    def render(self, width: int = 320, height: int = 240) -> np.ndarray:
        """Not available: Gymnasium environments are built without a render mode."""
        raise InputError(f"--video: {self.info.name} is not rendered (Gymnasium environment)")

    def close(self) -> None:
        self.env.close()
