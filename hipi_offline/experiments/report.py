"""Tables and bar charts of Fig. 7a / 7b from ``results.json`` (matplotlib is needed
only for the charts: ``pip install -e '.[test]'``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hipi_offline.errors import InputError


def _pm(mean: float, stderr: float | None) -> str:
    se = "n/a" if stderr is None or not math.isfinite(stderr) else f"{stderr:.3f}"
    return f"{mean:.3f} ± {se}"


def fig7a_table(results: dict[str, Any]) -> list[str]:
    """Markdown table: one row per environment, one column per method."""
    table = results.get("fig7a") or {}
    methods = list(dict.fromkeys(m for env in table.values() for m in env))
    lines = [
        "| env (metric) | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for env, row in table.items():
        metric = next(iter(row.values()))["metric"]
        cells = [_pm(row[m]["mean"], row[m]["stderr"]) if m in row else "" for m in methods]
        lines.append(f"| {env} ({metric}) | " + " | ".join(cells) + " |")
    return lines


def fig7b_table(results: dict[str, Any]) -> list[str]:
    """Markdown table: one row per bias, return and label shift per method."""
    table = results.get("fig7b") or {}
    methods = [k for k in table if k not in ("bias", "box")]
    head = " | ".join(f"{m} return | {m} label TV" for m in methods)
    lines = [f"| bias b | {head} |", "|---:|" + "---:|---:|" * len(methods)]
    for i, b in enumerate(table.get("bias", [])):
        cells = []
        for m in methods:
            cells.append(_pm(table[m]["mean"][i], table[m]["stderr"][i]))
            cells.append(f"{table[m]['label_tv'][i]:.3g}")
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    return lines


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("matplotlib: needed for the charts (pip install -e '.[test]')") from None
    return plt


def plot_fig7a(results: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of Fig. 7a (one panel per environment, mean ± stderr over seeds)."""
    plt = _pyplot()
    table = results["fig7a"]
    fig, axes = plt.subplots(1, len(table), figsize=(4.2 * len(table), 3.6), squeeze=False)
    for ax, (env, row) in zip(axes[0], table.items(), strict=True):
        methods = list(row)
        means = [row[m]["mean"] for m in methods]
        errs = [row[m]["stderr"] or 0.0 for m in methods]
        colors = ["C0" if m == "hipi" else "C7" if m == "task-agnostic" else "C1" for m in methods]
        ax.bar(range(len(methods)), means, yerr=errs, color=colors, capsize=3)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        metric = next(iter(row.values()))["metric"]
        ax.set_title(env)
        ax.set_ylabel("success rate" if metric == "success_rate" else "task return")
    fig.suptitle("Fig. 7a: behavior cloning on relabeled data")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_fig7b(results: dict[str, Any], path: str | Path) -> Path:
    """Return against reward bias, one line per relabeling method (Fig. 7b)."""
    plt = _pyplot()
    table = results["fig7b"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for m in (k for k in table if k not in ("bias", "box")):
        errs = [e or 0.0 for e in table[m]["stderr"]]
        ax.errorbar(table["bias"], table[m]["mean"], yerr=errs, marker="o", capsize=3, label=m)
    ax.set_xlabel("reward bias b per step (tasks in the box)")
    ax.set_ylabel("true task return")
    ax.set_title("Fig. 7b: cheetah, biased rewards")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
