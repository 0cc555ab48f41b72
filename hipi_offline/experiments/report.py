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
        if any("velocity_along_command" in cell for cell in row.values()):
            speeds = [row.get(m, {}).get("velocity_along_command") for m in methods]
            cells = ["" if v is None else _pm(v["mean"], v["stderr"]) for v in speeds]
            lines.append(f"| {env} (velocity along command, m/s) | " + " | ".join(cells) + " |")
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


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path


def _plots() -> Any:
    try:
        import matplotlib  # noqa: F401  (hipi_offline.plots imports it lazily)
    except ImportError:
        raise InputError("matplotlib: needed for the charts (pip install -e '.[test]')") from None
    from hipi_offline import plots

    return plots


def plot_fig7a(results: dict[str, Any], path: str | Path) -> Path:
    """Save the Fig. 7a bar chart (:func:`hipi_offline.plots.fig7a_bars`) as an image."""
    return _save(_plots().fig7a_bars(results), path)


def plot_fig7b(results: dict[str, Any], path: str | Path) -> Path:
    """Save the Fig. 7b bias chart (:func:`hipi_offline.plots.fig7b_lines`) as an image."""
    return _save(_plots().fig7b_lines(results), path)
