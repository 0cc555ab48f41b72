"""Figures of the experiments: Fig. 7a bars, Fig. 7b bias curves, task posteriors,
learning curves and rendered frames.

Every function builds a new :class:`matplotlib.figure.Figure` and returns it; none
calls ``plt.show`` (notebooks display the returned figure, scripts save it).
matplotlib is imported lazily so the rest of the package never needs it.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHOD_ORDER = ("hipi", "no-partition", "random", "original", "task-agnostic")
"""Methods of Fig. 7a in plotting order; other methods follow, sorted."""

METRIC_LABELS = {"return": "task return", "success_rate": "success rate"}


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Figure, Any]:
    """A new figure and its axes array (always 2-D), independent of pyplot's state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _ordered(methods: Sequence[str]) -> list[str]:
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(m for m in methods if m not in METHOD_ORDER)


def _method_colors(methods: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    everything = list(METHOD_ORDER) + sorted(m for m in methods if m not in METHOD_ORDER)
    return {m: cmap(everything.index(m) % 10) for m in methods}


def _number(value: Any) -> float:
    """A JSON number, with None (an undefined standard error) as NaN."""
    return math.nan if value is None else float(value)


def fig7a_bars(results: Mapping[str, Any]) -> Figure:
    """Fig. 7a: one panel per environment, one bar per method (mean over seeds) with
    standard-error bars; the axis is the environment's metric (desk: success rate).

    ``results`` is ``results.json`` of ``run_fig7a`` or its ``"fig7a"`` entry:
    ``{env: {method: {"mean", "stderr", "per_seed", "metric"}}}``.
    """
    from matplotlib.transforms import blended_transform_factory

    table = results.get("fig7a", results)
    envs = list(table)
    if not envs:
        raise ValueError("fig7a_bars: no environments in the results")
    colors = _method_colors(sorted({m for env in envs for m in table[env]}))
    fig, axes = _figure(3.2 * len(envs) + 0.6, 3.4, ncols=len(envs))
    for ax, env in zip(axes[0], envs, strict=True):
        methods = _ordered(list(table[env]))
        entries = [table[env][m] for m in methods]
        heights = [_number(e["mean"]) for e in entries]
        errors = [_number(e.get("stderr")) for e in entries]
        ax.bar(
            np.arange(len(methods)),
            heights,
            yerr=errors,
            capsize=3,
            color=[colors[m] for m in methods],
            edgecolor="0.2",
            linewidth=0.6,
            label=None,
            zorder=1,
        )
        for x, entry in enumerate(entries):
            seeds = [_number(v) for v in entry.get("per_seed", [])]
            offsets = np.linspace(-0.18, 0.18, len(seeds)) if len(seeds) > 1 else [0.0]
            ax.plot(
                x + np.asarray(offsets[: len(seeds)]),
                seeds,
                linestyle="none",
                marker="o",
                markersize=4.5,
                markerfacecolor="white",
                markeredgecolor="black",
                markeredgewidth=1.0,
                zorder=3,
            )
        # every mean is written above the panel, over its bar, so that a panel of zeros
        # still shows its values and no label sits on a dot or an error bar
        above = blended_transform_factory(ax.transData, ax.transAxes)
        for x, height in enumerate(heights):
            ax.text(x, 1.01, _value_text(height), transform=above, ha="center", va="bottom",
                    fontsize=8)  # fmt: skip
        metric = {e.get("metric", "return") for e in entries}
        ax.set_ylabel(" / ".join(METRIC_LABELS.get(m, m) for m in sorted(metric)))
        if metric == {"success_rate"}:
            ax.set_ylim(-0.05, 1.05)  # dots at 0 or 1 stay whole inside the axes
        ax.set_xticks(np.arange(len(methods)), methods, rotation=35, ha="right")
        ax.set_title(env, pad=16)
        ax.axhline(0, color="0.3", linewidth=0.8, zorder=2)
    fig.supxlabel(FIG7A_CAPTION, fontsize=8)
    return fig


FIG7A_CAPTION = (
    "bars: mean over seeds (written above each panel); error bars: ± one standard error\n"
    "of that mean (none with one seed); open dots: the seeds"
)


def _value_text(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def fig7b_lines(results: Mapping[str, Any]) -> Figure:
    """Fig. 7b: return against the reward bias b, one line per method with a band of
    ± one standard error; a second panel shows how far each method's labels moved
    (``label_tv``: mean total variation to the labels at the first b) when recorded.

    ``results`` is ``results.json`` or its ``"fig7b"`` entry: ``{"bias": [...],
    "box": {"low", "high"}, method: {"mean": [...], "stderr": [...], "label_tv": [...]}}``
    (``box`` and ``label_tv`` optional).
    """
    table = results.get("fig7b", results)
    bias = np.asarray(table["bias"], np.float64)
    methods = _ordered([m for m, v in table.items() if isinstance(v, Mapping) and "mean" in v])
    colors = _method_colors(methods)
    shifts = [m for m in methods if "label_tv" in table[m]]
    fig, axes = _figure(4.8 * (1 + bool(shifts)), 3.4, ncols=1 + bool(shifts))
    ax = axes[0, 0]
    for method in methods:
        mean = np.asarray([_number(v) for v in table[method]["mean"]])
        stderr = np.asarray([_number(v) for v in table[method].get("stderr", [])] or np.nan)
        stderr = np.broadcast_to(np.nan_to_num(stderr), mean.shape)
        ax.plot(bias, mean, "o-", color=colors[method], label=method)
        ax.fill_between(bias, mean - stderr, mean + stderr, color=colors[method], alpha=0.2)
    box = table.get("box")
    where = ""
    if isinstance(box, Mapping) and "low" in box and "high" in box:
        sides = zip(box["low"], box["high"], strict=True)
        where = " on ψ ∈ " + " × ".join(f"[{lo:g}, {hi:g}]" for lo, hi in sides)
    ax.set_xlabel("reward bias b" + where)
    ax.set_ylabel("task return (unbiased reward)")
    ax.set_title("cheetah: relabeling under a reward bias")
    ax.legend(frameon=False)
    if shifts:
        ax = axes[0, 1]
        for method in shifts:
            tv = [_number(v) for v in table[method]["label_tv"]]
            ax.plot(bias, tv, "o-", color=colors[method], label=method)
        ax.set_xlabel("reward bias b")
        ax.set_ylabel("label shift (mean total variation)")
        ax.set_title("posterior moved by the bias")
        ax.set_ylim(bottom=0)
    return fig


def _commanded_index(task: np.ndarray, candidates: np.ndarray, discrete: bool) -> int | None:
    """The candidate a stored commanded task is (discrete) or is closest to; None when
    the stored task is not a task of this label set (another dimension)."""
    task = np.asarray(task)
    if discrete:
        if task.size == 1 and np.issubdtype(task.dtype, np.integer):
            index = int(task.reshape(-1)[0])
            return index if 0 <= index < len(candidates) else None
        return int(np.argmax(task)) if task.size == len(candidates) else None
    if task.size != candidates.shape[1]:
        return None
    row = task.reshape(1, -1).astype(np.float64)
    return int(np.argmin(((candidates - row) ** 2).sum(axis=1)))


def posterior_heatmap(
    store_path: str | Path,
    label_name: str,
    episodes: Sequence[int],
    bandwidth: float | None = None,
) -> Figure:
    """The posterior q(psi | tau) of a few episodes of a store's label set.

    * 1-D continuous tasks: a density over psi per episode (a Gaussian kernel
      smoothing of the stored top-k posterior mass at the candidates; ``bandwidth``
      defaults to three mean candidate spacings), the commanded task from
      ``episodes/task`` as a dashed line of the same color.
    * Discrete tasks: a heatmap episodes x task names; the commanded task is boxed.
    * Other continuous tasks: a heatmap episodes x candidates (sorted along their
      first principal component); the candidate closest to the commanded task is boxed.

    Probabilities are the stored top-k log-probabilities (normalized over all
    candidates), so mass outside the top k shows as zero.
    """
    from hipi_offline.store import open_store
    from hipi_offline.store.label_attrs import label_task_names, labels_are_discrete

    episodes = [int(e) for e in episodes]
    with open_store(store_path) as store:
        labels = store.read_labels(label_name)
        commanded = (
            store.read_episode_field("episodes/task")
            if "episodes/task" in store.episode_fields()
            else None
        )
    if not episodes:
        raise ValueError("posterior_heatmap: give at least one episode")
    bad = [e for e in episodes if not 0 <= e < labels.num_episodes]
    if bad:
        raise ValueError(f"posterior_heatmap: episodes {bad} not in 0..{labels.num_episodes - 1}")
    candidates = np.asarray(labels.candidates, np.float64)
    probs = np.zeros((len(episodes), labels.num_candidates))
    for row, e in enumerate(episodes):
        probs[row, labels.topk_index[e]] = np.exp(labels.topk_logprob[e].astype(np.float64))
    names = label_task_names(labels.attrs)
    discrete = labels_are_discrete(labels.attrs) or bool(names)
    marks = [
        None if commanded is None else _commanded_index(commanded[e], candidates, discrete)
        for e in episodes
    ]
    title = f"{Path(*Path(store_path).parts[-2:])}: labels/{label_name}"
    if not discrete and candidates.shape[1] == 1:
        marked = [
            None if j is None or commanded is None else float(np.ravel(commanded[e])[0])
            for j, e in zip(marks, episodes, strict=True)
        ]
        return _posterior_density(candidates[:, 0], probs, episodes, marked, bandwidth, title)
    if discrete:
        order = np.arange(labels.num_candidates)
        ticks = [str(n) for n in names] or [str(j) for j in order]
        xlabel = "task"
    else:
        centered = candidates - candidates.mean(axis=0)
        direction = np.linalg.svd(centered, full_matrices=False)[2][0]
        order = np.argsort(centered @ direction, kind="stable")
        ticks = None
        xlabel = "candidate tasks (sorted along their first principal component)"
    return _posterior_grid(probs[:, order], order, episodes, marks, ticks, xlabel, title)


def _posterior_density(
    psi: np.ndarray,
    probs: np.ndarray,
    episodes: list[int],
    commanded: list[float | None],
    bandwidth: float | None,
    title: str,
) -> Figure:
    from matplotlib import colormaps

    low, high = float(psi.min()), float(psi.max())
    span = max(high - low, 1e-6)
    h = bandwidth if bandwidth is not None else 3.0 * span / max(len(psi) - 1, 1)
    grid = np.linspace(low - 3 * h, high + 3 * h, 400)
    kernel = np.exp(-0.5 * ((grid[:, None] - psi[None, :]) / h) ** 2) / (h * math.sqrt(2 * math.pi))
    cmap = colormaps["tab10"]
    fig, axes = _figure(5.6, 3.2)
    ax = axes[0, 0]
    for row, e in enumerate(episodes):
        color = cmap(row % 10)
        ax.plot(grid, kernel @ probs[row], color=color, label=f"episode {e}")
        if commanded[row] is not None:
            ax.axvline(commanded[row], color=color, linestyle="--")
    ax.set_xlabel("task ψ (dashed: commanded)")
    ax.set_ylabel("posterior density q(ψ | τ)")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize="small")
    return fig


def _posterior_grid(
    probs: np.ndarray,
    order: np.ndarray,
    episodes: list[int],
    marks: list[int | None],
    ticks: list[str] | None,
    xlabel: str,
    title: str,
) -> Figure:
    from matplotlib.patches import Rectangle

    width = min(12.0, 2.0 + 0.45 * probs.shape[1]) if ticks is not None else 8.0
    fig, axes = _figure(width, 1.2 + 0.4 * len(episodes))
    ax = axes[0, 0]
    image = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="q(ψ | τ)")
    ax.set_yticks(np.arange(len(episodes)), [f"episode {e}" for e in episodes])
    if ticks is not None:
        ax.set_xticks(np.arange(len(ticks)), ticks, rotation=35, ha="right")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    position = np.argsort(order)  # candidate index -> column
    for row, j in enumerate(marks):
        if j is not None:
            col = int(position[j])
            ax.add_patch(
                Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)
            )
    return fig


def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """A train-bc run's ``metrics.csv`` as float64 columns (empty cells are NaN)."""
    path = Path(run_dir) / "metrics.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys() if rows else ["step", "loss"]
    return {
        name: np.array([_number(r[name] or None) for r in rows], np.float64) for name in columns
    }


def learning_curves(
    run_dirs: Sequence[str | Path] | Mapping[str, str | Path], metric: str = "loss"
) -> Figure:
    """Training ``metric`` (default the loss) against the step of train-bc runs, one
    line per run, labeled by the mapping's keys or the run directories' names; runs
    named ``<method>-seed<s>`` share their method's color."""
    runs = dict(run_dirs) if isinstance(run_dirs, Mapping) else {Path(r).name: r for r in run_dirs}
    methods = {name: name.rsplit("-seed", 1)[0] for name in runs}
    colors = _method_colors(sorted(set(methods.values())))
    styles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D", "v", "P")
    seen: dict[str, int] = {}
    fig, axes = _figure(5.6, 3.4)
    ax = axes[0, 0]
    for number, (name, run) in enumerate(runs.items()):
        columns = read_metrics(run)
        method = methods[name]
        style = styles[seen.setdefault(method, 0) % len(styles)]
        seen[method] += 1
        steps = columns["step"]
        # markers at staggered points: lines that lie on each other stay told apart
        every = max(1, len(steps) // 8)
        ax.plot(
            steps,
            columns[metric],
            linestyle=style,
            marker=markers[number % len(markers)],
            markevery=(number % every, every),
            markersize=4,
            color=colors[method],
            label=name,
        )
    ax.set_xlabel("gradient step")
    ax.set_ylabel(_metric_label(metric, [Path(r) for r in runs.values()]))
    ax.set_title("behavior cloning: training " + metric)
    if runs:
        ax.legend(frameon=False, fontsize="small", ncols=2 if len(runs) > 6 else 1)
    return fig


LOSS_LABELS = {
    "gaussian": "loss: NLL of the data actions (nats)",
    "deterministic": "loss: MSE of the standardized actions",
}


def _metric_label(metric: str, runs: Sequence[Path]) -> str:
    """The y-axis name: for ``loss``, which loss the runs' policy head minimizes (read
    from their config.json; ``loss`` alone when it is unknown or differs)."""
    if metric != "loss":
        return metric
    heads = set()
    for run in runs:
        try:
            description = json.loads((run / "config.json").read_text())
            heads.add(description["network"]["head"])
        except (OSError, ValueError, KeyError, TypeError):
            return metric
    return LOSS_LABELS.get(heads.pop(), metric) if len(heads) == 1 else metric


def frames_figure(frame_strips: Sequence[np.ndarray], titles: Sequence[str]) -> Figure:
    """Rendered rollouts, one row per image (e.g. ``frame_strip(outcome.frames)``)
    with its title above."""
    if len(frame_strips) != len(titles):
        raise ValueError(
            f"frames_figure: {len(frame_strips)} frame strips but {len(titles)} titles"
        )
    if not frame_strips:
        raise ValueError("frames_figure: no frame strips")
    width = FRAMES_WIDTH
    height = sum(width * np.shape(s)[0] / np.shape(s)[1] for s in frame_strips)
    fig, axes = _figure(width, height + 0.45 * len(frame_strips), nrows=len(frame_strips))
    for ax, strip, title in zip(axes[:, 0], frame_strips, titles, strict=True):
        ax.imshow(np.asarray(strip), interpolation="nearest")
        ax.set_title(title, fontsize=11)
        ax.set_axis_off()
    return fig


FRAMES_WIDTH = 15.0
"""Inches across a frame strip: six frames of about 2.5 inches each."""
