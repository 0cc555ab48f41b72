"""The paper's Fig. 5 on the point mass: learning curves of goal reaching with HIPI-RL
against HER (final and future), random relabeling and none (plain SAC), for dense goals
(r = -distance) and sparse goals (r = 0 within 0.1 of the goal, else -1), several seeds.
Resumable: rerun the same command after a kill and finished runs are kept.

    python benchmarks/fig5.py --preset reduced --root runs/fig5 --workers 2 \\
        --png benchmarks/fig5-reduced.png --json benchmarks/fig5-reduced.json
    python benchmarks/fig5.py --preset full --root runs/fig5-full --workers 16

Presets: tiny (seconds, the tests), reduced (4000 steps, 3 seeds: 1200 s of CPU time
with 2 workers, 38 min of wall time on 2 cores loaded 6-9 by other
jobs), full (hours on a 16-core machine). Prints the last
point of every curve (mean ± standard error over seeds) and writes the figure and
the curves' JSON (default: into ``--root``).
Code: hipi_offline/experiments/rl_curves.py.
"""

from __future__ import annotations

import sys

from hipi_offline.experiments.rl_curves import FIG5_PRESETS
from hipi_offline.experiments.rl_curves import main as curves_main


def main(argv: list[str] | None = None) -> int:
    """Run Fig. 5 with these arguments; the exit code (2: bad input, one error line)."""
    return curves_main("fig5", FIG5_PRESETS, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
