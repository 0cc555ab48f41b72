"""The collect stage: an environment's expert -> episodes appended to a store.

Deterministic for a seed (each work unit has its own seed sequence), resumable
(an existing store of the same environment and seed is continued), and safe to
kill: finished episodes are committed in batches by crash-safe appends. Units run
here, on a local process pool (``workers``) or as tasks of a Dask cluster
(``scheduler``, :mod:`hipi_offline.collect.distributed`); the store is the same.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hipi_offline.collect.distributed import dask_units, remove_abandoned_shard_areas
from hipi_offline.collect.episodes import (
    Episode,
    ExpertChoice,
    ExpertOptions,
    UnitResult,
    batch_arrays,
    close_workers,
    run_unit,
)
from hipi_offline.collect.space import MAX_STEPS, bytes_per_step, check_space, check_target
from hipi_offline.configs import (
    MAX_WORKERS,
    FieldError,
    check_choice,
    check_int,
    check_number,
    check_optional_int,
    check_seed,
    check_texts,
)
from hipi_offline.envs.base import env_entry, env_names, make_env
from hipi_offline.errors import InputError, ResourceError, one_line
from hipi_offline.experts.base import default_expert, make_expert, unnamed_expert
from hipi_offline.parallel import ordered_map
from hipi_offline.progress import progress_bar
from hipi_offline.scheduler import check_scheduler
from hipi_offline.store.atomic import remove_abandoned_siblings
from hipi_offline.store.backends import COMPRESSIONS
from hipi_offline.store.location import Location, is_url, store_location
from hipi_offline.store.store import (
    TrajectoryStore,
    create_store,
    open_store,
    same_store,
    store_exists,
)


@dataclass(frozen=True)
class CollectConfig:
    """Options of one collection run (mirrors ``hipi-offline collect``)."""

    episodes: int = 100
    """Episodes the store should hold when done (an existing store is continued)."""
    steps: int | None = None
    """Steps per episode; defaults to the environment's ``default_steps``."""
    seed: int = 0
    """Seed of every draw: tasks, initial states, expert noise."""
    workers: int = 1
    """Worker processes (one thread each) of a local process pool; with --scheduler,
    leave it at 1 (local:N sets the workers)."""
    windows: int = 10
    """Play environments (desk): windows cut from each play stream."""
    commit_seconds: float = 20.0
    """Commit finished episodes at least this often."""
    compression: str = "none"
    """Compression of a new store: none, fast or small."""
    expert: tuple[str, ...] = ()
    """The expert: at most one bare name (quadruped: ``trot``, the default, or
    ``mppi``) and its options as ``NAME=VALUE`` (trot: ``noise=0.1``; MPPI:
    ``samples=32``, ...; see datasets/README.md); recorded in the store."""
    stream_out: str | Path | None = None
    """Play environments (desk): also store each whole play stream, from its start to
    its last window's end, as one episode of this second store, with the step field
    ``infos/subtask`` (the sub-task played at each step). Resumed with the main store."""
    scheduler: str | None = None
    """Run the episodes as tasks of a Dask cluster: local:N (N worker processes here)
    or tcp://HOST:PORT (a running scheduler; its workers must share the --out folder,
    or reach an --out URL with their own credentials). Each task writes its own shard
    (beside --out, also at a URL); the store is the same as without."""

    def __post_init__(self) -> None:
        check_int(self.episodes, "episodes")
        check_optional_int(self.steps, "steps")
        check_seed(self.seed)
        check_int(self.workers, "workers", 1, MAX_WORKERS)
        check_int(self.windows, "windows")
        check_number(self.commit_seconds, "commit_seconds", allow_zero=True)  # 0: every unit
        check_choice(self.compression, "compression", COMPRESSIONS)
        check_texts(self.expert, "expert")
        if self.stream_out is not None and not isinstance(self.stream_out, (str, Path)):
            raise FieldError("stream_out", f"expected a store path, got {self.stream_out!r}")
        check_scheduler(self.scheduler)
        if self.scheduler is not None and self.workers != 1:
            raise FieldError(
                "workers",
                f"cannot be combined with scheduler (got {self.workers}); "
                "the cluster's workers run the episodes (local:N starts N)",
                ["scheduler"],
            )


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


def _metadata(
    env_name: str, config: CollectConfig, steps: int, expert: ExpertChoice, stream: bool = False
) -> dict[str, object]:
    """The root attributes that tie a store to these options (``expert``: the checked
    :func:`expert_choice`; ``stream``: the store of whole play streams)."""
    expected: dict[str, object] = {
        "env": env_name,
        "collect_seed": config.seed,
        "collect_steps": steps,
    }
    if env_entry(env_name).plays:
        expected["collect_windows"] = config.windows
    expected["collect_expert"] = expert_label(*expert)
    if stream:
        expected["collect_stream"] = True
    return expected


def _reopen(
    env_name: str,
    out: Path,
    config: CollectConfig,
    steps: int,
    expert: ExpertChoice,
    stream: bool = False,
) -> TrajectoryStore | None:
    """Reopen an existing store for appending, checking that it was collected with
    these options; None when there is none yet (it is created with its first episodes,
    so a new store is never visible without them)."""
    if not store_exists(out):
        return None
    expected = _metadata(env_name, config, steps, expert, stream)
    store = open_store(out, "a")
    attrs = store.attrs
    try:
        recorded = recorded_expert(env_name, attrs.get("collect_expert"))
        if recorded != expected["collect_expert"]:
            again = " ".join(f"--expert {item}" for item in recorded.split())
            raise InputError(
                f"{out}: was collected with the expert {recorded!r}, not "
                f"{expected['collect_expert']!r}; give {again} to resume, or another --out"
            )
        if not stream and attrs.get("collect_stream"):
            raise InputError(f"{out}: holds whole play streams; give it as --stream-out")
        for key, value in expected.items():
            if key != "collect_expert" and attrs.get(key) != value:
                raise InputError(
                    f"{out}: was collected with {key}={attrs.get(key)!r}, not {value!r}; "
                    "use the same options to resume, or another --out"
                )
    except BaseException:
        store.close()
        raise
    return store


def _units(
    env_name: str, steps: int, config: CollectConfig, expert: ExpertChoice, first: int, last: int
) -> Iterator[UnitResult]:
    try:
        yield from ordered_map(
            run_unit, _jobs(env_name, steps, config, expert, first, last), config.workers
        )
    finally:
        close_workers()  # this process's environments, when it ran the units itself


def _jobs(
    env_name: str, steps: int, config: CollectConfig, expert: ExpertChoice, first: int, last: int
) -> list[tuple[str, int, int, int, int, bool, ExpertChoice]]:
    """The :func:`run_unit` arguments of units ``first .. last - 1``."""
    keep_stream = config.stream_out is not None
    return [
        (env_name, steps, config.seed, u, config.windows, keep_stream, expert)
        for u in range(first, last)
    ]


@contextmanager
def _unit_results(
    env_name: str,
    out: Location,
    steps: int,
    config: CollectConfig,
    expert: ExpertChoice,
    first: int,
    last: int,
) -> Iterator[Iterator[UnitResult]]:
    """The results of units ``first .. last - 1`` in unit order: from the Dask cluster
    of ``config.scheduler`` (shards beside ``out``, a path or a URL), else from
    :func:`_units`."""
    if config.scheduler is None or first >= last:  # nothing to run: no cluster either
        results = _units(env_name, steps, config, expert, first, last)
        try:
            yield results
        finally:
            results.close()  # closes this process's environments even after an error
        return
    jobs = _jobs(env_name, steps, config, expert, first, last)
    with dask_units(config.scheduler, out, jobs) as results:
        yield results


def expert_choice(env_name: str, items: tuple[str, ...]) -> ExpertChoice:
    """``--expert`` items as (name, sorted (option, value) pairs): at most one bare
    name (default: the environment's default expert) and ``NAME=VALUE`` options,
    values parsed as int, float or text; checked by building the expert (one line
    naming the option)."""
    name: str | None = None
    parsed: dict[str, Any] = {}
    for item in items:
        option, sep, text = item.partition("=")
        if not sep:
            if name is not None:
                raise InputError(f"--expert: names two experts, {name!r} and {item!r}")
            name = item.strip()
            if not name:
                raise InputError("--expert: expected an expert's name or NAME=VALUE, got ''")
            continue
        if not option.strip():
            raise InputError(f"--expert: expected NAME=VALUE, got {item!r}")
        if option in parsed:
            raise InputError(f"--expert {option}: given twice")
        parsed[option] = _value(text.strip())
    name = name if name is not None else default_expert(env_name)
    try:
        make_expert(env_name, name, **parsed)
    except InputError as err:
        message = str(err)
        raise InputError(
            message if message.startswith("--expert") else f"--expert {message}"
        ) from None
    except (TypeError, ValueError) as err:
        raise InputError(f"--expert: {env_name} expert: {one_line(str(err))}") from None
    return name, tuple(sorted(parsed.items()))


def expert_label(name: str | None, options: ExpertOptions) -> str:
    """The store's ``collect_expert``: the name, then the options (``mppi samples=32``)."""
    return " ".join([str(name), *(f"{key}={value}" for key, value in options)])


def recorded_expert(env_name: str, label: object) -> str:
    """The expert label of a store, in today's form: stores collected before experts
    had names hold only options (or nothing), which were the unnamed expert's."""
    text = label if isinstance(label, str) else ""
    tokens = text.split()
    if not tokens or "=" in tokens[0]:
        tokens.insert(0, unnamed_expert(env_name))
    options = sorted(
        (key, _value(value)) for key, _, value in (t.partition("=") for t in tokens[1:])
    )
    return expert_label(tokens[0], tuple(options))


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _check_options(env_name: str, out: Path, config: CollectConfig) -> None:
    """Options that need no environment but the environment's name (the config checked
    its own values): one-line errors."""
    check_target(out, "--out")
    if config.stream_out is not None:
        if not env_entry(env_name).plays:
            plays = [name for name in env_names() if env_entry(name).plays]
            raise InputError(
                f"--stream-out: only play environments ({', '.join(plays)}) "
                f"record streams, not {env_name!r}"
            )
        stream_out = store_location(config.stream_out)
        check_target(stream_out, "--stream-out")
        if same_store(stream_out, out):
            raise InputError("--stream-out: must be another store than --out")


class _Sink:
    """Pending episodes of one store, appended in batches; a new store is created
    with its first batch (it appears only once it holds committed episodes)."""

    def __init__(
        self,
        path: Path,
        store: TrajectoryStore | None,
        metadata: dict[str, object],
        compression: str,
    ) -> None:
        self.path, self.store, self.metadata = path, store, metadata
        self.compression = compression if store is None else store.attrs.get("compression")
        self.first_unit = 0
        self.pending: list[Episode] = []

    @property
    def episodes(self) -> int:
        return 0 if self.store is None else self.store.num_episodes

    def add(self, unit: int, episodes: list[Episode]) -> None:
        if unit >= self.first_unit:  # units below are stored already
            self.pending += episodes

    def commit(self) -> None:
        if not self.pending:
            return
        arrays = batch_arrays(self.pending)
        if self.store is None:
            env = str(self.metadata["env"])
            with create_store(
                self.path, env=env, metadata=self.metadata, compression=self.compression
            ) as new:
                new.append_episodes(**arrays)
            self.store = open_store(self.path, "a")
        else:
            self.store.append_episodes(**arrays)
        self.pending = []

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def collect(env_name: str, out: str | Path, config: CollectConfig) -> CollectSummary:
    """Collect expert episodes of an environment into a store (see module docstring).

    Every option, the stores to continue, writability and the free space the new
    episodes need are checked before the first rollout; a store is created only with
    its first committed episodes."""
    out = store_location(out)  # a Path, or a URL
    _check_options(env_name, out, config)
    env = make_env(env_name)
    try:
        steps = config.steps if config.steps is not None else env.info.default_steps
        expert = expert_choice(env_name, config.expert)  # fails before any store is made
        if not 1 <= steps <= MAX_STEPS:
            raise InputError(f"--steps: must be from 1 to {MAX_STEPS:,}, got {steps}")
        step_bytes = bytes_per_step(env)
    finally:
        env.close()
    per_unit = config.windows if env_entry(env_name).plays else 1
    started = time.perf_counter()
    targets = [(out, False)]
    if config.stream_out is not None:
        targets.append((store_location(config.stream_out), True))
    with ExitStack() as stack:
        sinks = []
        for path, stream in targets:  # check existing stores before writing anything
            store = _reopen(env_name, path, config, steps, expert, stream)
            metadata = _metadata(env_name, config, steps, expert, stream)
            sinks.append(_Sink(path, store, metadata, config.compression))
            stack.callback(sinks[-1].close)
        have = sinks[0].episodes
        if have % per_unit:
            raise InputError(f"{out}: holds {have} episodes, not whole play streams of {per_unit}")
        sinks[0].first_unit = have // per_unit
        if len(sinks) > 1:
            sinks[1].first_unit = sinks[1].episodes
        first = min(sink.first_unit for sink in sinks)
        last = max(first, -(-config.episodes // per_unit))
        for sink, (path, stream) in zip(sinks, targets, strict=True):
            rows = (last - sink.first_unit) * (1 if stream else per_unit) * steps
            rows *= config.windows if stream else 1  # a stream holds at least its windows
            check_space(path, rows * step_bytes, str(sink.compression), sink.store is not None)
            if not is_url(path):  # (object stores: no temporaries beside the store)
                remove_abandoned_siblings(path)  # what killed writers left beside the store
        remove_abandoned_shard_areas(out)  # what killed --scheduler drivers left
        try:
            with _unit_results(env_name, out, steps, config, expert, first, last) as results:
                _collect_units(env_name, config, sinks, results, first, last, per_unit)
        except ResourceError as err:
            if config.scheduler is None:
                raise
            cause = str(err).removesuffix("; nothing was committed")
            raise ResourceError(
                f"{cause}; {out} keeps the {sinks[0].episodes} episodes committed before "
                "(run again to resume)"
            ) from None
        total = sinks[0].episodes
        streams = sinks[-1].episodes if len(sinks) > 1 else 0
    stream_path = None if config.stream_out is None else str(config.stream_out)
    seconds = time.perf_counter() - started
    return CollectSummary(
        env_name, str(out), total - have, total, steps, seconds, stream_path, streams
    )


def _collect_units(
    env_name: str,
    config: CollectConfig,
    sinks: list[_Sink],
    results: Iterator[UnitResult],
    first: int,
    last: int,
    per_unit: int,
) -> None:
    """Commit the results of units ``first .. last - 1`` (in unit order) to the sinks."""
    last_commit = time.perf_counter()
    with progress_bar(
        total=max(0, last - sinks[0].first_unit) * per_unit,
        desc=f"collect {env_name}",
        unit="ep",
    ) as bar:
        for unit, result in enumerate(results, first):
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
