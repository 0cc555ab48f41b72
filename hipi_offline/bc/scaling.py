"""Behavior-cloning throughput with 1..N torchrun processes at one global batch, for
``benchmarks/scale_bench.py``: :func:`measure_bc` runs
``torchrun --standalone --nproc-per-node N --no-python hipi-offline train-bc ...`` in a
subprocess and reads the rate from the run's metrics (rank 0's wall clock per
logging window; the first window, with start-up, is left out)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hipi_offline.errors import ResourceError, one_line


@dataclass(frozen=True)
class BCThroughput:
    """One measured train-bc run."""

    processes: int
    batch_size: int
    """The global batch (each rank trains on batch_size / processes rows)."""
    steps_per_s: float
    """Median over the logging windows after the first."""
    samples_per_s: float
    windows: int
    """Logging windows the median is taken over."""


def train_command(processes: int, args: list[str]) -> list[str]:
    """The command line of a train-bc run with ``processes`` torchrun ranks."""
    program = Path(sys.executable).with_name("hipi-offline")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc-per-node", str(processes), "--no-python"]
    return [*launcher, str(program) if program.exists() else "hipi-offline", "train-bc", *args]


def window_rates(metrics: Path) -> list[float]:
    """samples/s of every logging window of a run's metrics.csv, in order."""
    rows = metrics.read_text().splitlines()[1:]
    return [float(row.split(",")[3]) for row in rows]


def measure_bc(
    store: str | Path,
    out: Path,
    *,
    processes: int,
    labels: str = "hipi",
    steps: int = 600,
    batch_size: int = 256,
    hidden: str = "256,256,256",
    log_every: int = 100,
    device: str = "cpu",
    threads: int = 1,
    timeout: float = 1800,
) -> BCThroughput:
    """Train ``steps`` steps with ``processes`` ranks into the fresh run folder ``out``
    (overwritten) and return the measured rate. ``threads`` torch threads per rank
    (``OMP_NUM_THREADS`` too)."""
    if steps < 2 * log_every:
        raise ValueError("steps: need at least two logging windows")
    args = [
        str(store), "--labels", labels, "--out", str(out), "--steps", str(steps),
        "--batch-size", str(batch_size), "--hidden", hidden, "--log-every", str(log_every),
        "--checkpoint-every", str(steps), "--device", device, "--threads", str(threads),
        "--no-progress", "--overwrite",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    done = subprocess.run(
        train_command(processes, args), env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        raise ResourceError(
            f"train-bc with {processes} processes failed: "
            f"{one_line(tail[0] if tail else done.stderr[-300:], 300)}"
        )
    rates = window_rates(out / "metrics.csv")[1:]
    samples = statistics.median(rates)
    return BCThroughput(processes, batch_size, samples / batch_size, samples, len(rates))


def main(argv: list[str] | None = None) -> None:
    """``python -m hipi_offline.bc.scaling STORE OUT_ROOT [PROCESSES...]``: print the
    steps/s of each process count (defaults 1 2)."""
    args = sys.argv[1:] if argv is None else argv
    store, root = args[0], Path(args[1])
    base = None
    for count in [int(a) for a in args[2:]] or [1, 2]:
        found = measure_bc(store, root / f"bc-{count}", processes=count)
        base = base or found.steps_per_s
        print(
            f"{count} processes: {found.steps_per_s:.1f} steps/s, {found.samples_per_s:,.0f} "
            f"samples/s (batch {found.batch_size}), speed-up {found.steps_per_s / base:.2f}"
        )


if __name__ == "__main__":
    main()
