"""The paper's Fig. 6 on the point mass: learning curves of general task families with
HIPI-RL against random relabeling and none (plain SAC), several seeds: discrete goals
(six regions of the square, r = 1 inside), linear rewards (r = w · position, w on the
unit circle) and goals with a commanded margin (task (g, m), r = 0 within m of g, else
-1). HER does not apply to the first two. Resumable: rerun the same command after a
kill and finished runs are kept.

    python benchmarks/fig6.py --preset reduced --root runs/fig6 --workers 2 \\
        --png benchmarks/fig6-reduced.png --json benchmarks/fig6-reduced.json
    python benchmarks/fig6.py --preset full --root runs/fig6-full --workers 16

Presets: tiny (seconds, the tests), reduced (4000 steps, 3 seeds: 980 s of CPU time
with 2 workers, 17 min of wall time on 2 cores loaded 3-6 by other
jobs), full (hours on a 16-core machine). Prints the last
point of every curve (mean ± standard error over seeds) and writes the figure and
the curves' JSON (default: into ``--root``).
Code: hipi_offline/experiments/rl_curves.py.
"""

from __future__ import annotations

import sys

from hipi_offline.experiments.rl_curves import FIG6_PRESETS
from hipi_offline.experiments.rl_curves import main as curves_main


def main(argv: list[str] | None = None) -> int:
    """Run Fig. 6 with these arguments; the exit code (2: bad input, one error line)."""
    return curves_main("fig6", FIG6_PRESETS, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
