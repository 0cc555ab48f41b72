"""Streaming computation of the returns matrix R_ij = sum_t gamma^t r_psi_j(s_t, a_t).

One chunked pass over the store's steps. Episodes are contiguous, so each chunk's
rewarded rows form runs of one episode (:class:`Segments`) and per-episode sums are
segment reductions: on the CPU ``np.add.reduceat`` accumulates in float64 straight
from the stored dtype, touching each step value once. Finiteness is checked on those
sums (NaN and inf propagate); the offending row is searched for only on an error.
Two families have exact fast paths:

* ``linear``: only the sufficient statistic sum_t gamma^t phi_t [N, D] is
  accumulated, each feature field reduced where it lies; R = Phi psi^T at the end
  (one pass serves any number of tasks).
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
from typing import Any, Protocol

import numba
import numpy as np
import torch
from torch import Tensor

from hipi_offline.errors import InputError
from hipi_offline.preflight import available_memory
from hipi_offline.progress import progress_bar
from hipi_offline.relabel import segments as seg
from hipi_offline.relabel.segments import Segments
from hipi_offline.relabel.target_returns import SortedTargetAccumulator
from hipi_offline.store.backends import ArrayInfo
from hipi_offline.store.store import StepChunk, TrajectoryStore
from hipi_offline.tasks.families import (
    LinearFamily,
    NonFiniteReward,
    RewardFamily,
    TargetFamily,
)
from hipi_offline.tasks.spec import TaskSpec

MAX_REWARD_ELEMENTS = 1 << 22  # rows x tasks evaluated at once by the generic path
# Peak bytes per element of an N x tile block of R, measured (RSS) on CPU: R, the
# scores, q and q * s of the posterior; the sorted-target buckets and cumsums add more.
TILE_FACTOR, SORTED_TILE_FACTOR = 6, 10
BASE_BYTES = 64 * 2**20  # the run's own buffers (store reads, torch workspaces), measured


class ReturnAccumulator(Protocol):
    checks: frozenset[str]
    """The fields whose finiteness :meth:`add` reports (NaN and inf propagate into the
    sums it keeps); the pass checks the others itself before calling it."""

    def add(self, segments: Segments) -> bool:
        """Accumulate one chunk; False when a sum over a field of ``checks`` is not
        finite (then the pass looks for the row to name)."""
        ...

    def result(self, tasks: Tensor) -> Tensor:
        """R [N, K] for ``tasks``, whole."""
        ...

    def rows(self, tasks: Tensor, i0: int, i1: int, out: np.ndarray) -> np.ndarray:
        """R[i0:i1] for ``tasks`` on the CPU, in ``out`` (float64 [i1 - i0, K]) or a view
        of an R held whole: see :data:`~hipi_offline.relabel.posterior.RowSource`."""
        ...


class GenericAccumulator:
    """Evaluates the family's reward for every (step, task) pair; ``tasks`` are the
    candidates from index ``first`` on and the episodes start at ``first_episode``
    (both for messages)."""

    checks: frozenset[str] = frozenset()  # a reward may not propagate NaN (comparisons)

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

    def add(self, segments: Segments) -> bool:
        fields = {name: segments.tensor(name) for name in segments.values}
        episode = segments.episode_index[segments.runs()]
        weight = segments.weights()
        rows = segments.size
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
        return True

    def result(self, tasks: Tensor) -> Tensor:
        return self.returns

    def rows(self, tasks: Tensor, i0: int, i1: int, out: np.ndarray) -> np.ndarray:
        return self.returns.numpy()[i0:i1]


class LinearAccumulator:
    """Sufficient statistic of a linear reward: discounted feature sums [N, D], each
    feature field reduced where it lies (the columns of ``LinearFamily.phi``, in order)."""

    def __init__(self, family: LinearFamily, dim: int, episodes: int, device: torch.device) -> None:
        self.family = family
        self.checks = frozenset(family.features)
        self.stats = torch.zeros(episodes, dim, dtype=torch.float64, device=device)

    def add(self, segments: Segments) -> bool:
        parts = [segments.sums(segments.values[name]) for name in self.family.features]
        sums = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [E, D]
        self.stats.index_add_(0, segments.episode_index, sums)
        return bool(torch.isfinite(sums).all())

    def result(self, tasks: Tensor) -> Tensor:
        if seg.numpy_path(self.stats.device):  # the same loop as rows(), all rows at once
            n = len(self.stats)
            return torch.from_numpy(self.rows(tasks, 0, n, np.empty((n, len(tasks)))))
        return self.stats @ tasks.T

    def rows(self, tasks: Tensor, i0: int, i1: int, out: np.ndarray) -> np.ndarray:
        """Phi[i0:i1] psi^T into ``out``: a chunk of rows in cache, where R whole would
        be N x K of fresh memory (page faults cost more than the product). A compiled
        loop, not numpy's matmul: OpenBLAS runs even this small product on all cores,
        which stalls (100x) when another process holds one."""
        tasks_t = np.ascontiguousarray(tasks.numpy().T)  # [D, K]: K x D numbers
        return _linear_rows(self.stats.numpy()[i0:i1], tasks_t, out)


@numba.njit(cache=True, nogil=True)
def _linear_rows(stats, tasks_t, out):  # noqa: ANN001, ANN202 (numba kernel)
    """out = stats @ tasks_t ([m, D] x [D, K]), summed over D in order."""
    rows, dim = stats.shape
    for i in range(rows):
        first = stats[i, 0] if dim else 0.0
        for j in range(tasks_t.shape[1]):
            out[i, j] = first * tasks_t[0, j] if dim else 0.0
        for d in range(1, dim):
            a = stats[i, d]
            for j in range(tasks_t.shape[1]):
                out[i, j] += a * tasks_t[d, j]
    return out


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


def _finite(values: np.ndarray) -> bool:
    """Whether the sum of ``values`` is finite: then every value is (NaN and inf
    propagate); a False may also be an overflow of finite values."""
    if values.dtype.kind != "f":
        return True
    wide = np.float64 if values.dtype.itemsize < 4 else None  # float16 overflows at 65504
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.isfinite(values.sum(dtype=wide)))


def _segments(
    chunk: StepChunk, ends: np.ndarray, starts: np.ndarray, spec: TaskSpec, device: torch.device
) -> Segments | None:
    """The chunk's rewarded rows in runs of one episode (None when no row counts);
    ``ends``/``starts`` are the view's episode bounds in store rows."""
    a, b = chunk.start, chunk.stop
    first = int(np.searchsorted(ends, a, side="right"))
    last = int(np.searchsorted(ends, b - 1, side="right"))
    episodes = np.arange(first, last + 1, dtype=np.int64)
    lo = np.maximum(starts[first : last + 1], a) - a  # each episode's rows in the chunk
    hi = np.minimum(ends[first : last + 1], b) - a
    if spec.weights_every_step:  # every row, weight 1: runs are the episodes' pieces
        some = hi > lo
        return Segments(chunk.fields, lo[some], episodes[some], None, None, a, device)
    episode = np.repeat(episodes, hi - lo)  # [C]
    rows = np.arange(a, b, dtype=np.int64)
    offset = torch.from_numpy(rows - starts[episode])  # steps into the episode
    length = torch.from_numpy(ends[episode] - starts[episode])
    keep = spec.rewarded_steps(offset, length)
    values = dict(chunk.fields)
    if keep is not None:
        where = keep.numpy()
        rows, episode, offset = rows[where], episode[where], offset[keep]
        values = {name: value[where] for name, value in values.items()}
        if not len(rows):
            return None
    weight = spec.discounts(offset)
    change = np.flatnonzero(episode[1:] != episode[:-1]) + 1
    offsets = np.concatenate([np.zeros(1, np.int64), change])
    numpy_weight = None if weight is None else weight.numpy()
    return Segments(values, offsets, episode[offsets], numpy_weight, rows, a, device)


def accumulate_returns(
    store: TrajectoryStore | StoreRows,
    spec: TaskSpec,
    accumulator: ReturnAccumulator,
    *,
    device: torch.device,
    chunk_steps: int,
    progress: Callable[[int], None] | None = None,
    prefetch: bool = True,
) -> ReturnAccumulator:
    """One streaming pass over the steps the family reads (of the whole store or of a
    :class:`StoreRows` view), into ``accumulator``; with ``prefetch`` the next chunk is
    read on a background thread while this one is reduced.

    On CUDA, ``index_add_`` is made deterministic for the pass (the default uses
    atomics, whose order of float additions changes the last bits run to run). The CPU
    leaves the setting alone: setting it imports ``torch._inductor`` (seconds)."""
    rows = StoreRows.of(store)
    if device.type != "cuda" or torch.are_deterministic_algorithms_enabled():
        return _accumulate(rows, spec, accumulator, device, chunk_steps, progress, prefetch)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _accumulate(rows, spec, accumulator, device, chunk_steps, progress, prefetch)
    finally:
        torch.use_deterministic_algorithms(False)


def _accumulate(
    store: StoreRows,
    spec: TaskSpec,
    accumulator: ReturnAccumulator,
    device: torch.device,
    chunk_steps: int,
    progress: Callable[[int], None] | None,
    prefetch: bool,
) -> ReturnAccumulator:
    """Each chunk's rewarded rows go to the accumulator once. Finiteness is checked on
    sums (the accumulator's per-episode sums, else one sum per field and chunk); only
    when one is not finite are the chunk's fields searched, in order, for the first row
    holding NaN or inf (none: finite values overflowed, as R would too)."""
    fields = spec.family.fields
    unchecked = [name for name in fields if name not in accumulator.checks]
    for chunk in store.iter_chunks(fields, chunk_steps, prefetch):
        segments = _segments(chunk, store.ends, store.starts, spec, device)
        if segments is not None:
            if not all(_finite(segments.values[name]) for name in unchecked):
                for name in fields:
                    segments.locate(name, store.first_episode)
            if not accumulator.add(segments):
                for name in fields:
                    segments.locate(name, store.first_episode)
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
    prefetch: bool = True,
) -> Iterator[tuple[int, int, Tensor]]:
    """R [N, K] in column tiles of at most ``tile`` tasks: yields (j0, j1, R[:, j0:j1]),
    N the episodes of ``store`` (a :class:`StoreRows` view: its episodes only).

    ``linear`` reads the data once for all tiles; other families once per tile.
    """
    store = StoreRows.of(store)
    tasks = torch.from_numpy(candidates.astype(np.float64)).to(device)
    k = len(candidates)
    bounds = [(j, min(j + tile, k)) for j in range(0, k, tile)]
    linear = isinstance(spec.family, LinearFamily)
    options = dict(device=device, chunk_steps=chunk_steps, prefetch=prefetch)
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
                shared = _one_pass(store, spec, tasks[j0:j1], j0, bar.update, **options)
            yield j0, j1, shared.result(tasks[j0:j1])


def _one_pass(
    store: StoreRows,
    spec: TaskSpec,
    tasks: Tensor,
    first: int,
    progress: Callable[[int], None],
    **options: Any,
) -> ReturnAccumulator:
    """The family's accumulator after one pass over ``store`` for ``tasks`` (candidates
    from index ``first`` on); ``options``: device, chunk_steps, prefetch."""
    acc = make_accumulator(spec.family, tasks, store.num_episodes, first, store.first_episode)
    return accumulate_returns(store, spec, acc, progress=progress, **options)


@dataclass(frozen=True)
class WholeReturns:
    """R [N, K] of all candidates after one pass, held as the accumulator that computes
    any of its rows on the CPU (:meth:`rows`), so that R need not be held whole."""

    accumulator: ReturnAccumulator
    tasks: Tensor

    def rows(self, i0: int, i1: int, out: np.ndarray) -> np.ndarray:
        """R[i0:i1] (a :data:`~hipi_offline.relabel.posterior.RowSource`)."""
        return self.accumulator.rows(self.tasks, i0, i1, out)

    def block(self, j0: int, j1: int) -> Tensor:
        """R[:, j0:j1] (a :data:`~hipi_offline.relabel.posterior.Block`): R is made whole
        on each call (the posterior asks for it only to name a non-finite R)."""
        return self.accumulator.result(self.tasks)[:, j0:j1]


def whole_returns(
    store: TrajectoryStore | StoreRows,
    spec: TaskSpec,
    candidates: np.ndarray,
    *,
    device: torch.device,
    chunk_steps: int,
    show_progress: bool = True,
    prefetch: bool = True,
) -> WholeReturns:
    """One pass over the steps for all candidates at once (R in one tile)."""
    store = StoreRows.of(store)
    tasks = torch.from_numpy(candidates.astype(np.float64)).to(device)
    options = dict(device=device, chunk_steps=chunk_steps, prefetch=prefetch)
    with progress_bar(
        enabled=show_progress, total=store.num_steps, desc="relabel", unit="step", unit_scale=True
    ) as bar:
        return WholeReturns(_one_pass(store, spec, tasks, 0, bar.update, **options), tasks)


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
