"""A chunk's rewarded rows in runs of one episode (:class:`Segments`), and their
per-run sums: the step-level half of the returns pass (:mod:`hipi_offline.relabel.returns`).

On the CPU the sums are segment reductions that accumulate in float64 straight from
the stored dtype (``np.add.reduceat``, or a compiled loop for fields of several float
columns); on CUDA (and in tests that call for it through
:func:`numpy_path`) torch ops cast on the device and sum with ``index_add_``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numba
import numpy as np
import torch
from torch import Tensor

from hipi_offline.errors import InputError


def numpy_path(device: torch.device) -> bool:
    """Whether sums on ``device`` take the numpy path (the CPU); else torch ops made for
    CUDA (casts on the device, deterministic ``index_add_``), which tests also run on
    the CPU by replacing this function."""
    return device.type == "cpu"


class Scratch:
    """Work arrays reused from chunk to chunk by one accumulator: a fresh array of a
    chunk's rows each time costs page faults that weigh as much as the arithmetic."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, size: int, dtype: type[np.generic]) -> np.ndarray:
        """An uninitialized array of ``size`` elements, the same memory on every call."""
        array = self.arrays.get(name)
        if array is None or len(array) < size or array.dtype != dtype:
            array = self.arrays[name] = np.empty(size, dtype)
        return array[:size]


class Segments:
    """The rows of one chunk that count toward the returns, in runs of one episode each
    (episodes are contiguous): an accumulator reduces each run to one row.

    ``values`` are the fields' rows as read (host arrays, their stored dtype), ``offsets``
    the first row of each run (0 first, increasing), ``episodes`` each run's episode (in
    the view, increasing), ``weight`` the float64 step weights (None: every weight is 1)
    and ``rows`` the store row of each row (None: ``first_row + i``)."""

    def __init__(
        self,
        values: Mapping[str, np.ndarray],
        offsets: np.ndarray,
        episodes: np.ndarray,
        weight: np.ndarray | None,
        rows: np.ndarray | None,
        first_row: int,
        device: torch.device,
    ) -> None:
        self.values, self.offsets, self.episodes = dict(values), offsets, episodes
        self.weight, self.rows, self.first_row, self.device = weight, rows, first_row, device
        self.size = len(next(iter(self.values.values())))
        self._runs: Tensor | None = None

    @property
    def episode_index(self) -> Tensor:
        """The runs' episodes, int64 [E] on the device."""
        return torch.from_numpy(self.episodes).to(self.device)

    def runs(self) -> Tensor:
        """The run of every row, int64 [rows] on the device (built once)."""
        if self._runs is None:
            lengths = np.diff(self.offsets, append=self.size)
            ids = torch.arange(len(self.offsets), device=self.device)
            counts = torch.from_numpy(lengths).to(self.device)
            self._runs = torch.repeat_interleave(ids, counts, output_size=self.size)
        return self._runs

    def tensor(self, name: str) -> Tensor:
        """A field's rows in float64 on the device."""
        return to_device(name, self.values[name], self.device)

    def weights(self) -> Tensor | None:
        return None if self.weight is None else torch.from_numpy(self.weight).to(self.device)

    def sums(self, values: np.ndarray, square: bool = False) -> Tensor:
        """Weighted sums of ``values`` [rows, ...] (or of their float64 squares) over each
        run, float64 [E, columns] on the device. On the CPU a segment reduction
        accumulates in float64 straight from the stored dtype (no float64 copy of the
        rows); on CUDA the rows are cast on the device and summed with (deterministic)
        ``index_add_``."""
        matrix = values.reshape(len(values), -1)
        if numpy_path(self.device):
            if not square and matrix.shape[1] > 1 and matrix.dtype in _KERNEL_TYPES:
                return torch.from_numpy(self._kernel_sums(matrix))
            if square:  # exact: a float32 square fits in float64
                matrix = np.square(matrix, dtype=np.float64)
            if self.weight is not None:
                matrix = matrix * self.weight[:, None]  # float64
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf: checked after
                sums = np.add.reduceat(matrix, self.offsets, axis=0, dtype=np.float64)
            return torch.from_numpy(sums)
        rows = to_device("", matrix, self.device)
        if square:
            rows = rows.square()
        weight = self.weights()
        if weight is not None:
            rows = rows * weight[:, None]
        out = torch.zeros(len(self.offsets), rows.shape[1], dtype=torch.float64, device=self.device)
        return out.index_add_(0, self.runs(), rows)

    def _kernel_sums(self, matrix: np.ndarray) -> np.ndarray:
        """:meth:`sums` of a float32/float64 matrix of several columns on the CPU, by
        :func:`_run_sums`, in row order: unweighted float32 as ``np.add.reduceat`` along
        rows adds it (equal bit for bit), float64 or weighted within float64 rounding."""
        out = np.empty((len(self.offsets), matrix.shape[1]))
        weight = np.empty(0) if self.weight is None else self.weight
        bounds = np.append(self.offsets, len(matrix))
        _run_sums(np.ascontiguousarray(matrix), bounds, weight, out)
        return out

    def square_sums(self, values: np.ndarray, scratch: Scratch) -> Tensor:
        """Weighted sums of ||row||^2 over each run, float64 [E] on the device. Unweighted
        on the CPU, the runs of a row-major [rows, d] array are runs of its flat view, so
        the float64 squares are summed in one flat pass (row by row, column by column)."""
        matrix = values.reshape(len(values), -1)
        if not numpy_path(self.device) or self.weight is not None or not matrix.shape[1]:
            return self.sums(values, square=True).sum(dim=1)
        flat = np.ascontiguousarray(matrix).reshape(-1)
        squares = scratch.get("squares", len(flat), np.float64)
        np.square(flat, out=squares, dtype=np.float64)  # exact: a float32 square fits
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf: checked after
            sums = np.add.reduceat(squares, self.offsets * matrix.shape[1])
        return torch.from_numpy(sums)

    def locate(self, name: str, first_episode: int) -> None:
        """InputError naming the first row of ``name`` that holds NaN or inf, if any."""
        values = self.values[name]
        if values.dtype.kind != "f":
            return
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            row = self.first_row + i if self.rows is None else int(self.rows[i])
            run = int(np.searchsorted(self.offsets, i, side="right")) - 1
            episode = first_episode + int(self.episodes[run])
            raise InputError(f"{name}: NaN or inf at step row {row} (episode {episode})")


def to_device(name: str, array: np.ndarray, device: torch.device) -> Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dtype == torch.bool:
        tensor = tensor.to(torch.uint8)
    return tensor.to(device=device, dtype=torch.float64, non_blocking=True)


_KERNEL_TYPES = (np.dtype(np.float32), np.dtype(np.float64))


@numba.njit(cache=True, nogil=True)
def _run_sums(values, bounds, weight, out):  # noqa: ANN001, ANN202 (numba kernel)
    """out[r, c] = sum of weight[i] * values[i, c] (weight empty: 1) over the rows i of
    run r, [bounds[r], bounds[r + 1]), accumulated in float64 in row order. Columns go
    eight at a time in registers (row-major rows are read once per eight columns)."""
    rows, columns = values.shape
    weighted = weight.shape[0] > 0
    for g in range(0, columns - columns % 8, 8):
        for r in range(bounds.shape[0] - 1):
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
            for i in range(bounds[r], bounds[r + 1]):
                row = values[i]
                w = weight[i] if weighted else 1.0
                if weighted:
                    s0 += w * row[g]
                    s1 += w * row[g + 1]
                    s2 += w * row[g + 2]
                    s3 += w * row[g + 3]
                    s4 += w * row[g + 4]
                    s5 += w * row[g + 5]
                    s6 += w * row[g + 6]
                    s7 += w * row[g + 7]
                else:
                    s0 += row[g]
                    s1 += row[g + 1]
                    s2 += row[g + 2]
                    s3 += row[g + 3]
                    s4 += row[g + 4]
                    s5 += row[g + 5]
                    s6 += row[g + 6]
                    s7 += row[g + 7]
            out[r, g] = s0
            out[r, g + 1] = s1
            out[r, g + 2] = s2
            out[r, g + 3] = s3
            out[r, g + 4] = s4
            out[r, g + 5] = s5
            out[r, g + 6] = s6
            out[r, g + 7] = s7
    first = columns - columns % 8
    for r in range(bounds.shape[0] - 1):
        for c in range(first, columns):
            out[r, c] = 0.0
        for i in range(bounds[r], bounds[r + 1]):
            w = weight[i] if weighted else 1.0
            for c in range(first, columns):
                if weighted:
                    out[r, c] += w * values[i, c]
                else:
                    out[r, c] += values[i, c]
    return out
