"""Dask workers as SLURM jobs (dask-jobqueue), then one hipi-offline command on them.

    python -m hipi_offline.slurm --jobs 4 --cores 16 --memory 64GiB --partition cpu \\
        -- hipi-offline relabel s3://bucket/robot.zarr --tasks goal.yaml

starts a Dask scheduler on this (login or head) node, submits ``--jobs`` SLURM jobs of
``--cores`` one-thread workers each, waits for the first worker (``--wait-seconds``),
runs the command after ``--`` with ``--scheduler tcp://HOST:PORT`` appended, and
cancels the jobs when it ends.
``--print-job-script`` shows the ``sbatch`` script without submitting anything.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from hipi_offline.errors import InputError


@dataclass(frozen=True)
class SlurmJobs:
    """What each SLURM job asks for; every job runs ``cores`` one-thread workers."""

    jobs: int = 1
    cores: int = 8
    memory: str = "32GiB"
    partition: str | None = None
    account: str | None = None
    walltime: str = "02:00:00"
    python: str = "python3"
    extra: tuple[str, ...] = ()
    """More ``#SBATCH`` directives, e.g. ``--exclusive`` or ``--constraint=skylake``."""
    host: str | None = None
    """Address the scheduler listens on (default: dask-jobqueue's choice)."""


def slurm_cluster(settings: SlurmJobs) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` with no jobs submitted yet."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise InputError("SLURM needs dask-jobqueue: pip install 'hipi-offline[scale]'") from None
    options = {"host": settings.host} if settings.host else {}
    return SLURMCluster(
        queue=settings.partition,
        account=settings.account,
        cores=settings.cores,
        processes=settings.cores,
        memory=settings.memory,
        walltime=settings.walltime,
        python=settings.python,
        job_extra_directives=list(settings.extra),
        scheduler_options=options,
    )


def job_script(settings: SlurmJobs) -> str:
    """The ``sbatch`` script each job runs (the scheduler's address included)."""
    cluster = slurm_cluster(settings)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def _arguments(argv: Sequence[str]) -> tuple[SlurmJobs, list[str], bool, float]:
    parser = argparse.ArgumentParser(prog="python -m hipi_offline.slurm", description=__doc__)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--cores", type=int, default=8)
    parser.add_argument("--memory", default="32GiB")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--walltime", default="02:00:00")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--host")
    parser.add_argument("--wait-seconds", type=float, default=3600.0)
    parser.add_argument("--print-job-script", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    values = {field.name: getattr(args, field.name) for field in fields(SlurmJobs)}
    settings = SlurmJobs(**{**values, "extra": tuple(args.extra)})
    if settings.jobs < 1 or settings.cores < 1:
        parser.error("--jobs and --cores must be at least 1")
    if not command and not args.print_job_script:
        parser.error("give the command to run after --")
    return settings, command, args.print_job_script, args.wait_seconds


def main(argv: Sequence[str] | None = None) -> int:
    """Submit the jobs, run the command against them, cancel the jobs."""
    settings, command, print_only, wait = _arguments(sys.argv[1:] if argv is None else argv)
    if print_only:
        print(job_script(settings))
        return 0
    from distributed import Client

    with slurm_cluster(settings) as cluster, Client(cluster) as client:
        cluster.scale(jobs=settings.jobs)
        try:
            client.wait_for_workers(1, timeout=wait)
        except TimeoutError:
            print(f"error: no SLURM worker connected within {wait:g} s", file=sys.stderr)
            return 1
        return subprocess.call([*command, "--scheduler", cluster.scheduler_address])


if __name__ == "__main__":
    raise SystemExit(main())
