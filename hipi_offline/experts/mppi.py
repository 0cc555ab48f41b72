"""MPPI: a sampling planner over batched MuJoCo rollouts, for any task of a family.

Each control step samples ``samples`` open-loop control sequences around the
current plan (``knots`` control points, linearly interpolated over ``horizon``
control steps, Gaussian noise of ``noise`` times the actuator half-range; sample 0
is the plan itself), simulates them all from the environment's exact state with
``mujoco.rollout`` (C threads), and scores them with the environment task spec's
family reward evaluated on the rolled-out step fields (``transition_rewards``, the
function relabeling uses), plus planner-only shaping (a tilt penalty). The new plan
is the average of the samples weighted by exp(-(J - min J) / (temperature * std J));
the next step starts from it shifted by one control step.

The cost is the physics (``samples x horizon x substeps`` physics steps per control
step; ``mujoco.rollout`` runs them at a bare ``mj_step`` loop's speed). The planner
copies the model once per environment, preallocates the rollout outputs, and skips
sensors when the environment's rollout fields do not read them. Measured rates and
the cheaper planners tried: benchmarks/RESULTS.md, "MPPI: cost and cheaper planners".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import numpy as np

from hipi_offline.envs.base import EnvInfo, TaskEnv, env_task_spec, transition_rewards
from hipi_offline.errors import InputError
from hipi_offline.experts.base import (
    float_option,
    int_option,
    register_expert,
    unknown_options,
)
from hipi_offline.tasks.spec import TaskSpec


@dataclass(frozen=True)
class MppiConfig:
    """Planner settings."""

    samples: int = 64
    """Control sequences simulated per control step (including the current plan)."""
    horizon: int = 30
    """Planning horizon in control steps."""
    knots: int = 6
    """Control points of a sequence, linearly interpolated over the horizon."""
    noise: tuple[float, ...] = (0.4,)
    """Sampling standard deviations as fractions of each actuator's half-range; the
    samples are split evenly among them (coarse levels explore, fine levels refine)."""
    temperature: float = 0.1
    """Softmax temperature as a fraction of the standard deviation of the costs."""
    tilt_field: str | None = None
    """Planner-only shaping: a step field measuring uprightness (1 = upright)."""
    tilt_weight: float = 0.0
    """Cost per step of (1 - tilt_field); keeps fast gaits from flipping the body."""
    heading_weight: float = 0.0
    """Planner-only shaping for environments with a :meth:`rollout_heading`: cost per
    step of ``|d| (1 - cos)``, the angle between the body's forward axis and the
    commanded horizontal direction ``d`` (the task entries the environment names in
    ``heading_task_dims``). The expert turns to face where it goes and walks forward."""
    threads: int = 0
    """Rollout threads (0: simulate on the calling thread)."""
    replan: int = 1
    """Control steps taken from each plan (open loop in between): 2 halves the cost."""
    timestep_factor: int = 1
    """The planner's model integrates with this many times the environment's physics
    timestep (``substeps / timestep_factor`` physics steps per control step; it must
    divide ``substeps``). 1 plans on the true simulator; 2 halves the cost."""


class PlannableEnv(Protocol):
    """What the planner needs from an environment beyond :class:`TaskEnv`."""

    info: EnvInfo
    physics: Any
    """dm_control Physics; ``physics.model.ptr`` and ``physics.data.ptr`` are MuJoCo's."""
    substeps: int
    """Physics steps per control step."""
    rollout_sensors: bool
    """Whether :meth:`rollout_fields` reads ``sensordata`` (else the planner's model
    skips computing sensors)."""

    def rollout_fields(
        self, states: np.ndarray, sensordata: np.ndarray, actions: np.ndarray
    ) -> dict[str, np.ndarray]: ...


def interpolation(times: np.ndarray, knots: int, horizon: int) -> np.ndarray:
    """[len(times), knots] weights of linear interpolation between knots spread
    evenly over control steps 0 .. horizon - 1 (clamped at the ends)."""
    positions = np.clip(times, 0, horizon - 1) * (knots - 1) / max(horizon - 1, 1)
    left = np.minimum(np.floor(positions).astype(int), knots - 2)
    frac = positions - left
    weights = np.zeros((len(times), knots))
    weights[np.arange(len(times)), left] = 1.0 - frac
    weights[np.arange(len(times)), left + 1] = frac
    return weights


class MppiExpert:
    """MPPI expert for a :class:`PlannableEnv`; acts for any task of its family."""

    def __init__(self, config: MppiConfig = MppiConfig()) -> None:
        if config.knots < 2 or config.horizon < 2 or config.samples < 2:
            raise InputError("mppi: need knots >= 2, horizon >= 2 and samples >= 2")
        if not 1 <= config.replan < config.horizon:
            raise InputError("mppi: need 1 <= replan < horizon")
        self.config = config
        steps = np.arange(config.horizon)
        self._spread = interpolation(steps, config.knots, config.horizon)  # [H, K]
        knot_steps = np.linspace(0, config.horizon - 1, config.knots)
        self._shift = interpolation(knot_steps + config.replan, config.knots, config.horizon)
        self._source: Any = None
        self._model: Any = None
        self._pool: Any = None
        self._spec: TaskSpec | None = None
        self._env_name = ""
        self._heading: np.ndarray | None = None
        """The commanded horizontal direction of the heading cost (set at reset)."""
        self.elapsed, self.steps = 0.0, 0

    @property
    def steps_per_second(self) -> float:
        """Measured control steps per second of :meth:`act` so far."""
        return self.steps / self.elapsed if self.elapsed else float("nan")

    def reset(self, env: TaskEnv, task: np.ndarray, seed: int) -> None:
        env = _plannable(env)
        if self._spec is None or self._env_name != env.info.name:
            self._spec, self._env_name = env_task_spec(env), env.info.name
            if "steps/observations" in self._spec.family.fields:
                raise InputError("mppi: the task family reads observations, which rollouts lack")
        self.task = np.asarray(task, np.float64).reshape(1, -1)
        self._heading = self._commanded_direction(env) if self.config.heading_weight else None
        self.rng = np.random.default_rng(seed)
        low, high = env.info.action_low.astype(np.float64), env.info.action_high.astype(np.float64)
        self._low, self._high = low, high
        levels = np.asarray(self.config.noise, np.float64)
        group = np.arange(self.config.samples) * len(levels) // self.config.samples
        self._scale = levels[group][:, None, None] * (high - low) / 2  # [S, 1, nu]
        self.plan = np.clip(np.zeros((self.config.knots, len(low))), low, high)
        self._age = self.config.replan  # control steps taken from the current plan
        if env.physics.model.ptr is not self._source:
            self._prepare_model(env)

    def _prepare_model(self, env: PlannableEnv) -> None:
        """The planner's copy of the model, its rollout pool and output buffers."""
        import mujoco
        from mujoco import rollout

        cfg, source = self.config, env.physics.model.ptr
        if cfg.timestep_factor < 1 or env.substeps % cfg.timestep_factor:
            raise InputError(
                f"mppi: timestep_factor {cfg.timestep_factor} must divide the "
                f"{env.substeps} physics steps of a {env.info.name} control step"
            )
        model = planner_model(source, cfg.timestep_factor, getattr(env, "rollout_sensors", True))
        self._source, self._model = source, model
        self._models = [model] * cfg.samples  # skip_checks: one model per rollout
        self._substeps = env.substeps // cfg.timestep_factor
        self._datas = [mujoco.MjData(model) for _ in range(max(1, cfg.threads))]
        self._pool = rollout.Rollout(nthread=cfg.threads)
        self._state_kind = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self._state = np.empty((1, mujoco.mj_stateSize(model, self._state_kind)))
        nstep = cfg.horizon * self._substeps + 1  # one more step: the final sensors
        self._nstep = nstep
        self._states = np.empty((cfg.samples, nstep, self._state.shape[1]))
        self._sensors = np.empty((cfg.samples, nstep, model.nsensordata))
        self._warmstart = np.empty((1, model.nv))

    def act(self, env: TaskEnv, observation: np.ndarray) -> np.ndarray:
        del observation  # the planner reads the exact simulator state
        start = time.perf_counter()
        env = _plannable(env)
        import mujoco

        cfg, data = self.config, env.physics.data.ptr
        if self._age < cfg.replan:  # keep following the current plan
            action = self._spread[self._age] @ self.plan
            self._age += 1
            self.elapsed += time.perf_counter() - start
            self.steps += 1
            return np.clip(action, self._low, self._high).astype(np.float32)
        mujoco.mj_getState(self._source, data, self._state[0], self._state_kind)
        self._warmstart[0] = data.qacc_warmstart
        nominal = np.clip(self._shift @ self.plan, self._low, self._high)  # [K, nu]
        noise = self.rng.standard_normal((cfg.samples, *nominal.shape)) * self._scale
        noise[0] = 0.0
        knots = np.clip(nominal + noise, self._low, self._high)  # [S, K, nu]
        controls = np.einsum("hk,skn->shn", self._spread, knots)  # [S, H, nu]
        k = self._substeps
        ctrl = np.repeat(controls, k, axis=1)
        ctrl = np.ascontiguousarray(np.concatenate([ctrl, ctrl[:, -1:]], axis=1))
        states, sensors = self._pool.rollout(
            self._models,
            self._datas,
            np.repeat(self._state, cfg.samples, axis=0),
            ctrl,
            skip_checks=True,
            nstep=self._nstep,
            initial_warmstart=np.repeat(self._warmstart, cfg.samples, axis=0),
            state=self._states,
            sensordata=self._sensors,
        )
        after = np.arange(1, cfg.horizon + 1) * k  # rows measured after each control step
        costs = self.costs(env, states[:, after - 1], sensors[:, after], controls)
        spread = float(costs.std())
        scaled = (costs - costs.min()) / (cfg.temperature * spread) if spread > 0 else 0 * costs
        weights = np.exp(-scaled)
        weights /= weights.sum()
        self.plan = np.einsum("s,skn->kn", weights, knots)
        self._age = 1
        self.elapsed += time.perf_counter() - start
        self.steps += 1
        return self.plan[0].astype(np.float32)

    def costs(
        self, env: PlannableEnv, states: np.ndarray, sensors: np.ndarray, controls: np.ndarray
    ) -> np.ndarray:
        """[S] minus the summed task rewards of each sample, plus planner shaping."""
        samples, horizon, nu = controls.shape
        rows = samples * horizon
        actions = controls.reshape(rows, nu)
        fields = env.rollout_fields(states.reshape(rows, -1), sensors.reshape(rows, -1), actions)
        assert self._spec is not None
        rewards = transition_rewards(self._spec, np.zeros((rows, 0)), actions, fields, self.task)
        costs = -rewards.reshape(samples, horizon).sum(axis=1)
        if self.config.tilt_field and self.config.tilt_weight:
            tilt = 1.0 - np.asarray(fields[self.config.tilt_field], np.float64)
            costs += self.config.tilt_weight * tilt.reshape(samples, horizon).sum(axis=1)
        if self._heading is not None:
            # |d| (1 - cos) per step between the forward axis and the direction d
            forward = env.rollout_heading(states)  # [S, H, 2] unit vectors
            norm = float(np.linalg.norm(self._heading))
            misalignment = norm * (1.0 - forward @ (self._heading / norm)).sum(axis=1)
            costs += self.config.heading_weight * misalignment
        return costs

    def _commanded_direction(self, env: PlannableEnv) -> np.ndarray | None:
        """The task's horizontal direction ``d`` for the heading cost, checked once per
        episode; None when the task commands none (no heading cost then)."""
        dims = getattr(env, "heading_task_dims", None)
        if dims is None or not hasattr(env, "rollout_heading"):
            raise InputError(
                f"mppi: heading_weight needs an environment with a heading, not {env.info.name!r}"
            )
        direction = self.task[0, list(dims)]
        return direction if np.any(direction) else None


def planner_model(source: Any, timestep_factor: int, sensors: bool) -> Any:
    """A copy of an ``MjModel`` for planning: ``timestep_factor`` times the timestep,
    sensors off when the planner does not read them."""
    import copy

    import mujoco

    model = copy.copy(source)
    model.opt.timestep = source.opt.timestep * timestep_factor
    if not sensors:
        model.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_SENSOR)
    return model


def _plannable(env: TaskEnv) -> PlannableEnv:
    if not hasattr(env, "rollout_fields") or not hasattr(env, "physics"):
        raise InputError(f"mppi: environment {env.info.name!r} offers no rollout_fields")
    return env  # type: ignore[return-value]


CHEETAH = MppiConfig(samples=64, horizon=30, knots=6, noise=(0.4,), temperature=0.1)
"""0.01 s per control step: plans 0.3 s ahead."""
QUADRUPED = MppiConfig(
    samples=64,
    horizon=25,
    knots=5,
    noise=(0.4,),
    temperature=0.1,
    tilt_field="infos/upright",
    tilt_weight=5.0,
)
"""0.02 s per control step: plans 0.5 s ahead. The tilt penalty keeps fast gaits from
flipping the torso (weight 1 still flips it on "walk forward"; 5 keeps upright > 0.95).
64 samples on the true simulator is the default: fewer samples, a shorter horizon,
replanning every other step or a coarser planner model walk, but make mixed-weight tasks
less identifiable (measurements: benchmarks/RESULTS.md, "MPPI: cost and cheaper
planners")."""


_INT_OPTIONS = {
    "samples": (2, 1 << 16),
    "horizon": (2, 10_000),
    "knots": (2, 1_000),
    "threads": (0, 1_024),
    "replan": (1, 10_000),
    "timestep_factor": (1, 1_000),
}
_FLOAT_OPTIONS = {  # (low, high, strictly above low)
    "temperature": (0.0, 1e6, True),
    "tilt_weight": (0.0, 1e6, False),
    "heading_weight": (0.0, 1e6, False),
}


def mppi_config(base: MppiConfig, options: dict[str, Any]) -> MppiConfig:
    """``base`` with ``options`` (name -> int, float or text) checked: every bad name,
    type or range is a one-line InputError naming the option."""
    unknown_options("mppi", options, [f.name for f in fields(MppiConfig)])
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if name in _INT_OPTIONS:
            checked[name] = int_option(name, value, *_INT_OPTIONS[name])
        elif name in _FLOAT_OPTIONS:
            low, high, above = _FLOAT_OPTIONS[name]
            checked[name] = float_option(name, value, low, high, above=above)
        elif name == "noise":
            checked[name] = _noise_levels(value)
        else:  # tilt_field: a step field name
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{name}={value!r}: must be a step field name")
            checked[name] = value
    config = replace(base, **checked)
    if config.replan >= config.horizon:
        raise InputError(f"replan={config.replan}: must be below horizon={config.horizon}")
    if config.knots > config.horizon:
        raise InputError(f"knots={config.knots}: must be at most horizon={config.horizon}")
    return config


def _noise_levels(value: Any) -> tuple[float, ...]:
    """``noise``: one number or several (a sequence, or text ``0.4,0.15``)."""
    items = value.split(",") if isinstance(value, str) else value
    items = items if isinstance(items, (list, tuple)) else [items]
    levels = []
    for item in items:
        if isinstance(item, str):
            try:
                item = float(item)
            except ValueError:
                raise InputError(
                    f"noise={value!r}: must be numbers above 0, like 0.4,0.15"
                ) from None
        levels.append(float_option("noise", item, 0.0, 10.0, above=True))
    if not levels or len(levels) > 64:
        raise InputError(f"noise={value!r}: must be 1 to 64 numbers above 0")
    return tuple(levels)


@register_expert("cheetah", "mppi", default=True, unnamed=True)
def cheetah_expert(**options: Any) -> MppiExpert:
    """MPPI for the cheetah's target velocities (options override :data:`CHEETAH`)."""
    return MppiExpert(mppi_config(CHEETAH, options))


@register_expert("quadruped", "mppi", unnamed=True)
def quadruped_expert(**options: Any) -> MppiExpert:
    """MPPI for the quadruped's linear tasks (options override :data:`QUADRUPED`)."""
    return MppiExpert(mppi_config(QUADRUPED, options))
