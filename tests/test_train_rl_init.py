"""``train-rl --init-store STORE [--init-labels NAME] [--offline-updates K]``: the
replay buffer starts from another store's episodes (copied into the run's replay.h5),
with their commanded tasks or a label set's argmax tasks and float64 rewards under
them; bad stores and labels are one ``error:`` line with nothing written; resume
after SIGKILL stays exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cli.main import exit_code
from hipi_offline.rl.checkpoint import list_checkpoints
from hipi_offline.rl.config import RLConfig
from hipi_offline.rl.train import METRICS, read_metrics, train_rl
from hipi_offline.store import create_store, open_store
from hipi_offline.store.labels import LabelSet, write_label_set

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--episode-steps", "20", "--batch-size", "16", "--hidden", "16,16",
    "--no-progress", "--threads", "1",
]  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = exit_code(["train-rl", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def _hand_store(path: Path, episodes: int = 3, length: int = 5, **change: object) -> Path:
    """A pointmass-like store made by hand (no next observations, float64 values):
    positions p_t = 0.1 t + e, observations = positions, episode tasks (e, -e)."""
    rows = episodes * length
    t = np.tile(np.arange(length), episodes)
    e = np.repeat(np.arange(episodes), length)
    position = np.stack([0.1 * t + e, -0.1 * t], axis=1).astype(np.float64)
    steps = {
        "steps/observations": position.copy(),
        "steps/actions": np.zeros((rows, 2), np.float64),
        "steps/infos/position": position,
    }
    steps.update(change.pop("steps", {}))  # type: ignore[arg-type]
    tasks = np.stack([np.arange(episodes), -np.arange(episodes)], axis=1).astype(np.float32)
    episode_fields = {"task": change.pop("tasks", tasks)}
    with create_store(path, env="pointmass") as store:
        store.append_episodes(steps, [length] * episodes, episode_fields)  # type: ignore[arg-type]
    return path


def _labels(path: Path, name: str, candidates: np.ndarray, best: list[int]) -> None:
    """A label set whose most probable candidate of episode i is ``best[i]``."""
    k_all = len(candidates)
    top = np.array([[b, (b + 1) % k_all] for b in best], np.int64)
    labels = LabelSet(
        name=name,
        candidates=candidates.astype(np.float32),
        log_z=np.zeros(k_all),
        topk_index=top,
        topk_logprob=np.log(np.tile(np.float32([0.7, 0.3]), (len(best), 1))),
        entropy=np.full(len(best), 0.6, np.float32),
        coverage=np.full(k_all, 1.0 / k_all),
        attrs={"method": "test"},
    )
    write_label_set(path, labels)


def test_init_store_fills_the_buffer_first(tmp_path: Path) -> None:
    """A hand-made store without next observations: each episode keeps its steps but
    the last, s' = the following observation, values cast to the online dtypes, and
    rewards are the dense goal reward under the commanded task (float64 reference);
    with --start-steps 0 and --offline-updates 3, updates start before the first step."""
    source = _hand_store(tmp_path / "source.h5")
    config = RLConfig(
        out=tmp_path / "run",
        steps=40,
        episode_steps=20,
        start_steps=0,
        batch_size=8,
        hidden=(16, 16),
        init_store=str(source),
        offline_updates=3,
        progress=False,
    )
    summary = train_rl("pointmass", config)
    assert (summary.env_steps, summary.episodes, summary.init_episodes) == (40, 5, 3)
    assert summary.updates == 3 + 40  # the policy acts and learns from the first step
    with open_store(tmp_path / "run" / "replay.h5") as store:
        np.testing.assert_array_equal(store.lengths, [4, 4, 4, 20, 20])
        assert store.attrs["init_episodes"] == 3
        assert store.attrs["init_tasks"] == "episodes/task"
        obs = store.read_steps("steps/observations", 0, 12)
        nxt = store.read_steps("steps/next_observations", 0, 12)
        position = store.read_steps("steps/infos/position", 0, 12)
        rewards = store.read_steps("steps/rewards", 0, 12)
        tasks = store.read_episode_field("task")
        assert obs.dtype == np.float32 and position.dtype == np.float64
    t = np.tile(np.arange(4), 3)
    e = np.repeat(np.arange(3), 4)
    expected = np.stack([0.1 * t + e, -0.1 * t], axis=1)
    np.testing.assert_array_equal(position, expected)
    np.testing.assert_array_equal(obs, expected.astype(np.float32))
    following = np.stack([0.1 * (t + 1) + e, -0.1 * (t + 1)], axis=1)
    np.testing.assert_array_equal(nxt, following.astype(np.float32))
    np.testing.assert_array_equal(tasks[:3], [[0, 0], [1, -1], [2, -2]])
    goal = np.stack([e, -e], axis=1).astype(np.float64)
    reference = -np.sqrt(((expected - goal) ** 2).sum(axis=1))
    np.testing.assert_allclose(rewards, reference, rtol=1e-12, atol=0)
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(r["episode"]) for r in rows] == [3, 4]


def test_init_labels_give_the_argmax_task_and_its_rewards(tmp_path: Path) -> None:
    source = _hand_store(tmp_path / "source.h5")
    candidates = np.array([[0.5, 0.5], [-1.0, 0.25], [2.0, 0.0]])
    _labels(source, "post", candidates, best=[2, 0, 1])
    config = RLConfig(
        out=tmp_path / "run",
        steps=20,
        episode_steps=20,
        start_steps=20,
        batch_size=8,
        hidden=(16, 16),
        init_store=str(source),
        init_labels="post",
        progress=False,
    )
    train_rl("pointmass", config)
    with open_store(tmp_path / "run" / "replay.h5") as store:
        tasks = store.read_episode_field("task")[:3]
        rewards = store.read_steps("steps/rewards", 0, 12)
        position = store.read_steps("steps/infos/position", 0, 12)
        assert store.attrs["init_tasks"] == "labels/post (argmax)"
    np.testing.assert_array_equal(tasks, candidates[[2, 0, 1]].astype(np.float32))
    goal = np.repeat(candidates[[2, 0, 1]].astype(np.float32).astype(np.float64), 4, axis=0)
    reference = -np.sqrt(((position - goal) ** 2).sum(axis=1))
    np.testing.assert_allclose(rewards, reference, rtol=1e-12, atol=0)


LINEAR3 = "family: linear\nfeatures: [steps/infos/position, steps/infos/position]\nprior: {uniform: {low: [-1, -1, -1, -1], high: [1, 1, 1, 1]}}\n"  # noqa: E501


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "error: --init-store: "),
        ("obs-shape", "error: --init-store: "),
        ("no-field", "error: --init-store: "),
        ("task-dim", "error: --init-store: episodes/task of "),
        ("no-labels", "error: --init-labels: labels/nope: no such label set"),
        ("label-dim", "error: --init-labels: labels/wide of "),
        ("labels-alone", "error: --init-labels: needs --init-store"),
        ("offline-alone", "error: --offline-updates: needs --init-store"),
        ("offline-small", "error: --offline-updates: the initial buffer has 12 steps"),
        ("bad-offline", "error: --offline-updates: "),
        ("one-step", "error: --init-store: "),
        ("nan", "error: --init-store: "),
        ("memory", "error: --init-store: "),
    ],
)
def test_bad_init_input_is_one_line_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    message: str,
) -> None:
    source = tmp_path / "source.h5"
    args: list[object] = ["--init-store", source]
    if case == "missing":
        source = tmp_path / "none.h5"
        args = ["--init-store", source]
    elif case == "obs-shape":
        _hand_store(source, steps={"steps/observations": np.zeros((15, 3))})
    elif case == "no-field":
        _hand_store(source)
        other = tmp_path / "other.h5"
        with open_store(source) as store, create_store(other, env="pointmass") as out:
            out.append_episodes(
                {n: store.read_steps(n) for n in ("steps/observations", "steps/actions")},
                store.lengths.tolist(),
                {"task": store.read_episode_field("task")},
            )
        args = ["--init-store", other]
    elif case == "task-dim":
        _hand_store(source, tasks=np.zeros((3, 3), np.float32))
    elif case == "no-labels":
        _hand_store(source)
        args += ["--init-labels", "nope"]
    elif case == "label-dim":
        _hand_store(source)
        _labels(source, "wide", np.zeros((3, 3)), best=[0, 1, 2])
        args += ["--init-labels", "wide"]
    elif case == "labels-alone":
        args = ["--init-labels", "x"]
    elif case == "offline-alone":
        args = ["--offline-updates", "3"]
    elif case == "offline-small":
        _hand_store(source)
        args += ["--offline-updates", "3", "--batch-size", "64"]
    elif case == "bad-offline":
        _hand_store(source)
        args += ["--offline-updates", "-1"]
    elif case == "one-step":
        _hand_store(source, episodes=2, length=1)
    elif case == "nan":  # episode 1, its step 2: store row 7
        obs = np.zeros((15, 2))
        obs[7, 1] = np.nan
        _hand_store(source, steps={"steps/observations": obs})
        message = (
            "error: --init-store: "
            + str(source)
            + (": steps/observations holds NaN or inf at step 7 (episode 1)")
        )
    elif case == "memory":  # a machine with 1 KiB available
        _hand_store(source)
        monkeypatch.setattr("hipi_offline.rl.init_store.available_memory", lambda: 1024)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "run"
    code, _, err = run(capsys, "pointmass", "--out", out, *TINY, *args)
    assert code == 2, err
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1, err
    assert case != "memory" or "in memory and 1.0 KiB is available" in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_init_store_must_match_the_task_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 4-dim linear spec over pointmass: the store's 2-dim commanded tasks are refused
    (and with --overwrite nothing of an existing run is removed first)."""
    spec = tmp_path / "linear.yaml"
    spec.write_text(LINEAR3)
    source = _hand_store(tmp_path / "source.h5")
    out = tmp_path / "run"
    assert run(capsys, "pointmass", "--out", out, *TINY, "--steps", "20")[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, _, err = run(
        capsys, "pointmass", "--out", out, *TINY, "--steps", "20", "--tasks", spec,
        "--init-store", source, "--overwrite",
    )  # fmt: skip
    assert code == 2 and "expected (3, 4)" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def _command(out: Path, source: Path) -> list[str]:
    return [
        sys.executable, "-m", "cli.main", "train-rl", "pointmass", "--out", str(out),
        "--init-store", str(source), "--offline-updates", "4", "--start-steps", "0",
        "--steps", "100", "--checkpoint-every", "40", *TINY,
    ]  # fmt: skip


@pytest.mark.slow
def test_resume_after_a_kill_is_exact_with_an_init_store(tmp_path: Path) -> None:
    """Killed at the checkpoint at step 80 after its episodes were stored, before it was
    written (checkpoint at 40): the rerun keeps the init episodes, drops the two extra
    ones, and ends as a straight run."""
    source = _hand_store(tmp_path / "source.h5", episodes=4, length=6)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    env = {**os.environ, "HIPI_OFFLINE_TEST_KILL": "rl:60"}
    done = subprocess.run(
        _command(killed, source), cwd=ROOT, env=env, capture_output=True, timeout=300
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert [s for s, _ in list_checkpoints(killed)] == [40]
    with open_store(killed / "replay.h5") as store:
        assert store.num_episodes == 4 + 4  # the init episodes, two past the checkpoint
    source.unlink()  # a resumed run reads only its own replay.h5
    outputs = []
    for out in (killed, straight):
        if out == straight:
            _hand_store(source, episodes=4, length=6)
        done = subprocess.run(_command(out, source), cwd=ROOT, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        outputs.append(done.stdout.decode())
    assert "continued from step 40" in outputs[0] and "continued" not in outputs[1]
    a = load_file(straight / "checkpoints" / "step-00000100.safetensors")
    b = load_file(killed / "checkpoints" / "step-00000100.safetensors")
    assert a.keys() == b.keys() and int(a["count.init_episodes"]) == 4
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with open_store(straight / "replay.h5") as s, open_store(killed / "replay.h5") as k:
        assert s.num_episodes == k.num_episodes == 4 + 5
        assert k.attrs["init_episodes"] == 4
        for name in s.step_fields():
            np.testing.assert_array_equal(s.read_steps(name), k.read_steps(name), err_msg=name)
        np.testing.assert_array_equal(s.read_episode_field("task"), k.read_episode_field("task"))
    timing = {"env_steps_per_s", "updates_per_s"}
    rows_s = read_metrics(straight / "metrics.csv")
    rows_k = read_metrics(killed / "metrics.csv")
    assert [int(r["episode"]) for r in rows_s] == [4, 5, 6, 7, 8]
    for r_s, r_k in zip(rows_s, rows_k, strict=True):
        for key in set(METRICS) - timing:
            assert r_s[key] == r_k[key] or (np.isnan(r_s[key]) and np.isnan(r_k[key])), key
