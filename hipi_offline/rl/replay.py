"""The replay buffer of an online run: an in-memory mirror of the run's store.

Every transition is held in memory (growable float arrays) for sampling, with its
episode index and step offset (for HER). Finished episodes are appended to the run's
``replay.h5``, a store in the project's format: ``steps/observations``,
``steps/actions``, ``steps/next_observations``, ``steps/rewards`` (under the
commanded task), the environment's step fields, and ``episodes/task``. A resumed run
rebuilds the mirror from the store's first episodes, exactly: the arrays are stored
in the dtypes the mirror holds. The episodes of one lockstep round (one per
environment) are appended in environment order, in one commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hipi_offline.rl.batch import Batch
from hipi_offline.store import create_store, open_store


class Replay:
    """Transitions in memory; satisfies :class:`~hipi_offline.rl.batch.EpisodeLookup`.

    Finished episodes fill rows ``[0, committed)`` one after the other. The episodes of
    the running lockstep round (one per environment, all of the round's length ``L``)
    are given ``L`` rows each after them, filled one step at a time: episode ``k``'s
    step ``t`` is row ``committed + k L + t``. ``size`` counts the rows stored so far,
    and a uniform draw over ``[0, size)`` is mapped onto them (the identity with one
    environment).
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.size = 0
        self.committed = 0
        self.capacity = max(1, capacity)
        self.arrays: dict[str, np.ndarray] = {}
        self.episode_starts: list[int] = []
        self.episode_lengths: list[int] = []
        self.episode_tasks: list[np.ndarray] = []
        self._table: tuple[np.ndarray, np.ndarray] | None = None
        """(tasks [E, task_dim], lengths [E]) of the E episodes, restacked only when
        episodes were added (sampling stays O(batch), not O(episodes))."""
        self.round_size = 0
        """Episodes of the running round (0: none running)."""
        self.round_length = 0
        self.round_filled = 0

    # ------------------------------------------------------------ writing
    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        self.capacity = max(need, 2 * self.capacity)
        for name, array in self.arrays.items():
            grown = np.zeros((self.capacity, *array.shape[1:]), array.dtype)
            grown[: len(array)] = array
            self.arrays[name] = grown

    def _create(self, row: Mapping[str, np.ndarray]) -> None:
        self.arrays = {
            name: np.zeros((self.capacity, *np.shape(value)), np.asarray(value).dtype)
            for name, value in row.items()
        }
        self.arrays["episode"] = np.zeros(self.capacity, np.int64)
        self.arrays["offset"] = np.zeros(self.capacity, np.int64)

    def start_round(self, tasks: Sequence[np.ndarray], length: int) -> None:
        """Start one episode per task, each of ``length`` steps (episode order = task order)."""
        if self.round_size:
            raise ValueError("Replay: a round is already running")
        self.round_size, self.round_length, self.round_filled = len(tasks), length, 0
        self._grow(self.committed + len(tasks) * length)
        for k, task in enumerate(tasks):
            self.episode_starts.append(self.committed + k * length)
            self.episode_lengths.append(0)
            self.episode_tasks.append(np.asarray(task, np.float32).reshape(-1))

    def add_round(self, rows: Sequence[Mapping[str, np.ndarray]]) -> None:
        """The next step of every running episode: ``steps/...`` names to arrays."""
        if len(rows) != self.round_size or self.round_filled >= self.round_length:
            raise ValueError("Replay: the step does not fit the running round")
        if not self.arrays:
            self._create(rows[0])
        t = self.round_filled
        first = len(self.episode_starts) - self.round_size
        for k, row in enumerate(rows):
            r = self.committed + k * self.round_length + t
            for name, value in row.items():
                self.arrays[name][r] = value
            self.arrays["episode"][r] = first + k
            self.arrays["offset"][r] = t
            self.episode_lengths[first + k] = t + 1
        self.round_filled = t + 1
        self.size = self.committed + self.round_size * self.round_filled

    def end_round(self) -> list[int]:
        """Finish the running round (every episode full); its episode indices."""
        if self.round_filled != self.round_length:
            raise ValueError("Replay: the round's episodes are not full")
        first = len(self.episode_starts) - self.round_size
        self.committed += self.round_size * self.round_length
        self.size = self.committed
        done = list(range(first, first + self.round_size))
        self.round_size = self.round_length = self.round_filled = 0
        return done

    def add_episode(self, steps: Mapping[str, np.ndarray], task: np.ndarray) -> None:
        """A whole finished episode (the rows of its step fields), between rounds."""
        rows = len(next(iter(steps.values())))
        if self.round_size:
            raise ValueError("Replay: a round is running")
        if not self.arrays:
            self._create({name: values[0] for name, values in steps.items()})
        self._grow(self.committed + rows)
        episode = len(self.episode_starts)
        stop = self.committed + rows
        for name, values in steps.items():
            self.arrays[name][self.committed : stop] = values
        self.arrays["episode"][self.committed : stop] = episode
        self.arrays["offset"][self.committed : stop] = np.arange(rows)
        self.episode_starts.append(self.committed)
        self.episode_lengths.append(rows)
        self.episode_tasks.append(np.asarray(task, np.float32).reshape(-1))
        self.committed = self.size = stop

    def episode_rows(self, episode: int) -> dict[str, np.ndarray]:
        """The ``steps/`` arrays of one episode."""
        start = self.episode_starts[episode]
        stop = start + self.episode_lengths[episode]
        return {n: a[start:stop] for n, a in self.arrays.items() if n.startswith("steps/")}

    # ------------------------------------------------------------ reading
    @property
    def episodes(self) -> int:
        return len(self.episode_starts)

    def lengths(self) -> np.ndarray:
        """int64 [episodes]: steps stored of each episode (running ones so far)."""
        return np.asarray(self.episode_lengths, np.int64)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Array rows of the stored steps ``index`` (each in ``[0, size)``)."""
        if not self.round_size or self.round_filled == 0:
            return index
        over = index - self.committed
        running = over >= 0
        k, t = np.divmod(over, self.round_filled)
        return np.where(running, self.committed + k * self.round_length + t, index)

    def sample(
        self, size: int, generator: torch.Generator, fields: Sequence[str], obs_key: str
    ) -> Batch:
        """``size`` transitions drawn uniformly with replacement (one draw from
        ``generator``); ``fields``: the family's step fields to carry."""
        index = self.rows(torch.randint(0, self.size, (size,), generator=generator).numpy())
        arrays = self.arrays
        episodes = arrays["episode"][index]
        if self._table is None or len(self._table[0]) != len(self.episode_tasks):
            self._table = (
                np.stack(self.episode_tasks),
                np.asarray(self.episode_lengths, np.int64),
            )
        tasks = self._table[0][episodes]
        lengths = self._table[1][episodes]  # committed episodes' lengths never change
        if self.round_size:
            lengths[episodes >= len(self.episode_starts) - self.round_size] = self.round_filled
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
            lengths=torch.from_numpy(lengths),
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


def append_episodes(
    path: Path, env: str, replay: Replay, episodes: Sequence[int], metadata: Mapping[str, Any]
) -> None:
    """Append finished episodes of the mirror to the run's store, in the given order, in
    one commit (the store is created by the first append)."""
    rows = [replay.episode_rows(e) for e in episodes]
    steps = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
    lengths = [replay.episode_lengths[e] for e in episodes]
    tasks = {"task": np.stack([replay.episode_tasks[e] for e in episodes])}
    if not path.exists():
        with create_store(path, env=env, metadata=dict(metadata)) as store:
            store.append_episodes(steps, lengths, tasks)
        return
    with open_store(path, "a") as store:
        store.append_episodes(steps, lengths, tasks)


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


def store_metadata(path: Path) -> dict[str, Any]:
    """The free metadata of the run's store (its attributes less the format's own)."""
    with open_store(path) as store:
        attrs = dict(store.attrs)
    return {k: v for k, v in attrs.items() if k not in ("hipi_offline_format", "env", "created")}


def rewrite_store(path: Path, env: str, replay: Replay, metadata: Mapping[str, Any]) -> None:
    """Replace the store by the mirror's episodes (drops episodes appended after the
    checkpoint a killed run resumes from; the new store is moved into place whole)."""
    if replay.episodes == 0:
        path.unlink(missing_ok=True)
        return
    lengths = replay.lengths()
    steps = {n: a[: replay.size] for n, a in replay.arrays.items() if n.startswith("steps/")}
    with create_store(path, env=env, metadata=dict(metadata), overwrite=True) as store:
        store.append_episodes(steps, lengths.tolist(), {"task": np.stack(replay.episode_tasks)})
