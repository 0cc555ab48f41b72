"""``train-rl --envs N``: environments stepped in lockstep on worker processes.

The replay mirror's lockstep layout, the same stored episodes and parameters whether
the environments run on workers or in this process, the same episodes as one
environment while actions are random, exact resume after SIGKILL with two workers,
and worker failures: one ``error:`` line, every worker joined, none left behind by a
killed or terminated parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from safetensors.torch import load_file

from cli.main import exit_code
from hipi_offline.rl import workers
from hipi_offline.rl.checkpoint import list_checkpoints
from hipi_offline.rl.config import RLConfig
from hipi_offline.rl.replay import Replay
from hipi_offline.rl.train import METRICS, read_metrics, train_rl
from hipi_offline.store import open_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--episode-steps", "20", "--start-steps", "20", "--batch-size", "16",
    "--hidden", "16,16", "--no-progress", "--threads", "1",
]  # fmt: skip


def test_bad_envs_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("0", "-1", "1000"):
        code = exit_code(["train-rl", "pointmass", "--out", str(tmp_path / "r"), "--envs", value])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: --envs: "), err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_replay_rounds_map_draws_onto_the_filled_rows() -> None:
    """One finished episode of 3 steps, then a round of 2 episodes of 4 steps filled to
    2 steps: the stored steps are the finished rows, then rows 3-4 and 7-8 (episode k's
    step t at 3 + 4k + t), and lengths/offsets/step_fields agree."""
    replay = Replay(4)
    replay.add_episode(
        {"steps/x": np.arange(3, dtype=np.float32)[:, None]}, np.zeros(2, np.float32)
    )
    replay.start_round([np.ones(2, np.float32), np.full(2, 2, np.float32)], 4)
    for t in range(2):
        replay.add_round([{"steps/x": np.float32([10 + t])}, {"steps/x": np.float32([20 + t])}])
    assert replay.size == 7 and replay.committed == 3
    rows = replay.rows(np.arange(7))
    np.testing.assert_array_equal(rows, [0, 1, 2, 3, 4, 7, 8])
    np.testing.assert_array_equal(replay.arrays["steps/x"][rows, 0], [0, 1, 2, 10, 11, 20, 21])
    np.testing.assert_array_equal(replay.arrays["episode"][rows], [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(replay.arrays["offset"][rows], [0, 1, 2, 0, 1, 0, 1])
    np.testing.assert_array_equal(replay.lengths(), [3, 2, 2])
    got = replay.step_fields(torch.tensor([2, 1]), torch.tensor([1, 0]), ["steps/x"])
    np.testing.assert_array_equal(got["steps/x"][:, 0].numpy(), [21, 10])
    with pytest.raises(ValueError, match="not full"):
        replay.end_round()
    for t in range(2, 4):
        replay.add_round([{"steps/x": np.float32([10 + t])}, {"steps/x": np.float32([20 + t])}])
    assert replay.end_round() == [1, 2]
    assert replay.size == replay.committed == 11
    np.testing.assert_array_equal(replay.episode_rows(2)["steps/x"][:, 0], [20, 21, 22, 23])
    np.testing.assert_array_equal(replay.rows(np.arange(11)), np.arange(11))


def _children() -> list[psutil.Process]:
    """This process's children, zombies included, less multiprocessing's resource
    tracker (one per process that started a spawn worker, by design long-lived)."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    return [p for p in psutil.Process().children() if p.pid != tracker and p.is_running()]


def _config(out: Path, **extra: object) -> RLConfig:
    options: dict[str, object] = dict(
        out=out,
        relabel="her-future",
        steps=80,
        envs=2,
        episode_steps=20,
        start_steps=20,
        batch_size=16,
        hidden=(16, 16),
        checkpoint_every=40,
        progress=False,
    )
    return RLConfig(**{**options, **extra})  # type: ignore[arg-type]


def _same_runs(a: Path, b: Path, step: int) -> None:
    """Every checkpoint tensor, stored array and metric (timings aside) equal."""
    name = f"step-{step:08d}.safetensors"
    ta, tb = load_file(a / "checkpoints" / name), load_file(b / "checkpoints" / name)
    assert ta.keys() == tb.keys() and any(k.startswith("opt.critic.") for k in ta)
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    _same_stores(a / "replay.h5", b / "replay.h5")
    timing = {"env_steps_per_s", "updates_per_s"}
    rows_a, rows_b = read_metrics(a / "metrics.csv"), read_metrics(b / "metrics.csv")
    assert len(rows_a) == len(rows_b) > 0
    for r_a, r_b in zip(rows_a, rows_b, strict=True):
        for key in set(METRICS) - timing:
            assert r_a[key] == r_b[key] or (np.isnan(r_a[key]) and np.isnan(r_b[key])), key


def _same_stores(a: Path, b: Path) -> None:
    with open_store(a) as s, open_store(b) as k:
        assert s.num_episodes == k.num_episodes and s.num_steps == k.num_steps
        np.testing.assert_array_equal(s.ends, k.ends)
        assert s.step_fields().keys() == k.step_fields().keys()
        for name in s.step_fields():
            np.testing.assert_array_equal(s.read_steps(name), k.read_steps(name), err_msg=name)
        np.testing.assert_array_equal(s.read_episode_field("task"), k.read_episode_field("task"))


@pytest.mark.slow
def test_workers_give_the_run_of_the_same_environments_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two environments on worker processes and the same two in this process: the same
    stored episodes (in environment order), metrics and final parameters."""
    summary = train_rl("pointmass", _config(tmp_path / "workers"))
    assert (summary.env_steps, summary.episodes, summary.envs) == (80, 4, 2)
    # 2 x 1 updates after each lockstep step from the 10th (env step 20, the end of the
    # random phase) to the 40th
    assert summary.updates == 2 * (40 - 10 + 1)
    monkeypatch.setattr(workers, "PROCESSES_FROM", 3)
    train_rl("pointmass", _config(tmp_path / "local"))
    _same_runs(tmp_path / "workers", tmp_path / "local", 80)
    assert not _children()
    rows = read_metrics(tmp_path / "workers" / "metrics.csv")
    assert [int(r["episode"]) for r in rows] == [0, 1, 2, 3]
    assert [int(r["step"]) for r in rows] == [40, 40, 80, 80]


@pytest.mark.slow
def test_random_phase_episodes_do_not_depend_on_the_number_of_environments(
    tmp_path: Path,
) -> None:
    """While every action is random, episode i is default_rng([seed, i])'s whatever the
    number of environments: one environment and three (on workers) store the same
    episodes."""
    for n in (1, 3):
        config = _config(tmp_path / f"n{n}", envs=n, steps=60, start_steps=60)
        train_rl("pointmass", config)
    _same_stores(tmp_path / "n1" / "replay.h5", tmp_path / "n3" / "replay.h5")


def _command(out: Path) -> list[str]:
    """Two environments, 120 steps (3 rounds of 2 episodes), a checkpoint every 40."""
    return [
        sys.executable, "-m", "cli.main", "train-rl", "pointmass", "--out", str(out),
        "--envs", "2", "--steps", "120", "--checkpoint-every", "40", *TINY,
    ]  # fmt: skip


def _workers_of(token: str) -> list[psutil.Process]:
    """The live processes whose environment holds ``token`` (a test's own marker)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("HIPI_TEST_TOKEN") == token:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.slow
def test_resume_after_a_kill_is_exact_with_two_workers(tmp_path: Path) -> None:
    """SIGKILL at the checkpoint at step 80, its round stored, the checkpoint not
    written (checkpoint at 40): the workers leave by themselves, and the rerun ends as
    a straight run does."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    token = f"kill-{os.getpid()}-{tmp_path.name}"
    env = {**os.environ, "HIPI_OFFLINE_TEST_KILL": "rl:60", "HIPI_TEST_TOKEN": token}
    done = subprocess.run(_command(killed), cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    left = _workers_of(token)
    _, alive = psutil.wait_procs(left, timeout=60)  # they read EOF on their pipes and leave
    assert not alive, alive
    assert [s for s, _ in list_checkpoints(killed)] == [40]
    with open_store(killed / "replay.h5") as store:
        assert store.num_episodes == 4  # two more than the checkpoint holds
    outputs = []
    for out in (killed, straight):
        done = subprocess.run(_command(out), cwd=ROOT, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        outputs.append(done.stdout.decode())
    assert "continued from step 40" in outputs[0] and "continued" not in outputs[1]
    _same_runs(straight, killed, 120)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("exit:1:5", "error: environment worker 1 died during step (exit code 3)"),
        ("raise:0:5", "error: environment worker 0: step: RuntimeError: test fault"),
        ("hang:1:5", "error: environment worker 1 did not answer step within 2 s"),
    ],
)
def test_a_failing_worker_is_one_error_line_and_every_worker_is_joined(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    message: str,
) -> None:
    monkeypatch.setenv(workers.CRASH_ENV, fault)
    monkeypatch.setenv(workers.TIMEOUT_ENV, "2")
    out = tmp_path / "run"
    code = exit_code(["train-rl", "pointmass", "--out", str(out), "--envs", "2", *TINY])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not _children()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_sigterm_and_ctrl_c_close_the_workers(tmp_path: Path, how: str) -> None:
    """SIGTERM to the command, or SIGINT to its whole process group (Ctrl-C in a
    terminal), once both workers run: exit code 130, one line (no worker traceback),
    and no worker left."""
    token = f"term-{os.getpid()}-{tmp_path.name}"
    env = {**os.environ, "HIPI_TEST_TOKEN": token}
    command = [*_command(tmp_path / "run"), "--steps", "100000"]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        parent = psutil.Process(process.pid)
        deadline = time.monotonic() + 120
        metrics = tmp_path / "run" / "metrics.csv"
        # wait for the first round's episodes to be logged: the workers are stepping
        while not (metrics.exists() and len(metrics.read_text().splitlines()) > 1):
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no episode logged within 120 s"
            time.sleep(0.05)
        children = parent.children()
        assert len(children) >= 2
        if how == "sigterm":
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err.decode()[-2000:]
    assert len(err.decode().strip().splitlines()) == 1, err.decode()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive and not _workers_of(token)


def test_a_stop_request_is_a_flag_then_an_interrupt() -> None:
    """The first SIGTERM/SIGINT only sets the flag (raised at the run's next safe point,
    never inside a finalizer that would swallow it), a second interrupts at once; the
    previous handlers come back."""
    from hipi_offline.rl.train import StopRequest

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stop = StopRequest()
    stop.install()
    try:
        stop.check()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop()
        with pytest.raises(KeyboardInterrupt):
            stop.check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
