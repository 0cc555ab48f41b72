"""``hipi-offline train-rl`` on the 2-D point mass: option errors, a tiny run of each
relabeling strategy (a valid store and metrics), exact resume after SIGKILL, and
learning on the dense goal task."""

from __future__ import annotations

import os
import shutil
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
from hipi_offline.rl.relabel import STRATEGIES
from hipi_offline.rl.train import METRICS, read_metrics, train_rl
from hipi_offline.store import open_store
from hipi_offline.store.describe import describe_store
from hipi_offline.tasks.spec import load_task_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--steps", "60", "--episode-steps", "20", "--start-steps", "20", "--batch-size", "16",
    "--hidden", "16,16", "--checkpoint-every", "20", "--no-progress", "--threads", "1",
]  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = exit_code(["train-rl", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


LINEAR = "family: linear\nfeatures: [steps/infos/position]\nprior: {uniform: {low: [-1, -1], high: [1, 1]}}\n"  # noqa: E501


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "error: ENV: unknown environment 'nope'"),
        (["pointmass", "--relabel", "bogus"], "error: --relabel: expected one of hipi"),
        (
            ["pointmass", "--relabel-fraction", "1.5"],
            "error: --relabel-fraction: expected a number in [0, 1]",
        ),  # noqa: E501
        (
            ["pointmass", "--relabel-temperature", "-1"],
            "error: --relabel-temperature: expected alpha",
        ),  # noqa: E501
        (["pointmass", "--steps", "0"], "error: --steps: "),
        (["pointmass", "--batch-size", "-3"], "error: --batch-size: "),
        (["pointmass", "--updates-per-step", "0"], "error: --updates-per-step: "),
        (["pointmass", "--hidden", "0,4"], "error: --hidden: "),
        (["pointmass", "--gamma", "2"], "error: --gamma: expected a number in [0, 1]"),
        (["pointmass", "--lr", "0"], "error: --lr: "),
        (["pointmass", "--tasks", "no-such-spec"], "error: --tasks: "),
        (["pointmass", "--tasks", "cheetah-velocity"], "error: --tasks: "),
        (
            ["pointmass", "--tasks", "LINEAR", "--relabel", "her-final"],
            "error: --relabel: her-final needs a goal task family",
        ),  # noqa: E501
    ],
)
def test_bad_options_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    spec = tmp_path / "linear.yaml"
    spec.write_text(LINEAR)
    args = [str(spec) if a == "LINEAR" else a for a in args]
    out = tmp_path / "run"
    code, _, err = run(capsys, *TINY, "--out", out, *args)
    assert code == 2, err
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_out_must_be_a_train_rl_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, "pointmass", "--out", other, *TINY, *extra)
        assert code == 2 and err.startswith("error: --out: ") and "not a train-rl run" in err
        assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]


def test_overwrite_removes_only_the_runs_own_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert run(capsys, "pointmass", "--out", out, *TINY)[0] == 0
    (out / "notes.txt").write_text("mine")  # the user's own file in the run folder
    code, _, err = run(capsys, "pointmass", "--out", out, *TINY, "--seed", "5", "--overwrite")
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"
    assert '"seed": 5' in (out / "config.json").read_text()


def test_a_linked_entry_of_a_run_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    assert run(capsys, "pointmass", "--out", out, *TINY)[0] == 0
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    shutil.rmtree(out / "checkpoints")
    os.symlink(elsewhere, out / "checkpoints")
    for extra in ([], ["--overwrite"], ["--steps", "120"]):
        code, _, err = run(capsys, "pointmass", "--out", out, *TINY, *extra)
        assert code == 2 and "checkpoints: is a symbolic link" in err, err
        assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]
    assert (out / "checkpoints").is_symlink()


def _tiny(tmp_path: Path, relabel: str, **extra: object) -> RLConfig:
    options = dict(
        out=tmp_path / relabel,
        relabel=relabel,
        steps=60,
        episode_steps=20,
        start_steps=20,
        batch_size=16,
        hidden=(16, 16),
        checkpoint_every=20,
        progress=False,
    )
    return RLConfig(**{**options, **extra})  # type: ignore[arg-type]


@pytest.mark.parametrize("relabel", sorted(STRATEGIES))
def test_tiny_run_writes_a_store_and_metrics(tmp_path: Path, relabel: str) -> None:
    config = _tiny(tmp_path, relabel, tasks="pointmass-goal-sparse")
    summary = train_rl("pointmass", config)
    assert (summary.env_steps, summary.episodes) == (60, 3)
    assert summary.updates == 60 - 20 + 1  # from the step that ends the random phase
    run_dir = Path(config.out)
    with open_store(run_dir / "replay.h5") as store:
        assert store.num_episodes == 3 and store.num_steps == 60
        assert store.attrs["env"] == "pointmass"
        tasks = store.read_episode_field("task")
        position = store.read_steps("steps/infos/position")
        rewards = store.read_steps("steps/rewards")
        obs = store.read_steps("steps/observations")
        nxt = store.read_steps("steps/next_observations")
    assert tasks.shape == (3, 2) and tasks.dtype == np.float32
    # stored rewards: the sparse goal reward under the commanded task (float64 reference)
    goal = np.repeat(tasks.astype(np.float64), 20, axis=0)
    dist = np.sqrt(((position - goal) ** 2).sum(axis=1))
    np.testing.assert_allclose(rewards, (dist < 0.1).astype(np.float64) - 1.0, rtol=0, atol=0)
    np.testing.assert_array_equal(nxt, position.astype(np.float32))
    np.testing.assert_array_equal(obs[1:20], nxt[:19])  # within an episode s_{t+1} = s'_t
    assert "episodes 3, steps 60" in "\n".join(describe_store(run_dir / "replay.h5").lines())
    rows = read_metrics(run_dir / "metrics.csv")
    assert [int(r["episode"]) for r in rows] == [0, 1, 2]
    assert [int(r["step"]) for r in rows] == [20, 40, 60]
    assert set(rows[0]) == set(METRICS)
    last = rows[-1]
    assert last["relabeled"] == (0.0 if relabel == "none" else 0.5)  # round(0.5 * 16) of 16
    assert np.isfinite([last[k] for k in ("critic_loss", "actor_loss", "alpha")]).all()
    np.testing.assert_allclose(last["return"], rewards[40:].sum(), rtol=1e-12)
    assert [s for s, _ in list_checkpoints(run_dir)] == [40, 60]  # the newest two kept


def test_rerun_of_a_finished_run_continues_or_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert run(capsys, "pointmass", "--out", out, *TINY)[0] == 0
    code, text, _ = run(capsys, "pointmass", "--out", out, *TINY)
    assert code == 0 and "continued from step 60" in text and "60 env steps" in text
    code, _, err = run(capsys, "pointmass", "--out", out, *TINY, "--seed", "3")
    assert code == 2 and err.startswith("error: --out: ") and "seed: 0 there, 3 now" in err
    code, text, _ = run(capsys, "pointmass", "--out", out, *TINY, "--seed", "3", "--overwrite")
    assert code == 0 and "continued" not in text


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar of the run's TensorBoard events, by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


@pytest.mark.skipif(not _has_tensorboard(), reason="tensorboard is not installed")
def test_tensorboard_events_hold_the_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every metrics.csv column but step/episode is a train/<column> scalar at the
    episode's environment step, with the csv's value (as float32, TensorBoard's
    precision); a continued run appends to the same events."""
    out = tmp_path / "run"
    code, text, err = run(capsys, "pointmass", "--out", out, *TINY, "--tensorboard")
    assert code == 0, err
    assert f"tensorboard {out / 'tensorboard'}" in text
    code, _, err = run(capsys, "pointmass", "--out", out, *TINY, "--steps", "100", "--tensorboard")
    assert code == 0, err
    rows = read_metrics(out / "metrics.csv")
    scalars = _scalars(out)
    assert {"train/return", "train/critic_loss", "train/final_distance"} <= set(scalars)
    assert set(scalars) <= {f"train/{k}" for k in METRICS[2:]}
    for name in METRICS[2:]:
        expected = [
            (int(r["step"]), float(np.float32(r[name]))) for r in rows if np.isfinite(r[name])
        ]
        assert scalars.get(f"train/{name}", []) == expected, name
    assert [s for s, _ in scalars["train/return"]] == [20, 40, 60, 80, 100]


def test_tensorboard_not_installed_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    out = tmp_path / "run"
    code, text, err = run(capsys, "pointmass", "--out", out, *TINY, "--tensorboard")
    assert code == 0, err
    assert "tensorboard is not installed: metrics in metrics.csv only" in text
    assert not (out / "tensorboard").exists()
    code, text, err = run(capsys, "pointmass", "--out", out, *TINY, "--steps", "80")
    assert code == 0 and "tensorboard" not in text.replace(str(tmp_path), "TMP"), text


def _command(out: Path) -> list[str]:
    """The tiny run at 100 steps (5 episodes), a checkpoint every 40 steps, TensorBoard
    events where tensorboard is installed."""
    tiny = [*TINY[2:10], "--steps", "100", "--checkpoint-every", "40", *TINY[12:]]
    board = ["--tensorboard"] if _has_tensorboard() else []
    command = [sys.executable, "-m", "cli.main", "train-rl", "pointmass", "--out", str(out)]
    return [*command, *tiny, *board]


@pytest.mark.slow
def test_resume_after_a_kill_is_exact(tmp_path: Path) -> None:
    """Killed at the checkpoint at step 80 after its episodes were appended to the store
    and before it was written (checkpoint at 40): the rerun drops the two episodes past
    40 from the store and the metrics, continues from 40 and ends
    with the very parameters, optimizer states, generators and store of a straight run
    (same thread count)."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    env = {**os.environ, "HIPI_OFFLINE_TEST_KILL": "rl:60"}
    done = subprocess.run(_command(killed), cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert [s for s, _ in list_checkpoints(killed)] == [40]
    with open_store(killed / "replay.h5") as store:
        assert store.num_episodes == 4  # two more than the checkpoint holds
    outputs = []
    for out in (killed, straight):
        done = subprocess.run(_command(out), cwd=ROOT, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        outputs.append(done.stdout.decode())
    assert "continued from step 40" in outputs[0] and "continued" not in outputs[1]
    a = load_file(straight / "checkpoints" / "step-00000100.safetensors")
    b = load_file(killed / "checkpoints" / "step-00000100.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("opt.critic.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with open_store(straight / "replay.h5") as s, open_store(killed / "replay.h5") as k:
        assert s.num_episodes == k.num_episodes == 5
        for name in s.step_fields():
            np.testing.assert_array_equal(s.read_steps(name), k.read_steps(name), err_msg=name)
        np.testing.assert_array_equal(s.read_episode_field("task"), k.read_episode_field("task"))
    timing = {"env_steps_per_s", "updates_per_s"}
    rows_s = read_metrics(straight / "metrics.csv")
    rows_k = read_metrics(killed / "metrics.csv")
    assert len(rows_s) == len(rows_k) == 5
    for r_s, r_k in zip(rows_s, rows_k, strict=True):
        for key in set(METRICS) - timing:
            assert r_s[key] == r_k[key] or (np.isnan(r_s[key]) and np.isnan(r_k[key])), key
    if _has_tensorboard():  # the killed run's events past its checkpoint are purged
        events_s, events_k = _scalars(straight), _scalars(killed)
        assert events_s.keys() == events_k.keys()
        for tag in events_s.keys() - {f"train/{k}" for k in timing}:
            assert events_s[tag] == events_k[tag], tag
        assert [s for s, _ in events_k["train/return"]] == [20, 40, 60, 80, 100]


@pytest.mark.slow
def test_hipi_learns_to_reach_goals_on_the_dense_point_mass() -> None:
    """3000 steps of HIPI relabeling (64x64 networks, batch 64, alpha from 0.1) bring
    the mean final distance to the goal of the last 10 training episodes (stochastic
    policy) far below a random policy's. Measured here with one torch thread: seeds 0,
    1, 2 ended at 0.085, 0.078, 0.076 (0.138, 0.122, 0.117 with SAC's target entropy at
    a plain -act_dim, out of reach in the +-0.1 box); uniformly random actions
    (start_steps = steps) at 1.01, 1.01, 1.07 (last 20 episodes of 3000 steps, seeds
    0-2). The bar, 0.4, leaves a wide margin on both sides."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        config = RLConfig(
            out=out,
            steps=3000,
            batch_size=64,
            hidden=(64, 64),
            start_steps=500,
            init_alpha=0.1,
            relabel="hipi",
            progress=False,
        )
        train_rl("pointmass", config)
        rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 60
    first = np.mean([r["final_distance"] for r in rows[:10]])  # random actions
    last = np.mean([r["final_distance"] for r in rows[-10:]])
    assert first > 0.6 and last < 0.4, (first, last)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "tasks"),
    [
        ("cheetah", "cheetah-velocity"),
        ("quadruped", "quadruped-linear"),
        ("desk", "desk-discrete"),
        ("reacher", "reacher-goal-sparse"),
    ],
)
def test_every_registered_domain_trains(
    env: str, tasks: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train-rl on the MuJoCo domains with their own task families (target, linear,
    discrete, sparse goal): a short run stores its episodes, rewards equal to the
    family's reward of the stored fields summed per episode, and metrics per episode."""
    out = tmp_path / "run"
    code, _, err = run(
        capsys, env, "--tasks", tasks, "--out", out, "--steps", "40", "--episode-steps", "20",
        "--start-steps", "20", "--batch-size", "8", "--hidden", "16,16", "--threads", "1",
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    family = load_task_spec(tasks).family
    with open_store(out / "replay.h5") as store:
        assert store.num_episodes == 2
        rewards = store.read_steps("steps/rewards").reshape(2, 20).astype(np.float64)
        commanded = np.asarray(store.read_episode_field("task"), np.float64)
        named = {n: np.asarray(store.read_steps(n), np.float64) for n in family.fields}
    for e in range(2):  # float64 reference: the family's reward of the stored fields
        fields = {
            n: torch.from_numpy(v[20 * e : 20 * e + 20].reshape(20, -1)) for n, v in named.items()
        }
        task = torch.from_numpy(commanded[e].reshape(1, -1))
        expected = family.reward(fields, task)[:, 0].numpy()
        np.testing.assert_allclose(rewards[e], expected, rtol=1e-12, atol=1e-12)
    rows = read_metrics(out / "metrics.csv")
    assert [int(r["episode"]) for r in rows] == [0, 1]
    np.testing.assert_allclose([r["return"] for r in rows], rewards.sum(axis=1), rtol=1e-12)
