"""Two-link planar reacher on dm_control's suite physics, commanded goal positions.

* Physics: ``dm_control.suite.reacher`` (model and assets): two hinge joints, the
  shoulder unlimited and the wrist within +-160 degrees, links of 0.12 m from
  shoulder to wrist and wrist to fingertip, torque motors with controls in [-1, 1];
  one physics step (0.02 s) per control step, as the suite.
* The goal is the task, not part of the physics: the suite's ``target`` geom is hidden
  (it has no contacts and no mass, so it never changed the dynamics) and is shown at a
  goal only when :meth:`ReacherEnv.show_goal` asks, for rendering.
* Reachable fingertip positions: the annulus :data:`MIN_REACH` <= |x| <=
  :data:`MAX_REACH` around the shoulder.
* Episodes: 50 steps (1 s; the ``ik`` expert settles within 0.05 of a goal in at
  most 40). Reset: shoulder uniform in [-pi, pi), wrist uniform in its range,
  velocities zero (seeded), as the suite's ``initialize_episode``.
* Observation float32 [6]: cos of the two joint angles (shoulder, wrist), their sins,
  then the two joint velocities (no goal: a policy is given the task separately).
* Step fields, measured after the action:

  ``infos/fingertip`` float64 [2]  the fingertip's (x, y) in the world
  ``physics/qpos``    float64 [2]  the joint angles, for analysis and replay
  ``physics/qvel``    float64 [2]  the joint velocities

The task reward (specs ``reacher-goal``: minus the distance of the fingertip to the
goal; ``reacher-goal-sparse``: 0 within a margin, -1 elsewhere) is computed by the task
family from ``infos/fingertip``, never here. The ``ik`` expert
(``hipi_offline/experts/reacher_ik.py``) collects offline data.
"""

from __future__ import annotations

import numpy as np

from hipi_offline.envs.base import prepare_mujoco, register
from hipi_offline.envs.physics import SuiteEnv

LINK = 0.12
"""Length of each link: shoulder to wrist, wrist to fingertip (metres)."""
WRIST_LIMIT = float(np.deg2rad(160.0))
"""The wrist's joint range is [-WRIST_LIMIT, WRIST_LIMIT]."""
MAX_REACH = 2 * LINK
"""Largest distance of the fingertip from the shoulder (arm straight)."""
MIN_REACH = float(2 * LINK * np.sin((np.pi - WRIST_LIMIT) / 2))
"""Smallest distance of the fingertip from the shoulder (wrist at its limit)."""
DEFAULT_STEPS = 50
"""1 s at 0.02 s per step."""


def fingertip(qpos: np.ndarray) -> np.ndarray:
    """Forward kinematics: the fingertip's (x, y) [..., 2] for joint angles [..., 2]."""
    q = np.asarray(qpos, np.float64)
    shoulder, elbow = q[..., 0], q[..., 0] + q[..., 1]
    return np.stack(
        [LINK * (np.cos(shoulder) + np.cos(elbow)), LINK * (np.sin(shoulder) + np.sin(elbow))],
        axis=-1,
    )


@register("reacher", task_spec="reacher-goal")
class ReacherEnv(SuiteEnv):
    """The two-link reacher; see the module docstring for observations and fields."""

    substeps = 1
    rollout_sensors = False

    def __init__(self) -> None:
        prepare_mujoco()
        from dm_control.suite import reacher

        physics = reacher.Physics.from_xml_string(*reacher.get_model_and_assets())
        model = physics.model
        super().__init__(
            physics, observation_dim=2 * model.nq + model.nv, default_steps=DEFAULT_STEPS
        )
        self._finger = int(model.name2id("finger", "geom"))
        self._target = int(model.name2id("target", "geom"))
        self._target_rgba = model.geom_rgba[self._target].copy()
        self.show_goal(None)

    def reset(self, seed: int) -> np.ndarray:
        physics, rng = self.physics, np.random.default_rng(seed)
        physics.reset()
        low, high = physics.model.jnt_range[1]
        physics.data.qpos[:] = [rng.uniform(-np.pi, np.pi), rng.uniform(low, high)]
        physics.forward()
        return self.observation()

    def observation(self) -> np.ndarray:
        """cos and sin of the joint angles, then the joint velocities; float32."""
        data = self.physics.data
        return np.concatenate([np.cos(data.qpos), np.sin(data.qpos), data.qvel]).astype(np.float32)

    def step_fields(self, applied: np.ndarray) -> dict[str, np.ndarray]:
        data = self.physics.data
        return {
            "infos/fingertip": data.geom_xpos[self._finger, :2].astype(np.float64),
            "physics/qpos": data.qpos.copy(),
            "physics/qvel": data.qvel.copy(),
        }

    def show_goal(self, goal: np.ndarray | None) -> None:
        """Draw the suite's target sphere at ``goal`` (x, y) in rendered images, or hide
        it (None). Rendering only: the target has no contacts and no mass."""
        model = self.physics.model
        if goal is None:
            model.geom_rgba[self._target] = 0.0
            return
        model.geom_pos[self._target, :2] = np.asarray(goal, np.float64).reshape(-1)[:2]
        model.geom_rgba[self._target] = self._target_rgba
