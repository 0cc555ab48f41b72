"""Quadruped on dm_control's suite physics, with linear-reward features.

* Physics: ``dm_control.suite.quadruped`` (``make_model`` without walls, ball,
  terrain and rangefinders, floor half-size 100 m), 4 physics steps of 5 ms per
  control step (0.02 s, the suite's control timestep).
* Episodes: 1000 steps (20 s, the suite's time limit).
* Reset: upright at the origin with a uniformly random heading (seeded), at the
  lowest height without contacts, as the suite's ``fetch`` task (``walk`` and
  ``run`` start in a random 3-D orientation instead).
* Observation float32 [88], in this order:

  ====  =====================================================================
  44    ``egocentric_state``: 16 hinge angles, 16 hinge velocities, 12 actuator
        activations (the suite's)
  3     torso velocity in the torso frame (velocimeter)
  1     torso upright (z-axis of the torso on the world z-axis)
  6     IMU: gyro then accelerometer (torso frame)
  24    arcsinh of the toe force (4 x 3) then torque (4 x 3) sensors
  9     torso orientation, the row-major torso-to-world rotation matrix (the
        heading, which world-frame tasks need and the suite's observation lacks)
  1     torso height
  ====  =====================================================================

* Step fields, measured after the action (the ``quadruped-linear`` features first):

  ``infos/velocity_x``  float32 []    torso velocity along world x (m/s)
  ``infos/velocity_y``  float32 []    torso velocity along world y (m/s)
  ``infos/height``      float32 []    torso height (m)
  ``infos/upright``     float32 []    torso z-axis projected on world z (1 upright, -1 upside down)
  ``infos/ctrl_cost``   float32 []    minus the mean squared action, -||a||^2 / 12: a positive
                                      weight rewards cheap (small) actions
  ``physics/qpos``      float64 [23]  full position (free joint: x, y, z, quaternion; then hinges)
  ``physics/qvel``      float64 [22]  full velocity (free joint linear velocity in the world frame)
  ``physics/act``       float64 [12]  actuator activations (filtered controls), for exact replay
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hipi_offline.envs.base import TaskFrame, prepare_mujoco, register
from hipi_offline.envs.physics import SuiteEnv

DEFAULT_STEPS = 1000
"""20 s at 0.02 s per step: the suite's time limit."""
FLOOR_SIZE = 100.0
"""Floor half-size in metres: room for 20 s at 5 m/s in any direction."""


def torso_velocity_world(qvel: np.ndarray) -> np.ndarray:
    """[..., 3] linear velocity of the torso in the world frame (the free joint's)."""
    return qvel[..., 0:3]


def torso_height(qpos: np.ndarray) -> np.ndarray:
    """[...] height of the torso's origin."""
    return qpos[..., 2]


def torso_upright(qpos: np.ndarray) -> np.ndarray:
    """[...] the torso z-axis on the world z-axis, from the free joint's quaternion
    (equals the suite's ``physics.torso_upright()``, the xmat zz entry)."""
    w, x, y, z = np.moveaxis(qpos[..., 3:7], -1, 0)
    return 1.0 - 2.0 * (x * x + y * y) / (w * w + x * x + y * y + z * z)


def torso_heading(qpos: np.ndarray) -> np.ndarray:
    """[..., 2] the torso's x-axis in the world, projected on the floor and normalized,
    from the free joint's quaternion (the first column of the rotation matrix)."""
    w, x, y, z = np.moveaxis(qpos[..., 3:7], -1, 0)
    forward = np.stack([1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y + w * z)], axis=-1)
    return forward / np.maximum(np.linalg.norm(forward, axis=-1, keepdims=True), 1e-9)


def negative_effort(actions: np.ndarray) -> np.ndarray:
    """[...] minus the mean squared action."""
    return -np.mean(np.square(actions), axis=-1)


TASK_FRAME = TaskFrame(rotation=78, direction=(0, 1))
"""The torso's rotation matrix is observation entries 78-86, and the ``quadruped-linear``
task entries 0 and 1 weight world x and y velocity: a policy may be given the commanded
direction in the torso frame (``train-bc --body-frame-task``)."""
MAX_HEIGHT_ATTEMPTS = 10000
"""Reset: 1 cm steps up from the floor before giving up on a pose without contacts."""


@register("quadruped", task_spec="quadruped-linear", task_frame=TASK_FRAME)
class QuadrupedEnv(SuiteEnv):
    """The suite's quadruped; see the module docstring for observations and fields."""

    substeps = 4
    rollout_sensors = False
    """Rollout fields are functions of the state: the planner can skip sensors."""
    heading_task_dims = TASK_FRAME.direction
    """The ``quadruped-linear`` task entries weighting world x and y velocity: the
    commanded direction of travel, for planners that keep the body facing it."""

    def __init__(self) -> None:
        prepare_mujoco()
        from dm_control.suite import common, quadruped

        xml = quadruped.make_model(floor_size=FLOOR_SIZE)
        physics = quadruped.Physics.from_xml_string(xml, common.ASSETS)
        super().__init__(physics, observation_dim=88, default_steps=DEFAULT_STEPS)

    def reset(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        azimuth = rng.uniform(0.0, 2.0 * np.pi)
        orientation = np.array([np.cos(azimuth / 2), 0.0, 0.0, np.sin(azimuth / 2)])
        self._place_without_contacts(orientation)
        self.physics.data.time = 0.0
        return self.observation()

    def _place_without_contacts(self, orientation: np.ndarray) -> None:
        """Upright at the origin with ``orientation``, at the lowest height (1 cm steps
        up from inside the floor) without contacts, as the suite's ``fetch`` task."""
        from dm_control.rl.control import PhysicsError

        physics, height = self.physics, 0.0
        for _ in range(MAX_HEIGHT_ATTEMPTS):
            try:
                with physics.reset_context():
                    physics.named.data.qpos["root"][:3] = 0.0, 0.0, height
                    physics.named.data.qpos["root"][3:] = orientation
            except PhysicsError:  # a full contact buffer: go on higher
                pass
            if physics.data.ncon == 0:
                return
            height += 0.01
        raise RuntimeError("quadruped reset: no pose without contacts found")

    def step_fields(self, applied: np.ndarray) -> dict[str, np.ndarray]:
        data = self.physics.data
        return self._fields(data.qpos, data.qvel, data.act, applied)

    def _fields(
        self, qpos: np.ndarray, qvel: np.ndarray, act: np.ndarray, actions: np.ndarray
    ) -> dict[str, np.ndarray]:
        velocity = torso_velocity_world(qvel)
        return {
            "infos/velocity_x": velocity[..., 0].astype(np.float32),
            "infos/velocity_y": velocity[..., 1].astype(np.float32),
            "infos/height": torso_height(qpos).astype(np.float32),
            "infos/upright": torso_upright(qpos).astype(np.float32),
            "infos/ctrl_cost": negative_effort(actions).astype(np.float32),
            "physics/qpos": qpos.copy(),
            "physics/qvel": qvel.copy(),
            "physics/act": act.copy(),
        }

    def velocity_along_command(
        self, fields: Mapping[str, np.ndarray], task: np.ndarray
    ) -> np.ndarray | None:
        """[T] the torso's world velocity along the task's direction (its x and y
        weights, normalized) of T steps' fields; None when the task has no direction."""
        direction = np.asarray(task, np.float64).reshape(-1)[list(self.heading_task_dims)]
        norm = float(np.linalg.norm(direction))
        if norm == 0.0:
            return None
        vx = np.asarray(fields["infos/velocity_x"], np.float64)
        vy = np.asarray(fields["infos/velocity_y"], np.float64)
        return (vx * direction[0] + vy * direction[1]) / norm

    def observation(self) -> np.ndarray:
        """The 88 documented entries; float32."""
        physics = self.physics
        torso_xmat = physics.named.data.xmat["torso"]
        height = torso_height(physics.data.qpos)
        return np.concatenate(
            [
                physics.egocentric_state(),
                physics.torso_velocity(),
                np.atleast_1d(physics.torso_upright()),
                physics.imu(),
                physics.force_torque(),
                torso_xmat,
                np.atleast_1d(height),
            ]
        ).astype(np.float32)

    def rollout_fields(
        self, states: np.ndarray, sensordata: np.ndarray, actions: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The step fields of many simulated transitions at once, for planners.

        ``states`` [..., nstate] (``mjSTATE_FULLPHYSICS``) are measured after the
        actions [..., nu]; the values equal what :meth:`step` reports.
        """
        del sensordata  # every field is a function of the state and the action
        return self._fields(
            states[..., self._qpos], states[..., self._qvel], states[..., self._act], actions
        )

    def rollout_heading(self, states: np.ndarray) -> np.ndarray:
        """[..., 2] the torso's forward (x) axis projected on the floor, normalized,
        of ``mjSTATE_FULLPHYSICS`` states [..., nstate]."""
        return torso_heading(states[..., self._qpos])
