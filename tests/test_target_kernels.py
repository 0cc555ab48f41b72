"""The compiled (numba) kernels of the sorted-target returns
(hipi_offline/relabel/target_returns.py): the per-chunk bucket sums and squares of the
CPU pass, and R's rows computed from them.

Returns are compared with the float64 brute force of tests/reference.py (every step and
candidate, one episode at a time) to rtol 1e-12: sums of a few dozen float64 terms of
magnitude <= 3 in another order agree far closer. Two claims of the code are checked bit
for bit, because they are the same operations in the same order, not another batching:
the bucket sums equal ``np.bincount`` per chunk added to each episode's, the unweighted
squares equal ``np.add.reduceat`` of the row-major float64 squares per chunk added to
each episode's (the code they replaced), and ``rows`` equals ``result`` (the kernel and
the torch formula).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference as ref
import torch
import yaml

import hipi_offline.relabel.segments as segments_module
from hipi_offline.errors import InputError
from hipi_offline.relabel import accumulate_returns, make_accumulator
from hipi_offline.relabel.returns import StoreRows
from hipi_offline.relabel.segments import Segments
from hipi_offline.relabel.target_returns import Float32Buckets, SortedTargetAccumulator
from hipi_offline.store import create_store, open_store
from hipi_offline.tasks import parse_task_spec
from hipi_offline.tasks.families import TargetFamily
from hipi_offline.tasks.spec import TaskSpec

SPEED, ACT, OBS = "steps/infos/speed", "steps/actions", "steps/observations"
CPU = torch.device("cpu")
# One-step episodes, episodes cut by chunks of 5 rows and longer than a chunk.
LENGTHS = [1, 3, 12, 1, 1, 7, 25, 2, 1, 9, 4]
RTOL = ATOL = 1e-12
# Ties with the features (multiples of 1/8), +0.0 and -0.0, a repeat, values that are
# not float32 (0.1, 0.7: a float32 feature lies on one side), a denormal, the ends.
CANDIDATES = np.array(
    [[1.5], [0.0], [0.25], [3.0], [0.7], [1.5], [-0.0], [2.125], [1e-40], [0.1], [-1.0], [4.0]]
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_steps(lengths: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """Speeds on a grid of 1/8 in [0, 3] (ties with candidates), some -0.0, 0.1 and 0.7
    in float32; actions [rows, 3] float32 (and the observations a store requires)."""
    rng = np.random.default_rng(seed)
    rows = sum(lengths)
    speed = (rng.integers(0, 25, rows) / 8).astype(np.float32)
    speed[rng.random(rows) < 0.1] = -0.0
    speed[rng.random(rows) < 0.05] = np.float32(0.1)
    speed[rng.random(rows) < 0.05] = np.float32(0.7)
    actions = rng.uniform(-1, 1, (rows, 3)).astype(np.float32)
    return {SPEED: speed, ACT: actions, OBS: np.zeros((rows, 1), np.float32)}


def write(path: Path, steps: dict[str, np.ndarray], lengths: list[int]) -> Path:
    with create_store(path) as store:
        store.append_episodes(steps, lengths)
    return path


def target_spec(gamma: float = 1.0, at: str = "all", ctrl: float = 0.05) -> TaskSpec:
    body: dict[str, Any] = {
        "family": "target",
        "feature": SPEED,
        "ctrl_cost": ctrl,
        "prior": {"uniform": {"low": [0.0], "high": [3.0]}},
        "gamma": gamma,
        "at": at,
    }
    return parse_task_spec(yaml.safe_dump(body))


def run(
    path: Path, spec: TaskSpec, tasks: np.ndarray = CANDIDATES, chunk: int = 5, rows=None
) -> SortedTargetAccumulator:
    """The accumulator after the pass over the store (or over episodes ``rows``)."""
    t = torch.from_numpy(np.asarray(tasks, np.float64))
    with open_store(path) as store:
        view = store if rows is None else StoreRows(store, *rows)
        n = StoreRows.of(view).num_episodes
        acc = make_accumulator(spec.family, t, n, 0, 0 if rows is None else rows[0])
        assert isinstance(acc, SortedTargetAccumulator)
        accumulate_returns(view, spec, acc, device=CPU, chunk_steps=chunk, prefetch=False)
        return acc


def reference(
    steps: dict[str, np.ndarray],
    lengths: list[int],
    gamma: float,
    at: str,
    ctrl: float,
    tasks: np.ndarray = CANDIDATES,
) -> np.ndarray:
    fields = {k: np.asarray(v, np.float64) for k, v in steps.items()}
    reward = ref.target_reward(SPEED, None, ctrl)
    return ref.returns_matrix(fields, lengths, tasks, reward, gamma, at)


def result(acc: SortedTargetAccumulator, tasks: np.ndarray = CANDIDATES) -> np.ndarray:
    return acc.result(torch.from_numpy(np.asarray(tasks, np.float64))).numpy()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    steps = make_steps(LENGTHS)
    return write(tmp_path_factory.mktemp("kernels") / "s.h5", steps, LENGTHS), steps


# ------------------------------------------------------------------ against the reference
@pytest.mark.parametrize("ctrl", [0.0, 0.05])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
@pytest.mark.parametrize(
    ("gamma", "at"), [(1.0, "all"), (0.9, "all"), (1.0, "final"), (0.8, "final")]
)
def test_returns_equal_the_float64_reference(store, chunk, gamma, at, ctrl) -> None:
    """Every chunking (one row, episodes cut, whole store), weights, ties and +-0.0."""
    path, steps = store
    acc = run(path, target_spec(gamma, at, ctrl), chunk=chunk)
    assert acc.table is not None  # the compiled path ran
    want = reference(steps, LENGTHS, gamma, at, ctrl)
    np.testing.assert_allclose(result(acc), want, rtol=RTOL, atol=ATOL)


def test_a_partition_that_starts_mid_store(store) -> None:
    path, steps = store
    acc = run(path, target_spec(0.9, "all"), rows=(3, 10))
    lo, hi = sum(LENGTHS[:3]), sum(LENGTHS[:10])
    part = {k: v[lo:hi] for k, v in steps.items()}
    want = reference(part, LENGTHS[3:10], 0.9, "all", 0.05)
    np.testing.assert_allclose(result(acc), want, rtol=RTOL, atol=ATOL)


def test_many_candidates_and_long_episodes(tmp_path) -> None:
    """K = 300 random candidates among speeds of episodes over many chunks: rows both
    in table cells without a candidate and in cells searched."""
    lengths = [700, 1, 1300, 45]
    rng = np.random.default_rng(4)
    steps = make_steps(lengths, seed=4)
    steps[SPEED] = rng.uniform(0, 3, sum(lengths)).astype(np.float32)
    tasks = rng.uniform(0, 3, (300, 1))
    path = write(tmp_path / "s.h5", steps, lengths)
    for gamma in (1.0, 0.99):
        acc = run(path, target_spec(gamma), tasks, chunk=256)
        want = reference(steps, lengths, gamma, "all", 0.05, tasks)
        np.testing.assert_allclose(result(acc, tasks), want, rtol=RTOL, atol=1e-11)


@pytest.mark.parametrize("dtype", [np.float64, np.int16])
def test_actions_of_another_dtype(tmp_path, dtype) -> None:
    steps = make_steps(LENGTHS)
    steps[ACT] = (steps[ACT] * 1000).astype(dtype)
    path = write(tmp_path / "s.h5", steps, LENGTHS)
    acc = run(path, target_spec(0.9, "all"))
    want = reference(steps, LENGTHS, 0.9, "all", 0.05)
    np.testing.assert_allclose(result(acc), want, rtol=RTOL, atol=1e-9)


def test_float64_features_take_the_torch_path(tmp_path) -> None:
    steps = make_steps(LENGTHS)
    steps[SPEED] = steps[SPEED].astype(np.float64) + 1e-9  # not float32 values
    path = write(tmp_path / "s.h5", steps, LENGTHS)
    for gamma, at in [(1.0, "all"), (0.9, "final")]:
        acc = run(path, target_spec(gamma, at))
        assert acc.table is None  # torch's searchsorted and bincount, not the kernel
        want = reference(steps, LENGTHS, gamma, at, 0.05)
        np.testing.assert_allclose(result(acc), want, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ non-finite input
@pytest.mark.parametrize("chunk", [5, 1000])
@pytest.mark.parametrize("bad", [np.nan, -np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(("field", "row"), [(SPEED, 0), (SPEED, 29), (ACT, 6), (ACT, 65)])
def test_non_finite_input_names_its_row(tmp_path, field, row, bad, chunk) -> None:
    steps = make_steps(LENGTHS)
    steps[field].reshape(len(steps[field]), -1)[row, -1] = bad
    path = write(tmp_path / "bad.h5", steps, LENGTHS)
    episode = int(np.searchsorted(np.cumsum(LENGTHS), row, side="right"))
    message = rf"^{field}: NaN or inf at step row {row} \(episode {episode}\)$"
    with pytest.raises(InputError, match=message):
        run(path, target_spec(), chunk=chunk)


def test_finite_actions_whose_squares_overflow_are_not_an_error(tmp_path) -> None:
    """float64 actions of 1e200: ||a||^2 is inf, no input row is bad, so no error and
    that episode's returns are -inf (as before)."""
    steps = make_steps(LENGTHS)
    steps[ACT] = steps[ACT].astype(np.float64)
    steps[ACT][20, 0] = 1e200  # episode 5 (rows 18..24)
    path = write(tmp_path / "s.h5", steps, LENGTHS)
    got = result(run(path, target_spec()))
    assert np.isneginf(got[5]).all()
    assert np.isfinite(np.delete(got, 5, axis=0)).all()


def segments(
    values: np.ndarray, episodes: np.ndarray, weight: np.ndarray | None, first: int
) -> Segments:
    """Segments of one chunk by hand: ``episodes`` [rows] nondecreasing."""
    offsets = np.concatenate([[0], np.flatnonzero(episodes[1:] != episodes[:-1]) + 1])
    actions = np.ones((len(values), 2), np.float32)
    fields = {SPEED: values, ACT: actions}
    return Segments(fields, offsets, episodes[offsets], weight, None, first, CPU)


def test_add_reports_only_the_episodes_the_chunk_touched() -> None:
    """A NaN makes add() False for its chunk only; a later chunk of other episodes is
    True."""
    family = TargetFamily(feature=SPEED, ctrl_cost=0.05)
    acc = SortedTargetAccumulator(family, torch.tensor([[0.5], [1.5]]), 4)
    nan = np.array([0.2, np.nan, 1.0], np.float32)
    assert not acc.add(segments(nan, np.array([0, 0, 1]), None, 0))
    assert acc.add(segments(np.array([0.3, 2.0], np.float32), np.array([2, 3]), None, 3))
    assert np.isnan(acc.moment[0].numpy()).any() and np.isfinite(acc.moment[1:].numpy()).all()
    assert acc.weight.sum().item() == 5  # NaN, too, was counted in one of the K+1 buckets


# ------------------------------------------------------------------ the sums, bit for bit
def test_bucket_sums_equal_bincount_per_chunk() -> None:
    """The kernel adds the rows of a chunk in row order, and a chunk's sums of an episode
    begun before onto the episode's: the order of ``np.bincount`` per chunk followed by
    ``index_add_`` (the code it replaced), so the sums are the same bits."""
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 40, 60)
    rows = int(lengths.sum())
    episode = np.repeat(np.arange(len(lengths)), lengths)
    offset = np.arange(rows) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    values = rng.uniform(0, 3, rows).astype(np.float32)
    tasks = np.sort(rng.uniform(0, 3, 50))
    family = TargetFamily(feature=SPEED, ctrl_cost=0.05)
    for weight in (None, 0.97**offset):
        acc = SortedTargetAccumulator(family, torch.from_numpy(tasks[:, None]), len(lengths))
        count, moment = np.zeros((len(lengths), 51)), np.zeros((len(lengths), 51))
        bucket = np.searchsorted(tasks, values.astype(np.float64), side="left")
        for a in range(0, rows, 37):
            b = min(rows, a + 37)
            w = None if weight is None else weight[a:b]
            acc.add(segments(values[a:b], episode[a:b], w, a))
            ep = episode[a:b]
            first = ep[0]
            flat = (ep - first) * 51 + bucket[a:b]
            size = (ep[-1] - first + 1) * 51
            ones = np.ones(b - a) if w is None else w
            c = np.bincount(flat, ones, minlength=size).reshape(-1, 51)
            m = np.bincount(flat, ones * values[a:b], minlength=size).reshape(-1, 51)
            count[first : ep[-1] + 1] += c
            moment[first : ep[-1] + 1] += m
        assert np.array_equal(acc.weight.numpy(), count)
        assert np.array_equal(acc.moment.numpy(), moment)
        squares = np.bincount(episode, np.full(rows, 2.0) if weight is None else 2.0 * weight)
        np.testing.assert_allclose(acc.squares.numpy(), squares, rtol=RTOL)


@pytest.mark.parametrize("chunk", [1, 5, 7, 1000])
def test_unweighted_squares_equal_reduceat_per_chunk(tmp_path, chunk: int) -> None:
    """The control cost of gamma = 1 is summed as the squares-then-reduceat code summed
    it (first entry, then numpy's pairwise sum), chunk by chunk: bit-identical labels."""
    lengths = [1, 300, 2, 131, 17, 1000, 8, 9]  # pairwise blocks of < 8, 128 and more
    steps = make_steps(lengths, seed=5)
    steps[ACT] = (steps[ACT] * np.float32(1e3)).astype(np.float32)
    acc = run(write(tmp_path / "s.h5", steps, lengths), target_spec(), chunk=chunk)
    want = np.zeros(len(lengths))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    squares = np.square(steps[ACT], dtype=np.float64)
    for a in range(0, int(ends[-1]), chunk):  # the old pass: per chunk, runs of episodes
        b = min(a + chunk, int(ends[-1]))
        for e in np.flatnonzero((starts < b) & (ends > a)):
            lo, hi = max(starts[e], a), min(ends[e], b)
            want[e] += np.add.reduceat(squares[lo:hi].reshape(-1), [0])[0]
    np.testing.assert_array_equal(acc.squares.numpy(), want)


def test_the_table_equals_its_numpy_definition() -> None:
    """Each cell: the number of keys below it, or -1 when a key lies in it."""
    rng = np.random.default_rng(2)
    for k in (1, 7, 300):
        for rows in (5, 65536, 10**7):
            extra = [0.0, -0.0, 1e-45, 3.4e38, -1e39, 1e39, np.inf, -np.inf]
            candidates = np.sort(np.concatenate([rng.uniform(-3, 3, k), extra]))
            buckets = Float32Buckets(candidates, rows)
            cells = (buckets.keys >> buckets.shift).astype(np.int64) + buckets.middle
            count = np.bincount(cells, minlength=len(buckets.table))
            want = np.where(count == 0, np.cumsum(count) - count, -1)
            assert buckets.table.dtype == np.int32
            assert np.array_equal(buckets.table, want)


# ------------------------------------------------------------------ rows of R
@pytest.fixture(scope="module")
def summed(store) -> SortedTargetAccumulator:
    path, _ = store
    return run(path, target_spec(0.9, "all"), chunk=5)


def test_rows_equal_result_slices(summed) -> None:
    tasks = torch.from_numpy(CANDIDATES)
    whole = summed.result(tasks).numpy()
    n, k = whole.shape
    rng = np.random.default_rng(0)
    pairs = [(0, 0), (0, n), (n, n), (n - 1, n)] + [(i, i + 1) for i in range(n)]
    pairs += [tuple(sorted(rng.integers(0, n + 1, 2))) for _ in range(30)]
    for i0, i1 in pairs:
        out = np.full((i1 - i0, k), np.nan)
        assert summed.rows(tasks, i0, i1, out) is out
        assert np.array_equal(out, whole[i0:i1])


def test_rows_equal_the_torch_formula(summed, monkeypatch) -> None:
    """The kernel does the torch code's operations in its order: the same bits."""
    tasks = torch.from_numpy(CANDIDATES)
    n, k = len(LENGTHS), len(CANDIDATES)
    out = summed.rows(tasks, 0, n, np.empty((n, k)))
    monkeypatch.setattr(segments_module, "numpy_path", lambda device: False)
    assert np.array_equal(out, summed.result(tasks).numpy())


def test_rows_from_threads_on_disjoint_ranges(tmp_path) -> None:
    lengths = [5, 1, 30, 2] * 100
    steps = make_steps(lengths, seed=9)
    tasks = np.random.default_rng(9).uniform(0, 3, (64, 1))
    acc = run(write(tmp_path / "s.h5", steps, lengths), target_spec(0.9), tasks, chunk=100)
    t = torch.from_numpy(tasks)
    whole = acc.result(t).numpy()
    out = np.empty_like(whole)
    bounds = [(i, min(i + 7, len(lengths))) for i in range(0, len(lengths), 7)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda b: acc.rows(t, b[0], b[1], out[b[0] : b[1]]), bounds))
    assert np.array_equal(out, whole)


def test_rows_refuse_a_wrong_buffer(summed) -> None:
    tasks = torch.from_numpy(CANDIDATES)
    k = len(CANDIDATES)
    for out in (np.empty((2, k + 1)), np.empty((2, k), np.float32), np.empty((k, 2)).T):
        with pytest.raises(ValueError, match="out must be"):
            summed.rows(tasks, 0, 2, out)
    with pytest.raises(ValueError, match="out of range"):
        summed.rows(tasks, 3, 2, np.empty((0, k)))
