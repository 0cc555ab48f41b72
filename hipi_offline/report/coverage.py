"""Which tasks a label set's data teaches: each candidate's coverage against the uniform
share, sorted into well, poorly and not covered, and said in plain words.

The coverage of candidate j is c_j = (1/N) sum_i q(psi_j | tau_i). The K candidates are
draws from the task prior, so a prior that the data matched exactly would give every
candidate the uniform share 1/K. A candidate's *share ratio* is r_j = K c_j.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WELL = 0.5
"""Share ratio from which a task counts as well covered (half the uniform share)."""
NOT_AT_ALL = 0.05
"""Share ratio below which a task counts as not covered (a twentieth of the uniform share)."""
CLASSES = ("well", "poorly", "not at all")


@dataclass(frozen=True)
class CoverageClasses:
    """The candidates of each class, and the share ratios they come from."""

    ratio: np.ndarray  # float64 [K]: K * coverage
    kind: np.ndarray  # int [K]: 0 well, 1 poorly, 2 not at all

    @classmethod
    def of(cls, coverage: np.ndarray) -> CoverageClasses:
        coverage = np.asarray(coverage, np.float64)
        ratio = coverage * len(coverage)
        kind = np.where(ratio >= WELL, 0, np.where(ratio >= NOT_AT_ALL, 1, 2))
        return cls(ratio=ratio, kind=kind)

    def members(self, name: str) -> np.ndarray:
        """Indices of the candidates in class ``name`` (one of :data:`CLASSES`)."""
        return np.flatnonzero(self.kind == CLASSES.index(name))


def intervals(values: np.ndarray, kinds: np.ndarray, want: int) -> list[tuple[float, float]]:
    """The ranges of a 1-D task whose sorted candidates are all of kind ``want``: each
    run of consecutive such candidates as (lowest, highest)."""
    order = np.argsort(values, kind="stable")
    runs: list[tuple[float, float]] = []
    start = None
    for position, j in enumerate(order):
        if kinds[j] == want and start is None:
            start = position
        if kinds[j] != want and start is not None:
            runs.append((float(values[order[start]]), float(values[order[position - 1]])))
            start = None
    if start is not None:
        runs.append((float(values[order[start]]), float(values[order[-1]])))
    return runs


def _ranges(runs: list[tuple[float, float]], limit: int = 6) -> str:
    parts = [f"{lo:.3g}" if lo == hi else f"[{lo:.3g}, {hi:.3g}]" for lo, hi in runs[:limit]]
    text = ", ".join(parts)
    return text + (f" and {len(runs) - limit} more" if len(runs) > limit else "")


def _names(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def coverage_sentences(
    candidates: np.ndarray, coverage: np.ndarray, names: Sequence[str]
) -> list[str]:
    """The plain-language summary of which tasks the data covers well, poorly or not at
    all: task names (discrete), ranges of psi (one dimension), or counts and the box the
    well-covered candidates span (more dimensions)."""
    classes = CoverageClasses.of(coverage)
    k = len(coverage)
    candidates = np.asarray(candidates, np.float64).reshape(k, -1)
    lines = []
    for index, name in enumerate(CLASSES):
        members = classes.members(name)
        share = len(members) / k
        head = f"Covered {name}: {len(members)} of {k} candidate tasks ({share:.0%})"
        if not len(members):
            lines.append(head + ".")
        elif names:
            lines.append(head + ": " + _names([names[j] for j in members]) + ".")
        elif candidates.shape[1] == 1:
            runs = intervals(candidates[:, 0], classes.kind, index)
            lines.append(head + ", ψ in " + _ranges(runs) + ".")
        else:
            low, high = candidates[members].min(axis=0), candidates[members].max(axis=0)
            box = " × ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(low, high, strict=True))
            lines.append(head + f"; they span the box {box}.")
    return lines


def effective_count(probabilities: np.ndarray) -> float:
    """exp(entropy) of a distribution: how many outcomes it spreads over, in effect."""
    p = np.asarray(probabilities, np.float64)
    p = p[p > 0]
    return float(math.exp(-(p * np.log(p)).sum())) if len(p) else 0.0
