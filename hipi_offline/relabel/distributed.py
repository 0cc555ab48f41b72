"""The HIPI posterior on a Dask cluster (``relabel --scheduler``), partition by partition.

The episodes are cut into partitions of whole episodes (:mod:`.partitions`). Each
worker opens the store itself and reads only its partition's rows:

* pass 1: a task computes the partition's returns block R[rows, K] (tiled over K
  when big), which stays on the worker (Dask spills it to the worker's local disk
  when memory runs short); a second task sends the driver only its per-candidate
  logsumexp_i(R_ij / alpha) (K floats). The driver reduces them to
  log Z_j = logsumexp over partitions - log N.
* pass 2: a task turns the held block into the partition's posterior rows: top-k
  indices and log-probabilities, entropy, and its share of the coverage (K floats).

Neither steps nor an N x K matrix reach the driver. A worker lost in between costs
a recomputation of its blocks (Dask keeps the task graph); a worker that keeps dying
ends the run with one error line (:func:`hipi_offline.scheduler.cluster_errors`).
"""

from __future__ import annotations

import functools
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hipi_offline.device import resolve_device
from hipi_offline.errors import InputError, ResourceError
from hipi_offline.preflight import available_memory
from hipi_offline.progress import progress_bar
from hipi_offline.relabel.partitions import Partition, WorkPlan, parse_memory, plan_work
from hipi_offline.relabel.posterior import (
    Posterior,
    ReturnsScan,
    posterior_rows,
    raise_non_finite,
)
from hipi_offline.relabel.returns import StoreRows, returns_tiles, tile_columns
from hipi_offline.scheduler import CONNECT_SECONDS, dask_client, parse_scheduler
from hipi_offline.store.store import TrajectoryStore, open_store
from hipi_offline.tasks.spec import TaskSpec, parse_task_spec

if TYPE_CHECKING:
    from distributed import Client, Future

    from hipi_offline.relabel.run import RelabelConfig

TEST_EXIT_ENV = "HIPI_OFFLINE_TEST_RELABEL_WORKER_EXIT"
"""Test-only hook (tests/test_relabel_dask.py): set to ``always``, every returns task
ends its worker process; set to a file path, only the first one does (it creates the
file), so Dask's retry succeeds."""


@dataclass(frozen=True, repr=False)
class PartitionJob:
    """What every partition task needs; O(K) in size, pickled to the workers."""

    location: str
    """The store: an absolute path or a URL (a remote worker's cwd differs)."""
    spec_source: str
    spec_origin: str
    temperature: float
    candidates: np.ndarray
    log_prior: np.ndarray | None
    partition: bool
    """hipi (True) or the no-partition ablation (False)."""
    top_k: int
    tile: int
    chunk_steps: int
    device: str
    total: int
    """N, the episodes of the whole store."""
    prefetch: bool = True
    """Read the next chunk on a second thread of the worker (``--no-prefetch``: not)."""

    def __repr__(self) -> str:
        return f"PartitionJob({self.location!r}, K={len(self.candidates)}, tile={self.tile})"

    def spec(self) -> TaskSpec:
        spec = parse_task_spec(self.spec_source, origin=self.spec_origin)
        return replace(spec, temperature=self.temperature)


def _test_exit_hook() -> None:
    """See :data:`TEST_EXIT_ENV`."""
    value = os.environ.get(TEST_EXIT_ENV)
    if not value:
        return
    if value != "always":
        try:
            os.close(os.open(value, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os._exit(1)


# ---------------------------------------------------------------- tasks (on the workers)


@dataclass(frozen=True)
class Failed:
    """A task's own one-line error, returned as its result: the driver raises the
    first in partition order (a raised error would also be logged by the worker)."""

    error: InputError | ResourceError


def guarded(function: Callable[..., Any]) -> Callable[..., Any]:
    """A task that returns its :class:`InputError`/:class:`ResourceError` as
    :class:`Failed`, and passes on a failed input without running."""

    @functools.wraps(function)
    def task(*args: Any) -> Any:
        for arg in args:
            if isinstance(arg, Failed):
                return arg
        try:
            return function(*args)
        except (InputError, ResourceError) as err:
            return Failed(err)

    return task


@guarded
def partition_returns(job: PartitionJob, part: Partition) -> np.ndarray:
    """R [episodes of ``part``, K] float64, read from the store by the worker."""
    _test_exit_hook()
    spec, device = job.spec(), resolve_device(job.device)
    out = np.empty((part.episodes, len(job.candidates)), dtype=np.float64)
    with open_store(job.location) as store:
        rows = StoreRows(store, part.first_episode, part.stop_episode)
        tiles = returns_tiles(
            rows,
            spec,
            job.candidates,
            device=device,
            chunk_steps=job.chunk_steps,
            tile=job.tile,
            show_progress=False,
            prefetch=job.prefetch,
        )
        for j0, j1, block in tiles:
            out[:, j0:j1] = block.cpu().numpy()
    return out


@guarded
def partial_log_sum_exp(returns: np.ndarray, temperature: float) -> np.ndarray:
    """logsumexp_i (R_ij / alpha) over the partition's episodes, [K]."""
    return torch.logsumexp(torch.from_numpy(returns) / temperature, dim=0).numpy()


@guarded
def partition_posterior(
    returns: np.ndarray, job: PartitionJob, log_z: np.ndarray | None
) -> Posterior | None:
    """The partition's posterior rows given the whole store's ``log_z`` (None for the
    no-partition ablation, which does not use it); None when anything is not finite."""
    device = resolve_device(job.device)
    matrix = torch.from_numpy(returns)
    n, k = returns.shape
    prior = None if job.log_prior is None else torch.from_numpy(job.log_prior).to(device)
    given = None if log_z is None else torch.from_numpy(log_z).to(device)
    return posterior_rows(
        lambda a, b: matrix[:, a:b].to(device),
        n,
        k,
        temperature=job.temperature,
        log_prior=prior,
        partition=job.partition,
        top_k=job.top_k,
        tile=job.tile,
        device=device,
        log_z=given,
        total=job.total,
    )


@guarded
def partition_scan(returns: np.ndarray, job: PartitionJob, first_episode: int) -> ReturnsScan:
    """The partition's part of the diagnosis of a non-finite posterior."""
    matrix = torch.from_numpy(returns)
    k = returns.shape[1]
    bounds = [(j, min(j + job.tile, k)) for j in range(0, k, job.tile)]
    return ReturnsScan.of(lambda a, b: matrix[:, a:b], bounds, k, first_episode)


# ---------------------------------------------------------------- the driver


def store_location(location: Any) -> str:
    """What workers open: a URL as given, a local path made absolute."""
    text = os.fspath(location)
    return text if "://" in text else os.path.abspath(text)


def worker_memory(client: Client, cap: int | None) -> tuple[int, int]:
    """(number of workers, the smallest worker's memory limit in bytes, at most ``cap``).
    A worker without a limit counts as the driver's available memory shared by all."""
    client.wait_for_workers(1, timeout=CONNECT_SECONDS)
    workers = client.scheduler_info()["workers"]
    limits = [int(info.get("memory_limit") or 0) for info in workers.values()]
    known = [limit for limit in limits if limit > 0]
    shared = (available_memory() or 4 * 2**30) // max(1, len(workers))
    limit = min(known) if known else shared
    return len(workers), limit if cap is None else min(limit, cap)


def dask_posterior(
    location: Any,
    store: TrajectoryStore,
    spec: TaskSpec,
    candidates: np.ndarray,
    log_prior: np.ndarray | None,
    config: RelabelConfig,
    top_k: int,
) -> Posterior:
    """The posterior of every episode of ``store`` (open on the driver, at
    ``location``), computed on the cluster of ``config.scheduler``."""
    scheduler = parse_scheduler(config.scheduler)
    cap = None if config.worker_memory is None else parse_memory(config.worker_memory)
    local_limit: str | int = "auto" if cap is None else cap
    k = len(candidates)
    with dask_client(scheduler, memory_limit=local_limit) as client:
        workers, limit = worker_memory(client, cap)
        dim = int(np.prod(candidates.shape[1:]))
        plan = plan_work(
            store.ends,
            store.step_fields(),
            spec,
            config.method,
            (k, dim, top_k),
            config.chunk_steps,
            workers,
            limit,
        )
        job = PartitionJob(
            location=store_location(location),
            spec_source=spec.source,
            spec_origin=spec.origin,
            temperature=spec.temperature,
            candidates=candidates,
            log_prior=log_prior,
            partition=config.method == "hipi",
            top_k=top_k,
            tile=plan.tile,
            chunk_steps=plan.chunk_steps,
            device=config.device,
            total=store.num_episodes,
            prefetch=config.prefetch,
        )
        global_tile = tile_columns(store.num_episodes, k, config.max_matrix_mb)
        return _run(client, job, plan, global_tile)


def _run(client: Client, job: PartitionJob, plan: WorkPlan, global_tile: int) -> Posterior:
    parts = plan.partitions
    run = uuid.uuid4().hex[:12]

    def submit(name: str, function: Any, *args: Any, part: Partition) -> Future:
        key = f"hipi-relabel-{name}-{part.index}-{run}"
        return client.submit(function, *args, key=key, pure=False)

    returns = [submit("returns", partition_returns, job, part, part=part) for part in parts]
    futures = list(returns)
    try:
        with progress_bar(total=2 * len(parts), desc="relabel", unit="part") as bar:
            partial = [
                submit("logsumexp", partial_log_sum_exp, r, job.temperature, part=part)
                for r, part in zip(returns, parts, strict=True)
            ]
            futures += partial
            rows: list[Future] = []
            if not job.partition:  # the ablation needs no log Z: both passes at once
                rows = [
                    submit("posterior", partition_posterior, r, job, None, part=part)
                    for r, part in zip(returns, parts, strict=True)
                ]
                futures += rows
            sums = np.stack(_gather(client, partial, bar.update))
            log_z = torch.logsumexp(torch.from_numpy(sums), dim=0).numpy() - math.log(job.total)
            if not np.isfinite(log_z).all():
                _diagnose(client, job, parts, returns, global_tile)
            if job.partition:
                rows = [
                    submit("posterior", partition_posterior, r, job, log_z, part=part)
                    for r, part in zip(returns, parts, strict=True)
                ]
                futures += rows
            pieces = _gather(client, rows, bar.update)
            if any(piece is None for piece in pieces):
                _diagnose(client, job, parts, returns, global_tile)
    finally:
        client.cancel(futures)
    return Posterior(
        log_z=log_z,
        topk_index=np.concatenate([piece.topk_index for piece in pieces]),
        topk_logprob=np.concatenate([piece.topk_logprob for piece in pieces]),
        entropy=np.concatenate([piece.entropy for piece in pieces]),
        coverage=np.sum([piece.coverage for piece in pieces], axis=0),
    )


def _gather(client: Client, futures: list[Future], advance: Any) -> list[Any]:
    """The futures' results in order. A task that raised (a worker that died, past
    Dask's retries) is raised at once; when tasks returned :class:`Failed`, the
    error of the first in partition order is raised (the error the single-process
    pass meets first)."""
    from distributed import as_completed

    for future in as_completed(futures):
        if future.status == "error":
            future.result()  # raises the task's error
        advance(1)
    results = client.gather(futures)
    for result in results:
        if isinstance(result, Failed):
            raise result.error
    return results


def _diagnose(
    client: Client,
    job: PartitionJob,
    parts: list[Partition],
    returns: list[Future],
    global_tile: int,
) -> None:
    """Raise the error the single-process path raises for a non-finite posterior."""
    scans = [
        client.submit(partition_scan, r, job, part.first_episode, pure=False)
        for r, part in zip(returns, parts, strict=True)
    ]
    merged = ReturnsScan.merge(_gather(client, scans, lambda _: None))
    raise_non_finite(merged, job.temperature, global_tile)
    raise InputError("the posterior is not finite")  # raise_non_finite always raises
