"""Work units of data collection: each returns finished episodes, deterministically
from (environment, seed, unit index), whatever process runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hipi_offline.envs.base import TaskEnv, env_entry, env_task_spec, make_env, stack_fields
from hipi_offline.experts.base import Expert, make_expert
from hipi_offline.tasks.spec import TaskSpec


@dataclass(frozen=True, repr=False)
class Episode:
    """One collected episode: rows of its steps and its per-episode fields."""

    observations: np.ndarray  # [T, obs_dim]
    actions: np.ndarray  # [T, act_dim]
    fields: dict[str, np.ndarray]  # name (without "steps/") -> [T, ...]
    episode_fields: dict[str, np.ndarray]  # name (without "episodes/") -> one row

    def __repr__(self) -> str:
        return f"Episode(steps={len(self.actions)}, fields={sorted(self.fields)})"


def unit_seeds(seed: int, unit: int) -> np.random.SeedSequence:
    """The seed sequence of one work unit (independent of workers and resumes)."""
    return np.random.SeedSequence([seed, unit])


ExpertOptions = tuple[tuple[str, Any], ...]
"""Options of an environment's expert as sorted (name, value) pairs (hashable)."""
ExpertChoice = tuple[str | None, ExpertOptions]
"""An expert's name (None: the environment's default) and its options."""
DEFAULT_EXPERT: ExpertChoice = (None, ())


class _Worker:
    """Per-process cache of the environment, its expert and its task spec."""

    def __init__(self, env_name: str, expert: ExpertChoice = DEFAULT_EXPERT) -> None:
        self.env: TaskEnv = make_env(env_name)
        self.expert: Expert = make_expert(env_name, expert[0], **dict(expert[1]))
        self.spec: TaskSpec = env_task_spec(self.env)


_WORKERS: dict[tuple[str, ExpertChoice], _Worker] = {}


def _worker(env_name: str, expert: ExpertChoice = DEFAULT_EXPERT) -> _Worker:
    if (env_name, expert) not in _WORKERS:
        _WORKERS[env_name, expert] = _Worker(env_name, expert)
    return _WORKERS[env_name, expert]


def _run_commanded(worker: _Worker, task: np.ndarray, steps: int, seed: int) -> Episode:
    env, expert = worker.env, worker.expert
    obs = env.reset(seed)
    expert.reset(env, task, seed)
    observations, actions, fields = [], [], []
    for _ in range(steps):
        action = np.asarray(expert.act(env, obs), dtype=np.float32)
        result = env.step(action)
        observations.append(obs)
        actions.append(np.clip(action, env.info.action_low, env.info.action_high))
        fields.append(result.fields)
        obs = result.observation
    return Episode(
        np.asarray(observations, np.float32),
        np.asarray(actions, np.float32),
        stack_fields(fields),
        {"task": np.asarray(task, np.float32)},
    )


def commanded_unit(
    env_name: str, steps: int, seed: int, unit: int, expert: ExpertChoice = DEFAULT_EXPERT
) -> list[Episode]:
    """One episode of the expert (name and options) commanded a task drawn from the
    environment's prior."""
    worker = _worker(env_name, expert)
    task_seq, env_seq = unit_seeds(seed, unit).spawn(2)
    task = worker.spec.prior.sample(1, np.random.default_rng(task_seq))[0].astype(np.float32)
    env_seed = int(env_seq.generate_state(1)[0])
    return [_run_commanded(worker, task, steps, env_seed)]


def play_unit(
    env_name: str,
    steps: int,
    seed: int,
    unit: int,
    windows: int,
    expert: ExpertChoice = DEFAULT_EXPERT,
) -> list[Episode]:
    """``windows`` windows of ``steps`` steps cut from one play stream, each ending at
    the completion of a sub-task and labeled with that sub-task.

    A completion is a stream step that achieves the sub-task being played (its
    success predicate switches from false to true). Windows are chosen greedily from
    the stream's start: window w ends at the first completion row ``e_w`` with
    ``e_w >= e_{w-1} + steps`` (``e_0 >= steps - 1``) and holds rows
    ``e_w - steps + 1 .. e_w``. So windows never overlap and appear in stream order;
    the rows between a window and the next (the wait for a completion) are skipped,
    and a window may also hold earlier completions (sub-tasks shorter than
    ``steps``). The task of a window is the sub-task played at its last step, which
    that step completes. The stream is recorded in pieces until ``windows`` windows
    are found; the choice depends only on the stream's rows, never on the pieces, so
    a unit is deterministic for (environment, seed, unit).

    Episode fields: ``task`` (sub-task index), ``stream`` (the unit), ``window``
    (0, 1, ... in stream order) and ``stream_offset`` (stream row of the first step).
    """
    stream, ends = play_recording(env_name, steps, seed, unit, windows, expert)
    return play_windows(stream, ends, steps)


def play_recording(
    env_name: str,
    steps: int,
    seed: int,
    unit: int,
    windows: int,
    expert: ExpertChoice = DEFAULT_EXPERT,
) -> tuple[Episode, list[int]]:
    """The play stream of a unit from its first row to its last window's end, as one
    episode, and the stream rows where its windows end (see :func:`play_unit`).

    The stream's step fields are the environment's plus ``infos/subtask`` (int64, the
    sub-task played at each step); its episode field ``stream`` is the unit.
    """
    from hipi_offline.experts.desk_play import PlayStream

    worker = _worker(env_name, expert)
    stream_seed = int(unit_seeds(seed, unit).generate_state(1)[0])
    stream = PlayStream(worker.env, worker.expert, stream_seed)
    limit = 20 * windows * steps + 5000  # a script that stops completing sub-tasks
    pieces, ends, next_end = [], [], steps - 1
    while len(ends) < windows:
        if stream.steps >= limit:
            raise RuntimeError(
                f"{env_name} play stream {unit}: {len(ends)} of {windows} windows "
                f"after {stream.steps} steps (sub-tasks are not being completed)"
            )
        offset = stream.steps
        piece = stream.record(2 * steps)
        pieces.append(piece)
        for row in offset + np.flatnonzero(piece.completed):
            if row >= next_end and len(ends) < windows:
                ends.append(int(row))
                next_end = int(row) + steps
    used = ends[-1] + 1
    fields = {k: np.concatenate([p.fields[k] for p in pieces])[:used] for k in pieces[0].fields}
    fields[SUBTASK_FIELD] = np.concatenate([p.subtask for p in pieces])[:used]
    recording = Episode(
        np.concatenate([p.observations for p in pieces])[:used].astype(np.float32),
        np.concatenate([p.actions for p in pieces])[:used].astype(np.float32),
        fields,
        {"stream": np.asarray(unit, np.int64)},
    )
    return recording, ends


SUBTASK_FIELD = "infos/subtask"
"""Step field of a play stream: the sub-task index played at each step."""


def play_windows(stream: Episode, ends: list[int], steps: int) -> list[Episode]:
    """The windows of ``steps`` rows of a play stream ending at rows ``ends``."""
    unit = stream.episode_fields["stream"]
    subtask = stream.fields[SUBTASK_FIELD]
    episodes = []
    for w, end in enumerate(ends):
        rows = slice(end - steps + 1, end + 1)
        episodes.append(
            Episode(
                stream.observations[rows],
                stream.actions[rows],
                {k: v[rows] for k, v in stream.fields.items() if k != SUBTASK_FIELD},
                {
                    "task": np.asarray(subtask[end], np.int64),
                    "stream": np.asarray(unit, np.int64),
                    "window": np.asarray(w, np.int64),
                    "stream_offset": np.asarray(end - steps + 1, np.int64),
                },
            )
        )
    return episodes


@dataclass(frozen=True, repr=False)
class UnitResult:
    """What one work unit returns: its episodes and, when asked, its play stream."""

    episodes: list[Episode]
    stream: Episode | None = None


def run_unit(args: tuple[str, int, int, int, int, bool, ExpertChoice]) -> UnitResult:
    """Picklable entry point for worker processes:
    (env, steps, seed, unit, windows, keep the play stream, expert name and options)."""
    env_name, steps, seed, unit, windows, keep_stream, expert = args
    _single_thread()
    if env_entry(env_name).plays:
        stream, ends = play_recording(env_name, steps, seed, unit, windows, expert)
        return UnitResult(play_windows(stream, ends, steps), stream if keep_stream else None)
    return UnitResult(commanded_unit(env_name, steps, seed, unit, expert))


def _single_thread() -> None:
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def close_workers() -> None:
    """Close the cached environments of this process."""
    for worker in _WORKERS.values():
        worker.env.close()
    _WORKERS.clear()


def batch_arrays(episodes: list[Episode]) -> dict[str, Any]:
    """Step and episode arrays of several episodes, concatenated for one append."""
    steps = {
        "observations": np.concatenate([e.observations for e in episodes]),
        "actions": np.concatenate([e.actions for e in episodes]),
    }
    for name in episodes[0].fields:
        steps[name] = np.concatenate([e.fields[name] for e in episodes])
    per_episode = {
        name: np.stack([e.episode_fields[name] for e in episodes])
        for name in episodes[0].episode_fields
    }
    return {"steps": steps, "lengths": [len(e.actions) for e in episodes], "episodes": per_episode}
