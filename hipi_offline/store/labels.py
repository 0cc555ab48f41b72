"""Label sets: the posterior over tasks of every episode, written atomically.

A label set is never written into the main store file, so relabeling cannot
damage the data. It is committed by one atomic rename:

* HDF5 store ``X.h5``: the set is the file ``X.h5.labels/<name>.h5``, written
  under a temporary name, fsynced, then ``os.replace``-d into place.
* Zarr store ``X.zarr``: the set is the group ``X.zarr/labels/<name>``, a
  symlink to ``labels/.sets/<name>.<token>``; a new version is written beside
  it and the link is swapped with one ``os.replace``.

A kill at any moment leaves either the old or the new label set, never a mix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.errors import InputError
from hipi_offline.store.atomic import abandoned, atomic_write_bytes, fsync_path, writer_token
from hipi_offline.store.backends import backend_kind

LABEL_ARRAYS = ("candidates", "log_z", "topk_index", "topk_logprob", "entropy", "coverage")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_GROUP_JSON = b'{"zarr_format": 3, "node_type": "group", "attributes": {}}'


@dataclass(frozen=True, repr=False)
class LabelSet:
    """Posterior q(psi | tau_i) over K candidate tasks for N episodes (top-k kept)."""

    name: str
    candidates: np.ndarray  # float32 [K, D]
    log_z: np.ndarray  # float64 [K]
    topk_index: np.ndarray  # int64 [N, k], most probable first
    topk_logprob: np.ndarray  # float32 [N, k], normalized over all K
    entropy: np.ndarray  # float32 [N]
    coverage: np.ndarray  # float64 [K]
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"LabelSet({self.name!r}, method={self.attrs.get('method')!r}, "
            f"candidates={self.candidates.shape}, topk={self.topk_index.shape})"
        )

    @property
    def num_episodes(self) -> int:
        return int(self.topk_index.shape[0])

    @property
    def num_candidates(self) -> int:
        return int(self.candidates.shape[0])

    @property
    def k(self) -> int:
        return int(self.topk_index.shape[1])

    def most_probable_tasks(self) -> np.ndarray:
        """float32 [N, D]: each episode's most probable candidate task."""
        return self.candidates[self.topk_index[:, 0]]

    def topk_probabilities(self) -> np.ndarray:
        """float64 [N, k]: the top-k posterior renormalized to sum to one per episode."""
        logp = self.topk_logprob.astype(np.float64)
        logp = logp - logp.max(axis=1, keepdims=True)
        p = np.exp(logp)
        return p / p.sum(axis=1, keepdims=True)

    def sample_tasks(self, episodes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """float32 [B, D]: one task per given episode, drawn from its (top-k) posterior."""
        probs = self.topk_probabilities()[episodes]
        u = rng.random((len(episodes), 1))
        choice = np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), probs.shape[1] - 1)
        return self.candidates[self.topk_index[episodes, choice]]


@dataclass(frozen=True)
class PosteriorSpread:
    """How spread the posteriors of a label set are."""

    mean_entropy: float
    """Mean posterior entropy (nats) per episode."""
    effective_tasks: float
    """Mean of exp(entropy): how many tasks each episode is labeled with, in effect."""
    coverage_effective_tasks: float
    """exp(entropy of the coverage): how many tasks the data as a whole teaches."""

    @classmethod
    def of(cls, entropy: np.ndarray, coverage: np.ndarray) -> PosteriorSpread:
        entropy = np.asarray(entropy, np.float64)
        positive = coverage[coverage > 0]
        return cls(
            mean_entropy=float(entropy.mean()),
            effective_tasks=float(np.exp(entropy).mean()),
            coverage_effective_tasks=float(np.exp(-(positive * np.log(positive)).sum())),
        )


def check_label_name(name: str) -> str:
    if not _NAME.match(name):
        raise InputError(
            f"name: {name!r} is not a valid label-set name (letters, digits, _ . -; "
            "not starting with . or -)"
        )
    return name


def hdf5_sidecar(store_path: Path) -> Path:
    """Directory holding the label sets of an HDF5 store."""
    return Path(str(store_path) + ".labels")


def ensure_zarr_labels_group(store_path: Path) -> Path:
    """Create ``labels/`` and ``labels/.sets/`` as Zarr groups if missing."""
    labels = store_path / "labels"
    for group in (labels, labels / ".sets"):
        group.mkdir(exist_ok=True)
        if not (group / "zarr.json").exists():
            atomic_write_bytes(group / "zarr.json", _GROUP_JSON)
    return labels


def list_label_sets(store_path: Path) -> list[str]:
    """Names of the committed label sets of a store, sorted."""
    if backend_kind(store_path) == "hdf5":
        directory = hdf5_sidecar(store_path)
        if not directory.is_dir():
            return []
        return sorted(p.stem for p in directory.glob("*.h5") if _NAME.match(p.stem) and p.is_file())
    directory = store_path / "labels"
    if not directory.is_dir():
        return []
    return sorted(
        p.name for p in directory.iterdir() if _NAME.match(p.name) and (p / "zarr.json").is_file()
    )


def _attr_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode()
    return value


def read_label_set(store_path: Path, name: str) -> LabelSet:
    """Load one committed label set; an InputError if it is missing or damaged."""
    check_label_name(name)
    if name not in list_label_sets(store_path):
        known = ", ".join(list_label_sets(store_path)) or "none"
        raise InputError(f"labels/{name}: no such label set in {store_path} (have: {known})")
    try:
        if backend_kind(store_path) == "hdf5":
            import h5py

            with h5py.File(hdf5_sidecar(store_path) / f"{name}.h5", "r") as f:
                arrays = {key: np.asarray(f[key][()]) for key in LABEL_ARRAYS}
                attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
        else:
            import zarr

            group = zarr.open_group(str(store_path / "labels" / name), mode="r")
            arrays = {key: np.asarray(group[key][...]) for key in LABEL_ARRAYS}
            attrs = dict(group.attrs)
    except (OSError, KeyError, ValueError, RuntimeError, json.JSONDecodeError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise InputError(
            f"labels/{name}: damaged label set ({reason}); relabel with --overwrite"
        ) from None
    return LabelSet(name=name, attrs=attrs, **arrays)


def _label_arrays(labels: LabelSet) -> dict[str, np.ndarray]:
    return {
        "candidates": np.asarray(labels.candidates, np.float32),
        "log_z": np.asarray(labels.log_z, np.float64),
        "topk_index": np.asarray(labels.topk_index, np.int64),
        "topk_logprob": np.asarray(labels.topk_logprob, np.float32),
        "entropy": np.asarray(labels.entropy, np.float32),
        "coverage": np.asarray(labels.coverage, np.float64),
    }


def check_can_write(store_path: Path, name: str, overwrite: bool) -> None:
    """Refuse early (before any work) to replace a label set without ``overwrite``."""
    check_label_name(name)
    if not overwrite and name in list_label_sets(store_path):
        raise InputError(f"labels/{name}: already exists; pass --overwrite to replace it")


def write_label_set(store_path: Path, labels: LabelSet, overwrite: bool = False) -> None:
    """Commit a label set atomically (see the module docstring)."""
    check_can_write(store_path, labels.name, overwrite)
    arrays = _label_arrays(labels)
    attrs = {k: _attr_value(v) for k, v in labels.attrs.items()}
    if backend_kind(store_path) == "hdf5":
        _write_hdf5(store_path, labels.name, arrays, attrs)
    else:
        _write_zarr(store_path, labels.name, arrays, attrs)


def _write_hdf5(store_path: Path, name: str, arrays: dict, attrs: dict) -> None:
    import h5py

    directory = hdf5_sidecar(store_path)
    directory.mkdir(exist_ok=True)
    for stale in directory.glob(".*.tmp"):
        if abandoned(stale.name):
            stale.unlink(missing_ok=True)
    final = directory / f"{name}.h5"
    tmp = directory / f".{name}.{writer_token()}.tmp"
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value)
            for key, value in attrs.items():
                f.attrs[key] = value if value is not None else "null"
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(directory)
    finally:
        tmp.unlink(missing_ok=True)


def _write_zarr(store_path: Path, name: str, arrays: dict, attrs: dict) -> None:
    import zarr

    labels_dir = ensure_zarr_labels_group(store_path)
    versions = labels_dir / ".sets"
    live = {os.readlink(p) for p in labels_dir.iterdir() if p.is_symlink()}
    for stale in versions.iterdir():
        if (
            stale.name != "zarr.json"
            and f".sets/{stale.name}" not in live
            and abandoned(stale.name)
        ):
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
    token = f"{name}.{writer_token()}"
    target = versions / token
    group = zarr.open_group(str(target), mode="w")
    for key, value in arrays.items():
        group.create_array(key, data=value, chunks=value.shape or None)
    group.attrs.update(attrs)
    for path in sorted(target.rglob("*"), reverse=True):
        fsync_path(path)
    fsync_path(target)
    link = labels_dir / name
    old = os.readlink(link) if link.is_symlink() else None
    tmp_link = versions / f".link-{writer_token()}"
    os.symlink(f".sets/{token}", tmp_link)
    os.replace(tmp_link, link)
    fsync_path(labels_dir)
    if old is not None and old != f".sets/{token}":
        shutil.rmtree(labels_dir / old, ignore_errors=True)
