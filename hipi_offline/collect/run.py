"""The collect stage: an environment's expert -> episodes appended to a store.

Deterministic for a seed (each work unit has its own seed sequence), resumable
(an existing store of the same environment and seed is continued), and safe to
kill: finished episodes are committed in batches by crash-safe appends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hipi_offline.collect.episodes import (
    PLAY_ENVS,
    Episode,
    UnitResult,
    batch_arrays,
    close_workers,
    run_unit,
)
from hipi_offline.envs.base import make_env
from hipi_offline.errors import InputError
from hipi_offline.experts.base import make_expert
from hipi_offline.parallel import ordered_map
from hipi_offline.progress import progress_bar
from hipi_offline.store.store import TrajectoryStore, create_store, open_store


@dataclass(frozen=True)
class CollectConfig:
    """Options of one collection run (mirrors ``hipi-offline collect``)."""

    episodes: int
    """Episodes the store should hold when done (an existing store is continued)."""
    steps: int | None = None
    """Steps per episode; defaults to the environment's ``default_steps``."""
    seed: int = 0
    """Seed of every draw: tasks, initial states, expert noise."""
    workers: int = 1
    """Worker processes (one thread each)."""
    windows: int = 10
    """Play environments (desk): windows cut from each play stream."""
    commit_seconds: float = 20.0
    """Commit finished episodes at least this often."""
    compression: str = "none"
    """Compression of a new store: none, fast or small."""
    expert: tuple[str, ...] = ()
    """Options of the expert as ``NAME=VALUE`` (MPPI: ``samples=32``, ``horizon=15``,
    ...; see ``hipi_offline.experts.mppi.MppiConfig``); recorded in the store."""
    stream_out: str | Path | None = None
    """Play environments (desk): also store each whole play stream, from its start to
    its last window's end, as one episode of this second store, with the step field
    ``infos/subtask`` (the sub-task played at each step). Resumed with the main store."""


@dataclass(frozen=True)
class CollectSummary:
    env: str
    path: str
    collected: int
    total: int
    steps: int
    seconds: float
    stream_path: str | None = None
    """The store of whole play streams, if one was written."""
    streams: int = 0
    """Play streams it holds."""

    def lines(self) -> list[str]:
        rate = self.collected * self.steps / max(self.seconds, 1e-9)
        lines = [
            f"collected {self.collected} {self.env} episodes of {self.steps} steps in "
            f"{self.seconds:.1f} s ({rate:,.0f} env steps/s); {self.path} now holds {self.total}"
        ]
        if self.stream_path is not None:
            lines.append(f"{self.stream_path} holds {self.streams} whole play streams")
        return lines


def _prepare(
    env_name: str, out: Path, config: CollectConfig, steps: int, stream: bool = False
) -> TrajectoryStore:
    """Create or reopen a store, checking that it was collected with these options
    (``stream``: the store of whole play streams)."""
    expected: dict[str, object] = {
        "env": env_name,
        "collect_seed": config.seed,
        "collect_steps": steps,
    }
    if env_name in PLAY_ENVS:
        expected["collect_windows"] = config.windows
    if config.expert:
        expected["collect_expert"] = " ".join(sorted(config.expert))
    if stream:
        expected["collect_stream"] = True
    if not out.exists():
        create_store(out, env=env_name, metadata=expected, compression=config.compression).close()
    store = open_store(out, "a")
    attrs = store.attrs
    if not config.expert and attrs.get("collect_expert"):
        store.close()
        raise InputError(f"{out}: was collected with --expert {attrs['collect_expert']}")
    if not stream and attrs.get("collect_stream"):
        store.close()
        raise InputError(f"{out}: holds whole play streams; give it as --stream-out")
    for key, value in expected.items():
        if attrs.get(key) != value:
            store.close()
            raise InputError(
                f"{out}: was collected with {key}={attrs.get(key)!r}, not {value!r}; "
                "use the same options to resume, or another --out"
            )
    return store


def _units(
    env_name: str, steps: int, config: CollectConfig, first: int, last: int
) -> Iterator[UnitResult]:
    keep_stream = config.stream_out is not None
    options = expert_options(env_name, config.expert)
    jobs = [
        (env_name, steps, config.seed, u, config.windows, keep_stream, options)
        for u in range(first, last)
    ]
    try:
        yield from ordered_map(run_unit, jobs, config.workers)
    finally:
        close_workers()  # this process's environments, when it ran the units itself


def expert_options(env_name: str, pairs: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    """``NAME=VALUE`` strings as sorted (name, value) pairs, values parsed as int, float
    or text; checked by building the expert."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise InputError(f"--expert: expected NAME=VALUE, got {pair!r}")
        parsed[name] = _value(text)
    if parsed:
        try:
            make_expert(env_name, **parsed)
        except TypeError as err:
            raise InputError(f"--expert: {env_name} expert: {err}") from None
    return tuple(sorted(parsed.items()))


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _check_options(env_name: str, out: Path, config: CollectConfig) -> None:
    """Options that need no environment: one-line errors."""
    if config.episodes < 1:
        raise InputError(f"--episodes: must be positive, got {config.episodes}")
    if config.workers < 1:
        raise InputError(f"--workers: must be positive, got {config.workers}")
    if config.windows < 1:
        raise InputError(f"--windows: must be positive, got {config.windows}")
    if config.stream_out is not None:
        if env_name not in PLAY_ENVS:
            raise InputError(
                f"--stream-out: only play environments ({', '.join(sorted(PLAY_ENVS))}) "
                f"record streams, not {env_name!r}"
            )
        if Path(config.stream_out).resolve() == out.resolve():
            raise InputError("--stream-out: must be another store than --out")


class _Sink:
    """Pending episodes of one store, appended in batches."""

    def __init__(self, store: TrajectoryStore, first_unit: int) -> None:
        self.store, self.first_unit = store, first_unit
        self.pending: list[Episode] = []

    def add(self, unit: int, episodes: list[Episode]) -> None:
        if unit >= self.first_unit:  # units below are stored already
            self.pending += episodes

    def commit(self) -> None:
        if self.pending:
            self.store.append_episodes(**batch_arrays(self.pending))
            self.pending = []


def collect(env_name: str, out: str | Path, config: CollectConfig) -> CollectSummary:
    """Collect expert episodes of an environment into a store (see module docstring)."""
    out = Path(out)
    _check_options(env_name, out, config)
    env = make_env(env_name)
    steps = config.steps if config.steps is not None else env.info.default_steps
    env.close()
    expert_options(env_name, config.expert)  # bad options fail before any store is made
    if steps < 1:
        raise InputError(f"--steps: must be positive, got {steps}")
    per_unit = config.windows if env_name in PLAY_ENVS else 1
    started = time.perf_counter()
    targets = [(out, False)]
    if config.stream_out is not None:
        targets.append((Path(config.stream_out), True))
    for path, stream in targets:  # check existing stores before creating any
        if path.exists():
            _prepare(env_name, path, config, steps, stream).close()
    with ExitStack() as stores:
        store = stores.enter_context(_prepare(env_name, out, config, steps))
        have = store.num_episodes
        if have % per_unit:
            raise InputError(f"{out}: holds {have} episodes, not whole play streams of {per_unit}")
        sinks = [_Sink(store, have // per_unit)]
        if config.stream_out is not None:
            streams = stores.enter_context(
                _prepare(env_name, Path(config.stream_out), config, steps, stream=True)
            )
            sinks.append(_Sink(streams, streams.num_episodes))
        first = min(sink.first_unit for sink in sinks)
        last = max(first, -(-config.episodes // per_unit))
        last_commit = time.perf_counter()
        with progress_bar(
            total=max(0, last - sinks[0].first_unit) * per_unit,
            desc=f"collect {env_name}",
            unit="ep",
        ) as bar:
            for unit, result in enumerate(_units(env_name, steps, config, first, last), first):
                sinks[0].add(unit, result.episodes)
                if result.stream is not None and len(sinks) > 1:
                    sinks[1].add(unit, [result.stream])
                if unit >= sinks[0].first_unit:
                    bar.update(len(result.episodes))
                if time.perf_counter() - last_commit >= config.commit_seconds:
                    for sink in sinks:  # windows first: a kill between leaves streams behind
                        sink.commit()
                    last_commit = time.perf_counter()
            for sink in sinks:
                sink.commit()
        total = store.num_episodes
        streams = sinks[-1].store.num_episodes if len(sinks) > 1 else 0
    stream_path = None if config.stream_out is None else str(config.stream_out)
    seconds = time.perf_counter() - started
    return CollectSummary(
        env_name, str(out), total - have, total, steps, seconds, stream_path, streams
    )
