"""hipi_offline.parallel.ordered_map: results in job order, in this process for one
worker or one job, else on spawned worker processes."""

from __future__ import annotations

import os
import time

import pytest

from hipi_offline.parallel import ordered_map


def _job(job: int) -> tuple[int, int]:
    """``(job, pid)`` after a pause that makes later jobs finish first."""
    time.sleep(0.05 * (5 - job))
    return job, os.getpid()


def test_one_worker_runs_the_jobs_here_in_order() -> None:
    seen: list[int] = []

    def record(job: int) -> int:  # a closure: it would not pickle for a worker process
        seen.append(job)
        return job * 10

    assert list(ordered_map(record, [3, 1, 2], workers=1)) == [30, 10, 20]
    assert seen == [3, 1, 2]


def test_one_job_runs_here_whatever_the_workers() -> None:
    assert list(ordered_map(lambda job: -job, [4], workers=8)) == [-4]


@pytest.mark.slow
def test_workers_return_results_in_job_order_from_spawned_processes() -> None:
    results = list(ordered_map(_job, list(range(5)), workers=2))
    assert [job for job, _ in results] == [0, 1, 2, 3, 4]
    pids = {pid for _, pid in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
