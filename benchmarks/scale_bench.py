"""Scaling benchmark: relabel and collect on 1..N Dask workers, BC on 1..N torchrun ranks.

Every figure is a rate measured in this one run, and every parallel efficiency a ratio of
two rates of this run: efficiency(N) = rate(N workers) / (N x rate(1 worker)).

* **relabel**: ``relabel()`` of a synthetic store (``--relabel-episodes`` x
  ``--relabel-steps``, spec ``synthetic-velocity``) in this process (no scheduler), and
  on a LocalCluster of N one-thread workers that is started once and reached by its
  ``tcp://`` address (so the cluster's start-up is not in the rate; it is reported
  apart, as ``start s``). Each cluster relabels once to warm its workers up, then the
  best of ``--repeats`` is kept.
* **collect**: ``collect cheetah`` of ``--collect-episodes`` episodes serially (no
  scheduler, one process) and on the same warm clusters, each into a fresh store.
* **ceiling**: what the machine itself allows: a CPU-bound float64 kernel (the
  posterior's logsumexp and top-k) in N independent processes at once, without Dask or
  shared data; **ceiling-memory**: the same for a memory-bound kernel (float32 steps
  to float64 and summed, as the returns pass does). A stage's efficiency is judged
  against these rows of the same run.
* **bc**: ``train-bc`` under ``torchrun --nproc-per-node N`` at one global batch
  (:func:`hipi_offline.bc.scaling.measure_bc`: median rate of rank 0's logging windows
  after the first).

    python benchmarks/scale_bench.py --workers 1,2            # this 2-core machine
    python benchmarks/scale_bench.py --workers 1,2,4,8,16     # a 16-core machine

Prints a markdown report (paste it into RESULTS.md) and writes ``--json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Rate:
    """One measured configuration of one stage."""

    stage: str
    where: str
    """``process`` (no scheduler), ``dask:N`` or ``torchrun:N``."""
    workers: int
    units_per_s: float
    """steps/s (relabel, collect) or samples/s (bc)."""
    seconds: float
    start_s: float = 0.0
    """Start-up of the cluster, not in the rate."""
    cores: float = 0.0
    """CPU-seconds per wall-second of the doing processes (this one, or the Dask
    workers): a one-thread worker that reads ahead on a second thread uses more than 1."""


Timing = tuple[float, float]
"""(wall seconds, CPU cores busy on average)."""


def _best(run: Callable[[], Timing], repeats: int) -> Timing:
    return min((run() for _ in range(repeats)), key=lambda timing: timing[0])


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(action: Callable[[], object], client: Any = None) -> Timing:
    """Run ``action``; its wall time and the CPU cores it kept busy in this process
    (no client) or summed over the client's workers."""

    def cpu() -> float:
        if client is None:
            return _cpu_seconds()
        return sum(client.run(_cpu_seconds).values())

    cpu0, started = cpu(), time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    return seconds, (cpu() - cpu0) / seconds


@contextmanager
def _cluster(workers: int) -> Iterator[tuple[Any, float]]:
    """A LocalCluster of ``workers`` one-thread processes; yields (client, start s)."""
    from hipi_offline.scheduler import dask_client, parse_scheduler

    started = time.perf_counter()
    with dask_client(parse_scheduler(f"local:{workers}")) as client:
        client.wait_for_workers(workers)
        yield client, time.perf_counter() - started


def _kernel(seconds: float) -> float:
    """Work units per second of a CPU-bound float64 kernel (logsumexp and top-k over a
    4096 x 1024 block, as the posterior does) on one torch thread, for ``seconds``."""
    import torch

    torch.set_num_threads(1)
    block = torch.randn(4096, 1024, dtype=torch.float64)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.logsumexp(block, dim=1)
        torch.topk(block, 32, dim=1)
        done += 1
    return done / (time.perf_counter() - started)


def _stream_kernel(seconds: float) -> float:
    """Passes per second over 256 MB of float32 turned into float64 and summed (what the
    returns pass does with step fields: memory-bound) on one torch thread."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    steps = torch.from_numpy(np.random.default_rng(0).random(64_000_000, dtype=np.float32))
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        steps.to(torch.float64).sum()
        done += 1
    return done / (time.perf_counter() - started)


def ceiling_rates(root: Path, args: argparse.Namespace, workers: list[int]) -> list[Rate]:
    """The machine's own ceiling: the kernel in N independent processes at once, no Dask,
    no shared data. efficiency(N) below 1 here is the machine (shared caches, memory
    bandwidth, turbo, other tenants), not the toolkit."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    rates = []
    for stage, kernel in (("ceiling", _kernel), ("ceiling-memory", _stream_kernel)):
        for n in workers:
            with context.Pool(n) as pool:
                pool.map(kernel, [0.5] * n)  # start-up and warm-up
                per_process = pool.map(kernel, [args.ceiling_seconds] * n)
            seconds = args.ceiling_seconds
            rates.append(Rate(stage, f"processes:{n}", n, sum(per_process), seconds))
    return rates


def relabel_rates(root: Path, args: argparse.Namespace, workers: list[int]) -> list[Rate]:
    from hipi_offline.relabel.run import RelabelConfig, relabel
    from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

    store = root / "relabel.h5"
    episodes, steps = args.relabel_episodes, args.relabel_steps
    make_synthetic_store(store, SyntheticConfig(episodes=episodes, steps=steps))
    total = episodes * steps

    def timed(client: Any = None) -> Timing:
        scheduler = None if client is None else client.scheduler.address
        config = RelabelConfig(tasks="synthetic-velocity", overwrite=True, scheduler=scheduler)
        return _timed(lambda: relabel(store, config), client)

    timed()  # warm this process (imports, first torch call)
    seconds, cores = _best(timed, args.repeats)
    rates = [Rate("relabel", "process", 1, total / seconds, seconds, 0.0, cores)]
    for n in workers:
        with _cluster(n) as (client, start):
            timed(client)  # warm the workers
            seconds, cores = _best(lambda c=client: timed(c), args.repeats)
        rates.append(Rate("relabel", f"dask:{n}", n, total / seconds, seconds, start, cores))
    return rates


def collect_rates(root: Path, args: argparse.Namespace, workers: list[int]) -> list[Rate]:
    from hipi_offline.collect.run import CollectConfig, collect

    episodes, steps = args.collect_episodes, args.collect_steps
    runs = iter(range(10**6))

    def timed(client: Any = None, count: int = episodes) -> Timing:
        out = root / f"collect-{next(runs)}.h5"
        scheduler = None if client is None else client.scheduler.address
        config = CollectConfig(episodes=count, steps=steps, scheduler=scheduler)
        timing = _timed(lambda: collect("cheetah", out, config), client)
        shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink()
        return timing

    timed(None, 1)
    seconds, cores = _best(timed, args.repeats)
    rates = [Rate("collect", "process", 1, episodes * steps / seconds, seconds, 0.0, cores)]
    for n in workers:
        with _cluster(n) as (client, start):
            timed(client, 2 * n)  # every worker builds its environment once
            seconds, cores = _best(lambda c=client: timed(c), args.repeats)
        rate = episodes * steps / seconds
        rates.append(Rate("collect", f"dask:{n}", n, rate, seconds, start, cores))
    return rates


def bc_rates(root: Path, args: argparse.Namespace, workers: list[int]) -> list[Rate]:
    from hipi_offline.bc.scaling import measure_bc
    from hipi_offline.relabel.run import RelabelConfig, relabel
    from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

    store = root / "bc.h5"
    make_synthetic_store(store, SyntheticConfig(episodes=200, steps=200))
    relabel(store, RelabelConfig(tasks="synthetic-velocity"))
    rates = []
    for n in workers:
        measured = measure_bc(
            store,
            root / f"bc-{n}",
            processes=n,
            steps=args.bc_steps,
            batch_size=args.bc_batch,
            log_every=args.bc_steps // 4,
        )
        seconds = args.bc_steps / measured.steps_per_s
        rates.append(Rate("bc", f"torchrun:{n}", n, measured.samples_per_s, seconds))
    return rates


def efficiency(rates: list[Rate]) -> dict[str, float]:
    """rate(N) / (N x rate(1)) per distributed configuration, against its 1-worker row."""
    one = {r.stage: r.units_per_s for r in rates if r.workers == 1 and r.where != "process"}
    return {
        f"{r.stage} {r.where}": r.units_per_s / (r.workers * one[r.stage])
        for r in rates
        if r.where != "process" and r.stage in one
    }


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def report(rates: list[Rate], header: dict[str, str]) -> str:
    eff = efficiency(rates)
    lines = [f"- {key}: {value}" for key, value in header.items()]
    lines += [
        "",
        "| stage | where | workers | rate (steps/s; bc: samples/s; ceilings: kernels/s) "
        "| seconds | cluster start s | cores busy "
        "| efficiency |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rates:
        e = eff.get(f"{r.stage} {r.where}")
        lines.append(
            f"| {r.stage} | {r.where} | {r.workers} | {_figure(r.units_per_s)} | {r.seconds:.2f} "
            f"| {r.start_s:.1f} | {r.cores:.2f} | {'' if e is None else f'{e:.2f}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--stages", default="ceiling,relabel,collect,bc")
    parser.add_argument("--ceiling-seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--relabel-episodes", type=int, default=10_000)
    parser.add_argument("--relabel-steps", type=int, default=200)
    parser.add_argument("--collect-episodes", type=int, default=16)
    parser.add_argument("--collect-steps", type=int, default=200)
    parser.add_argument("--bc-steps", type=int, default=400)
    parser.add_argument("--bc-batch", type=int, default=4096)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # bars would bury the report
    workers = [int(n) for n in args.workers.split(",")]
    stages = args.stages.split(",")
    measure = {
        "ceiling": ceiling_rates,
        "relabel": relabel_rates,
        "collect": collect_rates,
        "bc": bc_rates,
    }
    header = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "command": "python benchmarks/scale_bench.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v),
    }
    rates: list[Rate] = []
    with tempfile.TemporaryDirectory(prefix="hipi-scale-") as folder:
        for stage in stages:
            rates += measure[stage](Path(folder), args, workers)
            print(report(rates, header), flush=True)
    header["load after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    text = report(rates, header)
    print("\n" + text)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rates], indent=1))


if __name__ == "__main__":
    main()
