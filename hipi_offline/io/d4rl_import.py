"""Import a D4RL-style flat HDF5 file.

Source layout: root datasets ``observations`` [S, ...], ``actions``, ``rewards``,
``terminals``, ``timeouts`` (all S rows), optional ``next_observations``,
``infos/*`` and ``metadata/*``. An episode ends after every row where
``terminals | timeouts``; rows after the last such flag form a trailing partial
episode, kept and flagged by ``d4rl_trailing_partial_episode`` in the metadata.

Mapping::

    observations       -> steps/observations   (a group -> steps/observations/<key>)
    actions            -> steps/actions
    rewards            -> steps/rewards
    terminals          -> steps/terminations   (bool)
    timeouts           -> steps/truncations    (bool)
    next_observations  -> steps/next_observations
    infos/<key>        -> steps/infos/<key>    (non-numeric ones are skipped)
    metadata/<scalar>  -> store metadata ``source_metadata`` (JSON)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.errors import InputError
from hipi_offline.io.common import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_STEPS,
    MAX_ATTR_JSON,
    EpisodeWriter,
    UnsupportedValue,
    check_rows,
    check_store_destination,
    child,
    dataset_bytes,
    episode_batches,
    jsonable,
    leaf_datasets,
    metadata_json,
    new_store,
    numeric_only,
    open_hdf5_source,
    read_attrs,
    read_rows,
    require,
    require_numeric,
    row_bytes,
    rows_per_batch,
    source_name,
    store_metadata,
    text_value,
)
from hipi_offline.store.location import store_location

_RENAMED = {
    "actions": "actions",
    "rewards": "rewards",
    "terminals": "terminations",
    "timeouts": "truncations",
    "next_observations": "next_observations",
}
_FLAGS = ("terminals", "timeouts")
_SCAN_ROWS = 1 << 20


def import_d4rl(
    src: str | Path,
    dest: str | Path,
    *,
    overwrite: bool = False,
    batch_steps: int = DEFAULT_BATCH_STEPS,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> Path:
    """Convert the D4RL HDF5 file ``src`` into a new store at ``dest``."""
    src, dest = Path(src), store_location(dest)  # a path, or a URL
    check_store_destination(src, dest, overwrite)
    with open_hdf5_source(src) as source:
        fields, skipped, ignored = _step_fields(source, src)
        total = _total_rows(fields, src)
        ends, partial = _episode_ends(source, src, total)
        scalars = _scalar_metadata(source, src)
        metadata = _metadata(source, src, scalars, partial, sorted(skipped), ignored)
        env = _env_name(scalars, src)
        rows = rows_per_batch(row_bytes(fields), batch_steps, batch_bytes)
        needed = dataset_bytes(fields.values())
        with (
            new_store(src, dest, overwrite, env, metadata, needed) as store,
            EpisodeWriter(store, len(ends), "d4rl episodes", batch_steps, batch_bytes) as writer,
        ):
            for i, j in episode_batches(ends, rows):
                a, b = (int(ends[i - 1]) if i else 0), int(ends[j - 1])
                steps = {name: _read(src, name, data, a, b) for name, data in fields.items()}
                lengths = np.diff(np.concatenate([[a], ends[i:j]]))
                writer.add(steps, lengths.tolist(), {}, where=f"{src}: rows {a}..{b - 1}")
    return dest


def _step_fields(source: Any, src: Path) -> tuple[dict[str, Any], set[str], list[str]]:
    """Store field name -> source dataset; plus skipped and ignored source names."""
    fields = leaf_datasets(require(source, "observations", src), "observations", src)
    require(source, "actions", src)
    for key, name in _RENAMED.items():
        if key in source:
            fields.update(leaf_datasets(child(source, key, src), name, src))
    for data in fields.values():
        require_numeric(src, data)
    skipped: set[str] = set()
    if "infos" in source:
        infos = leaf_datasets(child(source, "infos", src), "infos", src)
        fields.update(numeric_only(infos, skipped))
    known = {"observations", "infos", "metadata", *_RENAMED}
    ignored = sorted(key for key in source if key not in known)
    return fields, skipped, ignored


def _total_rows(fields: dict[str, Any], src: Path) -> int:
    total = int(fields["observations"].shape[0]) if fields["observations"].shape else 0
    for data in fields.values():
        check_rows(src, data, total)
    if total == 0:
        raise InputError(f"{src}: observations has 0 rows; nothing to import")
    return total


def _flags(source: Any, src: Path, total: int) -> list[Any]:
    flags = [child(source, key, src) for key in _FLAGS if key in source]
    if not flags:
        raise InputError(f"{src}: neither terminals nor timeouts is present; cannot split episodes")
    for data in flags:
        if not hasattr(data, "dtype"):
            raise InputError(f"{src}: {source_name(data)} must be a dataset, not a group")
        check_rows(src, data, total)
    return flags


def _episode_ends(source: Any, src: Path, total: int) -> tuple[np.ndarray, bool]:
    """int64 exclusive end rows (after each terminal/timeout) and whether a
    trailing partial episode was added to end at ``total``."""
    flags = _flags(source, src, total)
    found = []
    for a in range(0, total, _SCAN_ROWS):
        b = min(a + _SCAN_ROWS, total)
        done = np.zeros(b - a, dtype=bool)
        for data in flags:
            done |= read_rows(src, data, a, b).reshape(b - a, -1).any(axis=1)
        found.append(np.flatnonzero(done) + a + 1)
    ends = np.concatenate(found).astype(np.int64)
    partial = not len(ends) or int(ends[-1]) != total
    return (np.append(ends, total) if partial else ends), partial


def _read(src: Path, name: str, data: Any, a: int, b: int) -> np.ndarray:
    values = read_rows(src, data, a, b)
    return values.astype(bool) if name in ("terminations", "truncations") else values


def _scalar_metadata(source: Any, src: Path) -> dict[str, Any]:
    """The scalar datasets under ``metadata/`` as JSON values (others are skipped)."""
    if "metadata" not in source:
        return {}
    found = leaf_datasets(child(source, "metadata", src), "", src)
    values = {}
    for name, data in found.items():
        if data.shape != () or data.dtype.itemsize > MAX_ATTR_JSON:
            continue
        try:
            values[name.lstrip("/")] = jsonable(read_rows(src, data))
        except UnsupportedValue as err:
            raise InputError(
                f"{src}: {source_name(data)} is {err}, which cannot be imported; "
                "remove or convert it"
            ) from None
    return values


def _env_name(scalars: dict[str, Any], src: Path) -> str:
    """``metadata/env_name`` (a string of a sane length) or empty."""
    name = text_value(scalars.get("env_name"), "metadata/env_name", src, MAX_ATTR_JSON)
    return name or ""


def _metadata(
    source: Any,
    src: Path,
    scalars: dict[str, Any],
    partial: bool,
    skipped: list[str],
    ignored: list[str],
) -> dict[str, Any]:
    attrs = read_attrs(source, src)
    values = {**{f"attrs/{k}": v for k, v in attrs.items()}, **scalars}
    text, dropped = metadata_json(values)
    extra: dict[str, Any] = {
        "d4rl_trailing_partial_episode": partial,
        "source_metadata": text,
        "skipped_fields": skipped,
        "ignored_source_fields": ignored,
    }
    if dropped:
        extra["source_metadata_dropped"] = dropped
    return store_metadata("d4rl", src, extra)
