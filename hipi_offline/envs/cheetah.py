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
from typing import Any

import numpy as np

from hipi_offline.envs.base import (
    EnvInfo,
    StepResult,
    headless_gl,
    prepare_mujoco,
    register,
    render_physics,
)

SETTLE_STEPS = 200
"""Physics steps run after the random joint init, as the suite does."""
DEFAULT_STEPS = 1000
"""10 s at 0.01 s per step: the suite's time limit."""


headless_gl()  # at import too: dm_control picks its GL backend when it is first imported


def state_layout(model: Any) -> tuple[slice, slice, slice]:
    """Slices of qpos, qvel and act in a ``mjSTATE_FULLPHYSICS`` state vector."""
    import mujoco

    spec = mujoco.mjtState
    qpos0 = mujoco.mj_stateSize(model, spec.mjSTATE_TIME)
    qvel0 = qpos0 + model.nq
    act0 = qvel0 + model.nv
    return slice(qpos0, qvel0), slice(qvel0, act0), slice(act0, act0 + model.na)


@register("cheetah")
class CheetahEnv:
    """The half-cheetah; see the module docstring for observations and fields."""

    substeps = 1
    """Physics steps per control step."""
    rollout_sensors = True
    """The planner reads the speed sensor from rollouts."""

    def __init__(self) -> None:
        prepare_mujoco()
        from dm_control.suite import cheetah

        self.physics = cheetah.Physics.from_xml_string(*cheetah.get_model_and_assets())
        model = self.physics.model
        self._speed_adr = int(model.sensor_adr[model.name2id("torso_subtreelinvel", "sensor")])
        self._qpos, self._qvel, _ = state_layout(model.ptr)
        low, high = model.actuator_ctrlrange.T.astype(np.float32)
        self.info = EnvInfo(
            name="cheetah",
            task_spec="cheetah-velocity",
            observation_dim=model.nq - 1 + model.nv,
            action_dim=model.nu,
            action_low=low,
            action_high=high,
            control_dt=float(model.opt.timestep) * self.substeps,
            default_steps=DEFAULT_STEPS,
        )

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

    def step(self, action: np.ndarray) -> StepResult:
        applied = np.clip(
            np.asarray(action, np.float64), self.info.action_low, self.info.action_high
        )
        self.physics.set_control(applied)
        self.physics.step(self.substeps)
        fields = {
            "infos/speed": np.asarray(self.physics.speed(), np.float32),
            "physics/qpos": self.physics.data.qpos.copy(),
            "physics/qvel": self.physics.data.qvel.copy(),
        }
        return StepResult(self.observation(), fields)

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

    def render(self, width: int = 320, height: int = 240) -> np.ndarray:
        return render_physics(self.physics, width, height, camera_id=0)

    def close(self) -> None:
        self.physics.free()
