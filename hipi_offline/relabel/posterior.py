"""The inverse-RL posterior over tasks (paper Eq. 7) from the returns matrix.

    log Z_j      = logsumexp_i (R_ij / alpha) - log N          (all N episodes)
    s_ij         = log p(psi_j) + R_ij / alpha - log Z_j        (hipi)
    s_ij         = log p(psi_j) + R_ij / alpha                  (no-partition ablation)
    log q_ij     = s_ij - logsumexp_j s_ij

R is read in column tiles, so memory is bounded by N x tile: a first sweep
gives log Z (per column) and the row normalizers (streamed logsumexp), a second
gives top-k, entropy and coverage. Everything is float64.

Nothing non-finite leaves :func:`inverse_rl_posterior`: its small outputs (log Z,
row normalizers, entropy, coverage, top-k) are checked, which catches any NaN or
inf in R, R / alpha or the scores; only then is R swept again to name the cause
(:class:`NonFinitePosterior`). A log prior of -inf (zero prior mass) is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hipi_offline.errors import InputError

FLOAT32_MAX = float(np.finfo(np.float32).max)  # top-k log-probabilities are stored as float32
Block = Callable[[int, int], Tensor]  # (j0, j1) -> R[:, j0:j1] float64 on the device


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
) -> Posterior:
    """Posterior summaries from R given tile by tile (see the module docstring)."""
    options = dict(temperature=temperature, log_prior=log_prior, partition=partition)
    posterior = posterior_rows(block, n, k, **options, top_k=top_k, tile=tile, device=device)
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
) -> Posterior | None:
    """:func:`inverse_rl_posterior` of ``n`` rows, or None when anything came out NaN or
    inf. Rows of a larger set pass that set's ``log_z`` (else it is computed from these
    rows) and its size ``total``: ``coverage`` is then these rows' share of the
    coverage (sum_i q_ij / total), and the shares of all rows add up to it."""
    bounds = [(j, min(j + tile, k)) for j in range(0, k, tile)]
    given = log_z is not None
    if log_z is None:
        log_z = torch.empty(k, dtype=torch.float64, device=device)
    row_norm = torch.full((n,), -math.inf, dtype=torch.float64, device=device)
    single = len(bounds) == 1

    def scores(j0: int, j1: int, returns: Tensor) -> Tensor:
        s = returns / temperature
        if partition:
            s -= log_z[j0:j1]
        if log_prior is not None:
            s += log_prior[j0:j1]
        return s  # [N, j1 - j0]

    kept: Tensor | None = None  # the scores of a single tile, reused by the second sweep
    for j0, j1 in bounds:
        returns = block(j0, j1)
        if not given:
            log_z[j0:j1] = log_partition(returns, temperature)
        s = scores(j0, j1, returns)
        row_norm = torch.logaddexp(row_norm, torch.logsumexp(s, dim=1))
        kept = s if single else None

    zero_mass = log_prior is not None and bool(torch.isneginf(log_prior).any())
    top_k = min(top_k, k)
    best_val = torch.empty(n, 0, dtype=torch.float64, device=device)
    best_idx = torch.empty(n, 0, dtype=torch.int64, device=device)
    expected_score = torch.zeros(n, dtype=torch.float64, device=device)  # sum_j q_ij s_ij
    coverage = torch.empty(k, dtype=torch.float64, device=device)
    for j0, j1 in bounds:
        s = kept if kept is not None else scores(j0, j1, block(j0, j1))
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
    entropy = row_norm - expected_score
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
