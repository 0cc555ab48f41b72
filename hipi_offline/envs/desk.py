"""Desk: play-style tabletop manipulation with nine discrete tasks (paper Sec. 6.3).

A spherical end effector on three position-controlled slide joints works a drawer,
a sliding door, a button that toggles a lamp, and a free block (scene:
``assets/desk.xml``).

Nine discrete tasks (:data:`TASK_NAMES`), each with a success predicate on the
state: the table :data:`SUCCESS`, the one place the predicates are written. A task
is *achieved* on the step where its predicate switches from false (before the
action) to true (after it); ``infos/achieved`` reports those events, and the task
spec ``desk-discrete`` (``tasks/builtin/desk-discrete.yaml``) rewards exactly them, so an
episode's return for a task counts how often it was achieved (success: return >= 1).
Rewarding events rather than states matters for play data: a state persists long
after the sub-task that made it (an opened drawer stays open), an event does not.

Action, float32 [3] in [-1, 1]: end-effector displacement; the position targets of
the slide actuators are the current position plus ``MAX_DELTA * action`` (metres).

Observation, float32 [17]:
    0-2   end-effector position (x, y, z)
    3-5   end-effector velocity
    6     drawer opening (m, 0 = closed, 0.16 = fully open)
    7     door position (m, 0 = left, 0.22 = right)
    8     button joint position (m, 0 = released, -0.02 = fully pressed)
    9     lamp state (0 = off, 1 = on)
    10-12 block position
    13-16 block orientation quaternion (w, x, y, z), w >= 0

Step fields (measured after the action): ``infos/drawer``, ``infos/door``,
``infos/button``, ``infos/light``, ``infos/block_x``, ``infos/block_y``,
``infos/block_z`` (scalars), ``infos/ee`` [3], ``infos/achieved`` [9] (1.0 where
the task in that column of :data:`TASK_NAMES` was achieved by this step, else 0.0),
``physics/qpos`` [13], ``physics/qvel`` [12].
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.envs.base import (
    StepResult,
    gl_message,
    gl_unavailable,
    prepare_mujoco,
    register,
    registered_info,
    render_physics,
)
from hipi_offline.errors import ResourceError

ASSET = Path(__file__).parent / "assets" / "desk.xml"
MAX_DELTA = 0.03
"""Metres of actuator target offset per unit action."""
SUBSTEPS = 10
"""Physics steps (0.005 s each) per control step."""
PRESS_DEPTH = 0.012
"""The button counts as pressed below -PRESS_DEPTH and re-arms above -RELEASE_DEPTH."""
RELEASE_DEPTH = 0.005
LAMP_ON = np.array([1.0, 0.9, 0.3, 1.0])
LAMP_OFF = np.array([0.25, 0.25, 0.25, 1.0])

DRAWER_RANGE = (0.0, 0.16)
DOOR_RANGE = (0.0, 0.22)
EE_LOW = np.array([-0.5, -0.33, 0.02])
EE_HIGH = np.array([0.5, 0.4, 0.3])
BUTTON_XY = np.array([-0.35, -0.15])
DRAWER_X = 0.41
DOOR_X0 = -0.4
"""World x of the door handle when the door is at 0."""

TASK_NAMES = (
    "open_drawer",
    "close_drawer",
    "door_left",
    "door_right",
    "light_on",
    "light_off",
    "block_left",
    "block_right",
    "block_forward",
)
"""The nine tasks, in the column order of ``infos/achieved`` and of the task spec."""
SUCCESS: dict[str, tuple[str, float | None, float | None]] = {
    "open_drawer": ("infos/drawer", 0.12, None),
    "close_drawer": ("infos/drawer", None, 0.03),
    "door_left": ("infos/door", None, 0.04),
    "door_right": ("infos/door", 0.18, None),
    "light_on": ("infos/light", 0.5, None),
    "light_off": ("infos/light", None, 0.5),
    "block_left": ("infos/block_x", None, -0.12),
    "block_right": ("infos/block_x", 0.12, None),
    "block_forward": ("infos/block_y", 0.1, None),
}
"""Success predicates, task -> (scalar state field, above, below): the task's goal
holds when ``above < field < below`` (None: no bound). Metres; light is 0 or 1."""


def success(fields: Mapping[str, Any]) -> np.ndarray:
    """bool [..., 9]: which tasks' success predicates hold on state fields (each [...],
    named as in ``DeskEnv.fields``), columns in :data:`TASK_NAMES` order."""
    columns = []
    for name in TASK_NAMES:
        field, above, below = SUCCESS[name]
        value = np.asarray(fields[field], dtype=np.float64)
        hit = np.ones(value.shape, dtype=bool)
        if above is not None:
            hit &= value > above
        if below is not None:
            hit &= value < below
        columns.append(hit)
    return np.stack(columns, axis=-1)


OBSERVATION_DIM = 17
FIELD_NAMES = (
    "infos/drawer",
    "infos/door",
    "infos/button",
    "infos/light",
    "infos/block_x",
    "infos/block_y",
    "infos/block_z",
    "infos/ee",
    "infos/achieved",
    "physics/qpos",
    "physics/qvel",
)


@register("desk", task_spec="desk-discrete", collection="play")
class DeskEnv:
    """The desk environment (see the module docstring for spaces and fields)."""

    def __init__(self) -> None:
        prepare_mujoco()
        import mujoco

        self._mujoco = mujoco
        self.model = mujoco.MjModel.from_xml_path(str(ASSET))
        self.data = mujoco.MjData(self.model)
        self.info = registered_info(
            DeskEnv,
            observation_dim=OBSERVATION_DIM,
            action_dim=3,
            action_low=-np.ones(3, np.float32),
            action_high=np.ones(3, np.float32),
            control_dt=self.model.opt.timestep * SUBSTEPS,
            default_steps=50,  # windows of ~one sub-task keep play data identifiable
        )
        self._qpos = {n: self.model.joint(n).qposadr[0] for n in ("drawer", "door", "button")}
        self._qvel_ee = self.model.joint("ee_x").dofadr[0]
        self._qpos_ee = self.model.joint("ee_x").qposadr[0]
        self._qpos_block = self.model.joint("block").qposadr[0]
        self._lamp = self.model.geom("lamp").id
        self._light = False
        self._armed = True
        self._achieved = np.zeros(len(TASK_NAMES), np.float32)
        self._renderer: Any = None
        """dm_control Physics sharing this model, for rendering only."""

    # --- named state accessors -------------------------------------------------------------

    @property
    def ee_pos(self) -> np.ndarray:
        """End-effector position (x, y, z)."""
        return self.data.qpos[self._qpos_ee : self._qpos_ee + 3].copy()

    @property
    def ee_vel(self) -> np.ndarray:
        return self.data.qvel[self._qvel_ee : self._qvel_ee + 3].copy()

    @property
    def drawer(self) -> float:
        """Drawer opening in metres (0 = closed)."""
        return float(self.data.qpos[self._qpos["drawer"]])

    @property
    def door(self) -> float:
        """Sliding-door position in metres (0 = far left)."""
        return float(self.data.qpos[self._qpos["door"]])

    @property
    def button(self) -> float:
        """Button joint position (0 = released, negative = pressed in)."""
        return float(self.data.qpos[self._qpos["button"]])

    @property
    def light(self) -> bool:
        return self._light

    @property
    def block_pos(self) -> np.ndarray:
        return self.data.qpos[self._qpos_block : self._qpos_block + 3].copy()

    @property
    def block_quat(self) -> np.ndarray:
        """Block orientation (w, x, y, z) with w >= 0."""
        quat = self.data.qpos[self._qpos_block + 3 : self._qpos_block + 7].copy()
        return -quat if quat[0] < 0 else quat

    @property
    def door_handle_x(self) -> float:
        """World x of the door handle."""
        return DOOR_X0 + self.door

    @property
    def drawer_front_y(self) -> float:
        """World y of the drawer's front face (0 when closed)."""
        return -self.drawer

    def success(self) -> np.ndarray:
        """bool [9]: which tasks' success predicates hold now (:data:`SUCCESS`)."""
        return success(self._state_fields())

    # --- interface -------------------------------------------------------------------------

    def reset(self, seed: int) -> np.ndarray:
        """A random desk: drawer, door, lamp, block pose and end-effector position."""
        mujoco = self._mujoco
        rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        qpos = self.data.qpos
        qpos[self._qpos["drawer"]] = rng.uniform(*DRAWER_RANGE)
        qpos[self._qpos["door"]] = rng.uniform(*DOOR_RANGE)
        qpos[self._qpos["button"]] = 0.0
        block = self._qpos_block
        qpos[block : block + 3] = [rng.uniform(-0.18, 0.18), rng.uniform(-0.12, 0.14), 0.025]
        yaw = rng.uniform(-np.pi, np.pi)
        qpos[block + 3 : block + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        ee = [rng.uniform(-0.2, 0.2), rng.uniform(-0.28, -0.1), rng.uniform(0.1, 0.2)]
        qpos[self._qpos_ee : self._qpos_ee + 3] = ee
        self.data.ctrl[:] = ee
        self._set_light(bool(rng.integers(2)))
        self._armed = True
        self._achieved = np.zeros(len(TASK_NAMES), np.float32)
        mujoco.mj_forward(self.model, self.data)
        return self.observation()

    def step(self, action: np.ndarray) -> StepResult:
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(3), -1.0, 1.0)
        target = np.clip(self.ee_pos + MAX_DELTA * action, EE_LOW, EE_HIGH)
        self.data.ctrl[:] = target
        before = self.success()
        for _ in range(SUBSTEPS):
            self._mujoco.mj_step(self.model, self.data)
            self._update_light()
        self._achieved = (self.success() & ~before).astype(np.float32)
        return StepResult(self.observation(), self.fields())

    def observation(self) -> np.ndarray:
        """The current observation, float32 [17] (layout in the module docstring)."""
        return np.concatenate(
            [
                self.ee_pos,
                self.ee_vel,
                [self.drawer, self.door, self.button, float(self._light)],
                self.block_pos,
                self.block_quat,
            ]
        ).astype(np.float32)

    def fields(self) -> dict[str, np.ndarray]:
        """The step fields of the last step (what ``step`` reported; after ``reset``,
        the fields of the initial state with nothing achieved)."""
        return {
            **self._state_fields(),
            "infos/achieved": self._achieved.copy(),
            "physics/qpos": self.data.qpos.astype(np.float32),
            "physics/qvel": self.data.qvel.astype(np.float32),
        }

    def render(self, width: int = 320, height: int = 240) -> np.ndarray:
        """Through dm_control's renderer, like cheetah and quadruped: one GL machinery
        per process (a ``mujoco.Renderer`` made after a dm_control context was freed
        fails with "Default framebuffer is not complete")."""
        problem = gl_unavailable()
        if problem is not None:
            raise ResourceError(gl_message(problem))
        vis = self.model.vis.global_
        if self._renderer is None or width > vis.offwidth or height > vis.offheight:
            self._close_renderer()
            vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
            from dm_control.mujoco import engine, wrapper

            self._renderer = engine.Physics.from_model(wrapper.MjModel(self.model))
        self._mujoco.mj_copyData(self._renderer.data.ptr, self.model, self.data)
        return render_physics(self._renderer, width, height, camera_id="front")

    def close(self) -> None:
        self._close_renderer()

    # --- internals -------------------------------------------------------------------------

    def _state_fields(self) -> dict[str, np.ndarray]:
        """The named state fields (what the success predicates read)."""
        block = self.block_pos
        return {
            "infos/drawer": np.float32(self.drawer),
            "infos/door": np.float32(self.door),
            "infos/button": np.float32(self.button),
            "infos/light": np.float32(self._light),
            "infos/block_x": np.float32(block[0]),
            "infos/block_y": np.float32(block[1]),
            "infos/block_z": np.float32(block[2]),
            "infos/ee": self.ee_pos.astype(np.float32),
        }

    def _close_renderer(self) -> None:
        if self._renderer is not None:
            self._renderer.free()
            self._renderer = None

    def _set_light(self, on: bool) -> None:
        self._light = on
        self.model.geom_rgba[self._lamp] = LAMP_ON if on else LAMP_OFF

    def _update_light(self) -> None:
        """Toggle the lamp on each press of the button (edge-triggered, with hysteresis)."""
        if self._armed and self.button < -PRESS_DEPTH:
            self._set_light(not self._light)
            self._armed = False
        elif not self._armed and self.button > -RELEASE_DEPTH:
            self._armed = True
