"""Scripted play on the desk: long, unsegmented, multi-task data like human play.

:class:`DeskPlay` keeps choosing a random *feasible* sub-task (one whose success
predicate, :data:`hipi_offline.envs.desk.SUCCESS`, is currently false) and carries it
out with noisy waypoints: rise to a safe height, move above the contact point,
descend, push or pull until the skill's goal is reached (a little past the success
predicate), retreat upwards. Commanded one task (``reset(env, task=one_hot, seed)``)
it does that task once and then holds still. ``current_task`` is the index (in the
spec's task order) of the sub-task being done.

:class:`PlayStream` records a play stream piece by piece, marking the steps that
*complete* a sub-task (achieve the sub-task being played); the collector cuts the
stream into windows that end at those steps. :func:`play_stream` records one piece.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hipi_offline.envs.base import env_task_spec, stack_fields
from hipi_offline.envs.desk import (
    BUTTON_XY,
    DOOR_RANGE,
    DOOR_X0,
    DRAWER_RANGE,
    DRAWER_X,
    TASK_NAMES,
    DeskEnv,
)
from hipi_offline.experts.base import float_option, register_expert, unknown_options
from hipi_offline.tasks.spec import TaskSpec

TASKS = TASK_NAMES
"""Sub-tasks in the order of the environment's tasks and of the ``desk-discrete``
spec (checked at reset)."""

SAFE_Z = 0.17
"""Transit height: above every piece of furniture."""
BLOCK_GOALS = {
    "block_left": (-0.2, -0.05),
    "block_right": (0.2, -0.05),
    "block_forward": (0.0, 0.17),
}
"""Where each block skill pushes the block (x, y); each satisfies only its own predicate."""
BLOCK_AXES = {"block_left": (-1.0, 0.0), "block_right": (1.0, 0.0), "block_forward": (0.0, 1.0)}
"""The direction in which each block skill's goal must be reached (then it stops)."""
DRAWER_GAP = 0.031
"""Distance in front of the drawer face at which the end effector hooks the handle."""
DOOR_SIDE = 0.045
"""Lateral distance from the door handle's centre at which the end effector pushes it."""
DOOR_Y = 0.25
WORK_Z = {"drawer": 0.05, "door": 0.06, "button": 0.075, "block": 0.025}
BLOCK_SAFE_Z = 0.09
"""Height at which block skills re-approach the block (clear of it, not of furniture)."""
MAX_SUBTASK_STEPS = 160
"""Play gives up a sub-task after this many steps (rarely needed)."""
MAX_DESCENT_STEPS = 30
"""A descent that takes longer is blocked (e.g. a contact point above the open drawer):
in play the skill retreats and ends unachieved; a commanded skill tries again."""


@dataclass
class _Skill:
    """One sub-task in progress: its noisy parameters and its phase."""

    task: int
    speed: float
    jitter: np.ndarray
    phase: str = "up"
    steps: int = 0
    descent_steps: int = 0
    travel_z: float = SAFE_Z
    push_dir: np.ndarray | None = None

    @property
    def name(self) -> str:
        return TASKS[self.task]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


class DeskPlay:
    """The desk's scripted expert (play mode or one commanded task)."""

    def __init__(self, noise: float = 0.1) -> None:
        self.noise = noise
        self.current_task = -1
        self._rng = np.random.default_rng(0)
        self._commanded: int | None = None
        self._skill: _Skill | None = None
        self._spec: TaskSpec | None = None

    # --- Expert interface ------------------------------------------------------------------

    def reset(self, env: DeskEnv, task: np.ndarray | None, seed: int) -> None:
        """Play (``task`` None) or carry out the one task ``task`` (one-hot, else argmax)."""
        if self._spec is None:
            self._spec = env_task_spec(env)
            if self._spec.task_names != TASKS:
                names = self._spec.task_names
                raise ValueError(f"desk expert: spec tasks {names} differ from {TASKS}")
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
        self._commanded = None if task is None else int(np.argmax(np.asarray(task)))
        self._skill = None
        self.current_task = -1 if task is None else self._commanded
        if self._commanded is not None and not self.satisfied(env)[self._commanded]:
            self._skill = self._start(self._commanded)

    def act(self, env: DeskEnv, observation: np.ndarray | None = None) -> np.ndarray:
        """The action for the current state of ``env`` (float32 [3] in [-1, 1])."""
        skill, previous = self._skill, None
        if skill is not None and (
            skill.phase == "done" or (self._commanded is None and skill.steps >= MAX_SUBTASK_STEPS)
        ):
            skill, previous, self._skill = None, skill.task, None
        if skill is None:
            if self._commanded is not None:
                return np.zeros(3, np.float32)
            skill = self._skill = self._start(self._choose(env, previous))
        self.current_task = skill.task
        skill.steps += 1
        target = self._target(env, skill)
        return self._drive(env, target, skill.speed)

    # --- state ----------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        """Phase of the sub-task in progress (up, over, down, act, retreat, done) or idle."""
        return "idle" if self._skill is None else self._skill.phase

    def satisfied(self, env: DeskEnv) -> np.ndarray:
        """bool [9]: which tasks' success predicates hold now (the environment's table)."""
        return env.success()

    def feasible(self, env: DeskEnv) -> np.ndarray:
        """Indices of the tasks that are not already achieved."""
        return np.flatnonzero(~self.satisfied(env))

    # --- internals ------------------------------------------------------------------------

    def _choose(self, env: DeskEnv, previous: int | None) -> int:
        """A random feasible task, other than one just abandoned where possible."""
        options = self.feasible(env)
        if previous is not None and len(options) > 1:
            options = options[options != previous]
        return int(self._rng.choice(options))

    def _start(self, task: int) -> _Skill:
        rng = self._rng
        name = TASKS[task]
        scale = 0.03 if name.startswith("block") else 0.006
        jitter = rng.uniform(-scale, scale, size=2)
        return _Skill(task=task, speed=float(rng.uniform(0.6, 1.0)), jitter=jitter)

    def _drive(self, env: DeskEnv, target: np.ndarray, speed: float) -> np.ndarray:
        """Proportional-derivative command towards ``target``, capped at ``speed``, noisy."""
        error = target - env.ee_pos - 0.03 * env.ee_vel
        action = error / 0.02
        peak = float(np.abs(action).max())
        if peak > speed:
            action *= speed / peak
        action = action + self.noise * self._rng.standard_normal(3)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _target(self, env: DeskEnv, skill: _Skill) -> np.ndarray:
        """Advance the skill's phase machine; return the end-effector target."""
        ee = env.ee_pos
        contact = self._contact(env, skill)
        low = BLOCK_SAFE_Z if skill.name.startswith("block") else SAFE_Z
        if skill.phase == "up":
            if ee[2] > low - 0.015:
                skill.phase = "over"
                skill.travel_z = float(np.clip(ee[2], low, SAFE_Z))
            else:
                return np.array([ee[0], ee[1], low])
        if skill.phase == "over":
            if np.linalg.norm(ee[:2] - contact[:2]) < 0.012:
                skill.phase, skill.descent_steps = "down", 0
            else:
                return np.array([contact[0], contact[1], skill.travel_z])
        if skill.phase == "down":
            skill.descent_steps += 1
            if skill.descent_steps > MAX_DESCENT_STEPS:  # blocked: play moves on, else retry
                skill.phase = "retreat" if self._commanded is None else "up"
            elif np.linalg.norm(ee[:2] - contact[:2]) > 0.03:
                skill.phase = "up"
                return np.array([ee[0], ee[1], low])
            elif np.linalg.norm(ee - contact) < 0.012:
                skill.phase = "act"
            else:
                return contact
        if skill.phase == "act":
            if self._achieved(env, skill):
                skill.phase = "retreat"
            elif not self._engaged(env, skill):
                skill.phase = "up"
                skill.push_dir = None
                return np.array([ee[0], ee[1], low])
            else:
                return self._goal(env, skill)
        if skill.phase == "retreat":
            if ee[2] > SAFE_Z - 0.03:
                skill.phase = "done"
            return np.array([ee[0], ee[1], SAFE_Z])
        return ee

    # Skill geometry: the contact point, the goal while engaged, engagement and success.

    def _contact(self, env: DeskEnv, skill: _Skill) -> np.ndarray:
        name, jx, jy = skill.name, skill.jitter[0], skill.jitter[1]
        if "drawer" in name:
            return np.array([DRAWER_X + jx, env.drawer_front_y - DRAWER_GAP, WORK_Z["drawer"]])
        if "door" in name:
            side = 1.0 if name == "door_right" else -1.0
            return np.array([env.door_handle_x - side * DOOR_SIDE, DOOR_Y + jy, WORK_Z["door"]])
        if "light" in name:
            return np.array([BUTTON_XY[0] + jx, BUTTON_XY[1] + jy, WORK_Z["button"]])
        block = env.block_pos[:2]
        direction = self._push_dir(env, skill)
        xy = block - direction * 0.065
        return np.array([xy[0], xy[1], WORK_Z["block"]])

    def _block_goal(self, skill: _Skill) -> np.ndarray:
        return np.asarray(BLOCK_GOALS[skill.name]) + skill.jitter

    def _push_dir(self, env: DeskEnv, skill: _Skill) -> np.ndarray:
        offset = self._block_goal(skill) - env.block_pos[:2]
        if skill.push_dir is None or np.linalg.norm(offset) > 0.06:
            skill.push_dir = _unit(offset)
        return skill.push_dir

    def _goal(self, env: DeskEnv, skill: _Skill) -> np.ndarray:
        name = skill.name
        contact = self._contact(env, skill)
        if name == "open_drawer":
            return np.array([contact[0], -DRAWER_RANGE[1] - DRAWER_GAP - 0.03, contact[2]])
        if name == "close_drawer":
            return np.array([contact[0], -DRAWER_GAP + 0.03, contact[2]])
        if "door" in name:
            side = 1.0 if name == "door_right" else -1.0
            stop = DOOR_RANGE[1] if side > 0 else DOOR_RANGE[0]
            end = DOOR_X0 + stop - side * DOOR_SIDE + side * 0.03
            return np.array([end, contact[1], contact[2]])
        if "light" in name:
            return np.array([contact[0], contact[1], 0.02])
        # push through the block's centre towards the goal; steer back onto that line
        # (and push more gently) when the block slides sideways off the end effector
        block, direction = env.block_pos[:2], self._push_dir(env, skill)
        rel = env.ee_pos[:2] - block
        across = rel - (rel @ direction) * direction
        drift = float(np.linalg.norm(across))
        ahead = block + direction * (0.06 if drift < 0.012 else 0.04) - 2.5 * across
        return np.array([ahead[0], ahead[1], WORK_Z["block"]])

    def _engaged(self, env: DeskEnv, skill: _Skill) -> bool:
        ee, name = env.ee_pos, skill.name
        contact = self._contact(env, skill)
        if "drawer" in name:
            return bool(
                abs(ee[1] - contact[1]) < 0.02
                and abs(ee[0] - contact[0]) < 0.04
                and abs(ee[2] - contact[2]) < 0.025
            )
        if "door" in name:
            return bool(
                abs(ee[0] - contact[0]) < 0.02
                and abs(ee[1] - contact[1]) < 0.02
                and abs(ee[2] - contact[2]) < 0.025
            )
        if "light" in name:
            return bool(np.linalg.norm(ee[:2] - contact[:2]) < 0.02)
        direction = self._push_dir(env, skill)
        rel = ee[:2] - env.block_pos[:2]
        along = float(rel @ direction)
        across = abs(float(rel[0] * direction[1] - rel[1] * direction[0]))
        return bool(across < 0.035 and -0.1 < along < -0.02 and ee[2] < 0.05)

    def _achieved(self, env: DeskEnv, skill: _Skill) -> bool:
        """The skill's own goal: a little past its task's success predicate (so the
        predicate is reached on the way; this only decides when to stop pushing)."""
        name = skill.name
        if name == "open_drawer":
            return env.drawer > 0.14
        if name == "close_drawer":
            return env.drawer < 0.01
        if name == "door_right":
            return env.door > 0.2
        if name == "door_left":
            return env.door < 0.02
        if name == "light_on":
            return env.light
        if name == "light_off":
            return not env.light
        remaining = self._block_goal(skill) - env.block_pos[:2]
        return bool(remaining @ np.asarray(BLOCK_AXES[name]) < 0.01)


@register_expert("desk", "play", default=True, unnamed=True)
def make_desk_play(**options: Any) -> DeskPlay:
    """The desk's scripted play expert; option ``noise`` (action noise, 0 to 1)."""
    unknown_options("desk", options, ["noise"])
    noise = float_option("noise", options.get("noise", 0.1), 0.0, 1.0)
    return DeskPlay(noise=noise)


@dataclass(frozen=True, repr=False)
class PlayPiece:
    """Consecutive steps of a play stream."""

    observations: np.ndarray
    """[T, 17] float32, before each action."""
    actions: np.ndarray
    """[T, 3] float32, clipped to [-1, 1]."""
    fields: dict[str, np.ndarray]
    """Step fields {name: [T, ...]} (after each action)."""
    subtask: np.ndarray
    """[T] int64: the sub-task being played at each step."""
    completed: np.ndarray
    """[T] bool: the step achieves the sub-task being played (``infos/achieved`` in
    that sub-task's column)."""

    def __repr__(self) -> str:
        return f"PlayPiece(steps={len(self.actions)}, completions={int(self.completed.sum())})"


class PlayStream:
    """One endless play stream from ``env.reset(seed)``, recorded piece by piece:
    ``record(a)`` then ``record(b)`` gives the same steps as ``record(a + b)``."""

    def __init__(self, env: DeskEnv, expert: DeskPlay, seed: int) -> None:
        self.env, self.expert = env, expert
        self.steps = 0
        """Steps recorded so far (the stream row of the next step)."""
        self._obs = env.reset(seed)
        expert.reset(env, None, seed)

    def record(self, steps: int) -> PlayPiece:
        """The next ``steps`` steps of the stream."""
        env, expert = self.env, self.expert
        observations = np.empty((steps, env.info.observation_dim), np.float32)
        actions = np.empty((steps, env.info.action_dim), np.float32)
        subtask = np.empty(steps, np.int64)
        rows = []
        obs = self._obs
        for t in range(steps):
            action = np.clip(expert.act(env, obs), env.info.action_low, env.info.action_high)
            result = env.step(action)
            observations[t], actions[t], subtask[t] = obs, action, expert.current_task
            rows.append(result.fields)
            obs = result.observation
        self._obs = obs
        self.steps += steps
        stacked = stack_fields(rows, like=env.fields())  # 0 steps stack too
        completed = stacked["infos/achieved"][np.arange(steps), subtask] > 0.5
        return PlayPiece(observations, actions, stacked, subtask, completed)


def play_stream(
    env: DeskEnv, expert: DeskPlay, steps: int, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """``steps`` steps of play from ``env.reset(seed)``: observations [T, 17] (before each
    action), actions [T, 3] (clipped), step fields {name: [T, ...]} and the sub-task
    index [T] being done at each step."""
    piece = PlayStream(env, expert, seed).record(steps)
    return piece.observations, piece.actions, piece.fields, piece.subtask
