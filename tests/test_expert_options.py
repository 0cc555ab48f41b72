"""Expert names and options through collect (``--expert NAME``, ``--expert NAME=VALUE``)
and the planner's model copy."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.collect import CollectConfig, collect
from hipi_offline.collect.episodes import unit_seeds
from hipi_offline.collect.run import expert_choice, recorded_expert
from hipi_offline.envs import make_env
from hipi_offline.errors import InputError
from hipi_offline.experts import make_expert
from hipi_offline.experts.mppi import MppiConfig, MppiExpert
from hipi_offline.store import open_store

STEPS = 6


def _actions(path: Path) -> np.ndarray:
    with open_store(path) as store:
        return store.read_steps("steps/actions")


def test_options_are_parsed_and_checked() -> None:
    assert expert_choice("cheetah", ("samples=16", "noise=0.3")) == (
        "mppi",
        (("noise", 0.3), ("samples", 16)),
    )
    assert expert_choice("quadruped", ()) == ("trot", ())
    assert expert_choice("quadruped", ("mppi", "samples=8")) == ("mppi", (("samples", 8),))
    assert expert_choice("quadruped", ("noise=0.1", "trot")) == ("trot", (("noise", 0.1),))
    for bad, message in [
        (("samples",), "--expert samples: not an expert of cheetah (have: mppi)"),
        (("mppi", "trot"), "names two experts"),
        (("",), "expected an expert's name"),
        (("colour=red",), "colour"),
        (("samples=1",), "samples=1: must be an integer from 2"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            expert_choice("cheetah", bad)


@pytest.mark.parametrize(
    ("env", "pair", "message"),
    [
        ("cheetah", "horizon=abc", "--expert horizon='abc': must be an integer"),
        ("cheetah", "horizon=2.5", "--expert horizon=2.5: must be an integer"),
        ("cheetah", "horizon=0", "--expert horizon=0: must be an integer from 2"),
        ("cheetah", "samples=-3", "--expert samples=-3"),
        ("cheetah", "samples=10000000000", "--expert samples=10000000000"),
        ("cheetah", "temperature=nan", "--expert temperature=nan: must be a finite number"),
        ("cheetah", "temperature=0", "--expert temperature=0"),
        ("cheetah", "tilt_weight=-1", "--expert tilt_weight=-1"),
        ("cheetah", "noise=inf", "--expert noise=inf"),
        ("cheetah", "noise=0.4,x", "--expert noise='0.4,x'"),
        ("cheetah", "replan=30", "--expert replan=30: must be below horizon=30"),
        ("cheetah", "knots=40", "--expert knots=40: must be at most horizon"),
        ("cheetah", "=3", "NAME=VALUE"),
        ("quadruped", "colour=1", "--expert colour: not an option of the trot expert"),
        ("quadruped", "speed=2", "--expert speed=2: must be a finite number from 0 to 1"),
        ("quadruped", "speed=fast", "--expert speed='fast': must be auto or a number"),
        ("quadruped", "posture=0.5", "--expert posture=0.5: must be a finite number from -0.2"),
        ("quadruped", "advance=0", "--expert advance=0: must be a finite number from 0.01"),
        ("quadruped", "noise=nan", "--expert noise=nan: must be a finite number"),
        ("quadruped", "stride=abc", "--expert stride='abc'"),
        ("quadruped", "lead=9", "--expert lead=9"),
        ("quadruped", "attitude=-1", "--expert attitude=-1"),
        ("quadruped", "lift=2", "--expert lift=2"),
        ("desk", "noise=abc", "--expert noise='abc'"),
        ("desk", "noise=-0.1", "--expert noise=-0.1"),
        ("desk", "speed=2", "--expert speed: not an option of the desk expert"),
    ],
)
def test_bad_expert_options_are_one_line_naming_the_option(env, pair, message) -> None:
    with pytest.raises(InputError, match=re.escape(message)) as info:
        expert_choice(env, (pair,))
    assert "\n" not in str(info.value)


def test_noise_levels_and_duplicates() -> None:
    assert expert_choice("cheetah", ("noise=0.4,0.15",)) == ("mppi", (("noise", "0.4,0.15"),))
    assert make_expert("cheetah", noise="0.4,0.15").config.noise == (0.4, 0.15)
    with pytest.raises(InputError, match="given twice"):
        expert_choice("cheetah", ("samples=8", "samples=9"))


@pytest.mark.slow
def test_expert_options_reach_the_expert_and_the_store(tmp_path: Path) -> None:
    plain, small = tmp_path / "plain.h5", tmp_path / "small.h5"
    collect("cheetah", plain, CollectConfig(episodes=1, steps=STEPS, seed=1))
    config = CollectConfig(episodes=1, steps=STEPS, seed=1, expert=("samples=8",))
    collect("cheetah", small, config)
    assert not np.array_equal(_actions(plain), _actions(small))  # another planner
    # the same as planning directly with 8 samples
    env = make_env("cheetah")
    expert = make_expert("cheetah", samples=8)
    with open_store(small) as store:
        task = store.read_episode_field("task")[0]
        observations = store.read_steps("steps/observations")
    env_seed = int(unit_seeds(1, 0).spawn(2)[1].generate_state(1)[0])
    obs = env.reset(env_seed)
    np.testing.assert_array_equal(obs, observations[0])
    expert.reset(env, task, env_seed)
    actions = []
    for _ in range(STEPS):
        actions.append(expert.act(env, obs))
        obs = env.step(actions[-1]).observation
    env.close()
    np.testing.assert_array_equal(np.stack(actions), _actions(small))
    # resuming needs the same options
    with pytest.raises(InputError, match="--expert mppi --expert samples=8"):
        collect("cheetah", small, CollectConfig(episodes=2, steps=STEPS, seed=1))
    with pytest.raises(InputError, match="was collected with the expert"):
        collect(
            "cheetah", small, CollectConfig(episodes=2, steps=STEPS, seed=1, expert=("samples=9",))
        )
    with pytest.raises(InputError, match="was collected with the expert"):
        collect(
            "cheetah", plain, CollectConfig(episodes=2, steps=STEPS, seed=1, expert=("samples=8",))
        )


@pytest.mark.slow
def test_cli_expert_option(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "c.h5"
    base = ["collect", "cheetah", "--out", str(out), "--episodes", "1", "--steps", "3"]
    result = runner.invoke(app, [*base, "--expert", "samples=8", "--expert", "horizon=10"])
    assert result.exit_code == 0, result.output
    with open_store(out) as store:
        assert store.attrs["collect_expert"] == "mppi horizon=10 samples=8"
    for bad in ("colour=red", "horizon=abc", "samples=nan"):
        result = runner.invoke(app, [*base, "--expert", bad])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith(f"error: --expert {bad.split('=')[0]}")
    result = runner.invoke(app, [*base, "--expert", "walker"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "error: --expert walker: not an expert of cheetah (have: mppi)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]


@pytest.mark.slow
def test_stores_from_before_expert_names_resume_with_their_expert(tmp_path: Path) -> None:
    """A store whose collect_expert holds only options, or nothing, was collected by
    the environment's unnamed (then only) expert: MPPI for the quadruped."""
    assert recorded_expert("quadruped", None) == "mppi"
    assert recorded_expert("quadruped", "samples=32") == "mppi samples=32"
    assert recorded_expert("quadruped", "horizon=10 samples=08") == "mppi horizon=10 samples=8"
    assert recorded_expert("quadruped", "trot noise=0.1") == "trot noise=0.1"
    assert recorded_expert("desk", "") == "play"
    store = tmp_path / "old.h5"
    collect("quadruped", store, CollectConfig(episodes=1, steps=3, seed=1, expert=("mppi",)))
    import h5py

    with h5py.File(store, "a") as file:  # as collected before experts had names
        del file.attrs["collect_expert"]
    with pytest.raises(InputError, match="collected with the expert 'mppi', not 'trot'"):
        collect("quadruped", store, CollectConfig(episodes=2, steps=3, seed=1))
    config = CollectConfig(episodes=2, steps=3, seed=1, expert=("mppi",))
    collect("quadruped", store, config)
    with open_store(store) as reopened:
        assert reopened.num_episodes == 2


def test_planner_model_is_a_copy_with_sensors_off_when_unused() -> None:
    """The quadruped planner simulates without sensors on its own model copy; the
    environment's model is untouched."""
    import mujoco

    env = make_env("quadruped")
    try:
        env.reset(0)
        expert = MppiExpert(MppiConfig(samples=4, horizon=3, knots=2))
        expert.reset(env, np.array([1.0, 0, 0, 0, 0]), 0)
        expert.act(env, np.zeros(0))
        flag = int(mujoco.mjtDisableBit.mjDSBL_SENSOR)
        assert expert._model is not env.physics.model.ptr
        assert expert._model.opt.disableflags & flag
        assert not env.physics.model.ptr.opt.disableflags & flag
    finally:
        env.close()


def test_replan_follows_the_plan_in_between() -> None:
    """replan=2: every other action is the current plan's next control, no new plan."""
    env = make_env("cheetah")
    try:
        env.reset(0)
        expert = MppiExpert(MppiConfig(samples=8, horizon=10, knots=3, replan=2))
        expert.reset(env, np.array([1.0]), 0)
        first = expert.act(env, np.zeros(0))
        plan = expert.plan.copy()
        env.step(first)
        second = expert.act(env, np.zeros(0))
        np.testing.assert_array_equal(expert.plan, plan)  # not replanned
        np.testing.assert_allclose(second, expert._spread[1] @ plan, rtol=1e-6)
        env.step(second)
        expert.act(env, np.zeros(0))
        assert not np.array_equal(expert.plan, plan)  # replanned on the third step
    finally:
        env.close()
    with pytest.raises(InputError, match="replan"):
        MppiExpert(MppiConfig(horizon=10, replan=10))


def test_heading_weight_adds_the_misalignment_of_every_sample() -> None:
    """heading_weight w: each sample's cost grows by w |d| sum_t (1 - cos angle(forward_t, d))."""
    env = make_env("quadruped")
    try:
        env.reset(3)
        task = np.array([0.6, -0.8, 0.5, 0.5, 0.5])
        plain = MppiExpert(MppiConfig(samples=6, horizon=4, knots=2))
        turned = MppiExpert(MppiConfig(samples=6, horizon=4, knots=2, heading_weight=1.5))
        for expert in (plain, turned):
            expert.reset(env, task, 0)
        rng = np.random.default_rng(0)
        states = np.stack([_random_states(env, rng) for _ in range(6)])  # [S, H, nstate]
        controls = rng.uniform(-1, 1, (6, 4, env.info.action_dim))
        sensors = np.zeros((6, 4, 0))  # the quadruped's fields read no sensors
        extra = turned.costs(env, states, sensors, controls) - plain.costs(
            env, states, sensors, controls
        )
        expected = np.zeros(6)
        for s in range(6):
            for t in range(4):
                w, x, y, z = states[s, t, env._qpos][3:7]
                forward = np.array([1 - 2 * (y * y + z * z), 2 * (x * y + w * z)])
                cosine = forward @ task[:2] / (np.linalg.norm(forward) * np.linalg.norm(task[:2]))
                expected[s] += 1.5 * np.linalg.norm(task[:2]) * (1 - cosine)
        np.testing.assert_allclose(extra, expected, rtol=1e-12, atol=1e-12)
        # no commanded direction: no shaping
        turned.reset(env, np.array([0.0, 0.0, 1.0, 1.0, 0.0]), 0)
        plain.reset(env, np.array([0.0, 0.0, 1.0, 1.0, 0.0]), 0)
        np.testing.assert_array_equal(
            turned.costs(env, states, sensors, controls),
            plain.costs(env, states, sensors, controls),
        )
    finally:
        env.close()
    cheetah = make_env("cheetah")
    try:
        cheetah.reset(0)
        expert = MppiExpert(MppiConfig(samples=4, horizon=4, knots=2, heading_weight=1.0))
        with pytest.raises(InputError, match="heading_weight"):  # before any planning
            expert.reset(cheetah, np.array([1.0]), 0)
    finally:
        cheetah.close()


def _random_states(env, rng: np.random.Generator) -> np.ndarray:
    """[4, nstate] full-physics states after random actions (the body turns and tilts)."""
    import mujoco

    model, data = env.physics.model.ptr, env.physics.data.ptr
    kind = mujoco.mjtState.mjSTATE_FULLPHYSICS
    rows = []
    for _ in range(4):
        for _ in range(5):
            env.step(rng.uniform(-1, 1, env.info.action_dim))
        row = np.empty(mujoco.mj_stateSize(model, kind))
        mujoco.mj_getState(model, data, row, kind)
        rows.append(row)
    return np.stack(rows)
