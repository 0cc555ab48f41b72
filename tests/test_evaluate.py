"""hipi-offline evaluate: scores equal offline returns, paired episodes, determinism,
statistics, JSON, video, bad input."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.bc import BCConfig, train_bc
from hipi_offline.envs import make_env
from hipi_offline.errors import InputError
from hipi_offline.evaluate import EvalConfig, evaluate, mean_interval
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.relabel.returns import GenericAccumulator, accumulate_returns
from hipi_offline.store import create_store, open_store
from hipi_offline.tasks import load_task_spec

TRAIN = dict(hidden=(32, 32), batch_size=64, warmup_steps=5, log_every=10, steps=30)
TRAIN.update(device="cpu", threads=1, progress=False, checkpoint_every=1000)


def fake_store(path: Path, env: str, obs_dim: int, act_dim: int, fields: dict) -> Path:
    """A store with the environment's shapes and random content (policies trained on
    it act arbitrarily, which is all the scoring tests need)."""
    rng = np.random.default_rng(0)
    episodes, steps = 12, 20
    rows = episodes * steps
    arrays = {
        "observations": rng.normal(size=(rows, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(rows, act_dim)).astype(np.float32),
    }
    for name, make in fields.items():
        arrays[name] = make(rng, rows)
    with create_store(path, env=env) as store:
        store.append_episodes(arrays, [steps] * episodes)
    return path


def trained_runs(tmp: Path, env: str, spec: str, obs_dim: int, act_dim: int, fields: dict):
    store = fake_store(tmp / f"{env}.h5", env, obs_dim, act_dim, fields)
    relabel(store, RelabelConfig(tasks=spec, device="cpu"))
    hipi = tmp / f"{env}-hipi"
    agnostic = tmp / f"{env}-agnostic"
    train_bc(store, BCConfig(out=hipi, labels="hipi", **TRAIN))
    train_bc(store, BCConfig(out=agnostic, task_agnostic=True, **TRAIN))
    return hipi, agnostic


@pytest.fixture(scope="module")
def cheetah_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    speed = {"infos/speed": lambda rng, n: rng.uniform(0, 3, n).astype(np.float32)}
    return trained_runs(tmp_path_factory.mktemp("ch"), "cheetah", "cheetah-velocity", 17, 6, speed)


@pytest.fixture(scope="module")
def desk_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    def achieved(rng: np.random.Generator, n: int) -> np.ndarray:
        return (rng.random((n, 9)) < 0.05).astype(np.float32)

    fields = {"infos/achieved": achieved}
    return trained_runs(tmp_path_factory.mktemp("desk"), "desk", "desk-discrete", 17, 3, fields)


QUICK = EvalConfig(episodes=5, steps=40, progress=False)


def test_returns_equal_engine_and_float64_reference(cheetah_runs, tmp_path: Path) -> None:
    hipi, agnostic = cheetah_runs
    config = replace(QUICK, save_rollouts=tmp_path / "roll")
    evaluation = evaluate([hipi, agnostic], config)
    spec = load_task_spec("cheetah-velocity")
    for i, result in enumerate(evaluation.results):
        saved = tmp_path / "roll" / f"{i}-{result.method}.h5"
        with open_store(saved) as store:
            tasks = store.read_episode_field("task").astype(np.float64)
            speed = store.read_steps("steps/infos/speed").astype(np.float64)
            actions = store.read_steps("steps/actions").astype(np.float64)
            ends = store.ends
            acc = GenericAccumulator(spec.family, torch.from_numpy(tasks), len(tasks))
            engine = accumulate_returns(
                store, spec, acc, device=torch.device("cpu"), chunk_steps=7
            ).result(torch.from_numpy(tasks))
        engine_returns = np.diag(engine.numpy())
        starts = np.concatenate([[0], ends[:-1]])
        reference = np.array(
            [
                np.sum(-np.abs(speed[a:b] - tasks[e, 0]) - 0.05 * np.sum(actions[a:b] ** 2, 1))
                for e, (a, b) in enumerate(zip(starts, ends, strict=True))
            ]
        )
        np.testing.assert_allclose(result.returns, engine_returns, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(result.returns, reference, rtol=1e-12, atol=1e-9)
        assert [o.task[0] for o in result.outcomes] == pytest.approx(tasks[:, 0])
    assert evaluation.results[0].method == "hipi"
    assert evaluation.results[1].method == "task-agnostic"


@pytest.mark.slow
def test_episodes_are_paired_and_independent_of_workers(cheetah_runs) -> None:
    hipi, agnostic = cheetah_runs
    one = evaluate([hipi, agnostic], replace(QUICK, group_size=3))
    other = evaluate([hipi, agnostic], replace(QUICK, workers=2, group_size=3))
    for a, b in zip(one.results, other.results, strict=True):
        np.testing.assert_array_equal(a.returns, b.returns)
    tasks = [[o.task.tolist() for o in r.outcomes] for r in one.results]
    seeds = [[o.env_seed for o in r.outcomes] for r in one.results]
    assert tasks[0] == tasks[1] and seeds[0] == seeds[1]  # the same episodes for every run
    assert not np.array_equal(one.results[0].returns, one.results[1].returns)


def test_sampled_actions_follow_the_seed(cheetah_runs) -> None:
    hipi, _ = cheetah_runs
    config = replace(QUICK, sample=True, episodes=3)
    first = evaluate([hipi], config).results[0].returns
    again = evaluate([hipi], config).results[0].returns
    mean = evaluate([hipi], replace(config, sample=False)).results[0].returns
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, mean)


def test_task_file_runs_the_listed_tasks(cheetah_runs, tmp_path: Path) -> None:
    hipi, _ = cheetah_runs
    path = tmp_path / "tasks.yaml"
    path.write_text("tasks: [0.5, 2.5]\n")
    result = evaluate([hipi], replace(QUICK, tasks=str(path), episodes=3)).results[0]
    assert [float(o.task[0]) for o in result.outcomes] == [0.5, 2.5, 0.5]
    np.save(tmp_path / "tasks.npy", np.array([[1.0], [2.0]]))
    result = evaluate([hipi], replace(QUICK, tasks=str(tmp_path / "tasks.npy"), episodes=None))
    assert [float(o.task[0]) for o in result.results[0].outcomes] == [1.0, 2.0]


def test_mean_interval_matches_scipy() -> None:
    values = np.array([1.0, 4.0, 2.5, 7.0, -1.0])
    mean, stderr, (low, high) = mean_interval(values)
    assert mean == pytest.approx(values.mean())
    assert stderr == pytest.approx(stats.sem(values))
    ref = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert (low, high) == pytest.approx(ref)
    mean, stderr, interval = mean_interval(np.array([3.0]))
    assert mean == 3.0 and math.isnan(stderr) and all(math.isnan(v) for v in interval)


@pytest.mark.slow
def test_desk_success_feasible_tasks_json_and_video(desk_runs, tmp_path: Path) -> None:
    hipi, agnostic = desk_runs
    config = EvalConfig(
        episodes=6,
        steps=15,
        progress=False,
        json_path=tmp_path / "eval.json",
        video=tmp_path / "ep.png",
    )
    evaluation = evaluate([hipi, agnostic], config)
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert doc["env"] == "desk" and len(doc["runs"]) == 2
    assert "vs_first" in doc["runs"][1]
    env = make_env("desk")
    names = load_task_spec("desk-discrete").task_names
    for result, entry in zip(evaluation.results, doc["runs"], strict=True):
        assert entry["mean_return"] == pytest.approx(result.mean_return)
        assert entry["success_rate"] == pytest.approx(np.mean(result.returns >= 1))
        for o, row in zip(result.outcomes, entry["per_episode"], strict=True):
            assert row["task"] == names[int(np.argmax(o.task))]
            assert row["return"] == o.episode_return and row["success"] == (o.episode_return >= 1)
            env.reset(o.env_seed)  # the initial state leaves the task to be done
            assert not env.success()[int(np.argmax(o.task))]
    env.close()
    for path in evaluation.videos:
        from PIL import Image

        assert Image.open(path).size[1] == 240  # a strip of frames of 240 rows


@pytest.mark.slow
def test_single_run_json_has_top_level_scores(cheetah_runs, tmp_path: Path) -> None:
    hipi, _ = cheetah_runs
    out = tmp_path / "one.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate", str(hipi), "--episodes", "3", "--steps", "10", "--no-progress",
            "--json", str(out), "--video", str(tmp_path / "ep.gif"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert {"mean_return", "stderr", "per_episode"} <= set(doc)
    assert len(doc["per_episode"]) == 3 and {"task", "return"} <= set(doc["per_episode"][0])
    assert "hipi" in result.output and (tmp_path / "ep.gif").stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--episodes", "0"], "--episodes"),
        (["--workers", "0"], "--workers"),
        (["--steps", "0"], "--steps"),
        (["--tasks", "missing.yaml"], "--tasks"),
        (["--tasks", "{bad}"], "--tasks"),
        (["--video", "out.avi"], "--video"),
        (["--json", "no/such/dir/x.json"], "--json"),
        (["--env", "desk"], "policy"),
        (["--env", "nope"], "ENV"),
    ],
)
def test_bad_input_is_one_line_exit_2(cheetah_runs, tmp_path: Path, args, message) -> None:
    hipi, _ = cheetah_runs
    bad = tmp_path / "{bad}"
    bad.write_text("tasks: [[1.0, 2.0]]\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["evaluate", str(hipi), "--no-progress", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tasks: [.nan]", "NaN"),
        ("tasks: []", "no tasks"),
        ("tasks: [[1.0, 2.0]]", "rows of 1"),
        ("[1.0, oops]", "numbers"),
        ("a: [1.0]", "'tasks'"),
        ("tasks: [1.0", "parsed"),
    ],
)
def test_bad_task_files(cheetah_runs, tmp_path: Path, text: str, message: str) -> None:
    hipi, _ = cheetah_runs
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        evaluate([hipi], replace(QUICK, tasks=str(path)))


def test_discrete_task_names_and_unknown_name(desk_runs, tmp_path: Path) -> None:
    hipi, _ = desk_runs
    path = tmp_path / "t.yaml"
    path.write_text("tasks: [light_on, 0]\n")
    result = evaluate([hipi], EvalConfig(tasks=str(path), steps=5, progress=False)).results[0]
    assert [int(np.argmax(o.task)) for o in result.outcomes] == [4, 0]
    path.write_text("tasks: [fly_away]\n")
    with pytest.raises(InputError, match="fly_away"):
        evaluate([hipi], EvalConfig(tasks=str(path), steps=5, progress=False))


def _unwritable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder this process cannot write in: mode 0o555, and for root (who writes
    anyway) os.access is made to say so, as on a read-only file system."""
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real = os.access

        def access(path: object, mode: int, *args: object, **kwargs: object) -> bool:
            if Path(str(path)) == folder and mode & os.W_OK:
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    return folder


@pytest.mark.parametrize(
    ("case", "message", "code"),
    [
        ("json-dir", "--json: ", 2),
        ("json-parent-file", "--json: folder", 2),
        ("json-no-parent", "--json: folder", 2),
        ("json-unwritable", "--json: folder", 1),
        ("video-dir", "--video: ", 2),
        ("video-unwritable", "--video: folder", 1),
        ("rollouts-file", "--save-rollouts: ", 2),
        ("rollouts-foreign-store", "--save-rollouts", 2),
        ("rollouts-unwritable", "--save-rollouts: folder", 1),
        ("seed-negative", "--seed", 2),
        ("seed-huge", "--seed", 2),
    ],
)
def test_outputs_and_seeds_are_checked_before_any_rollout(
    cheetah_runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, message: str, code
) -> None:
    hipi, _ = cheetah_runs
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "film.gif").mkdir()
    rollouts = tmp_path / "roll"
    rollouts.mkdir()
    (rollouts / "0-hipi.h5").write_text("someone's notes\n")
    args = {
        "json-dir": ["--json", str(tmp_path)],
        "json-parent-file": ["--json", str(tmp_path / "afile" / "x.json")],
        "json-no-parent": ["--json", str(tmp_path / "no" / "x.json")],
        "json-unwritable": ["--json", str(_unwritable(tmp_path / "ro", monkeypatch) / "x.json")]
        if case == "json-unwritable"
        else [],
        "video-dir": ["--video", str(tmp_path / "film.gif")],
        "video-unwritable": ["--video", str(_unwritable(tmp_path / "ro", monkeypatch) / "x.png")]
        if case == "video-unwritable"
        else [],
        "rollouts-file": ["--save-rollouts", str(tmp_path / "afile")],
        "rollouts-foreign-store": ["--save-rollouts", str(rollouts)],
        "rollouts-unwritable": ["--save-rollouts", str(_unwritable(tmp_path / "ro", monkeypatch))]
        if case == "rollouts-unwritable"
        else [],
        "seed-negative": ["--seed", "-1"],
        "seed-huge": ["--seed", str(2**70)],
    }[case]
    import hipi_offline.evaluate.run as run_module

    rolled = []
    monkeypatch.setattr(run_module, "run_job", lambda job: rolled.append(job) or [])
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    result = CliRunner().invoke(
        app, ["evaluate", str(hipi), "--no-progress", "--episodes", "2", *args]
    )
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0]
    assert rolled == []  # failed before the first rollout
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_save_rollouts_replaces_only_its_own_stores(cheetah_runs, tmp_path: Path) -> None:
    hipi, _ = cheetah_runs
    config = replace(QUICK, episodes=2, steps=5, save_rollouts=tmp_path / "roll")
    evaluate([hipi], config)
    evaluate([hipi], config)  # a hipi-offline store of the same name: replaced
    with open_store(tmp_path / "roll" / "0-hipi.h5") as store:
        assert store.num_episodes == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tasks: [[1.0], [2.0, 3.0]]", "tasks[1]"),
        ("tasks: [[1.0], [[2.0]]]", "tasks[1]"),
        ("tasks: [true]", "numbers"),
        ("tasks: [.inf]", "NaN or inf"),
        ("tasks: [1e39]", "float32"),
        ("tasks: {a: 1}", "a list"),
        ("tasks: hello", "a list"),
        ("tasks: 3", "a list"),
        ("tasks: [1.0, [2.0, 3.0]]", "tasks[1]"),
        ("tasks: [1e-3, oops]", "tasks[1] holds 'oops'"),
        ("a: &a [1.0, 1.0]\ntasks: [*a, *a]", "rows of 1"),
    ],
)
def test_ragged_and_odd_task_files(cheetah_runs, tmp_path: Path, text: str, message: str) -> None:
    hipi, _ = cheetah_runs
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(message)) as info:
        evaluate([hipi], replace(QUICK, tasks=str(path)))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_task_files_json_npy_and_sizes(cheetah_runs, tmp_path: Path) -> None:
    hipi, _ = cheetah_runs
    cases = {
        "big.json": ("[1" + "0" * 400 + "]", "beyond float range"),
        "inf.json": ("[1e400]", "NaN or inf"),
        "nan.json": ("[NaN]", "NaN or inf"),
        "ragged.json": ("[[1], [1, 2]]", "tasks[1]"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=re.escape(message)):
            evaluate([hipi], replace(QUICK, tasks=str(tmp_path / name)))
    np.save(tmp_path / "obj.npy", np.array([[1.0], "x"], dtype=object), allow_pickle=True)
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    np.save(tmp_path / "wide.npy", np.zeros((3, 2), np.float32))
    np.save(tmp_path / "many.npy", np.zeros((200_001, 1), np.float32))
    for name, message in [
        ("obj.npy", "not numbers"),
        ("text.npy", "not numbers"),
        ("wide.npy", "rows of 1"),
        ("many.npy", "more than"),
    ]:
        with pytest.raises(InputError, match=message):
            evaluate([hipi], replace(QUICK, tasks=str(tmp_path / name)))
    big = tmp_path / "huge.yaml"
    with big.open("w") as f:
        f.write("tasks: [" + "1.0, " * (4 << 20) + "1.0]\n")
    with pytest.raises(InputError, match="larger than"):
        evaluate([hipi], replace(QUICK, tasks=str(big)))


@pytest.mark.parametrize(("gamma", "at"), [(1.0, "all"), (0.9, "all"), (0.9, "final")])
def test_episode_return_weights_steps_as_relabeling_does(gamma: float, at: str) -> None:
    """The score of an episode is the relabeling return: sum_t gamma^t r_t, or
    gamma^(T-1) r_(T-1) with ``at: final`` (the final reward is discounted too)."""
    from hipi_offline.envs import transition_rewards
    from hipi_offline.evaluate.rollout import episode_return

    spec = replace(load_task_spec("cheetah-velocity"), gamma=gamma, at=at)
    rng = np.random.default_rng(3)
    steps = 17
    observations = rng.normal(size=(steps, 17)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(steps, 6)).astype(np.float32)
    fields = {"infos/speed": rng.uniform(0, 3, size=steps).astype(np.float32)}
    task = np.array([1.5], np.float32)
    speed = fields["infos/speed"].astype(np.float64)
    act = actions.astype(np.float64)
    rewards = -np.abs(speed - 1.5) - 0.05 * (act**2).sum(axis=1)  # the spec, in numpy
    weights = gamma ** np.arange(steps, dtype=np.float64)
    if at == "final":
        weights[:-1] = 0.0
    expected = float((weights * rewards).sum())
    assert np.allclose(
        transition_rewards(spec, observations, actions, fields, task[None])[:, 0], rewards
    )
    assert math.isclose(
        episode_return(spec, observations, actions, fields, task), expected, rel_tol=1e-12
    )
