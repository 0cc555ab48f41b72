"""Learning curves of HIPI-RL against other relabeling strategies (paper Fig. 5, 6).

A grid of ``train-rl`` runs (panel x strategy x seed), each in a worker process with
one torch thread, at most ``workers`` at once. Each run's ``metrics.csv`` (a row per
episode) becomes a curve: the metric averaged over the episodes that end in each bin
of ``bin_steps`` environment steps, then mean and standard error over seeds
(``std(ddof=1) / sqrt(n)``; undefined, NaN, with one seed). One line per strategy,
one panel per variant (environment + task spec).

Layout under ``root``::

    config.json                                {"<figure>": settings}
    <panel>/<strategy>-seed<s>/                train-rl run folders
    results.json                               {"<figure>": curves (see run_curves)}

Rerunning continues: train-rl resumes each run from its last checkpoint and returns
at once for a finished one. The recorded settings leave out ``steps`` and ``seeds``,
so the same root can be continued with more steps or more seeds.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from hipi_offline.configs import FieldError, named, nested
from hipi_offline.envs.base import env_entry
from hipi_offline.errors import InputError, one_line
from hipi_offline.experiments.common import (
    check_seeds,
    claim_root,
    jsonable,
    update_results,
    write_json,
)
from hipi_offline.parallel import ordered_map
from hipi_offline.progress import progress_bar
from hipi_offline.rl.config import RLConfig
from hipi_offline.rl.relabel import STRATEGIES, is_goal_family
from hipi_offline.store.atomic import atomic_write_bytes
from hipi_offline.tasks.spec import load_task_spec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STRATEGY_ORDER: tuple[str, ...] = ("hipi", "her-final", "her-future", "random", "none")
"""Relabeling strategies in plotting order."""
STRATEGY_LABELS = {
    "hipi": "HIPI (inverse RL)",
    "her-final": "HER final",
    "her-future": "HER future",
    "random": "random",
    "none": "none (SAC)",
}
STRATEGY_COLORS = {
    "hipi": "tab:red",
    "her-final": "tab:blue",
    "her-future": "tab:cyan",
    "random": "tab:green",
    "none": "tab:gray",
}
METRIC_LABELS = {
    "final_distance": "final distance to goal\n(square [-1, 1]², lower is better)",
    "success": "success rate\n(final step within the margin)",
    "return": "episode return\n(sum of rewards over the episode)",
}
"""Curve metrics (columns of train-rl's metrics.csv) and their axis labels."""
GOAL_METRICS = ("final_distance", "success")
"""Metrics that train-rl reports for goal families only (NaN otherwise)."""


@dataclass(frozen=True)
class Panel:
    """One panel: an environment and task spec, the strategies compared on it, and
    the metric plotted."""

    key: str
    """Folder name under the root and key in results.json."""
    title: str
    env: str
    """A registered environment (``pointmass``)."""
    tasks: str
    """A task spec (built-in name or YAML file)."""
    metric: str
    """final_distance, success (goal families) or return."""
    strategies: tuple[str, ...]

    def check(self, where: str) -> None:
        """One-line InputError naming ``<where>.<field>``."""
        if not self.key or not self.key.replace("-", "").replace("_", "").isalnum():
            raise FieldError(f"{where}.key", f"expected a plain folder name, got {self.key!r}")
        env_entry(self.env)
        try:
            spec = load_task_spec(self.tasks)
        except InputError as err:
            raise InputError(f"{where}.tasks: {err}") from None
        if self.metric not in METRIC_LABELS:
            raise FieldError(
                f"{where}.metric",
                f"expected one of {', '.join(METRIC_LABELS)}, got {self.metric!r}",
            )
        goal = is_goal_family(spec.family)
        if self.metric in GOAL_METRICS and not goal:
            raise FieldError(
                f"{where}.metric",
                f"{self.metric} needs a goal family; {self.tasks} is {spec.family.name}",
            )
        if not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise FieldError(
                f"{where}.strategies", f"expected distinct strategies, got {list(self.strategies)}"
            )
        for name in self.strategies:
            if name not in STRATEGIES:
                raise FieldError(
                    f"{where}.strategies",
                    f"unknown strategy {name!r} (use {', '.join(STRATEGIES)})",
                )
            if STRATEGIES[name].goal_only and not goal:
                raise FieldError(
                    f"{where}.strategies",
                    f"{name} needs a goal family; {self.tasks} is {spec.family.name}",
                )


@dataclass(frozen=True)
class RLSettings:
    """The train-rl options shared by every run of a figure (fields of RLConfig)."""

    steps: int = 20_000
    start_steps: int = 1000
    batch_size: int = 256
    updates_per_step: int = 1
    hidden: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    init_alpha: float = 1.0
    relabel_fraction: float = 0.5
    relabel_temperature: str = "alpha"
    checkpoint_every: int = 5000

    def config(self, out: str | Path, tasks: str, relabel: str, seed: int) -> RLConfig:
        """The RLConfig of one run (one torch thread, no progress bar)."""
        return RLConfig(
            out=out,
            tasks=tasks,
            relabel=relabel,
            seed=seed,
            threads=1,
            progress=False,
            **asdict(self),
        )

    def check(self, where: str = "train") -> None:
        with nested(lambda name: f"{where}.{name}"):
            RLConfig(out=".", **asdict(self))


@dataclass(frozen=True)
class CurvesConfig:
    """One figure's grid of runs and how it is plotted."""

    figure: str
    """Key in config.json and results.json (fig5, fig6)."""
    title: str
    panels: tuple[Panel, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    train: RLSettings = field(default_factory=RLSettings)
    bin_steps: int = 1000
    """Environment steps per curve point."""
    workers: int = 1
    """Runs at once (worker processes); run control, not recorded."""
    progress: bool = True
    """A bar counting finished runs; run control."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """One-line InputError naming the first bad field."""
        if not self.panels:
            raise FieldError("panels", "give at least one panel")
        keys = [p.key for p in self.panels]
        if len(set(keys)) != len(keys):
            raise FieldError("panels", f"each panel key at most once, got {keys}")
        for panel in self.panels:
            panel.check(f"panels.{panel.key}")
        with named("seeds"):
            check_seeds(self.seeds)
        self.train.check()
        if isinstance(self.bin_steps, bool) or not isinstance(self.bin_steps, int):
            raise FieldError("bin_steps", f"expected a positive integer, got {self.bin_steps!r}")
        if self.bin_steps < 1:
            raise FieldError("bin_steps", f"expected a positive integer, got {self.bin_steps!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise FieldError("workers", f"expected a positive integer, got {self.workers!r}")

    def settings(self) -> dict[str, Any]:
        """What the grid computes, as recorded in config.json: run control, ``steps``
        and ``seeds`` left out (a root continues with more of either)."""
        data = asdict(self)
        for key in ("workers", "progress", "seeds"):
            data.pop(key)
        data["train"].pop("steps")
        return jsonable(data)

    def runs(self, root: Path) -> list[tuple[Panel, str, int, Path]]:
        """(panel, strategy, seed, run folder) of every run, in plotting order."""
        return [
            (panel, strategy, seed, root / panel.key / f"{strategy}-seed{seed}")
            for panel in self.panels
            for strategy in ordered_strategies(panel.strategies)
            for seed in self.seeds
        ]


def panel_metrics(panel: Panel) -> tuple[str, ...]:
    """The metrics train-rl reports for the panel's family (goal families: all three;
    others: the return)."""
    if is_goal_family(load_task_spec(panel.tasks).family):
        return ("final_distance", "success", "return")
    return ("return",)


def ordered_strategies(names: Sequence[str]) -> list[str]:
    """``names`` in :data:`STRATEGY_ORDER` (others after, sorted)."""
    return [s for s in STRATEGY_ORDER if s in names] + sorted(
        s for s in names if s not in STRATEGY_ORDER
    )


@dataclass(frozen=True)
class RunJob:
    """One train-rl run (picklable for worker processes)."""

    env: str
    config: RLConfig


def _run_job(job: RunJob) -> Path:
    from hipi_offline.rl.train import train_rl

    train_rl(job.env, job.config)
    return Path(job.config.out)


# ---------------------------------------------------------------- aggregation
def read_metric(path: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(step, metric) columns of a train-rl metrics.csv, float64 (empty cells: NaN)."""
    import csv

    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"step", metric} <= set(reader.fieldnames):
            raise InputError(f"{path}: not a train-rl metrics.csv with columns step and {metric}")
        rows = list(reader)
    steps = np.array([float(r["step"]) for r in rows], np.float64)
    values = np.array([float(r[metric]) if r[metric] else math.nan for r in rows], np.float64)
    return steps, values


def binned(steps: np.ndarray, values: np.ndarray, bin_steps: int, bins: int) -> np.ndarray:
    """Mean of ``values`` over the episodes ending in each of the first ``bins`` bins
    ((b * bin_steps, (b + 1) * bin_steps] environment steps); NaN for an empty bin."""
    index = np.ceil(steps / bin_steps).astype(np.int64) - 1
    out = np.full(bins, math.nan)
    for b in range(bins):
        chosen = values[index == b]
        if len(chosen):
            out[b] = chosen.mean()
    return out


def seed_stats(per_seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard error) over the rows (seeds) of ``per_seed`` [seeds, points]:
    ``std(ddof=1) / sqrt(n)``, NaN with one seed."""
    mean = per_seed.mean(axis=0)
    n = per_seed.shape[0]
    if n < 2:
        return mean, np.full_like(mean, math.nan)
    return mean, per_seed.std(axis=0, ddof=1) / math.sqrt(n)


def aggregate_curves(
    metrics: Sequence[Path], metric: str, bin_steps: int, steps: int
) -> dict[str, Any]:
    """The curve of one strategy from its seeds' metrics.csv files: points at the ends
    of the bins up to ``steps`` (rounded up to a bin), each the mean over seeds of the
    seed's bin average, with its standard error, and the last point as ``final``."""
    bins = math.ceil(steps / bin_steps)
    per_seed = []
    for path in metrics:
        run_steps, values = read_metric(path, metric)
        curve = binned(run_steps, values, bin_steps, bins)
        if np.isnan(curve).any():
            first = int(np.flatnonzero(np.isnan(curve))[0])
            raise InputError(
                f"{path}: no finite {metric} in steps ({first * bin_steps}, "
                f"{(first + 1) * bin_steps}]; is the run finished?"
            )
        per_seed.append(curve)
    table = np.stack(per_seed)
    mean, stderr = seed_stats(table)
    return {
        "steps": [(b + 1) * bin_steps for b in range(bins)],
        "mean": mean.tolist(),
        "stderr": _finite_or_none(stderr),
        "per_seed": table.tolist(),
        "final": {
            "mean": float(mean[-1]),
            "stderr": _finite_or_none(stderr[-1:])[0],
            "per_seed": table[:, -1].tolist(),
        },
    }


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


# ---------------------------------------------------------------- the grid
def run_curves(root: str | Path, config: CurvesConfig) -> dict[str, Any]:
    """Run (or continue) the grid under ``root``; returns its entry of results.json:
    ``{title, seeds, steps, bin_steps, panels: {key: {title, env, tasks, metric,
    curves: {strategy: aggregate_curves(...)}, other_metrics: {metric: {strategy:
    ...}}}}}`` (``curves``: the plotted metric; ``other_metrics``: the family's others)."""
    root = Path(root)
    claim_root(root, config.figure, config.settings())
    runs = config.runs(root)
    jobs = [
        RunJob(panel.env, config.train.config(out, panel.tasks, strategy, seed))
        for panel, strategy, seed, out in runs
    ]
    bar = progress_bar(
        total=len(jobs), desc=f"{config.figure} runs", unit="run", enabled=config.progress
    )
    with bar:
        for _ in ordered_map(_run_job, jobs, config.workers):
            bar.update()
    panels: dict[str, Any] = {}
    for panel in config.panels:
        metrics = [panel.metric] + [
            m for m in panel_metrics(panel) if m != panel.metric
        ]  # the plotted one first
        by_metric = {
            metric: {
                strategy: aggregate_curves(
                    [
                        root / panel.key / f"{strategy}-seed{s}" / "metrics.csv"
                        for s in config.seeds
                    ],
                    metric,
                    config.bin_steps,
                    config.train.steps,
                )
                for strategy in ordered_strategies(panel.strategies)
            }
            for metric in metrics
        }
        panels[panel.key] = {
            "title": panel.title,
            "env": panel.env,
            "tasks": panel.tasks,
            "metric": panel.metric,
            "curves": by_metric.pop(panel.metric),
            "other_metrics": by_metric,
        }
    entry = {
        "title": config.title,
        "seeds": list(config.seeds),
        "steps": config.train.steps,
        "bin_steps": config.bin_steps,
        "panels": panels,
    }
    update_results(root, config.figure, entry)
    return entry


def curves_figure(entry: Mapping[str, Any]) -> Figure:
    """One panel per variant, one line per strategy (mean over seeds) with a band of
    ± one standard error."""
    from matplotlib.figure import Figure

    panels = entry["panels"]
    fig = Figure(figsize=(4.6 * len(panels), 3.9), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels.values(), strict=True):
        for strategy, curve in panel["curves"].items():
            x = np.asarray(curve["steps"], np.float64)
            mean = np.asarray(curve["mean"], np.float64)
            se = np.array([math.nan if v is None else v for v in curve["stderr"]], np.float64)
            color = STRATEGY_COLORS.get(strategy)
            ax.plot(
                x,
                mean,
                marker="o",
                markersize=3,
                color=color,
                label=STRATEGY_LABELS.get(strategy, strategy),
            )
            if np.isfinite(se).any():
                ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.2, linewidth=0)
        ax.set_title(f"{panel['title']}\n({panel['env']}, tasks {panel['tasks']})", fontsize=10)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(METRIC_LABELS[panel["metric"]])
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", frameon=False)
    seeds = len(entry["seeds"])
    fig.suptitle(f"{entry['title']}: mean ± standard error over {seeds} seed{'s' * (seeds != 1)}")
    return fig


def save_png(fig: Figure, path: Path) -> None:
    """Write the figure as a PNG (atomically)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def summary_lines(entry: Mapping[str, Any]) -> list[str]:
    """A markdown table: the last point of every curve (mean ± s.e. over seeds)."""
    lines = [
        f"{entry['title']} after {entry['steps']} environment steps (the last "
        f"{entry['bin_steps']}-step bin; mean ± s.e. over {len(entry['seeds'])} seeds)",
        "",
        "| panel | metric | " + " | ".join(STRATEGY_ORDER) + " |",
        "|---|---|" + "---|" * len(STRATEGY_ORDER),
    ]
    for panel in entry["panels"].values():
        tables = {panel["metric"]: panel["curves"], **panel.get("other_metrics", {})}
        for metric, curves in tables.items():
            cells = []
            for strategy in STRATEGY_ORDER:
                curve = curves.get(strategy)
                if curve is None:
                    cells.append("")
                    continue
                final = curve["final"]
                se = final["stderr"]
                cells.append(f"{final['mean']:.3f}" + ("" if se is None else f" ± {se:.3f}"))
            lines.append(f"| {panel['title']} | {metric} | " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------- command line
PRESETS: tuple[str, ...] = ("tiny", "reduced", "full")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {one_line(message, 300)}", file=sys.stderr)
        raise SystemExit(2)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,1,2, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def default_workers() -> int:
    """Half the cores (at least one)."""
    return max(1, (os.cpu_count() or 2) // 2)


def main(
    figure: str, presets: Mapping[str, Callable[[], CurvesConfig]], argv: Sequence[str] | None
) -> int:
    """The command line of ``benchmarks/<figure>.py``: run a preset's grid, print the
    final points, write the PNG and the curves' JSON. Returns the exit code."""
    parser = _Parser(prog=f"{figure}.py", description=f"{figure}: learning curves of HIPI-RL")
    parser.add_argument("--preset", choices=PRESETS, default="reduced")
    parser.add_argument("--root", type=Path, required=True, help="work folder of the runs")
    parser.add_argument("--workers", type=_positive, default=default_workers())
    parser.add_argument("--seeds", type=_seeds, help="replace the preset's seeds (0,1,2)")
    parser.add_argument("--steps", type=_positive, help="replace the preset's env steps per run")
    parser.add_argument("--panels", help="a comma-separated subset of the preset's panels")
    parser.add_argument("--png", type=Path, help="figure path (default <root>/<figure>.png)")
    parser.add_argument("--json", type=Path, help="curves path (default <root>/<figure>.json)")
    parser.add_argument("--no-progress", action="store_true")
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # a usage error (its line is printed) or --help
        return done.code if isinstance(done.code, int) else 2
    try:
        config = presets[args.preset]()
        changes: dict[str, Any] = {"workers": args.workers, "progress": not args.no_progress}
        if args.seeds is not None:
            changes["seeds"] = args.seeds
        if args.steps is not None:
            changes["train"] = replace(config.train, steps=args.steps)
        if args.panels is not None:
            wanted = [p.strip() for p in args.panels.split(",")]
            known = [p.key for p in config.panels]
            if not wanted or any(p not in known for p in wanted):
                raise InputError(f"--panels: expected names from {', '.join(known)}, got {wanted}")
            changes["panels"] = tuple(p for p in config.panels if p.key in wanted)
        try:
            config = replace(config, **changes)
        except FieldError as err:
            flags = {"seeds": "--seeds", "train.steps": "--steps", "workers": "--workers"}
            raise err.renamed(lambda name: flags.get(name, name)) from None
        png = args.png or args.root / f"{figure}.png"
        out_json = args.json or args.root / f"{figure}.json"
        for path, suffix in ((png, ".png"), (out_json, ".json")):
            if path.suffix != suffix or path.is_dir():
                raise InputError(f"--{suffix[1:]}: expected a {suffix} file path, got {path}")
        entry = run_curves(args.root, config)
        save_png(curves_figure(entry), png)
        write_json(out_json, {**entry, "preset": args.preset, "settings": config.settings()})
    except InputError as err:
        print(f"error: {one_line(str(err), 500)}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(entry)))
    print(f"wrote {png} and {out_json}")
    return 0


# ---------------------------------------------------------------- presets
GOAL_STRATEGIES: tuple[str, ...] = ("hipi", "her-final", "her-future", "random", "none")
GENERAL_STRATEGIES: tuple[str, ...] = ("hipi", "random", "none")
TINY_TRAIN = RLSettings(
    steps=200,
    start_steps=50,
    batch_size=32,
    hidden=(16, 16),
    lr=3e-4,
    init_alpha=0.02,
    checkpoint_every=5000,
)
"""Seconds per run: the tests' size (far too small to learn anything)."""
ALPHA_NOTE = """The presets start the learned temperature alpha at 0.02, not train-rl's 1.0:
the point mass's rewards are of order 1 per step, and under Adam log alpha moves by
about lr per update, so alpha 1 would weigh the entropy over the task for thousands of
updates. (Until commit 407920e SAC's target entropy, -act_dim in environment units, was
out of reach in the +-0.1 action box and alpha only grew, by about e^(lr x updates);
benchmarks/fig5-reduced.* and fig6-reduced.* were first computed then.)"""
REDUCED_TRAIN = RLSettings(
    steps=4000,
    start_steps=250,
    batch_size=64,
    hidden=(64, 64),
    lr=3e-4,
    init_alpha=0.02,
    checkpoint_every=1000,
)
"""80 episodes, 3750 updates per run (hipi's B x B soft Q-values make its updates the
dearest): about 1200 s (fig5) and 1000 s (fig6) of CPU time with 2 workers, 10-20
minutes of wall time on 2 free cores. The dense goals are reached by 2000 steps;
``--steps`` continues the same runs further. Alpha: see :data:`ALPHA_NOTE`."""
FULL_TRAIN = RLSettings(
    steps=30_000,
    start_steps=1000,
    batch_size=256,
    hidden=(256, 256),
    lr=3e-4,
    init_alpha=0.02,
    checkpoint_every=5000,
)
"""Hours on 16 cores (hipi's 256 x 256 soft Q-values per update dominate)."""


def fig5_panels() -> tuple[Panel, ...]:
    """Goal reaching on the point mass: dense and sparse goals (the sparse panel plots
    the final distance, which moves long before the success rate does; the success
    rate is in the JSON)."""
    return (
        Panel(
            "dense",
            "dense goals: r = -distance",
            "pointmass",
            "pointmass-goal",
            "final_distance",
            GOAL_STRATEGIES,
        ),
        Panel(
            "sparse",
            "sparse goals: r = 0 within 0.1, else -1",
            "pointmass",
            "pointmass-goal-sparse",
            "final_distance",
            GOAL_STRATEGIES,
        ),
    )


def fig6_panels() -> tuple[Panel, ...]:
    """General task families on the point mass: discrete regions, linear rewards and
    goals with a commanded margin."""
    return (
        Panel(
            "discrete",
            "discrete goals: 6 regions, r = 1 inside",
            "pointmass",
            "pointmass-discrete",
            "return",
            GENERAL_STRATEGIES,
        ),
        Panel(
            "linear",
            "linear rewards: r = w · position",
            "pointmass",
            "pointmass-linear",
            "return",
            GENERAL_STRATEGIES,
        ),
        Panel(
            "margin",
            "goals with a margin m ~ U[0.05, 0.3]",
            "pointmass",
            "pointmass-goal-margin",
            "final_distance",
            GENERAL_STRATEGIES,
        ),
    )


FIG5_TITLE = "Fig. 5 (point mass): goal reaching, HIPI vs HER, random and no relabeling"
FIG6_TITLE = "Fig. 6 (point mass): general task families, HIPI vs random and no relabeling"
FIG5_PRESETS: dict[str, Callable[[], CurvesConfig]] = {
    "tiny": lambda: CurvesConfig(
        "fig5", FIG5_TITLE, fig5_panels(), (0, 1), TINY_TRAIN, bin_steps=100
    ),
    "reduced": lambda: CurvesConfig(
        "fig5", FIG5_TITLE, fig5_panels(), (0, 1, 2), REDUCED_TRAIN, bin_steps=250
    ),
    "full": lambda: CurvesConfig(
        "fig5", FIG5_TITLE, fig5_panels(), (0, 1, 2, 3, 4), FULL_TRAIN, bin_steps=2500
    ),
}
FIG6_PRESETS: dict[str, Callable[[], CurvesConfig]] = {
    "tiny": lambda: CurvesConfig(
        "fig6", FIG6_TITLE, fig6_panels(), (0, 1), TINY_TRAIN, bin_steps=100
    ),
    "reduced": lambda: CurvesConfig(
        "fig6", FIG6_TITLE, fig6_panels(), (0, 1, 2), REDUCED_TRAIN, bin_steps=250
    ),
    "full": lambda: CurvesConfig(
        "fig6", FIG6_TITLE, fig6_panels(), (0, 1, 2, 3, 4), FULL_TRAIN, bin_steps=2500
    ),
}
