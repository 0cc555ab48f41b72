"""Contract tests over every registered expert of every registered environment: it is
built by name, acts within the environment's bounds, is a function of its seed, and
refuses an option it does not have."""

from __future__ import annotations

import numpy as np
import pytest

from hipi_offline.envs import env_entry, env_names, env_task_spec, make_env
from hipi_offline.errors import InputError
from hipi_offline.experts import default_expert, expert_names, make_expert

EXPERTS = [
    pytest.param(env, name, marks=[pytest.mark.slow] if name == "mppi" else [])  # MPPI plans
    for env in env_names()
    for name in expert_names(env)
]


def test_every_environment_has_a_default_expert() -> None:
    for env in env_names():
        assert default_expert(env) in expert_names(env)


def _actions(env_name: str, expert_name: str, seed: int, steps: int = 3) -> np.ndarray:
    """The expert's first ``steps`` actions in an episode reset with ``seed``."""
    env = make_env(env_name)
    try:
        observation = env.reset(seed)
        task = None
        if not env_entry(env_name).plays:
            task = env_task_spec(env).prior.sample(1, np.random.default_rng(seed))[0]
        expert = make_expert(env_name, expert_name)
        expert.reset(env, task, seed)
        actions = []
        for _ in range(steps):
            action = np.asarray(expert.act(env, observation), np.float64)
            actions.append(action)
            observation = env.step(action).observation
        return np.stack(actions)
    finally:
        env.close()


@pytest.mark.parametrize(("env_name", "expert_name"), EXPERTS)
def test_expert_acts_within_bounds_and_follows_its_seed(env_name: str, expert_name: str) -> None:
    env = make_env(env_name)
    low, high = env.info.action_low, env.info.action_high
    env.close()
    first = _actions(env_name, expert_name, seed=5)
    assert first.shape[1] == len(low)
    assert np.isfinite(first).all()
    assert (first >= low - 1e-6).all() and (first <= high + 1e-6).all()
    np.testing.assert_allclose(_actions(env_name, expert_name, seed=5), first, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("env_name", "expert_name"), EXPERTS)
def test_expert_refuses_an_unknown_option(env_name: str, expert_name: str) -> None:
    with pytest.raises(InputError, match="no_such_option"):
        make_expert(env_name, expert_name, no_such_option=1)
