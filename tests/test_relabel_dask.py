"""Relabel on Dask (``relabel --scheduler``) against the single-process relabel.

Most tests share one LocalCluster of two one-thread worker processes (started once
for the module, reached at its tcp:// address); the command-line tests start their
own with ``--scheduler local:2``. Results must equal the single-process label set:
log Z within 1e-12 relative, top-k indices identical except at exact ties, the rest
within 1e-6 relative.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import KINDS
from distributed import Client, LocalCluster
from test_relabel_math import (
    CUSTOM_MODULE,
    CUSTOM_SOURCE,
    FAMILY_CASES,
    family_case,
    random_steps,
    write_spec,
    write_store,
)
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.configs import FieldError
from hipi_offline.errors import InputError
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.relabel.distributed import (
    TEST_EXIT_ENV,
    PartitionJob,
    partial_log_sum_exp,
    partition_posterior,
    partition_returns,
)
from hipi_offline.relabel.partitions import (
    WORKER_BASE_BYTES,
    WORKER_FRACTION,
    parse_memory,
    plan_partitions,
    plan_work,
)
from hipi_offline.relabel.posterior import inverse_rl_posterior
from hipi_offline.relabel.returns import returns_tiles
from hipi_offline.store import LabelSet, open_store
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store
from hipi_offline.tasks import load_task_spec, parse_task_spec

CPU = torch.device("cpu")
SPEED = "steps/infos/speed"


@dataclass
class Cluster:
    address: str
    client: Client
    marker: Path
    """While this file exists, the test hook leaves workers alone."""


def add_to_path(folder: str) -> None:
    """(run on the workers: a bound ``sys.path.insert`` would pickle the list)"""
    if folder not in sys.path:
        sys.path.insert(0, folder)


@pytest.fixture(scope="module")
def custom_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The custom reward module of test_relabel_math, importable here."""
    folder = tmp_path_factory.mktemp("custom")
    (folder / f"{CUSTOM_MODULE}.py").write_text(CUSTOM_SOURCE)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(CUSTOM_MODULE, None)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two one-thread worker processes of 1 GiB each on 127.0.0.1, for the module."""
    marker = tmp_path_factory.mktemp("hook") / "exited"
    marker.touch()
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            memory_limit="1GiB",
            env={TEST_EXIT_ENV: str(marker)},
        ) as local,
        Client(local) as client,
    ):
        yield Cluster(local.scheduler_address, client, marker)


def random_lengths(episodes: int, seed: int, longest: int = 40) -> list[int]:
    lengths = np.random.default_rng(seed).integers(1, longest + 1, size=episodes)
    lengths[[0, episodes // 2, -1]] = 1  # one-step episodes at the edges and inside
    return [int(x) for x in lengths]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 40 episodes of random lengths in each backend."""
    lengths = random_lengths(40, seed=3)
    steps = random_steps(lengths, seed=5)
    root = tmp_path_factory.mktemp("stores")
    return {kind: write_store(root / f"random.{kind}", steps, lengths) for kind in KINDS}


def read(store: Path, name: str) -> LabelSet:
    with open_store(store) as opened:
        return opened.read_labels(name)


def single_and_dask(store: Path, tasks: str, address: str, tag: str, **options) -> tuple:
    """The label sets of the same run in this process and on the cluster."""
    common = dict(tasks=tasks, device="cpu", **options)
    relabel(store, RelabelConfig(name=f"{tag}-single", **common))
    relabel(store, RelabelConfig(name=f"{tag}-dask", scheduler=address, **common))
    return read(store, f"{tag}-single"), read(store, f"{tag}-dask")


def assert_equal_labels(single: LabelSet, dask: LabelSet) -> None:
    """The distributed label set equals the single-process one (see the module doc)."""
    np.testing.assert_array_equal(dask.candidates, single.candidates)
    if np.isnan(single.log_z).all():  # random / original store no log Z
        assert np.isnan(dask.log_z).all()
    else:
        np.testing.assert_allclose(dask.log_z, single.log_z, rtol=1e-12, atol=0)
    np.testing.assert_allclose(dask.topk_logprob, single.topk_logprob, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(dask.entropy, single.entropy, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(dask.coverage, single.coverage, rtol=1e-6, atol=1e-15)
    differ = dask.topk_index != single.topk_index
    for row, col in zip(*np.nonzero(differ), strict=True):  # only where probabilities tie
        value = single.topk_logprob[row, col]
        assert np.sum(single.topk_logprob[row] == value) > 1, (row, col)
    assert dask.attrs["num_episodes"] == single.attrs["num_episodes"]


def family_spec(folder: Path, family: str, custom: str) -> str:
    body, _, _ = family_case(family, custom)
    body = {**body, "temperature": 0.7, "gamma": 0.97}
    if family != "discrete":
        body["candidates"] = 24
    return write_spec(folder, family, body)


CASES = [
    pytest.param(family, kind, marks=() if (family, kind) == ("target", "h5") else pytest.mark.slow)
    for family in FAMILY_CASES
    for kind in KINDS
]


# ------------------------------------------------------------------ equality, every family


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_every_family_and_backend_equals_the_single_process_run(
    cluster, stores, custom_folder, tmp_path, family, kind
):
    if family == "custom":  # the workers import the reward module too
        cluster.client.run(add_to_path, str(custom_folder))
    tasks = family_spec(tmp_path, family, f"{CUSTOM_MODULE}:speed_band")
    for method in ("hipi", "no-partition"):
        tag = f"{family}-{method}"
        single, dask = single_and_dask(
            stores[kind], tasks, cluster.address, tag, method=method, top_k=5
        )
        assert_equal_labels(single, dask)
        assert dask.attrs["method"] == method


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "original", "hipi"])
def test_every_method_on_the_synthetic_store(cluster, tmp_path, method):
    store = make_synthetic_store(tmp_path / "runner.zarr", SyntheticConfig(episodes=30, steps=20))
    single, dask = single_and_dask(
        store, "synthetic-velocity", cluster.address, method, method=method, top_k="all"
    )
    assert_equal_labels(single, dask)


def test_partition_tasks_equal_the_whole_posterior_with_tiles(stores, tmp_path):
    """The worker tasks run here on three partitions, tiled over K (3 columns): the
    reduced log Z and the joined rows equal the single-process posterior."""
    store_path = stores["h5"]
    spec = parse_task_spec(Path(family_spec(tmp_path, "goal", "")).read_text(), origin="goal")
    candidates, log_prior = spec.draw_candidates(0, None)
    with open_store(store_path) as store:
        n, k = store.num_episodes, len(candidates)
        ((_, _, whole),) = returns_tiles(
            store, spec, candidates, device=CPU, chunk_steps=16, tile=k, show_progress=False
        )
        parts = plan_partitions(store.ends, max_rows=store.num_steps // 3 + 1, max_episodes=n)
    expect = inverse_rl_posterior(
        lambda a, b: whole[:, a:b], n, k, temperature=0.7, log_prior=None, partition=True,
        top_k=4, tile=k, device=CPU,
    )  # fmt: skip
    job = PartitionJob(
        str(store_path), spec.source, "goal", 0.7, candidates, log_prior, True, 4, 3, 16, "cpu", n
    )
    blocks = [partition_returns(job, part) for part in parts]
    assert len(parts) >= 3 and sum(len(b) for b in blocks) == n
    sums = np.stack([partial_log_sum_exp(block, 0.7) for block in blocks])
    log_z = torch.logsumexp(torch.from_numpy(sums), dim=0).numpy() - np.log(n)
    np.testing.assert_allclose(log_z, expect.log_z, rtol=1e-12)
    rows = [partition_posterior(block, job, log_z) for block in blocks]
    np.testing.assert_array_equal(np.concatenate([r.topk_index for r in rows]), expect.topk_index)
    for key in ("topk_logprob", "entropy"):
        got = np.concatenate([getattr(r, key) for r in rows])
        np.testing.assert_allclose(got, getattr(expect, key), rtol=1e-9, atol=1e-12)
    coverage = np.sum([r.coverage for r in rows], axis=0)
    np.testing.assert_allclose(coverage, expect.coverage, rtol=1e-9)


# ------------------------------------------------------------------ partitions


@pytest.mark.parametrize("seed", range(25))
def test_partitions_cut_only_at_episode_ends(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, rng.integers(2, 300), size=rng.integers(1, 400))
    ends = np.cumsum(lengths)
    max_rows = int(rng.integers(1, ends[-1] + 2))
    max_episodes = int(rng.integers(1, len(ends) + 2))
    parts = plan_partitions(ends, max_rows, max_episodes)
    assert parts[0].first_episode == 0 and parts[0].start_row == 0
    assert parts[-1].stop_episode == len(ends) and parts[-1].stop_row == ends[-1]
    for index, (a, b) in enumerate(zip(parts, parts[1:] + [None], strict=True)):
        assert a.index == index and a.episodes >= 1
        assert a.stop_row == ends[a.stop_episode - 1]  # cut at an episode end
        assert a.start_row == (ends[a.first_episode - 1] if a.first_episode else 0)
        assert a.episodes <= max_episodes
        assert a.rows <= max_rows or a.episodes == 1  # only a long episode is alone
        if b is not None:
            assert b.first_episode == a.stop_episode and b.start_row == a.stop_row
            # greedy: the next episode would not have fitted
            grown = ends[a.stop_episode] - a.start_row
            assert a.episodes == max_episodes or grown > max_rows


def test_partitions_are_sized_from_the_worker_memory(tmp_path):
    """K = 2^17 candidates: every planned task fits its share of the worker's limit;
    less memory means more and smaller partitions; too little is refused, naming the
    option."""
    store = make_synthetic_store(tmp_path / "r.h5", SyntheticConfig(episodes=2000, steps=10))
    spec = load_task_spec("synthetic-velocity")
    with open_store(store) as opened:
        ends, fields = opened.ends, opened.step_fields()
    k = 1 << 17
    counts = (k, 1, 32)
    plans = {
        size: plan_work(ends, fields, spec, "hipi", counts, 65536, 2, parse_memory(size))
        for size in ("2GiB", "1GiB", "800MiB")
    }
    for size, plan in plans.items():
        usable = WORKER_FRACTION * parse_memory(size) - WORKER_BASE_BYTES
        assert plan.task_bytes <= usable + 64 * 2**20, size
        assert max(part.episodes for part in plan.partitions) * k * 8 <= usable / 3
        assert plan.worker_bytes == parse_memory(size)
    sizes = [len(plans[size].partitions) for size in ("2GiB", "1GiB", "800MiB")]
    assert sizes[0] < sizes[1] < sizes[2]
    for size in ("650MiB", "500MiB"):  # a partition of one episode / not even the worker
        with pytest.raises(InputError, match=f"--worker-memory {size[:3]}"):
            plan_work(ends, fields, spec, "hipi", counts, 65536, 2, parse_memory(size))


def test_worker_memory_and_scheduler_options_are_checked():
    assert parse_memory("1GiB") == 2**30 and parse_memory("512") == 512 * 2**20
    assert parse_memory("1.5 GB") == 1_500_000_000
    for bad in ("", "1 parsec", "-1GiB", "0"):
        with pytest.raises(FieldError, match="worker_memory"):
            RelabelConfig(tasks="synthetic-velocity", worker_memory=bad)
    for bad in ("local:0", "local", "http://x:1", "tcp:/x"):
        with pytest.raises(FieldError, match="scheduler"):
            RelabelConfig(tasks="synthetic-velocity", scheduler=bad)


# ------------------------------------------------------------------ non-finite input


def test_non_finite_returns_are_named_as_in_a_single_process(cluster, tmp_path):
    """An overflow in episode 21 (in the third partition): the same error text."""
    lengths = [10] * 40
    steps = random_steps(lengths, seed=1)
    steps[SPEED] = steps[SPEED].astype(np.float64)
    steps[SPEED][210:220] = 1e308  # ten of them sum to inf
    store = write_store(tmp_path / "big.h5", steps, lengths)
    tasks = family_spec(tmp_path, "target", "")
    errors = []
    for scheduler in (None, cluster.address):
        with pytest.raises(InputError) as caught:
            relabel(store, RelabelConfig(tasks=tasks, device="cpu", scheduler=scheduler))
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "episode 21" in errors[0], errors
    assert read_names(store) == []


def test_nan_steps_are_named_as_in_a_single_process(cluster, tmp_path):
    lengths = random_lengths(30, seed=4)
    steps = random_steps(lengths, seed=2)
    row = sum(lengths[:25]) + 1  # in a late partition
    steps[SPEED][row] = np.nan
    store = write_store(tmp_path / "nan.zarr", steps, lengths)
    errors = []
    for scheduler in (None, cluster.address):
        with pytest.raises(InputError) as caught:
            relabel(store, RelabelConfig(tasks=family_spec(tmp_path, "linear", ""),
                                         device="cpu", scheduler=scheduler))  # fmt: skip
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and f"step row {row} (episode 25)" in errors[0], errors
    assert read_names(store) == []


def read_names(store: Path) -> list[str]:
    with open_store(store) as opened:
        return opened.label_names()


# ------------------------------------------------------------------ failures


def test_a_worker_that_dies_once_is_retried(cluster, stores, tmp_path):
    """The first returns task ends its worker process; Dask reruns it elsewhere and
    the label set still equals the single-process one."""
    cluster.marker.unlink()
    try:
        tasks = family_spec(tmp_path, "linear", "")
        single, dask = single_and_dask(stores["h5"], tasks, cluster.address, "retry")
    finally:
        assert cluster.marker.exists()  # the hook fired
        cluster.marker.touch()
    assert_equal_labels(single, dask)


def cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cli.main", *map(str, args)]
    full = {**os.environ, "TQDM_DISABLE": "1", **(env or {})}
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(command, capture_output=True, text=True, env=full, cwd=root, timeout=600)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_an_unreachable_scheduler_is_one_error_line(stores):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["relabel", stores["h5"], "--tasks", "synthetic-linear", "--name", "unreachable"]
    result = CliRunner().invoke(app, [*map(str, args), "--scheduler", f"tcp://127.0.0.1:{port}"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --scheduler tcp://127.0.0.1:"), lines
    assert "unreachable" not in read_names(stores["h5"])


@pytest.mark.slow
def test_a_worker_that_keeps_dying_fails_the_run_and_commits_nothing(tmp_path):
    """Every returns task ends its worker; after one retry (set for the test) the run
    fails with one error line."""
    store = make_synthetic_store(tmp_path / "r.h5", SyntheticConfig(episodes=20, steps=20))
    result = cli(
        "relabel", store, "--tasks", "synthetic-velocity", "--scheduler", "local:2",
        env={TEST_EXIT_ENV: "always", "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "Dask worker died" in lines[0], result.stderr
    assert read_names(store) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]  # no lock or temp left


@pytest.mark.slow
def test_the_command_line_with_a_local_cluster(tmp_path):
    store = make_synthetic_store(tmp_path / "r.zarr", SyntheticConfig(episodes=60, steps=30))
    for name, extra in (("single", []), ("dask", ["--scheduler", "local:2"])):
        result = cli(
            "relabel", store, "--tasks", "synthetic-velocity", "--name", name,
            "--worker-memory", "1GiB", *extra,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"label set '{name}'" in result.stdout
    assert_equal_labels(read(store, "single"), read(store, "dask"))


def high_water() -> int:
    """This process image's peak RSS (VmHWM), in bytes. Unlike getrusage's ru_maxrss it
    is not carried over from the parent across fork and exec: a worker spawned from a
    pytest process of 2 GiB would report 2 GiB before doing anything."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


@pytest.mark.slow
def test_workers_stay_within_their_memory_limit(cluster, tmp_path):
    """A store of 400k steps on the 1 GiB workers: every worker's peak RSS stays
    under its limit (Dask would have restarted one that crossed 95 %)."""
    store = make_synthetic_store(tmp_path / "big.h5", SyntheticConfig(episodes=2000, steps=200))
    relabel(store, RelabelConfig(tasks="synthetic-velocity", scheduler=cluster.address))
    peaks = cluster.client.run(high_water)
    assert len(peaks) == 2 and max(peaks.values()) < parse_memory("1GiB"), peaks
    assert read(store, "hipi").num_episodes == 2000
