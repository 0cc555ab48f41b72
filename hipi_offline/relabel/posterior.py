"""The inverse-RL posterior over tasks (paper Eq. 7) from the returns matrix.

    log Z_j      = logsumexp_i (R_ij / alpha) - log N          (all N episodes)
    s_ij         = log p(psi_j) + R_ij / alpha - log Z_j        (hipi)
    s_ij         = log p(psi_j) + R_ij / alpha                  (no-partition ablation)
    log q_ij     = s_ij - logsumexp_j s_ij

R is read in column tiles, so memory is bounded by N x tile: a first sweep
gives log Z (per column) and the row normalizers (streamed logsumexp), a second
gives top-k, entropy and coverage. R in one tile (the common case) takes one exp
of R / alpha minus its column maxima, which yields log Z and, through products
with per-column weights, everything else (:func:`_one_tile`); on the CPU its rows
are taken in chunks that stay in cache. Everything is float64.

Nothing non-finite leaves :func:`inverse_rl_posterior`: its small outputs (log Z,
row normalizers, entropy, coverage, top-k) are checked, which catches any NaN or
inf in R, R / alpha or the scores; only then is R swept again to name the cause
(:class:`NonFinitePosterior`). A log prior of -inf (zero prior mass) is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from hipi_offline.errors import InputError
from hipi_offline.relabel import posterior_sweeps as sweeps
from hipi_offline.relabel import topk

FLOAT32_MAX = float(np.finfo(np.float32).max)  # top-k log-probabilities are stored as float32
Block = Callable[[int, int], Tensor]  # (j0, j1) -> R[:, j0:j1] float64 on the device
RowSource = Callable[[int, int, np.ndarray], np.ndarray]
"""(i0, i1, buffer) -> R[i0:i1] as float64 [i1 - i0, K] on the host: written into
``buffer`` (float64 [i1 - i0, K], C-contiguous) or a view of an R held whole. Called
from worker threads on disjoint rows."""
Array = TypeVar("Array", Tensor, np.ndarray)
_T = TypeVar("_T")


@dataclass(frozen=True, repr=False)
class Posterior:
    """Summaries of q(psi_j | tau_i) for N episodes and K candidates."""

    log_z: np.ndarray  # float64 [K]
    topk_index: np.ndarray  # int64 [N, k]
    topk_logprob: np.ndarray  # float64 [N, k]
    entropy: np.ndarray  # float64 [N]
    coverage: np.ndarray  # float64 [K]

    def __repr__(self) -> str:
        n, k = self.topk_index.shape
        return f"Posterior(N={n}, K={len(self.log_z)}, k={k})"


class NonFinitePosterior(InputError):
    """The posterior would hold NaN or inf; the message names the cause (overflow of
    the returns, a temperature too small for float64, or overflowing scores)."""


def log_partition(returns: Tensor, temperature: float) -> Tensor:
    """log Z_j = logsumexp_i(R_ij / alpha) - log N, [K]."""
    return torch.logsumexp(returns / temperature, dim=0) - math.log(returns.shape[0])


def inverse_rl_posterior(
    block: Block,
    n: int,
    k: int,
    *,
    temperature: float,
    log_prior: Tensor | None,
    partition: bool,
    top_k: int,
    tile: int,
    device: torch.device,
    rows: RowSource | None = None,
) -> Posterior:
    """Posterior summaries from R given tile by tile (see the module docstring); on the
    CPU with one tile, ``rows`` (if given) computes R's rows where they are needed, so
    that R is never held whole (``block`` then serves only to name a non-finite R)."""
    options = dict(temperature=temperature, log_prior=log_prior, partition=partition)
    posterior = posterior_rows(
        block, n, k, **options, top_k=top_k, tile=tile, device=device, rows=rows
    )
    if posterior is None:
        bounds = [(j, min(j + tile, k)) for j in range(0, k, tile)]
        raise_non_finite(ReturnsScan.of(block, bounds, k), temperature, tile)
    return posterior


def posterior_rows(
    block: Block,
    n: int,
    k: int,
    *,
    temperature: float,
    log_prior: Tensor | None,
    partition: bool,
    top_k: int,
    tile: int,
    device: torch.device,
    log_z: Tensor | None = None,
    total: int | None = None,
    rows: RowSource | None = None,
) -> Posterior | None:
    """:func:`inverse_rl_posterior` of ``n`` rows, or None when anything came out NaN or
    inf. Rows of a larger set pass that set's ``log_z`` (else it is computed from these
    rows) and its size ``total``: ``coverage`` is then these rows' share of the
    coverage (sum_i q_ij / total), and the shares of all rows add up to it."""
    bounds = [(j, min(j + tile, k)) for j in range(0, k, tile)]
    if len(bounds) == 1:
        options = dict(temperature=temperature, log_prior=log_prior, partition=partition)
        one = dict(top_k=top_k, log_z=log_z, total=total, device=device, rows=rows)
        return _one_tile(block, n, k, **options, **one)
    given = log_z is not None
    if log_z is None:
        log_z = torch.empty(k, dtype=torch.float64, device=device)
    row_norm = torch.full((n,), -math.inf, dtype=torch.float64, device=device)

    def scores(j0: int, j1: int, returns: Tensor) -> Tensor:
        s = returns / temperature
        if partition:
            s -= log_z[j0:j1]
        if log_prior is not None:
            s += log_prior[j0:j1]
        return s  # [N, j1 - j0]

    for j0, j1 in bounds:
        returns = block(j0, j1)
        if not given:
            log_z[j0:j1] = log_partition(returns, temperature)
        s = scores(j0, j1, returns)
        row_norm = torch.logaddexp(row_norm, torch.logsumexp(s, dim=1))

    zero_mass = log_prior is not None and bool(torch.isneginf(log_prior).any())
    top_k = min(top_k, k)
    best_val = torch.empty(n, 0, dtype=torch.float64, device=device)
    best_idx = torch.empty(n, 0, dtype=torch.int64, device=device)
    expected_score = torch.zeros(n, dtype=torch.float64, device=device)  # sum_j q_ij s_ij
    coverage = torch.empty(k, dtype=torch.float64, device=device)
    for j0, j1 in bounds:
        s = scores(j0, j1, block(j0, j1))
        q = torch.exp(s - row_norm[:, None])  # [N, tile]
        qs = q * s
        if zero_mass:  # q log q -> 0 where the prior (so q) is 0: 0 * -inf is not NaN
            qs = torch.where(q > 0, qs, 0.0)
        expected_score += qs.sum(dim=1)
        coverage[j0:j1] = q.sum(dim=0) / (n if total is None else total)
        vals, idx = torch.topk(s, min(top_k, j1 - j0), dim=1)  # log q is s minus a row constant
        merged_val = torch.cat([best_val, vals], dim=1)
        merged_idx = torch.cat([best_idx, idx + j0], dim=1)
        best_val, order = torch.topk(merged_val, min(top_k, merged_val.shape[1]), dim=1)
        best_idx = torch.gather(merged_idx, 1, order)
    # H_i = -sum_j q log q = L_i - sum_j q_ij s_ij, since log q_ij = s_ij - L_i
    return _finish(log_z, row_norm, row_norm - expected_score, coverage, best_val, best_idx)


def _finish(
    log_z: Tensor,
    row_norm: Tensor,
    entropy: Tensor,
    coverage: Tensor,
    best_val: Tensor,
    best_idx: Tensor,
) -> Posterior | None:
    """The :class:`Posterior` from log Z, L_i, H_i, coverage and the top-k scores s_ij
    (log q_ij + L_i); None when any of them is NaN or inf."""
    best_val = best_val - row_norm[:, None]
    # log q below float32's range is q = 0: -inf now, so the float32 label set is exact
    best_val = best_val.masked_fill(best_val < -FLOAT32_MAX, -math.inf)
    if not _all_finite(log_z, row_norm, entropy, coverage, best_val[:, :1]) or bool(
        best_val.isnan().any() or best_val.isposinf().any()
    ):
        return None
    return Posterior(
        log_z=log_z.cpu().numpy(),
        topk_index=best_idx.cpu().numpy(),
        topk_logprob=best_val.cpu().numpy(),
        entropy=entropy.clamp_min(0).cpu().numpy(),
        coverage=coverage.cpu().numpy(),
    )


# Rows whose sum_j exp(s_ij - c_j) w_j (below) falls under this lose precision to
# underflow in the one-exp scheme and are computed the direct way instead: at or above
# it, every term within e^-50 of the row's largest is a product of normal float64s.
_TINY_ROW_SUM = 1e-250
_CHUNK_BYTES = 1 << 20  # rows of R taken at a time on the CPU: a chunk stays in cache
_EXP_FLOOR = -700.0
"""E_ij = exp(max(R_ij / alpha - M_j, -700)) on the CPU. From about -708 down the exp
is 5-30x slower (subnormal results, underflow; measured with numpy's AVX-512 exp), and
there its value cannot count: every column holds an E of 1 (its maximum), so a log Z
sum is >= 1; a row below :data:`_TINY_ROW_SUM` is computed the direct way; elsewhere
the floor, exp(-700) ~ 1e-304, adds < K * 1e-304 to a row sum >= 1e-250 (relative
1e-50) and < N * 1e-54 to a coverage sum >= 1 / K."""


def _one_tile(
    block: Block,
    n: int,
    k: int,
    *,
    temperature: float,
    log_prior: Tensor | None,
    partition: bool,
    top_k: int,
    log_z: Tensor | None,
    total: int | None,
    device: torch.device,
    rows: RowSource | None,
) -> Posterior | None:
    """:func:`posterior_rows` for R in one tile, with no exp pass over N x K but the
    one log Z needs (and, on the CPU, its repetition chunk by chunk, in cache; R's rows
    come from ``rows`` when given, else from R held whole).

    With M_j = max_i R_ij / alpha, E_ij = exp(R_ij / alpha - M_j) in [0, 1] gives
    log Z_j = M_j + log sum_i E_ij - log N. Since s_ij = R_ij / alpha - M_j + c_j with
    c_j = M_j - log Z_j + log p_j, exp(s_ij - C) = E_ij w_j with w_j = exp(c_j - C) and
    C = max_j c_j: the row normalizers are L_i = C + log (E w)_i, the coverage is
    exp(c_j - C + log (E^T v)_j) / N with v_i = 1 / (E w)_i, and sum_j q_ij s_ij =
    ((E o s) w)_i v_i. Rows with (E w)_i under :data:`_TINY_ROW_SUM` (all their entries
    far below their columns' maxima) are computed the direct way, q = exp(s - L)."""
    top_k = min(top_k, k)
    total = n if total is None else total
    if device.type != "cpu":
        return _finish(
            *_rows_torch(block(0, k), temperature, log_prior, partition, top_k, log_z, total)
        )
    if rows is None:
        held = block(0, k).numpy()
        rows = lambda i0, i1, out: held[i0:i1]  # noqa: E731
    prior = None if log_prior is None else log_prior.cpu().numpy()
    given = None if log_z is None else log_z.cpu().numpy()
    with np.errstate(all="ignore"):  # NaN and inf are reported by _finish
        parts = _rows_numpy(rows, n, k, temperature, prior, partition, top_k, given, total)
    return _finish(*(torch.from_numpy(part) for part in parts))


def _rows_torch(
    returns: Tensor,
    temperature: float,
    log_prior: Tensor | None,
    partition: bool,
    top_k: int,
    log_z: Tensor | None,
    total: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`_one_tile` in torch on any device, R whole: log Z, L, H, coverage and the
    top-k scores and indices."""
    n = returns.shape[0]
    x = returns / temperature  # becomes s in place
    top = x.amax(dim=0)
    e = torch.sub(x, top).exp_()
    if log_z is None:
        log_z = top + torch.log(e.sum(dim=0)) - math.log(n)
    shift = _shift(log_z, log_prior, partition)
    if shift is not None:
        x += shift
    s = x
    c = top if shift is None else top + shift
    high = c.max()
    w = torch.exp(c - high)
    row_sum = e @ w
    good = row_sum >= _TINY_ROW_SUM  # False for NaN too
    inverse = torch.where(good, 1.0 / row_sum, 0.0)
    coverage = torch.exp(c - high + torch.log(e.T @ inverse) - math.log(total))
    row_norm = high + torch.log(row_sum)
    best_val, best_idx = torch.topk(s, top_k, dim=1)
    e *= s  # q_ij s_ij up to w_j v_i
    if log_prior is not None:  # q log q -> 0 where the prior (so q) is 0: not 0 * -inf
        e[:, torch.isneginf(log_prior)] = 0.0
    expected_score = (e @ w) * inverse
    if not bool(good.all()):
        rows = torch.nonzero(~good)[:, 0]
        norm, score, mass = _direct_rows(s[rows])
        row_norm[rows], expected_score[rows] = norm, score
        coverage += mass / total
    return log_z, row_norm, row_norm - expected_score, coverage, best_val, best_idx


def _shift(log_z: Array, log_prior: Array | None, partition: bool) -> Array | None:
    """shift_j with s_ij = R_ij / alpha + shift_j, None for 0."""
    shift = -log_z if partition else None
    if log_prior is not None:
        shift = log_prior if shift is None else shift + log_prior
    return shift


def _direct_rows(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For rows of scores s: L_i, sum_j q_ij s_ij and sum_i q_ij, with q = exp(s - L)."""
    norm = torch.logsumexp(s, dim=1)
    q = torch.exp(s - norm[:, None])
    qs = torch.where(q > 0, q * s, 0.0)
    return norm, qs.sum(dim=1), q.sum(dim=0)


def _rows_numpy(
    source: RowSource,
    n: int,
    k: int,
    temperature: float,
    log_prior: np.ndarray | None,
    partition: bool,
    top_k: int,
    log_z: np.ndarray | None,
    total: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_rows_torch` on the CPU, R's rows taken from ``source`` in chunks that stay
    in cache: one pass for log Z (M_j kept current chunk by chunk, the sums rescaled;
    when log Z is given, M_j alone), one for the rest; each is a few compiled sweeps
    over the chunk (:mod:`~hipi_offline.relabel.posterior_sweeps`) and numpy's exp. With
    torch.get_num_threads() > 1, that many threads take a share of the chunks each."""
    step = max(1, _CHUNK_BYTES // (8 * k))
    starts = range(0, n, step)
    threads = max(1, min(torch.get_num_threads(), len(starts)))
    shares = [
        starts[t * len(starts) // threads : (t + 1) * len(starts) // threads]
        for t in range(threads)
    ]

    def each_share(work: Callable[[range], _T]) -> list[_T]:
        if threads == 1:
            return [work(shares[0])]

        def quiet(share: range) -> _T:  # np.errstate is not inherited by threads
            with np.errstate(all="ignore"):
                return work(share)

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(quiet, shares))

    def chunks(share: range) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray]]:
        """(rows, R's rows, buffers for R / alpha or the scores, and for E) per chunk."""
        x_buffer, e_buffer = np.empty((min(step, n), k)), np.empty((min(step, n), k))
        for i0 in share:
            rows = slice(i0, min(i0 + step, n))
            size = rows.stop - i0
            yield rows, source(i0, rows.stop, x_buffer[:size]), x_buffer[:size], e_buffer[:size]

    def rescaled(top: np.ndarray, new: np.ndarray) -> np.ndarray:
        """exp(top - new), 1 where equal (also where both are -inf)."""
        scale = np.exp(top - new)
        scale[top == new] = 1.0
        return scale

    def log_z_share(share: range) -> tuple[np.ndarray, np.ndarray]:
        top = np.full(k, -np.inf)  # max_i R_ij / alpha over the chunks so far
        column_sum = np.zeros(k)  # sum_i exp(R_ij / alpha - top_j) over them
        for _, x, scaled, e in chunks(share):
            new = top.copy()
            sweeps.scaled_column_max(x, temperature, scaled, new)
            column_sum *= rescaled(top, new)
            sweeps.floored_offsets(scaled if temperature != 1.0 else x, new, e)
            column_sum += np.exp(e, out=e).sum(axis=0)
            top = new
        return top, column_sum

    def top_share(share: range) -> np.ndarray:
        top = np.full(k, -np.inf)
        for _, x, scaled, _ in chunks(share):
            sweeps.scaled_column_max(x, temperature, scaled, top)
        return top

    if log_z is None:
        found = each_share(log_z_share)
        top = np.maximum.reduce([top for top, _ in found])
        column_sum = sum(part * rescaled(share_top, top) for share_top, part in found)
        log_z = top + np.log(column_sum) - math.log(n)
    else:  # max_i R_ij / alpha alone
        top = np.maximum.reduce(each_share(top_share))
    shift = _shift(log_z, log_prior, partition)
    c = top if shift is None else top + shift
    high = c.max()
    w = np.exp(c - high)
    zero = sweeps.zero_flags(None if log_prior is None else np.isneginf(log_prior), k)
    shifts = np.zeros(0) if shift is None else np.ascontiguousarray(shift)  # empty: none
    row_norm, expected_score = np.empty(n), np.empty(n)
    best_val, best_idx = np.empty((n, top_k)), np.empty((n, top_k), dtype=np.int64)

    def rest_share(share: range) -> tuple[np.ndarray, np.ndarray]:
        mass = np.zeros(k)  # sum_i E_ij v_i
        direct = np.zeros(k)  # sum_i q_ij over the rows computed the direct way
        row_sum, weighted_score, inverse = np.empty(step), np.empty(step), np.empty(step)
        for rows, x, s, e in chunks(share):
            size = rows.stop - rows.start
            sweeps.offsets_and_scores(x, temperature, top, shifts, e, s)
            np.exp(e, out=e)
            terms = row_sum[:size], weighted_score[:size], inverse[:size]
            sweeps.row_terms(e, s, w, zero, _TINY_ROW_SUM, *terms, mass)
            row_norm[rows] = high + np.log(row_sum[:size])
            expected_score[rows] = weighted_score[:size] * inverse[:size]
            best_val[rows], best_idx[rows] = topk.top_k(s, top_k)
            bad = np.flatnonzero(inverse[:size] == 0.0)  # under _TINY_ROW_SUM, or NaN
            if len(bad):
                norm, score, q = _direct_rows(torch.from_numpy(s[bad]))
                row_norm[rows.start + bad] = norm.numpy()
                expected_score[rows.start + bad] = score.numpy()
                direct += q.numpy()
        return mass, direct

    found = each_share(rest_share)
    mass = sum(part for part, _ in found)
    direct = sum(part for _, part in found)
    coverage = np.exp(c - high + np.log(mass) - math.log(total)) + direct / total
    entropy = row_norm - expected_score
    return log_z, row_norm, entropy, coverage, best_val, best_idx


def _all_finite(*tensors: Tensor) -> bool:
    """Every entry of every tensor is finite (one small reduction each)."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@dataclass(frozen=True, repr=False)
class ReturnsScan:
    """What :func:`raise_non_finite` needs to know of R: the largest finite |R| and, per
    candidate, the first episode whose return is NaN or inf (-1: none) and that value.
    Scans of row blocks combine (:meth:`merge`) into the scan of all rows."""

    largest: float
    first_bad: np.ndarray  # int64 [K]
    bad_value: np.ndarray  # float64 [K]

    @classmethod
    def of(cls, block: Block, bounds: list[tuple[int, int]], k: int, first: int = 0) -> ReturnsScan:
        """Scan R tile by tile; its rows are episodes ``first, first + 1, ...``."""
        largest = 0.0
        first_bad = np.full(k, -1, dtype=np.int64)
        bad_value = np.zeros(k, dtype=np.float64)
        for j0, j1 in bounds:
            returns = block(j0, j1)
            finite = torch.isfinite(returns)
            if not bool(finite.all()):
                bad = ~finite
                hit = bad.any(dim=0)
                row = bad.to(torch.uint8).argmax(dim=0)  # first bad row per column
                for j in hit.nonzero()[:, 0].tolist():
                    first_bad[j0 + j] = first + int(row[j])
                    bad_value[j0 + j] = float(returns[int(row[j]), j])
            magnitude = torch.where(finite, returns.abs(), 0.0)
            largest = max(largest, float(magnitude.max()) if magnitude.numel() else 0.0)
        return cls(largest, first_bad, bad_value)

    @classmethod
    def merge(cls, scans: list[ReturnsScan]) -> ReturnsScan:
        """The scan of all rows from the scans of consecutive row blocks, in order."""
        first_bad = scans[0].first_bad.copy()
        bad_value = scans[0].bad_value.copy()
        for scan in scans[1:]:
            new = (first_bad < 0) & (scan.first_bad >= 0)
            first_bad[new], bad_value[new] = scan.first_bad[new], scan.bad_value[new]
        return cls(max(scan.largest for scan in scans), first_bad, bad_value)


def raise_non_finite(scan: ReturnsScan, temperature: float, tile: int) -> None:
    """Name why the posterior is not finite (called only then): R itself overflowed,
    R / alpha does, or the scores do; always raises :class:`NonFinitePosterior`. The
    R entry named is the first one a sweep over column tiles of width ``tile`` meets
    (row by row within a tile)."""
    largest = scan.largest
    bad = None
    for j0 in range(0, len(scan.first_bad), tile):
        rows = scan.first_bad[j0 : j0 + tile]
        if bool((rows >= 0).any()):
            row = int(rows[rows >= 0].min())
            j = j0 + int(np.flatnonzero(rows == row)[0])
            bad = (row, j, float(scan.bad_value[j]))
            break
    if bad is not None:
        i, j, value = bad
        raise NonFinitePosterior(
            f"the returns overflow float64: R = {value} at episode {i}, candidate {j} "
            f"(largest finite |R| {largest:.6g}); scale down the rewards or the prior"
        )
    scaled = largest / temperature
    least = largest / 1e300
    if not math.isfinite(scaled):
        raise NonFinitePosterior(
            f"temperature {temperature:.6g} is too small for float64: |R| / temperature "
            f"overflows (largest |R| {largest:.6g}); use a temperature of at least {least:.3g}"
        )
    raise NonFinitePosterior(
        f"the posterior scores overflow float64 (largest |R| / temperature {scaled:.6g}); "
        f"use a temperature of at least {least:.3g}"
    )


def uniform_posterior(n: int, k: int, top_k: int, seed: int) -> Posterior:
    """The ``random`` baseline: q uniform over the K candidates; each episode's
    stored top-k is a random subset (its sampled labels are then uniform)."""
    top_k = min(top_k, k)
    rng = np.random.default_rng(seed)
    index = (
        np.argsort(rng.random((n, k)), axis=1)[:, :top_k]
        if top_k < k
        else np.tile(np.arange(k), (n, 1))
    )
    return Posterior(
        log_z=np.full(k, np.nan),
        topk_index=index.astype(np.int64),
        topk_logprob=np.full((n, top_k), -math.log(k)),
        entropy=np.full(n, math.log(k)),
        coverage=np.full(k, 1.0 / k),
    )


def one_hot_posterior(assigned: np.ndarray, k: int, top_k: int) -> Posterior:
    """The ``original`` baseline: all mass on each episode's commanded task."""
    n, top_k = len(assigned), min(top_k, k)
    index = np.empty((n, top_k), dtype=np.int64)
    index[:, 0] = assigned
    if top_k > 1:  # then the lowest other indices: j-th of range(k) without a is j + (j >= a)
        rank = np.arange(top_k - 1)[None, :]
        index[:, 1:] = rank + (rank >= assigned[:, None])
    logprob = np.full((n, top_k), -np.inf)
    logprob[:, 0] = 0.0
    return Posterior(
        log_z=np.full(k, np.nan),
        topk_index=index,
        topk_logprob=logprob,
        entropy=np.zeros(n),
        coverage=np.bincount(assigned, minlength=k) / n,
    )
