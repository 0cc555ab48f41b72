"""The paper's Fig. 7a end to end: collect -> relabel (hipi, no-partition, random,
original) -> behavior cloning (plus task-agnostic BC) -> evaluation on tasks from the
prior, for cheetah, quadruped and desk, several seeds. Resumable: rerun the same
command after a kill and finished stages are skipped.

    python benchmarks/fig7a.py --preset reduced --root runs/fig7 --workers 2

Prints a markdown table (mean ± standard error over seeds: task return, desk:
success rate) and writes ``<root>/results.json`` and ``<root>/fig7a.png``.
Results: benchmarks/RESULTS.md, section "Fig. 7a / 7b".
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from hipi_offline.errors import InputError
from hipi_offline.experiments import Fig7aConfig, run_fig7a
from hipi_offline.experiments.report import fig7a_table, plot_fig7a


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
        config = Fig7aConfig.preset(args.preset).with_control(
            workers=args.workers, threads=args.threads, progress=not args.no_progress
        )
        results = run_fig7a(args.root, config)
        png = plot_fig7a(results, os.path.join(args.root, "fig7a.png"))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print("\n".join(fig7a_table(results)))
    print(
        f"\n{args.preset}: {seconds / 60:.1f} min, load average {os.getloadavg()[0]:.2f} "
        f"(1 min) at the end; chart {png}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
