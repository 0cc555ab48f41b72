"""Collect on a Dask cluster (``--scheduler``): each work unit is one task that writes
its episodes to a shard; the driver reads the shards back in unit order.

A local ``--out`` gets a shard area that is a hidden folder beside the store, named
like the toolkit's other temporaries (``.NAME.shards-PID-HEX``, the driver's
:func:`writer_token`), made by the driver and removed by it when the collect ends; a
rerun removes the areas of drivers that no longer run. Workers never create it: on a
remote cluster it must be on a file system that the driver and the workers share (its
absolute path is sent). A shard there is written to a temporary name and renamed into
place, so a task that is retried after its worker died reuses the one complete shard
of its unit, never adds a second.

An ``--out`` at a URL (``s3://b/dir/x.zarr``) gets a shard area that is a prefix
beside the store, ``s3://b/dir/.x.zarr.shards-v-<UTC time>-<hex32>/`` (the time and
random part of a label-set version, :func:`new_version_name`). Workers write there
through fsspec with the storage options of ``HIPI_STORAGE_OPTIONS`` and the
provider's variables (``local:N`` workers inherit the driver's; the workers of a
``tcp://`` cluster need their own). Each shard is one object, written with one PUT (a
reader sees all of it or nothing), named by its unit, so a retried task overwrites it
with identical bytes (the shard file has fixed timestamps). The driver deletes each
shard once read, and the area at the end. A driver that died leaves its area behind;
process ids say nothing across hosts, so a later collect into the same store removes
the areas whose names match exactly and whose time in the name is over an hour old
(:data:`~hipi_offline.store.object_backend.STALE_AFTER_S`, the rule of stale label
versions; a collect that runs longer than that may lose its area to a second collect
into the same store, and then stops with an error).

A shard is ``unit-NNNNNNNNN.npz`` (uncompressed NumPy arrays, no pickles). Only a
shard's location travels back through Dask, never the episode arrays.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import re
import zipfile
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
from hipi_offline.store import remote
from hipi_offline.store.atomic import (
    TOKEN_TEXT,
    abandoned,
    fsync_path,
    remove_path,
    writer_token,
)
from hipi_offline.store.location import Location, is_url, url_name
from hipi_offline.store.object_backend import new_version_name, stale_version
from hipi_offline.store.remote import filesystem, remote_errors

UnitJob = tuple[Any, ...]
"""The arguments of :func:`run_unit` for one unit (its index is the fourth)."""
SHARDS = "shards"
"""The purpose part of a shard area's name."""
DIE_ENV = "HIPI_OFFLINE_TEST_COLLECT_DIE"
"""Test hook read by the task on the worker: ``U:FOLDER`` makes the first attempt of
unit U exit its process (``os._exit(1)``), in a local area after writing part of a
temporary shard, in an area at a URL after the shard's PUT (the retry overwrites it);
the file ``FOLDER/died-U`` records the attempt. ``U:always`` makes every attempt do
so. Unset in normal use."""
TASKS_PER_WORKER = 4
"""Units submitted ahead per worker thread (bounds the shards waiting on disk)."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
"""The time of every member of a shard file (so that its bytes depend on its arrays only)."""


@dataclass(frozen=True)
class Shard:
    """What a task returns: its unit and the location (path or URL) of its shard."""

    unit: int
    path: str


def shard_area(out: Location) -> str:
    """A new shard area's location beside the store ``out`` (an absolute path, or a
    URL; not made: a prefix at a URL never is)."""
    if is_url(out):
        name = f".{url_name(str(out))}.{SHARDS}-{new_version_name()}"
        return remote.join(str(out).rsplit("/", 1)[0], name)
    local = Path(out).absolute()
    return str(local.with_name(f".{local.name}.{SHARDS}-{writer_token()}"))


def remove_abandoned_shard_areas(out: Location) -> None:
    """Delete the shard areas that drivers which no longer run left beside ``out``:
    exactly the names :func:`shard_area` makes; in a folder those of ended processes
    (links are unlinked, not followed), at a URL those over an hour old."""
    if is_url(out):
        _remove_stale_areas(str(out))
        return
    out = Path(out)
    if not out.parent.is_dir():
        return
    ours = re.compile(re.escape(f".{out.name}.{SHARDS}-") + TOKEN_TEXT)
    for leftover in out.parent.iterdir():
        found = ours.fullmatch(leftover.name)
        if found and abandoned(found["token"]):
            remove_path(leftover)


def _remove_stale_areas(url: str) -> None:
    """The areas at URLs: prefixes beside ``url`` named ``.NAME.shards-VERSION`` whose
    VERSION is a stale :func:`new_version_name` (a plain object is never one)."""
    fs, root = filesystem(url)
    parent, _, name = root.rpartition("/")
    start = f".{name}.{SHARDS}-"
    now = dt.datetime.now(dt.timezone.utc)
    with remote_errors(url):
        try:
            entries = fs.ls(parent, detail=True, refresh=True)
        except FileNotFoundError:
            return
        for entry in entries:
            found = str(entry["name"]).rstrip("/").rpartition("/")[2]
            if entry.get("type") != "directory" or not found.startswith(start):
                continue
            if stale_version(found[len(start) :], now):
                remote.remove_tree(fs, f"{parent}/{found}")


def _remove_area(area: str) -> None:
    """Delete a shard area and what it holds."""
    if not is_url(area):
        remove_path(Path(area))
        return
    fs, root = filesystem(area)
    with remote_errors(area):
        remote.remove_tree(fs, root)


@contextmanager
def _area_removed(area: str) -> Iterator[None]:
    """Remove ``area`` after the block; after a failure, quietly (the failure is what
    the user needs to see; a leftover at a URL goes with the next collect's cleanup)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            _remove_area(area)
        raise
    _remove_area(area)


def shard_name(unit: int) -> str:
    return f"unit-{unit:09d}.npz"


def shard_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The ``.npz`` file of ``arrays`` (what :func:`numpy.load` reads), with fixed member
    times and attributes, so equal arrays always give equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            member.create_system = 3
            with archive.open(member, "w", force_zip64=True) as file:
                np.lib.format.write_array(file, np.asanyarray(value), allow_pickle=False)
    return buffer.getvalue()


def write_shard(area: str, job: UnitJob) -> Shard:
    """Run one unit on a worker and write its shard into ``area`` (see module
    docstring): in a folder, an existing complete shard of the unit is reused; at a
    URL, the shard object is written (again) with one PUT."""
    unit = int(job[3])
    if is_url(area):
        url = remote.join(area, shard_name(unit))
        data = shard_bytes(flatten(run_unit(job)))  # type: ignore[arg-type]
        fs, key = filesystem(url)
        with remote_errors(url):
            fs.pipe_file(key, data)
        _test_death(unit, None)
        return Shard(unit, url)
    final = Path(area) / shard_name(unit)
    if final.is_file() and not final.is_symlink():
        return Shard(unit, str(final))
    data = shard_bytes(flatten(run_unit(job)))  # type: ignore[arg-type]
    tmp = final.with_name(f".{final.name}.{writer_token()}.tmp")
    try:
        with open(tmp, "xb") as file:
            _test_death(unit, file)
            file.write(data)
        fsync_path(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return Shard(unit, str(final))


def _test_death(unit: int, file: Any) -> None:
    """The :data:`DIE_ENV` test hook: a worker killed while it writes a shard (a local
    one: ``file`` is its temporary) or just after (at a URL: ``file`` is None)."""
    plan = os.environ.get(DIE_ENV, "")
    target, _, mode = plan.partition(":")
    if not target.isdigit() or int(target) != unit or not mode:
        return
    if mode != "always":
        marker = Path(mode) / f"died-{unit}"
        if marker.exists():
            return
        marker.touch()
    if file is not None:
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
    """A shard's unit result, from a file or an object (plain arrays only: no pickles
    are loaded)."""
    if is_url(path):
        fs, key = filesystem(path)
        with remote_errors(path):
            source: Any = io.BytesIO(fs.cat_file(key))
    else:
        source = path
    with np.load(source, allow_pickle=False) as data:
        return unflatten({name: data[name] for name in data.files})


def _delete_shard(path: str) -> None:
    if not is_url(path):
        Path(path).unlink()
        return
    fs, key = filesystem(path)
    with remote_errors(path):
        fs.rm_file(key)


@contextmanager
def dask_units(
    scheduler: str, out: Location, jobs: Sequence[UnitJob]
) -> Iterator[Iterator[UnitResult]]:
    """The units' results in job order, computed as tasks on the cluster ``scheduler``
    (``local:N`` or an address); the shard area beside ``out`` exists while the block
    runs and is removed after the cluster is let go (so no task of ours still writes
    into it on a local cluster)."""
    spec = parse_scheduler(scheduler, "--scheduler")
    area = shard_area(out)
    with ExitStack() as stack:
        stack.enter_context(_area_removed(area))  # exits last: after the client is closed
        client = stack.enter_context(dask_client(spec))
        if not is_url(area):  # a prefix at a URL exists with its first object
            Path(area).mkdir(mode=0o700)
        yield _results(client, area, jobs)


def _results(client: Any, area: str, jobs: Sequence[UnitJob]) -> Iterator[UnitResult]:
    """Submit the jobs a window at a time; read, then delete, each shard in order."""
    ahead = TASKS_PER_WORKER * max(1, sum(client.nthreads().values()))
    run = area.rpartition("-")[2][:12]
    window: deque[Any] = deque()
    submitted = 0
    try:
        while window or submitted < len(jobs):
            while submitted < len(jobs) and len(window) < ahead:
                job = jobs[submitted]
                key = f"collect-unit-{job[3]}-{run}"
                window.append(client.submit(write_shard, area, job, key=key))
                submitted += 1
            job = jobs[submitted - len(window)]
            shard: Shard = window.popleft().result()
            path = _shard_location(area, int(job[3]))  # the driver's own name, not the task's
            if shard.unit != job[3] or shard.path != path:
                raise RuntimeError(f"a collect task returned {shard}, not unit {job[3]}'s shard")
            result = read_shard(path)
            _delete_shard(path)
            yield result
    finally:
        if window:
            client.cancel(list(window))


def _shard_location(area: str, unit: int) -> str:
    """Where unit ``unit``'s shard is in ``area`` (as :func:`write_shard` names it)."""
    if is_url(area):
        return remote.join(area, shard_name(unit))
    return str(Path(area) / shard_name(unit))
