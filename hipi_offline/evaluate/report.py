"""Scores of evaluated runs: mean return, standard error, confidence intervals,
success rates, paired differences, and the mean velocity along the commanded
direction for tasks that command one; as a table and as JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hipi_offline.evaluate.rollout import EpisodeOutcome
from hipi_offline.evaluate.tasks import task_label
from hipi_offline.tasks.spec import TaskSpec


def t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student-t critical value (normal when scipy is missing)."""
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy comes with dm_control
        return 1.959963984540054
    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def mean_interval(
    values: np.ndarray, confidence: float = 0.95
) -> tuple[float, float, tuple[float, float]]:
    """(mean, standard error, t confidence interval) of a sample; the error and
    interval are NaN for a single value."""
    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, (math.nan, math.nan)
    stderr = float(values.std(ddof=1) / math.sqrt(len(values)))
    half = t_quantile(confidence, len(values) - 1) * stderr
    return mean, stderr, (mean - half, mean + half)


@dataclass
class RunResult:
    """The evaluation of one run on the call's episodes."""

    run: str
    method: str
    step: int
    outcomes: list[EpisodeOutcome]
    spec: TaskSpec
    mean_return: float = field(init=False)
    stderr: float = field(init=False)
    ci95: tuple[float, float] = field(init=False)
    success_rate: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.outcomes = sorted(self.outcomes, key=lambda o: o.index)
        self.mean_return, self.stderr, self.ci95 = mean_interval(self.returns)
        flags = [o.success for o in self.outcomes]
        self.success_rate = None if flags[0] is None else float(np.mean(flags))

    @property
    def returns(self) -> np.ndarray:
        """float64 [episodes] in episode order."""
        return np.array([o.episode_return for o in self.outcomes])

    @property
    def velocities(self) -> np.ndarray:
        """float64 [n] mean velocity along the command of the episodes that have one
        (tasks with a direction), in episode order."""
        values = [o.velocity_along_command for o in self.outcomes]
        return np.array([v for v in values if v is not None], dtype=np.float64)

    def velocity_summary(self) -> tuple[float, float, int] | None:
        """(mean, standard error, episodes) of the per-episode velocity along the
        command over the episodes that have one (the error is NaN for one episode);
        None when no episode has one."""
        values = self.velocities
        if not len(values):
            return None
        mean, stderr, _ = mean_interval(values)
        return mean, stderr, len(values)

    def success_by_task(self) -> dict[str, float] | None:
        """Discrete families: success rate per task name (tasks evaluated only)."""
        if self.success_rate is None:
            return None
        groups: dict[str, list[bool]] = {}
        for o in self.outcomes:
            groups.setdefault(str(task_label(self.spec, o.task)), []).append(bool(o.success))
        return {name: float(np.mean(v)) for name, v in sorted(groups.items())}

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run": self.run,
            "method": self.method,
            "checkpoint_step": self.step,
            "episodes": len(self.outcomes),
            "mean_return": self.mean_return,
            "stderr": _finite_or_none(self.stderr),
            "ci95": [_finite_or_none(v) for v in self.ci95],
        }
        if self.success_rate is not None:
            data["success_rate"] = self.success_rate
            rate = self.success_rate
            n = len(self.outcomes)
            data["success_stderr"] = math.sqrt(rate * (1 - rate) / n)
            data["success_by_task"] = self.success_by_task()
        velocity = self.velocity_summary()
        data["velocity_along_command"] = (
            None
            if velocity is None
            else {
                "mean": velocity[0],
                "stderr": _finite_or_none(velocity[1]),
                "episodes": velocity[2],
            }
        )
        data["per_episode"] = [
            {
                "episode": o.index,
                "task": task_label(self.spec, o.task),
                "env_seed": o.env_seed,
                "return": o.episode_return,
                "steps": o.steps,
                "velocity_along_command": o.velocity_along_command,
                **({} if o.success is None else {"success": bool(o.success)}),
            }
            for o in self.outcomes
        ]
        return data


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def paired_difference(result: RunResult, baseline: RunResult) -> tuple[float, float]:
    """Mean and standard error of per-episode return differences (same episodes)."""
    mean, stderr, _ = mean_interval(result.returns - baseline.returns)
    return mean, stderr


def report_json(results: list[RunResult], header: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` document: the call's settings, then one entry per run under
    ``runs``; with a single run its entry's keys are also at the top level."""
    runs = [r.to_json() for r in results]
    for entry, result in zip(runs[1:], results[1:], strict=True):
        mean, stderr = paired_difference(result, results[0])
        entry["vs_first"] = {"mean_difference": mean, "stderr": _finite_or_none(stderr)}
    document = {**header, "runs": runs}
    if len(runs) == 1:
        document.update(runs[0])
    return document


VELOCITY_COLUMN = "velocity along command (m/s)"
VELOCITY_WIDTH = len(VELOCITY_COLUMN)


def velocity_cell(result: RunResult) -> str:
    """The table cell of a run's velocity along the command: mean ± standard error,
    with the number of episodes that have one when some do not; "-" when none has."""
    summary = result.velocity_summary()
    if summary is None:
        return "-"
    mean, stderr, count = summary
    cell = f"{mean:+.3f} ± {stderr:.3f}"
    if count < len(result.outcomes):
        cell += f" ({count}/{len(result.outcomes)} ep)"
    return cell


def report_lines(results: list[RunResult], header: dict[str, Any]) -> list[str]:
    """A plain-text table, one row per run (paired difference to the first run)."""
    tasks = header["tasks"]
    lines = [
        f"{header['env']}: {header['episodes']} episodes x {header['steps']} steps, tasks from "
        f"{tasks}, seed {header['seed']}, {'sampled' if header['sample'] else 'mean'} actions"
    ]
    discrete = results[0].success_rate is not None
    velocity = any(r.velocity_summary() is not None for r in results)
    head = f"{'method':<16}"
    head += f" {VELOCITY_COLUMN:>{VELOCITY_WIDTH}}" if velocity else ""
    head += f" {'mean return':>12} {'± stderr':>10} {'95% CI':>22}"
    head += f" {'success':>9}" if discrete else ""
    head += f" {'vs first (paired)':>20}  run"
    lines.append(head)
    for i, r in enumerate(results):
        ci = f"[{r.ci95[0]:.2f}, {r.ci95[1]:.2f}]"
        row = f"{r.method:<16}"
        if velocity:
            row += f" {velocity_cell(r):>{VELOCITY_WIDTH}}"
        row += f" {r.mean_return:>12.3f} {r.stderr:>10.3f} {ci:>22}"
        if discrete:
            row += f" {r.success_rate:>9.3f}"
        if i:
            mean, stderr = paired_difference(r, results[0])
            row += f" {f'{mean:+.3f} ± {stderr:.3f}':>20}"
        else:
            row += f" {'':>20}"
        lines.append(f"{row}  {r.run}")
    return lines
