"""The paper's Fig. 7b end to end: on cheetah, a constant per-step reward bias b on
the target speeds in [0, 1] (task spec key ``bias``), for b over a range; relabel
with hipi and no-partition, behavior-clone, evaluate with the true (unbiased)
reward on tasks from the prior. HIPI stays flat (its labels do not change with b);
no-partition degrades. Resumable; shares the cheetah data of fig7a.py when both
run with the same preset under one --root.

    python benchmarks/fig7b.py --preset reduced --root runs/fig7 --workers 2

Prints a markdown table (return mean ± standard error over seeds, and the mean
total-variation distance of the labels to the unbiased ones) and writes
``<root>/results.json`` and ``<root>/fig7b.png``.
Results: benchmarks/RESULTS.md, section "Fig. 7a / 7b".
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from hipi_offline.errors import InputError
from hipi_offline.experiments import Fig7bConfig, run_fig7b
from hipi_offline.experiments.report import fig7b_table, plot_fig7b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="reduced", help="tiny, reduced or full")
    parser.add_argument("--root", default="runs/fig7", help="experiment folder")
    parser.add_argument("--workers", type=int, default=2, help="collection/eval processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per BC run")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        config = Fig7bConfig.preset(args.preset).with_control(
            workers=args.workers, threads=args.threads, progress=not args.no_progress
        )
        results = run_fig7b(args.root, config)
        png = plot_fig7b(results, os.path.join(args.root, "fig7b.png"))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print("\n".join(fig7b_table(results)))
    print(
        f"\n{args.preset}: {seconds / 60:.1f} min, load average {os.getloadavg()[0]:.2f} "
        f"(1 min) at the end; chart {png}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
