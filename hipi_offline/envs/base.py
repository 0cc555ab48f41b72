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

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from hipi_offline.errors import InputError, ResourceError, one_line
from hipi_offline.tasks.spec import TaskSpec, load_task_spec

GL_PACKAGES = "libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libosmesa6"
"""Debian packages that provide the GL libraries MuJoCo renders with."""
_GL_OFF = "disable"
_gl_problem: str | None = None
"""Why the GL backend could not be loaded (None: it loaded, or not tried yet)."""
_gl_checked = False


class _DeprecatedMassFilter(logging.Filter):
    """Drops MuJoCo's compile warning about dm_control's ``settotalmass`` (the suite's
    cheetah model uses it; the warning is about the XML, not about our data)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "settotalmass" not in record.getMessage()


_MASS_FILTER = _DeprecatedMassFilter()


def quiet_model_warnings() -> None:
    """Silence the ``settotalmass`` deprecation warning that dm_control logs through
    absl each time a suite model is compiled (other warnings still show)."""
    logger = logging.getLogger("absl")
    if _MASS_FILTER not in logger.filters:
        logger.addFilter(_MASS_FILTER)


def headless_gl() -> None:
    """Render with EGL when there is no display (must run before dm_control or
    mujoco's renderer first loads its GL backend)."""
    if "DISPLAY" not in os.environ:
        os.environ.setdefault("MUJOCO_GL", "egl")


def prepare_mujoco() -> None:
    """Load MuJoCo and dm_control's renderer before an environment is built: EGL when
    there is no display, the ``settotalmass`` warning silenced, and a GL library that
    fails to load replaced by "no renderer", so that simulating needs no GL at all
    (rendering then raises :class:`ResourceError`, see :func:`gl_unavailable`)."""
    global _gl_checked, _gl_problem
    quiet_model_warnings()
    if _gl_checked:
        return
    headless_gl()
    problem = _load_gl()
    if problem is not None:
        requested = os.environ.get("MUJOCO_GL", "")
        os.environ["MUJOCO_GL"] = _GL_OFF  # spawned workers inherit it: no new attempt
        second = _load_gl()
        if second is not None:  # pragma: no cover - MuJoCo itself cannot load
            raise ResourceError(gl_message(f"MUJOCO_GL={requested}: {problem}; then {second}"))
        _gl_problem = f"MUJOCO_GL={requested}: {problem}"
    _gl_checked = True


def _load_gl() -> str | None:
    """Import MuJoCo and ``dm_control.mujoco`` (importing them loads the GL library
    named by ``MUJOCO_GL``); the reason on failure. A failed import leaves none of the
    failed modules behind, so a second try with another ``MUJOCO_GL`` starts afresh."""
    try:
        import dm_control.mujoco  # noqa: F401
        import mujoco  # noqa: F401
    except Exception as err:  # PyOpenGL fails with AttributeError, ImportError, ...
        return one_line(f"{type(err).__name__}: {err}", 160)
    return None


def gl_message(reason: str) -> str:
    """The one-line error for a missing or broken GL library."""
    return (
        f"rendering needs a working OpenGL library ({reason}); install the Debian packages "
        f"{GL_PACKAGES}, or set MUJOCO_GL to egl, osmesa or glfw as your system supports"
    )


def gl_unavailable() -> str | None:
    """Why rendering is impossible in this process, or None when it may work."""
    prepare_mujoco()
    if _gl_problem is not None:
        return _gl_problem
    if os.environ.get("MUJOCO_GL", "").strip().lower() in {"disable", "disabled", "off", "0"}:
        return "MUJOCO_GL disables rendering"
    return None


def render_physics(physics: Any, width: int, height: int, camera_id: int | str = 0) -> np.ndarray:
    """uint8 [height, width, 3] image of a dm_control physics; a missing or broken GL
    library raises :class:`ResourceError` (one line naming the packages)."""
    problem = gl_unavailable()
    if problem is not None:
        raise ResourceError(gl_message(problem))
    try:
        pixels = physics.render(height, width, camera_id=camera_id)
    except Exception as err:  # noqa: BLE001 - GL context creation fails in many ways
        raise ResourceError(gl_message(one_line(f"{type(err).__name__}: {err}", 160))) from None
    return np.asarray(pixels, np.uint8)


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


def stack_fields(
    rows: Sequence[Mapping[str, Any]], axis: int = 0, like: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Each named array of ``rows`` (one mapping per step, or per environment, all with
    the same names) stacked along a new ``axis``: ``{name: [len(rows), ...]}`` for axis
    0. ``like`` (a row) gives the names and shapes when ``rows`` is empty."""
    if not rows:
        if like is None:
            raise ValueError("stack_fields: no rows and no example row")
        return {name: np.moveaxis(np.asarray(v)[None][:0], 0, axis) for name, v in like.items()}
    return {name: np.stack([np.asarray(row[name]) for row in rows], axis=axis) for name in rows[0]}


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


@dataclass(frozen=True)
class TaskFrame:
    """Where an environment's observation holds the body's orientation and which task
    entries are a world-frame direction: a policy may then also be given the task's
    direction in the body frame (``train-bc --body-frame-task``)."""

    rotation: int
    """Index of the row-major 3x3 body-to-world rotation matrix in the observation."""
    direction: tuple[int, int]
    """Task entries weighting world x and y."""

    def as_json(self) -> dict[str, Any]:
        return {"rotation": self.rotation, "direction": list(self.direction)}


def env_task_frame(name: str) -> TaskFrame | None:
    """The :class:`TaskFrame` a registered environment declares, without building it;
    None when it declares none."""
    return env_entry(name).task_frame


def velocity_along_command(
    env: TaskEnv, fields: Mapping[str, np.ndarray], task: np.ndarray
) -> np.ndarray | None:
    """[T] velocity along the task's commanded direction for T steps' fields, for an
    environment whose tasks command a direction (its ``velocity_along_command``
    method); None for other environments and for tasks without a direction."""
    method = getattr(env, "velocity_along_command", None)
    return None if method is None else method(fields, task)


COLLECTIONS = ("commanded", "play")
"""How ``collect`` records an environment: ``commanded`` episodes (the expert is given
one task from the prior per episode) or ``play`` (windows cut from long play streams,
each labeled with the sub-task it completes)."""


@dataclass(frozen=True)
class EnvEntry:
    """A registered environment: what callers need to know without building it (no
    MuJoCo import), and the constructor."""

    name: str
    """Registry name, e.g. ``cheetah``."""
    task_spec: str
    """Built-in task spec whose family rewards this environment's tasks."""
    collection: str
    """How ``collect`` records it: one of :data:`COLLECTIONS`."""
    task_frame: TaskFrame | None
    """Where the observation holds the body's rotation (None: nowhere)."""
    factory: Callable[..., TaskEnv]

    @property
    def plays(self) -> bool:
        """Collected as play streams cut into windows (else: commanded episodes)."""
        return self.collection == "play"


_REGISTRY: dict[str, EnvEntry] = {}
T = TypeVar("T")


def register(
    name: str,
    *,
    task_spec: str,
    collection: str = "commanded",
    task_frame: TaskFrame | None = None,
) -> Callable[[type[T]], type[T]]:
    """Class decorator adding an environment to the registry, with the metadata that
    :func:`env_entry` reads without building it."""
    if collection not in COLLECTIONS:
        raise ValueError(f"{name}: collection {collection!r} is not one of {COLLECTIONS}")

    def add(factory: type[T]) -> type[T]:
        _REGISTRY[name] = EnvEntry(name, task_spec, collection, task_frame, factory)
        return factory

    return add


def env_names() -> list[str]:
    """Names of the registered environments."""
    import hipi_offline.envs  # noqa: F401  (registers the built-in environments)

    return sorted(_REGISTRY)


def env_entry(name: str) -> EnvEntry:
    """The registry entry of an environment (one line naming the known ones if none);
    ``gymnasium:ID`` names any Gymnasium environment (``envs/gymnasium_env.py``)."""
    if name.startswith("gymnasium:"):
        from hipi_offline.envs.gymnasium_env import gymnasium_entry

        return gymnasium_entry(name)
    names = env_names()
    if name not in _REGISTRY:
        raise InputError(f"ENV: unknown environment {name!r} (have: {', '.join(names)})")
    return _REGISTRY[name]


def registered_info(factory: Callable[..., TaskEnv], **static: Any) -> EnvInfo:
    """The :class:`EnvInfo` of a registered environment class: its name and task spec
    from the registry entry, the other fields as given."""
    entry = next((e for e in _REGISTRY.values() if e.factory is factory), None)
    if entry is None:
        raise ValueError(f"{getattr(factory, '__name__', factory)!r} is not registered")
    return EnvInfo(name=entry.name, task_spec=entry.task_spec, **static)


def make_env(name: str, **options: Any) -> TaskEnv:
    """Construct a registered environment by name."""
    return env_entry(name).factory(**options)


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
