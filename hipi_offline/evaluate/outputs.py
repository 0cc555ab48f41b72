"""Checks of an evaluation's outputs (``--json``, ``--video``, ``--save-rollouts``),
made before the first rollout so that a bad path fails in seconds, not after the
whole evaluation, and nothing the toolkit did not make is ever replaced."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hipi_offline.errors import InputError
from hipi_offline.ownership import check_replaceable_store
from hipi_offline.preflight import check_writable


def _same(a: Path, b: Path) -> bool:
    return Path(os.path.abspath(a)).resolve() == Path(os.path.abspath(b)).resolve()


def check_output_file(path: Path, option: str, inputs: Sequence[str | Path] = ()) -> None:
    """A file the evaluation will write: its folder exists and is writable, and the
    path is absent or a regular file that is not one of the ``inputs``."""
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{option}: folder {parent} does not exist; create it first")
    if path.is_dir():
        raise InputError(f"{option}: {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise InputError(f"{option}: {path} is a special file; give a regular file name")
    for item in inputs:
        if _same(path, Path(item)):
            raise InputError(f"{option}: {path} is the input {item}; choose another file")
    check_writable(parent, option)


def rollout_store_names(methods: Sequence[str]) -> list[str]:
    """The store file of each run in the ``--save-rollouts`` folder."""
    return [f"{i}-{method}.h5" for i, method in enumerate(methods)]


def check_rollouts_folder(folder: Path, methods: Sequence[str]) -> None:
    """The ``--save-rollouts`` folder: absent (its parent writable) or a writable
    folder whose stores of these names are absent or hipi-offline stores."""
    option = "--save-rollouts"
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise InputError(f"{option}: {folder} exists and is not a folder")
    if not folder.exists():
        if not folder.parent.is_dir():
            raise InputError(f"{option}: folder {folder.parent} does not exist; create it first")
        check_writable(folder.parent, option)
        return
    check_writable(folder, option)
    for name in rollout_store_names(methods):
        check_replaceable_store(folder / name, option)
