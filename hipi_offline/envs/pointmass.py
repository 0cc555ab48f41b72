"""A 2-D point mass navigating a square: the cheap goal-reaching domain (pure numpy).

* State: the position p in the square [-1, 1]^2 (no velocity).
* Action: a displacement in [-0.1, 0.1]^2 (clipped); the new position is p + a,
  clipped to the square. With ``walls="center"`` a wall on x = 0 from the bottom
  edge up to y = 0.4 blocks the horizontal part of a move that would cross it
  (the mass slides along it), so the two halves connect only through the gap at
  the top.
* Episodes: 50 steps. Reset: p uniform in the square (seeded).
* Observation float32 [2]: the position.
* Step fields, measured after the action:

  ``infos/position``  float64 [2]  the position after the action

The task reward (specs ``pointmass-goal`` and ``pointmass-goal-sparse``: a ``goal``
family over ``steps/infos/position``) is computed by the task family from this field,
never here. The ``greedy`` expert moves straight toward the commanded goal (plus
seeded Gaussian noise), so ``collect`` can record offline data too.
"""

from __future__ import annotations

import numpy as np

from hipi_offline.envs.base import EnvInfo, StepResult, register, registered_info
from hipi_offline.errors import InputError

HALF_WIDTH = 1.0
"""The square is [-HALF_WIDTH, HALF_WIDTH]^2."""
MAX_STEP = 0.1
"""Largest displacement per step along each axis."""
WALL_TOP = 0.4
"""The center wall (``walls="center"``) spans x = 0, y in [-1, WALL_TOP]."""
DEFAULT_STEPS = 50
WALLS = ("none", "center")


@register("pointmass", task_spec="pointmass-goal")
class PointMassEnv:
    """The point mass; see the module docstring."""

    def __init__(self, walls: str = "none") -> None:
        if walls not in WALLS:
            raise InputError(f"walls: expected one of {', '.join(WALLS)}, got {walls!r}")
        self.walls = walls
        self.info: EnvInfo = registered_info(
            PointMassEnv,
            observation_dim=2,
            action_dim=2,
            action_low=np.full(2, -MAX_STEP),
            action_high=np.full(2, MAX_STEP),
            control_dt=1.0,
            default_steps=DEFAULT_STEPS,
        )
        self.position = np.zeros(2)

    def reset(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        self.position = rng.uniform(-HALF_WIDTH, HALF_WIDTH, 2)
        return self.position.astype(np.float32)

    def step(self, action: np.ndarray) -> StepResult:
        move = np.clip(np.asarray(action, np.float64).reshape(2), -MAX_STEP, MAX_STEP)
        self.position = self.moved(self.position, move)
        return StepResult(
            observation=self.position.astype(np.float32),
            fields={"infos/position": self.position.copy()},
        )

    def moved(self, position: np.ndarray, move: np.ndarray) -> np.ndarray:
        """Where ``move`` takes the mass from ``position`` (walls and edges included)."""
        new = position + move
        if self.walls == "center" and (position[0] < 0) != (new[0] < 0):
            t = position[0] / (position[0] - new[0])
            if position[1] + t * move[1] <= WALL_TOP:  # crosses the wall, not the gap
                new[0] = position[0]
        return np.clip(new, -HALF_WIDTH, HALF_WIDTH)

    def render(self, width: int = 320, height: int = 240) -> np.ndarray:
        """uint8 [height, width, 3]: the square in white, the wall grey, the mass red."""
        image = np.full((height, width, 3), 255, np.uint8)

        def pixel(x: float, y: float) -> tuple[int, int]:
            col = int(round((x + HALF_WIDTH) / (2 * HALF_WIDTH) * (width - 1)))
            row = int(round((HALF_WIDTH - y) / (2 * HALF_WIDTH) * (height - 1)))
            return row, col

        if self.walls == "center":
            top, col = pixel(0.0, WALL_TOP)
            image[top:, max(col - 1, 0) : col + 2] = 128
        row, col = pixel(*self.position)
        radius = max(2, min(width, height) // 40)
        image[max(row - radius, 0) : row + radius + 1, max(col - radius, 0) : col + radius + 1] = (
            200,
            30,
            30,
        )
        return image

    def close(self) -> None:
        pass
