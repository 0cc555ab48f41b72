"""Tests of the environments a planner can simulate (those with ``rollout_fields``:
cheetah and quadruped) and the MPPI expert; what every environment must do is in
test_envs.py."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import torch
from mujoco import rollout

from hipi_offline.envs import env_entry, env_names, env_task_spec, make_env, transition_rewards
from hipi_offline.experts import make_expert
from hipi_offline.relabel import accumulate_returns, make_accumulator
from hipi_offline.store import create_store

ENVS = [name for name in env_names() if hasattr(env_entry(name).factory, "rollout_fields")]
"""The registered environments with vectorized rollout fields (MPPI can plan in them)."""
FIELDS = {
    "cheetah": {"infos/speed", "physics/qpos", "physics/qvel"},
    "quadruped": {
        "infos/velocity_x",
        "infos/velocity_y",
        "infos/height",
        "infos/upright",
        "infos/ctrl_cost",
        "physics/qpos",
        "physics/qvel",
        "physics/act",
    },
}


@pytest.fixture(scope="module", params=ENVS)
def env(request):
    environment = make_env(request.param)
    yield environment
    environment.close()


def random_actions(env, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low, high = env.info.action_low, env.info.action_high
    return rng.uniform(low, high, (count, env.info.action_dim)).astype(np.float32)


def episode(env, seed: int, actions: np.ndarray):
    """(observations before each action, per-step fields) of one episode."""
    obs, observations, fields = env.reset(seed), [], []
    for action in actions:
        observations.append(obs)
        result = env.step(action)
        fields.append(result.fields)
        obs = result.observation
    return np.stack(observations), fields


def test_info_and_shapes(env):
    info = env.info
    assert (
        info.task_spec
        == {"cheetah": "cheetah-velocity", "quadruped": "quadruped-linear"}[info.name]
    )
    assert info.action_low.shape == info.action_high.shape == (info.action_dim,)
    assert np.all(info.action_low < info.action_high)
    assert info.control_dt == pytest.approx({"cheetah": 0.01, "quadruped": 0.02}[info.name])
    assert info.default_steps == 1000
    obs = env.reset(0)
    assert obs.dtype == np.float32 and obs.shape == (info.observation_dim,)
    observations, fields = episode(env, 0, random_actions(env, 5, 0))
    assert all(set(f) == FIELDS[info.name] for f in fields)
    for name, value in fields[0].items():
        want = np.float64 if name.startswith("physics/") else np.float32
        assert value.dtype == want, name
        assert all(f[name].shape == value.shape for f in fields)
    assert fields[0]["physics/qpos"].shape == (env.physics.model.nq,)
    assert np.isfinite(observations).all()


@pytest.mark.slow
def test_render(env):
    env.reset(0)
    try:
        image = env.render(64, 48)
    except Exception as err:  # no usable GL backend (MUJOCO_GL=egl needs libegl1)
        pytest.skip(f"no OpenGL backend for rendering: {err}")
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
    assert image.std() > 0


def test_rollout_fields_match_step(env):
    """The planner's vectorized fields equal the stepped ones exactly."""
    env.reset(2)
    model, data = env.physics.model.ptr, env.physics.data.ptr
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, state, spec)
    actions = random_actions(env, 10, 2).astype(np.float64)
    k = env.substeps
    ctrl = np.repeat(actions, k, axis=0)
    ctrl = np.concatenate([ctrl, ctrl[-1:]])[None]
    states, sensors = rollout.rollout(
        model, mujoco.MjData(model), state[None], ctrl, initial_warmstart=data.qacc_warmstart[None]
    )
    after = np.arange(1, 11) * k
    planned = env.rollout_fields(states[0, after - 1], sensors[0, after], actions)
    stepped = [env.step(a).fields for a in actions]
    for name in FIELDS[env.info.name]:
        got = np.stack([f[name] for f in stepped])
        np.testing.assert_allclose(got, planned[name], rtol=0, atol=1e-12, err_msg=name)


def test_quadruped_accessors_match_the_suite():
    env = make_env("quadruped")
    env.reset(4)
    for action in random_actions(env, 15, 4):
        fields = env.step(action).fields
    physics = env.physics
    world = physics.named.data.xmat["torso"].reshape(3, 3) @ physics.torso_velocity()
    np.testing.assert_allclose(fields["infos/velocity_x"], world[0], atol=1e-5)
    np.testing.assert_allclose(fields["infos/velocity_y"], world[1], atol=1e-5)
    np.testing.assert_allclose(fields["infos/upright"], physics.torso_upright(), atol=1e-6)
    np.testing.assert_allclose(fields["infos/height"], physics.named.data.xpos["torso", "z"])
    # the planner's heading: the torso's x-axis (first column of xmat) on the floor
    xmat = physics.named.data.xmat["torso"].reshape(3, 3)
    expected = xmat[:2, 0] / np.linalg.norm(xmat[:2, 0])
    state = np.empty(mujoco.mj_stateSize(physics.model.ptr, mujoco.mjtState.mjSTATE_FULLPHYSICS))
    mujoco.mj_getState(
        physics.model.ptr, physics.data.ptr, state, mujoco.mjtState.mjSTATE_FULLPHYSICS
    )
    np.testing.assert_allclose(env.rollout_heading(state), expected, atol=1e-9)
    env.close()


def test_rollout_rewards_equal_stored_and_relabel_returns(env, tmp_path):
    """Per-step rewards at collection == rewards of the stored fields == engine returns."""
    spec = env_task_spec(env)
    tasks = spec.prior.sample(6, np.random.default_rng(0)).astype(np.float32)
    lengths, steps, online = [12, 9], [], []
    for seed, length in enumerate(lengths):
        actions = random_actions(env, length, seed)
        observations, fields = episode(env, seed, actions)
        per_step = [
            transition_rewards(
                spec,
                observations[t : t + 1],
                actions[t : t + 1],
                {k: v[None] for k, v in fields[t].items()},
                tasks,
            )
            for t in range(length)
        ]
        online.append(np.concatenate(per_step).sum(axis=0))
        steps.append(
            {
                "observations": observations,
                "actions": actions,
                **{k: np.stack([f[k] for f in fields]) for k in fields[0]},
            }
        )
    columns = {k: np.concatenate([s[k] for s in steps]) for k in steps[0]}
    with create_store(tmp_path / f"{env.info.name}.h5", env=env.info.name) as store:
        store.append_episodes(columns, lengths)
        stored = {k: store.read_steps(f"steps/{k}") for k in columns}
        fields = {k: v for k, v in stored.items() if k not in ("observations", "actions")}
        offline = transition_rewards(spec, stored["observations"], stored["actions"], fields, tasks)
        offline = np.stack([offline[:12].sum(0), offline[12:].sum(0)])
        task_tensor = torch.from_numpy(tasks.astype(np.float64))
        acc = make_accumulator(spec.family, task_tensor, store.num_episodes)
        engine = accumulate_returns(store, spec, acc, device=torch.device("cpu"), chunk_steps=8)
        engine = engine.result(task_tensor).numpy()
    np.testing.assert_allclose(np.stack(online), offline, rtol=0, atol=1e-9)
    np.testing.assert_allclose(engine, offline, rtol=0, atol=1e-9)


@pytest.mark.slow  # 300 steps, 150 of them planned by the default MPPI expert
def test_mppi_cheetah_tracks_a_target_speed():
    env, psi, steps = make_env("cheetah"), 2.0, 150
    expert = make_expert("cheetah")
    random = random_actions(env, steps, 5)
    errors = {}
    for policy in ("mppi", "random"):
        obs = env.reset(5)
        expert.reset(env, np.array([psi]), 5)
        speeds = []
        for t in range(steps):
            action = expert.act(env, obs) if policy == "mppi" else random[t]
            result = env.step(action)
            obs = result.observation
            speeds.append(float(result.fields["infos/speed"]))
        errors[policy] = np.abs(np.array(speeds[steps // 2 :]) - psi).mean()
    assert errors["mppi"] < 0.3, errors
    assert errors["random"] > 3 * errors["mppi"], errors
    assert expert.steps_per_second > 0
    env.close()
