"""Exact returns of the ``target`` family with a scalar feature, r = -|f - psi| - c ||a||^2,
through sorted buckets: sum_t w_t |f_t - psi| is piecewise linear in psi, so each step
lands in one bucket between sorted candidates and only per-bucket weight and
weighted-feature sums are kept: O(T log K + K) per episode instead of O(T K).

On the CPU, with a float32 feature, one compiled kernel (numba) per chunk finds each
row's bucket and adds its weight, weighted feature and weighted ||a||^2 straight into
the per-episode sums, and another computes any rows of R from those sums
(:meth:`SortedTargetAccumulator.rows`). On CUDA (or with another feature dtype) torch
ops do the same work.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

from hipi_offline.relabel import segments as seg
from hipi_offline.relabel.segments import Scratch, Segments
from hipi_offline.tasks.families import ACTIONS, TargetFamily


class SortedTargetAccumulator:
    """Exact returns of -|f - psi| - ctrl for a scalar feature via sorted buckets: per
    (episode, bucket) step weights and weighted feature sums, and per episode the
    weighted sum of ||a||^2 in float64.

    Summation order, on the CPU with a float32 feature: the bucket sums add the rows of
    a chunk in row order (as ``np.bincount`` did: bit-identical to it), each chunk's sums
    of an episode begun in an earlier chunk first on their own and then onto the
    episode's (as ``index_add_`` did). Unweighted, each run's ||a||^2 is summed as
    ``np.add.reduceat`` summed the row-major squares (:func:`_reduceat_square_sum`):
    bit-identical; weighted (gamma < 1, or some steps only), column by column for each
    row and the rows in four interleaved sums (:func:`_square_sum`), within float64
    rounding of the per-column ``reduceat`` it replaced."""

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
        """Accumulate one chunk; False when a sum this chunk added to is not finite."""
        name = self.family.feature
        field = torch.from_numpy(np.ascontiguousarray(segments.values[name]))
        f = self.family.value({name: field.to(segments.device)})[:, 0]  # [C]
        if seg.numpy_path(f.device) and f.dtype == torch.float32:
            return self._host_add(segments, np.ascontiguousarray(f.numpy()))
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

    def _host_add(self, segments: Segments, f: np.ndarray) -> bool:
        """One kernel call over the chunk's rows (float32 ``f``): buckets, then the sums."""
        if self.table is None:
            self.table = Float32Buckets(self.sorted.numpy(), segments.size)
        table = self.table
        weighted = segments.weight is not None
        weight = segments.weight if weighted else _NO_WEIGHT
        squared = bool(self.family.ctrl_cost)
        actions = _action_rows(segments.values[ACTIONS]) if squared else _NO_ACTIONS
        first_w = self.scratch.get("first_weight", self.buckets, np.float64)
        first_m = self.scratch.get("first_moment", self.buckets, np.float64)
        return bool(
            _add_chunk(
                f,
                f.view(np.int32),
                table.table,
                table.keys,
                table.shift,
                table.middle,
                np.ascontiguousarray(segments.offsets, dtype=np.int64),
                np.ascontiguousarray(segments.episodes, dtype=np.int64),
                weighted,
                np.ascontiguousarray(weight, dtype=np.float64),
                squared,
                actions,
                self.weight.numpy(),
                self.moment.numpy(),
                self.squares.numpy(),
                first_w,
                first_m,
            )
        )

    def _torch_buckets(self, segments: Segments, f: Tensor) -> tuple[Tensor, Tensor]:
        """Per (run, bucket) weights and weighted feature sums [E, K+1] with torch ops
        (CUDA, or a feature that is not float32)."""
        flat = segments.runs() * self.buckets + torch.searchsorted(self.sorted, f)
        size = len(segments.offsets) * self.buckets
        weight = segments.weights()
        count = _scatter_sum(flat, weight, size).view(-1, self.buckets)
        moment = _scatter_sum(flat, f if weight is None else weight * f, size)
        return count, moment.view(-1, self.buckets)

    def rows(self, tasks: Tensor, i0: int, i1: int, out: np.ndarray) -> np.ndarray:
        """R[i0:i1] [i1 - i0, K] in the candidates' order, written into ``out`` (float64,
        C-contiguous, that shape) and returned: bit-identical to ``result(tasks)[i0:i1]``.
        CPU tensors only; safe from several threads at once on disjoint rows (the kernel
        releases the GIL and writes ``out`` only). ``tasks`` are those of the
        constructor (R is computed from the sorted candidates kept then)."""
        if self.weight.device.type != "cpu":
            raise ValueError("rows() needs the sums on the CPU")
        k = self.buckets - 1
        if not (0 <= i0 <= i1 <= len(self.weight)):
            raise ValueError(f"rows {i0}:{i1} out of range for {len(self.weight)} episodes")
        if out.shape != (i1 - i0, k) or out.dtype != np.float64 or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous float64 of shape {(i1 - i0, k)}")
        _rows(
            self.weight.numpy(),
            self.moment.numpy(),
            self.squares.numpy(),
            self.sorted.numpy(),
            self.order.numpy(),
            -float(self.family.ctrl_cost),
            int(i0),
            int(i1),
            out,
        )
        return out

    def result(self, tasks: Tensor) -> Tensor:
        """R [N, K] in the candidates' order. On the CPU one kernel writes each row of R
        once (:meth:`rows`); elsewhere the N x K work runs in place in two buffers and the
        columns go back to the candidates' order by one gather."""
        if seg.numpy_path(self.weight.device):
            n, k = self.weight.shape[0], self.buckets - 1
            return torch.from_numpy(self.rows(tasks, 0, n, np.empty((n, k), np.float64)))
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


_NO_WEIGHT = np.empty(0, np.float64)
_NO_ACTIONS = np.empty((0, 0), np.float32)


def _action_rows(values: np.ndarray) -> np.ndarray:
    """The action rows as a C-contiguous [rows, d] array: float32 as stored, any other
    dtype in float64 (exact for the dtypes a store holds)."""
    matrix = values.reshape(len(values), -1)
    dtype = np.float32 if matrix.dtype == np.float32 else np.float64
    return np.ascontiguousarray(matrix, dtype=dtype)


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
        self.table = np.empty(1 << bits, np.int32)  # 4 MiB at 2^20 cells
        _fill_table(self.keys, self.shift, self.middle, self.table)

    def __call__(self, values: np.ndarray, scratch: Scratch | None = None) -> np.ndarray:
        """int64 buckets of float32 ``values`` (in a buffer of ``scratch``, if given)."""
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.int32)
        scratch = Scratch() if scratch is None else scratch
        out = scratch.get("bucket", len(bits), np.int64)
        _buckets(bits, self.table, self.keys, self.shift, self.middle, out)
        return out


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


# ------------------------------------------------------------------ compiled kernels
@numba.njit(cache=True, nogil=True)
def _bucket(bits: np.int32, table: np.ndarray, keys: np.ndarray, shift: int, middle: int) -> int:
    """The bucket of one float32 given by its bits (see :class:`Float32Buckets`)."""
    b = np.int64(bits)
    key = b ^ ((b >> 31) & 0x7FFFFFFF)  # the int32 key, sign-extended
    found = table[(key >> shift) + middle]
    if found >= 0:
        return np.int64(found)
    lo, hi = 0, len(keys)  # the number of keys < key (searchsorted, side left)
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def _fill_table(keys: np.ndarray, shift: int, middle: int, table: np.ndarray) -> None:
    """table[c]: the number of keys below cell c, or -1 when a key lies in cell c (the
    cell of a key is ``(key >> shift) + middle``; ``keys`` nondecreasing)."""
    p = 0
    for c in range(len(table)):
        while p < len(keys) and (np.int64(keys[p]) >> shift) + middle < c:
            p += 1
        if p < len(keys) and (np.int64(keys[p]) >> shift) + middle == c:
            table[c] = -1
        else:
            table[c] = p


@numba.njit(cache=True, nogil=True)
def _buckets(
    bits: np.ndarray, table: np.ndarray, keys: np.ndarray, shift: int, middle: int, out: np.ndarray
) -> None:
    for i in range(len(bits)):
        out[i] = _bucket(bits[i], table, keys, shift, middle)


@numba.njit(cache=True, nogil=True)
def _add_chunk(
    values: np.ndarray,
    bits: np.ndarray,
    table: np.ndarray,
    keys: np.ndarray,
    shift: int,
    middle: int,
    offsets: np.ndarray,
    episodes: np.ndarray,
    weighted: bool,
    weight: np.ndarray,
    squared: bool,
    actions: np.ndarray,
    weight_sums: np.ndarray,
    moment_sums: np.ndarray,
    squares: np.ndarray,
    first_w: np.ndarray,
    first_m: np.ndarray,
) -> bool:
    """Adds one chunk's rows (float32 ``values``, their ``bits``) to the per-episode
    bucket sums [N, K+1] and squares [N]; whether every sum it added to is finite.

    Run r covers rows offsets[r]..offsets[r+1] of episode episodes[r]. The first run
    (whose episode may have begun in an earlier chunk) is summed into ``first_w`` /
    ``first_m`` and then added to the episode's sums; the others (new episodes) are
    summed in place. The bucket sums add their terms in row order; each run's squares
    are summed by :func:`_square_sum`, then added to the episode's."""
    rows, runs = len(values), len(offsets)
    d = actions.shape[1]
    finite = True
    for r in range(runs):
        lo = offsets[r]
        hi = offsets[r + 1] if r + 1 < runs else rows
        e = episodes[r]
        if r == 0:
            w_row, m_row = first_w, first_m
            w_row[:] = 0.0
            m_row[:] = 0.0
        else:
            w_row, m_row = weight_sums[e], moment_sums[e]
        for i in range(lo, hi):
            b = _bucket(bits[i], table, keys, shift, middle)
            x = np.float64(values[i])
            if weighted:
                w = weight[i]
                w_row[b] += w
                m = m_row[b] + w * x
            else:
                w_row[b] += 1.0
                m = m_row[b] + x
            m_row[b] = m
            if not math.isfinite(m):
                finite = False
        if r == 0:
            for b in range(len(first_w)):
                weight_sums[e, b] += first_w[b]
                m = moment_sums[e, b] + first_m[b]
                moment_sums[e, b] = m
                if not math.isfinite(m):
                    finite = False
        if squared:
            run_sum = (
                _square_sum(actions, lo, hi, weighted, weight)
                if weighted
                else _reduceat_square_sum(actions.reshape(-1), lo * d, hi * d)
            )
            s = squares[e] + run_sum
            squares[e] = s
            if not math.isfinite(s):
                finite = False
    return finite


@numba.njit(cache=True, nogil=True)
def _reduceat_square_sum(flat: np.ndarray, lo: int, hi: int) -> float:
    """sum of float64(flat[f])^2 over f in lo..hi, added as ``np.add.reduceat`` adds a
    contiguous float64 segment: its first entry plus numpy's pairwise sum of the rest
    (:func:`_pairwise_squares`), so that the unweighted control cost is bit-identical
    to the squares-then-reduceat it replaced."""
    first = np.float64(flat[lo])
    if hi - lo == 1:
        return first * first
    return first * first + _pairwise_squares(flat, lo + 1, hi - lo - 1)


@numba.njit(cache=True, nogil=True)
def _pairwise_squares(flat: np.ndarray, start: int, n: int) -> float:
    """numpy's pairwise float64 sum (``pairwise_sum`` in its loops_utils: under 8 terms in
    order; up to 128 in eight interleaved sums, combined as ((0+1)+(2+3))+((4+5)+(6+7)),
    then the rest in order; above, the halves, the first a multiple of 8) of the
    squares of flat[start:start + n]."""
    if n < 8:
        res = 0.0
        for f in range(start, start + n):
            v = np.float64(flat[f])
            res += v * v
        return res
    if n <= 128:
        v0, v1 = np.float64(flat[start]), np.float64(flat[start + 1])
        v2, v3 = np.float64(flat[start + 2]), np.float64(flat[start + 3])
        v4, v5 = np.float64(flat[start + 4]), np.float64(flat[start + 5])
        v6, v7 = np.float64(flat[start + 6]), np.float64(flat[start + 7])
        r0, r1, r2, r3 = v0 * v0, v1 * v1, v2 * v2, v3 * v3
        r4, r5, r6, r7 = v4 * v4, v5 * v5, v6 * v6, v7 * v7
        i = 8
        while i < n - n % 8:
            f = start + i
            v0, v1 = np.float64(flat[f]), np.float64(flat[f + 1])
            v2, v3 = np.float64(flat[f + 2]), np.float64(flat[f + 3])
            v4, v5 = np.float64(flat[f + 4]), np.float64(flat[f + 5])
            v6, v7 = np.float64(flat[f + 6]), np.float64(flat[f + 7])
            r0 += v0 * v0
            r1 += v1 * v1
            r2 += v2 * v2
            r3 += v3 * v3
            r4 += v4 * v4
            r5 += v5 * v5
            r6 += v6 * v6
            r7 += v7 * v7
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            v = np.float64(flat[start + i])
            res += v * v
            i += 1
        return res
    half = n // 2
    half -= half % 8
    return _pairwise_squares(flat, start, half) + _pairwise_squares(flat, start + half, n - half)


@numba.njit(cache=True, nogil=True)
def _square_sum(actions: np.ndarray, lo: int, hi: int, weighted: bool, weight: np.ndarray) -> float:
    """sum_i w_i ||actions[i]||^2 over rows lo..hi in float64 (exact squares): each row's
    squares summed in column order, the rows in four interleaved partial sums (rows
    i, i+4, ... in one), which are added at the end (faster than one chain)."""
    d = actions.shape[1]
    t0 = t1 = t2 = t3 = 0.0
    i = lo
    while i + 4 <= hi:
        s0 = s1 = s2 = s3 = 0.0
        for j in range(d):
            v0, v1 = np.float64(actions[i, j]), np.float64(actions[i + 1, j])
            v2, v3 = np.float64(actions[i + 2, j]), np.float64(actions[i + 3, j])
            s0 += v0 * v0
            s1 += v1 * v1
            s2 += v2 * v2
            s3 += v3 * v3
        if weighted:
            s0, s1, s2, s3 = (
                weight[i] * s0,
                weight[i + 1] * s1,
                weight[i + 2] * s2,
                weight[i + 3] * s3,
            )
        t0 += s0
        t1 += s1
        t2 += s2
        t3 += s3
        i += 4
    while i < hi:
        s0 = 0.0
        for j in range(d):
            v0 = np.float64(actions[i, j])
            s0 += v0 * v0
        t0 += weight[i] * s0 if weighted else s0
        i += 1
    return (t0 + t1) + (t2 + t3)


@numba.njit(cache=True, nogil=True)
def _rows(
    weight_sums: np.ndarray,
    moment_sums: np.ndarray,
    squares: np.ndarray,
    psi: np.ndarray,
    order: np.ndarray,
    neg_ctrl: float,
    i0: int,
    i1: int,
    out: np.ndarray,
) -> None:
    """R[i0:i1] into ``out``: for each row, the cumulative sums over the sorted buckets
    and (psi w_below - m_below) + (m_total - m_below) - (w_total - w_below) psi, negated,
    plus -ctrl ||a||^2, each operation in the order of the torch code in ``result``; the
    column of sorted candidate p is order[p]."""
    k = len(psi)
    for i in range(i0, i1):
        w_total = 0.0
        m_total = 0.0
        for j in range(k + 1):
            w_total += weight_sums[i, j]
            m_total += moment_sums[i, j]
        base = neg_ctrl * squares[i]
        w_below = 0.0
        m_below = 0.0
        row = out[i - i0]
        for p in range(k):
            w_below += weight_sums[i, p]
            m_below += moment_sums[i, p]
            absolute = psi[p] * w_below - m_below
            absolute = absolute + (m_total - m_below)
            absolute = absolute - (w_total - w_below) * psi[p]
            row[order[p]] = -absolute + base
