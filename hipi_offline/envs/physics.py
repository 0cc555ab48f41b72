"""What the environments on dm_control's suite physics (cheetah, quadruped) share:
the layout of MuJoCo's full-physics state vector, and one control step, the static
:class:`EnvInfo`, rendering and closing of a suite physics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from hipi_offline.envs.base import StepResult, headless_gl, registered_info, render_physics

headless_gl()  # at import too: dm_control picks its GL backend when it is first imported


def state_layout(model: Any) -> tuple[slice, slice, slice]:
    """Slices of qpos, qvel and act in a ``mjSTATE_FULLPHYSICS`` state vector."""
    import mujoco

    spec = mujoco.mjtState
    qpos0 = mujoco.mj_stateSize(model, spec.mjSTATE_TIME)
    qvel0 = qpos0 + model.nq
    act0 = qvel0 + model.nv
    return slice(qpos0, qvel0), slice(qvel0, act0), slice(act0, act0 + model.na)


class SuiteEnv(ABC):
    """A registered environment stepping a dm_control suite ``Physics``: the action,
    clipped to the actuators' control range, is held for ``substeps`` physics steps;
    subclasses say what an observation and a step's fields are."""

    substeps = 1
    """Physics steps per control step."""
    rollout_sensors = True
    """Planners read sensors from rollouts (False: every field is a function of the
    state and the action, so a planner can skip sensors)."""

    def __init__(self, physics: Any, *, observation_dim: int, default_steps: int) -> None:
        self.physics = physics
        model = physics.model
        self._qpos, self._qvel, self._act = state_layout(model.ptr)
        """Where qpos, qvel and act are in a ``mjSTATE_FULLPHYSICS`` state (planners)."""
        low, high = model.actuator_ctrlrange.T.astype(np.float32)
        self.info = registered_info(
            type(self),
            observation_dim=observation_dim,
            action_dim=model.nu,
            action_low=low,
            action_high=high,
            control_dt=float(model.opt.timestep) * self.substeps,
            default_steps=default_steps,
        )

    @abstractmethod
    def observation(self) -> np.ndarray:
        """The current observation, float32 [observation_dim]."""

    @abstractmethod
    def step_fields(self, applied: np.ndarray) -> dict[str, np.ndarray]:
        """The step fields after a control step that applied ``applied`` (clipped)."""

    def step(self, action: np.ndarray) -> StepResult:
        applied = np.clip(
            np.asarray(action, np.float64), self.info.action_low, self.info.action_high
        )
        self.physics.set_control(applied)
        self.physics.step(self.substeps)
        return StepResult(self.observation(), self.step_fields(applied))

    def render(self, width: int = 320, height: int = 240) -> np.ndarray:
        return render_physics(self.physics, width, height, camera_id=0)

    def close(self) -> None:
        self.physics.free()
