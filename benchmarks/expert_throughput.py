"""Expert throughput through the real ``collect`` path, per environment and worker count.

For each environment and each ``--workers`` count, runs ``collect`` into a temporary
store with enough episodes for ``--units-per-worker`` work units per worker (cheetah
3, quadruped 500, desk 15; a unit is one episode for cheetah and quadruped, one play
stream of ``--windows`` windows for desk), and reports: stored env steps per second
(wall clock, worker start-up included, so a lower bound for long runs), the scaling
against one worker, and the projected time of the benchmark-size dataset (cheetah
500 x 200 steps, quadruped 1000 x 200, desk 300 windows x 50) at that rate. Desk
also reports the play steps simulated (the stream rows, windows plus the waits between
them). The 1-minute load average before and after each row tells how busy the machine
was. Prints markdown.

    python benchmarks/expert_throughput.py                          # 1 and 2 workers
    python benchmarks/expert_throughput.py --workers 1,2,4,8,16     # a 16-core machine
    python benchmarks/expert_throughput.py --envs quadruped          # the trot, 1000 x 200
    python benchmarks/expert_throughput.py --envs quadruped --expert mppi --units-per-worker 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_machine import cpu_description

from hipi_offline.collect import CollectConfig, collect
from hipi_offline.envs import env_entry
from hipi_offline.store import open_store

BENCHMARK_SETS = {"cheetah": (500, 200), "quadruped": (1000, 200), "desk": (300, 50)}
"""Benchmark-size datasets (episodes, steps per episode), as in datasets/README.md."""
DEFAULT_UNITS = {"cheetah": 3, "quadruped": 500, "desk": 15}
"""Work units per worker: desk streams take about a third of a second and a trot
episode of 200 steps about 0.2 s, so start-up (about 5 s per spawned worker) would
dominate a few of them; 500 quadruped units on 2 workers are the whole benchmark set
(with ``--expert mppi``, give ``--units-per-worker 3``)."""


@dataclass(frozen=True)
class Row:
    env: str
    workers: int
    episodes: int
    steps: int
    seconds: float
    simulated: int
    load_before: float
    load_after: float

    @property
    def rate(self) -> float:
        """Stored env steps per second."""
        return self.episodes * self.steps / self.seconds


def measure(
    env: str, workers: int, units_per_worker: int, windows: int, seed: int, expert: tuple[str, ...]
) -> Row:
    """One ``collect`` run of ``units_per_worker * workers`` units into a fresh store."""
    steps = BENCHMARK_SETS[env][1]
    plays = env_entry(env).plays  # a play unit is one stream cut into ``windows`` episodes
    per_unit = windows if plays else 1
    episodes = units_per_worker * workers * per_unit
    with tempfile.TemporaryDirectory() as folder:
        out, streams = Path(folder) / "data.h5", Path(folder) / "streams.h5"
        config = CollectConfig(
            episodes=episodes,
            steps=steps,
            seed=seed,
            workers=workers,
            windows=windows,
            commit_seconds=1e9,
            expert=expert,
            stream_out=streams if plays else None,
        )
        load = os.getloadavg()[0]
        summary = collect(env, out, config)
        simulated = episodes * steps
        if plays:
            with open_store(streams) as store:
                simulated = store.num_steps
    return Row(env, workers, episodes, steps, summary.seconds, simulated, load, os.getloadavg()[0])


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def table(rows: list[Row]) -> list[str]:
    """Markdown rows: rate, scaling against the 1-worker row, projected time."""
    lines = [
        "| env | workers | episodes x steps | seconds | stored steps/s | scaling vs 1 "
        "| simulated steps/s | benchmark set | projected time | load before/after |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for row in rows:
        base = next((r for r in rows if r.env == row.env and r.workers == 1), None)
        scaling = f"{row.rate / base.rate:.2f}x" if base else "-"
        episodes, steps = BENCHMARK_SETS[row.env]
        projected = episodes * steps / row.rate
        lines.append(
            f"| {row.env} | {row.workers} | {row.episodes} x {row.steps} | {row.seconds:.1f} "
            f"| {row.rate:,.1f} | {scaling} | {row.simulated / row.seconds:,.1f} "
            f"| {episodes} x {steps} | {_duration(projected)} "
            f"| {row.load_before:.2f} / {row.load_after:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="cheetah,quadruped,desk")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument(
        "--units-per-worker",
        type=int,
        default=None,
        help="episodes (desk: streams) per worker [cheetah 3, quadruped 500, desk 15]",
    )
    parser.add_argument("--windows", type=int, default=10, help="desk: windows per stream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--expert",
        action="append",
        default=[],
        help="expert name or option NAME=VALUE, as collect's",
    )
    args = parser.parse_args()
    envs = [e for e in args.envs.split(",") if e]
    unknown = sorted(set(envs) - set(BENCHMARK_SETS))
    counts = sorted({int(w) for w in args.workers.split(",") if w})
    if unknown or not counts or min(counts) < 1 or (args.units_per_worker or 1) < 1:
        parser.error(f"--envs from {sorted(BENCHMARK_SETS)}; positive --workers and units")
    options = f"; expert options {' '.join(args.expert)}" if args.expert else ""
    print(f"machine: {cpu_description()}; {time.strftime('%Y-%m-%d %H:%M')}{options}\n")
    rows = []
    for env in envs:
        for workers in counts:
            units = args.units_per_worker or DEFAULT_UNITS[env]
            rows.append(measure(env, workers, units, args.windows, args.seed, tuple(args.expert)))
            print(f"  {env} x {workers}: {rows[-1].rate:,.1f} steps/s", flush=True)
    print("\n" + "\n".join(table(rows)))


if __name__ == "__main__":
    main()
