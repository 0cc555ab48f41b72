"""The posterior in few passes (issue 14): every output against a dense float64 numpy
reference written from Eq. 7, in the cases where the one-exp scheme needs care.

    log Z_j  = logsumexp_i (R_ij / alpha) - log N
    s_ij     = log p_j + R_ij / alpha - log Z_j   (hipi; without log Z: no-partition)
    log q_ij = s_ij - logsumexp_j s_ij

Both ways of computing one tile are checked: the numpy one the CPU takes (rows in
chunks, forced small here so that chunk boundaries are crossed) and the torch one any
other device takes (run here on the CPU). Tolerances: rtol 1e-12 for log Z and the
coverage (float64 rounding over sums of up to 10^3 terms); entropy and log q, which
are differences of scores, to 1e-12 of the largest |s| (as the code before this
change, which also forms L_i - sum_j q_ij s_ij). Top-k indices must be a valid top k:
the reference's log q at them is the reference's k largest, in order, so only exact
ties may be ordered differently; with continuous random data they must be equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from reference import logsumexp

import hipi_offline.relabel.posterior as posterior_module
from hipi_offline.relabel.posterior import (
    FLOAT32_MAX,
    Block,
    NonFinitePosterior,
    Posterior,
    inverse_rl_posterior,
    posterior_rows,
)

CPU = torch.device("cpu")


def reference(
    returns: np.ndarray,
    temperature: float,
    log_prior: np.ndarray | None,
    partition: bool,
    top_k: int,
    log_z: np.ndarray | None = None,
    total: int | None = None,
) -> dict[str, np.ndarray]:
    """Dense float64 Eq. 7: log Z, log q [N, K], top-k, entropy, coverage."""
    n, k = returns.shape
    x = returns / temperature
    if log_z is None:
        log_z = logsumexp(x, axis=0) - math.log(n)
    s = x - log_z if partition else x.copy()
    if log_prior is not None:
        s = s + log_prior
    with np.errstate(invalid="ignore"):
        log_q = s - logsumexp(s, axis=1)[:, None]
        q = np.exp(log_q)
        entropy = -np.sum(np.where(q > 0, q * log_q, 0.0), axis=1)
    order = np.argsort(-log_q, axis=1, kind="stable")[:, : min(top_k, k)]
    values = np.take_along_axis(log_q, order, axis=1)
    values = np.where(values < -FLOAT32_MAX, -np.inf, values)
    return dict(
        log_z=log_z,
        log_q=log_q,
        s=s,
        topk_index=order,
        topk_logprob=values,
        entropy=entropy,
        coverage=q.sum(axis=0) / (n if total is None else total),
    )


def check(post: Posterior | None, ref: dict[str, np.ndarray], *, same_index: bool) -> None:
    """``post`` equals ``ref`` to float64 rounding (see the module docstring); with
    ``same_index``, the top-k indices are the reference's in the rows whose k + 1
    largest log q are clearly apart (there must be such rows)."""
    assert post is not None
    scale = 1e-12 * (1.0 + float(np.abs(ref["s"][np.isfinite(ref["s"])]).max()))
    np.testing.assert_allclose(post.log_z, ref["log_z"], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(post.coverage, ref["coverage"], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(post.entropy, ref["entropy"], rtol=0, atol=scale)
    np.testing.assert_allclose(post.topk_logprob, ref["topk_logprob"], rtol=0, atol=scale)
    at_index = np.take_along_axis(ref["log_q"], post.topk_index, axis=1)
    at_index = np.where(at_index < -FLOAT32_MAX, -np.inf, at_index)
    np.testing.assert_allclose(at_index, ref["topk_logprob"], rtol=0, atol=scale)
    assert all(len(set(row)) == len(row) for row in post.topk_index.tolist())
    if same_index:
        top_k = post.topk_index.shape[1]
        ranked = -np.sort(-ref["log_q"], axis=1)[:, : top_k + 1]
        with np.errstate(invalid="ignore"):
            clear = (np.diff(ranked, axis=1) < -1e3 * scale).all(axis=1)
        clear |= ranked.shape[1] == 1
        assert clear.any()
        np.testing.assert_array_equal(post.topk_index[clear], ref["topk_index"][clear])


def numpy_path(**options: Any) -> Posterior | None:
    """:func:`posterior_rows` as relabel calls it (numpy on the CPU for one tile)."""
    return posterior_rows(**options)


def torch_path(
    *,
    block: Block,
    n: int,
    k: int,
    temperature: float,
    log_prior: torch.Tensor | None,
    partition: bool,
    top_k: int,
    tile: int,
    device: torch.device,
    log_z: torch.Tensor | None = None,
    total: int | None = None,
) -> Posterior | None:
    """:func:`posterior_rows` for one tile through the torch code (any device's)."""
    assert tile >= k and device == CPU
    parts = posterior_module._rows_torch(
        block(0, k), temperature, log_prior, partition, min(top_k, k), log_z, total or n
    )
    return posterior_module._finish(*parts)


def rows_path(*, block: Block, n: int, k: int, **options: Any) -> Posterior | None:
    """The numpy path with R's rows written into the posterior's own buffer by a row
    source, as relabel's accumulators do (the scores then overwrite them in place)."""
    whole = block(0, k).numpy()

    def source(i0: int, i1: int, out: np.ndarray) -> np.ndarray:
        out[...] = whole[i0:i1]
        return out

    return posterior_rows(block=block, n=n, k=k, rows=source, **options)


PATHS = {"numpy": numpy_path, "torch": torch_path, "rows": rows_path}


@pytest.fixture(params=["numpy-1", "numpy-2", "rows-1", "rows-2", "torch-1"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable]:
    """A way to compute one tile, with 1 or 2 torch threads (numpy: threads sharing the
    chunks; rows: R's rows from a row source); chunks of 3 rows of 64 candidates (more
    for smaller K) cross boundaries."""
    monkeypatch.setattr(posterior_module, "_CHUNK_BYTES", 3 * 8 * 64)
    name, threads = request.param.split("-")
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    yield PATHS[name]
    torch.set_num_threads(before)


def run(
    path: Callable[..., Posterior | None],
    returns: np.ndarray,
    *,
    temperature: float = 1.0,
    log_prior: np.ndarray | None = None,
    partition: bool = True,
    top_k: int = 5,
    tile: int | None = None,
    log_z: np.ndarray | None = None,
    total: int | None = None,
) -> Posterior | None:
    matrix = torch.from_numpy(returns)
    n, k = returns.shape
    return path(
        block=lambda a, b: matrix[:, a:b],
        n=n,
        k=k,
        temperature=temperature,
        log_prior=None if log_prior is None else torch.from_numpy(log_prior),
        partition=partition,
        top_k=top_k,
        tile=k if tile is None else tile,
        device=CPU,
        log_z=None if log_z is None else torch.from_numpy(log_z),
        total=total,
    )


def wide(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Returns over wide ranges: per-episode and per-candidate offsets of hundreds."""
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, k)) * rng.uniform(0.1, 30, (1, k))
        + rng.standard_normal((n, 1)) * 300
        + rng.standard_normal((1, k)) * 300
    )


def random_log_prior(k: int, seed: int = 1) -> np.ndarray:
    logits = np.random.default_rng(seed).standard_normal(k) * 3
    return logits - logsumexp(logits, axis=0)


@pytest.mark.parametrize("partition", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.37, 250.0])
@pytest.mark.parametrize("prior", [False, True])
def test_wide_random_returns(path, partition: bool, temperature: float, prior: bool):
    returns = wide(41, 23)  # chunks of 8 rows: the last one has 1
    log_prior = random_log_prior(23) if prior else None
    options = dict(temperature=temperature, log_prior=log_prior, partition=partition)
    post = run(path, returns, **options, top_k=7)
    check(post, reference(returns, **options, top_k=7), same_index=True)


# K >= 256 and K >= 8 top_k: wide rows, K not a multiple of the top-k's column groups
@pytest.mark.parametrize(("k", "top_k"), [(256, 32), (259, 8), (600, 2)])
def test_wide_k_top_k(path, k: int, top_k: int):
    returns = wide(50, k, seed=3)
    post = run(path, returns, top_k=top_k)
    check(post, reference(returns, 1.0, None, True, top_k), same_index=True)


def test_top_k_with_exact_ties(path):
    """Duplicated candidates tie exactly: any order of the tied is right."""
    rng = np.random.default_rng(4)
    base = rng.standard_normal((30, 64)).round(1)  # many ties within rows too
    returns = np.concatenate([base, base, base, base, base[:, :3]], axis=1)  # K = 259
    post = run(path, returns, top_k=8)
    check(post, reference(returns, 1.0, None, True, 8), same_index=False)


@pytest.mark.parametrize("gap", [1e4, 720.0, 600.0, 100.0])
def test_an_episode_far_below_all_others(path, gap: float):
    """Its entries are all ~gap below their columns' maxima: exp underflows there."""
    returns = wide(20, 19, seed=5) * 0.01
    returns[7] -= gap
    for partition in (True, False):
        post = run(path, returns, partition=partition, top_k=4)
        check(post, reference(returns, 1.0, None, partition, 4), same_index=True)
        assert post is not None and post.coverage.sum() == pytest.approx(1.0, rel=1e-12)


def test_columns_far_apart_without_partition(path):
    """No log Z: candidates whose scores are thousands apart (w_j underflows)."""
    rng = np.random.default_rng(6)
    returns = rng.standard_normal((25, 12)) + np.linspace(-3000, 0, 12)[None, :]
    returns[:, 5] += rng.standard_normal(25) * 900  # some rows prefer a low candidate
    post = run(path, returns, partition=False, top_k=12)
    check(post, reference(returns, 1.0, None, False, 12), same_index=True)


@pytest.mark.parametrize("top_k", [2, 6])
def test_zero_prior_mass(path, top_k: int):
    returns = wide(30, 9, seed=7)
    log_prior = random_log_prior(9, seed=8)
    log_prior[[0, 4, 5, 8]] = -np.inf
    for partition in (True, False):
        post = run(path, returns, log_prior=log_prior, partition=partition, top_k=top_k)
        ref = reference(returns, 1.0, log_prior, partition, top_k)
        check(post, ref, same_index=top_k <= 5)
        assert post is not None and not post.coverage[[0, 4, 5, 8]].any()


def test_zero_prior_mass_wide_k(path):
    returns = wide(20, 300, seed=9)
    log_prior = np.full(300, -math.log(150))
    log_prior[::2] = -np.inf
    post = run(path, returns, log_prior=log_prior, top_k=8)
    check(post, reference(returns, 1.0, log_prior, True, 8), same_index=True)


def test_a_single_candidate(path):
    returns = wide(11, 1)
    post = run(path, returns, top_k=3)
    check(post, reference(returns, 1.0, None, True, 3), same_index=True)
    assert post is not None and np.array_equal(post.topk_logprob, np.zeros((11, 1)))


def test_a_single_episode(path):
    returns = wide(1, 17)
    for partition in (True, False):
        post = run(path, returns, partition=partition, top_k=4)
        # with log Z of one episode every s_ij is log 1 = 0: all candidates tie
        check(post, reference(returns, 1.0, None, partition, 4), same_index=not partition)


@pytest.mark.parametrize("tile", [1, 4, 7, 16])
def test_tiled_input_equals_untiled(tile: int):
    returns = wide(33, 16, seed=10)
    log_prior = random_log_prior(16)
    log_prior[3] = -np.inf
    for partition in (True, False):
        options = dict(log_prior=log_prior, partition=partition, top_k=5)
        whole = run(numpy_path, returns, **options)
        tiled = run(numpy_path, returns, **options, tile=tile)
        check(tiled, reference(returns, 1.0, log_prior, partition, 5), same_index=True)
        assert whole is not None and tiled is not None
        for key in ("log_z", "coverage"):
            np.testing.assert_allclose(getattr(tiled, key), getattr(whole, key), rtol=1e-12)
        np.testing.assert_array_equal(tiled.topk_index, whole.topk_index)


def test_given_log_z_shares_of_coverage_add_up(path):
    """Row blocks given the whole set's log Z and size (a Dask partition each)."""
    returns = wide(40, 21, seed=11)
    log_prior = random_log_prior(21)
    whole = run(path, returns, log_prior=log_prior, top_k=4)
    ref = reference(returns, 1.0, log_prior, True, 4)
    check(whole, ref, same_index=True)
    assert whole is not None
    coverage = np.zeros(21)
    for rows in (slice(0, 13), slice(13, 14), slice(14, 40)):
        part = run(path, returns[rows], log_prior=log_prior, top_k=4, log_z=whole.log_z, total=40)
        assert part is not None
        np.testing.assert_array_equal(part.log_z, whole.log_z)
        share = {key: value[rows] for key, value in ref.items() if key != "log_z"}
        share["coverage"] = (np.exp(ref["log_q"][rows]) / 40).sum(axis=0)
        check(part, {**share, "log_z": whole.log_z}, same_index=True)
        coverage += part.coverage
    np.testing.assert_allclose(coverage, ref["coverage"], rtol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_returns_give_none(path, bad: float):
    returns = wide(10, 8)
    returns[3, 5] = bad
    for partition in (True, False):
        assert run(path, returns, partition=partition) is None


def test_all_prior_mass_zero_gives_none(path):
    assert run(path, wide(6, 5), log_prior=np.full(5, -np.inf)) is None


def test_non_finite_returns_are_named():
    returns = wide(10, 8)
    returns[3, 5] = np.nan
    matrix = torch.from_numpy(returns)
    with pytest.raises(NonFinitePosterior, match="episode 3, candidate 5"):
        inverse_rl_posterior(
            lambda a, b: matrix[:, a:b],
            10,
            8,
            temperature=1.0,
            log_prior=None,
            partition=True,
            top_k=3,
            tile=8,
            device=CPU,
        )


def test_default_chunks_of_a_larger_matrix():
    """The CPU path's own chunk size (no monkeypatch) on a few chunks of rows."""
    returns = wide(700, 1024, seed=12) * 0.1
    log_prior = random_log_prior(1024)
    post = run(numpy_path, returns, log_prior=log_prior, top_k=32)
    check(post, reference(returns, 1.0, log_prior, True, 32), same_index=True)


def test_columns_left_over_by_the_blocks_are_candidates(path):
    """K = 259 in blocks of 4: the last 3 columns belong to no block; make them the best."""
    returns = wide(30, 259, seed=13)
    returns[:, -3:] += 1e4
    post = run(path, returns, partition=False, top_k=8)
    check(post, reference(returns, 1.0, None, False, 8), same_index=True)
    assert post is not None and set(post.topk_index[:, :3].ravel()) == {256, 257, 258}


@pytest.mark.parametrize("k", [64, 1024])
def test_exact_ties_come_in_increasing_candidate_order(k):
    """Labels must not depend on how the top k was found: tied scores (a target
    reward is flat between the middle order statistics of an episode) are listed by
    increasing candidate index, also when the tie straddles the k-th place."""
    from hipi_offline.relabel.topk import top_k

    rng = np.random.default_rng(3)
    s = rng.normal(size=(40, k))
    tied = rng.choice(k, size=(40, 9), replace=True)
    for row in range(40):
        s[row, tied[row]] = s[row].max() + 1.0  # nine (or fewer) equal maxima
    s[::2, rng.choice(k, 50, replace=False)] = -np.inf
    values, index = top_k(s.copy(), 32)
    for row in range(40):
        want = np.lexsort((np.arange(k), -s[row]))[:32]
        np.testing.assert_array_equal(index[row], want)
        np.testing.assert_array_equal(values[row], s[row, want])
    # a tie across the k-th place keeps the lowest indices
    flat = np.zeros((3, k))
    values, index = top_k(flat, 32)
    np.testing.assert_array_equal(index, np.tile(np.arange(32), (3, 1)))
