"""The replay buffer of an online run: an in-memory mirror of the run's store.

Every transition is held in memory (growable float arrays) for sampling, with its
episode index and step offset (for HER). Finished episodes are appended to the run's
``replay.h5``, a store in the project's format: ``steps/observations``,
``steps/actions``, ``steps/next_observations``, ``steps/rewards`` (under the
commanded task), the environment's step fields, and ``episodes/task``. A resumed run
rebuilds the mirror from the store's first episodes, exactly: the arrays are stored
in the dtypes the mirror holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hipi_offline.rl.batch import Batch
from hipi_offline.store import create_store, open_store


class Replay:
    """Transitions in memory; satisfies :class:`~hipi_offline.rl.batch.EpisodeLookup`."""

    def __init__(self, capacity: int = 1024) -> None:
        self.size = 0
        self.capacity = max(1, capacity)
        self.arrays: dict[str, np.ndarray] = {}
        self.episode_starts: list[int] = []
        self.episode_tasks: list[np.ndarray] = []

    # ------------------------------------------------------------ writing
    def _grow(self, rows: int) -> None:
        need = self.size + rows
        if need <= self.capacity:
            return
        self.capacity = max(need, 2 * self.capacity)
        for name, array in self.arrays.items():
            grown = np.zeros((self.capacity, *array.shape[1:]), array.dtype)
            grown[: self.size] = array[: self.size]
            self.arrays[name] = grown

    def start_episode(self, task: np.ndarray) -> None:
        self.episode_starts.append(self.size)
        self.episode_tasks.append(np.asarray(task, np.float32).reshape(-1))

    def add(self, row: Mapping[str, np.ndarray]) -> None:
        """One transition: ``steps/...`` names to arrays of one step."""
        if not self.arrays:
            self.arrays = {
                name: np.zeros((self.capacity, *np.shape(value)), np.asarray(value).dtype)
                for name, value in row.items()
            }
            self.arrays["episode"] = np.zeros(self.capacity, np.int64)
            self.arrays["offset"] = np.zeros(self.capacity, np.int64)
        self._grow(1)
        for name, value in row.items():
            self.arrays[name][self.size] = value
        episode = len(self.episode_starts) - 1
        self.arrays["episode"][self.size] = episode
        self.arrays["offset"][self.size] = self.size - self.episode_starts[episode]
        self.size += 1

    def add_episode(self, steps: Mapping[str, np.ndarray], task: np.ndarray) -> None:
        """A whole stored episode (the rows of its step fields)."""
        rows = len(next(iter(steps.values())))
        self.start_episode(task)
        for t in range(rows):
            self.add({name: values[t] for name, values in steps.items()})

    def episode_rows(self, episode: int) -> dict[str, np.ndarray]:
        """The ``steps/`` arrays of one episode."""
        start = self.episode_starts[episode]
        stop = (
            self.episode_starts[episode + 1]
            if episode + 1 < len(self.episode_starts)
            else self.size
        )
        return {n: a[start:stop] for n, a in self.arrays.items() if n.startswith("steps/")}

    # ------------------------------------------------------------ reading
    @property
    def episodes(self) -> int:
        return len(self.episode_starts)

    def lengths(self) -> np.ndarray:
        """int64 [episodes]: steps stored of each episode (the running one so far)."""
        ends = np.array([*self.episode_starts[1:], self.size], np.int64)
        return ends - np.asarray(self.episode_starts, np.int64)

    def sample(
        self, size: int, generator: torch.Generator, fields: Sequence[str], obs_key: str
    ) -> Batch:
        """``size`` transitions drawn uniformly with replacement (one draw from
        ``generator``); ``fields``: the family's step fields to carry."""
        index = torch.randint(0, self.size, (size,), generator=generator).numpy()
        arrays = self.arrays
        episodes = arrays["episode"][index]
        tasks = np.stack(self.episode_tasks)[episodes]
        return Batch(
            obs=torch.from_numpy(arrays[obs_key][index]),
            actions=torch.from_numpy(arrays["steps/actions"][index]),
            rewards=torch.from_numpy(arrays["steps/rewards"][index]),
            next_obs=torch.from_numpy(arrays["steps/next_observations"][index]),
            discounts=torch.ones(size, dtype=torch.float64),
            tasks=torch.from_numpy(tasks),
            fields={name: torch.from_numpy(arrays[name][index]) for name in fields},
            episodes=torch.from_numpy(episodes),
            steps=torch.from_numpy(arrays["offset"][index]),
            lengths=torch.from_numpy(self.lengths()[episodes]),
        )

    def step_fields(
        self, episodes: Tensor, steps: Tensor, names: Sequence[str]
    ) -> Mapping[str, Tensor]:
        starts = np.asarray(self.episode_starts, np.int64)
        lengths = self.lengths()
        ep, st = episodes.numpy(), steps.numpy()
        if np.any((st < 0) | (st >= lengths[ep])):
            raise ValueError("Replay: a step lies outside its episode")
        rows = starts[ep] + st
        return {n: torch.from_numpy(self.arrays[n][rows]) for n in names}


def append_episode(path: Path, env: str, steps: Mapping[str, np.ndarray], task: np.ndarray) -> None:
    """Append one finished episode to the run's store (created by the first one)."""
    lengths = [len(next(iter(steps.values())))]
    episodes = {"task": np.asarray(task, np.float32).reshape(1, -1)}
    if not path.exists():
        with create_store(path, env=env, metadata={"made_by": "train-rl"}) as store:
            store.append_episodes(steps, lengths, episodes)
        return
    with open_store(path, "a") as store:
        store.append_episodes(steps, lengths, episodes)


def load_replay(path: Path, episodes: int, capacity: int) -> Replay:
    """The mirror of the first ``episodes`` episodes of the run's store."""
    replay = Replay(capacity)
    if episodes == 0:
        return replay
    with open_store(path) as store:
        if store.num_episodes < episodes:
            raise ValueError(f"{path}: holds {store.num_episodes} episodes, expected {episodes}")
        names = sorted(store.step_fields())
        stop = int(store.ends[episodes - 1])
        data = {name: store.read_steps(name, 0, stop) for name in names}
        tasks = store.read_episode_field("episodes/task")[:episodes]
        starts = store.starts[:episodes]
        ends = store.ends[:episodes]
    for e in range(episodes):
        replay.add_episode({n: d[starts[e] : ends[e]] for n, d in data.items()}, tasks[e])
    return replay


def rewrite_store(path: Path, env: str, replay: Replay) -> None:
    """Replace the store by the mirror's episodes (drops episodes appended after the
    checkpoint a killed run resumes from; the new store is moved into place whole)."""
    if replay.episodes == 0:
        path.unlink(missing_ok=True)
        return
    lengths = replay.lengths()
    steps = {n: a[: replay.size] for n, a in replay.arrays.items() if n.startswith("steps/")}
    with create_store(path, env=env, metadata={"made_by": "train-rl"}, overwrite=True) as store:
        store.append_episodes(steps, lengths.tolist(), {"task": np.stack(replay.episode_tasks)})
