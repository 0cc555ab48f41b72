"""The paper's Fig. 7a end to end: collect -> relabel (hipi, no-partition, random,
original) -> behavior cloning (plus task-agnostic BC) -> evaluation on tasks from the
prior, for cheetah, quadruped and desk, several seeds. Resumable: rerun the same
command after a kill and finished stages are skipped.

    python benchmarks/fig7a.py --preset reduced --root runs/fig7 --workers 2
    python benchmarks/fig7a.py --preset full --envs quadruped --root runs/fig7-full-quadruped

Prints a markdown table (mean ± standard error over seeds: task return, desk:
success rate) and writes ``<root>/results.json`` and ``<root>/fig7a.png``.
Results: benchmarks/RESULTS.md, section "Fig. 7a / 7b".
"""

from __future__ import annotations

import sys

from cli.main import exit_code


def main(argv: list[str] | None = None) -> int:
    """``hipi-offline fig7a`` with these arguments (see ``hipi-offline fig7a --help``)."""
    return exit_code(["fig7a", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
