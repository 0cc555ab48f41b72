"""Row partitions of a relabel on Dask: whole episodes, sized to the workers' memory.

A partition is a run of consecutive episodes (never a split one). Each worker holds
its partitions' returns blocks R[rows, K] between the two passes, and works on one
partition at a time, so a partition is sized so that its block, the work over it and
a chunk of step rows stay within a fraction of the worker's memory limit
(:func:`plan_work`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from hipi_offline.configs import FieldError
from hipi_offline.errors import InputError
from hipi_offline.relabel.returns import SORTED_TILE_FACTOR, TILE_FACTOR, RelabelSizes, tile_columns
from hipi_offline.store.backends import ArrayInfo
from hipi_offline.tasks.families import TargetFamily
from hipi_offline.tasks.spec import TaskSpec

WORKER_BASE_BYTES = 320 * 2**20
"""A Dask worker's own memory with torch and hipi-offline imported (RSS, measured)."""
WORKER_FRACTION = 0.5
"""Share of a worker's limit a task may use: Dask spills held data to disk from 0.6
of the limit and pauses the worker at 0.8."""
PARTS_PER_WORKER = 4
"""Partitions per worker at least (when the episodes allow), to balance the load."""
_MEMORY = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_UNITS = {"": 2**20, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_memory(text: str, field: str = "worker_memory") -> int:
    """Bytes of ``1GiB``, ``512MiB``, ``2GB``, ``1.5 GiB`` or a plain number of MiB."""
    match = _MEMORY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise FieldError(field, f"expected a size such as 1GiB, 512MiB or 2GB, got {text!r}")
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if size <= 0:
        raise FieldError(field, f"expected a positive size, got {text!r}")
    return size


@dataclass(frozen=True)
class Partition:
    """Episodes ``[first_episode, stop_episode)``, which are rows ``[start_row, stop_row)``."""

    index: int
    first_episode: int
    stop_episode: int
    start_row: int
    stop_row: int

    @property
    def episodes(self) -> int:
        return self.stop_episode - self.first_episode

    @property
    def rows(self) -> int:
        return self.stop_row - self.start_row


def plan_partitions(ends: np.ndarray, max_rows: int, max_episodes: int) -> list[Partition]:
    """Cut the episodes (cumulative ``ends``) into consecutive partitions of at most
    ``max_rows`` rows and ``max_episodes`` episodes each; an episode longer than
    ``max_rows`` is a partition of its own. Every cut is at an episode end."""
    if max_rows < 1 or max_episodes < 1:
        raise ValueError(f"max_rows {max_rows} and max_episodes {max_episodes} must be >= 1")
    parts: list[Partition] = []
    first, n = 0, len(ends)
    while first < n:
        start = int(ends[first - 1]) if first else 0
        stop = int(np.searchsorted(ends, start + max_rows, side="right"))
        stop = max(first + 1, min(stop, first + max_episodes, n))
        parts.append(Partition(len(parts), first, stop, start, int(ends[stop - 1])))
        first = stop
    return parts


@dataclass(frozen=True)
class WorkPlan:
    """How a relabel is cut for workers of ``worker_bytes`` memory each."""

    partitions: list[Partition]
    tile: int
    """Columns of a partition's R worked on at once."""
    chunk_steps: int
    """Step rows a worker reads at once."""
    task_bytes: int
    """Estimated peak memory of one task on the largest partition (besides the
    worker's own :data:`WORKER_BASE_BYTES`)."""
    worker_bytes: int


@dataclass(frozen=True)
class _Shape:
    """The sizes :meth:`RelabelSizes.of` reads from a store, for one partition."""

    num_episodes: int
    num_steps: int
    fields: dict[str, ArrayInfo]

    def step_fields(self) -> dict[str, ArrayInfo]:
        return self.fields


def _gib(size: float) -> str:
    return f"{size / 2**30:.3g} GiB" if size >= 2**30 else f"{size / 2**20:.3g} MiB"


def plan_work(
    ends: np.ndarray,
    fields: dict[str, ArrayInfo],
    spec: TaskSpec,
    method: str,
    counts: tuple[int, int, int],
    chunk_steps: int,
    workers: int,
    worker_bytes: int,
) -> WorkPlan:
    """Partitions, tile and chunk rows such that a worker's task stays within
    ``WORKER_FRACTION * worker_bytes - WORKER_BASE_BYTES``: a third of that for the
    partition's held R block (and its top-k), a third for the N x tile work, the rest
    for the step chunks. ``counts`` = (K, task dimension, top-k). InputError (naming
    ``--worker-memory``) when even one episode does not fit."""
    k, dim, top_k = counts
    budget = int(WORKER_FRACTION * worker_bytes) - WORKER_BASE_BYTES
    if budget < 3 * 2**20:
        raise InputError(
            f"--worker-memory {_gib(worker_bytes)}: a worker needs more than "
            f"{_gib((WORKER_BASE_BYTES + 3 * 2**20) / WORKER_FRACTION)}"
        )
    third = budget // 3
    row_bytes = 64 + sum(
        info.dtype.itemsize * _columns(info.shape) + 16 * _columns(info.shape)
        for name, info in fields.items()
        if name in spec.family.fields
    )
    chunk = max(1, min(chunk_steps, third // (2 * row_bytes)))
    max_episodes = max(1, third // (8 * k + 48 * top_k))
    total = int(ends[-1])
    max_rows = math.ceil(total / (PARTS_PER_WORKER * workers))
    partitions = plan_partitions(ends, max_rows, max_episodes)
    largest = max(partitions, key=lambda part: part.episodes)
    sorted_target = isinstance(spec.family, TargetFamily) and dim == 1
    factor = SORTED_TILE_FACTOR if sorted_target else TILE_FACTOR
    tile = tile_columns(largest.episodes, k, third / factor / 2**20)
    shape = _Shape(largest.episodes, max(part.rows for part in partitions), fields)
    sizes = RelabelSizes.of(shape, spec, method, counts, chunk, tile)
    task = sizes.memory + 8 * largest.episodes * k
    if task > budget + BASE_SLACK:
        raise InputError(
            f"--worker-memory {_gib(worker_bytes)}: a partition of {largest.episodes} "
            f"episode(s) needs about {_gib(task)} per worker task but "
            f"{_gib(max(budget, 0))} is usable; raise --worker-memory or lower --candidates"
        )
    return WorkPlan(partitions, tile, chunk, task, worker_bytes)


BASE_SLACK = 64 * 2**20
""":data:`RelabelSizes` counts the run's own buffers (``BASE_BYTES``), which a worker's
:data:`WORKER_BASE_BYTES` already holds."""


def _columns(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
