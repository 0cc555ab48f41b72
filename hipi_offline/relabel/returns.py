"""Streaming computation of the returns matrix R_ij = sum_t gamma^t r_psi_j(s_t, a_t).

One chunked pass over the store's steps: each chunk's rewards are summed into
per-episode rows with ``index_add_`` (segment sums on the device). Accumulation
is in float64. Two families have exact fast paths:

* ``linear``: only the sufficient statistic sum_t gamma^t phi_t [N, D] is
  accumulated; R = Phi psi^T at the end (one pass serves any number of tasks).
* ``target`` with a scalar feature: sum_t w_t |f_t - psi| is piecewise linear in
  psi, so each step lands in one bucket between sorted candidates and only
  per-bucket weight and weighted-feature sums are kept: O(T log K + K) per
  episode instead of O(T K).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from hipi_offline.errors import InputError
from hipi_offline.preflight import available_memory
from hipi_offline.progress import progress_bar
from hipi_offline.store.backends import ArrayInfo
from hipi_offline.store.store import StepChunk, TrajectoryStore
from hipi_offline.tasks.families import (
    LinearFamily,
    NonFiniteReward,
    RewardFamily,
    TargetFamily,
)
from hipi_offline.tasks.spec import TaskSpec

Fields = Mapping[str, Tensor]
MAX_REWARD_ELEMENTS = 1 << 22  # rows x tasks evaluated at once by the generic path
# Peak bytes per element of an N x tile block of R, measured (RSS) on CPU: R, the
# scores, q and q * s of the posterior; the sorted-target buckets and cumsums add more.
TILE_FACTOR, SORTED_TILE_FACTOR = 6, 10
BASE_BYTES = 64 * 2**20  # the run's own buffers (store reads, torch workspaces), measured


class ReturnAccumulator(Protocol):
    def add(self, fields: Fields, episode: Tensor, weight: Tensor | None) -> None: ...
    def result(self, tasks: Tensor) -> Tensor: ...


class GenericAccumulator:
    """Evaluates the family's reward for every (step, task) pair; ``tasks`` are the
    candidates from index ``first`` on and the episodes start at ``first_episode``
    (both for messages)."""

    def __init__(
        self,
        family: RewardFamily,
        tasks: Tensor,
        episodes: int,
        first: int = 0,
        first_episode: int = 0,
    ) -> None:
        self.family, self.tasks, self.first = family, tasks, first
        self.first_episode = first_episode
        self.returns = torch.zeros(episodes, len(tasks), dtype=torch.float64, device=tasks.device)

    def add(self, fields: Fields, episode: Tensor, weight: Tensor | None) -> None:
        rows = len(episode)
        step = max(1, MAX_REWARD_ELEMENTS // max(1, len(self.tasks)))
        for a in range(0, rows, step):
            part = {name: value[a : a + step] for name, value in fields.items()}
            try:
                rewards = self.family.reward(part, self.tasks)  # [C, K]
            except NonFiniteReward as err:
                where = self.first_episode + int(episode[a + err.row])
                raise err.at_episode(where, self.first) from None
            if weight is not None:
                rewards = rewards * weight[a : a + step, None]
            self.returns.index_add_(0, episode[a : a + step], rewards)

    def result(self, tasks: Tensor) -> Tensor:
        return self.returns


class LinearAccumulator:
    """Sufficient statistic of a linear reward: discounted feature sums [N, D]."""

    def __init__(self, family: LinearFamily, dim: int, episodes: int, device: torch.device) -> None:
        self.family = family
        self.stats = torch.zeros(episodes, dim, dtype=torch.float64, device=device)

    def add(self, fields: Fields, episode: Tensor, weight: Tensor | None) -> None:
        phi = self.family.phi(fields)  # [C, D]
        self.stats.index_add_(0, episode, phi if weight is None else phi * weight[:, None])

    def result(self, tasks: Tensor) -> Tensor:
        return self.stats @ tasks.T  # [N, K]


class SortedTargetAccumulator:
    """Exact returns of -|f - psi| - ctrl for a scalar feature via sorted buckets."""

    def __init__(self, family: TargetFamily, tasks: Tensor, episodes: int) -> None:
        self.family = family
        self.order = torch.argsort(tasks[:, 0])
        self.sorted = tasks[self.order, 0].contiguous()  # [K]
        self.buckets = len(tasks) + 1
        device = tasks.device
        self.weight = torch.zeros(episodes * self.buckets, dtype=torch.float64, device=device)
        self.moment = torch.zeros_like(self.weight)
        self.base = torch.zeros(episodes, dtype=torch.float64, device=device)

    def add(self, fields: Fields, episode: Tensor, weight: Tensor | None) -> None:
        f = self.family.value(fields)[:, 0]  # [C]
        bucket = torch.searchsorted(self.sorted, f)  # number of candidates < f
        flat = episode * self.buckets + bucket
        free = self.family.task_free(fields)
        if weight is None:  # unit weights: x * 1.0 == x exactly, so skip the products
            self.weight.index_add_(0, flat, torch.ones_like(f))
            self.moment.index_add_(0, flat, f)
            self.base.index_add_(0, episode, free)
            return
        self.weight.index_add_(0, flat, weight)
        self.moment.index_add_(0, flat, weight * f)
        self.base.index_add_(0, episode, weight * free)

    def result(self, tasks: Tensor) -> Tensor:
        weight = self.weight.view(-1, self.buckets).cumsum(dim=1)  # [N, K+1]
        moment = self.moment.view(-1, self.buckets).cumsum(dim=1)
        w_total, m_total = weight[:, -1:], moment[:, -1:]
        w_below, m_below = weight[:, :-1], moment[:, :-1]  # steps with f <= psi_(j)
        psi = self.sorted[None, :]
        absolute = (psi * w_below - m_below) + (m_total - m_below) - psi * (w_total - w_below)
        returns = torch.empty_like(absolute)
        returns[:, self.order] = self.base[:, None] - absolute
        return returns


def make_accumulator(
    family: RewardFamily, tasks: Tensor, episodes: int, first: int = 0, first_episode: int = 0
) -> ReturnAccumulator:
    """The fastest exact accumulator for a family (``tasks`` start at candidate ``first``,
    the episodes at ``first_episode``: both only name things in messages)."""
    if isinstance(family, LinearFamily):
        return LinearAccumulator(family, tasks.shape[1], episodes, tasks.device)
    if isinstance(family, TargetFamily) and tasks.shape[1] == 1:
        return SortedTargetAccumulator(family, tasks, episodes)
    return GenericAccumulator(family, tasks, episodes, first, first_episode)


class StoreRows:
    """Whole episodes ``[first_episode, stop_episode)`` of a store, read as if they were
    the whole store: row numbers stay the store's (``ends``/``starts`` and chunk rows),
    episode indices count from 0 (add ``first_episode`` for the store's). A Dask
    partition reads only its rows through this."""

    def __init__(self, store: TrajectoryStore, first_episode: int, stop_episode: int) -> None:
        if not 0 <= first_episode <= stop_episode <= store.num_episodes:
            raise ValueError(f"episodes [{first_episode}, {stop_episode}) out of range")
        self.store, self.first_episode = store, first_episode
        self.ends = store.ends[first_episode:stop_episode]
        self.starts = store.starts[first_episode:stop_episode]
        empty = first_episode == stop_episode
        self.start_row = 0 if empty else int(self.starts[0])
        self.stop_row = 0 if empty else int(self.ends[-1])

    @classmethod
    def of(cls, store: TrajectoryStore | StoreRows) -> StoreRows:
        """``store`` itself when it is a view already, else a view of all of it."""
        return store if isinstance(store, StoreRows) else cls(store, 0, store.num_episodes)

    @property
    def num_episodes(self) -> int:
        return len(self.ends)

    @property
    def num_steps(self) -> int:
        return self.stop_row - self.start_row

    def step_fields(self) -> dict[str, ArrayInfo]:
        return self.store.step_fields()

    def iter_chunks(
        self, fields: Sequence[str], chunk_steps: int, prefetch: bool = True
    ) -> Iterator[StepChunk]:
        """The rows in chunks cut where the whole store's chunks are cut (storage
        aligned); with ``prefetch`` the next one is read in a background thread."""
        return self.store.iter_chunks(fields, chunk_steps, prefetch, self.start_row, self.stop_row)


def _to_device(name: str, array: np.ndarray, device: torch.device) -> Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dtype == torch.bool:
        tensor = tensor.to(torch.uint8)
    return tensor.to(device=device, dtype=torch.float64, non_blocking=True)


def _check_finite(
    name: str, value: Tensor, rows: Tensor | None, start: int, episode: Tensor, first: int = 0
) -> None:
    """InputError at the first row holding NaN or inf; ``rows`` None means the rows
    are ``start, start + 1, ...``; episode indices start at ``first``."""
    if bool(torch.isfinite(value.sum())):
        return  # a finite sum means every value is finite (NaN and inf propagate)
    # slow path: find the first bad row (or none: a sum of finite values overflowed)
    finite = torch.isfinite(value.reshape(len(value), -1)).all(dim=1)
    if not bool(finite.all()):
        bad = int(torch.argmin(finite.to(torch.uint8)))
        row = int(rows[bad]) if rows is not None else start + bad
        where = first + int(episode[bad])
        raise InputError(f"{name}: NaN or inf at step row {row} (episode {where})")


def _episode_ids(
    ends: np.ndarray, starts: np.ndarray, a: int, b: int, device: torch.device
) -> Tensor:
    """Episode index of every row in ``[a, b)`` (rows < ends[-1]), int64 [b - a]:
    the same as ``searchsorted(ends, arange(a, b), right=True)``, built by repeating
    the few episode indices that overlap the chunk (no per-row binary search)."""
    first = int(np.searchsorted(ends, a, side="right"))
    last = int(np.searchsorted(ends, b - 1, side="right"))
    counts = np.minimum(ends[first : last + 1], b) - np.maximum(starts[first : last + 1], a)
    ids = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    return torch.repeat_interleave(ids, torch.from_numpy(counts).to(device), output_size=b - a)


def accumulate_returns(
    store: TrajectoryStore | StoreRows,
    spec: TaskSpec,
    accumulator: ReturnAccumulator,
    *,
    device: torch.device,
    chunk_steps: int,
    progress: Callable[[int], None] | None = None,
) -> ReturnAccumulator:
    """One streaming pass over the steps the family reads (of the whole store or of a
    :class:`StoreRows` view), into ``accumulator``.

    On CUDA, ``index_add_`` is made deterministic for the pass (the default uses
    atomics, whose order of float additions changes the last bits run to run)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(previous or device.type == "cuda", warn_only=True)
    try:
        rows = StoreRows.of(store)
        return _accumulate(rows, spec, accumulator, device, chunk_steps, progress)
    finally:
        torch.use_deterministic_algorithms(previous)


def _accumulate(
    store: StoreRows,
    spec: TaskSpec,
    accumulator: ReturnAccumulator,
    device: torch.device,
    chunk_steps: int,
    progress: Callable[[int], None] | None,
) -> ReturnAccumulator:
    ends_np, starts_np = store.ends, store.starts
    ends = torch.from_numpy(ends_np).to(device)
    starts = torch.from_numpy(starts_np).to(device)
    fields = spec.family.fields
    for chunk in store.iter_chunks(fields, chunk_steps):
        episode = _episode_ids(ends_np, starts_np, chunk.start, chunk.stop, device)  # [C]
        values = {name: _to_device(name, chunk.fields[name], device) for name in fields}
        rows = None  # row numbers, built only where needed (else row = chunk.start + i)
        weight = None  # the spec's step weights (None: every step weighs 1)
        if not spec.weights_every_step:
            rows = torch.arange(chunk.start, chunk.stop, device=device)
            offset = rows - starts[episode]  # steps into the episode
            keep = spec.rewarded_steps(offset, ends[episode] - starts[episode])
            if keep is not None:
                rows, episode, offset = rows[keep], episode[keep], offset[keep]
                values = {name: value[keep] for name, value in values.items()}
            weight = spec.discounts(offset)
        for name, value in values.items():
            _check_finite(name, value, rows, chunk.start, episode, store.first_episode)
        if len(episode):
            accumulator.add(values, episode, weight)
        if progress is not None:
            progress(chunk.stop - chunk.start)
    return accumulator


def returns_tiles(
    store: TrajectoryStore | StoreRows,
    spec: TaskSpec,
    candidates: np.ndarray,
    *,
    device: torch.device,
    chunk_steps: int,
    tile: int,
    show_progress: bool = True,
) -> Iterator[tuple[int, int, Tensor]]:
    """R [N, K] in column tiles of at most ``tile`` tasks: yields (j0, j1, R[:, j0:j1]),
    N the episodes of ``store`` (a :class:`StoreRows` view: its episodes only).

    ``linear`` reads the data once for all tiles; other families once per tile.
    """
    store = StoreRows.of(store)
    tasks = torch.from_numpy(candidates.astype(np.float64)).to(device)
    n, k = store.num_episodes, len(candidates)
    bounds = [(j, min(j + tile, k)) for j in range(0, k, tile)]
    linear = isinstance(spec.family, LinearFamily)
    passes = 1 if linear else len(bounds)
    with progress_bar(
        enabled=show_progress,
        total=store.num_steps * passes,
        desc="relabel",
        unit="step",
        unit_scale=True,
    ) as bar:
        shared: ReturnAccumulator | None = None
        for j0, j1 in bounds:
            if shared is None or not linear:
                acc = make_accumulator(spec.family, tasks[j0:j1], n, j0, store.first_episode)
                shared = accumulate_returns(
                    store, spec, acc, device=device, chunk_steps=chunk_steps, progress=bar.update
                )
            yield j0, j1, shared.result(tasks[j0:j1])


def tile_columns(episodes: int, candidates: int, max_matrix_mb: float) -> int:
    """Columns of R held at once: all K if N x K float64 fits ``max_matrix_mb``."""
    return max(1, min(candidates, int(max_matrix_mb * 2**20 // (8 * episodes))))


@dataclass(frozen=True)
class RelabelSizes:
    """Peak bytes a relabel run needs, by the option that controls each part."""

    candidates: int
    """Candidate arrays, per-candidate vectors and the N x tile work (``--candidates``)."""
    top_k: int
    """The N x k top-k indices and log-probabilities and their merges (``--top-k``)."""
    chunk: int
    """Two chunks of step rows in float64 (one is prefetched) (``--chunk-steps``)."""
    spill: int
    """Temporary disk for R when it is tiled (N x K float64), else 0."""
    device_part: int
    """The part of ``candidates`` + ``chunk`` that lives on the compute device."""

    @property
    def memory(self) -> int:
        return BASE_BYTES + self.candidates + self.top_k + self.chunk

    @classmethod
    def of(
        cls,
        store: TrajectoryStore | StoreRows,
        spec: TaskSpec,
        method: str,
        counts: tuple[int, int, int],
        chunk_steps: int,
        tile: int,
    ) -> RelabelSizes:
        """``counts`` = (K candidates, task dimension, stored top-k)."""
        k, dim, top_k = counts
        n = store.num_episodes
        per_candidate = k * (dim * (8 + 4 + 8) + 6 * 8)  # draws, float32, device copy, vectors
        if method == "random":  # uniform keys and their argsort (and a tiled index)
            return cls(per_candidate + n * k * (24 if top_k == k else 16), n * top_k * 16, 0, 0, 0)
        family = spec.family
        sorted_target = isinstance(family, TargetFamily) and dim == 1
        factor = SORTED_TILE_FACTOR if sorted_target else TILE_FACTOR
        work = n * tile * 8 * factor
        if not isinstance(family, (LinearFamily, TargetFamily)):
            work += 4 * 8 * MAX_REWARD_ELEMENTS  # the reward block [rows, tile] and temporaries
        rows = min(chunk_steps, store.num_steps)
        info = store.step_fields()
        row_bytes = 64 + sum(
            info[f].dtype.itemsize * _columns(info[f].shape) + 16 * _columns(info[f].shape)
            for f in family.fields
        )
        chunk = 2 * rows * row_bytes
        spill = n * k * 8 if tile < k else 0
        return cls(per_candidate + work, n * top_k * 48, chunk, spill, work + chunk)


def _columns(shape: tuple[int, ...]) -> int:
    out = 1
    for size in shape[1:]:
        out *= size
    return out


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB" if size >= 2**30 else f"{size / 2**20:.3g} MiB"


def check_fits(sizes: RelabelSizes, device: torch.device, options: Mapping[str, str]) -> None:
    """InputError, before anything is allocated, when the run cannot fit in memory (or
    its spill on the temporary disk); it names the option behind the largest part.
    ``options`` maps candidates/top_k/chunk to how the user set them (``--top-k 50``)."""
    parts = {"candidates": sizes.candidates, "top_k": sizes.top_k, "chunk": sizes.chunk}
    culprit = options[max(parts, key=lambda key: parts[key])]
    fix = f"; lower {culprit.split()[0]}"
    host = sizes.memory - (sizes.device_part if device.type == "cuda" else 0)
    available = available_memory()
    if available is not None and host > available:
        raise InputError(
            f"{culprit}: needs about {_gib(host)} of memory but {_gib(available)} is available{fix}"
        )
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        if sizes.device_part > free:
            raise InputError(
                f"{culprit}: needs about {_gib(sizes.device_part)} of GPU memory but "
                f"{_gib(free)} is free{fix} (or use --device cpu)"
            )
    if sizes.spill:
        folder = tempfile.gettempdir()
        free = shutil.disk_usage(folder).free
        if sizes.spill > free:
            what = options["candidates"]
            raise InputError(
                f"{what}: the N x K returns matrix needs {_gib(sizes.spill)} of temporary "
                f"disk in {folder} but {_gib(free)} is free; lower {what.split()[0]} "
                "or set TMPDIR to a larger disk"
            )
