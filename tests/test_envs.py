"""Contract tests over every registered environment (``env_names()``): the registry's
metadata without building anything, and the same determinism, clipping, shape and
reward checks for each environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_arrays

from hipi_offline.envs import env_entry, env_names, env_task_spec, make_env, transition_rewards
from hipi_offline.envs.base import COLLECTIONS, register, stack_fields
from hipi_offline.errors import InputError
from hipi_offline.experts import expert_names
from hipi_offline.tasks.spec import load_task_spec

ROOT = Path(__file__).resolve().parents[1]


def test_the_built_in_environments_are_registered() -> None:
    assert {"cheetah", "desk", "quadruped"} <= set(env_names())


@pytest.mark.slow
def test_metadata_is_read_without_mujoco() -> None:
    """Reading every entry imports neither MuJoCo nor dm_control."""
    code = (
        "import sys\n"
        "from hipi_offline.envs import env_entry, env_names\n"
        "print([(env_entry(n).task_spec, env_entry(n).collection) for n in env_names()])\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('mujoco', 'dm_control')]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "desk-discrete" in done.stdout


def test_unknown_environment_and_bad_collection_are_refused() -> None:
    with pytest.raises(InputError, match="ENV: unknown environment 'nope'.*cheetah"):
        env_entry("nope")
    with pytest.raises(ValueError, match="collection 'streams'"):
        register("other", task_spec="cheetah-velocity", collection="streams")


@pytest.mark.parametrize("name", env_names())
def test_entry_metadata(name: str) -> None:
    entry = env_entry(name)
    assert entry.name == name and entry.collection in COLLECTIONS
    assert entry.plays == (entry.collection == "play")
    spec = load_task_spec(entry.task_spec)
    assert expert_names(name), f"{name} has no expert to collect with"
    if entry.plays:  # play windows are labeled with the sub-task they complete
        assert spec.is_discrete
    if entry.task_frame is not None:  # a direction in the task, a rotation in the obs
        assert all(0 <= d < spec.prior.dim for d in entry.task_frame.direction)


@pytest.fixture(scope="module", params=env_names())
def env(request):
    environment = make_env(request.param)
    yield environment
    environment.close()


def _actions(env, count: int, seed: int) -> np.ndarray:
    info = env.info
    rng = np.random.default_rng(seed)
    return rng.uniform(info.action_low, info.action_high, (count, info.action_dim))


def _episode(env, seed: int, actions: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Observations [T + 1, obs_dim] (the first from reset) and stacked step fields."""
    observations, rows = [env.reset(seed)], []
    for action in actions:
        result = env.step(action)
        observations.append(result.observation)
        rows.append(result.fields)
    return np.stack(observations), stack_fields(rows)


def test_info_matches_the_entry_and_the_spaces(env) -> None:
    info, entry = env.info, env_entry(env.info.name)
    assert (info.name, info.task_spec) == (entry.name, entry.task_spec)
    assert info.action_low.shape == info.action_high.shape == (info.action_dim,)
    assert np.all(info.action_low < info.action_high)
    assert info.control_dt > 0 and info.default_steps > 0
    observations, fields = _episode(env, 0, _actions(env, 6, 0))
    assert observations.dtype == np.float32
    assert observations.shape == (7, info.observation_dim)
    assert np.isfinite(observations).all()
    assert all(len(value) == 6 for value in fields.values())
    if entry.task_frame is not None:  # 9 entries of a rotation matrix: orthonormal rows
        rotation = observations[-1, entry.task_frame.rotation :][:9].reshape(3, 3)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-4)


def test_deterministic_for_a_seed(env) -> None:
    actions = _actions(env, 20, 1)
    obs_a, fields_a = _episode(env, 7, actions)
    obs_b, fields_b = _episode(env, 7, actions)
    obs_c, _ = _episode(env, 8, actions)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert_same_arrays(fields_a, fields_b)
    assert not np.array_equal(obs_a[0], obs_c[0])


def test_actions_are_clipped(env) -> None:
    """An action outside the bounds acts as the bound: the same observation and fields."""
    low, high = env.info.action_low, env.info.action_high
    for inside, outside in ((high, high * 10 + 1), (low, low * 10 - 1)):
        env.reset(3)
        a = env.step(inside)
        env.reset(3)
        b = env.step(outside)
        np.testing.assert_array_equal(a.observation, b.observation)
        for name in a.fields:
            np.testing.assert_array_equal(a.fields[name], b.fields[name], err_msg=name)


def test_transition_rewards_have_a_row_per_step_and_a_column_per_task(env) -> None:
    spec = env_task_spec(env)
    tasks = spec.prior.sample(4, np.random.default_rng(0)).astype(np.float32)
    actions = _actions(env, 5, 2).astype(np.float32)
    observations, fields = _episode(env, 2, actions)
    rewards = transition_rewards(spec, observations[:-1], actions, fields, tasks)
    assert rewards.shape == (5, 4) and rewards.dtype == np.float64
    assert np.isfinite(rewards).all()


def test_stack_fields() -> None:
    rows = [{"a": np.float32(i), "b": np.full(2, i)} for i in range(3)]
    stacked = stack_fields(rows)
    assert stacked["a"].dtype == np.float32 and stacked["a"].shape == (3,)
    assert stacked["b"].shape == (3, 2)
    per_step = [{"b": row["b"]} for row in rows]  # [B=2] each: stacked to [B, T=3]
    assert stack_fields(per_step, axis=1)["b"].shape == (2, 3)
    empty = stack_fields([], like=rows[0])
    assert empty["a"].shape == (0,) and empty["b"].shape == (0, 2)
    assert empty["a"].dtype == np.float32
    with pytest.raises(ValueError):
        stack_fields([])
