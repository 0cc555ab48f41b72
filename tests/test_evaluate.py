"""hipi-offline evaluate: scores equal offline returns, paired episodes, determinism,
statistics, JSON, video, bad input."""

from __future__ import annotations

import json
import math
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
