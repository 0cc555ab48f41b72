"""The reacher's expert: inverse kinematics to the goal, then a joint-space PD law."""

from __future__ import annotations

from typing import Any

import numpy as np

from hipi_offline.envs.base import TaskEnv
from hipi_offline.envs.reacher import LINK, MAX_REACH, MIN_REACH, WRIST_LIMIT
from hipi_offline.experts.base import float_option, register_expert, unknown_options

KP = np.array([4.0, 1.0])
"""Proportional gains (control units per radian) of the shoulder and the wrist."""
KD = np.array([0.6, 0.12])
"""Damping gains (control units per radian per second)."""


def wrap(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def inverse_kinematics(goal: np.ndarray) -> np.ndarray:
    """The two joint-angle solutions [2 (wrist +, wrist -), 2] that put the fingertip at
    ``goal`` (x, y), its radius first clamped to the reachable annulus
    [:data:`MIN_REACH`, :data:`MAX_REACH`] (a goal at the shoulder points along +x)."""
    goal = np.asarray(goal, np.float64).reshape(2)
    radius = float(np.hypot(goal[0], goal[1]))
    heading = float(np.arctan2(goal[1], goal[0])) if radius > 0 else 0.0
    radius = min(max(radius, MIN_REACH), MAX_REACH)
    # law of cosines: r^2 = 2 L^2 (1 + cos q1); the shoulder sits half the wrist angle back
    wrist = float(np.arccos(np.clip(radius**2 / (2 * LINK**2) - 1.0, -1.0, 1.0)))
    wrist = min(wrist, WRIST_LIMIT)
    return np.array([[heading - wrist / 2, wrist], [heading + wrist / 2, -wrist]])


class ReacherIKExpert:
    """Inverse kinematics to the goal (the task's first two entries), keeping the
    solution nearer the arm's configuration at the episode's start, tracked by a PD
    law on the joint angles, plus Gaussian noise of std ``noise`` on the controls
    (seeded per episode). Reads only the observation (cos, sin, joint velocities)."""

    def __init__(self, noise: float = 0.1) -> None:
        self.noise = float_option("noise", noise, 0.0, 2.0)
        self.solutions = inverse_kinematics(np.zeros(2))
        self.target: np.ndarray | None = None
        self.rng = np.random.default_rng(0)

    def reset(self, env: TaskEnv, task: np.ndarray, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.solutions = inverse_kinematics(np.asarray(task, np.float64).reshape(-1)[:2])
        self.target = None  # chosen at the first observation

    def choose(self, joints: np.ndarray) -> np.ndarray:
        """The IK solution whose larger joint travel from ``joints`` is the smaller
        (the shoulder turns either way, the wrist within its limits)."""
        travel = np.abs(self.error(self.solutions, joints)).max(axis=1)
        return self.solutions[int(np.argmin(travel))]

    @staticmethod
    def error(target: np.ndarray, joints: np.ndarray) -> np.ndarray:
        """Joint-angle error: the shoulder's wrapped, the wrist's as is (it cannot pass
        through +-pi)."""
        diff = np.asarray(target, np.float64) - joints
        return np.stack([wrap(diff[..., 0]), diff[..., 1]], axis=-1)

    @staticmethod
    def joints(observation: np.ndarray) -> np.ndarray:
        """Joint angles [2] from an observation's cosines and sines."""
        obs = np.asarray(observation, np.float64)
        return np.arctan2(obs[2:4], obs[0:2])

    def act(self, env: TaskEnv, observation: np.ndarray) -> np.ndarray:
        obs = np.asarray(observation, np.float64)
        joints = self.joints(obs)
        if self.target is None:
            self.target = self.choose(joints)
        error = self.error(self.target, joints)
        control = KP * error - KD * obs[4:6] + self.noise * self.rng.standard_normal(2)
        return np.clip(control, env.info.action_low, env.info.action_high)


@register_expert("reacher", "ik", default=True)
def ik(**options: Any) -> ReacherIKExpert:
    """``--expert ik [--expert noise=X]``."""
    unknown_options("ik", options, ("noise",))
    return ReacherIKExpert(**options)
