"""The ``reacher`` goal domain (dm_control's two-link reacher, commanded fingertip
goals): kinematics against float64 references, rewards recomputed from the stored
fingertip, the goal shown only for rendering, the ``ik`` expert against random
actions, HER's achieved goal, and ``collect`` / ``relabel`` / ``train-rl`` end to end.
The registry's contract tests (tests/test_envs.py, tests/test_experts.py,
tests/test_collect.py) cover it as every other environment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import store_arrays

from cli.main import exit_code
from hipi_offline.collect import CollectConfig, collect
from hipi_offline.envs import env_entry, env_task_spec, make_env, transition_rewards
from hipi_offline.envs.base import gl_unavailable, stack_fields
from hipi_offline.envs.reacher import LINK, MAX_REACH, MIN_REACH, WRIST_LIMIT, fingertip
from hipi_offline.experts import default_expert, make_expert
from hipi_offline.experts.reacher_ik import inverse_kinematics
from hipi_offline.rl.relabel import achieved_goal, goal_fields, make_relabeler
from hipi_offline.rl.replay import Replay
from hipi_offline.rl.train import read_metrics
from hipi_offline.store import open_store
from hipi_offline.tasks.spec import load_task_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPECS = ("reacher-goal", "reacher-goal-sparse")
MARGIN = 0.05
"""The sparse spec's margin (checked against the spec below)."""
EPISODES = 20
"""Seeded episodes of the expert-against-random comparison."""


@pytest.fixture(scope="module")
def env():
    environment = make_env("reacher")
    yield environment
    environment.close()


def episode(env, seed: int, policy: str) -> dict[str, np.ndarray]:
    """One default-length episode under the ``ik`` expert or uniform random actions,
    commanded a goal from the prior: observations [T + 1], actions, fields, goal."""
    rng = np.random.default_rng([11, seed])
    goal = env_task_spec(env).prior.sample(1, rng)[0].astype(np.float32)
    observations = [env.reset(seed)]
    expert = make_expert("reacher")
    expert.reset(env, goal, seed)
    actions, rows = [], []
    for _ in range(env.info.default_steps):
        if policy == "ik":
            action = np.asarray(expert.act(env, observations[-1]), np.float32)
        else:
            action = rng.uniform(env.info.action_low, env.info.action_high).astype(np.float32)
        result = env.step(action)
        actions.append(action)
        observations.append(result.observation)
        rows.append(result.fields)
    return {
        "observations": np.stack(observations),
        "actions": np.stack(actions),
        "goal": goal,
        **stack_fields(rows),
    }


def test_registry_entry_and_specs() -> None:
    entry = env_entry("reacher")
    assert (entry.task_spec, entry.collection, entry.task_frame) == (
        "reacher-goal",
        "commanded",
        None,
    )
    assert default_expert("reacher") == "ik"
    dense, sparse = (load_task_spec(name) for name in SPECS)
    for spec in (dense, sparse):
        assert spec.family.name == "goal" and spec.family.fields == ("steps/infos/fingertip",)
        np.testing.assert_array_equal(spec.prior.low, [-0.2, -0.2])
        np.testing.assert_array_equal(spec.prior.high, [0.2, 0.2])
    assert dense.family.margin is None and sparse.family.margin == MARGIN
    # every goal of the box lies within the margin of a reachable fingertip position
    corner = float(np.hypot(0.2, 0.2))
    assert corner - MAX_REACH < MARGIN and MIN_REACH < MARGIN


def test_observation_and_fingertip_follow_the_joint_angles(env) -> None:
    """The fingertip field is the forward kinematics of the joint angles (float64,
    rtol 1e-12: MuJoCo's and numpy's sines differ in the last bits); the observation
    holds their cos and sin (float32) and the velocities, not the goal."""
    data = episode(env, 3, "random")
    qpos, qvel = data["physics/qpos"], data["physics/qvel"]
    assert data["infos/fingertip"].dtype == np.float64 and data["infos/fingertip"].shape == (50, 2)
    np.testing.assert_allclose(data["infos/fingertip"], fingertip(qpos), rtol=1e-12, atol=1e-15)
    expected = np.concatenate([np.cos(qpos), np.sin(qpos), qvel], axis=1).astype(np.float32)
    np.testing.assert_array_equal(data["observations"][1:], expected)
    assert np.all(np.abs(qpos[:, 1]) <= WRIST_LIMIT + 1e-3)
    reach = np.linalg.norm(data["infos/fingertip"], axis=1)
    assert np.all((reach >= MIN_REACH - 1e-3) & (reach <= MAX_REACH + 1e-12))


def test_reset_draws_joints_from_the_seed(env) -> None:
    for seed in range(5):
        first = env.reset(seed)
        np.testing.assert_array_equal(env.reset(seed), first)
        qpos = env.physics.data.qpos
        assert -np.pi <= qpos[0] < np.pi and abs(qpos[1]) <= WRIST_LIMIT
        np.testing.assert_array_equal(first[4:], [0.0, 0.0])  # at rest
    assert not np.array_equal(env.reset(0), env.reset(1))


@pytest.mark.parametrize("name", SPECS)
def test_rewards_from_the_fingertip_equal_transition_rewards(env, name: str) -> None:
    """A float64 numpy reference of -||x - g|| (or 1[||x - g|| < m] - 1) on the
    fingertip field equals the family's ``transition_rewards`` for the commanded goal
    and for other goals (rtol 1e-12: cdist's and numpy's square roots may differ in
    the last bit)."""
    spec = load_task_spec(name)
    data = episode(env, 5, "ik")
    goals = np.concatenate([data["goal"][None], spec.prior.sample(7, np.random.default_rng(2))])
    goals = goals.astype(np.float32)
    fields = {k: v for k, v in data.items() if "/" in k}
    rewards = transition_rewards(spec, data["observations"][:-1], data["actions"], fields, goals)
    tip = data["infos/fingertip"].astype(np.float64)
    dist = np.sqrt(((tip[:, None, :] - goals.astype(np.float64)[None]) ** 2).sum(axis=2))
    expected = -dist if spec.family.margin is None else (dist < MARGIN).astype(np.float64) - 1.0
    assert rewards.dtype == np.float64 and rewards.shape == (50, 8)
    np.testing.assert_allclose(rewards, expected, rtol=1e-12, atol=0)
    if spec.family.margin is not None:  # the expert ends within the margin of its goal
        assert rewards[-1, 0] == 0.0


def test_the_goal_is_shown_for_rendering_only(env) -> None:
    """Moving the target to a goal changes no step result; it shows in images."""
    actions = np.random.default_rng(4).uniform(-1, 1, (10, 2))

    def run() -> list:
        env.reset(9)
        return [env.step(a) for a in actions]

    hidden = run()
    env.show_goal(np.array([0.1, -0.15]))
    try:
        shown = run()
        for a, b in zip(hidden, shown, strict=True):
            np.testing.assert_array_equal(a.observation, b.observation)
            for key in a.fields:
                np.testing.assert_array_equal(a.fields[key], b.fields[key])
        if gl_unavailable() is None:
            with_goal = env.render(64, 48)
            env.show_goal(None)
            without = env.render(64, 48)
            assert with_goal.shape == (48, 64, 3) and not np.array_equal(with_goal, without)
    finally:
        env.show_goal(None)


def test_inverse_kinematics_reaches_the_goal() -> None:
    """Both solutions put the fingertip on a reachable goal (float64, atol 1e-12 m),
    within the wrist's range; an unreachable goal is moved radially into reach."""
    rng = np.random.default_rng(0)
    radius = rng.uniform(MIN_REACH, MAX_REACH, 200)
    angle = rng.uniform(-np.pi, np.pi, 200)
    for goal in np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1):
        solutions = inverse_kinematics(goal)
        assert np.all(np.abs(solutions[:, 1]) <= WRIST_LIMIT)
        np.testing.assert_allclose(fingertip(solutions), np.stack([goal, goal]), rtol=0, atol=1e-12)
    for goal, reach in (([0.3, 0.3], MAX_REACH), ([0.01, -0.02], MIN_REACH)):
        goal = np.asarray(goal)
        tips = fingertip(inverse_kinematics(goal))
        np.testing.assert_allclose(tips, np.stack([goal, goal]) * reach / np.linalg.norm(goal))
    assert MAX_REACH == 2 * LINK


def test_expert_reaches_goals_random_actions_do_not(env) -> None:
    """Final fingertip distance to the goal over 20 seeded episodes (50 steps). Measured
    here: ik mean 0.0079 m, max 0.021, all 20 within 0.05; random actions mean 0.21 m,
    max 0.40, 1 of 20 within 0.05 (over 300 other ik episodes: all within 0.05 of their
    goal by step 40, the goals out of reach within 0.043 of it)."""
    final = {
        policy: np.array(
            [
                np.linalg.norm(data["infos/fingertip"][-1] - data["goal"])
                for data in (episode(env, seed, policy) for seed in range(EPISODES))
            ]
        )
        for policy in ("ik", "random")
    }
    assert final["ik"].mean() < 0.02 and (final["ik"] < MARGIN).mean() >= 0.9
    assert final["random"].mean() > 0.1 and (final["random"] < MARGIN).mean() <= 0.3
    assert final["ik"].mean() < final["random"].mean() / 10


def test_her_final_relabels_to_the_reached_fingertip(env) -> None:
    """HER finds the achieved goal in the goal family's field: every relabeled
    transition is given its episode's final fingertip and the family's reward for it."""
    spec = load_task_spec("reacher-goal-sparse")
    assert goal_fields(spec.family) == ("steps/infos/fingertip",)
    replay = Replay()
    finals = []
    for seed in range(3):
        data = episode(env, seed, "random")
        steps = {
            "steps/observations": data["observations"][:-1],
            "steps/actions": data["actions"],
            "steps/next_observations": data["observations"][1:],
            "steps/infos/fingertip": data["infos/fingertip"],
            "steps/rewards": np.zeros(len(data["actions"])),
        }
        replay.add_episode(steps, data["goal"])
        finals.append(data["infos/fingertip"][-1])
    generator = torch.Generator().manual_seed(0)
    batch = replay.sample(64, generator, spec.family.fields, "steps/observations")
    relabeler = make_relabeler("her-final", spec.family, fraction=1.0)
    out = relabeler(batch, generator, lookup=replay)
    assert bool(out.relabeled.all())
    expected = np.stack(finals)[batch.episodes.numpy()]
    np.testing.assert_array_equal(out.batch.tasks.numpy(), expected.astype(np.float32))
    tips = batch.fields["steps/infos/fingertip"].numpy()
    dist = np.linalg.norm(tips - expected.astype(np.float32).astype(np.float64), axis=1)
    np.testing.assert_allclose(out.batch.rewards.numpy(), (dist < MARGIN) - 1.0, rtol=0, atol=0)
    achieved = achieved_goal(
        spec.family, {"steps/infos/fingertip": torch.from_numpy(tips)}, batch.tasks
    )
    np.testing.assert_array_equal(achieved.numpy(), tips.astype(np.float32))


def test_collect_then_relabel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``collect reacher`` stores the fingertip and the commanded goals (the expert
    ends within the margin of each); ``relabel`` writes a label set with either spec."""
    store = tmp_path / "x.h5"
    assert exit_code(["collect", "reacher", "--episodes", "4", "--out", str(store)]) == 0
    data = store_arrays(store)
    assert data["steps/infos/fingertip"].shape == (200, 2)
    assert data["steps/observations"].shape == (200, 6)
    tasks = data["episodes/task"].astype(np.float64)
    assert tasks.shape == (4, 2) and np.all(np.abs(tasks) <= 0.2)
    tip = data["steps/infos/fingertip"].reshape(4, 50, 2)
    assert np.all(np.linalg.norm(tip[:, -1] - tasks, axis=1) < MARGIN)
    for name in SPECS:
        argv = ["relabel", str(store), "--tasks", name, "--name", name, "--device", "cpu"]
        assert exit_code(argv) == 0, capsys.readouterr().err
    with open_store(store) as opened:
        assert opened.attrs["collect_expert"].startswith("ik")
        for name in SPECS:
            labels = opened.read_labels(name)
            assert labels.attrs["family"] == "goal" and labels.num_episodes == 4
            assert labels.num_candidates == 256
            assert np.all(np.abs(labels.candidates) <= 0.2)
            assert np.isfinite(labels.entropy).all() and np.isfinite(labels.log_z).all()


def test_relabeled_goals_follow_the_commanded_ones(tmp_path: Path) -> None:
    """Identifiable: relabeling 40 expert episodes with ``reacher-goal`` gives posterior
    mean goals that correlate with the commanded goals, per axis (measured 0.905 and
    0.882; the threshold is 0.8). With few episodes HIPI's log Z(psi), a mean over the
    episodes, pulls the posterior toward goals no episode reached, so 4 would not do."""
    store = tmp_path / "x.h5"
    collect("reacher", store, CollectConfig(episodes=40))
    assert exit_code(["relabel", str(store), "--tasks", "reacher-goal", "--device", "cpu"]) == 0
    with open_store(store) as opened:
        tasks = opened.read_episode_field("episodes/task").astype(np.float64)
        labels = opened.read_labels("hipi")
    probs = labels.topk_probabilities()
    mean = (probs[..., None] * labels.candidates[labels.topk_index].astype(np.float64)).sum(1)
    for axis in range(2):
        assert np.corrcoef(mean[:, axis], tasks[:, axis])[0, 1] > 0.8


@pytest.mark.parametrize(
    ("spec", "relabel"),
    [
        ("reacher-goal-sparse", "her-final"),
        pytest.param("reacher-goal", "hipi", marks=pytest.mark.slow),  # 6-12 s here
    ],
)
def test_train_rl_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, relabel: str
) -> None:
    """A tiny ``train-rl reacher`` run: metrics for every episode, relabeled batches,
    the replay store holding the fingertip."""
    out = tmp_path / "run"
    argv = [
        "train-rl", "reacher", "--tasks", spec, "--relabel", relabel, "--out", str(out),
        "--steps", "150", "--start-steps", "50", "--batch-size", "16", "--hidden", "16,16",
        "--checkpoint-every", "100", "--no-progress", "--threads", "1",
    ]  # fmt: skip
    assert exit_code(argv) == 0, capsys.readouterr().err
    rows = read_metrics(out / "metrics.csv")
    assert [int(r["episode"]) for r in rows] == [0, 1, 2]
    assert all(np.isfinite(r["final_distance"]) for r in rows)
    assert all(r["relabeled"] == 0.5 for r in rows[1:])  # the default fraction
    replay = store_arrays(out / "replay.h5")
    assert replay["steps/infos/fingertip"].shape == (150, 2)
    goals = replay["episodes/task"].astype(np.float64)
    final = replay["steps/infos/fingertip"][49::50]
    distance = np.linalg.norm(final - goals, axis=1)
    np.testing.assert_allclose([r["final_distance"] for r in rows], distance, rtol=1e-12)
