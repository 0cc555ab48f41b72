"""Exact returns of the ``target`` family with a scalar feature, r = -|f - psi| - c ||a||^2,
through sorted buckets: sum_t w_t |f_t - psi| is piecewise linear in psi, so each step
lands in one bucket between sorted candidates and only per-bucket weight and
weighted-feature sums are kept: O(T log K + K) per episode instead of O(T K).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hipi_offline.relabel import segments as seg
from hipi_offline.relabel.segments import Scratch, Segments
from hipi_offline.tasks.families import ACTIONS, TargetFamily


class SortedTargetAccumulator:
    """Exact returns of -|f - psi| - ctrl for a scalar feature via sorted buckets: per
    (episode, bucket) step weights and weighted feature sums, and per episode the
    weighted sum of ||a||^2 (float64 squares; see :meth:`Segments.square_sums`)."""

    def __init__(self, family: TargetFamily, tasks: Tensor, episodes: int) -> None:
        self.family = family
        # With `dims` the bucket sums see only the selected columns: the pass checks the rest.
        checked = (family.feature,) if family.dims is None else ()
        self.checks = frozenset(checked + ((ACTIONS,) if family.ctrl_cost else ()))
        self.order = torch.argsort(tasks[:, 0])
        self.sorted = tasks[self.order, 0].contiguous()  # [K]
        self.buckets = len(tasks) + 1
        device = tasks.device
        self.weight = torch.zeros(episodes, self.buckets, dtype=torch.float64, device=device)
        self.moment = torch.zeros_like(self.weight)
        self.squares = torch.zeros(episodes, dtype=torch.float64, device=device)
        self.table: Float32Buckets | None = None  # built for the first float32 chunk
        self.scratch = Scratch()

    def add(self, segments: Segments) -> bool:
        name = self.family.feature
        field = torch.from_numpy(np.ascontiguousarray(segments.values[name]))
        f = self.family.value({name: field.to(segments.device)})[:, 0]  # [C]
        if seg.numpy_path(f.device) and f.dtype == torch.float32:
            count, moment = self._host_buckets(segments, f.numpy())
        else:
            count, moment = self._torch_buckets(segments, f.to(torch.float64))
        episodes = segments.episode_index
        self.weight.index_add_(0, episodes, count)
        self.moment.index_add_(0, episodes, moment)
        finite = bool(torch.isfinite(moment).all())
        if self.family.ctrl_cost:
            squares = segments.square_sums(segments.values[ACTIONS], self.scratch)
            self.squares.index_add_(0, episodes, squares)
            finite = finite and bool(torch.isfinite(squares).all())
        return finite

    def _host_buckets(self, segments: Segments, f: np.ndarray) -> tuple[Tensor, Tensor]:
        """Per (run, bucket) weights and weighted feature sums [E, K+1] of float32 ``f``:
        buckets from the table, sums by ``np.bincount`` (sequential, float64)."""
        if self.table is None:
            self.table = Float32Buckets(self.sorted.numpy(), segments.size)
        flat = self.table(f, self.scratch)  # a reused int64 buffer
        np.add(flat, segments.run_base(self.buckets, self.scratch), out=flat)
        size = len(segments.offsets) * self.buckets
        wide = self.scratch.get("wide", len(f), np.float64)
        if segments.weight is None:
            np.copyto(wide, f)  # exact
            count = np.bincount(flat, minlength=size).astype(np.float64)
        else:
            np.multiply(segments.weight, f, out=wide)
            count = np.bincount(flat, segments.weight, minlength=size)
        moment = np.bincount(flat, wide, minlength=size)
        shape = (-1, self.buckets)
        return torch.from_numpy(count).view(shape), torch.from_numpy(moment).view(shape)

    def _torch_buckets(self, segments: Segments, f: Tensor) -> tuple[Tensor, Tensor]:
        """The same with torch ops (CUDA, or a feature that is not float32)."""
        flat = segments.runs() * self.buckets + torch.searchsorted(self.sorted, f)
        size = len(segments.offsets) * self.buckets
        weight = segments.weights()
        count = _scatter_sum(flat, weight, size).view(-1, self.buckets)
        moment = _scatter_sum(flat, f if weight is None else weight * f, size)
        return count, moment.view(-1, self.buckets)

    def result(self, tasks: Tensor) -> Tensor:
        """R [N, K] in the candidates' order. The N x K work runs in place in two
        buffers (fresh N x K temporaries cost page faults), and the columns go back to
        the candidates' order by one gather (a column scatter is 3x slower)."""
        weight = self.weight.cumsum(dim=1)  # [N, K+1]
        moment = self.moment.cumsum(dim=1)
        w_total, m_total = weight[:, -1:], moment[:, -1:]
        w_below, m_below = weight[:, :-1], moment[:, :-1]  # steps with f <= psi_(j)
        psi = self.sorted[None, :]
        # (psi w_below - m_below) + (m_total - m_below) - psi (w_total - w_below)
        absolute = torch.mul(psi, w_below).sub_(m_below)
        other = torch.sub(m_total, m_below)
        absolute += other
        absolute -= torch.sub(w_total, w_below, out=other).mul_(psi)
        base = -self.family.ctrl_cost * self.squares
        absolute.neg_().add_(base[:, None])  # base - absolute, exactly
        inverse = torch.empty_like(self.order)
        inverse[self.order] = torch.arange(len(self.order), device=self.order.device)
        return torch.index_select(absolute, 1, inverse)


class Float32Buckets:
    """The bucket of float32 values f among sorted float64 candidates s (the number of
    candidates < f, as ``torch.searchsorted(s, f.double())``), exact and without a
    binary search for most rows.

    A candidate compares with a float32 f as its float32 round-down t does (s < f <=>
    t < f: no float32 lies in (t, s)), and float32 order is the integer order of the
    keys ``bits ^ ((bits >> 31) & 0x7fffffff)`` (with -0.0 turned into +0.0 among the
    t). A table over the keys' top bits holds the bucket of every cell without a
    candidate; only rows in a cell holding one take a binary search over the keys."""

    def __init__(self, candidates: np.ndarray, rows: int) -> None:
        with np.errstate(over="ignore"):  # beyond float32's range: +-inf, then rounded down
            rounded = candidates.astype(np.float32)
        down = np.where(rounded > candidates, np.nextafter(rounded, np.float32(-np.inf)), rounded)
        self.keys = _order_keys(down + np.float32(0.0))  # nondecreasing int32 [K]
        bits = min(20, max(10, rows.bit_length() + 4))  # 2^20 cells for a 64 Ki-row chunk
        self.shift, self.middle = 32 - bits, 1 << (bits - 1)
        cells = (self.keys >> self.shift).astype(np.int64) + self.middle
        count = np.bincount(cells, minlength=1 << bits)
        below = np.cumsum(count) - count
        table = np.where(count == 0, below, -1)  # -1: a candidate lies in the cell
        self.table = table.astype(np.int32)  # 4 MiB at 2^20 cells

    def __call__(self, values: np.ndarray, scratch: Scratch | None = None) -> np.ndarray:
        """int64 buckets of float32 ``values`` (in a buffer of ``scratch``, if given)."""
        scratch = Scratch() if scratch is None else scratch
        n = len(values)
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.int32)
        keys, cells = scratch.get("keys", n, np.int32), scratch.get("cells", n, np.int32)
        np.right_shift(bits, 31, out=keys)  # the same as _order_keys, in place
        np.bitwise_and(keys, 0x7FFFFFFF, out=keys)
        np.bitwise_xor(keys, bits, out=keys)
        np.right_shift(keys, self.shift, out=cells)
        np.add(cells, self.middle, out=cells)
        found = scratch.get("found", n, np.int32)
        np.take(self.table, cells, out=found, mode="clip")  # cells are in range
        bucket = scratch.get("bucket", n, np.int64)
        np.copyto(bucket, found)
        search = np.flatnonzero(found < 0)
        if len(search):
            bucket[search] = np.searchsorted(self.keys, keys[search], side="left")
        return bucket


def _order_keys(values: np.ndarray) -> np.ndarray:
    """int32 keys in the order of the float32 ``values`` (NaN: at either end)."""
    bits = values.view(np.int32)
    return bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))


def _scatter_sum(index: Tensor, values: Tensor | None, size: int) -> Tensor:
    """float64 [size]: the sum of ``values`` (None: ones) at each index. ``bincount`` on
    the CPU (sequential); deterministic ``index_add_`` on CUDA (bincount uses atomics)."""
    if seg.numpy_path(index.device):
        return torch.bincount(index, values, minlength=size).to(torch.float64)
    if values is None:
        values = torch.ones(len(index), dtype=torch.float64, device=index.device)
    out = torch.zeros(size, dtype=torch.float64, device=index.device)
    return out.index_add_(0, index, values)
