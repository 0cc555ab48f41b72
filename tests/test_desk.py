"""Contract tests of the desk environment, its task spec and its scripted play expert."""

from __future__ import annotations

import numpy as np
import pytest

from hipi_offline.collect.episodes import play_unit
from hipi_offline.envs import env_task_spec, make_env, transition_rewards
from hipi_offline.envs.desk import FIELD_NAMES, OBSERVATION_DIM, SUCCESS, TASK_NAMES, success
from hipi_offline.experts.base import make_expert
from hipi_offline.experts.desk_play import TASKS, DeskPlay, PlayStream, play_stream
from hipi_offline.tasks.families import DiscreteFamily
from hipi_offline.tasks.spec import load_task_spec

STATE_FIELDS = sorted({field for field, _, _ in SUCCESS.values()})


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
        assert np.shape(f["infos/achieved"]) == (9,) and f["infos/achieved"].dtype == np.float32
        assert np.shape(f["physics/qpos"]) == (13,) and np.shape(f["physics/qvel"]) == (12,)
        vectors = ("infos/ee", "infos/achieved")
        assert all(
            np.shape(f[n]) == () for n in FIELD_NAMES if n.startswith("infos/") and n not in vectors
        )
    np.testing.assert_allclose(obs[-1][:3], fields[-1]["infos/ee"])


def test_render(env) -> None:
    env.reset(0)
    try:
        image = env.render(64, 48)
    except Exception as err:  # no OpenGL backend on this machine
        pytest.skip(f"no headless GL backend: {type(err).__name__}: {err}")
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
    assert image.std() > 0


@pytest.mark.slow
def test_render_after_a_closed_dm_control_env() -> None:
    """Closing cheetah (a dm_control context) must not break the desk's rendering."""
    cheetah = make_env("cheetah")
    cheetah.reset(0)
    try:
        cheetah.render(32, 24)
    except Exception as err:  # no OpenGL backend on this machine
        pytest.skip(f"no headless GL backend: {type(err).__name__}: {err}")
    finally:
        cheetah.close()
    desk = make_env("desk")
    try:
        desk.reset(1)
        small, big = desk.render(32, 24), desk.render(400, 300)  # a bigger frame too
    finally:
        desk.close()
    assert small.shape == (24, 32, 3) and big.shape == (300, 400, 3)
    assert small.std() > 0 and big.std() > 0


def test_success_table_predicates() -> None:
    assert TASKS == TASK_NAMES and set(SUCCESS) == set(TASK_NAMES)
    # rows: one state each; columns of the expected predicates follow TASK_NAMES
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
    )
    np.testing.assert_array_equal(success(fields), expected)


def test_spec_rewards_the_achieved_events() -> None:
    """Task j's reward reads column j of infos/achieved: one-hot tasks pick the column,
    mixtures mix; an episode's return counts achievements."""
    spec = load_task_spec("desk-discrete")
    assert spec.task_names == TASK_NAMES
    assert isinstance(spec.family, DiscreteFamily)
    assert spec.family.fields == ("steps/infos/achieved",)
    assert [p.column for p in spec.family.predicates] == list(range(9))
    achieved = np.zeros((12, 9), np.float32)
    achieved[np.arange(9), np.arange(9)] = 1.0
    achieved[10, [2, 4]] = 1.0  # two events on one step
    fields = {"infos/achieved": achieved}
    rewards = transition_rewards(spec, np.zeros((12, 17)), np.zeros((12, 3)), fields, np.eye(9))
    np.testing.assert_array_equal(rewards, achieved)
    mixed = transition_rewards(
        spec, np.zeros((12, 17)), np.zeros((12, 3)), fields, np.full((1, 9), 1 / 9)
    )
    np.testing.assert_allclose(mixed[:, 0], achieved.sum(axis=1) / 9)


def test_spec_comments_document_the_success_table() -> None:
    """The YAML's comment lines state the predicates of SUCCESS (kept in sync)."""
    lines = load_task_spec("desk-discrete").source.splitlines()
    for name, (field, above, below) in SUCCESS.items():
        (line,) = [text for text in lines if text.startswith(f"#   {name} ")]
        if field == "infos/light":
            assert ("on" if above is not None else "off") in line.split()
            continue
        for sign, bound in ((">", above), ("<", below)):
            if bound is not None:
                assert f"{sign} {bound:g}" in line, (name, line)


def test_achieved_is_the_switch_of_a_success_predicate(env) -> None:
    """infos/achieved[t] = success(after step t) and not success(before step t), on the
    stored state fields; the expert's view of success is the same table."""
    expert = DeskPlay()
    stream = PlayStream(env, expert, seed=4)
    before = success({k: np.asarray(v)[None] for k, v in env.fields().items()})
    np.testing.assert_array_equal(before[0], expert.satisfied(env))
    np.testing.assert_array_equal(env.fields()["infos/achieved"], np.zeros(9))
    piece = stream.record(400)
    np.testing.assert_array_equal(success(piece.fields)[-1], env.success())
    states = np.concatenate([before, success(piece.fields)])
    events = states[1:] & ~states[:-1]
    np.testing.assert_array_equal(piece.fields["infos/achieved"], events.astype(np.float32))
    assert events.sum() >= 4
    completed = events[np.arange(400), piece.subtask]
    np.testing.assert_array_equal(piece.completed, completed)


@pytest.mark.parametrize("task", range(len(TASKS)), ids=TASKS)
def test_commanded_task_succeeds(env, task: int) -> None:
    expert, spec = make_expert("desk"), env_task_spec(env)
    one_hot = np.eye(len(TASKS))[task]
    wins, trials, seed = 0, 4, 100 * task
    for _ in range(trials):
        while True:  # a start where the task is not already achieved
            seed += 1
            env.reset(seed)
            if not expert.satisfied(env)[task]:
                break
        expert.reset(env, one_hot, seed)
        achieved = []
        for _ in range(100):  # the commanded-success budget of benchmarks/desk_quality.py
            achieved.append(env.step(expert.act(env, None)).fields["infos/achieved"])
            if expert.phase == "done":
                break
        fields = {"infos/achieved": np.stack(achieved)}
        steps = len(achieved)
        rewards = transition_rewards(
            spec, np.zeros((steps, 17)), np.zeros((steps, 3)), fields, one_hot[None]
        )
        wins += rewards.sum() >= 1  # success: achieved at least once
    assert wins / trials >= 0.8, f"{TASKS[task]}: {wins}/{trials}"


def test_commanded_achieved_task_holds_still(env) -> None:
    expert = DeskPlay()
    env.reset(5)
    done = np.flatnonzero(expert.satisfied(env))
    expert.reset(env, np.eye(len(TASKS))[done[0]], 5)
    assert expert.phase == "idle"
    np.testing.assert_array_equal(expert.act(env, None), np.zeros(3, np.float32))


@pytest.mark.slow
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
    # most finished sub-tasks were achieved (rewarded for their own task) along the way
    rewards = transition_rewards(env_task_spec(env), obs, actions, fields, np.eye(len(TASKS)))
    bounds = np.flatnonzero(np.diff(subtask)) + 1
    segments = np.split(np.arange(steps), bounds)[:-1]  # the last one may be unfinished
    assert len(segments) >= 3
    assert np.mean([rewards[rows, subtask[rows[0]]].sum() >= 1 for rows in segments]) >= 0.8
    again = play_stream(env, DeskPlay(), steps, seed=2)
    np.testing.assert_array_equal(again[1], actions)
    np.testing.assert_array_equal(again[3], subtask)


def test_play_stream_pieces_continue_the_stream(env) -> None:
    whole = PlayStream(env, DeskPlay(), seed=6).record(150)
    stream = PlayStream(env, DeskPlay(), seed=6)
    pieces = [stream.record(n) for n in (40, 0, 110)]
    assert stream.steps == 150
    np.testing.assert_array_equal(np.concatenate([p.actions for p in pieces]), whole.actions)
    np.testing.assert_array_equal(np.concatenate([p.completed for p in pieces]), whole.completed)
    for name in FIELD_NAMES:
        np.testing.assert_array_equal(
            np.concatenate([p.fields[name] for p in pieces]), whole.fields[name]
        )


@pytest.mark.slow
def test_play_unit_windows_end_at_completions(env) -> None:
    """Windows: `steps` rows ending at a completion of the sub-task played there, in
    stream order, not overlapping, each the first completion allowed; the label is
    the completed sub-task; the unit is deterministic."""
    steps, windows = 30, 6
    episodes = play_unit("desk", steps, seed=3, unit=1, windows=windows)
    assert len(episodes) == windows
    ends = [int(e.episode_fields["stream_offset"]) + steps - 1 for e in episodes]
    stream = PlayStream(env, DeskPlay(), _stream_seed(3, 1)).record(ends[-1] + 1)
    completions = np.flatnonzero(stream.completed)
    previous = -1
    for w, (episode, end) in enumerate(zip(episodes, ends, strict=True)):
        meta = episode.episode_fields
        assert (int(meta["stream"]), int(meta["window"])) == (1, w)
        rows = slice(end - steps + 1, end + 1)
        np.testing.assert_array_equal(episode.actions, stream.actions[rows])
        np.testing.assert_array_equal(episode.observations, stream.observations[rows])
        for name in FIELD_NAMES:
            np.testing.assert_array_equal(episode.fields[name], stream.fields[name][rows])
        task = int(meta["task"])
        assert task == stream.subtask[end] and episode.fields["infos/achieved"][-1, task] == 1.0
        earliest = previous + steps  # the first allowed end after the previous window
        assert end == completions[completions >= earliest][0]
        previous = end
    again = play_unit("desk", steps, seed=3, unit=1, windows=windows)
    for a, b in zip(episodes, again, strict=True):
        np.testing.assert_array_equal(a.actions, b.actions)
        assert a.episode_fields == b.episode_fields


def _stream_seed(seed: int, unit: int) -> int:
    from hipi_offline.collect.episodes import unit_seeds

    return int(unit_seeds(seed, unit).generate_state(1)[0])
