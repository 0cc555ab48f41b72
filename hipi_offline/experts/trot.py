"""Trot: a gait generator for the quadruped that walks in any direction, fast.

The diagonal leg pairs (front-left with back-right, front-right with back-left) move
half a cycle apart. At cycle phase ``phase`` each toe is displaced, in the torso frame,

* along the commanded direction ``u`` (the task's world direction rotated into the
  torso frame every step): ``-stride * speed * cos(phase)``, backwards on the ground
  and forwards in the air;
* upwards: ``lift * speed * max(0, sin(phase + lead))`` plus the posture offset;
* attitude feedback: a toe under a corner that sags is pushed down by ``attitude``
  times the corner's drop, so the torso stays level.

Toe displacements become actuator targets through each leg's Jacobian of the toe
position with respect to its (yaw, lift, extend) targets at the neutral stance, computed
from the model's kinematics and tendons. The actuators are position servos behind a
first-order filter (time constant 0.1 s); the action inverts that filter for one
control step, from the activations in the observation, so the legs reach their
targets in time (clipped to the action bounds).

**The phase is read from the observation, not kept by a clock.** Each step the
expert finds the phase whose targets are nearest to the actuator activations in the
observation (a grid of 72 phases, refined by a parabola), and aims at the targets
``advance`` radians further on. So the expert is a function of the observation and
the task alone: a policy cloned from it sees everything that decides its action, and
a perturbed gait resumes from where its legs are rather than from where a clock
says they should be. The body's symmetry lets it walk in any direction without
turning.

**Which gait for which task.** ``quadruped-linear`` rewards are linear in the step
features (velocity x and y, height, upright, minus the mean squared action), so each
gait has an expected reward per step ``|d| v + w_h h + w_u u + w_c c`` for a task with
direction weights ``d``. :data:`GAIT_TABLE` holds the measured features of 5 speed
levels x 4 postures; ``reset`` picks the gait whose features score best for the task.
"Walk +x" walks at full speed, "stand tall" stands on extended legs, "stay still
cheaply" stands at the neutral posture with actions near zero. ``speed`` and
``posture`` options fix the gait instead. :func:`measure_gait_table` re-measures the
table (``python benchmarks/expert_quality.py --gait-table``).

The expert is deterministic for a seed: its action noise (``noise``, default 0.1 of
each actuator's half-range) is drawn from the episode's seed; the gait table is
measured without noise. It costs about 0.2 ms per step, against about 0.5 ms for the
environment's step itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from hipi_offline.envs.base import TaskEnv, make_env, velocity_along_command
from hipi_offline.envs.quadruped import TASK_FRAME as FRAME
from hipi_offline.errors import InputError
from hipi_offline.experts.base import float_option, register_expert, unknown_options

LEGS = ("front_left", "front_right", "back_right", "back_left")
"""Leg names in the actuator order (yaw, lift, extend per leg)."""
PAIR_PHASE = np.array([0.0, math.pi, 0.0, math.pi])
"""Cycle offset of each leg: diagonal pairs move together, half a cycle apart."""
PHASES = np.linspace(0.0, 2.0 * math.pi, 72, endpoint=False)
"""The grid on which the phase is read from the activations."""
OBS_ACTIVATIONS = slice(32, 44)
"""Actuator activations in the quadruped's observation (end of egocentric_state)."""
OBS_ROTATION = slice(FRAME.rotation, FRAME.rotation + 9)
"""Row-major torso-to-world rotation matrix in the quadruped's observation (where the
environment registers as its ``task_frame``)."""
DIRECTION_DIMS = FRAME.direction
"""Task entries weighting world x and y velocity (the registered ``task_frame``)."""

SPEEDS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Speed levels of :data:`GAIT_TABLE` (fractions of ``stride`` and ``lift``)."""
POSTURES = (-0.15, -0.08, 0.0, 0.06)
"""Posture offsets of :data:`GAIT_TABLE`: the toes' height in metres relative to the
neutral stance (negative: legs extended, torso higher)."""


@dataclass(frozen=True)
class TrotConfig:
    """The gait's shape and how it is chosen."""

    advance: float = 0.6
    """Radians by which each step's targets lead the phase read from the activations
    (the cycle's pace: about 2 cycles per second at the default)."""
    stride: float = 0.4
    """Amplitude (m) of the toe's travel along the direction at full speed."""
    lift: float = 0.4
    """Toe lift (m) in the air at full speed."""
    lead: float = -0.5
    """Radians by which lifting leads the forward swing (negative: it lags)."""
    attitude: float = 1.0
    """Gain of the attitude feedback (toe height per metre of corner drop)."""
    speed: float | None = None
    """Fixed speed level from 0 to 1 (None, ``speed=auto``: chosen per task from the
    gait table)."""
    posture: float | None = None
    """Fixed posture offset from -0.2 to 0.1 m (None, ``posture=auto``: chosen per task
    from the gait table)."""
    noise: float = 0.1
    """Standard deviation of seeded Gaussian action noise, as a fraction of each
    actuator's half-range (0: none). The default's perturbations show a cloned policy
    how the expert recovers (as DART does): without it BC of the trot does not walk."""


_SHAPE = ("advance", "stride", "lift", "lead", "attitude")
"""Options that change the gait itself (and so the gait table)."""
_RANGES = {  # (low, high)
    "advance": (0.01, math.pi),
    "stride": (0.0, 1.0),
    "lift": (0.0, 1.0),
    "lead": (-math.pi, math.pi),
    "attitude": (0.0, 10.0),
    "noise": (0.0, 1.0),
}

GAIT_TABLE = {
    # (speed, posture): (velocity along the direction, height, upright, -mean a^2)
    (0.0, -0.15): (0.0, 0.609, 1.0, -0.031),
    (0.25, -0.15): (0.41, 0.581, 1.0, -0.145),
    (0.5, -0.15): (1.252, 0.563, 0.998, -0.225),
    (0.75, -0.15): (1.706, 0.56, 0.996, -0.306),
    (1.0, -0.15): (1.51, 0.641, 0.978, -0.467),
    (0.0, -0.08): (0.0, 0.535, 1.0, -0.009),
    (0.25, -0.08): (0.37, 0.506, 1.0, -0.133),
    (0.5, -0.08): (1.148, 0.489, 0.998, -0.235),
    (0.75, -0.08): (1.622, 0.487, 0.996, -0.311),
    (1.0, -0.08): (2.047, 0.503, 0.993, -0.436),
    (0.0, 0.0): (0.0, 0.454, 1.0, -0.0),
    (0.25, 0.0): (0.32, 0.423, 1.0, -0.133),
    (0.5, 0.0): (0.812, 0.419, 0.998, -0.247),
    (0.75, 0.0): (1.306, 0.426, 0.996, -0.364),
    (1.0, 0.0): (1.612, 0.431, 0.994, -0.449),
    (0.0, 0.06): (0.0, 0.396, 1.0, -0.005),
    (0.25, 0.06): (0.244, 0.367, 1.0, -0.14),
    (0.5, 0.06): (0.5, 0.377, 0.998, -0.28),
    (0.75, 0.06): (1.112, 0.385, 0.995, -0.428),
    (1.0, 0.06): (1.336, 0.39, 0.993, -0.567),
}
"""Mean step features of each gait of the default shape over the second half of
150-step episodes, commanded world directions 0 and 45 degrees (episode seeds 0 and
45): velocity along the direction (m/s), height (m), upright, -mean squared action,
the order of the task's weights.
Measured by :func:`measure_gait_table`; a test re-measures some entries."""


def leg_jacobians(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """[4, 3, 3] Jacobians of each toe's torso-frame position with respect to its leg's
    (yaw, lift, extend) actuator targets at zero targets, and [4, 3] the toe positions
    there. The hinges of a leg follow from its targets through the tendons: yaw is a
    joint, lift and extend are fixed tendons over pitch, knee and ankle, and the leg's
    coupling tendon (held at zero length by an equality) closes the system."""
    import mujoco

    data = mujoco.MjData(model)

    def index(kind: Any, name: str) -> int:
        found = mujoco.mj_name2id(model, kind, name)
        if found < 0:
            raise InputError(
                f"trot: the model has no {name!r}; the trot expert needs the quadruped"
            )
        return int(found)

    joint, tendon, site = (
        mujoco.mjtObj.mjOBJ_JOINT,
        mujoco.mjtObj.mjOBJ_TENDON,
        mujoco.mjtObj.mjOBJ_SITE,
    )
    legs = []
    for leg in LEGS:
        hinges = [index(joint, f"{part}_{leg}") for part in ("pitch", "knee", "ankle")]
        rows = []
        for name in (f"lift_{leg}", f"extend_{leg}", f"coupling_{leg}"):
            t = index(tendon, name)
            row = np.zeros(3)
            for k in range(model.tendon_adr[t], model.tendon_adr[t] + model.tendon_num[t]):
                if model.wrap_objid[k] in hinges:
                    row[hinges.index(model.wrap_objid[k])] = model.wrap_prm[k]
            rows.append(row)
        legs.append(
            (
                model.jnt_qposadr[index(joint, f"yaw_{leg}")],
                [model.jnt_qposadr[h] for h in hinges],
                np.linalg.inv(np.array(rows)),
                index(site, f"toe_{leg}"),
            )
        )

    def toes(targets: np.ndarray) -> np.ndarray:
        data.qpos[:] = model.qpos0
        data.qpos[3:7] = (1.0, 0.0, 0.0, 0.0)
        for (yaw, hinges, solve, _), (y, lift, extend) in zip(legs, targets, strict=True):
            data.qpos[yaw] = y
            data.qpos[hinges] = solve @ np.array([lift, extend, 0.0])
        mujoco.mj_kinematics(model, data)
        return np.array([data.site_xpos[s] - data.xpos[1] for *_, s in legs])

    zero = np.zeros((4, 3))
    base = toes(zero)
    jacobians = np.zeros((4, 3, 3))
    for column in range(3):
        moved = zero.copy()
        moved[:, column] = 1e-5
        jacobians[:, :, column] = (toes(moved) - base) / 1e-5
    return jacobians, base


class TrotExpert:
    """The trot gait for any ``quadruped-linear`` task (see the module docstring)."""

    def __init__(self, config: TrotConfig = TrotConfig()) -> None:
        self.config = config
        self._model: Any = None
        self._table = GAIT_TABLE if _shape(config) == _shape(TrotConfig()) else None
        self.gait = (1.0, 0.0)

    def reset(self, env: TaskEnv, task: np.ndarray, seed: int) -> None:
        physics = getattr(env, "physics", None)
        if env.info.name != "quadruped" or physics is None:
            raise InputError(f"trot: walks the quadruped, not {env.info.name!r}")
        if physics.model.ptr is not self._model:
            self._model = physics.model.ptr
            jacobians, self._neutral = leg_jacobians(self._model)
            self._inverse = np.linalg.inv(jacobians)
            dynamics = self._model.actuator_dynprm[:, 0]
            step = self._model.opt.timestep
            substeps = int(round(env.info.control_dt / step))
            self._decay = (1.0 - step / dynamics) ** substeps  # activation kept per step
            self._low, self._high = env.info.action_low, env.info.action_high
            self._half = (self._high - self._low) / 2.0
        task = np.asarray(task, np.float64).reshape(-1)
        self._direction = task[list(DIRECTION_DIMS)]
        self.gait = self.choose_gait(task)
        self._rng = np.random.default_rng(seed)

    def choose_gait(self, task: np.ndarray) -> tuple[float, float]:
        """(speed, posture) for a task: each fixed option as given, the others the
        gait table's best for the task's weights (the nearest tabled level stands in
        for a fixed level between levels)."""
        cfg = self.config
        speeds = SPEEDS if cfg.speed is None else (cfg.speed,)
        postures = POSTURES if cfg.posture is None else (cfg.posture,)
        if len(speeds) == 1 and len(postures) == 1:
            return speeds[0], postures[0]
        if self._table is None:
            self._table = measure_gait_table(self.config)
        weights = np.array([np.linalg.norm(self._direction), *task[2:5]])
        scored = [
            (
                float(weights @ np.array(self._table[_nearest(SPEEDS, s), _nearest(POSTURES, p)])),
                s,
                p,
            )
            for s in speeds
            for p in postures
        ]
        best = max(scored, key=lambda row: row[0])  # the first of equals: slower, taller
        return best[1], best[2]

    def targets(self, phases: np.ndarray, along: np.ndarray, drop: np.ndarray) -> np.ndarray:
        """[P, 12] actuator targets at phases [P] for the direction ``along`` [2]
        (torso frame) and the corners' drops [4]."""
        cfg = self.config
        speed, posture = self.gait
        leg_phase = phases[:, None] + PAIR_PHASE  # [P, 4]
        shift = np.empty((len(phases), 4, 3))
        shift[..., :2] = (-cfg.stride * speed * np.cos(leg_phase))[..., None] * along
        shift[..., 2] = (
            cfg.lift * speed * np.maximum(0.0, np.sin(leg_phase + cfg.lead))
            + posture
            + cfg.attitude * drop
        )
        return np.einsum("lij,plj->pli", self._inverse, shift).reshape(len(phases), -1)

    def read_phase(self, activations: np.ndarray, along: np.ndarray, drop: np.ndarray) -> float:
        """The phase whose (clipped) targets are nearest to the activations."""
        grid = np.clip(self.targets(PHASES, along, drop), self._low, self._high)
        error = np.square(grid - activations).sum(axis=1)
        best = int(np.argmin(error))
        before, here, after = error[best - 1], error[best], error[(best + 1) % len(PHASES)]
        curvature = before - 2.0 * here + after
        offset = 0.5 * (before - after) / curvature if curvature > 1e-12 else 0.0
        return float(PHASES[best] + np.clip(offset, -0.5, 0.5) * (PHASES[1] - PHASES[0]))

    def act(self, env: TaskEnv, observation: np.ndarray) -> np.ndarray:
        del env  # everything the expert reads is in the observation
        cfg = self.config
        obs = np.asarray(observation, np.float64)
        rotation = obs[OBS_ROTATION].reshape(3, 3)
        heading = rotation.T @ np.array([self._direction[0], self._direction[1], 0.0])
        norm = math.hypot(heading[0], heading[1])
        along = heading[:2] / norm if norm > 1e-9 else np.zeros(2)
        drop = self._neutral[:, :2] @ rotation.T[:2, 2]  # world z in the torso frame
        activations = obs[OBS_ACTIVATIONS]
        phase = self.read_phase(activations, along, drop) if self.gait[0] > 0 else 0.0
        target = self.targets(np.array([phase + cfg.advance]), along, drop)[0]
        action = (target - self._decay * activations) / (1.0 - self._decay)
        if cfg.noise:
            action = action + self._rng.standard_normal(action.shape) * cfg.noise * self._half
        return np.clip(action, self._low, self._high).astype(np.float32)


def _nearest(levels: tuple[float, ...], value: float) -> float:
    return min(levels, key=lambda level: abs(level - value))


def _shape(config: TrotConfig) -> tuple[float, ...]:
    return tuple(getattr(config, name) for name in _SHAPE)


def measure_gait_table(
    config: TrotConfig = TrotConfig(), steps: int = 150, angles: tuple[float, ...] = (0.0, 45.0)
) -> dict[tuple[float, float], tuple[float, float, float, float]]:
    """Mean features of each (speed, posture) gait of ``config``'s shape: the second
    half of ``steps``-step episodes walking each world direction in ``angles`` (degrees,
    episode seed = the angle)."""
    env = make_env("quadruped")
    try:
        table = {}
        for posture in POSTURES:
            for speed in SPEEDS:
                expert = TrotExpert(replace(config, speed=speed, posture=posture, noise=0.0))
                rows = []
                for angle in angles:
                    radians = math.radians(angle)
                    task = np.array([math.cos(radians), math.sin(radians), 0.0, 0.0, 0.0])
                    rows.append(_walk(env, expert, task, steps, int(angle)))
                table[speed, posture] = tuple(round(float(x), 3) for x in np.mean(rows, axis=0))
        return table
    finally:
        env.close()


def _walk(env: TaskEnv, expert: TrotExpert, task: np.ndarray, steps: int, seed: int) -> np.ndarray:
    """(velocity along the task's direction, height, upright, -mean a^2) over the
    second half (the velocity as ``evaluate`` measures it)."""
    obs = env.reset(seed)
    expert.reset(env, task, seed)
    rows = []
    for _ in range(steps):
        result = env.step(expert.act(env, obs))
        rows.append(result.fields)
        obs = result.observation
    half = {name: np.stack([row[name] for row in rows[steps // 2 :]]) for name in rows[0]}
    velocity = velocity_along_command(env, half, task)
    assert velocity is not None  # the table's tasks are pure directions
    features = ("infos/height", "infos/upright", "infos/ctrl_cost")
    return np.array([velocity.mean(), *(half[name].astype(np.float64).mean() for name in features)])


def trot_config(options: dict[str, Any]) -> TrotConfig:
    """:class:`TrotConfig` with ``options`` checked: every bad name, type or range is a
    one-line InputError naming the option."""
    unknown_options("trot", options, [f.name for f in fields(TrotConfig)])
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if name in _RANGES:
            checked[name] = float_option(name, value, *_RANGES[name])
        elif name == "speed":
            checked[name] = _auto_or(name, value, 0.0, 1.0)
        else:  # posture
            checked[name] = _auto_or(name, value, -0.2, 0.1)
    return replace(TrotConfig(), **checked)


def _auto_or(name: str, value: Any, low: float, high: float) -> float | None:
    """``auto`` (None: chosen per task) or a number in [low, high]."""
    if value == "auto":
        return None
    if isinstance(value, str):
        raise InputError(f"{name}={value!r}: must be auto or a number from {low:g} to {high:g}")
    return float_option(name, value, low, high)


@register_expert("quadruped", "trot", default=True)
def quadruped_trot(**options: Any) -> TrotExpert:
    """The trot gait for the quadruped's linear tasks (options: :class:`TrotConfig`)."""
    return TrotExpert(trot_config(options))
