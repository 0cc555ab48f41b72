"""train-bc data-parallel under torchrun (gloo on the CPU): the trajectory of one
process, identical ranks, rank 0 alone writes, one-line errors on every rank, exact
resume after a kill, and no hang when a rank dies.

Every torchrun test starts ``python -m torch.distributed.run --standalone
--nproc-per-node 2 --no-python hipi-offline train-bc ...`` as a subprocess (about
10 s each on two cores); the subprocess timeouts are only a safety net.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hipi_offline.bc import BatchSampler, BCConfig, TaskSampler, load_working_set, train_bc
from hipi_offline.bc.distributed import (
    DIGEST_ENV,
    KILL_ENV,
    Launch,
    Ranks,
    check_launch,
    join_group,
    torchrun_launch,
)
from hipi_offline.bc.loop import TrainSummary
from hipi_offline.bc.policy import list_checkpoints
from hipi_offline.bc.scaling import measure_bc, window_rates
from hipi_offline.configs import FieldError
from hipi_offline.errors import InputError, ResourceError
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.store import open_store
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

STEPS = 60
SMALL = dict(hidden=(16, 16), batch_size=32, lr=3e-3, warmup_steps=10, threads=1)
"""The network and optimizer of every run here (the options of :func:`_args`)."""


def _args(store: Path, out: Path, steps: int = STEPS, batch: int = 32) -> list[str]:
    return [
        "train-bc", str(store), "--labels", "hipi", "--out", str(out), "--steps", str(steps),
        "--hidden", "16,16", "--batch-size", str(batch), "--lr", "0.003",
        "--warmup-steps", "10", "--checkpoint-every", "10", "--log-every", "15",
        "--device", "cpu", "--threads", "1", "--no-progress",
    ]  # fmt: skip


def _hipi_offline() -> str:
    beside = Path(sys.executable).with_name("hipi-offline")
    return str(beside) if beside.exists() else "hipi-offline"


def torchrun(
    args: list[str], cwd: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node 2 --no-python hipi-offline ARGS``."""
    environ = {k: v for k, v in os.environ.items() if k not in (DIGEST_ENV, KILL_ENV)}
    environ |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1", **env}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "--no-python", _hipi_offline(), *args]
    return subprocess.run(
        command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def tensors(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{step:07d}.safetensors")


def metric_rows(run: Path) -> dict[int, list[float]]:
    """step -> (loss, lr, grad_norm) of every metrics row."""
    lines = (run / "metrics.csv").read_text().splitlines()[1:]
    return {int(r.split(",")[0]): [float(r.split(",")[i]) for i in (1, 2, 4)] for r in lines}


def files_under(root: Path) -> set[str]:
    """Paths below ``root``; a TensorBoard events file (written where tensorboard is
    installed) as its folder and prefix, as its name holds a time stamp, host and pid."""
    names = {str(p.relative_to(root)) for p in root.rglob("*")}
    return {
        n.split(".out.tfevents.")[0] + ".out.tfevents" if ".out.tfevents." in n else n
        for n in names
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic store with a ``hipi`` label set."""
    path = make_synthetic_store(
        tmp_path_factory.mktemp("ddp") / "runner.zarr", SyntheticConfig(episodes=12, steps=20)
    )
    relabel(path, RelabelConfig(tasks="synthetic-velocity", candidates=16, device="cpu"))
    return path


@pytest.fixture(scope="module")
def two_ranks(store: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """An uninterrupted 2-rank run of :data:`STEPS` steps, each rank writing the
    digest of its parameters after every step to ``digests/``. The working set is
    spilled to a file (rank 0: in the run folder; rank 1: in its own temporary folder,
    ``TMPDIR`` here, which must be empty again at the end)."""
    root, tmp = store.parent / "two-ranks", store.parent / "tmp"
    (root / "digests").mkdir(parents=True)
    tmp.mkdir()
    args = [*_args(store, root / "run"), "--max-memory-mb", "0.001"]
    digests = str(root / "digests")
    result = torchrun(args, root, **{DIGEST_ENV: digests, "TMPDIR": str(tmp)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(tmp.glob("hipi-offline-*"))  # torchrun leaves its own folder there
    return root, result


# ---------------------------------------------------------------- without torchrun
def test_torchrun_environment_is_read_and_checked():
    assert torchrun_launch({}) is None
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "n0"}
    with pytest.raises(InputError, match="MASTER_PORT is not"):
        torchrun_launch(env)
    launch = torchrun_launch({**env, "MASTER_PORT": "29500"})
    assert launch is not None and (launch.rank, launch.world, launch.local_rank) == (3, 4, 1)
    with pytest.raises(InputError, match="RANK='x'"):
        torchrun_launch({**env, "MASTER_PORT": "1", "RANK": "x"})
    with pytest.raises(InputError, match="RANK=4 with WORLD_SIZE=4"):
        torchrun_launch({**env, "MASTER_PORT": "1", "RANK": "4"})


def test_single_process_is_one_rank_and_collectives_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ranks = join_group("cpu", 33)  # any batch splits over one rank
    assert (ranks.rank, ranks.world, ranks.backend, ranks.lead) == (0, 1, None, True)
    value = torch.tensor([1.5])
    assert ranks.mean_(value).item() == 1.5 and ranks.gather(7) == [7]
    assert ranks.broadcast("x") == "x" and ranks.agree(lambda a: a + 1, 1) == 2
    assert ranks.shard(32) == (0, 32)


def test_indivisible_batch_and_a_rank_without_its_device_are_refused():
    """Checked from torchrun's variables alone (every rank refuses, once joined)."""
    launch = Launch(rank=1, world=3, local_rank=1, address="127.0.0.1:9", local_world=3)
    with pytest.raises(FieldError, match="batch_size: 32 does not split evenly over the 3"):
        check_launch(launch, "cpu", 32)
    assert check_launch(launch, "cpu", 33) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device: cuda requested but no CUDA"):
            check_launch(launch, "cuda", 33)
    elif torch.cuda.device_count() <= 1:
        with pytest.raises(InputError, match="LOCAL_RANK=1 has no GPU of its own"):
            check_launch(launch, "cuda", 33)


def test_shards_of_the_global_batch_are_its_rows(store: Path):
    """Every rank draws the whole batch from the same stream and keeps its slice: the
    slices of 4 ranks, put together, are the batch of one process, task draws included."""
    with open_store(store) as opened:
        data = load_working_set(opened)
        tasks = TaskSampler(opened.read_labels("hipi"))

    def sampler(shard: tuple[int, int] | None) -> BatchSampler:
        generator = torch.Generator().manual_seed(5)
        return BatchSampler(data, tasks, 32, generator, "cpu", shard)

    whole = sampler(None)
    parts = [sampler(Ranks(rank=r, world=4).shard(32)) for r in range(4)]
    for _ in range(3):  # the streams stay in step over several batches
        expected = whole.sample()
        pieces = [p.sample() for p in parts]
        for i in range(3):
            joined = torch.cat([piece[i] for piece in pieces])
            assert torch.equal(joined, expected[i])


def test_only_rank_zero_reports():
    summary = TrainSummary(
        run_dir="r", labels=None, method=None, head="gaussian", start_step=0, step=5,
        total_steps=5, batch_size=8, parameters=10, seconds=1.0, samples_per_second=40.0,
        final_loss=1.0, checkpoint="c", device="cpu", tensorboard=False, world_size=2,
        backend="gloo",
    )  # fmt: skip
    assert "on each of 2 ranks (gloo)" in summary.lines()[0]
    assert TrainSummary(**{**summary.__dict__, "rank": 1}).lines() == []


# ---------------------------------------------------------------- under torchrun
@pytest.mark.slow
def test_two_ranks_follow_one_process_and_stay_identical(store: Path, two_ranks, tmp_path: Path):
    root, result = two_ranks
    run = root / "run"
    one = tmp_path / "one"
    train_bc(
        store,
        BCConfig(
            out=one, labels="hipi", steps=STEPS, checkpoint_every=10, log_every=15,
            device="cpu", progress=False, **SMALL,
        ),
    )  # fmt: skip
    # the same trajectory as one process with the same global batch (float tolerance)
    for step in range(10, STEPS + 1, 10):
        ours, theirs = tensors(one, step), tensors(run, step)
        assert ours.keys() == theirs.keys()
        for key, want in ours.items():
            if want.is_floating_point():
                scale = float(want.abs().max()) + 1e-12
                np.testing.assert_allclose(
                    theirs[key].double().numpy(), want.double().numpy(), rtol=1e-5,
                    atol=1e-6 * scale, err_msg=f"{key} at step {step}",
                )  # fmt: skip
            else:  # the sampler's and torch's RNG states: the one stream
                assert torch.equal(theirs[key], want), key
    ours, theirs = metric_rows(one), metric_rows(run)
    assert sorted(ours) == sorted(theirs) == [15, 30, 45, 60]
    for step in ours:
        np.testing.assert_allclose(theirs[step], ours[step], rtol=1e-5, err_msg=str(step))
    # identical parameters on both ranks after every step
    digests = [(root / "digests" / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert [line.split()[:2] for line in digests[0]] == [
        [str(s), "16"] for s in range(1, STEPS + 1)
    ]
    assert digests[0] == digests[1]  # each rank trained on its half of the batch of 32
    # rank 0 alone wrote: the run folder of one process, each metrics row once, one report
    assert files_under(run) == files_under(one)
    assert files_under(root) == {"run", "digests", "digests/rank0.txt", "digests/rank1.txt"} | {
        f"run/{name}" for name in files_under(run)
    }
    assert result.stdout.count("trained gaussian policy") == 1
    assert "on each of 2 ranks (gloo)" in result.stdout


@pytest.mark.slow
def test_indivisible_batch_is_one_error_on_every_rank(store: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = torchrun(_args(store, out, batch=33), tmp_path)
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 2 and len(set(lines)) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: --batch-size: 33 does not split evenly over the 2 ranks")
    assert not out.exists()


@pytest.mark.slow
def test_preflight_failure_on_rank_zero_stops_every_rank(store: Path, tmp_path: Path):
    """Only rank 0 checks the run folder; the other rank stops with the same line."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = torchrun(_args(store, foreign), tmp_path)
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 2 and len(set(lines)) == 1, result.stderr[-3000:]
    assert "not a bc-run made by hipi-offline (holds notes.txt)" in lines[0]
    assert files_under(foreign) == {"notes.txt"} and (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_resume_after_a_kill_equals_the_uninterrupted_run(store: Path, two_ranks, tmp_path):
    """Rank 0 is killed (SIGKILL) after step 25, torchrun ends the group; the same
    command with --resume continues from step 20 to the uninterrupted run's weights."""
    straight = two_ranks[0] / "run"
    killed = tmp_path / "killed"
    result = torchrun(_args(store, killed), tmp_path, **{KILL_ENV: "0:25"})
    assert result.returncode != 0
    assert [step for step, _ in list_checkpoints(killed)] == [10, 20]
    assert sorted(metric_rows(killed)) == [15]
    resumed = torchrun([*_args(store, killed), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(resumed at 20)" in resumed.stdout
    for step in range(30, STEPS + 1, 10):
        ours, theirs = tensors(straight, step), tensors(killed, step)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(theirs[key], ours[key]), f"{key} at step {step}"
    assert metric_rows(killed) == metric_rows(straight)


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_run_with_one_error(store: Path, tmp_path: Path):
    """Rank 1 is killed mid-run: rank 0 does not hang; it stops with one error line
    and a non-zero exit, and only whole checkpoints are left."""
    out = tmp_path / "run"
    result = torchrun(_args(store, out, steps=10**6), tmp_path, **{KILL_ENV: "1:15"})
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and re.match(r"error: rank 0 of 2: ", lines[0]), result.stderr[-3000:]
    assert "resume" in lines[0]
    assert "hipi_offline" not in result.stderr  # no traceback of ours (torchrun prints its own)
    assert [step for step, _ in list_checkpoints(out)] == [10]
    assert not [p for p in files_under(out) if p.endswith(".tmp")]


def test_ranks_on_one_machine_share_its_memory(monkeypatch, tmp_path: Path):
    """A working set that fits once is refused for 4 ranks on the same machine."""
    from hipi_offline.bc import budget

    monkeypatch.setattr(budget, "available_memory", lambda device: 2**30)
    config = BCConfig(out=tmp_path / "run", labels="x", hidden=(16,), device="cpu")
    spec = budget.network_spec(config, 10, 4, 2)
    steps = 3 * 2**30 // (4 * 14) // 10  # a working set of 0.3 GiB
    budget.check_memory(config, spec, steps, 8, torch.device("cpu"))
    with pytest.raises(InputError, match=r"--max-memory-mb: .*share for one of 4 ranks"):
        budget.check_memory(config, spec, steps, 8, torch.device("cpu"), sharing=4)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_two_nodes_share_no_folder(store: Path, two_ranks, tmp_path: Path):
    """Two torchrun agents of one rank each (two "nodes", c10d rendezvous on
    127.0.0.1) in separate working folders, with a relative --out: the run is written
    beside rank 0 alone, and equals the 2-rank run of one node."""
    nodes = [tmp_path / "node-a", tmp_path / "node-b"]
    endpoint = f"127.0.0.1:{_free_port()}"
    environ = {k: v for k, v in os.environ.items() if k not in (DIGEST_ENV, KILL_ENV)}
    environ |= {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
    command += ["--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint]
    command += ["--rdzv-id", "two-nodes", "--no-python", _hipi_offline()]
    command += [*_args(store, Path("run"))]
    agents = []
    for node in nodes:
        node.mkdir()
        with open(tmp_path / f"{node.name}.err", "w") as err:
            agents.append(
                subprocess.Popen(
                    command, cwd=node, env=environ, stdout=subprocess.PIPE, stderr=err, text=True
                )
            )
    try:
        outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    errors = [(tmp_path / f"{node.name}.err").read_text()[-2000:] for node in nodes]
    assert [agent.returncode for agent in agents] == [0, 0], errors
    written = [node for node in nodes if list(node.iterdir())]
    assert len(written) == 1 and files_under(written[0] / "run") == files_under(
        two_ranks[0] / "run"
    )
    assert sum(out.count("trained gaussian policy") for out in outputs) == 1
    ours, theirs = tensors(two_ranks[0] / "run", STEPS), tensors(written[0] / "run", STEPS)
    for key in ours:  # the same ranks and batch slices as on one node
        assert torch.equal(theirs[key], ours[key]), key


@pytest.mark.slow
def test_throughput_measurement_runs_torchrun(store: Path, tmp_path: Path):
    """benchmarks/scale_bench.py's entry point: a 2-process run and its rate."""
    found = measure_bc(
        store, tmp_path / "bench", processes=2, steps=40, batch_size=32, hidden="16,16",
        log_every=10,
    )  # fmt: skip
    assert (found.processes, found.batch_size, found.windows) == (2, 32, 3)
    rates = window_rates(tmp_path / "bench" / "metrics.csv")
    assert found.samples_per_s == sorted(rates[1:])[1] > 0
    assert found.steps_per_s == pytest.approx(found.samples_per_s / 32)
    with pytest.raises(ResourceError, match="2 processes failed: error: --batch-size: 33"):
        measure_bc(store, tmp_path / "bad", processes=2, steps=40, batch_size=33, log_every=10)
