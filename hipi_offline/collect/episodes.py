"""Work units of data collection: each returns finished episodes, deterministically
from (environment, seed, unit index), whatever process runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hipi_offline.envs.base import TaskEnv, env_task_spec, make_env
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


class _Worker:
    """Per-process cache of the environment, its expert and its task spec."""

    def __init__(self, env_name: str) -> None:
        self.env: TaskEnv = make_env(env_name)
        self.expert: Expert = make_expert(env_name)
        self.spec: TaskSpec = env_task_spec(self.env)


_WORKERS: dict[str, _Worker] = {}


def _worker(env_name: str) -> _Worker:
    if env_name not in _WORKERS:
        _WORKERS[env_name] = _Worker(env_name)
    return _WORKERS[env_name]


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
    stacked = {k: np.stack([np.asarray(f[k]) for f in fields]) for k in fields[0]}
    return Episode(
        np.asarray(observations, np.float32),
        np.asarray(actions, np.float32),
        stacked,
        {"task": np.asarray(task, np.float32)},
    )


def commanded_unit(env_name: str, steps: int, seed: int, unit: int) -> list[Episode]:
    """One episode of the expert commanded a task drawn from the environment's prior."""
    worker = _worker(env_name)
    task_seq, env_seq = unit_seeds(seed, unit).spawn(2)
    task = worker.spec.prior.sample(1, np.random.default_rng(task_seq))[0].astype(np.float32)
    env_seed = int(env_seq.generate_state(1)[0])
    return [_run_commanded(worker, task, steps, env_seed)]


def play_unit(env_name: str, steps: int, seed: int, unit: int, windows: int) -> list[Episode]:
    """A play stream of ``windows * steps`` steps cut into consecutive windows; each
    window's task is the sub-task being played at its last step."""
    from hipi_offline.experts.desk_play import play_stream

    worker = _worker(env_name)
    stream_seed = int(unit_seeds(seed, unit).generate_state(1)[0])
    obs, actions, fields, subtask = play_stream(
        worker.env, worker.expert, windows * steps, stream_seed
    )
    episodes = []
    for w in range(windows):
        rows = slice(w * steps, (w + 1) * steps)
        episodes.append(
            Episode(
                np.asarray(obs[rows], np.float32),
                np.asarray(actions[rows], np.float32),
                {k: np.asarray(v[rows]) for k, v in fields.items()},
                {
                    "task": np.asarray(subtask[rows][-1], np.int64),
                    "stream": np.asarray(unit, np.int64),
                    "window": np.asarray(w, np.int64),
                },
            )
        )
    return episodes


PLAY_ENVS = {"desk"}


def run_unit(args: tuple[str, int, int, int, int]) -> list[Episode]:
    """Picklable entry point for worker processes: (env, steps, seed, unit, windows)."""
    env_name, steps, seed, unit, windows = args
    _single_thread()
    if env_name in PLAY_ENVS:
        return play_unit(env_name, steps, seed, unit, windows)
    return commanded_unit(env_name, steps, seed, unit)


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
