"""The report's figures: coverage of the task space, posterior spread, and the
difference between two label sets. Each returns a new matplotlib Figure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hipi_offline.plots import _figure
from hipi_offline.report.coverage import NOT_AT_ALL, WELL, CoverageClasses
from hipi_offline.store.labels import LabelSet

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CLASS_COLORS = ("tab:green", "tab:orange", "tab:red")


def projection(candidates: np.ndarray) -> tuple[np.ndarray, tuple[str, str], str]:
    """Candidates as 2-D points: themselves for 2-D tasks, else their first two
    principal components; the axis names; and a note on the projection ("" for none)."""
    x = np.asarray(candidates, np.float64).reshape(len(candidates), -1)
    if x.shape[1] == 2:
        return x, ("ψ₁", "ψ₂"), ""
    centered = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    axes = vt[:2] if len(vt) >= 2 else np.vstack([vt, np.zeros_like(vt)])
    note = f"projected on the first two principal components of the {x.shape[1]}-D tasks"
    return centered @ axes.T, ("component 1", "component 2"), note


def coverage_figure(labels: LabelSet, names: Sequence[str]) -> Figure:
    """Coverage of the task space: bars per task (discrete), the density of what the
    data teaches against the prior's candidates (1-D), or the candidates colored by
    their share ratio in the plane (2-D, or a projection of more dimensions)."""
    coverage = np.asarray(labels.coverage, np.float64)
    classes = CoverageClasses.of(coverage)
    k = len(coverage)
    candidates = np.asarray(labels.candidates, np.float64).reshape(k, -1)
    colors = [CLASS_COLORS[c] for c in classes.kind]
    if names:
        fig, axes = _figure(max(5.0, 0.35 * k + 2.0), 3.6)
        ax = axes[0, 0]
        ax.bar(np.arange(k), coverage, color=colors, edgecolor="0.2", linewidth=0.5)
        ax.axhline(1.0 / k, color="0.2", linestyle="--", linewidth=0.8, label="uniform share 1/K")
        ax.set_xticks(np.arange(k), list(names), rotation=45, ha="right")
        ax.set_ylabel("coverage (share of the data's posterior mass)")
        ax.legend(frameon=False, fontsize="small")
        ax.set_title("coverage per task (green: well, orange: poorly, red: not at all)")
        return fig
    if candidates.shape[1] == 1:
        psi = candidates[:, 0]
        fig, axes = _figure(10.0, 3.4, ncols=2)
        ax = axes[0, 0]
        bins = np.histogram_bin_edges(psi, bins=int(min(40, max(5, k // 8))))
        ax.hist(psi, bins=bins, weights=np.full(k, 1.0 / k), density=True, histtype="step",
                color="0.3", linewidth=1.2, label="candidates (the prior's draws)")  # fmt: skip
        ax.hist(psi, bins=bins, weights=coverage, density=True, alpha=0.6, color="tab:blue",
                label="what the data teaches (coverage)")  # fmt: skip
        ax.set_xlabel("task ψ")
        ax.set_ylabel("density over ψ")
        ax.legend(frameon=False, fontsize="small")
        ax.set_title("coverage of the task space")
        ax = axes[0, 1]
        order = np.argsort(psi)
        ax.plot(psi[order], np.maximum(classes.ratio[order], 1e-6), color="0.4", linewidth=0.8)
        ax.scatter(psi, np.maximum(classes.ratio, 1e-6), c=colors, s=10, zorder=3)
        _thresholds(ax)
        ax.set_yscale("log")
        ax.set_xlabel("task ψ")
        ax.set_ylabel("share ratio K·coverage (1 = uniform)")
        ax.set_title("per candidate: well / poorly / not covered")
        return fig
    points, (xlabel, ylabel), note = projection(candidates)
    fig, axes = _figure(6.4, 5.0)
    ax = axes[0, 0]
    from matplotlib.colors import LogNorm

    norm = LogNorm(vmin=1e-3, vmax=max(10.0, float(classes.ratio.max())))
    shown = ax.scatter(points[:, 0], points[:, 1], c=np.maximum(classes.ratio, 1e-3), s=22,
                       cmap="viridis", norm=norm, edgecolors="0.2", linewidths=0.3)  # fmt: skip
    fig.colorbar(shown, ax=ax, label="share ratio K·coverage (1 = uniform)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("coverage of the task space" + (f"\n({note})" if note else ""))
    return fig


def _thresholds(ax: Axes) -> None:
    ax.axhline(1.0, color="0.2", linestyle="--", linewidth=0.8, label="uniform share")
    ax.axhline(WELL, color=CLASS_COLORS[0], linestyle=":", linewidth=1.0, label=f"well ≥ {WELL}")
    ax.axhline(NOT_AT_ALL, color=CLASS_COLORS[2], linestyle=":", linewidth=1.0,
               label=f"not at all < {NOT_AT_ALL}")  # fmt: skip
    ax.legend(frameon=False, fontsize="x-small", loc="lower right")


def spread_figure(labels: LabelSet) -> Figure:
    """Posterior entropy per episode (nats, with the most it can be, log K) and the
    effective number of tasks per episode, exp(entropy)."""
    entropy = np.asarray(labels.entropy, np.float64)
    k = labels.num_candidates
    fig, axes = _figure(10.0, 3.2, ncols=2)
    ax = axes[0, 0]
    ax.hist(entropy, bins=30, range=(0.0, max(math.log(k), float(entropy.max()), 1e-6)),
            color="tab:blue", alpha=0.8)  # fmt: skip
    ax.axvline(math.log(k), color="0.2", linestyle="--", linewidth=0.8,
               label=f"log K = {math.log(k):.2f} (uniform)")  # fmt: skip
    ax.set_xlabel("posterior entropy H(q(· | τ)) (nats)")
    ax.set_ylabel("episodes")
    ax.legend(frameon=False, fontsize="small")
    ax.set_title("how sure the labels are")
    ax = axes[0, 1]
    effective = np.exp(entropy)
    ax.hist(effective, bins=np.geomspace(1.0, max(k, 2), 31), color="tab:purple", alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("effective number of tasks per episode, exp(H)")
    ax.set_ylabel("episodes")
    ax.set_title(f"mean {effective.mean():.2f} of K = {k}")
    return fig


def comparison_figure(first: LabelSet, second: LabelSet) -> Figure:
    """Two label sets of one store: their coverage candidate by candidate (when they
    share the candidates) and their entropy distributions."""
    same = same_candidates(first, second)
    fig, axes = _figure(10.0 if same else 5.2, 3.6, ncols=2 if same else 1)
    ax = axes[0, 0]
    high = max(float(first.entropy.max()), float(second.entropy.max()), 1e-6)
    for labels, color in ((first, "tab:blue"), (second, "tab:orange")):
        ax.hist(np.asarray(labels.entropy, np.float64), bins=30, range=(0.0, high),
                histtype="step", linewidth=1.5, color=color, label=labels.name)  # fmt: skip
    ax.set_xlabel("posterior entropy (nats)")
    ax.set_ylabel("episodes")
    ax.legend(frameon=False, fontsize="small")
    ax.set_title("entropy per episode")
    if same:
        ax = axes[0, 1]
        k = first.num_candidates
        a = np.maximum(np.asarray(first.coverage) * k, 1e-6)
        b = np.maximum(np.asarray(second.coverage) * k, 1e-6)
        ax.scatter(a, b, s=10, alpha=0.7, color="tab:green")
        low, top = min(a.min(), b.min()), max(a.max(), b.max())
        ax.plot([low, top], [low, top], color="0.3", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"share ratio in {first.name}")
        ax.set_ylabel(f"share ratio in {second.name}")
        ax.set_title("coverage per candidate (dashed: equal)")
    return fig


def same_candidates(first: LabelSet, second: LabelSet) -> bool:
    """Whether two label sets score the same candidate tasks, in the same order."""
    return first.candidates.shape == second.candidates.shape and bool(
        np.array_equal(first.candidates, second.candidates)
    )
