"""The collect stage: an environment's expert -> episodes appended to a store.

Deterministic for a seed (each work unit has its own seed sequence), resumable
(an existing store of the same environment and seed is continued), and safe to
kill: finished episodes are committed in batches by crash-safe appends.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from hipi_offline.collect.episodes import PLAY_ENVS, Episode, batch_arrays, close_workers, run_unit
from hipi_offline.envs.base import make_env
from hipi_offline.errors import InputError
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


@dataclass(frozen=True)
class CollectSummary:
    env: str
    path: str
    collected: int
    total: int
    steps: int
    seconds: float

    def lines(self) -> list[str]:
        rate = self.collected * self.steps / max(self.seconds, 1e-9)
        return [
            f"collected {self.collected} {self.env} episodes of {self.steps} steps in "
            f"{self.seconds:.1f} s ({rate:,.0f} env steps/s); {self.path} now holds {self.total}"
        ]


def _prepare(env_name: str, out: Path, config: CollectConfig, steps: int) -> TrajectoryStore:
    expected = {"env": env_name, "collect_seed": config.seed, "collect_steps": steps}
    if config.windows < 1:
        raise InputError(f"--windows: must be positive, got {config.windows}")
    if env_name in PLAY_ENVS:
        expected["collect_windows"] = config.windows
    if not out.exists():
        create_store(out, env=env_name, metadata=expected, compression=config.compression).close()
    store = open_store(out, "a")
    attrs = store.attrs
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
) -> Iterator[list[Episode]]:
    jobs = [(env_name, steps, config.seed, u, config.windows) for u in range(first, last)]
    if config.workers <= 1:
        try:
            yield from map(run_unit, jobs)
        finally:
            close_workers()
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(config.workers) as pool:
        yield from pool.imap(run_unit, jobs)


def collect(env_name: str, out: str | Path, config: CollectConfig) -> CollectSummary:
    """Collect expert episodes of an environment into a store (see module docstring)."""
    out = Path(out)
    if config.episodes < 1:
        raise InputError(f"--episodes: must be positive, got {config.episodes}")
    if config.workers < 1:
        raise InputError(f"--workers: must be positive, got {config.workers}")
    env = make_env(env_name)
    steps = config.steps if config.steps is not None else env.info.default_steps
    env.close()
    if steps < 1:
        raise InputError(f"--steps: must be positive, got {steps}")
    per_unit = config.windows if env_name in PLAY_ENVS else 1
    started = time.perf_counter()
    with _prepare(env_name, out, config, steps) as store:
        have = store.num_episodes
        if have % per_unit:
            raise InputError(f"{out}: holds {have} episodes, not whole play streams of {per_unit}")
        first, last = have // per_unit, -(-config.episodes // per_unit)
        pending: list[Episode] = []
        last_commit = time.perf_counter()
        with tqdm(
            total=max(0, last - first) * per_unit, desc=f"collect {env_name}", unit="ep"
        ) as bar:
            for episodes in _units(env_name, steps, config, first, max(first, last)):
                pending += episodes
                bar.update(len(episodes))
                if time.perf_counter() - last_commit >= config.commit_seconds:
                    store.append_episodes(**batch_arrays(pending))
                    pending, last_commit = [], time.perf_counter()
            if pending:
                store.append_episodes(**batch_arrays(pending))
        total = store.num_episodes
    return CollectSummary(
        env_name, str(out), total - have, total, steps, time.perf_counter() - started
    )
