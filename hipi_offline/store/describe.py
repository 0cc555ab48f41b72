"""What ``hipi-offline inspect`` shows: fields, episodes, and label-set summaries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hipi_offline.errors import InputError, one_line
from hipi_offline.store.label_attrs import label_task_names
from hipi_offline.store.labels import LabelSet, PosteriorSpread
from hipi_offline.store.store import TrajectoryStore, open_store

# what a crafted label set's attributes can make the summary raise
_SUMMARY_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError)


@dataclass(frozen=True)
class LabelSummary:
    """Posterior entropy and task coverage of one label set."""

    name: str
    method: str
    family: str
    candidates: int
    k: int
    temperature: float
    mean_entropy: float
    effective_tasks: float
    coverage_effective_tasks: float
    best_covered: list[tuple[str, float]]
    worst_covered: list[tuple[str, float]]


@dataclass(frozen=True)
class StoreDescription:
    """A store's layout and contents, as printed by ``inspect``."""

    path: str
    kind: str
    attrs: dict
    episodes: int
    steps: int
    length_stats: tuple[int, float, int]
    step_fields: dict[str, tuple[tuple[int, ...], str]]
    episode_fields: dict[str, tuple[tuple[int, ...], str]]
    labels: list[LabelSummary]

    def lines(self) -> list[str]:
        low, mean, high = self.length_stats
        out = [
            f"{self.path} ({self.kind}, format {self.attrs.get('hipi_offline_format')}, "
            f"env {self.attrs.get('env') or '-'}, created {self.attrs.get('created', '-')})",
            f"episodes {self.episodes}, steps {self.steps}, length min/mean/max "
            f"{low}/{mean:.1f}/{high}",
            "step fields:",
            *(f"  {n:<36} {s!s:<18} {d}" for n, (s, d) in self.step_fields.items()),
            "episode fields:",
            *(f"  {n:<36} {s!s:<18} {d}" for n, (s, d) in self.episode_fields.items()),
        ]
        if not self.episode_fields:
            out.append("  (none)")
        out.append("label sets:" if self.labels else "label sets: (none)")
        for lab in self.labels:
            out += [
                f"  {lab.name}: method {lab.method}, family {lab.family}, K={lab.candidates}, "
                f"top-k={lab.k}, temperature {lab.temperature:g}",
                f"    posterior entropy {lab.mean_entropy:.3f} nats, effective tasks per episode "
                f"{lab.effective_tasks:.2f}, data covers {lab.coverage_effective_tasks:.1f} "
                f"tasks in effect",
                "    best covered:  " + ", ".join(f"{t} {c:.4f}" for t, c in lab.best_covered),
                "    worst covered: " + ", ".join(f"{t} {c:.4f}" for t, c in lab.worst_covered),
            ]
        return out


def _task_text(labels: LabelSet, j: int, names: list[str]) -> str:
    if names:
        return names[j]
    return "[" + ", ".join(f"{x:.3g}" for x in labels.candidates[j]) + "]"


def summarize_labels(labels: LabelSet, shown: int = 3) -> LabelSummary:
    """Entropy and coverage summary of one label set."""
    names = label_task_names(labels.attrs)
    coverage = labels.coverage
    order = np.argsort(-coverage, kind="stable")
    spread = PosteriorSpread.of(labels.entropy, coverage)
    return LabelSummary(
        name=labels.name,
        method=str(labels.attrs.get("method", "?")),
        family=str(labels.attrs.get("family", "?")),
        candidates=labels.num_candidates,
        k=labels.k,
        temperature=float(labels.attrs.get("temperature", float("nan"))),
        mean_entropy=spread.mean_entropy,
        effective_tasks=spread.effective_tasks,
        coverage_effective_tasks=spread.coverage_effective_tasks,
        best_covered=[(_task_text(labels, j, names), float(coverage[j])) for j in order[:shown]],
        worst_covered=[
            (_task_text(labels, j, names), float(coverage[j])) for j in order[::-1][:shown]
        ],
    )


def _summary(store: TrajectoryStore, name: str) -> LabelSummary:
    """One label set's summary; a damaged or crafted set is one InputError naming it."""
    labels = store.read_labels(name)
    try:
        return summarize_labels(labels)
    except _SUMMARY_ERRORS as err:
        reason = one_line(str(err) or type(err).__name__, 200)
        raise InputError(
            f"labels/{name}: damaged label set ({reason}); relabel with --overwrite"
        ) from None


def describe_store(path: str | Path) -> StoreDescription:
    """Read a store's metadata and label sets (the step data itself is not loaded)."""
    with open_store(path) as store:
        lengths = store.lengths
        stats = (
            (int(lengths.min()), float(lengths.mean()), int(lengths.max()))
            if len(lengths)
            else (0, 0.0, 0)
        )
        return StoreDescription(
            path=str(store.path),
            kind=store.kind,
            attrs=store.attrs,
            episodes=store.num_episodes,
            steps=store.num_steps,
            length_stats=stats,
            step_fields={n: (i.shape, str(i.dtype)) for n, i in store.step_fields().items()},
            episode_fields={n: (i.shape, str(i.dtype)) for n, i in store.episode_fields().items()},
            labels=[_summary(store, n) for n in store.label_names()],
        )
