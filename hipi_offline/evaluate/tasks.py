"""The tasks and initial states of an evaluation: drawn from the prior or read from a file.

Every policy evaluated in one call meets the same episodes (same task, same initial
state, same action noise), so methods are compared on paired episodes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hipi_offline.errors import InputError, one_line
from hipi_offline.tasks.spec import (
    TaskSpec,
    builtin_spec_names,
    load_task_spec,
    load_yaml_bounded,
    parse_task_spec,
)

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


def evaluation_spec(
    task_spec: str | None,
    env_spec: str,
    labels: Sequence[tuple[str, Any]],
    trained: Sequence[tuple[str, str]] = (),
) -> TaskSpec:
    """The task family an evaluation scores episodes with: ``task_spec`` (``--task-spec``,
    a file or built-in name) when given, else the spec the RL runs were trained with
    (``trained``: (run, spec name) per train-rl run; they must agree), else the
    environment's own spec (``env_spec``, a built-in name; "" for a Gymnasium
    environment), else the spec of the runs' label sets. ``labels`` holds (run,
    LabelsInfo or None) per run; the task-conditioned runs must agree on one spec. A
    spec read from a run never imports code: a ``custom`` family there is refused (pass
    it with ``--task-spec``), and an RL run's spec is read only when it is a built-in
    name (its config.json is untrusted, so a file it names is never opened)."""
    if task_spec is not None:
        return load_task_spec(task_spec)
    if trained:
        return _trained_spec(trained)
    if env_spec:
        return load_task_spec(env_spec)
    sources = {
        (info.spec, info.spec_origin or "labels"): run
        for run, info in labels
        if info is not None and info.spec
    }
    if not sources:
        raise InputError(
            "--task-spec: the environment has no task spec and no run records its label "
            "set's spec; pass --task-spec SPEC"
        )
    texts = {text for text, _ in sources}
    if len(texts) > 1:
        runs = ", ".join(sorted(sources.values()))
        raise InputError(
            f"--task-spec: the runs were trained on label sets of different task specs "
            f"({runs}); pass --task-spec SPEC to score them with one"
        )
    (text, origin), run = next(iter(sources.items()))
    where = f"{run}: labels' task spec ({origin})"
    try:
        data = load_yaml_bounded(text)
        if isinstance(data, dict) and data.get("family") == "custom":
            raise InputError(
                "a custom family imports code and is never loaded from a run; "
                "pass the spec with --task-spec if you trust it"
            )
        return parse_task_spec(text, origin=origin)
    except InputError as err:
        raise InputError(one_line(f"{where}: {err}", 400)) from None


def _trained_spec(trained: Sequence[tuple[str, str]]) -> TaskSpec:
    """The built-in spec every RL run of ``trained`` was trained with."""
    names = {name: run for run, name in trained}
    if len(names) > 1:
        runs = ", ".join(sorted(names.values()))
        raise InputError(
            f"--task-spec: the RL runs were trained on different task specs ({runs}); "
            "pass --task-spec SPEC to score them with one"
        )
    ((name, run),) = names.items()
    if name not in builtin_spec_names():
        raise InputError(  # one_line shortens a long path in its middle: its name stays
            one_line(
                f"--task-spec: {run} was trained on the task spec {name!r} (its "
                "config.json's tasks), a file that evaluate does not open on a run "
                "folder's word; pass --task-spec with the spec to score it",
                400,
            )
        )
    return load_task_spec(name)


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


MAX_EPISODES = 1_000_000
"""Episodes per run accepted by ``--episodes``."""


def _check_episodes(count: int) -> None:
    if not 1 <= count <= MAX_EPISODES:
        raise InputError(f"--episodes: must be from 1 to {MAX_EPISODES:,}, got {count}")


MAX_TASKS = 100_000
"""Tasks a task file may list."""
MAX_TASK_FILE_BYTES = 16 << 20
"""Largest YAML/JSON task file read (a task list is small)."""


def read_task_file(path: Path, spec: TaskSpec) -> np.ndarray:
    """Tasks float32 [M, D] from a YAML/JSON list (or a ``tasks:`` key) or a .npy array.

    Rows are task vectors; for discrete families also task names or indices. Every
    malformed file (ragged rows, non-numbers, NaN, another dimension, no tasks, too
    many, a pickled .npy) is one InputError line naming the file."""
    where = f"--tasks: {path}"
    if not path.is_file():
        raise InputError(f"--tasks: {path} is neither 'prior' nor an existing file")
    if path.suffix == ".npy":
        return _task_rows(_read_npy(path, spec.prior.dim, where), spec, where)
    if path.stat().st_size > MAX_TASK_FILE_BYTES:
        raise InputError(f"{where}: larger than {MAX_TASK_FILE_BYTES >> 20} MiB; list fewer tasks")
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())[:160]
        raise InputError(f"{where}: cannot be parsed ({reason})") from None
    if isinstance(raw, dict):
        if "tasks" not in raw:
            raise InputError(f"{where}: a mapping needs a 'tasks' list")
        raw = raw["tasks"]
    return _task_rows(raw, spec, where)


def _read_npy(path: Path, dim: int, where: str) -> np.ndarray:
    """A numeric .npy array, its header checked before loading (no pickles)."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, SyntaxError, TypeError) as err:
        raise InputError(f"{where}: not a readable .npy array ({err})") from None
    if dtype.kind not in "iuf":
        raise InputError(f"{where}: holds {dtype} values, not numbers (int or float arrays only)")
    if int(np.prod(shape)) > MAX_TASKS * max(dim, 1):
        raise InputError(f"{where}: shape {shape} lists more than {MAX_TASKS:,} tasks")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"{where}: not a readable .npy array ({err})") from None


def _task_rows(raw: Any, spec: TaskSpec, where: str) -> np.ndarray:
    if raw is None or (isinstance(raw, (list, np.ndarray)) and len(raw) == 0):
        raise InputError(f"{where}: lists no tasks")
    dim = spec.prior.dim
    names = spec.task_names
    if isinstance(raw, np.ndarray):
        array = raw.astype(np.float64)
    else:
        if not isinstance(raw, list):
            raise InputError(f"{where}: tasks must be a list, got {type(raw).__name__}")
        if len(raw) > MAX_TASKS:
            raise InputError(f"{where}: lists {len(raw):,} tasks, more than {MAX_TASKS:,}")
        if names is not None and all(isinstance(t, (str, int)) for t in raw):
            return _named_rows(raw, names, where)
        array = np.array([_row(item, i, dim, where) for i, item in enumerate(raw)], np.float64)
    if dim == 1 and array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2 or array.shape[1] != dim:
        raise InputError(f"{where}: tasks must be rows of {dim} numbers, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{where}: tasks contain NaN or inf")
    if not (np.abs(array) <= np.finfo(np.float32).max).all():
        raise InputError(f"{where}: tasks hold values beyond float32's range")
    return array.astype(np.float32)


def _named_rows(raw: list[Any], names: Sequence[str], where: str) -> np.ndarray:
    """One-hot rows of a discrete family's tasks given by name or index."""
    eye = np.eye(len(names), dtype=np.float32)
    rows = []
    for i, item in enumerate(raw):
        if isinstance(item, str) and item in names:
            rows.append(eye[list(names).index(item)])
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(names):
            rows.append(eye[item])
        else:
            raise InputError(
                f"{where}: tasks[{i}]: {item!r:.60} is not a task name or index "
                f"(have {', '.join(names)})"
            )
    return np.stack(rows)


def _row(item: Any, index: int, dim: int, where: str) -> list[float]:
    """One task row of ``dim`` numbers (a bare number when ``dim`` is 1)."""
    values = [item] if dim == 1 and not isinstance(item, list) else item
    if not isinstance(values, list) or len(values) != dim:
        raise InputError(
            f"{where}: tasks must be rows of {dim} numbers; tasks[{index}] is {item!r:.60}"
        )
    return [_number(v, index, where) for v in values]


def _number(value: Any, index: int, where: str) -> float:
    """A number (YAML reads ``1e-3`` as text: numeric text counts as a number)."""
    bad = f"{where}: tasks must be numbers; tasks[{index}] holds {value!r:.60}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(bad)
    try:
        return float(value)
    except OverflowError:
        raise InputError(f"{where}: tasks[{index}] holds a number beyond float range") from None
    except ValueError:
        raise InputError(bad) from None


def task_is_feasible(spec: TaskSpec, env: Any, task: np.ndarray) -> bool:
    """False when a discrete task's success predicate already holds in the current
    state (an achievement cannot happen); environments without ``success()`` and
    other families accept every state."""
    success = getattr(env, "success", None)
    if not spec.is_discrete or success is None:
        return True
    return not bool(np.asarray(success())[int(np.argmax(task))])
