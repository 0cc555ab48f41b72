"""The compiled kernels of the CPU relabel path (issue 14) against float64 numpy
references: linear's per-run feature sums (:func:`segments._run_sums`), linear's rows
of R (:func:`returns._linear_rows`) and the posterior's chunk sweeps
(:mod:`posterior_sweeps`). Sums in row order equal ``np.add.reduceat`` exactly for
float32 input (it sums a row-major matrix along rows in order, in float64); elsewhere
results agree within float64 rounding (rtol 1e-12), as another summation order gives.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hipi_offline.relabel import posterior_sweeps as sweeps
from hipi_offline.relabel.returns import _linear_rows
from hipi_offline.relabel.segments import Segments

CPU = torch.device("cpu")


def segments(values: np.ndarray, offsets: list[int], weight: np.ndarray | None) -> Segments:
    runs = np.asarray(offsets, dtype=np.int64)
    return Segments({"f": values}, runs, np.arange(len(runs)), weight, None, 0, CPU)


@pytest.mark.parametrize("columns", [2, 3, 7, 8, 9, 16, 19])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_run_sums_equal_the_float64_reference(columns: int, dtype: type, weighted: bool):
    rng = np.random.default_rng(columns)
    rows = 257
    values = (rng.standard_normal((rows, columns)) * rng.uniform(0.1, 1e4, columns)).astype(dtype)
    offsets = [0, 1, 2, 40, 41, 200]  # runs of 1, 1, 38, 1, 159 and 57 rows
    weight = rng.uniform(0.1, 1.0, rows) if weighted else None
    got = segments(values, offsets, weight).sums(values).numpy()
    wide = values.astype(np.float64) * (1.0 if weight is None else weight[:, None])
    bounds = offsets + [rows]
    want = np.stack([wide[a:b].sum(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    if dtype is np.float32 and not weighted:  # the same additions as reduceat's
        reduceat = np.add.reduceat(values, offsets, axis=0, dtype=np.float64)
        np.testing.assert_array_equal(got, reduceat)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_run_sums_propagate_nan_and_inf(bad: float):
    values = np.ones((30, 9), dtype=np.float32)
    values[17, 8] = bad
    got = segments(values, [0, 10, 20], None).sums(values).numpy()
    assert np.isfinite(got[[0, 2]]).all() and np.isfinite(got[1, :8]).all()  # row 17: run 1
    assert np.isnan(got[1, 8]) if np.isnan(bad) else got[1, 8] == bad


@pytest.mark.parametrize("dim", [1, 2, 3, 8, 11])
def test_linear_rows_equal_the_matrix_product(dim: int):
    rng = np.random.default_rng(dim)
    stats = rng.standard_normal((37, dim)) * 1e3
    tasks = rng.standard_normal((129, dim))
    out = np.full((37, 129), np.nan)
    got = _linear_rows(stats, np.ascontiguousarray(tasks.T), out)
    want = np.einsum("id,jd->ij", stats, tasks)  # float64
    scale = np.abs(stats) @ np.abs(tasks).T
    np.testing.assert_allclose(got, want, rtol=0, atol=float(1e-15 * dim * scale.max()))
    assert got is out


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_scaled_column_max_keeps_nan(temperature: float):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5))
    x[3, 2] = np.nan
    x[1, 4] = np.inf
    top = np.full(5, -np.inf)
    top[0] = 50.0  # a maximum from earlier chunks
    out = np.full_like(x, 7.0)
    sweeps.scaled_column_max(x, temperature, out, top)
    scaled = x / temperature
    want = np.maximum(np.array([50.0, -np.inf, -np.inf, -np.inf, -np.inf]), scaled.max(axis=0))
    np.testing.assert_array_equal(top, want)
    if temperature != 1.0:
        np.testing.assert_array_equal(out, scaled)
    else:
        assert (out == 7.0).all()  # not written: x itself is used


def test_floored_offsets_and_scores():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6)) * 1e3
    x[2, 3] = np.nan
    top = x.max(axis=0)
    shift = rng.standard_normal(6)
    offsets, scores = np.empty_like(x), np.empty_like(x)
    sweeps.offsets_and_scores(x, 2.0, top, shift, offsets, scores)
    want = np.maximum(x / 2.0 - top, sweeps.EXP_FLOOR)
    np.testing.assert_array_equal(offsets, want)
    np.testing.assert_array_equal(scores, x / 2.0 + shift)
    sweeps.offsets_and_scores(x, 1.0, top, np.zeros(0), offsets, scores)
    np.testing.assert_array_equal(scores, x)
    alone = np.empty_like(x)
    sweeps.floored_offsets(x, top, alone)
    np.testing.assert_array_equal(alone, np.maximum(x - top, sweeps.EXP_FLOOR))


def test_row_terms_equal_the_float64_reference():
    rng = np.random.default_rng(2)
    e = rng.uniform(0, 1, (9, 300))
    e[4] = 1e-300  # a row far below: its sum is under the threshold
    s = rng.standard_normal((9, 300)) * 50
    w = rng.uniform(0, 1, 300)
    zero = np.zeros(300, np.uint8)
    zero[[3, 77]] = 1
    w[[3, 77]] = 0.0
    s[:, [3, 77]] = -np.inf
    row_sum, score, inverse = np.empty(9), np.empty(9), np.empty(9)
    mass = np.full(300, 0.5)
    sweeps.row_terms(e, s, w, zero, 1e-250, row_sum, score, inverse, mass)
    want_sum = e @ w
    np.testing.assert_allclose(row_sum, want_sum, rtol=1e-12)
    keep = zero == 0
    np.testing.assert_allclose(score, (e[:, keep] * s[:, keep]) @ w[keep], rtol=1e-12, atol=1e-250)
    want_inverse = np.where(want_sum >= 1e-250, 1.0 / want_sum, 0.0)
    assert inverse[4] == 0.0
    np.testing.assert_allclose(inverse, want_inverse, rtol=1e-12)
    np.testing.assert_allclose(mass, 0.5 + want_inverse @ e, rtol=1e-12)


def test_row_terms_nan_row_is_left_to_the_direct_way():
    e = np.ones((2, 4))
    e[1, 2] = np.nan
    row_sum, score, inverse, mass = np.empty(2), np.empty(2), np.empty(2), np.zeros(4)
    sweeps.row_terms(e, np.ones((2, 4)), np.ones(4), np.zeros(4, np.uint8), 1e-250,
                     row_sum, score, inverse, mass)  # fmt: skip
    assert np.isnan(row_sum[1]) and inverse[1] == 0.0 and inverse[0] == 0.25
    # 0 * NaN: the coverage is NaN too, as numpy's product has it (and is reported)
    np.testing.assert_array_equal(mass, [0.25, 0.25, np.nan, 0.25])
