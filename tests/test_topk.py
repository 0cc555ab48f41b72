"""The compiled row-wise top-k (hipi_offline/relabel/topk.py) against whole-row sorts.

Every comparison is bit-exact (np.array_equal on values, their sign bits and indices):
a top-k moves values, it does no arithmetic, so there is no rounding to allow for.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hipi_offline.relabel.topk import top_k


def reference(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole rows sorted by decreasing value, ties by increasing j (np.lexsort);
    NaN first (keyed as -inf, as +inf is: those two in increasing j)."""
    columns = np.broadcast_to(np.arange(s.shape[1]), s.shape)
    keys = np.where(np.isnan(s), -np.inf, -s)
    order = np.lexsort((columns, keys), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), order


def assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    values, index = got
    assert values.dtype == np.float64 and index.dtype == np.int64
    assert values.shape == want[0].shape and index.shape == want[1].shape
    assert np.array_equal(values, want[0], equal_nan=True)
    assert np.array_equal(np.signbit(values), np.signbit(want[0]))  # -0.0 stays -0.0
    assert np.array_equal(index, want[1])


def check(s: np.ndarray, k: int) -> None:
    """top_k(s, k) equals the sorting reference (it was also checked equal to the
    numpy/torch top-k it replaced, bit for bit on rows without NaN)."""
    assert_same(top_k(s, k), reference(s, k))


def scores(rng: np.random.Generator, n: int, k: int, kind: str) -> np.ndarray:
    """Test rows: ``normal``, ``ties`` (rounded to 0.1), ``coarse`` (few distinct
    values), ``zero_prior`` (whole -inf columns), ``mixed`` (-inf, +inf, +-0.0)."""
    s = rng.standard_normal((n, k))
    if kind == "ties":
        s = np.round(s, 1)
    elif kind == "coarse":
        s = np.round(s * 2) / 2
    elif kind == "zero_prior":
        s[:, rng.random(k) < 0.5] = -np.inf
    elif kind == "mixed":
        s[rng.random(s.shape) < 0.3] = -np.inf
        s[rng.random(s.shape) < 0.01] = np.inf
        s[rng.random(s.shape) < 0.05] = 0.0
        s[rng.random(s.shape) < 0.05] = -0.0
    return s


KINDS = ["normal", "ties", "coarse", "zero_prior", "mixed"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("k", "top"), [(1024, 32), (256, 32), (1000, 1), (300, 100), (37, 5)])
def test_matches_sorting(kind: str, k: int, top: int) -> None:
    check(scores(np.random.default_rng(k + top), 40, k, kind), top)


def test_random_shapes() -> None:
    """K in [1, 2000], top_k in [1, K], n in [0, 4], all kinds of rows."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        k = int(rng.integers(1, 2001))
        top = int(rng.integers(1, k + 1)) if rng.random() < 0.3 else int(rng.integers(1, 65))
        top = min(top, k)
        s = scores(rng, int(rng.integers(0, 5)), k, KINDS[int(rng.integers(len(KINDS)))])
        check(s, top)


@pytest.mark.parametrize("k", [1, 2, 7, 255, 256, 257, 1024, 1031])
def test_top_k_one_and_all(k: int) -> None:
    rng = np.random.default_rng(k)
    for kind in KINDS:
        s = scores(rng, 3, k, kind)
        check(s, 1)
        check(s, k)
        check(s, max(1, k // 8 + 1))  # top_k > K / 8


@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_large_top_k(kind: str) -> None:
    """Hundreds of candidates: ranks up to 512 of them, a merge sort above."""
    rng = np.random.default_rng(4)
    for k, top in [(1000, 100), (1000, 129), (1000, 480), (1000, 520), (2000, 700), (600, 599)]:
        check(scores(rng, 4, k, kind), top)


def test_n_zero_and_one() -> None:
    values, index = top_k(np.empty((0, 300)), 5)
    assert values.shape == (0, 5) and index.shape == (0, 5)
    assert values.dtype == np.float64 and index.dtype == np.int64
    check(np.random.default_rng(0).standard_normal((1, 300)), 5)


def test_ties_straddling_kth() -> None:
    """Equal values across the k-th place: the lowest j win; several tie patterns."""
    k, top = 1024, 32
    s = np.zeros((6, k))
    s[1, :40] = 1.0  # 40 ones, 32 taken
    s[2, ::3] = 2.0
    s[3, 500:600] = 5.0
    s[3, 10] = 7.0
    s[4] = np.repeat(np.arange(k // 64, dtype=np.float64), 64)[::-1]  # 64-long runs
    s[5, ::-7] = 1.0
    check(s, top)
    assert np.array_equal(top_k(s, top)[1][1], np.arange(32))


def test_fewer_finite_than_top_k() -> None:
    """Zero prior mass: rows with fewer than top_k finite entries end in -inf, in j order."""
    rng = np.random.default_rng(3)
    for k in (64, 1024):
        s = np.full((5, k), -np.inf)
        for i in range(5):
            live = rng.choice(k, size=i * 5, replace=False)
            s[i, live] = rng.standard_normal(live.size)
        check(s, 32)
        values, index = top_k(s, 32)
        assert np.isneginf(values[0]).all() and np.array_equal(index[0], np.arange(32))


def test_infinite_and_extreme_values() -> None:
    """+inf, -inf, the largest finite values of both signs, subnormals and runs of
    adjacent floats (threshold searches that cannot split an interval)."""
    big = np.finfo(np.float64).max
    rng = np.random.default_rng(5)
    for k in (256, 1024, 1500):
        s = rng.standard_normal((9, k))
        s[0, rng.integers(0, k, 40)] = np.inf
        s[1, ::2] = big
        s[1, 1::2] = -big
        s[2] = rng.choice([big, -big, 0.0], size=k)
        s[3] = 5e-324 * rng.integers(0, 4, size=k)
        s[4] = 1.0 + np.arange(k) * np.finfo(np.float64).eps  # adjacent floats
        s[5] = rng.permutation(s[4])
        s[6, :] = np.inf
        s[7, rng.integers(0, k, 50)] = -big
        s[8] = 1.0  # 20 group maxima one ulp above the rest: no value splits them
        s[8, :20] = np.nextafter(1.0, 2.0)
        check(s, 32)
        check(s, 1)


def test_nan_rows_first() -> None:
    """A row with NaN: NaN (and +inf) first in increasing j, as torch.topk then today's
    whole-row sort gives it; the other rows are unaffected."""
    rng = np.random.default_rng(11)
    for k in (50, 1024):
        s = rng.standard_normal((6, k))
        s[1, [3, 700 % k, 9]] = np.nan
        s[2, :] = np.nan
        s[3, [5, 17]] = np.nan
        s[3, [2, 40]] = np.inf
        s[4, ::2] = -np.inf
        s[4, 11] = np.nan
        check(s, 8)
        values, index = top_k(s, 8)
        assert np.isnan(values[1, :3]).all() and np.array_equal(
            index[1, :3], sorted({3, 700 % k, 9})
        )
        assert np.array_equal(index[3, :4], [2, 5, 17, 40])  # inf, NaN, NaN, inf
        assert np.isfinite(values[[0, 5]]).all()


def test_input_layouts_and_bad_arguments() -> None:
    s = np.random.default_rng(2).standard_normal((300, 20))
    check(np.asfortranarray(s), 4)
    check(s[::2, 1:], 4)
    frozen = s.copy()
    frozen.flags.writeable = False
    check(frozen, 4)
    with pytest.raises(ValueError, match="top_k"):
        top_k(s, 0)
    with pytest.raises(ValueError, match="top_k"):
        top_k(s, 21)
    with pytest.raises(ValueError, match="float64"):
        top_k(s.astype(np.float32), 3)


def test_threads_give_the_same_rows() -> None:
    """Chunks from worker threads (the GIL released) give what one call gives."""
    s = scores(np.random.default_rng(9), 1000, 1024, "ties")
    whole = top_k(s, 32)
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda i: top_k(s[i : i + 128], 32), range(0, 1000, 128)))
    assert np.array_equal(np.concatenate([v for v, _ in parts]), whole[0])
    assert np.array_equal(np.concatenate([j for _, j in parts]), whole[1])
