"""Importers from Minari, D4RL, robomimic, LeRobot v3 and OGBench datasets, and the
Minari exporter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hipi_offline.errors import InputError
from hipi_offline.io.d4rl_import import import_d4rl
from hipi_offline.io.lerobot_import import import_lerobot
from hipi_offline.io.minari_export import export_minari
from hipi_offline.io.minari_import import import_minari
from hipi_offline.io.ogbench_import import import_ogbench
from hipi_offline.io.robomimic_import import import_robomimic

IMPORTERS: dict[str, Callable[..., Path]] = {
    "minari": import_minari,
    "d4rl": import_d4rl,
    "robomimic": import_robomimic,
    "lerobot": import_lerobot,
    "ogbench": import_ogbench,
}


def import_dataset(
    fmt: str,
    src: str | Path,
    dest: str | Path,
    *,
    overwrite: bool = False,
    split: str | None = None,
) -> Path:
    """Import ``src`` (format ``fmt``: one of :data:`IMPORTERS`) into a new store ``dest``;
    ``split`` (train or val) picks an OGBench file's split and is refused for the others."""
    if fmt not in IMPORTERS:
        raise InputError(f"format: {fmt!r} is not one of {', '.join(sorted(IMPORTERS))}")
    if split is None:
        return IMPORTERS[fmt](src, dest, overwrite=overwrite)
    if fmt != "ogbench":
        raise InputError(f"--split: only ogbench datasets have splits, not {fmt}")
    return IMPORTERS[fmt](src, dest, overwrite=overwrite, split=split)


__all__ = [
    "IMPORTERS",
    "export_minari",
    "import_d4rl",
    "import_dataset",
    "import_lerobot",
    "import_minari",
    "import_ogbench",
    "import_robomimic",
]
