"""``collect --scheduler``: episodes run as Dask tasks that write shards, appended by the
driver in unit order. The store equals a serial collect's, byte for byte; a worker
killed mid-unit neither duplicates nor loses an episode; one that always dies is one
error line; the shard area is removed; an unreachable scheduler changes nothing. With an
--out URL (a moto S3 server on 127.0.0.1) the shards are objects beside the store, and
abandoned shard areas there are removed by the time in their names."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_arrays, store_arrays
from s3server import fresh_bucket, s3_server

from hipi_offline.collect import CollectConfig, collect
from hipi_offline.collect.distributed import (
    DIE_ENV,
    flatten,
    read_shard,
    remove_abandoned_shard_areas,
    shard_area,
    shard_name,
    unflatten,
    write_shard,
)
from hipi_offline.collect.episodes import run_unit
from hipi_offline.errors import InputError
from hipi_offline.store.object_backend import new_version_name
from hipi_offline.store.remote import filesystem

pytest.importorskip("distributed")

STEPS, SEED = 20, 3


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """The address of a local:2 cluster shared by this module's tests."""
    from hipi_offline.scheduler import dask_client, parse_scheduler

    with dask_client(parse_scheduler("local:2")) as client:
        yield client.scheduler.address


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Four cheetah episodes collected here, one unit after another (the reference)."""
    path = tmp_path_factory.mktemp("serial") / "cheetah.zarr"
    collect("cheetah", path, CollectConfig(episodes=4, steps=STEPS, seed=SEED))
    return store_arrays(path)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_config_refuses_workers_with_a_scheduler_and_bad_schedulers() -> None:
    with pytest.raises(InputError, match="^workers: cannot be combined with scheduler"):
        CollectConfig(workers=2, scheduler="local:2")
    with pytest.raises(InputError, match="^scheduler: expected local:N"):
        CollectConfig(scheduler="local")
    with pytest.raises(InputError, match="^scheduler: local:N needs"):
        CollectConfig(scheduler="local:0")


def test_unreachable_scheduler_is_one_error_and_changes_nothing(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    config = CollectConfig(episodes=2, steps=STEPS, scheduler=address)
    with pytest.raises(InputError, match=f"^--scheduler {address}: cannot reach"):
        collect("cheetah", tmp_path / "c.zarr", config)
    assert list(tmp_path.iterdir()) == []


def test_shard_round_trip_and_retry_reuses_the_one_shard(tmp_path: Path) -> None:
    """A unit's arrays survive the shard file exactly (dtypes, shapes, field order); a
    second attempt of the unit leaves one shard with the same bytes."""
    job = ("cheetah", STEPS, SEED, 1, 10, False, (None, ()))
    expected = run_unit(job)
    arrays = flatten(expected)
    back = flatten(unflatten(arrays))
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    shard = write_shard(str(tmp_path), job)
    assert Path(shard.path) == tmp_path / shard_name(1) and shard.unit == 1
    first = Path(shard.path).read_bytes()
    again = write_shard(str(tmp_path), job)
    assert again == shard and Path(shard.path).read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == [shard_name(1)]  # no temporaries
    stored = flatten(read_shard(shard.path))
    for name, value in arrays.items():
        np.testing.assert_array_equal(stored[name], value, err_msg=name)
        assert stored[name].dtype == value.dtype


@pytest.mark.slow
def test_dask_store_equals_serial_store_and_leaves_no_shards(
    tmp_path: Path, scheduler: str, serial: dict[str, np.ndarray], store_suffix: str
) -> None:
    path = tmp_path / f"cheetah{store_suffix}"
    config = CollectConfig(episodes=4, steps=STEPS, seed=SEED, scheduler=scheduler)
    summary = collect("cheetah", path, config)
    assert (summary.collected, summary.total) == (4, 4)
    assert_same_arrays(store_arrays(path), serial)
    assert _hidden(tmp_path) == []


@pytest.mark.slow
def test_dask_resume_continues_a_serial_store(
    tmp_path: Path, scheduler: str, serial: dict[str, np.ndarray]
) -> None:
    """A store begun serially and continued on the cluster, with a commit per unit
    and a leftover shard area of a killed driver beside it (removed)."""
    path = tmp_path / "cheetah.zarr"
    collect("cheetah", path, CollectConfig(episodes=1, steps=STEPS, seed=SEED))
    dead = tmp_path / f".cheetah.zarr.shards-{_dead_pid()}-{'0' * 32}"
    dead.mkdir()
    (dead / shard_name(1)).write_bytes(b"not a shard")  # must not be read: area abandoned
    config = CollectConfig(
        episodes=4, steps=STEPS, seed=SEED, scheduler=scheduler, commit_seconds=0
    )
    assert collect("cheetah", path, config).collected == 3
    assert_same_arrays(store_arrays(path), serial)
    assert _hidden(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("env", ["quadruped", "desk"])
def test_other_environments_equal_serial(tmp_path: Path, scheduler: str, env: str) -> None:
    """The quadruped (commanded) and the desk (play windows and whole streams)."""
    base = {"episodes": 4, "steps": STEPS, "seed": SEED, "windows": 2}
    stream = {"stream_out": None}
    if env == "desk":
        stream = {"stream_out": tmp_path / "serial-stream.h5"}
    collect(env, tmp_path / "serial.h5", CollectConfig(**base, **stream))  # type: ignore[arg-type]
    if env == "desk":
        stream = {"stream_out": tmp_path / "dask-stream.h5"}
    config = CollectConfig(**base, **stream, scheduler=scheduler)  # type: ignore[arg-type]
    collect(env, tmp_path / "dask.h5", config)
    assert_same_arrays(store_arrays(tmp_path / "dask.h5"), store_arrays(tmp_path / "serial.h5"))
    if env == "desk":
        streams = store_arrays(tmp_path / "dask-stream.h5")
        assert len(streams["episodes/ends"]) == 2
        assert_same_arrays(streams, store_arrays(tmp_path / "serial-stream.h5"))
    assert _hidden(tmp_path) == []


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1", **env},
        timeout=600,
    )


def _collect_args(out: Path | str, episodes: int, scheduler: str) -> list[str]:
    return [
        "collect", "cheetah", "--out", str(out), "--episodes", str(episodes),
        "--steps", str(STEPS), "--seed", str(SEED), "--scheduler", scheduler,
    ]  # fmt: skip


@pytest.mark.slow
def test_cli_end_to_end(tmp_path: Path, scheduler: str, serial: dict[str, np.ndarray]) -> None:
    out = tmp_path / "cheetah.h5"
    done = _cli(_collect_args(out, 4, scheduler))
    assert done.returncode == 0, done.stderr
    assert f"{out} now holds 4" in done.stdout
    assert_same_arrays(store_arrays(out), serial)
    assert _hidden(tmp_path) == []
    both = _cli([*_collect_args(tmp_path / "x.h5", 1, scheduler), "--workers", "2"])
    assert done.returncode == 0 and both.returncode == 2
    assert both.stderr.strip() == (
        "error: --workers: cannot be combined with --scheduler (got 2); "
        "the cluster's workers run the episodes (local:N starts N)"
    )
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.slow
def test_worker_killed_mid_unit_neither_duplicates_nor_loses(
    tmp_path: Path, serial: dict[str, np.ndarray]
) -> None:
    """The first attempt of unit 2 exits its worker process after writing part of a
    temporary shard; Dask reruns the unit on a fresh worker."""
    out, marks = tmp_path / "cheetah.zarr", tmp_path / "marks"
    marks.mkdir()
    done = _cli(_collect_args(out, 4, "local:2"), **{DIE_ENV: f"2:{marks}"})
    assert done.returncode == 0, done.stderr
    assert [p.name for p in marks.iterdir()] == ["died-2"]  # the first attempt died
    assert_same_arrays(store_arrays(out), serial)
    assert _hidden(tmp_path) == []


@pytest.mark.slow
def test_worker_that_always_dies_is_one_error_and_commits_no_more(
    tmp_path: Path, serial: dict[str, np.ndarray]
) -> None:
    """Unit 3 kills every worker that runs it: after Dask's retries, one ``error:``
    line and exit 1; the store holds the units committed before (0 .. 2), no more."""
    out = tmp_path / "cheetah.zarr"
    collect("cheetah", out, CollectConfig(episodes=2, steps=STEPS, seed=SEED))
    args = [*_collect_args(out, 4, "local:2"), "--commit-seconds", "0"]
    died = _cli(args, **{DIE_ENV: "3:always", "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"})
    assert died.returncode == 1, died.stderr
    lines = died.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: a Dask worker died while running")
    assert "collect-unit-3" in lines[0] and lines[0].endswith(
        f"; {out} keeps the 3 episodes committed before (run again to resume)"
    )
    data = store_arrays(out)
    assert len(data["episodes/ends"]) == 3
    rows = int(data["episodes/ends"][-1])
    for name, value in data.items():
        expected = serial[name][:rows] if name.startswith("steps/") else serial[name][:3]
        np.testing.assert_array_equal(value, expected, err_msg=name)
    assert _hidden(tmp_path) == []


def test_only_abandoned_shard_areas_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    dead = tmp_path / f".c.zarr.shards-{_dead_pid()}-{'a' * 32}"
    live = tmp_path / f".c.zarr.shards-{os.getpid()}-{'b' * 32}"
    other = tmp_path / f".d.zarr.shards-{_dead_pid()}-{'c' * 32}"  # another store's
    for folder in (dead, live, other):
        folder.mkdir()
    remove_abandoned_shard_areas(out)
    assert not dead.exists() and live.exists() and other.exists()


def _dead_pid() -> int:
    """The id of a process that has ended (its areas count as abandoned)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------- an --out URL (S3)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """One moto S3 server on 127.0.0.1 for this module's URL tests."""
    pytest.importorskip("moto")
    with s3_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket; the environment (inherited by local:N workers and by the
    CLI's subprocess) points s3fs at the server."""
    home = tmp_path / "aws-home"
    home.mkdir()
    return fresh_bucket(endpoint, str(home), "hipi-collect", monkeypatch)


def _objects(url: str) -> list[str]:
    """Every object under ``url`` (keys relative to it, sorted)."""
    fs, root = filesystem(url)
    return sorted(key[len(root) + 1 :] for key in fs.find(root))


def _put(url: str, data: bytes = b"x") -> None:
    fs, key = filesystem(url)
    fs.pipe_file(key, data)


def _area_name(store: str, made: dt.datetime) -> str:
    """The name of a shard area of ``store`` made at ``made`` (as shard_area names it)."""
    return f".{store}.shards-{new_version_name(made)}"


def _assert_same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert_same_arrays(a, b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name


def test_url_shard_is_one_object_and_a_retry_writes_the_same_bytes(bucket: str) -> None:
    """A unit's shard at a URL is one object named by its unit; writing it again (a
    retried task) leaves the same one object with identical bytes, read back exactly."""
    area = shard_area(f"s3://{bucket}/dir/c.zarr")
    assert area.startswith(f"s3://{bucket}/dir/.c.zarr.shards-v-")
    job = ("cheetah", STEPS, SEED, 1, 10, False, (None, ()))
    shard = write_shard(area, job)
    assert shard == type(shard)(1, f"{area}/{shard_name(1)}")
    fs, key = filesystem(shard.path)
    first = fs.cat_file(key)
    assert write_shard(area, job) == shard
    assert fs.cat_file(key) == first
    assert _objects(area) == [shard_name(1)]
    stored, expected = flatten(read_shard(shard.path)), flatten(run_unit(job))
    assert list(stored) == list(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(stored[name], value, err_msg=name)
        assert stored[name].dtype == value.dtype


def test_only_stale_shard_areas_at_a_url_are_removed(bucket: str) -> None:
    """Abandoned areas at a URL go by the time in their name (over an hour old); a
    fresh area, names that only look alike, a plain object of the pattern's name and
    another store's area are kept."""
    now = dt.datetime.now(dt.timezone.utc)
    old = now - dt.timedelta(hours=2)
    parent = f"s3://{bucket}/dir"
    stale = _area_name("c.zarr", old)
    fresh = _area_name("c.zarr", now - dt.timedelta(minutes=50))
    plain = _area_name("c.zarr", old)  # an object, not a prefix
    kept = [
        f"{fresh}/{shard_name(0)}",
        f"{stale}x/{shard_name(0)}",  # not exactly the pattern
        f".c.zarr.shards-old/{shard_name(0)}",
        f"{_area_name('d.zarr', old)}/{shard_name(0)}",  # another store's
        f"c.zarr.shards-{new_version_name(old)}/{shard_name(0)}",  # not hidden
        plain,
    ]
    for key in [f"{stale}/{shard_name(0)}", f"{stale}/{shard_name(7)}", *kept]:
        _put(f"{parent}/{key}")
    remove_abandoned_shard_areas(f"{parent}/c.zarr")
    assert _objects(parent) == sorted(kept)
    remove_abandoned_shard_areas(f"s3://{bucket}/nothing-here/c.zarr")  # no such prefix


@pytest.mark.slow
def test_dask_collect_into_s3_equals_serial_collects(
    bucket: str, tmp_path: Path, serial: dict[str, np.ndarray]
) -> None:
    """local:2 workers write their shards beside an s3:// store: the store equals a
    serial collect into s3:// and a local serial collect, bit for bit; a stale shard
    area of a dead driver is removed and no shard is left."""
    url, serial_url = f"s3://{bucket}/dir/cheetah.zarr", f"s3://{bucket}/dir/serial.zarr"
    collect("cheetah", serial_url, CollectConfig(episodes=4, steps=STEPS, seed=SEED))
    dead = _area_name("cheetah.zarr", dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=3))
    _put(f"s3://{bucket}/dir/{dead}/{shard_name(1)}", b"not a shard")  # must not be read
    config = CollectConfig(
        episodes=4, steps=STEPS, seed=SEED, scheduler="local:2", commit_seconds=0
    )
    summary = collect("cheetah", url, config)
    assert (summary.collected, summary.total, summary.path) == (4, 4, url)
    _assert_same_bits(store_arrays(url), store_arrays(serial_url))
    _assert_same_bits(store_arrays(url), serial)
    top = {key.split("/")[0] for key in _objects(f"s3://{bucket}/dir")}
    assert top == {"cheetah.zarr", "serial.zarr"}


@pytest.mark.slow
def test_worker_killed_with_an_out_url_gives_the_serial_store(
    bucket: str, tmp_path: Path, serial: dict[str, np.ndarray]
) -> None:
    """The first attempt of unit 2 exits its worker just after its shard's PUT; the
    retry writes the same object again, and the s3:// store equals the serial one."""
    url, marks = f"s3://{bucket}/cheetah.zarr", tmp_path / "marks"
    marks.mkdir()
    args = [*_collect_args(url, 4, "local:2"), "--no-progress"]
    done = _cli(args, **{DIE_ENV: f"2:{marks}"})
    assert done.returncode == 0, done.stderr
    assert [p.name for p in marks.iterdir()] == ["died-2"]  # the first attempt died
    assert f"{url} now holds 4" in done.stdout
    _assert_same_bits(store_arrays(url), serial)  # type: ignore[arg-type]
    assert {key.split("/")[0] for key in _objects(f"s3://{bucket}")} == {"cheetah.zarr"}
