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

import sys

from cli.main import exit_code


def main(argv: list[str] | None = None) -> int:
    """``hipi-offline fig7b`` with these arguments (see ``hipi-offline fig7b --help``)."""
    return exit_code(["fig7b", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
