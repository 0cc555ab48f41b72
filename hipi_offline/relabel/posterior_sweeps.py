"""The CPU posterior's work on a chunk of rows of R, compiled with numba: each kernel is
one pass over the chunk (which stays in cache), where numpy would take one pass per
operation. The exponentials stay with numpy, whose vectorized float64 exp is about 4x
faster than the scalar one a numba loop calls.

All kernels run without the GIL (the posterior's worker threads take disjoint chunks),
in float64, without fast-math: NaN and inf propagate as in numpy, and sums run in
index order (numpy's matrix products sum in another order: the results agree within
float64 rounding). See :func:`hipi_offline.relabel.posterior._rows_numpy` for the math.
"""

from __future__ import annotations

import numba
import numpy as np

EXP_FLOOR = -700.0
"""Exponents are floored here: see :data:`hipi_offline.relabel.posterior._EXP_FLOOR`."""


@numba.njit(cache=True, nogil=True)
def scaled_column_max(x, temperature, out, top):  # noqa: ANN001, ANN201 (numba kernel)
    """out = x / temperature (skipped when 1: then ``out`` is not written) and
    top[j] = max(top[j], max_i out[i, j]); a NaN stays NaN, as ``np.maximum`` has it."""
    rows, columns = x.shape
    scale = temperature != 1.0
    for i in range(rows):
        for j in range(columns):
            v = x[i, j] / temperature if scale else x[i, j]
            if scale:
                out[i, j] = v
            m = top[j]
            if v > m or v != v:
                top[j] = v


@numba.njit(cache=True, nogil=True)
def floored_offsets(x, top, out):  # noqa: ANN001, ANN201 (numba kernel)
    """out = max(x - top, EXP_FLOOR) per row (NaN stays NaN), ready for exp."""
    rows, columns = x.shape
    for i in range(rows):
        for j in range(columns):
            d = x[i, j] - top[j]
            out[i, j] = EXP_FLOOR if d < EXP_FLOOR else d


@numba.njit(cache=True, nogil=True)
def offsets_and_scores(x, temperature, top, shift, offsets, scores):  # noqa: ANN001, ANN201
    """For R's rows x and v = x / temperature: offsets = max(v - top, EXP_FLOOR) (exp
    comes next) and scores = v + shift (``shift`` empty: v itself)."""
    rows, columns = x.shape
    scale = temperature != 1.0
    shifted = shift.shape[0] > 0
    for i in range(rows):
        for j in range(columns):
            v = x[i, j] / temperature if scale else x[i, j]
            d = v - top[j]
            offsets[i, j] = EXP_FLOOR if d < EXP_FLOOR else d
            scores[i, j] = v + shift[j] if shifted else v


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def row_terms(e, s, w, zero, tiny, row_sum, weighted_score, inverse, mass):  # noqa: ANN001, ANN201
    """Per row i of E (= exp of the offsets) and the scores s: row_sum_i = sum_j E_ij w_j,
    inverse_i = 1 / row_sum_i (0 where row_sum_i < tiny, or NaN: those rows are computed
    the direct way), weighted_score_i = sum_j E_ij s_ij w_j over the j where ``zero`` is
    0 (a zero prior: q log q is 0 there, not 0 * -inf), and mass_j += E_ij inverse_i.
    The row sums may be reassociated (vectorized): their rounding then depends on the
    vector width, as a BLAS product's does."""
    rows, columns = e.shape
    for i in range(rows):
        total = 0.0
        score = 0.0
        for j in range(columns):
            term = e[i, j] * w[j]
            total += term
            score += 0.0 if zero[j] else term * s[i, j]
        row_sum[i] = total
        weighted_score[i] = score
        v = 1.0 / total if total >= tiny else 0.0
        inverse[i] = v
        for j in range(columns):
            mass[j] += e[i, j] * v


def zero_flags(mask: np.ndarray | None, k: int) -> np.ndarray:
    """uint8 [k] flags of the candidates with zero prior mass, for :func:`row_terms`."""
    return np.zeros(k, np.uint8) if mask is None else mask.astype(np.uint8)
