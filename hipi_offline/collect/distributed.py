"""Collect on a Dask cluster (``--scheduler``): each work unit is one task that writes
its episodes to a shard file; the driver reads the shards back in unit order.

The shard area is a hidden folder beside the output store, named like the toolkit's
other temporaries (``.NAME.shards-PID-HEX``, the driver's :func:`writer_token`), made
by the driver and removed by it when the collect ends; a rerun removes the areas of
drivers that no longer run. Workers never create it: on a remote cluster it must be
on a file system that the driver and the workers share (its absolute path is sent).

A shard is ``unit-NNNNNNNNN.npz`` (uncompressed NumPy arrays, no pickles), written to a
temporary name and renamed into place, so a task that is retried after its worker
died overwrites or reuses the one complete shard of its unit, never adds a second.
Only a shard's path travels back through Dask, never the episode arrays.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.collect.episodes import Episode, UnitResult, run_unit
from hipi_offline.errors import InputError
from hipi_offline.scheduler import dask_client, parse_scheduler
from hipi_offline.store.atomic import (
    TOKEN_TEXT,
    abandoned,
    fsync_path,
    remove_path,
    writer_token,
)

UnitJob = tuple[Any, ...]
"""The arguments of :func:`run_unit` for one unit (its index is the fourth)."""
SHARDS = "shards"
"""The purpose part of a shard area's name."""
DIE_ENV = "HIPI_OFFLINE_TEST_COLLECT_DIE"
"""Test hook read by the task on the worker: ``U:FOLDER`` makes the first attempt of
unit U exit its process (``os._exit(1)``) after writing part of a temporary shard (the
file ``FOLDER/died-U`` records the attempt); ``U:always`` makes every attempt do so.
Unset in normal use."""
TASKS_PER_WORKER = 4
"""Units submitted ahead per worker thread (bounds the shards waiting on disk)."""


@dataclass(frozen=True)
class Shard:
    """What a task returns: its unit and the path of the unit's shard."""

    unit: int
    path: str


def shard_area(out: Path) -> Path:
    """A new shard area's path beside the store ``out`` (not yet made)."""
    return out.with_name(f".{out.name}.{SHARDS}-{writer_token()}")


def remove_abandoned_shard_areas(out: Path) -> None:
    """Delete the shard areas that drivers which no longer run left beside ``out``
    (exactly the names :func:`shard_area` makes; links are unlinked, not followed)."""
    if not out.parent.is_dir():
        return
    ours = re.compile(re.escape(f".{out.name}.{SHARDS}-") + TOKEN_TEXT)
    for leftover in out.parent.iterdir():
        found = ours.fullmatch(leftover.name)
        if found and abandoned(found["token"]):
            remove_path(leftover)


def shard_name(unit: int) -> str:
    return f"unit-{unit:09d}.npz"


def write_shard(area: str, job: UnitJob) -> Shard:
    """Run one unit on a worker and write its shard into ``area`` (see module
    docstring); an existing complete shard of the unit is reused."""
    unit = int(job[3])
    final = Path(area) / shard_name(unit)
    if final.is_file() and not final.is_symlink():
        return Shard(unit, str(final))
    arrays = flatten(run_unit(job))  # type: ignore[arg-type]
    tmp = final.with_name(f".{final.name}.{writer_token()}.tmp")
    try:
        with open(tmp, "xb") as file:
            _test_death(unit, file)
            np.savez(file, **arrays)
        fsync_path(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return Shard(unit, str(final))


def _test_death(unit: int, file: Any) -> None:
    """The :data:`DIE_ENV` test hook: a worker killed while it writes a shard."""
    plan = os.environ.get(DIE_ENV, "")
    target, _, mode = plan.partition(":")
    if not target.isdigit() or int(target) != unit or not mode:
        return
    if mode != "always":
        marker = Path(mode) / f"died-{unit}"
        if marker.exists():
            return
        marker.touch()
    file.write(b"PK\x03\x04 a partial shard")
    file.flush()
    os._exit(1)


def flatten(result: UnitResult) -> dict[str, np.ndarray]:
    """A unit's episodes (and play stream) as named arrays for one ``.npz`` file."""
    arrays: dict[str, np.ndarray] = {}
    named = [(f"episode-{i}", e) for i, e in enumerate(result.episodes)]
    if result.stream is not None:
        named.append(("stream", result.stream))
    for prefix, episode in named:
        arrays[f"{prefix}/observations"] = episode.observations
        arrays[f"{prefix}/actions"] = episode.actions
        for name, value in episode.fields.items():
            arrays[f"{prefix}/steps/{name}"] = value
        for name, value in episode.episode_fields.items():
            arrays[f"{prefix}/episode/{name}"] = value
    return arrays


def unflatten(arrays: dict[str, np.ndarray]) -> UnitResult:
    """The inverse of :func:`flatten` (names in their written order)."""
    parts: dict[str, dict[str, Any]] = {}
    for key, value in arrays.items():
        prefix, _, name = key.partition("/")
        part = parts.setdefault(prefix, {"steps": {}, "episode": {}})
        kind, _, field = name.partition("/")
        if kind in ("steps", "episode") and field:
            part[kind][field] = value
        elif name in ("observations", "actions"):
            part[name] = value
        else:
            raise InputError(f"a collect shard holds an unexpected array {key!r}")

    def episode(prefix: str) -> Episode:
        part = parts[prefix]
        return Episode(part["observations"], part["actions"], part["steps"], part["episode"])

    count = sum(1 for prefix in parts if prefix.startswith("episode-"))
    episodes = [episode(f"episode-{i}") for i in range(count)]
    return UnitResult(episodes, episode("stream") if "stream" in parts else None)


def read_shard(path: str) -> UnitResult:
    """A shard's unit result (plain arrays only: no pickles are loaded)."""
    with np.load(path, allow_pickle=False) as data:
        return unflatten({name: data[name] for name in data.files})


@contextmanager
def dask_units(
    scheduler: str, out: Path, jobs: Sequence[UnitJob]
) -> Iterator[Iterator[UnitResult]]:
    """The units' results in job order, computed as tasks on the cluster ``scheduler``
    (``local:N`` or an address); the shard area beside ``out`` exists while the block
    runs and is removed after the cluster is let go (so no task of ours still writes
    into it on a local cluster)."""
    spec = parse_scheduler(scheduler, "--scheduler")
    area = shard_area(out.absolute())
    with ExitStack() as stack:
        stack.callback(remove_path, area)  # runs last: after the client is closed
        client = stack.enter_context(dask_client(spec))
        area.mkdir(mode=0o700)
        yield _results(client, area, jobs)


def _results(client: Any, area: Path, jobs: Sequence[UnitJob]) -> Iterator[UnitResult]:
    """Submit the jobs a window at a time; read, then delete, each shard in order."""
    ahead = TASKS_PER_WORKER * max(1, sum(client.nthreads().values()))
    run = area.name.rpartition("-")[2][:12]
    window: deque[Any] = deque()
    submitted = 0
    try:
        while window or submitted < len(jobs):
            while submitted < len(jobs) and len(window) < ahead:
                job = jobs[submitted]
                key = f"collect-unit-{job[3]}-{run}"
                window.append(client.submit(write_shard, str(area), job, key=key))
                submitted += 1
            job = jobs[submitted - len(window)]
            shard: Shard = window.popleft().result()
            path = area / shard_name(int(job[3]))  # the driver's own name, not the task's
            if shard.unit != job[3] or Path(shard.path) != path:
                raise RuntimeError(f"a collect task returned {shard}, not unit {job[3]}'s shard")
            result = read_shard(str(path))
            path.unlink()
            yield result
    finally:
        if window:
            client.cancel(list(window))
