"""--scheduler: parsing, an unreachable scheduler, a local cluster, a worker that dies."""

from __future__ import annotations

import os
import socket

import pytest

from hipi_offline.configs import FieldError
from hipi_offline.errors import InputError, ResourceError
from hipi_offline.scheduler import SchedulerSpec, check_scheduler, dask_client, parse_scheduler


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("local:1", SchedulerSpec(workers=1)),
        ("local:16", SchedulerSpec(workers=16)),
        ("tcp://10.0.0.5:8786", SchedulerSpec(address="tcp://10.0.0.5:8786")),
        ("tls://head.cluster:8786", SchedulerSpec(address="tls://head.cluster:8786")),
    ],
)
def test_parse_scheduler(text: str, spec: SchedulerSpec) -> None:
    assert parse_scheduler(text) == spec
    assert str(spec) == text


@pytest.mark.parametrize(
    "text", ["local:0", "local:-1", "local:x", "local", "http://a:1", "tcp://", "tcp:///x", "", 3]
)
def test_bad_scheduler_names_the_field(text: object) -> None:
    with pytest.raises(FieldError) as err:
        check_scheduler(text, "scheduler")  # type: ignore[arg-type]
    assert str(err.value).startswith("scheduler: ")


def test_no_scheduler_is_fine() -> None:
    check_scheduler(None)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_scheduler_is_one_input_error() -> None:
    address = f"tcp://127.0.0.1:{_closed_port()}"
    with (
        pytest.raises(InputError, match="cannot reach the scheduler"),
        dask_client(parse_scheduler(address)),
    ):
        pass


def _add_one(value: int) -> int:
    return value + 1


def _die(_: int) -> int:
    os._exit(3)


@pytest.mark.slow
def test_local_cluster_runs_tasks_and_a_dying_worker_is_one_error() -> None:
    with dask_client(parse_scheduler("local:2")) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert {w["nthreads"] for w in client.scheduler_info()["workers"].values()} == {1}
        assert client.gather(client.map(_add_one, range(4))) == [1, 2, 3, 4]
        address = parse_scheduler(client.scheduler.address)
        with (
            pytest.raises(ResourceError, match="a Dask worker died"),
            dask_client(address) as remote,
        ):
            remote.submit(_die, 0).result()
