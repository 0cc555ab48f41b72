"""Checks of a collect's output before the first rollout: a usable path, a writable
folder and room for the episodes to come (predicted from episodes x steps x fields)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hipi_offline.envs.base import TaskEnv
from hipi_offline.errors import InputError
from hipi_offline.preflight import check_free_space, check_writable
from hipi_offline.store.backends import backend_for, backend_kind
from hipi_offline.store.location import is_url
from hipi_offline.store.remote import probe_writable

MAX_STEPS = 10**8
"""Steps per episode accepted by ``--steps``."""
MARGIN_BYTES = 1 << 20
"""Free space kept beyond the prediction (metadata, chunk padding)."""


def check_target(path: Path, option: str) -> None:
    """A store path that can be created or continued: a store suffix, an existing
    parent folder, no special file (FIFO, device) in its place."""
    try:
        backend_kind(path)
    except InputError as err:
        raise InputError(f"{option}: {err}") from None
    if is_url(path):  # object storage: a write probe (no folders, no free space to ask)
        probe_writable(path, f"{option} {path}")
        return
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{option}: folder {parent} does not exist")
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise InputError(f"{option}: {path} is a special file, not a store")


def bytes_per_step(env: TaskEnv) -> int:
    """Bytes one stored step takes uncompressed: observation, action and step fields."""
    info = env.info
    env.reset(0)
    action = ((info.action_low + info.action_high) / 2).astype(np.float32)
    fields = env.step(action).fields
    size = 4 * (info.observation_dim + info.action_dim)
    return size + sum(np.asarray(value).nbytes for value in fields.values())


def check_space(
    path: Path, new_bytes: int, compression: str, existing: bool, option: str = "--out"
) -> None:
    """Refuse, before any rollout, an append that cannot fit in the free space.

    HDF5 appends copy the store and replace it (crash safety), so they need room for
    the grown store twice over; Zarr appends grow it in place. Compressed stores are
    checked only for writability (their size cannot be predicted). A store at a URL
    was checked by :func:`check_target` (object stores report no free space)."""
    if is_url(path):
        return
    folder = path if existing and path.is_dir() else path.parent
    check_writable(folder, option)
    if compression != "none" or new_bytes <= 0:
        return
    need = new_bytes + MARGIN_BYTES
    if backend_for(path).append_copies:
        need += new_bytes + (path.stat().st_size if existing else 0)
    check_free_space(folder, need, f"{option} {path} (the new episodes)")
