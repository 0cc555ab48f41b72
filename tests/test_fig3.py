"""Fig. 3 (hipi_offline/experiments/gridworld.py, benchmarks/fig3.py): exact soft value
iteration, the inverse-RL posterior against float64 references, the evaluation's
counts on the paper's layout, and the paper's claim on the tiny preset.

Float64 results are compared with rtol 1e-12 (different summation orders, and soft
value iteration stops at a change of 1e-13, within 2e-12 of its fixed point)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from hipi_offline.configs import FieldError
from hipi_offline.experiments.gridworld import (
    Dataset,
    Fig3Config,
    Gridworld,
    Layout,
    backup,
    draw_labels,
    greedy_next,
    line,
    log_posterior,
    paper_paths,
    random_paths,
    reaches,
    run_fig3,
    run_strategy,
    sample_categorical,
    score,
    soft_value_iteration,
    v_fail,
)

RTOL = 1e-12
ALPHA, GAMMA = 0.1, 0.95
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fig3.py"


def paper_data() -> Dataset:
    grid, paths = paper_paths()
    return Dataset(grid, paths, [paths[0][-1], paths[1][-1]])


def mask_of(data: Dataset, goals_of_row: list[list[int]]) -> np.ndarray:
    """[U, G] labeled mask from goal states per data row."""
    labeled = np.zeros((len(data.u_s), data.n_goals), dtype=bool)
    for i, goals in enumerate(goals_of_row):
        for g in goals:
            labeled[data.row_u[i], data.goal_index[g]] = True
    return labeled


def future_mask(data: Dataset) -> np.ndarray:
    path = data.paths
    return mask_of(data, [list(path[k][t + 1 :]) for k, t in zip(data.traj, data.t, strict=True)])


# ------------------------------------------------------------- soft value iteration


def reference_values(data: Dataset, labeled: np.ndarray, alpha: float, gamma: float) -> dict:
    """V(s, g) by recursion on an acyclic data graph, plain Python floats."""
    memo: dict[tuple[int, int], float] = {}

    def value(s: int, g: int) -> float:
        if s == int(data.goals[g]):
            return 0.0
        if (s, g) not in memo:
            qs = []
            for u in range(len(data.u_s)):
                if int(data.u_s[u]) == s and labeled[u, g]:
                    nxt = int(data.u_next[u])
                    qs.append(-1.0 + (0.0 if nxt == int(data.goals[g]) else gamma * value(nxt, g)))
            if qs:
                top = max(qs)
                memo[s, g] = top + alpha * math.log(
                    math.fsum(math.exp((q - top) / alpha) for q in qs)
                )
            else:
                memo[s, g] = -1.0 / (1.0 - gamma)
        return memo[s, g]

    return {(s, g): value(s, g) for s in range(data.grid.n_states) for g in range(data.n_goals)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_value_iteration_against_recursion_on_a_dag(seed: int) -> None:
    # three walks, all rightward or downward: the data graph is acyclic
    grid = Gridworld(4, 5)
    paths = [line(grid, (1, 0), (1, 4)), line(grid, (0, 2), (3, 2)), line(grid, (0, 0), (3, 0))]
    data = Dataset(grid, paths, [paths[0][-1]] * 3)
    rng = np.random.default_rng(seed)
    labeled = rng.random((len(data.u_s), data.n_goals)) < 0.6
    alpha = [0.1, 0.5, 1.0][seed]
    values = soft_value_iteration(data, labeled, alpha, GAMMA)
    expected = reference_values(data, labeled, alpha, GAMMA)
    for (s, g), v in expected.items():
        assert math.isclose(values[s, g], v, rel_tol=RTOL, abs_tol=1e-12), (s, g)
    # from any start the same fixed point (warm start as the rounds use it)
    warm = soft_value_iteration(data, labeled, alpha, GAMMA, start=np.zeros_like(values))
    np.testing.assert_allclose(warm, values, rtol=RTOL, atol=1e-12)


def test_soft_value_iteration_with_a_cycle_against_a_scalar_fixed_point() -> None:
    # states 0, 1, 2 in a row; data 0 -> 1 -> 0 -> 1 -> 2; goal 2:
    # V1 = α log(e^{-1/α} + e^{(-1 + γ V0)/α}), V0 = -1 + γ V1
    grid = Gridworld(1, 3)
    data = Dataset(grid, [(0, 1, 0, 1, 2)], [2])
    labeled = np.ones((len(data.u_s), data.n_goals), dtype=bool)
    alpha, gamma = 0.5, 0.9
    values = soft_value_iteration(data, labeled, alpha, gamma)

    def excess(x: float) -> float:
        return (
            alpha
            * math.log(math.exp(-1 / alpha) + math.exp((-1 + gamma * (-1 + gamma * x)) / alpha))
            - x
        )

    lo, hi = -100.0, 100.0  # excess is decreasing (slope at most γ² - 1)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    v1 = 0.5 * (lo + hi)
    g = data.goal_index[2]
    assert math.isclose(values[1, g], v1, rel_tol=RTOL)
    assert math.isclose(values[0, g], -1 + gamma * v1, rel_tol=RTOL)
    assert values[2, g] == 0.0
    # the loop's entropy is worth less than arriving: greedy goes right from 1
    assert greedy_next(data, labeled, values, gamma)[1, g] == 2


def test_greedy_policy_and_rollout_against_a_plain_python_reference() -> None:
    data = Layout("random").dataset(np.random.default_rng(7))
    rng = np.random.default_rng(8)
    labeled = rng.random((len(data.u_s), data.n_goals)) < 0.5
    values = soft_value_iteration(data, labeled, ALPHA, GAMMA)
    q = backup(data, values, GAMMA)
    nxt = greedy_next(data, labeled, values, GAMMA)
    success = reaches(data, nxt)
    n = data.grid.n_states
    for g, goal in enumerate(data.goals):
        policy = {}
        for u in range(len(data.u_s)):  # sorted by (state, action): first max wins ties
            s = int(data.u_s[u])
            if labeled[u, g] and (s not in policy or q[u, g] > policy[s][0]):
                policy[s] = (q[u, g], int(data.u_next[u]))
        for s in range(n):
            assert nxt[s, g] == (policy[s][1] if s in policy else -1)
            pos, arrived = s, s == goal
            for _ in range(n):
                if arrived or pos not in policy:
                    break
                pos = policy[pos][1]
                arrived = pos == goal
            assert success[s, g] == arrived


def test_evaluation_counts_on_the_papers_layout() -> None:
    data = paper_data()
    assert data.n_goals == 10 and data.n_rows == 9
    # connected goals per start: A 8, a1 7, X 6, a3 2, a4 1, C 7, below X 2 and 1
    assert int(data.pairs.sum()) == 34
    assert int(data.stitch.sum()) == 9  # A, a1 -> the 3 states below X; C -> the 3 right of X

    def success_of(labeled: np.ndarray):
        values = soft_value_iteration(data, labeled, ALPHA, GAMMA)
        return score(data, reaches(data, greedy_next(data, labeled, values, GAMMA)))

    every = success_of(np.ones((len(data.u_s), data.n_goals), dtype=bool))
    assert every.success == 1.0 and every.stitched == 1.0
    future = success_of(future_mask(data))
    assert future.success == 25 / 34 and future.stitched == 0.0
    final = success_of(mask_of(data, [[data.paths[k][-1]] for k in data.traj]))
    assert final.success == 9 / 34 and final.stitched == 0.0
    nothing = success_of(np.zeros((len(data.u_s), data.n_goals), dtype=bool))
    assert nothing.success == 0.0
    # goal D (end of C -> D): 6 starts lead there; HER future reaches it from the 4 on C -> D
    d = data.goal_index[data.paths[1][-1]]
    assert future.per_goal[d] == 4 / 6 and every.per_goal[d] == 1.0
    a = data.goal_index[data.paths[0][0]]
    assert math.isnan(every.per_goal[a])  # nothing leads to A


# --------------------------------------------------------------------- the posterior


def reference_log_posterior(returns: np.ndarray, temperature: float, log_prior) -> np.ndarray:
    """Eq. 7 in plain Python: log Z(ψ) = log (1/N) Σ_i exp(R_iψ/T) over all N rows,
    then log p(ψ) + R/T - log Z(ψ) normalized over the tasks of each row."""
    n, k = returns.shape
    log_z = []
    for j in range(k):
        col = [float(returns[i, j]) / temperature for i in range(n)]
        top = max(col)
        log_z.append(top + math.log(math.fsum(math.exp(c - top) for c in col) / n))
    out = np.empty((n, k))
    for i in range(n):
        logits = [
            float(log_prior[j]) + float(returns[i, j]) / temperature - log_z[j] for j in range(k)
        ]
        top = max(logits)
        norm = top + math.log(math.fsum(math.exp(x - top) for x in logits))
        out[i] = [x - norm for x in logits]
    return out


@pytest.mark.parametrize("temperature", [0.05, 1.0, 4.0])
def test_posterior_against_a_float64_reference_of_eq7(temperature: float) -> None:
    rng = np.random.default_rng(3)
    returns = rng.normal(scale=5.0, size=(37, 11)) - 3.0
    prior = rng.random(11) + 0.1
    log_prior = np.log(prior / prior.sum())
    got = log_posterior(returns, temperature, log_prior)
    expected = reference_log_posterior(returns, temperature, log_prior)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(np.exp(got).sum(axis=1), 1.0, rtol=RTOL)
    uniform = log_posterior(returns, temperature)
    np.testing.assert_allclose(
        uniform, reference_log_posterior(returns, temperature, np.zeros(11)), rtol=RTOL, atol=1e-12
    )
    # the partition function removes each task's reward scale offset (Sec. 4.2)
    shifted = log_posterior(returns + rng.normal(scale=50.0, size=11), temperature, log_prior)
    np.testing.assert_allclose(shifted, got, rtol=1e-9, atol=1e-9)


def test_posterior_on_the_papers_trajectories() -> None:
    """Eq. 7 on the two data trajectories of the paper's layout (reward -1 per step
    until the goal, -10 more if it never arrives): each trajectory is assigned the goals
    that only it reaches; the shared crossing state and the goals no trajectory reaches
    are split between them."""
    data = paper_data()
    returns = np.empty((len(data.paths), data.n_goals))
    for k, path in enumerate(data.paths):
        for g, goal in enumerate(data.goals):
            arrives = goal in path[1:]
            returns[k, g] = -float(path.index(goal)) if arrives else -float(len(path) - 1) - 10.0
    got = log_posterior(returns, 1.0)
    reference = reference_log_posterior(returns, 1.0, np.zeros(data.n_goals))
    np.testing.assert_allclose(got, reference, rtol=RTOL, atol=1e-12)
    first, second = (set(p[1:]) for p in data.paths)
    only_first = [data.goal_index[s] for s in first - second]
    only_second = [data.goal_index[s] for s in second - first]
    assert got[0, only_first].min() > got[0, only_second].max() + 9.0
    assert got[1, only_second].min() > got[1, only_first].max() + 9.0


def test_hipi_draws_follow_the_posterior_chi_square() -> None:
    log_probs = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    draws = sample_categorical(np.random.default_rng(0), log_probs, 200_000)[0]
    counts = np.bincount(draws, minlength=5)
    expected = 200_000 * np.exp(log_probs[0])
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # 4 degrees of freedom, p = 1e-5


def test_hipi_labels_come_from_the_posterior_of_the_current_values() -> None:
    data = paper_data()
    values = soft_value_iteration(data, future_mask(data), ALPHA, GAMMA)
    q = backup(data, values, GAMMA)[data.row_u]
    probs = np.exp(log_posterior(q, 4.0))
    draws = draw_labels("hipi", data, np.random.default_rng(1), 20_000, values, GAMMA, 4.0)
    for i in range(data.n_rows):
        freq = np.bincount(draws[i], minlength=data.n_goals) / 20_000
        assert np.abs(freq - probs[i]).max() < 0.02
    # HER never labels outside the trajectory's future; none uses the commanded goal
    future = draw_labels("her-future", data, np.random.default_rng(2), 50, values, GAMMA, 4.0)
    for i in range(data.n_rows):
        path = data.paths[data.traj[i]]
        allowed = {data.goal_index[s] for s in path[data.t[i] + 1 :]}
        assert set(future[i].tolist()) == allowed
    none = draw_labels("none", data, np.random.default_rng(3), 3, values, GAMMA, 4.0)
    assert (none == data.commanded_index[data.traj][:, None]).all()


# ------------------------------------------------------------------- data and config


def test_random_layouts_cross() -> None:
    grid = Gridworld(10, 10)
    paths = random_paths(np.random.default_rng(0), grid, 4, 3, 5)
    rows = [p for p in paths if len({grid.cell(s)[0] for s in p}) == 1]
    cols = [p for p in paths if len({grid.cell(s)[1] for s in p}) == 1]
    assert len(rows) == 4 and len(cols) == 3
    assert len({grid.cell(p[0])[0] for p in rows}) == 4  # distinct rows
    assert all(len(p) >= 5 for p in paths)
    data = Dataset(grid, paths, [paths[0][0]] * len(paths))
    assert data.stitch.any()


def test_bad_data_and_settings() -> None:
    grid = Gridworld(3, 3)
    with pytest.raises(ValueError, match="not a move"):
        Dataset(grid, [(0, 2)], [2])
    with pytest.raises(FieldError, match=r"^layouts\[0\]\.rows: "):
        Fig3Config(layouts=(Layout("random", rows=1),))
    with pytest.raises(FieldError, match="^gamma: must be below 1"):
        Fig3Config(gamma=1.0)
    with pytest.raises(FieldError, match="^seeds: seeds must be distinct"):
        Fig3Config(seeds=(1, 1))
    with pytest.raises(FieldError, match="^strategies: "):
        Fig3Config(strategies=("hipi", "her"))
    assert v_fail(0.9) == pytest.approx(-10.0, rel=RTOL)


# ---------------------------------------------------------------- the paper's claim


def test_tiny_preset_hipi_stitches_what_her_cannot() -> None:
    results = run_fig3(Fig3Config.tiny())["fig3"]
    entry = results["layouts"]["paper"]
    data = paper_data()
    d = data.goal_index[data.paths[1][-1]]
    for run in entry["seeds"]:
        assert run["pairs"] == 34 and run["stitch_pairs"] == 9
        hipi = run["hipi"]
        assert hipi["success"] >= 0.95 and hipi["stitched"] >= 0.85
        for her in ("her-final", "her-future"):
            assert run[her]["stitched"] == 0.0  # HER never relabels across trajectories
            assert run[her]["success"] <= 25 / 34
        assert hipi["success"] - run["her-future"]["success"] >= 0.2
        assert hipi["per_goal"][d] - run["her-future"]["per_goal"][d] >= 0.3
        assert run["none"]["success"] <= 0.2
    summary = entry["summary"]
    assert summary["hipi"]["success"]["mean"] >= summary["her-future"]["success"]["mean"] + 0.2


# -------------------------------------------------------------------------- script


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fig3_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_script_tiny_writes_json_and_png(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert script().main(["--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    assert (out / "fig3-tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "fig3-tiny.json").read_text())
    assert saved["fig3"]["settings"]["rounds"] == 40
    assert "| paper (all connected) |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "huge"], "error: --preset: expected one of tiny, reduced, full, got 'huge'"),
        (["--rounds", "0"], "error: --rounds: must be an integer from 1 to 10000, got 0"),
        (["--rounds", "x"], "error: --rounds: expected an integer, got 'x'"),
        (["--seeds", "1,1"], "error: --seeds: seeds must be distinct, got [1, 1]"),
        (["--gamma", "1"], "error: --gamma: must be below 1, got 1.0"),
        (
            ["--temperature", "nan"],
            "error: --temperature: must be a positive finite number, got nan",
        ),
        (["--bogus"], "error: unrecognized arguments: --bogus"),
    ],
)
def test_script_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    preset = [] if "--preset" in args else ["--preset", "tiny"]
    assert script().main([*args, *preset, "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines() == [message]
    assert not out.exists()  # nothing written


def test_script_refuses_a_linked_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "elsewhere.png").write_bytes(b"keep")
    (tmp_path / "fig3-tiny.png").symlink_to(tmp_path / "elsewhere.png")
    assert script().main(["--preset", "tiny", "--out", str(tmp_path)]) == 2
    (line_,) = capsys.readouterr().err.splitlines()
    assert line_.startswith("error: --out: ") and "symbolic link" in line_
    assert (tmp_path / "elsewhere.png").read_bytes() == b"keep"
    assert not (tmp_path / "fig3-tiny.json").exists()


@pytest.mark.parametrize("strategy", ["hipi", "random", "her-future"])
def test_rounds_update_only_changed_goals_as_a_full_solve_would(strategy: str) -> None:
    """The rounds re-solve only the goals whose labels changed, from the last values;
    the final scores equal a from-scratch solve of the final labels."""
    data = Layout("random").dataset(np.random.default_rng(5))
    scores, labeled = run_strategy(
        data, strategy, np.random.default_rng(6), 12, 2, ALPHA, GAMMA, 4.0
    )
    values = soft_value_iteration(data, labeled, ALPHA, GAMMA)
    full = score(data, reaches(data, greedy_next(data, labeled, values, GAMMA)))
    assert full.success == scores[-1].success
    assert full.per_goal == pytest.approx(scores[-1].per_goal, nan_ok=True, rel=0, abs=0)
