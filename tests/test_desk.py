"""Contract tests of the desk environment, its task spec and its scripted play expert."""

from __future__ import annotations

import numpy as np
import pytest

from hipi_offline.envs import env_task_spec, make_env, transition_rewards
from hipi_offline.envs.desk import FIELD_NAMES, OBSERVATION_DIM
from hipi_offline.experts.base import make_expert
from hipi_offline.experts.desk_play import TASKS, DeskPlay, play_stream
from hipi_offline.tasks.spec import load_task_spec


@pytest.fixture(scope="module")
def env():
    env = make_env("desk")
    yield env
    env.close()


def _rollout(env, seed: int, steps: int) -> tuple[list[np.ndarray], list[dict]]:
    rng = np.random.default_rng(seed)
    observations, fields = [env.reset(seed)], []
    for _ in range(steps):
        result = env.step(rng.uniform(-1, 1, 3))
        observations.append(result.observation)
        fields.append(result.fields)
    return observations, fields


def test_info_shapes_and_fields(env) -> None:
    info = env.info
    assert (info.name, info.task_spec, info.observation_dim, info.action_dim) == (
        "desk",
        "desk-discrete",
        OBSERVATION_DIM,
        3,
    )
    assert info.control_dt == pytest.approx(0.05)
    obs, fields = _rollout(env, 0, 5)
    assert all(o.dtype == np.float32 and o.shape == (OBSERVATION_DIM,) for o in obs)
    for f in fields:
        assert tuple(f) == FIELD_NAMES
        assert np.shape(f["infos/ee"]) == (3,)
        assert np.shape(f["physics/qpos"]) == (13,) and np.shape(f["physics/qvel"]) == (12,)
        assert all(
            np.shape(f[n]) == () for n in FIELD_NAMES if n.startswith("infos/") and n != "infos/ee"
        )
    np.testing.assert_allclose(obs[-1][:3], fields[-1]["infos/ee"])


def test_deterministic_for_a_seed(env) -> None:
    first_obs, first_fields = _rollout(env, 3, 20)
    second_obs, second_fields = _rollout(env, 3, 20)
    np.testing.assert_array_equal(np.stack(first_obs), np.stack(second_obs))
    for a, b in zip(first_fields, second_fields, strict=True):
        for name in FIELD_NAMES:
            np.testing.assert_array_equal(a[name], b[name])
    other_obs, _ = _rollout(env, 4, 0)
    assert not np.array_equal(first_obs[0], other_obs[0])


def test_actions_are_clipped(env) -> None:
    env.reset(1)
    big = env.step(np.array([50.0, -50.0, 50.0])).observation
    env.reset(1)
    unit = env.step(np.array([1.0, -1.0, 1.0])).observation
    np.testing.assert_array_equal(big, unit)


def test_render(env) -> None:
    env.reset(0)
    try:
        image = env.render(64, 48)
    except Exception as err:  # no OpenGL backend on this machine
        pytest.skip(f"no headless GL backend: {type(err).__name__}: {err}")
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
    assert image.std() > 0


def test_spec_predicates_give_indicator_rewards() -> None:
    spec = load_task_spec("desk-discrete")
    assert spec.task_names == TASKS
    # rows: one state each; columns of the expected indicators follow TASKS
    drawer = np.array([0.15, 0.0, 0.08, 0.08])
    door = np.array([0.0, 0.2, 0.1, 0.1])
    light = np.array([1.0, 0.0, 1.0, 0.0])
    block_x = np.array([-0.2, 0.2, 0.0, 0.0])
    block_y = np.array([0.0, 0.0, 0.15, 0.0])
    fields = {
        "infos/drawer": drawer,
        "infos/door": door,
        "infos/light": light,
        "infos/block_x": block_x,
        "infos/block_y": block_y,
    }
    expected = np.stack(
        [
            drawer > 0.12,
            drawer < 0.03,
            door < 0.04,
            door > 0.18,
            light > 0.5,
            light < 0.5,
            block_x < -0.12,
            block_x > 0.12,
            block_y > 0.1,
        ],
        axis=1,
    ).astype(float)
    rewards = transition_rewards(spec, np.zeros((4, 17)), np.zeros((4, 3)), fields, np.eye(9))
    np.testing.assert_array_equal(rewards, expected)
    mixed = transition_rewards(
        spec, np.zeros((4, 17)), np.zeros((4, 3)), fields, np.full((1, 9), 1 / 9)
    )
    np.testing.assert_allclose(mixed[:, 0], expected.sum(axis=1) / 9)


@pytest.mark.parametrize("task", range(len(TASKS)), ids=TASKS)
def test_commanded_task_succeeds(env, task: int) -> None:
    expert = make_expert("desk")
    one_hot = np.eye(len(TASKS))[task]
    wins, trials, seed = 0, 4, 100 * task
    for _ in range(trials):
        while True:  # a start where the task is not already achieved
            seed += 1
            env.reset(seed)
            if not expert.satisfied(env)[task]:
                break
        expert.reset(env, one_hot, seed)
        for _ in range(env.info.default_steps):
            env.step(expert.act(env, None))
            if expert.phase == "done":
                break
        wins += bool(expert.satisfied(env)[task])
    assert wins / trials >= 0.8, f"{TASKS[task]}: {wins}/{trials}"


def test_commanded_achieved_task_holds_still(env) -> None:
    expert = DeskPlay()
    env.reset(5)
    done = np.flatnonzero(expert.satisfied(env))
    expert.reset(env, np.eye(len(TASKS))[done[0]], 5)
    assert expert.phase == "idle"
    np.testing.assert_array_equal(expert.act(env, None), np.zeros(3, np.float32))


def test_play_stream_visits_several_subtasks(env) -> None:
    expert = DeskPlay()
    steps = 600
    obs, actions, fields, subtask = play_stream(env, expert, steps, seed=2)
    assert obs.shape == (steps, OBSERVATION_DIM) and actions.shape == (steps, 3)
    assert obs.dtype == np.float32 and np.abs(actions).max() <= 1.0
    assert set(fields) == set(FIELD_NAMES) and all(len(v) == steps for v in fields.values())
    assert subtask.shape == (steps,) and subtask.min() >= 0
    assert len(np.unique(subtask)) >= 4
    # the stored fields reproduce the stream's observations (ee position after each step)
    np.testing.assert_allclose(obs[1:, :3], fields["infos/ee"][:-1])
    # each finished sub-task achieved its predicate at its last step
    rewards = transition_rewards(env_task_spec(env), obs, actions, fields, np.eye(len(TASKS)))
    ends = np.flatnonzero(np.diff(subtask))
    assert len(ends) >= 3
    assert np.mean([rewards[t, subtask[t]] for t in ends]) >= 0.8
    again = play_stream(env, DeskPlay(), steps, seed=2)
    np.testing.assert_array_equal(again[1], actions)
    np.testing.assert_array_equal(again[3], subtask)
