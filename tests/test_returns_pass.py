"""The streaming returns pass (hipi_offline/relabel/returns.py): per-episode segment sums
over chunks, finiteness checked on the sums, and the row named when it fails.

Every sum is compared against a float64 numpy reference written per episode; float64
results of a different summation order agree to rtol 1e-12 (a sum of at most a few
dozen terms of magnitude <= 3 in float64 is off by far less). The device is the CPU
unless HIPI_TEST_DEVICE names another (cuda on a GPU machine).
"""

from __future__ import annotations

import os
import tracemalloc
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
from hipi_offline.relabel.returns import GenericAccumulator, LinearAccumulator, StoreRows
from hipi_offline.relabel.target_returns import Float32Buckets, SortedTargetAccumulator
from hipi_offline.store import create_store, open_store
from hipi_offline.tasks import parse_task_spec
from hipi_offline.tasks.spec import TaskSpec

DEVICE = torch.device(os.environ.get("HIPI_TEST_DEVICE", "cpu"))
FEAT, SPEED, WIDE, FLAG = "steps/infos/feat", "steps/infos/speed", "steps/infos/wide", "steps/flag"
OBS, ACT = "steps/observations", "steps/actions"
CHUNK = 5
# Single-step episodes, episodes straddling chunk boundaries and longer than a chunk.
LENGTHS = [1, 3, 12, 1, 1, 7, 25, 2, 1, 9, 4]
RTOL = 1e-12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_steps(lengths: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = sum(lengths)
    return {
        FEAT: rng.uniform(-3, 3, (rows, 2, 2)).astype(np.float32),
        SPEED: rng.uniform(0, 3, rows).astype(np.float32),
        WIDE: rng.uniform(-1, 1, (rows, 2)),  # float64
        FLAG: rng.random(rows) < 0.5,  # bool
        OBS: rng.uniform(-1, 1, (rows, 3)).astype(np.float32),
        ACT: rng.uniform(-1, 1, (rows, 2)).astype(np.float32),
    }


def write(path: Path, steps: dict[str, np.ndarray], lengths: list[int]) -> Path:
    with create_store(path) as store:
        store.append_episodes(steps, lengths)
    return path


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    steps = make_steps(LENGTHS)
    return write(tmp_path_factory.mktemp("pass") / "s.h5", steps, LENGTHS), steps


def spec_of(body: dict[str, Any], gamma: float = 1.0, at: str = "all") -> TaskSpec:
    body = {**body, "gamma": gamma, "at": at}
    return parse_task_spec(yaml.safe_dump(body))


def linear_spec(gamma: float = 1.0, at: str = "all") -> TaskSpec:
    body = {
        "family": "linear",
        "features": [FEAT, SPEED, WIDE, FLAG],
        "prior": {"uniform": {"low": [-1.0] * 8, "high": [1.0] * 8}},
    }
    return spec_of(body, gamma, at)


def target_spec(gamma: float = 1.0, at: str = "all", dims: list[int] | None = None) -> TaskSpec:
    body: dict[str, Any] = {
        "family": "target",
        "feature": SPEED if dims is None else OBS,
        "ctrl_cost": 0.05,
        "prior": {"uniform": {"low": [0.0], "high": [3.0]}},
    }
    if dims is not None:
        body["dims"] = dims
    return spec_of(body, gamma, at)


def goal_spec(gamma: float = 1.0, at: str = "all") -> TaskSpec:
    body = {
        "family": "goal",
        "field": OBS,
        "dims": [0, 2],
        "prior": {"uniform": {"low": [-1.0, -1.0], "high": [1.0, 1.0]}},
    }
    return spec_of(body, gamma, at)


def phi_sums(steps: dict[str, np.ndarray], lengths: list[int], gamma: float, at: str) -> np.ndarray:
    """sum_t w_t phi_t per episode, one episode at a time in float64."""
    parts = [np.asarray(steps[f], np.float64).reshape(len(steps[f]), -1) for f in (FEAT, SPEED)]
    parts += [steps[WIDE], steps[FLAG].astype(np.float64)[:, None]]
    phi = np.concatenate(parts, axis=1)
    out, start = [], 0
    for length in lengths:
        w = ref.step_weights(length, gamma, at)
        out.append((w[:, None] * phi[start : start + length]).sum(axis=0))
        start += length
    return np.array(out)


def run(
    path: Path, spec: TaskSpec, tasks: np.ndarray, rows=None, chunk: int = CHUNK, generic=False
):
    """The accumulator of the pass over the store (or over ``rows`` = (first, stop) episodes)."""
    t = torch.from_numpy(np.asarray(tasks, np.float64)).to(DEVICE)
    with open_store(path) as store:
        view = store if rows is None else StoreRows(store, *rows)
        n = StoreRows.of(view).num_episodes
        first = 0 if rows is None else rows[0]
        acc = (
            GenericAccumulator(spec.family, t, n, 0, first)
            if generic
            else make_accumulator(spec.family, t, n, 0, first)
        )
        return accumulate_returns(view, spec, acc, device=DEVICE, chunk_steps=chunk)


def test_the_store_has_the_cases(store_path) -> None:
    """Chunks of CHUNK rows cut episodes (straddling and longer than a chunk)."""
    path, _ = store_path
    with open_store(path) as store:
        cuts = {a for a, _ in store.chunk_bounds(CHUNK)}
        starts, ends = store.starts, store.ends
    straddles = [any(s < c < e for c in cuts) for s, e in zip(starts, ends, strict=True)]
    assert sum(straddles) >= 3 and max(LENGTHS) > 2 * CHUNK and LENGTHS.count(1) >= 3


@pytest.mark.parametrize("chunk", [1, CHUNK, 1000])
@pytest.mark.parametrize(
    ("gamma", "at"), [(1.0, "all"), (0.9, "all"), (1.0, "final"), (0.8, "final")]
)
def test_linear_sums_match_numpy(store_path, chunk, gamma, at) -> None:
    path, steps = store_path
    acc = run(path, linear_spec(gamma, at), np.zeros((1, 8)), chunk=chunk)
    assert isinstance(acc, LinearAccumulator)
    want = phi_sums(steps, LENGTHS, gamma, at)
    np.testing.assert_allclose(acc.stats.cpu().numpy(), want, rtol=RTOL, atol=1e-13)


@pytest.mark.parametrize(("gamma", "at"), [(1.0, "all"), (0.9, "all"), (1.0, "final")])
def test_a_partition_that_starts_mid_store(store_path, gamma, at) -> None:
    """Episodes [2, 9): rows start mid-store and mid-chunk; stats are the partition's."""
    path, steps = store_path
    acc = run(path, linear_spec(gamma, at), np.zeros((1, 8)), rows=(2, 9))
    want = phi_sums(steps, LENGTHS, gamma, at)[2:9]
    np.testing.assert_allclose(acc.stats.cpu().numpy(), want, rtol=RTOL, atol=1e-13)


CASES = {
    "linear": (linear_spec, LinearAccumulator, np.random.default_rng(1).normal(0, 1, (6, 8))),
    "target": (target_spec, SortedTargetAccumulator, np.array([[1.5], [0.0], [3.5], [0.7], [1.5]])),
    "target-dims": (
        lambda g, a: target_spec(g, a, dims=[1]),
        SortedTargetAccumulator,
        np.array([[0.25], [-0.5], [2.0], [0.0]]),
    ),
    "goal": (goal_spec, GenericAccumulator, np.array([[0.1, -0.2], [0.5, 0.5], [-1.0, 0.0]])),
}


@pytest.mark.parametrize("rows", [None, (3, 10)])
@pytest.mark.parametrize(("gamma", "at"), [(1.0, "all"), (0.9, "all"), (0.9, "final")])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_accumulator_against_the_generic_one(store_path, case, gamma, at, rows) -> None:
    path, steps = store_path
    make, kind, tasks = CASES[case]
    spec = make(gamma, at)
    fast = run(path, spec, tasks, rows=rows)
    slow = run(path, spec, tasks, rows=rows, generic=True)
    assert type(fast) is kind
    t = torch.from_numpy(tasks.astype(np.float64)).to(DEVICE)
    got, want = fast.result(t).cpu().numpy(), slow.result(t).cpu().numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-12)
    first, stop = rows or (0, len(LENGTHS))
    lo, hi = sum(LENGTHS[:first]), sum(LENGTHS[:stop])
    fields = {k: np.asarray(v[lo:hi], np.float64) for k, v in steps.items()}
    reward = {
        "linear": ref.linear_reward([FEAT, SPEED, WIDE, FLAG]),
        "target": ref.target_reward(SPEED, None, 0.05),
        "target-dims": ref.target_reward(OBS, [1], 0.05),
        "goal": ref.goal_reward(OBS, [0, 2], None),
    }[case]
    expected = ref.returns_matrix(fields, LENGTHS[first:stop], tasks, reward, gamma, at)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-12)


# ------------------------------------------------------------------ non-finite input
# (row, partner): a bad value at row; for "inf-inf" +inf at row and -inf at partner, in
# the same episode (same chunk: 6 and 8; other chunks: 29 and 35; partner first: 62).
PLACES = [(0, None), (6, 8), (27, 29), (29, 35), (65, 62), (17, None)]
BAD = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf, "inf-inf": np.inf}


def episode_of(row: int) -> int:
    return int(np.searchsorted(np.cumsum(LENGTHS), row, side="right"))


@pytest.mark.parametrize(
    ("bad", "place"),
    [(b, p) for b in sorted(BAD) for p in PLACES if b != "inf-inf" or p[1] is not None],
)
@pytest.mark.parametrize("case", sorted(CASES))
def test_non_finite_input_names_its_row(tmp_path, case, bad, place) -> None:
    """NaN, +inf, -inf, or +inf and -inf in one episode (their sum is NaN): the error
    names the first bad row and its episode, for every accumulator (for target-dims in a
    column the reward does not read)."""
    make, _, tasks = CASES[case]
    steps = make_steps(LENGTHS)
    field = {"linear": FEAT, "target": SPEED, "target-dims": OBS, "goal": OBS}[case]
    row, partner = place
    rows = steps[field].reshape(len(steps[field]), -1)
    rows[row, -1] = BAD[bad]
    first = row
    if bad == "inf-inf":
        assert partner is not None and episode_of(partner) == episode_of(row)
        rows[partner, -1] = -np.inf
        first = min(row, partner)
    path = write(tmp_path / "bad.h5", steps, LENGTHS)
    message = rf"^{field}: NaN or inf at step row {first} \(episode {episode_of(row)}\)$"
    with pytest.raises(InputError, match=message):
        run(path, make(1.0, "all"), tasks)
    if episode_of(row) >= 2:  # through a partition: rows and episodes stay the store's
        with pytest.raises(InputError, match=message):
            run(path, make(1.0, "all"), tasks, rows=(2, len(LENGTHS)))


def test_an_unselected_column_and_the_field_order(tmp_path) -> None:
    """`target` with dims: NaN in a column the reward does not read is still reported;
    with two bad fields in one chunk the first field (the feature) is named even when
    the other's bad row comes first."""
    steps = make_steps(LENGTHS)
    steps[OBS][20, 0] = np.nan  # dims [1] read column 1 only
    path = write(tmp_path / "a.h5", steps, LENGTHS)
    with pytest.raises(InputError, match=rf"^{OBS}: NaN or inf at step row 20 \(episode 5\)$"):
        run(path, target_spec(dims=[1]), np.array([[0.5]]))
    steps = make_steps(LENGTHS)
    steps[ACT][15, 1] = np.inf
    steps[SPEED][17] = np.nan
    path = write(tmp_path / "b.h5", steps, LENGTHS)
    for generic in (False, True):
        with pytest.raises(InputError, match=rf"^{SPEED}: NaN or inf at step row 17 "):
            run(path, target_spec(), np.array([[0.5]]), chunk=1000, generic=generic)


def test_at_final_checks_only_the_rewarded_steps(tmp_path) -> None:
    """With `at: final` only each episode's last step counts, as before: NaN elsewhere
    is not read into R and not reported; on a last step it is."""
    steps = make_steps(LENGTHS)
    steps[FEAT][5, 0, 0] = np.nan  # episode 2 (rows 4..15), not its last step
    path = write(tmp_path / "a.h5", steps, LENGTHS)
    acc = run(path, linear_spec(1.0, "final"), np.zeros((1, 8)))
    assert bool(torch.isfinite(acc.stats).all())
    steps[FEAT][15, 1, 1] = -np.inf  # episode 2's last step
    path = write(tmp_path / "b.h5", steps, LENGTHS)
    with pytest.raises(InputError, match=rf"^{FEAT}: NaN or inf at step row 15 \(episode 2\)$"):
        run(path, linear_spec(1.0, "final"), np.zeros((1, 8)))


def test_finite_values_whose_sum_overflows_are_not_an_error(tmp_path) -> None:
    """float64 values near the maximum sum to inf: no input row is bad, so no error
    (R overflows, as it did before)."""
    steps = make_steps(LENGTHS)
    steps[WIDE][5:9, 0] = 1.5e308
    path = write(tmp_path / "a.h5", steps, LENGTHS)
    acc = run(path, linear_spec(), np.zeros((1, 8)))
    assert np.isinf(acc.stats[2, 5].item())


# ------------------------------------------------------------------ memory
def peak_bytes(path: Path, spec: TaskSpec, tasks: np.ndarray) -> int:
    tracemalloc.start()
    try:
        run(path, spec, tasks, chunk=512)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.skipif(DEVICE.type != "cpu", reason="host allocations of the CPU pass")
@pytest.mark.parametrize("case", ["linear", "target"])
def test_memory_is_flat_in_the_number_of_steps(tmp_path, case) -> None:
    """numpy's allocations (traced by tracemalloc) peak at about one chunk (and the
    prefetched one) plus the N x K work: 8x the steps per episode leave the peak of a
    pass within a few chunks of the smaller store's."""
    make, _, tasks = CASES[case]
    spec = make(1.0, "all")
    short, long = [200] * 20, [1600] * 20
    paths = []
    for lengths in (short, long):
        steps = make_steps(lengths)
        paths.append(write(tmp_path / f"{len(paths)}.h5", steps, lengths))
    run(paths[0], spec, tasks)  # first-use allocations (imports, caches) are not the pass's
    peaks = [peak_bytes(path, spec, tasks) for path in paths]
    row = sum(steps[name][0].nbytes for name in spec.family.fields)  # bytes of one row read
    # Holding the long store's extra rows would add (sum(long) - sum(short)) * row bytes.
    assert peaks[1] - peaks[0] < 4 * 512 * row < (sum(long) - sum(short)) * row, peaks


# ------------------------------------------------------------------ float32 buckets
def float32_neighbours(x: np.ndarray) -> np.ndarray:
    """float32 values at, just below and just above each of ``x`` (rounded to float32)."""
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf
        r = x.astype(np.float32)
    up, down = np.float32(np.inf), np.float32(-np.inf)
    return np.concatenate([r, np.nextafter(r, up), np.nextafter(r, down)])


@pytest.mark.parametrize("rows", [5, 65536])
def test_float32_buckets_equal_a_float64_binary_search(rows) -> None:
    """Candidates that are float32 values, lie between two float32 values, repeat, are
    +-0, denormal, huge or beyond float32's range; values at, next to and between them,
    +-inf and NaN (NaN: any bucket, its moment is NaN and is reported)."""
    rng = np.random.default_rng(3)
    exact = rng.uniform(-3, 3, 40).astype(np.float32).astype(np.float64)
    between = exact + np.abs(exact) * 2.0**-30  # not float32 values
    special = [0.0, -0.0, 1e-45, -1e-45, 1e-39, 3.4e38, -3.4e38, 1e39, -1e39, 1.0, 1.0]
    candidates = np.sort(np.concatenate([exact, between, special, rng.uniform(-3, 3, 200)]))
    buckets = Float32Buckets(candidates, rows)
    values = np.concatenate(
        [
            float32_neighbours(candidates),
            rng.uniform(-4, 4, 5000).astype(np.float32),
            np.array([0.0, -0.0, np.inf, -np.inf, 3.4028235e38, -3.4028235e38], np.float32),
        ]
    ).astype(np.float32)
    got = buckets(values)
    want = torch.searchsorted(
        torch.from_numpy(candidates), torch.from_numpy(values.astype(np.float64))
    )
    np.testing.assert_array_equal(got, want.numpy())
    nan = buckets(np.array([np.nan, -np.nan], np.float32))
    assert ((nan >= 0) & (nan <= len(candidates))).all()


# ------------------------------------------------------------------ the CUDA code path
@pytest.fixture
def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sums take the torch ops meant for CUDA (device casts, index_add_, searchsorted)."""
    monkeypatch.setattr(segments_module, "numpy_path", lambda device: False)


@pytest.mark.parametrize("rows", [None, (3, 10)])
@pytest.mark.parametrize(("gamma", "at"), [(1.0, "all"), (0.9, "all"), (0.9, "final")])
@pytest.mark.parametrize("case", ["linear", "target", "target-dims"])
def test_the_torch_path_equals_the_reference(store_path, torch_path, case, gamma, at, rows):
    path, steps = store_path
    make, _, tasks = CASES[case]
    acc = run(path, make(gamma, at), tasks, rows=rows)
    t = torch.from_numpy(tasks.astype(np.float64)).to(DEVICE)
    got = acc.result(t).cpu().numpy()
    first, stop = rows or (0, len(LENGTHS))
    lo, hi = sum(LENGTHS[:first]), sum(LENGTHS[:stop])
    fields = {k: np.asarray(v[lo:hi], np.float64) for k, v in steps.items()}
    reward = {
        "linear": ref.linear_reward([FEAT, SPEED, WIDE, FLAG]),
        "target": ref.target_reward(SPEED, None, 0.05),
        "target-dims": ref.target_reward(OBS, [1], 0.05),
    }[case]
    expected = ref.returns_matrix(fields, LENGTHS[first:stop], tasks, reward, gamma, at)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("case", ["linear", "target"])
def test_the_torch_path_names_the_bad_row(tmp_path, torch_path, case) -> None:
    make, _, tasks = CASES[case]
    steps = make_steps(LENGTHS)
    field = FEAT if case == "linear" else ACT
    steps[field].reshape(len(steps[field]), -1)[[29, 35], -1] = [np.inf, -np.inf]
    path = write(tmp_path / "bad.h5", steps, LENGTHS)
    with pytest.raises(InputError, match=rf"^{field}: NaN or inf at step row 29 \(episode 6\)$"):
        run(path, make(1.0, "all"), tasks)
