"""The point-mass domain's expert: straight toward the goal, with seeded noise."""

from __future__ import annotations

from typing import Any

import numpy as np

from hipi_offline.envs.base import TaskEnv
from hipi_offline.envs.pointmass import MAX_STEP
from hipi_offline.experts.base import float_option, register_expert, unknown_options


class GreedyExpert:
    """Moves straight toward the goal (the task's first two entries), at most
    :data:`~hipi_offline.envs.pointmass.MAX_STEP` per axis, plus Gaussian noise of std
    ``noise`` (seeded per episode)."""

    def __init__(self, noise: float = 0.02) -> None:
        self.noise = float_option("noise", noise, 0.0, 1.0)
        self.goal = np.zeros(2)
        self.rng = np.random.default_rng(0)

    def reset(self, env: TaskEnv, task: np.ndarray, seed: int) -> None:
        self.goal = np.asarray(task, np.float64).reshape(-1)[:2]
        self.rng = np.random.default_rng(seed)

    def act(self, env: TaskEnv, observation: np.ndarray) -> np.ndarray:
        toward = self.goal - np.asarray(observation, np.float64)
        action = np.clip(toward, -MAX_STEP, MAX_STEP) + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -MAX_STEP, MAX_STEP)


@register_expert("pointmass", "greedy", default=True)
def greedy(**options: Any) -> GreedyExpert:
    """``--expert greedy [--expert noise=X]``."""
    unknown_options("greedy", options, ("noise",))
    return GreedyExpert(**options)
