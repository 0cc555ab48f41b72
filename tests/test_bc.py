"""Task-conditioned behavior cloning: conditioning, task draws, checkpoints, resume, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import two_task_labels, two_task_store
from safetensors.torch import load_file
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.bc import (
    BCConfig,
    BCNetwork,
    Policy,
    RunDescription,
    load_policy,
    lr_at,
    train_bc,
)
from hipi_offline.bc.data import (
    BatchSampler,
    RunningStats,
    TaskSampler,
    WorkingSet,
    sampler_generator,
)
from hipi_offline.bc.policy import list_checkpoints
from hipi_offline.errors import InputError
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.store import LabelSet, create_store, write_label_set
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

REPO = Path(__file__).resolve().parents[1]
EPISODES, STEPS = 20, 25
TINY = dict(
    hidden=(32, 32),
    batch_size=64,
    lr=3e-3,
    warmup_steps=10,
    log_every=50,
    device="cpu",
    threads=1,  # tiny networks: several threads only contend on a busy machine
    progress=False,
)


def labeled_two_task_store(path: Path, seed: int = 0) -> Path:
    """:func:`two_task_store` with the label sets ``original`` and ``onehot``."""
    task = two_task_store(path, EPISODES, STEPS, seed)
    write_label_set(path, two_task_labels(task, discrete=False, name="original"))
    write_label_set(path, two_task_labels(task, discrete=True, name="onehot"))
    return path


@pytest.fixture(scope="module")
def two_task(tmp_path_factory) -> Path:
    return labeled_two_task_store(tmp_path_factory.mktemp("bc") / "two.h5")


@pytest.fixture(scope="module")
def trained(two_task: Path) -> Path:
    out = two_task.parent / "run-original"
    train_bc(two_task, BCConfig(out=out, labels="original", steps=300, **TINY))
    return out


# ---------------------------------------------------------------- conditioning
@pytest.mark.slow
def test_task_conditioning_is_real(two_task: Path, trained: Path):
    obs = np.random.default_rng(1).normal(size=(64, 3)).astype(np.float32)
    policy = load_policy(trained, device="cpu")
    plus, minus = policy.act(obs, [0.0]), policy.act(obs, [2.0])
    assert plus.shape == (64, 2)
    assert np.all(np.abs(plus - 0.5) < 0.15), plus.mean(axis=0)
    assert np.all(np.abs(minus + 0.5) < 0.15), minus.mean(axis=0)

    agnostic = two_task.parent / "run-agnostic"
    summary = train_bc(two_task, BCConfig(out=agnostic, task_agnostic=True, steps=300, **TINY))
    assert summary.labels is None and "task-agnostic" in summary.lines()[0]
    base = load_policy(agnostic, device="cpu")
    assert base.task_agnostic
    actions = base.act(obs)
    # without the task it can only learn the mean of +-0.5 (up to overfitting noise)
    assert np.all(np.abs(actions.mean(axis=0)) < 0.1), actions.mean(axis=0)
    assert np.all(np.abs(actions) < 0.3), np.abs(actions).max()
    np.testing.assert_array_equal(base.act(obs, [2.0]), actions)  # tasks are ignored


@pytest.mark.slow
def test_discrete_embedding_deterministic_head(two_task: Path):
    out = two_task.parent / "run-onehot"
    config = BCConfig(
        out=out, labels="onehot", steps=300, head="deterministic", task_embedding=4, **TINY
    )
    train_bc(two_task, config)
    policy = load_policy(out, device="cpu")
    obs = np.random.default_rng(2).normal(size=(32, 3)).astype(np.float32)
    left, right = policy.act(obs, "left"), policy.act(obs, 1)
    np.testing.assert_array_equal(left, policy.act(obs, [1.0, 0.0]))
    np.testing.assert_array_equal(right, policy.act(obs, np.array([1] * 32)))
    assert np.all(np.abs(left - 0.5) < 0.15) and np.all(np.abs(right + 0.5) < 0.15)
    single = policy.act(obs[0], "right")
    assert single.shape == (2,)
    # one row against a batch of 32: the matrix kernels may round differently
    np.testing.assert_allclose(single, right[0], rtol=1e-5, atol=1e-6)
    # a learned embedding is for discrete families only
    with pytest.raises(InputError, match="--task-embedding"):
        train_bc(two_task, replace(config, out=out.with_name("x"), labels="original"))


# ---------------------------------------------------------------- task draws
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.mark.parametrize("device", DEVICES)
def test_resampling_follows_stored_probabilities(device: str):
    """Chi-square goodness of fit of the candidates drawn for one episode's steps,
    through the minibatch sampler, against the renormalized top-k posterior (on a GPU
    the indices and uniforms come from a CUDA generator)."""
    k_all, steps_per_episode = 12, 10
    with np.errstate(divide="ignore"):
        logp = np.log(np.array([[0.5, 0.2, 0.05, 0.05, 0.0], [0.3, 0.2, 0.1, 0.05, 0.0]]))
    index = np.array([[0, 1, 2, 3, 4], [7, 3, 11, 5, 9]])
    labels = LabelSet(
        name="t",
        candidates=np.arange(k_all, dtype=np.float32)[:, None] * 10.0,
        log_z=np.zeros(k_all),
        topk_index=index,
        topk_logprob=logp.astype(np.float32),
        entropy=np.zeros(2, np.float32),
        coverage=np.full(k_all, 1 / k_all),
    )
    rows = 2 * steps_per_episode
    data = WorkingSet(
        observations=torch.arange(rows, dtype=torch.float32)[:, None],
        actions=torch.zeros(rows, 1),
        step_episode=torch.repeat_interleave(torch.arange(2, dtype=torch.int32), 10),
        obs_shape=(1,),
        obs_stats=RunningStats.empty(1),
        act_stats=RunningStats.empty(1),
    )
    gen = sampler_generator(data, torch.device(device), 123)
    assert gen.device.type == device
    batches = BatchSampler(data, TaskSampler(labels, device), 256, gen, device)
    drawn: list[np.ndarray] = []
    seen_step_tasks: dict[int, set] = {}
    for _ in range(100):
        obs, _, task = batches.sample()
        assert obs.device.type == task.device.type == device
        step = obs[:, 0].long().cpu().numpy()
        cand = (task[:, 0] / 10.0).round().long().cpu().numpy()
        drawn.append(cand[step >= steps_per_episode])
        for s, c in zip(step[:40], cand[:40], strict=True):
            seen_step_tasks.setdefault(int(s), set()).add(int(c))
    cand = np.concatenate(drawn)
    probs = labels.topk_probabilities()[1]
    counts = np.array([(cand == c).sum() for c in index[1]])
    assert counts.sum() == len(cand) > 10_000
    assert counts[-1] == 0  # zero probability: never drawn
    expected = probs[:-1] * len(cand)
    chi2 = float((((counts[:-1] - expected) ** 2) / expected).sum())
    assert chi2 < 16.27, (chi2, counts, expected)  # dof 3, alpha = 0.001
    # tasks are redrawn every iteration: the same step gets several tasks
    assert max(len(v) for v in seen_step_tasks.values()) >= 3
    # episode 0's steps only ever get episode 0's candidates
    sampler = TaskSampler(labels, device)
    chosen, tasks = sampler.sample(torch.zeros(5000, dtype=torch.long), gen)
    assert set(chosen.tolist()) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(tasks[:, 0].cpu().numpy(), chosen.cpu().numpy() * 10.0)


def test_label_set_and_task_sampler_draw_alike():
    """LabelSet.sample_tasks and TaskSampler invert the same CDF: the same uniforms give
    the same candidates, and a slot of probability zero is never drawn."""
    with np.errstate(divide="ignore"):
        logp = np.log(np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.8, 0.0], [1.0, 0, 0, 0]]))
    labels = LabelSet(
        name="t",
        candidates=np.arange(8, dtype=np.float32)[:, None],
        log_z=np.zeros(8),
        topk_index=np.array([[0, 1, 2, 3], [4, 5, 6, 7], [3, 2, 1, 0]]),
        topk_logprob=logp.astype(np.float32),
        entropy=np.zeros(3, np.float32),
        coverage=np.full(8, 1 / 8),
    )
    episodes = np.random.default_rng(1).integers(3, size=5000)
    drawn = labels.sample_tasks(episodes, np.random.default_rng(7))[:, 0]
    u = np.random.default_rng(7).random((len(episodes), 1))[:, 0]
    sampler = TaskSampler(labels)
    chosen = sampler.choose(torch.from_numpy(episodes), torch.from_numpy(u)).numpy()
    np.testing.assert_array_equal(drawn, labels.candidates[chosen, 0])
    assert set(drawn[episodes == 0]) == {0.0, 1.0, 2.0}  # not 3: probability zero
    assert set(drawn[episodes == 1]) == {4.0, 5.0, 6.0} and set(drawn[episodes == 2]) == {3.0}
    ones = (episodes == 1).sum()
    assert abs((drawn[episodes == 1] == 6.0).sum() / ones - 0.8) < 0.05


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.slow
def test_training_resumes_bit_exact_in_process(two_task: Path, tmp_path: Path, device: str):
    """Resuming from a mid-run checkpoint ends with the same weights, optimizer state and
    random streams as the straight run; on a GPU the sampler's stream is a CUDA one."""
    config = BCConfig(
        out=tmp_path / "straight", labels="original", steps=300, checkpoint_every=100,
        keep_checkpoints=0, **{**TINY, "device": device},
    )  # fmt: skip
    summary = train_bc(two_task, config)
    assert summary.device.startswith(device)
    cut = tmp_path / "cut"
    shutil.copytree(config.out, cut)
    for step, path in list_checkpoints(cut):
        if step > 100:
            path.unlink()
    resumed = train_bc(two_task, replace(config, out=cut, resume=True))
    assert resumed.start_step == 100 and resumed.step == 300
    a = load_file(config.out / "checkpoints" / "step_0000300.safetensors")
    b = load_file(cut / "checkpoints" / "step_0000300.safetensors")
    cpu_state = torch.Generator().get_state().numel()
    assert a.keys() == b.keys() and (a["rng.sampler"].numel() == cpu_state) == (device == "cpu")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_lr_schedule():
    config = BCConfig(out="x", labels="a", steps=100, warmup_steps=10, lr=1.0)
    lrs = [lr_at(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert 0 < lrs[-1] < 0.01
    constant = replace(config, schedule="constant")
    assert lr_at(99, constant) == 1.0


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_bit_exact(trained: Path, tmp_path: Path):
    (_, last), *_ = reversed(list_checkpoints(trained))
    policy = load_policy(trained, device="cpu")
    same = load_policy(last, device="cpu")
    stored = load_file(last)
    for key, value in policy.network.state_dict().items():
        assert torch.equal(value, stored[f"policy.{key}"]), key
    obs = np.random.default_rng(3).normal(size=(16, 3)).astype(np.float32)
    np.testing.assert_array_equal(policy.act(obs, [0.7]), same.act(obs, [0.7]))
    assert policy.step == 300 and policy.env == "two-task"
    assert policy.run.labels.spec == "name: two-task\n"

    # a fresh network saved and loaded back gives exactly the same actions
    torch.manual_seed(5)
    network = BCNetwork(obs_dim=3, act_dim=2, task_dim=1, hidden=(8, 8))
    fresh = Policy(network, policy.run, candidates=policy.candidates, step=7)
    path = fresh.save(tmp_path / "export.safetensors")
    back = load_policy(path, device="cpu")
    assert back.step == 7
    for sample in (False, True):
        fresh.generator.manual_seed(0)
        back.generator.manual_seed(0)
        a = fresh.act(obs, [1.5], sample=sample)
        np.testing.assert_array_equal(a, back.act(obs, [1.5], sample=sample))
    np.testing.assert_array_equal(back.candidates, policy.candidates)


def test_run_description_round_trips_config_json(trained: Path):
    """config.json reads into a RunDescription and writes back byte for byte; unknown
    and mistyped fields are refused, naming the field."""
    text = (trained / "config.json").read_text()
    data = json.loads(text)
    description = RunDescription.from_json(data, "config.json")
    assert json.dumps(description.to_json(), indent=2) == text
    assert description.env == "two-task" and description.labels is not None
    assert description.labels.name == "original" and description.dims.obs_shape == (3,)
    assert description.bc_config().steps == 300
    (_, last), *_ = reversed(list_checkpoints(trained))
    assert load_policy(last, device="cpu").run == description
    crafted = {
        "unknown field extra": {**data, "extra": 1},
        "unknown field labels.colour": {**data, "labels": {**data["labels"], "colour": "red"}},
        "unknown field dims.depth": {**data, "dims": {**data["dims"], "depth": 2}},
        "field tensorboard must be true or false": {**data, "tensorboard": "yes"},
        "field store.num_steps must be an integer": {
            **data,
            "store": {**data["store"], "num_steps": 1.5},
        },
        "field labels.k must be an integer or null": {
            **data,
            "labels": {**data["labels"], "k": "2"},
        },
        "lacks field dims.act": {**data, "dims": {"obs": 3, "obs_shape": [3], "task": 1}},
    }
    for needle, bad in crafted.items():
        with pytest.raises(InputError, match=needle):
            RunDescription.from_json(bad, "config.json")


def _train_args(store: Path, out: Path, steps: int) -> list[str]:
    return [
        "train-bc", str(store), "--labels", "original", "--out", str(out), "--steps", str(steps),
        "--hidden", "16,16", "--batch-size", "32", "--lr", "0.003", "--warmup-steps", "10",
        "--checkpoint-every", "100", "--log-every", "60", "--device", "cpu", "--threads", "1",
        "--no-progress",
    ]  # fmt: skip


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(two_task: Path, tmp_path: Path):
    steps = 2500
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    config = BCConfig(
        out=straight,
        labels="original",
        steps=steps,
        hidden=(16, 16),
        batch_size=32,
        lr=3e-3,
        warmup_steps=10,
        checkpoint_every=100,
        log_every=60,  # windows that span checkpoints: resumed rows need the saved sums
        device="cpu",
        threads=1,  # the same intra-op threads in both processes: bit-exact sums
        progress=False,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *_train_args(two_task, killed, steps)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not list_checkpoints(killed) and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    done = list_checkpoints(killed)
    assert done and done[-1][0] < steps  # killed part way
    resumed_at = done[-1][0]

    train_bc(two_task, config)
    summary = train_bc(two_task, replace(config, out=killed, resume=True))
    assert summary.start_step == resumed_at and summary.step == steps
    a = load_file(straight / "checkpoints" / f"step_{steps:07d}.safetensors")
    b = load_file(killed / "checkpoints" / f"step_{steps:07d}.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key

    def rows(run: Path) -> dict[int, list[float]]:
        """step -> (loss, lr, grad_norm) of every metrics row."""
        lines = (run / "metrics.csv").read_text().splitlines()[1:]
        return {int(r.split(",")[0]): [float(r.split(",")[i]) for i in (1, 2, 4)] for r in lines}

    ours, theirs = rows(straight), rows(killed)
    assert sorted(ours) == sorted(theirs) == list(range(60, steps, 60)) + [steps]
    for step in ours:  # every row, before and after the kill
        np.testing.assert_allclose(theirs[step], ours[step], rtol=1e-6, err_msg=str(step))


# ---------------------------------------------------------------- command line
def cli(*args: object, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    detail = f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert result.exit_code == code, detail
    if code == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in result.output, detail
    return result


@pytest.mark.slow
def test_cli_smoke_on_relabeled_synthetic_store(tmp_path: Path):
    store = make_synthetic_store(tmp_path / "s.zarr", SyntheticConfig(episodes=20, steps=20))
    for method in ("hipi", "no-partition", "random", "original"):
        relabel(
            store,
            RelabelConfig(tasks="synthetic-velocity", method=method, candidates=32, device="cpu"),
        )
    out = tmp_path / "run"
    small = ["--hidden", "16,16", "--batch-size", "32", "--device", "cpu", "--threads", "1"]
    small += ["--no-progress"]
    args = ["train-bc", store, "--labels", "hipi", "--out", out, "--steps", 30, *small]
    result = cli(*args, "--checkpoint-every", 20, "--log-every", 10)
    assert "trained gaussian policy, label set 'hipi' (hipi)" in result.stdout
    assert "samples/s" in result.stdout and "step_0000030.safetensors" in result.stdout
    assert [s for s, _ in list_checkpoints(out)] == [20, 30]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,samples_per_s,grad_norm" and len(rows) == 4
    policy = load_policy(out, device="cpu")
    assert "synthetic-velocity" in policy.run.labels.spec
    assert policy.run.store.env == "synthetic-runner"
    obs = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    actions = policy.act(obs, [1.5])
    assert actions.shape == (5, 6)
    assert np.all(actions >= policy.action_low) and np.all(actions <= policy.action_high)
    assert policy.act(obs[0], 1.5, sample=True).shape == (6,)

    # the same run again: refused unless resumed (then there is nothing left to do)
    assert "already holds a finished run" in cli(*args, code=2).stderr
    assert "already complete" in cli(*args, "--resume").stdout
    assert "different config" in cli(*args[: -len(small)], code=2).stderr
    cli(*args, "--overwrite", "--head", "deterministic", "--checkpoint-every", 25)
    assert [s for s, _ in list_checkpoints(out)] == [25, 30]

    # every label condition, and the task-agnostic baseline
    for name in ("no-partition", "random", "original"):
        run = tmp_path / f"run-{name}"
        cli("train-bc", store, "--labels", name, "--out", run, "--steps", 5, *small)
        assert load_policy(run).run.labels.method == name
    cli("train-bc", store, "--task-agnostic", "--out", tmp_path / "agn", "--steps", 5, *small)

    # bad input: one line, exit code 2
    bad = tmp_path / "bad"
    for extra, needle in (
        (["--labels", "nope"], "no such label set"),
        (["--labels", "hipi", "--steps", 0], "--steps"),
        (["--labels", "hipi", "--head", "mixture"], "--head"),
        (["--labels", "hipi", "--hidden", "16,x"], "--hidden"),
        (["--labels", "hipi", "--schedule", "step"], "--schedule"),
        (["--labels", "hipi", "--task-agnostic"], "drop --labels"),
        ([], "--labels"),
        (["--labels", "hipi", "--resume", "--overwrite"], "at most one"),
    ):
        result = cli("train-bc", store, "--out", bad, "--steps", 3, *small, *extra, code=2)
        assert needle in result.stderr, result.stderr
    assert not bad.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = cli("train-bc", store, "--labels", "hipi", "--out", foreign, "--overwrite", code=2)
    assert "not a bc-run made by hipi-offline (holds notes.txt)" in result.stderr
    assert (foreign / "notes.txt").read_text() == "mine"


def test_dict_observations_are_refused(tmp_path: Path):
    path = tmp_path / "dict.h5"
    with create_store(path) as store:
        store.append_episodes(
            {
                "observations/pos": np.zeros((6, 2), np.float32),
                "observations/vel": np.zeros((6, 2), np.float32),
                "actions": np.zeros((6, 1), np.float32),
            },
            [3, 3],
        )
    with pytest.raises(InputError, match=r"dict observations \(pos, vel\)"):
        train_bc(path, BCConfig(out=tmp_path / "run", task_agnostic=True, steps=1))
    assert not (tmp_path / "run").exists()  # nothing left behind
