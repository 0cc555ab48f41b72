"""The tasks and initial states of an evaluation: drawn from the prior or read from a file.

Every policy evaluated in one call meets the same episodes (same task, same initial
state, same action noise), so methods are compared on paired episodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hipi_offline.errors import InputError
from hipi_offline.tasks.families import DiscreteFamily
from hipi_offline.tasks.spec import TaskSpec

MAX_RESET_ATTEMPTS = 100
"""Initial states tried per episode before a task is declared never feasible."""


@dataclass(frozen=True)
class EpisodePlan:
    """What one evaluation episode is: its index, task and random streams."""

    index: int
    task: np.ndarray
    """float32 [task_dim] (one-hot row for discrete families)."""
    seed: int
    """The evaluation seed; with ``index`` it fixes the initial state and the noise."""

    def env_seed(self, attempt: int) -> int:
        """Environment reset seed of the ``attempt``-th initial state tried."""
        sequence = np.random.SeedSequence([self.seed, self.index, 0, attempt])
        return int(sequence.generate_state(1)[0])

    def noise_rng(self) -> np.random.Generator:
        """The random stream of this episode's sampled actions."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.index, 1]))


def task_label(spec: TaskSpec, task: np.ndarray) -> Any:
    """A task as people read it: the task name (discrete) or a list of floats."""
    names = spec.task_names
    if names is not None:
        return names[int(np.argmax(task))]
    return [float(v) for v in np.asarray(task).reshape(-1)]


def plan_episodes(
    spec: TaskSpec, tasks: str | Path, episodes: int | None, seed: int
) -> list[EpisodePlan]:
    """Episode plans for ``tasks`` = ``prior`` (``episodes`` draws, default 20) or a
    file of tasks (episode e runs task e mod M; default one episode per task)."""
    if str(tasks) == "prior":
        count = 20 if episodes is None else episodes
        _check_episodes(count)
        drawn = spec.prior.sample(count, np.random.default_rng(seed)).astype(np.float32)
        return [EpisodePlan(e, drawn[e], seed) for e in range(count)]
    listed = read_task_file(Path(tasks), spec)
    count = len(listed) if episodes is None else episodes
    _check_episodes(count)
    return [EpisodePlan(e, listed[e % len(listed)], seed) for e in range(count)]


def _check_episodes(count: int) -> None:
    if count < 1:
        raise InputError(f"--episodes: must be positive, got {count}")


def read_task_file(path: Path, spec: TaskSpec) -> np.ndarray:
    """Tasks float32 [M, D] from a YAML/JSON list (or a ``tasks:`` key) or a .npy array.

    Rows are task vectors; for discrete families also task names or indices."""
    if not path.is_file():
        raise InputError(f"--tasks: {path} is neither 'prior' nor an existing file")
    if path.suffix == ".npy":
        try:
            raw: Any = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise InputError(f"--tasks: {path}: not a readable .npy array ({err})") from None
    else:
        try:
            text = path.read_text()
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
            reason = " ".join(str(err).split())[:160]
            raise InputError(f"--tasks: {path}: cannot be parsed ({reason})") from None
        if isinstance(raw, dict):
            if "tasks" not in raw:
                raise InputError(f"--tasks: {path}: a mapping needs a 'tasks' list")
            raw = raw["tasks"]
    return _task_rows(raw, spec, f"--tasks: {path}")


def _task_rows(raw: Any, spec: TaskSpec, where: str) -> np.ndarray:
    if raw is None or (isinstance(raw, list) and not raw) or np.size(raw) == 0:
        raise InputError(f"{where}: lists no tasks")
    dim = spec.prior.dim
    names = spec.task_names
    if names is not None and isinstance(raw, list) and all(isinstance(t, (str, int)) for t in raw):
        eye = np.eye(len(names), dtype=np.float32)
        rows = []
        for i, item in enumerate(raw):
            if isinstance(item, str) and item in names:
                rows.append(eye[names.index(item)])
            elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(names):
                rows.append(eye[item])
            else:
                raise InputError(
                    f"{where}: tasks[{i}]: {item!r} is not a task name or index "
                    f"(have {', '.join(names)})"
                )
        return np.stack(rows)
    try:
        array = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: tasks must be numbers, got {raw!r:.80}") from None
    if dim == 1 and array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2 or array.shape[1] != dim:
        raise InputError(f"{where}: tasks must be rows of {dim} numbers, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{where}: tasks contain NaN or inf")
    return array.astype(np.float32)


def task_is_feasible(spec: TaskSpec, env: Any, task: np.ndarray) -> bool:
    """False when a discrete task's success predicate already holds in the current
    state (an achievement cannot happen); environments without ``success()`` and
    other families accept every state."""
    success = getattr(env, "success", None)
    if not isinstance(spec.family, DiscreteFamily) or success is None:
        return True
    return not bool(np.asarray(success())[int(np.argmax(task))])
