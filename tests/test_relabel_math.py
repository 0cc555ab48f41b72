"""The relabeling math (paper Eq. 7) against a plain-numpy float64 reference.

Every number the engine stores is compared with ``tests/reference.py``, which
evaluates each reward per episode and per candidate from the family definitions
(docs/TASKS.md) and computes the posterior densely. The fast paths (linear
sufficient statistics, sorted target buckets, K-tiling with a disk spill, chunked
streaming) must agree with it and with each other.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference as ref
import torch
import yaml
from conftest import SUFFIXES

import hipi_offline.relabel.run as run_module
from hipi_offline.relabel import RelabelConfig, accumulate_returns, make_accumulator, relabel
from hipi_offline.relabel.returns import GenericAccumulator, LinearAccumulator
from hipi_offline.relabel.target_returns import SortedTargetAccumulator
from hipi_offline.store import LabelSet, create_store, open_store
from hipi_offline.tasks import FAMILIES as REGISTERED_FAMILIES
from hipi_offline.tasks import parse_task_spec

SPEED = "steps/infos/speed"
HEIGHT = "steps/infos/height"
OBS = "steps/observations"
ACT = "steps/actions"
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ helpers


def random_steps(lengths: list[int], seed: int) -> dict[str, np.ndarray]:
    """Step fields of small episodes: obs [S, 5] in [-1, 1], actions [S, 6],
    speed in [0, 3], height ~ 0.6 (all float32, as stored)."""
    rng = np.random.default_rng(seed)
    rows = int(sum(lengths))
    return {
        OBS: rng.uniform(-1.0, 1.0, (rows, 5)).astype(np.float32),
        ACT: np.clip(0.3 * rng.standard_normal((rows, 6)), -1, 1).astype(np.float32),
        SPEED: rng.uniform(0.0, 3.0, rows).astype(np.float32),
        HEIGHT: (0.6 + 0.05 * rng.standard_normal(rows)).astype(np.float32),
    }


def write_store(
    path: Path,
    steps: dict[str, np.ndarray],
    lengths: list[int],
    episodes: dict[str, np.ndarray] | None = None,
    **options: Any,
) -> Path:
    with create_store(path, **options) as store:
        store.append_episodes(steps, lengths, episodes)
    return path


def as_float64(steps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the reference reads: the stored float32 values, exactly, in float64."""
    return {k: np.asarray(v, dtype=np.float64) for k, v in steps.items()}


def write_spec(folder: Path, name: str, body: dict[str, Any]) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return str(path)


def run_labels(store: Path, tasks: str, name: str, **options: Any) -> LabelSet:
    options.setdefault("device", os.environ.get("HIPI_TEST_DEVICE", "cpu"))  # cuda on a GPU box
    relabel(store, RelabelConfig(tasks=tasks, name=name, **options))
    with open_store(store) as opened:
        return opened.read_labels(name)


def assert_matches_reference(labels: LabelSet, post: Any, *, logprob_rtol: float = 0.0) -> None:
    """Every stored array against the dense float64 reference posterior."""
    n, k_all = post.log_q.shape
    k = labels.k
    assert labels.num_candidates == k_all
    assert labels.topk_index.shape == (n, k) and labels.topk_logprob.shape == (n, k)
    np.testing.assert_allclose(labels.log_z, post.log_z, rtol=1e-6, atol=1e-6, err_msg="log_z")
    # Values of the top-k, whatever the order among ties.
    _, ref_logprob = post.topk(k)
    np.testing.assert_allclose(
        labels.topk_logprob, ref_logprob, atol=1e-4, rtol=logprob_rtol, err_msg="topk_logprob"
    )
    # The stored indices carry the stored probabilities, and each appears once.
    at_index = np.take_along_axis(post.log_q, labels.topk_index, axis=1)
    np.testing.assert_allclose(
        at_index, labels.topk_logprob, atol=1e-4, rtol=logprob_rtol, err_msg="topk_index"
    )
    for row in labels.topk_index:
        assert len(set(row.tolist())) == k and row.min() >= 0 and row.max() < k_all
    # The most probable candidate, wherever it is not tied.
    ordered = -np.sort(-post.log_q, axis=1)
    clear = (ordered[:, 0] - ordered[:, 1] > 1e-6) if k_all > 1 else np.ones(n, bool)
    np.testing.assert_array_equal(
        labels.topk_index[clear, 0], np.argmax(post.log_q, axis=1)[clear], err_msg="top-1"
    )
    np.testing.assert_allclose(labels.entropy, post.entropy, atol=1e-4, err_msg="entropy")
    np.testing.assert_allclose(labels.coverage, post.coverage, atol=1e-6, err_msg="coverage")


def clear_ranks(log_q: np.ndarray, k: int, gap: float = 1e-6) -> np.ndarray:
    """Boolean [N, k]: ranks of the top-k whose candidate is not tied (within ``gap``)
    with the one ranked before or after it, so any correct top-k puts it there."""
    ordered = -np.sort(-log_q, axis=1)
    padded = np.pad(ordered, ((0, 0), (1, 1)), constant_values=(np.inf, -np.inf))
    before = padded[:, :k] - padded[:, 1 : k + 1]
    after = padded[:, 1 : k + 1] - padded[:, 2 : k + 2]
    return (before > gap) & (after > gap)


def assert_same_labels(a: LabelSet, b: LabelSet) -> None:
    for key in ("candidates", "log_z", "topk_index", "topk_logprob", "entropy", "coverage"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


# ------------------------------------------------------------------ a custom reward

CUSTOM_MODULE = "hipi_offline_test_rewards"
CUSTOM_SOURCE = '''
import torch


def speed_band(fields, actions, tasks):
    """-(distance of the speed outside the band center +- width) - 0.01 ||a||^2."""
    v = fields["steps/infos/speed"].reshape(-1, 1)
    outside = torch.relu((v - tasks[:, 0][None, :]).abs() - tasks[:, 1][None, :])
    return -outside - 0.01 * actions.square().sum(dim=1, keepdim=True)
'''


def speed_band_reference(ep: dict[str, np.ndarray], psi: np.ndarray) -> np.ndarray:
    v = ep[SPEED]
    outside = np.maximum(np.abs(v - psi[0]) - psi[1], 0.0)
    return -outside - 0.01 * np.sum(ep[ACT] ** 2, axis=1)


@pytest.fixture
def custom_rewards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module ``hipi_offline_test_rewards`` on sys.path; returns the function name."""
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / f"{CUSTOM_MODULE}.py").write_text(CUSTOM_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, CUSTOM_MODULE, raising=False)
    yield f"{CUSTOM_MODULE}:speed_band"
    sys.modules.pop(CUSTOM_MODULE, None)


# ------------------------------------------------------------------ 1. every family

DISCRETE_TASKS = {
    "slow": {"field": SPEED, "below": 1.0},
    "fast": {"field": SPEED, "above": 2.0, "reward": 2.0},
    "level": {"field": OBS, "column": 2, "above": -0.5, "below": 0.5, "reward": 0.5},
}
DISCRETE_PREDICATES = [
    ref.Pred(SPEED, below=1.0),
    ref.Pred(SPEED, above=2.0, reward=2.0),
    ref.Pred(OBS, column=2, above=-0.5, below=0.5, reward=0.5),
]


def family_case(family: str, custom: str = "") -> tuple[dict[str, Any], Any, np.ndarray | None]:
    """(spec body, reference reward, reference log-prior) of one family."""
    if family == "linear":
        body = {
            "family": "linear",
            "features": [SPEED, HEIGHT, OBS],
            "prior": {"uniform": {"low": [-1.0] * 7, "high": [1.0] * 7}},
        }
        return body, ref.linear_reward([SPEED, HEIGHT, OBS]), None
    if family == "target":
        body = {
            "family": "target",
            "feature": SPEED,
            "ctrl_cost": 0.05,
            "prior": {"uniform": {"low": [0.0], "high": [3.0]}},
        }
        return body, ref.target_reward(SPEED, None, 0.05), None
    if family == "target-vector":
        body = {
            "family": "target",
            "feature": OBS,
            "dims": [0, 2],
            "ctrl_cost": 0.1,
            "prior": {"uniform": {"low": [-1.0, -1.0], "high": [1.0, 1.0]}},
        }
        return body, ref.target_reward(OBS, [0, 2], 0.1), None
    if family in ("goal", "goal-margin", "goal-sampled"):
        body = {"family": "goal", "field": OBS, "dims": [0, 1]}
        low, high, margin = [-1.0, -1.0], [1.0, 1.0], None
        if family == "goal-margin":
            margin = 0.5
        elif family == "goal-sampled":
            margin, low, high = "sampled", [*low, 0.1], [*high, 1.0]
        if margin is not None:
            body["margin"] = margin
        body["prior"] = {"uniform": {"low": low, "high": high}}
        return body, ref.goal_reward(OBS, [0, 1], margin), None
    if family == "discrete":
        body = {"family": "discrete", "tasks": DISCRETE_TASKS}
        return body, ref.discrete_reward(DISCRETE_PREDICATES), np.full(3, math.log(1 / 3))
    if family == "custom":
        body = {
            "family": "custom",
            "function": custom,
            "fields": [SPEED],
            "prior": {"uniform": {"low": [0.0, 0.1], "high": [3.0, 1.0]}},
        }
        return body, speed_band_reference, None
    raise AssertionError(family)


FAMILY_CASES = [
    "linear",
    "target",
    "target-vector",
    "goal",
    "goal-margin",
    "goal-sampled",
    "discrete",
    "custom",
]
"""The cases of :func:`family_case`: ``<family>`` or ``<family>-<variant>``."""


def test_the_cases_cover_every_registered_family() -> None:
    assert {case.split("-")[0] for case in FAMILY_CASES} == set(REGISTERED_FAMILIES.names())


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[int]]:
    """12 episodes of random lengths 1..14, three of them (first, middle, last) of one step."""
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 15, size=12)
    lengths[[0, 5, 11]] = 1
    lengths = [int(x) for x in lengths]
    steps = random_steps(lengths, seed=11)
    path = write_store(tmp_path_factory.mktemp("small") / "small.h5", steps, lengths)
    return path, as_float64(steps), lengths


@pytest.mark.parametrize("at", ["all", "final"])
@pytest.mark.parametrize("gamma", [1.0, 0.97])
@pytest.mark.parametrize("family", FAMILY_CASES)
def test_family_posterior_matches_reference(
    small_store, tmp_path, custom_rewards, family, gamma, at
):
    path, fields, lengths = small_store
    body, reward, log_prior = family_case(family, custom_rewards)
    body = {**body, "temperature": 0.7, "gamma": gamma, "at": at}
    if family != "discrete":
        body["candidates"] = 24
    spec = write_spec(tmp_path, family, body)
    tag = f"{family}-{gamma}-{at}"
    for method in ("hipi", "no-partition"):
        labels = run_labels(path, spec, f"{tag}-{method}", method=method, top_k=5, chunk_steps=9)
        assert labels.attrs["method"] == method and labels.attrs["at"] == at
        returns = ref.returns_matrix(fields, lengths, labels.candidates, reward, gamma, at)
        post = ref.posterior(returns, 0.7, log_prior, partition=method == "hipi")
        assert_matches_reference(labels, post)


# ------------------------------------------------------------------ 2. long episodes, chunking


def realistic_steps(lengths: list[int], seed: int) -> dict[str, np.ndarray]:
    """Speeds relaxing toward a commanded 0..3 m/s with noise; 6-dim actions."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {OBS: [], ACT: [], SPEED: [], HEIGHT: []}
    for length in lengths:
        target, v = rng.uniform(0.0, 3.0), rng.uniform(0.0, 0.5)
        speed = np.empty(length)
        for t in range(length):
            v = v + 0.1 * (target - v) + 0.05 * rng.standard_normal()
            speed[t] = v
        height = 0.6 + 0.05 * np.sin(np.linspace(0, 6 * np.pi, length)) * target
        parts[SPEED].append(speed)
        parts[HEIGHT].append(height + 0.01 * rng.standard_normal(length))
        parts[ACT].append(np.clip(0.3 * rng.standard_normal((length, 6)), -1, 1))
        parts[OBS].append(rng.normal(0.0, 1.0, (length, 5)))
    return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()}


LONG_CASES = {
    # The built-in cheetah spec: -|v - psi| - 0.05 ||a||^2, alpha = 1 (sorted fast path).
    "cheetah": ("cheetah-velocity", ref.target_reward(SPEED, None, 0.05), 1.0, 1.0),
    "linear": (
        {
            "family": "linear",
            "features": [SPEED, HEIGHT],
            "prior": {"uniform": {"low": [-1.0, 0.0], "high": [1.0, 1.0]}},
            "candidates": 48,
            "temperature": 5.0,
            "gamma": 0.99,
        },
        ref.linear_reward([SPEED, HEIGHT]),
        5.0,
        0.99,
    ),
    "target-vector": (
        {
            "family": "target",
            "feature": OBS,
            "dims": [0, 1, 2],
            "ctrl_cost": 0.05,
            "prior": {"uniform": {"low": [-1.0] * 3, "high": [1.0] * 3}},
            "candidates": 32,
            "temperature": 10.0,
        },
        ref.target_reward(OBS, [0, 1, 2], 0.05),
        10.0,
        1.0,
    ),
}


@pytest.mark.parametrize("case", list(LONG_CASES))
@pytest.mark.slow
def test_chunk_size_invariance_on_long_episodes(tmp_path, case):
    lengths = [1000, 1, 1000]
    steps = realistic_steps(lengths, seed=3)
    path = write_store(tmp_path / "long.h5", steps, lengths)
    body, reward, temperature, gamma = LONG_CASES[case]
    tasks = body if isinstance(body, str) else write_spec(tmp_path, case, body)
    options: dict[str, Any] = {"top_k": "all"}
    if case == "cheetah":
        options["candidates"] = 64
    fields = as_float64(steps)
    post = None
    first: LabelSet | None = None
    # Row-by-row streaming is slow, so it runs for the fast target path only.
    chunks = (1, 7, 999, 1000, 4096, 10**6) if case == "cheetah" else (7, 999, 1000, 4096, 10**6)
    for chunk in chunks:
        labels = run_labels(path, tasks, f"chunk-{chunk}", chunk_steps=chunk, **options)
        assert labels.k == labels.num_candidates
        if post is None:
            returns = ref.returns_matrix(fields, lengths, labels.candidates, reward, gamma)
            post = ref.posterior(returns, temperature)
        # Full log q (every column). It is stored as float32, whose spacing near the
        # far tail (log q ~ -2600 for the cheetah) exceeds 1e-4: there allow float32
        # rounding; wherever log q > -100 hold it to 1e-4 absolute.
        log_q = np.full_like(post.log_q, np.nan)
        np.put_along_axis(log_q, labels.topk_index, labels.topk_logprob.astype(np.float64), 1)
        np.testing.assert_allclose(log_q, post.log_q, atol=1e-4, rtol=1e-6, err_msg=str(chunk))
        head = post.log_q > -100.0
        assert head.sum() >= len(lengths)
        np.testing.assert_allclose(log_q[head], post.log_q[head], atol=1e-4, rtol=0)
        assert_matches_reference(labels, post, logprob_rtol=1e-6)
        if first is None:
            first = labels
        else:
            np.testing.assert_array_equal(labels.candidates, first.candidates)
            np.testing.assert_allclose(labels.log_z, first.log_z, rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(
                labels.topk_logprob, first.topk_logprob, rtol=1e-6, atol=1e-6
            )


# ------------------------------------------------------------------ 3. K-tiling and spill


@pytest.mark.parametrize("max_matrix_mb", [0.001, 0.0005, 1e-7])
# The continuous families whose returns tile over candidates (discrete tasks are few).
@pytest.mark.parametrize("family", ["linear", "target", "target-vector", "goal"])
def test_tiled_returns_match_untiled(small_store, tmp_path, monkeypatch, family, max_matrix_mb):
    path, fields, lengths = small_store
    body, reward, _ = family_case(family)
    body = {**body, "temperature": 0.5, "gamma": 0.97, "candidates": 24}
    spec = write_spec(tmp_path, family, body)
    tiles: list[tuple[int, int]] = []
    real, real_whole = run_module.returns_tiles, run_module.whole_returns

    def spy(*args: Any, **kwargs: Any):
        for j0, j1, block in real(*args, **kwargs):
            tiles.append((j0, j1))
            yield j0, j1, block

    def spy_whole(store: Any, spec: Any, candidates: np.ndarray, **kwargs: Any):
        tiles.append((0, len(candidates)))  # one tile, its rows computed where needed
        return real_whole(store, spec, candidates, **kwargs)

    monkeypatch.setattr(run_module, "returns_tiles", spy)
    monkeypatch.setattr(run_module, "whole_returns", spy_whole)
    tag = f"{family}-{max_matrix_mb}"
    whole = run_labels(path, spec, f"whole-{tag}", top_k=7, chunk_steps=64)
    assert tiles == [(0, 24)]
    tiles.clear()
    tiled = run_labels(
        path, spec, f"tiled-{tag}", top_k=7, chunk_steps=64, max_matrix_mb=max_matrix_mb
    )
    assert len(tiles) > 1 and tiles[0][0] == 0 and tiles[-1][1] == 24
    np.testing.assert_array_equal(tiled.candidates, whole.candidates)
    np.testing.assert_allclose(tiled.log_z, whole.log_z, rtol=0, atol=1e-10)
    np.testing.assert_allclose(tiled.topk_logprob, whole.topk_logprob, rtol=0, atol=1e-6)
    np.testing.assert_allclose(tiled.entropy, whole.entropy, rtol=0, atol=1e-6)
    np.testing.assert_allclose(tiled.coverage, whole.coverage, rtol=0, atol=1e-10)
    returns = ref.returns_matrix(fields, lengths, tiled.candidates, reward, 0.97, "all")
    post = ref.posterior(returns, 0.5)
    assert_matches_reference(tiled, post)
    # Tiles round R differently in the last bits: the order may differ only among ties.
    clear = clear_ranks(post.log_q, tiled.k)
    assert clear.mean() > 0.5  # continuous returns: ties are rare
    np.testing.assert_array_equal(tiled.topk_index[clear], whole.topk_index[clear])


# ------------------------------------------------------------------ 4. every backend


# One case per kind of reward computation (linear, per-step target, goal, discrete);
# the store read is what differs between backends, not the family.
@pytest.mark.parametrize("family", ["linear", "target", "goal-margin", "discrete"])
@pytest.mark.parametrize("suffix", SUFFIXES[1:])
def test_every_backend_gives_the_labels_of_the_first(tmp_path, family, suffix):
    lengths = [3, 1, 8, 5, 1, 12, 2]
    steps = random_steps(lengths, seed=5)
    first = write_store(tmp_path / f"data{SUFFIXES[0]}", steps, lengths, chunk_rows=8)
    other = write_store(tmp_path / f"data{suffix}", steps, lengths, chunk_rows=8)
    body, _, _ = family_case(family)
    body = {**body, "temperature": 0.8, "gamma": 0.97}
    if family != "discrete":
        body["candidates"] = 20
    spec = write_spec(tmp_path, family, body)
    a = run_labels(first, spec, "x", top_k=4, chunk_steps=5)
    b = run_labels(other, spec, "x", top_k=4, chunk_steps=5)
    assert_same_labels(a, b)
    for key in ("method", "family", "gamma", "at", "k", "num_candidates", "num_steps"):
        assert a.attrs[key] == b.attrs[key], key


# ------------------------------------------------------------------ 5. fast accumulators


def tie_store(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], list[int], np.ndarray]:
    """A store whose speeds and observation column 2 hit candidate values exactly."""
    lengths = [4, 1, 9, 6, 1, 3]
    steps = random_steps(lengths, seed=21)
    exact = np.array([0.0, 0.5, 1.25, 3.0, 0.5], dtype=np.float32)
    steps[SPEED][[0, 3, 4, 7, 13]] = exact  # rows 3 and 4 are episode ends
    steps[SPEED][[15, 20]] = steps[SPEED][[2, 9]]  # repeated values
    steps[OBS][[0, 3, 4, 13, 23], 2] = [-0.5, 0.25, 0.25, 0.0, 0.75]
    path = write_store(tmp_path / "ties.h5", steps, lengths)
    speed = steps[SPEED].astype(np.float64)
    return path, as_float64(steps), lengths, speed


def _target_spec(feature: str, dims: list[int] | None, ctrl: float, gamma: float, at: str):
    body: dict[str, Any] = {"family": "target", "feature": feature, "ctrl_cost": ctrl}
    if dims is not None:
        body["dims"] = dims
    body.update(prior={"uniform": {"low": [-10.0], "high": [10.0]}}, gamma=gamma, at=at)
    return parse_task_spec(yaml.safe_dump(body))


def _compare_accumulators(path, spec, tasks_np, fast_type, fields, lengths, reward):
    tasks = torch.from_numpy(tasks_np)
    with open_store(path) as store:
        n = store.num_episodes
        fast = make_accumulator(spec.family, tasks, n)
        assert isinstance(fast, fast_type)
        accumulate_returns(store, spec, fast, device=CPU, chunk_steps=5)
        slow = accumulate_returns(
            store, spec, GenericAccumulator(spec.family, tasks, n), device=CPU, chunk_steps=5
        )
    got, want = fast.result(tasks).numpy(), slow.result(tasks).numpy()
    assert got.shape == (n, len(tasks_np))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    expected = ref.returns_matrix(fields, lengths, tasks_np, reward, spec.gamma, spec.at)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("at", ["all", "final"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_sorted_target_accumulator_equals_generic(tmp_path, gamma, at):
    path, fields, lengths, speed = tie_store(tmp_path)
    # Unsorted, with duplicates, exact hits of data values, and values outside the data.
    values = [1.25, -1.0, 0.5, 3.0, 0.5, 7.5, 0.0, speed[2], speed[9], 1.7, speed[9], -0.25]
    tasks = np.asarray(values, dtype=np.float64)[:, None]
    spec = _target_spec(SPEED, None, 0.05, gamma, at)
    reward = ref.target_reward(SPEED, None, 0.05)
    _compare_accumulators(path, spec, tasks, SortedTargetAccumulator, fields, lengths, reward)
    # A scalar picked from a vector field with `dims`, no control cost.
    obs_tasks = np.array([[0.25], [-0.5], [2.0], [0.0], [-3.0], [0.75], [0.25]])
    spec = _target_spec(OBS, [2], 0.0, gamma, at)
    reward = ref.target_reward(OBS, [2], 0.0)
    _compare_accumulators(path, spec, obs_tasks, SortedTargetAccumulator, fields, lengths, reward)


@pytest.mark.parametrize("at", ["all", "final"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_linear_accumulator_equals_generic(tmp_path, gamma, at):
    path, fields, lengths, _ = tie_store(tmp_path)
    body = {
        "family": "linear",
        "features": [SPEED, OBS],
        "prior": {"uniform": {"low": [-1.0] * 6, "high": [1.0] * 6}},
        "gamma": gamma,
        "at": at,
    }
    spec = parse_task_spec(yaml.safe_dump(body))
    rng = np.random.default_rng(4)
    tasks = rng.normal(0.0, 1.0, (9, 6))
    tasks[3] = 0.0
    tasks[5] = tasks[1]
    tasks[7] *= 100.0  # outside the prior's box: the reward is still defined
    reward = ref.linear_reward([SPEED, OBS])
    _compare_accumulators(path, spec, tasks, LinearAccumulator, fields, lengths, reward)


# ------------------------------------------------------------------ 6. paper Fig. 2


def _fig2_check(labels_hipi: LabelSet, labels_nop: LabelSet, returns: np.ndarray, prior=None):
    hipi = ref.posterior(returns, 1.0, prior, partition=True)
    nop = ref.posterior(returns, 1.0, prior, partition=False)
    # The construction, per the math: the easy task (0) wins every episode without
    # the partition function; with it each episode gets its own task.
    np.testing.assert_array_equal(np.argmax(nop.log_q, axis=1), [0, 0])
    np.testing.assert_array_equal(np.argmax(hipi.log_q, axis=1), [0, 1])
    assert_matches_reference(labels_hipi, hipi)
    assert_matches_reference(labels_nop, nop)
    np.testing.assert_array_equal(labels_nop.topk_index[:, 0], [0, 0])
    np.testing.assert_array_equal(labels_hipi.topk_index[:, 0], [0, 1])


def test_fig2_linear_partition_function_matters(tmp_path):
    # Episode 0 collects features (10, 0), episode 1 (8, 2): task (1, 0) pays every
    # episode more than task (0, 1) pays any.
    lengths = [2, 2]
    steps = random_steps(lengths, seed=0)
    steps[SPEED][:] = [5.0, 5.0, 4.0, 4.0]
    steps[HEIGHT][:] = [0.0, 0.0, 1.0, 1.0]
    path = write_store(tmp_path / "fig2.h5", steps, lengths)
    body = {
        "family": "linear",
        "features": [SPEED, HEIGHT],
        "prior": {"uniform": {"low": [0.0, 0.0], "high": [1.0, 1.0]}},
        "candidates": [[1.0, 0.0], [0.0, 1.0]],
    }
    spec = write_spec(tmp_path, "fig2", body)
    hipi = run_labels(path, spec, "hipi", method="hipi")
    nop = run_labels(path, spec, "nop", method="no-partition")
    returns = np.array([[10.0, 0.0], [8.0, 2.0]])
    np.testing.assert_allclose(
        ref.returns_matrix(
            as_float64(steps), lengths, hipi.candidates, ref.linear_reward([SPEED, HEIGHT])
        ),
        returns,
    )
    _fig2_check(hipi, nop, returns, prior=np.full(2, 0.0))


def test_fig2_discrete_partition_function_matters(tmp_path):
    # easy: every step succeeds; hard: speed above 2, reached twice by episode 1 only.
    lengths = [10, 10]
    steps = random_steps(lengths, seed=0)
    steps[SPEED][:] = 1.0
    steps[SPEED][[13, 17]] = 3.0
    path = write_store(tmp_path / "fig2.zarr", steps, lengths)
    body = {
        "family": "discrete",
        "tasks": {"easy": {"field": SPEED, "above": 0.0}, "hard": {"field": SPEED, "above": 2.0}},
    }
    spec = write_spec(tmp_path, "fig2", body)
    hipi = run_labels(path, spec, "hipi", method="hipi")
    nop = run_labels(path, spec, "nop", method="no-partition")
    np.testing.assert_array_equal(hipi.candidates, np.eye(2))
    returns = np.array([[10.0, 0.0], [10.0, 2.0]])
    _fig2_check(hipi, nop, returns, prior=np.log(np.full(2, 0.5)))


# ------------------------------------------------------------------ 7. paper Sec. 4.1


@pytest.mark.parametrize("method", ["hipi", "no-partition"])
def test_goal_final_state_posterior_concentrates_on_own_goal(tmp_path, method):
    lengths = [5, 1, 17, 9, 3, 12]
    steps = random_steps(lengths, seed=8)
    path = write_store(tmp_path / "goal.h5", steps, lengths)
    finals = steps[OBS][np.cumsum(lengths) - 1][:, :2]
    body = {
        "family": "goal",
        "field": OBS,
        "dims": [0, 1],
        "margin": 1e-3,
        "at": "final",
        "temperature": 0.01,
        "prior": {"uniform": {"low": [-1.0, -1.0], "high": [1.0, 1.0]}},
        "candidates": [[float(x) for x in row] for row in finals],
    }
    spec = write_spec(tmp_path, "final-goal", body)
    labels = run_labels(path, spec, method, method=method)
    np.testing.assert_array_equal(labels.candidates, finals)
    np.testing.assert_array_equal(labels.topk_index[:, 0], np.arange(len(lengths)))
    assert np.all(np.exp(labels.topk_logprob[:, 0].astype(np.float64)) >= 0.999)
    returns = ref.returns_matrix(
        as_float64(steps),
        lengths,
        labels.candidates,
        ref.goal_reward(OBS, [0, 1], 1e-3),
        at="final",
    )
    np.testing.assert_array_equal(returns, np.eye(len(lengths)) - 1.0)
    post = ref.posterior(returns, 0.01, np.zeros(len(lengths)), partition=method == "hipi")
    assert_matches_reference(labels, post)


# ------------------------------------------------------------------ 8. baselines


@pytest.mark.parametrize("top_k", [5, "all"])
def test_random_method_is_uniform(small_store, tmp_path, top_k):
    path, _, _ = small_store
    body, _, _ = family_case("target")
    spec = write_spec(tmp_path, "target", {**body, "candidates": 24})
    labels = run_labels(path, spec, f"random-{top_k}", method="random", top_k=top_k)
    k = 24 if top_k == "all" else top_k
    n = labels.num_episodes
    assert labels.topk_index.shape == (n, k)
    np.testing.assert_allclose(labels.topk_logprob, -math.log(24), atol=1e-6)
    np.testing.assert_allclose(labels.coverage, 1 / 24, atol=1e-12)
    np.testing.assert_allclose(labels.entropy, math.log(24), atol=1e-5)
    for row in labels.topk_index:
        assert len(set(row.tolist())) == k and row.min() >= 0 and row.max() < 24
    if top_k == "all":
        np.testing.assert_array_equal(
            np.sort(labels.topk_index, axis=1), np.tile(np.arange(24), (n, 1))
        )


def test_original_method_continuous_tasks(tmp_path):
    lengths = [3, 1, 4, 2, 5, 1, 2]
    steps = random_steps(lengths, seed=2)
    commanded = np.array([[1.5], [0.5], [2.5], [1.5], [0.5], [1.5], [2.5]], dtype=np.float32)
    path = write_store(tmp_path / "orig.h5", steps, lengths, {"task": commanded})
    body, _, _ = family_case("target")
    spec = write_spec(tmp_path, "target", {**body, "candidates": 24})
    labels = run_labels(path, spec, "original", method="original", top_k=2)
    np.testing.assert_array_equal(labels.candidates, [[0.5], [1.5], [2.5]])
    np.testing.assert_array_equal(labels.topk_index[:, 0], [1, 0, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(labels.candidates[labels.topk_index[:, 0]], commanded)
    np.testing.assert_array_equal(labels.topk_logprob[:, 0], 0.0)
    assert np.all(labels.topk_logprob[:, 1] == -np.inf)
    np.testing.assert_array_equal(labels.entropy, 0.0)
    np.testing.assert_allclose(labels.coverage, [2 / 7, 3 / 7, 2 / 7], atol=1e-12)


def test_original_method_discrete_tasks(tmp_path):
    lengths = [3, 1, 4, 2, 5]
    steps = random_steps(lengths, seed=2)
    commanded = np.array([2, 0, 0, 1, 2], dtype=np.int64)
    path = write_store(tmp_path / "orig.zarr", steps, lengths, {"task": commanded})
    spec = write_spec(tmp_path, "discrete", family_case("discrete")[0])
    labels = run_labels(path, spec, "original", method="original", top_k="all")
    np.testing.assert_array_equal(labels.candidates, np.eye(3))
    np.testing.assert_array_equal(labels.topk_index[:, 0], commanded)
    np.testing.assert_array_equal(labels.topk_logprob[:, 0], 0.0)
    np.testing.assert_array_equal(labels.entropy, 0.0)
    np.testing.assert_allclose(labels.coverage, [2 / 5, 1 / 5, 2 / 5], atol=1e-12)


# ------------------------------------------------------------------ 9. the prior term


@pytest.mark.parametrize("method", ["hipi", "no-partition"])
def test_explicit_candidates_with_normal_prior(small_store, tmp_path, method):
    path, fields, lengths = small_store
    candidates = [[0.25 * j] for j in range(13)]
    body = {
        "family": "target",
        "feature": SPEED,
        "ctrl_cost": 0.05,
        "prior": {"normal": {"mean": [1.0], "std": [0.3]}},
        "candidates": candidates,
        "temperature": 2.0,
        "gamma": 0.97,
    }
    spec = write_spec(tmp_path, "normal", body)
    labels = run_labels(path, spec, f"normal-{method}", method=method, top_k="all")
    np.testing.assert_array_equal(labels.candidates, np.asarray(candidates, np.float32))
    returns = ref.returns_matrix(
        fields, lengths, labels.candidates, ref.target_reward(SPEED, None, 0.05), 0.97
    )
    log_prior = ref.normal_log_prob(labels.candidates, [1.0], [0.3])
    partition = method == "hipi"
    assert_matches_reference(labels, ref.posterior(returns, 2.0, log_prior, partition))
    # The prior term is not negligible here: leaving it out changes the labels.
    without = ref.posterior(returns, 2.0, None, partition)
    _, lp_without = without.topk(labels.k)
    assert np.max(np.abs(lp_without - labels.topk_logprob)) > 0.5


def test_categorical_priors_enter_the_posterior(small_store, tmp_path):
    path, fields, lengths = small_store
    # Discrete tasks with non-uniform probabilities.
    body = {
        "family": "discrete",
        "tasks": DISCRETE_TASKS,
        "prior": {"categorical": {"probs": {"slow": 0.7, "fast": 0.2, "level": 0.1}}},
        "temperature": 0.5,
    }
    labels = run_labels(path, write_spec(tmp_path, "disc", body), "disc-prior", top_k="all")
    returns = ref.returns_matrix(
        fields, lengths, labels.candidates, ref.discrete_reward(DISCRETE_PREDICATES)
    )
    log_prior = np.log([0.7, 0.2, 0.1])
    assert_matches_reference(labels, ref.posterior(returns, 0.5, log_prior))
    # A categorical prior over target speeds: candidates are its tasks, with their weights.
    body = {
        "family": "target",
        "feature": SPEED,
        "prior": {"categorical": {"tasks": [[0.5], [1.5], [2.5]], "probs": [0.6, 0.3, 0.1]}},
        "temperature": 3.0,
    }
    labels = run_labels(path, write_spec(tmp_path, "cat", body), "cat-prior", top_k="all")
    np.testing.assert_array_equal(labels.candidates, [[0.5], [1.5], [2.5]])
    returns = ref.returns_matrix(fields, lengths, labels.candidates, ref.target_reward(SPEED))
    assert_matches_reference(labels, ref.posterior(returns, 3.0, np.log([0.6, 0.3, 0.1])))


# ------------------------------------------------------------------ 10. determinism


def test_same_seed_same_labels_different_seed_different_candidates(small_store, tmp_path):
    path, _, _ = small_store
    body, _, _ = family_case("goal")
    spec = write_spec(tmp_path, "goal", {**body, "candidates": 24})
    a = run_labels(path, spec, "seed-a", seed=3, top_k=6)
    b = run_labels(path, spec, "seed-b", seed=3, top_k=6)
    c = run_labels(path, spec, "seed-c", seed=4, top_k=6)
    assert_same_labels(a, b)
    assert a.candidates.shape == c.candidates.shape
    assert not np.array_equal(a.candidates, c.candidates)
    r1 = run_labels(path, spec, "random-a", method="random", seed=3, top_k=6)
    r2 = run_labels(path, spec, "random-b", method="random", seed=3, top_k=6)
    r3 = run_labels(path, spec, "random-c", method="random", seed=4, top_k=6)
    assert_same_labels(r1, r2)
    assert not np.array_equal(r1.candidates, r3.candidates)
    assert not np.array_equal(r1.topk_index, r3.topk_index)
