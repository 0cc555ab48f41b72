"""Independent jobs over worker processes, results in job order.

Workers are *spawned* (a fresh interpreter each), never forked: a forked child would
inherit torch's thread pools and MuJoCo/OpenGL state of the parent mid-flight.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


def ordered_map(fn: Callable[[Job], Result], jobs: Sequence[Job], workers: int) -> Iterator[Result]:
    """``fn(job)`` for each job, yielded in job order as they finish: in this process
    for one worker or one job (so per-process caches stay warm), else on
    ``min(workers, len(jobs))`` spawned processes. ``fn`` and the jobs must pickle."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(fn, jobs)
