"""``train-bc --body-frame-task``: the policy also gets the task's world direction in
the body frame, for environments that declare where the body's rotation is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.bc import load_policy
from hipi_offline.bc.description import check_run
from hipi_offline.bc.policy import body_frame_direction
from hipi_offline.collect import CollectConfig, collect
from hipi_offline.envs.base import env_task_frame
from hipi_offline.errors import InputError
from hipi_offline.relabel import RelabelConfig, relabel


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def test_direction_in_the_body_frame_against_a_float64_reference() -> None:
    rng = np.random.default_rng(0)
    rotations = np.stack([_rotation(rng) for _ in range(16)])
    obs = rng.standard_normal((16, 88))
    obs[:, 78:87] = rotations.reshape(16, 9)
    tasks = rng.uniform(-1, 1, (16, 5))
    expected = np.einsum("bmk,bm->bk", rotations, np.c_[tasks[:, :2], np.zeros(16)])[:, :2]
    got = body_frame_direction(
        torch.from_numpy(obs).float(), torch.from_numpy(tasks).float(), (78, 0, 1)
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    # a body turned by +90 degrees about z sees world +x on its right (-y)
    turn = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    obs[0, 78:87] = turn.reshape(9)
    tasks[0, :2] = (1.0, 0.0)
    got = body_frame_direction(
        torch.from_numpy(obs[:1]).float(), torch.from_numpy(tasks[:1]).float(), (78, 0, 1)
    )
    np.testing.assert_allclose(got.numpy(), [[0.0, -1.0]], atol=1e-6)


def test_only_environments_with_a_rotation_declare_a_frame() -> None:
    frame = env_task_frame("quadruped")
    assert frame is not None and frame.rotation == 78 and frame.direction == (0, 1)
    assert env_task_frame("cheetah") is None and env_task_frame("desk") is None


def _run(**network) -> dict:
    return {
        "network": {
            "obs_dim": 88,
            "act_dim": 12,
            "task_dim": 5,
            "hidden": [8],
            "activation": "relu",
            "head": "gaussian",
            "task_embedding": 0,
            **network,
        },
        "dims": {"obs_shape": [88]},
    }


@pytest.mark.parametrize(
    "frame",
    [
        {"rotation": 80, "direction": [0, 1]},  # 9 entries past the observation
        {"rotation": -1, "direction": [0, 1]},
        {"rotation": 78, "direction": [0, 5]},
        {"rotation": 78, "direction": [1, 1]},
        {"rotation": 78, "direction": [0]},
        {"rotation": True, "direction": [0, 1]},
        {"rotation": 78.0, "direction": [0, 1]},
        [78, 0, 1],
    ],
)
def test_crafted_task_frames_are_refused(frame) -> None:
    with pytest.raises(InputError, match="network.task_frame") as info:
        check_run(_run(task_frame=frame), "x.safetensors")
    assert "\n" not in str(info.value)
    assert check_run(_run(task_frame={"rotation": 79, "direction": [1, 0]}), "ok")["task_frame"]
    assert "task_frame" not in check_run(_run(), "ok")


@pytest.fixture(scope="module")
def quadruped_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("q") / "q.h5"
    collect("quadruped", path, CollectConfig(episodes=3, steps=12, seed=1))
    relabel(path, RelabelConfig(tasks="quadruped-linear", method="original", device="cpu"))
    return path


def _train(store: Path, out: Path, *extra: str) -> object:
    argv = ["train-bc", str(store), "--out", str(out), "--steps", "20", "--hidden", "16"]
    argv += ["--warmup-steps", "2", "--no-progress", *extra]
    return CliRunner().invoke(app, argv)


def test_a_body_frame_run_trains_records_its_frame_and_acts(quadruped_store, tmp_path) -> None:
    out = tmp_path / "body"
    result = _train(quadruped_store, out, "--labels", "original", "--body-frame-task")
    assert result.exit_code == 0, result.output
    network = json.loads((out / "config.json").read_text())["network"]
    assert network["task_frame"] == {"rotation": 78, "direction": [0, 1]}
    policy = load_policy(out, device="cpu")
    assert policy.network.frame == (78, 0, 1)
    first = policy.network.trunk[0]
    assert first.in_features == 88 + 5 + 2
    obs = np.zeros((1, 88), np.float32)
    obs[0, 78:87] = np.eye(3).reshape(9)
    action = policy.act(obs, np.array([[1.0, 0, 0, 0, 0]], np.float32))
    assert action.shape == (1, 12) and np.isfinite(action).all()
    plain = tmp_path / "plain"
    assert _train(quadruped_store, plain, "--labels", "original").exit_code == 0
    assert "task_frame" not in json.loads((plain / "config.json").read_text())["network"]


def test_body_frame_needs_a_task_and_an_environment_with_a_rotation(
    quadruped_store, tmp_path
) -> None:
    result = _train(quadruped_store, tmp_path / "a", "--task-agnostic", "--body-frame-task")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --body-frame-task: a task-agnostic policy has no task input"
    )
    cheetah = tmp_path / "c.h5"
    collect("cheetah", cheetah, CollectConfig(episodes=2, steps=5, seed=1))
    relabel(cheetah, RelabelConfig(tasks="cheetah-velocity", method="original", device="cpu"))
    result = _train(cheetah, tmp_path / "c", "--labels", "original", "--body-frame-task")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "declares no body rotation in its observation (have: quadruped)" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "c.h5.labels"]
