"""Where distributed work runs: the Dask cluster named by ``--scheduler``.

* ``local:N`` starts a ``LocalCluster`` of N worker processes with one thread each,
  listening on 127.0.0.1 only, and stops it when the work is done.
* ``tcp://HOST:PORT`` (or ``tls://``, ``ws://``, ``wss://``, ``inproc://``) connects to
  a scheduler that is already running: one started by ``dask scheduler``, by
  dask-jobqueue on SLURM, or by any other Dask deployment. Its workers must have
  ``hipi-offline`` installed.

Dask is an optional dependency (the ``[scale]`` extra); it is imported only here and
only when a scheduler is asked for. Failures of the cluster become one-line errors
(:func:`cluster_errors`): an unreachable scheduler, a worker that died, a task that
failed on a worker.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hipi_offline.configs import MAX_WORKERS, FieldError
from hipi_offline.errors import InputError, ResourceError, one_line

if TYPE_CHECKING:
    from distributed import Client

ADDRESS_SCHEMES: tuple[str, ...] = ("tcp", "tls", "ws", "wss", "inproc")
CONNECT_SECONDS = 20.0
"""How long to wait for an existing scheduler before giving up."""
_LOCAL = re.compile(r"local:(\d+)")
_ADDRESS = re.compile(rf"({'|'.join(ADDRESS_SCHEMES)})://[^\s/]+")


@dataclass(frozen=True)
class SchedulerSpec:
    """A parsed ``--scheduler``: a local cluster of ``workers`` processes, or the
    ``address`` of a running scheduler."""

    workers: int | None = None
    address: str | None = None

    def __str__(self) -> str:
        return f"local:{self.workers}" if self.address is None else self.address


def parse_scheduler(text: str, field: str = "scheduler") -> SchedulerSpec:
    """``local:N`` or ``SCHEME://HOST:PORT``; anything else is a :class:`FieldError`."""
    if not isinstance(text, str):
        raise FieldError(field, f"expected local:N or tcp://HOST:PORT, got {text!r}")
    local = _LOCAL.fullmatch(text)
    if local is not None:
        workers = int(local.group(1))
        if not 1 <= workers <= MAX_WORKERS:
            raise FieldError(field, f"local:N needs 1 <= N <= {MAX_WORKERS}, got {text!r}")
        return SchedulerSpec(workers=workers)
    if _ADDRESS.fullmatch(text):
        return SchedulerSpec(address=text)
    raise FieldError(field, f"expected local:N or tcp://HOST:PORT, got {text!r}")


def check_scheduler(text: str | None, field: str = "scheduler") -> None:
    """Config check of an optional ``--scheduler`` value."""
    if text is not None:
        parse_scheduler(text, field)


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InputError(
            "--scheduler needs Dask: pip install 'hipi-offline[scale]' "
            "(dask[distributed], s3fs, dask-jobqueue)"
        ) from None
    return distributed


@contextmanager
def dask_client(spec: SchedulerSpec, memory_limit: str | int | None = "auto") -> Iterator[Client]:
    """A connected client for the duration of the block. A local cluster is started
    (and stopped after) with ``memory_limit`` per worker; an address is connected to,
    and an unreachable one is an :class:`InputError` naming it."""
    distributed = _distributed()
    for name in ("distributed", "distributed.nanny", "bokeh"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # a task failed after its workers died: cluster_errors says it in one line
    logging.getLogger("distributed.scheduler").setLevel(logging.CRITICAL)
    if spec.address is not None:
        _probe(spec.address)
        try:
            client = distributed.Client(spec.address, timeout=CONNECT_SECONDS)
        except (OSError, TimeoutError) as err:
            raise InputError(
                one_line(f"--scheduler {spec.address}: cannot reach the scheduler ({err})")
            ) from None
        with client, cluster_errors():
            yield client
        return
    try:
        cluster = distributed.LocalCluster(
            n_workers=spec.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # None still serves HTTP on *:8787 (or warns)
            memory_limit=memory_limit,
            silence_logs=logging.ERROR,
        )
    except (OSError, TimeoutError) as err:
        raise ResourceError(
            one_line(f"--scheduler {spec}: cannot start the cluster ({err})")
        ) from None
    with cluster, distributed.Client(cluster) as client, cluster_errors():
        try:
            yield client
        finally:
            _settle(client, spec.workers)


def _settle(client: Client, workers: int) -> None:
    """Wait (up to :data:`CONNECT_SECONDS`) until the local cluster has its ``workers``
    again before it is closed: a nanny still restarting a worker that died makes the
    cluster's close fail inside distributed ("can only join a started process",
    dask/distributed#6973), which would replace the one-line error of the death."""
    with suppress(TimeoutError, OSError):  # one that cannot is closed as it is
        client.wait_for_workers(workers, timeout=CONNECT_SECONDS)


def _probe(address: str) -> None:
    """Fail at once, naming the address, when nothing listens at a tcp:// address
    (Dask itself would retry until its timeout)."""
    scheme, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme != "tcp" or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(f"--scheduler {address}: cannot reach the scheduler ({reason})") from None


@contextmanager
def cluster_errors() -> Iterator[None]:
    """Turn a cluster's failures into one-line errors: a worker that died while
    running a task (after Dask's retries) and a lost connection to the scheduler are
    :class:`ResourceError`; errors of our own raised on a worker pass through."""
    distributed = _distributed()
    try:
        yield
    except distributed.scheduler.KilledWorker as err:
        task = err.args[0] if err.args else "a task"
        raise ResourceError(
            one_line(
                f"a Dask worker died while running {task} (it was retried); nothing was committed"
            )
        ) from None
    except distributed.comm.CommClosedError as err:
        raise ResourceError(
            one_line(f"lost the connection to the Dask scheduler ({err})")
        ) from None
