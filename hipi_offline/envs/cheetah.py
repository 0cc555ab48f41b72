"""Half-cheetah on dm_control's suite physics, commanded target velocities.

* Physics: ``dm_control.suite.cheetah`` (model, assets and ``Physics.speed()``),
  one physics step (0.01 s) per control step, as the suite's ``run`` task.
* Episodes: 1000 steps (10 s, the suite's time limit).
* Reset: limited joints uniform in their ranges (seeded), 200 settling steps, time 0,
  as the suite's ``initialize_episode``.
* Observation float32 [17]: qpos[1:] (rootz, rooty, 6 joint angles; rootx is left
  out for translational invariance) then qvel [9], as the suite's observation.
* Step fields, measured after the action:

  ``infos/speed``  float32 []   forward speed of the torso subtree (``physics.speed()``)
  ``physics/qpos`` float64 [9]  full position (rootx included), for analysis and replay
  ``physics/qvel`` float64 [9]  full velocity

The task reward (spec ``cheetah-velocity``) is computed by the task family from
these fields, never here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hipi_offline.envs.base import prepare_mujoco, register
from hipi_offline.envs.physics import SuiteEnv

SETTLE_STEPS = 200
"""Physics steps run after the random joint init, as the suite does."""
DEFAULT_STEPS = 1000
"""10 s at 0.01 s per step: the suite's time limit."""


@register("cheetah", task_spec="cheetah-velocity")
class CheetahEnv(SuiteEnv):
    """The half-cheetah; see the module docstring for observations and fields."""

    substeps = 1
    rollout_sensors = True
    """The planner reads the speed sensor from rollouts."""

    def __init__(self) -> None:
        prepare_mujoco()
        from dm_control.suite import cheetah

        physics = cheetah.Physics.from_xml_string(*cheetah.get_model_and_assets())
        model = physics.model
        super().__init__(
            physics, observation_dim=model.nq - 1 + model.nv, default_steps=DEFAULT_STEPS
        )
        self._speed_adr = int(model.sensor_adr[model.name2id("torso_subtreelinvel", "sensor")])

    def reset(self, seed: int) -> np.ndarray:
        physics, rng = self.physics, np.random.default_rng(seed)
        physics.reset()
        limited = physics.model.jnt_limited == 1
        lower, upper = physics.model.jnt_range[limited].T
        physics.data.qpos[limited] = rng.uniform(lower, upper)
        physics.forward()
        physics.step(SETTLE_STEPS)
        physics.data.time = 0.0
        return self.observation()

    def step_fields(self, applied: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "infos/speed": np.asarray(self.physics.speed(), np.float32),
            "physics/qpos": self.physics.data.qpos.copy(),
            "physics/qvel": self.physics.data.qvel.copy(),
        }

    def observation(self) -> np.ndarray:
        """qpos without rootx, then qvel; float32."""
        data = self.physics.data
        return np.concatenate([data.qpos[1:], data.qvel]).astype(np.float32)

    def rollout_fields(
        self, states: np.ndarray, sensordata: np.ndarray, actions: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The step fields of many simulated transitions at once, for planners.

        ``states`` [..., nstate] (``mjSTATE_FULLPHYSICS``) and ``sensordata``
        [..., nsensordata] are measured after the actions [..., nu]; the values
        equal what :meth:`step` reports for the same transitions.
        """
        return {
            "infos/speed": sensordata[..., self._speed_adr].astype(np.float32),
            "physics/qpos": states[..., self._qpos],
            "physics/qvel": states[..., self._qvel],
        }

    def velocity_along_command(
        self, fields: Mapping[str, np.ndarray], task: np.ndarray
    ) -> np.ndarray | None:
        """[T] the forward speed signed by the commanded target's direction (a target
        of 0 counts as forward) of T steps' fields."""
        target = float(np.asarray(task, np.float64).reshape(-1)[0])
        speed = np.asarray(fields["infos/speed"], np.float64)
        return -speed if target < 0 else speed
