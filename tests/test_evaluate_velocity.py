"""hipi-offline evaluate: the mean velocity along the commanded direction, per episode
and per run, in the table and the JSON, against float64 references computed here
from the stored rollouts (quadruped from the torso's qvel, cheetah from its speed)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import test_evaluate
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.evaluate import EvalConfig, evaluate
from hipi_offline.evaluate.report import VELOCITY_COLUMN
from hipi_offline.experiments.common import score
from hipi_offline.store import open_store

cheetah_runs = test_evaluate.cheetah_runs  # the shared module fixtures
desk_runs = test_evaluate.desk_runs
trained_runs = test_evaluate.trained_runs

RUN_KEYS = {"run", "method", "checkpoint_step", "episodes", "mean_return", "stderr", "ci95"}
EPISODE_KEYS = {"episode", "task", "env_seed", "return"}


def quadruped_fields() -> dict:
    def uniform(low: float, high: float):
        return lambda rng, n: rng.uniform(low, high, n).astype(np.float32)

    return {
        "infos/velocity_x": uniform(-1, 1),
        "infos/velocity_y": uniform(-1, 1),
        "infos/height": uniform(0.2, 0.6),
        "infos/upright": uniform(-1, 1),
        "infos/ctrl_cost": uniform(-1, 0),
    }


@pytest.fixture(scope="module")
def quadruped_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("quad")
    return trained_runs(folder, "quadruped", "quadruped-linear", 88, 12, quadruped_fields())


def episode_slices(store) -> list[slice]:
    ends = np.asarray(store.ends)
    starts = np.concatenate([[0], ends[:-1]])
    return [slice(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def summary(values: list[float]) -> tuple[float, float]:
    """float64 mean and standard error (sample std / sqrt n), written out."""
    x = np.array(values, np.float64)
    mean = float(np.sum(x) / len(x))
    return mean, math.sqrt(float(np.sum((x - mean) ** 2)) / (len(x) - 1) / len(x))


def check_json(entry: dict, outcomes, reference: list[float | None]) -> None:
    """A run's JSON entry: old keys kept, per-episode values and the aggregate."""
    assert set(entry) >= RUN_KEYS
    rows = entry["per_episode"]
    assert len(rows) == len(reference)
    for row, outcome, ref in zip(rows, outcomes, reference, strict=True):
        assert set(row) >= EPISODE_KEYS
        if ref is None:
            assert row["velocity_along_command"] is None and outcome.velocity_along_command is None
        else:
            assert row["velocity_along_command"] == pytest.approx(ref, rel=1e-6, abs=1e-6)
            assert outcome.velocity_along_command == pytest.approx(ref, rel=1e-6, abs=1e-6)
    have = [v for v in reference if v is not None]
    mean, stderr = summary(have)
    aggregate = entry["velocity_along_command"]
    assert set(aggregate) == {"mean", "stderr", "episodes"}
    assert aggregate["episodes"] == len(have)
    assert aggregate["mean"] == pytest.approx(mean, rel=1e-6, abs=1e-6)
    assert aggregate["stderr"] == pytest.approx(stderr, rel=1e-6, abs=1e-6)


def test_cheetah_velocity_is_speed_signed_by_the_target(cheetah_runs, tmp_path: Path) -> None:
    hipi, agnostic = cheetah_runs
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("tasks: [-1.5, 2.0, 0.0, -0.25, 1.0]\n")
    config = EvalConfig(
        tasks=str(tasks),
        steps=25,
        progress=False,
        save_rollouts=tmp_path / "roll",
        json_path=tmp_path / "eval.json",
    )
    evaluation = evaluate([hipi, agnostic], config)
    doc = json.loads((tmp_path / "eval.json").read_text())
    for i, (result, entry) in enumerate(zip(evaluation.results, doc["runs"], strict=True)):
        with open_store(tmp_path / "roll" / f"{i}-{result.method}.h5") as store:
            targets = store.read_episode_field("task").astype(np.float64)[:, 0]
            speed = store.read_steps("steps/infos/speed").astype(np.float64)
            slices = episode_slices(store)
        reference = [
            float(np.mean(speed[s]) * (-1.0 if target < 0 else 1.0))
            for s, target in zip(slices, targets, strict=True)
        ]
        assert np.ptp(reference) > 1e-3  # the policies move: the check has teeth
        check_json(entry, result.outcomes, reference)
        mean, stderr, count = result.velocity_summary()
        assert count == 5 and (mean, stderr) == pytest.approx(summary(reference), rel=1e-6)
        velocities = result.velocities
        np.testing.assert_allclose(velocities, reference, rtol=1e-6, atol=1e-6)
    lines = evaluation.lines()
    assert VELOCITY_COLUMN in lines[1]
    assert lines[1].index(VELOCITY_COLUMN) < lines[1].index("mean return")
    for line, result in zip(lines[2:4], evaluation.results, strict=True):
        mean, stderr, _ = result.velocity_summary()
        assert f"{mean:+.3f} ± {stderr:.3f}" in line and "ep)" not in line


def test_velocity_does_not_depend_on_the_group_size(cheetah_runs) -> None:
    hipi, _ = cheetah_runs
    config = EvalConfig(episodes=5, steps=20, progress=False)
    one = evaluate([hipi], config).results[0].velocities
    other = evaluate([hipi], replace(config, group_size=2)).results[0].velocities
    np.testing.assert_allclose(one, other, rtol=1e-5, atol=1e-5)


def test_quadruped_velocity_is_torso_velocity_on_the_task_direction(
    quadruped_run, tmp_path: Path
) -> None:
    hipi, _ = quadruped_run
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(
        "tasks:\n"
        "  - [1.0, 0.0, 0.0, 0.0, 0.0]\n"
        "  - [0.0, 0.0, 1.0, 1.0, 0.0]\n"  # no direction: null
        "  - [0.6, -0.8, 0.5, 0.0, 0.0]\n"
        "  - [-0.2, 0.3, 0.0, 1.0, 0.5]\n"
    )
    config = EvalConfig(
        env="quadruped",
        tasks=str(tasks),
        steps=15,
        progress=False,
        save_rollouts=tmp_path / "roll",
    )
    out = tmp_path / "eval.json"
    cli = CliRunner().invoke(
        app,
        [
            "evaluate", str(hipi), "--env", "quadruped", "--tasks", str(tasks),
            "--steps", "15", "--no-progress", "--json", str(out),
        ],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    evaluation = evaluate([hipi], config)
    result = evaluation.results[0]
    with open_store(tmp_path / "roll" / "0-hipi.h5") as store:
        weights = store.read_episode_field("task").astype(np.float64)
        qvel = store.read_steps("steps/physics/qvel").astype(np.float64)
        slices = episode_slices(store)
    reference: list[float | None] = []
    for s, w in zip(slices, weights, strict=True):
        norm = math.hypot(w[0], w[1])
        if norm == 0.0:
            reference.append(None)
            continue
        # the free joint's linear velocity is the torso's, in the world frame
        along = (qvel[s, 0] * w[0] + qvel[s, 1] * w[1]) / norm
        reference.append(float(np.mean(along)))
    assert reference[1] is None and all(v is not None for i, v in enumerate(reference) if i != 1)
    assert min(abs(v) for v in reference if v is not None) > 1e-4  # the torso moves
    doc = json.loads(out.read_text())
    check_json(doc, result.outcomes, reference)  # a single run: its keys at the top level
    check_json(doc["runs"][0], result.outcomes, reference)
    assert doc["per_episode"][1]["velocity_along_command"] is None
    assert score(out)[2] == "return"  # the experiments still read the JSON
    row = evaluation.lines()[2]
    mean, stderr, count = result.velocity_summary()
    assert count == 3 and f"{mean:+.3f} ± {stderr:.3f} (3/4 ep)" in row
    assert VELOCITY_COLUMN in cli.output


def test_desk_has_no_velocity_column_and_null_json(desk_runs, tmp_path: Path) -> None:
    hipi, agnostic = desk_runs
    out = tmp_path / "eval.json"
    config = EvalConfig(episodes=3, steps=5, progress=False, json_path=out)
    evaluation = evaluate([hipi, agnostic], config)
    doc = json.loads(out.read_text())
    for result, entry in zip(evaluation.results, doc["runs"], strict=True):
        assert result.velocity_summary() is None and len(result.velocities) == 0
        assert RUN_KEYS | {"success_rate", "success_stderr", "success_by_task"} <= set(entry)
        assert entry["velocity_along_command"] is None
        for row, outcome in zip(entry["per_episode"], result.outcomes, strict=True):
            assert outcome.velocity_along_command is None
            assert "velocity_along_command" in row and row["velocity_along_command"] is None
            assert EPISODE_KEYS | {"success"} <= set(row)
    text = "\n".join(evaluation.lines())
    assert "velocity" not in text and "mean return" in text
