"""The minibatch record the RL learner and the relabeling strategies share, and an
in-memory table of episodes that answers HER's look-ups of other steps.

A :class:`Batch` holds B transitions (s_t, a_t, r_t, s_{t+1}) with their commanded
tasks, the step fields the task family's ``reward`` reads (rows of step t, so that
``family.reward(batch.fields, tasks)`` is the reward of each transition under each
task), and where each transition lies: its episode, its offset in the episode and
the episode's length. HER strategies read the achieved goal of other steps of the
same episode through an :class:`EpisodeLookup` (a replay buffer, a store, or
:class:`EpisodeTable`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """B transitions; every tensor's first dimension is B.

    ``discounts`` is 0 where s_{t+1} is terminal and 1 otherwise (the learner applies
    gamma; a time-limit truncation keeps 1). ``rewards`` are the rewards under
    ``tasks``. ``episodes``, ``steps`` and ``lengths`` (int64) are needed by HER only:
    the episode's index for the lookup, the step's offset in it (0-based) and the
    number of its steps (for a running episode, the steps stored so far)."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    discounts: Tensor
    tasks: Tensor
    fields: Mapping[str, Tensor]
    episodes: Tensor | None = None
    steps: Tensor | None = None
    lengths: Tensor | None = None

    def __post_init__(self) -> None:
        size = self.obs.shape[0]
        named = {
            "actions": self.actions,
            "rewards": self.rewards,
            "next_obs": self.next_obs,
            "discounts": self.discounts,
            "tasks": self.tasks,
            **{f"fields[{k}]": v for k, v in self.fields.items()},
        }
        for name in ("episodes", "steps", "lengths"):
            value = getattr(self, name)
            if value is not None:
                named[name] = value
        for name, value in named.items():
            if value.shape[0] != size:
                raise ValueError(f"Batch.{name}: {value.shape[0]} rows, obs has {size}")
        if self.tasks.ndim != 2 or self.rewards.ndim != 1 or self.discounts.ndim != 1:
            raise ValueError("Batch: tasks must be [B, task_dim], rewards and discounts [B]")

    @property
    def size(self) -> int:
        return int(self.obs.shape[0])

    def with_tasks(self, tasks: Tensor, rewards: Tensor) -> Batch:
        """The same transitions under other tasks and their rewards."""
        return replace(self, tasks=tasks, rewards=rewards)


class EpisodeLookup(Protocol):
    """Step fields of arbitrary (episode, step) pairs, for HER's achieved goals."""

    def step_fields(
        self, episodes: Tensor, steps: Tensor, names: Sequence[str]
    ) -> Mapping[str, Tensor]:
        """The named step fields at rows (episodes[n], steps[n]), each [n, ...]."""
        ...


class EpisodeTable:
    """Episodes' step fields held in memory, concatenated: episode e's step t is row
    ``starts[e] + t``. Satisfies :class:`EpisodeLookup`."""

    def __init__(self, episodes: Sequence[Mapping[str, Tensor]]) -> None:
        if not episodes:
            raise ValueError("EpisodeTable: no episodes")
        names = sorted(episodes[0])
        lengths = []
        for number, episode in enumerate(episodes):
            if sorted(episode) != names:
                raise ValueError(f"EpisodeTable: episode {number} has other fields than 0")
            rows = {int(v.shape[0]) for v in episode.values()}
            if len(rows) != 1:
                raise ValueError(f"EpisodeTable: episode {number} fields differ in length")
            lengths.append(rows.pop())
        self.lengths = torch.tensor(lengths, dtype=torch.int64)
        self.starts = torch.cumsum(self.lengths, 0) - self.lengths
        self.fields = {n: torch.cat([e[n] for e in episodes]) for n in names}

    def step_fields(
        self, episodes: Tensor, steps: Tensor, names: Sequence[str]
    ) -> Mapping[str, Tensor]:
        lengths = self.lengths[episodes]
        if bool(((steps < 0) | (steps >= lengths)).any()):
            raise ValueError("EpisodeTable: a step lies outside its episode")
        rows = self.starts[episodes] + steps
        return {n: self.fields[n][rows] for n in names}
