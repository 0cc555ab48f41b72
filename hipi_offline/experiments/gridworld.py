"""The paper's Fig. 3: relabeling with inverse RL stitches crossing trajectories.

A deterministic gridworld (4-neighbour moves), a dataset of straight trajectories that
cross, and goals as tasks: every state the data visits is a goal, under the prior
p(ψ) uniform. The reward of goal ψ is -1 per step and the episode ends on arrival.

The learner is exact tabular soft Q-learning in float64: for every goal, soft value
iteration on the transitions labeled with that goal, run to its fixed point
(:func:`soft_value_iteration`). The transitions are the data's, so the model of each
labeled (s, a) is exact; a state with no transition labeled ψ keeps the value of never
arriving, -1/(1-γ). Q(s, a, ψ) = -1 + γ V(s', ψ) for every data transition and every
goal (:func:`backup`): the tabular counterpart of a task-conditioned critic, which
Alg. 1 evaluates at every (transition, task) pair.

Relabeling strategies, each drawing ``labels_per_round`` goals for every data
transition in every round (a relabeled minibatch share); the labels accumulate, as a
Q-table keeps what it was once trained on:

* ``hipi``: the inverse-RL posterior (Eq. 8, Alg. 1) with the exact partition
  function over all N data transitions instead of a minibatch estimate:
  q(ψ | s_i, a_i) ∝ p(ψ) exp(Q(s_i, a_i, ψ)/T - log Z(ψ)),
  log Z(ψ) = log (1/N) Σ_j exp(Q(s_j, a_j, ψ)/T), Q from the previous round.
* ``her-final``: the trajectory's last state; ``her-future``: a state the trajectory
  reaches after the transition (uniform over the later steps).
* ``random``: a goal from the prior; ``none``: the goal the trajectory was commanded
  (drawn from the prior when the data was made; the straight-line walker ignored it).

The score is the success of the greedy policy over all (start, goal) pairs that the
data connects (a path of data transitions leads from the start to the goal; no
offline learner can do better), and separately over the pairs that need stitching
(no single trajectory visits the start and, later, the goal). With an unlimited label
budget, every strategy that gives every goal positive probability (hipi, random)
reaches the all-goal soft Q-function; the experiment compares them at the same finite
budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hipi_offline.configs import (
    FieldError,
    check_choice,
    check_int,
    check_number,
    named,
    nested,
)
from hipi_offline.errors import InputError
from hipi_offline.experiments.common import check_seeds
from hipi_offline.parallel import ordered_map
from hipi_offline.progress import progress_bar

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ACTIONS: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1))
"""(row, column) moves of the actions up, down, left, right."""
ACTION_NAMES: tuple[str, ...] = ("up", "down", "left", "right")
STRATEGIES: tuple[str, ...] = ("hipi", "her-final", "her-future", "random", "none")
"""Relabeling strategies, in plotting order."""
LAYOUT_KINDS: tuple[str, ...] = ("paper", "random")
MAX_SIDE = 64
"""Largest grid side accepted (the experiment's arrays are states x goals)."""


@dataclass(frozen=True)
class Gridworld:
    """A ``rows`` x ``cols`` grid; state ``r * cols + c``; moves off the grid stay put."""

    rows: int
    cols: int

    @property
    def n_states(self) -> int:
        return self.rows * self.cols

    def state(self, row: int, col: int) -> int:
        return row * self.cols + col

    def cell(self, state: int) -> tuple[int, int]:
        return divmod(int(state), self.cols)

    def step(self, state: int, action: int) -> int:
        """The next state of a deterministic move."""
        r, c = self.cell(state)
        dr, dc = ACTIONS[action]
        return self.state(min(max(r + dr, 0), self.rows - 1), min(max(c + dc, 0), self.cols - 1))


class Dataset:
    """Trajectories (state sequences) on a grid and the arrays the learner uses.

    Rows (one per data transition, with multiplicity): ``s``, ``a``, ``s_next``,
    ``traj``, ``t``. Unique transitions sorted by (state, action): ``u_s``, ``u_a``,
    ``u_next``; ``row_u`` maps rows to them. ``goals``: the sorted data states.
    """

    def __init__(
        self, grid: Gridworld, paths: Sequence[Sequence[int]], commanded: Sequence[int]
    ) -> None:
        if not paths or len(commanded) != len(paths):
            raise ValueError("Dataset: give one commanded goal per trajectory")
        self.grid = grid
        self.paths = tuple(tuple(int(x) for x in p) for p in paths)
        self.commanded = tuple(int(g) for g in commanded)
        rows: list[tuple[int, int, int, int, int]] = []
        for k, path in enumerate(self.paths):
            if len(path) < 2:
                raise ValueError("Dataset: every trajectory needs at least two states")
            for t, (s, s2) in enumerate(zip(path[:-1], path[1:], strict=True)):
                moves = [a for a in range(len(ACTIONS)) if grid.step(s, a) == s2 and s != s2]
                if not moves:
                    raise ValueError(f"Dataset: {s} -> {s2} is not a move of the grid")
                rows.append((s, moves[0], s2, k, t))
        table = np.array(rows, dtype=np.int64)
        self.s, self.a, self.s_next, self.traj, self.t = table.T.copy()
        pairs = self.s * len(ACTIONS) + self.a
        unique, self.row_u = np.unique(pairs, return_inverse=True)
        self.u_s, self.u_a = unique // len(ACTIONS), unique % len(ACTIONS)
        self.u_next = np.array(
            [grid.step(int(s), int(a)) for s, a in zip(self.u_s, self.u_a, strict=True)],
            dtype=np.int64,
        )
        self.goals = np.unique(np.concatenate([np.array(p) for p in self.paths]))
        goal_index = {int(g): i for i, g in enumerate(self.goals)}
        if any(g not in goal_index for g in self.commanded):
            raise ValueError("Dataset: commanded goals must be states of the data")
        self.commanded_index = np.array([goal_index[g] for g in self.commanded], dtype=np.int64)
        self.goal_index = goal_index
        # groups of unique transitions by source state (for per-state log-sum-exp)
        self.group_start = np.flatnonzero(np.r_[True, self.u_s[1:] != self.u_s[:-1]])
        self.group_state = self.u_s[self.group_start]
        self.group_of_u = np.cumsum(np.r_[True, self.u_s[1:] != self.u_s[:-1]]) - 1
        self.not_goal = self.u_next[:, None] != self.goals[None, :]
        # [S, G] bool: the (start, goal) pairs the data connects, and those of them
        # that no single trajectory covers
        self.pairs = connected(self)
        self.stitch = self.pairs & ~same_trajectory(self)

    @property
    def n_rows(self) -> int:
        return len(self.s)

    @property
    def n_goals(self) -> int:
        return len(self.goals)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.grid.rows,
            "cols": self.grid.cols,
            "paths": [list(p) for p in self.paths],
            "commanded": list(self.commanded),
        }


def line(grid: Gridworld, start: tuple[int, int], end: tuple[int, int]) -> tuple[int, ...]:
    """The states of a straight horizontal or vertical walk from ``start`` to ``end``."""
    (r0, c0), (r1, c1) = start, end
    if r0 != r1 and c0 != c1:
        raise ValueError("line: start and end must share a row or a column")
    n = max(abs(r1 - r0), abs(c1 - c0))
    dr, dc = (r1 > r0) - (r1 < r0), (c1 > c0) - (c1 < c0)
    return tuple(grid.state(r0 + i * dr, c0 + i * dc) for i in range(n + 1))


def paper_paths() -> tuple[Gridworld, tuple[tuple[int, ...], ...]]:
    """The paper's layout: A -> B six states along a row, C -> D five states down a
    column through it (10 goals, 6 on the row)."""
    grid = Gridworld(5, 6)
    return grid, (line(grid, (1, 0), (1, 5)), line(grid, (0, 2), (4, 2)))


def random_paths(
    rng: np.random.Generator, grid: Gridworld, horizontal: int, vertical: int, min_length: int
) -> tuple[tuple[int, ...], ...]:
    """Straight walks on distinct rows (``horizontal``) and columns (``vertical``), each
    of at least ``min_length`` states, in a random direction."""
    paths = []
    for along_rows, count in ((True, horizontal), (False, vertical)):
        side, other = (grid.rows, grid.cols) if along_rows else (grid.cols, grid.rows)
        for k in rng.choice(side, size=count, replace=False):
            length = int(rng.integers(min_length, other + 1))
            first = int(rng.integers(0, other - length + 1))
            ends = (first, first + length - 1)
            if rng.random() < 0.5:
                ends = ends[::-1]
            if along_rows:  # a walk along row k
                paths.append(line(grid, (int(k), ends[0]), (int(k), ends[1])))
            else:  # a walk down or up column k
                paths.append(line(grid, (ends[0], int(k)), (ends[1], int(k))))
    order = rng.permutation(len(paths))
    return tuple(paths[i] for i in order)


def v_fail(gamma: float) -> float:
    """The value of never arriving: -1 every step, forever."""
    return -1.0 / (1.0 - gamma)


def _goal_columns(data: Dataset, columns: np.ndarray | None) -> np.ndarray:
    return np.arange(data.n_goals) if columns is None else np.asarray(columns, dtype=np.int64)


def backup(
    data: Dataset, values: np.ndarray, gamma: float, columns: np.ndarray | None = None
) -> np.ndarray:
    """Q(s, a, ψ) = -1 + γ V(s', ψ) (0 after arriving) of every unique transition and
    goal, [U, G] float64; with ``columns``, for those goals only (``values`` [S, C])."""
    not_goal = data.not_goal if columns is None else data.not_goal[:, columns]
    return -1.0 + gamma * np.where(not_goal, values[data.u_next], 0.0)


def _soft_max_by_state(
    data: Dataset, q: np.ndarray, labeled: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per source state and goal: (max of Q over labeled transitions, -inf if none;
    α log Σ exp(Q/α) over them)."""
    masked = np.where(labeled, q, -np.inf)
    top = np.maximum.reduceat(masked, data.group_start, axis=0)
    finite = np.isfinite(top)
    shift = np.where(finite, top, 0.0)[data.group_of_u]
    terms = np.where(labeled, np.exp((q - shift) / alpha), 0.0)
    total = np.add.reduceat(terms, data.group_start, axis=0)
    with np.errstate(divide="ignore"):
        soft = np.where(finite, top + alpha * np.log(total), -np.inf)
    return top, soft


def soft_value_iteration(
    data: Dataset,
    labeled: np.ndarray,
    alpha: float,
    gamma: float,
    tol: float = 1e-13,
    max_iterations: int = 100_000,
    start: np.ndarray | None = None,
    columns: np.ndarray | None = None,
) -> np.ndarray:
    """V [S, G] (float64): per goal ψ, the fixed point of
    V(s, ψ) = α log Σ_{labeled (s, a)} exp(Q(s, a, ψ)/α), Q from :func:`backup`;
    states without a transition labeled ψ keep :func:`v_fail`; V(ψ, ψ) = 0.

    ``labeled`` [U, G] bool: unique transition u is labeled with goal g. Iterates until
    the largest change is at most ``tol`` (a γ-contraction: the error is then at most
    tol γ / (1 - γ)). ``start``: the values to iterate from (default :func:`v_fail`;
    the fixed point is the same from any start). ``columns``: only these goals (each
    goal's values depend on its own labels alone); the result is then [S, C]."""
    if labeled.shape != (len(data.u_s), data.n_goals):
        raise ValueError("soft_value_iteration: labeled must be [unique transitions, goals]")
    cols = _goal_columns(data, columns)
    labeled = labeled[:, cols]
    own = (data.goals[cols], np.arange(len(cols)))
    base = np.full((data.grid.n_states, len(cols)), v_fail(gamma))
    base[own] = 0.0
    values = base.copy() if start is None else np.array(start, dtype=np.float64)
    for _ in range(max_iterations):
        q = backup(data, values, gamma, None if columns is None else cols)
        _, soft = _soft_max_by_state(data, q, labeled, alpha)
        new = base.copy()
        block = new[data.group_state]
        new[data.group_state] = np.where(np.isfinite(soft), soft, block)
        new[own] = 0.0
        change = float(np.max(np.abs(new - values)))
        values = new
        if change <= tol:
            return values
    raise RuntimeError("soft_value_iteration: no convergence (is gamma < 1?)")


def greedy_next(
    data: Dataset,
    labeled: np.ndarray,
    values: np.ndarray,
    gamma: float,
    columns: np.ndarray | None = None,
) -> np.ndarray:
    """[S, G]: the next state of the greedy policy (argmax of Q over the transitions
    labeled with the goal; ties to the lowest action), -1 where it has none; with
    ``columns`` (``values`` [S, C]), [S, C] for those goals."""
    q = backup(data, values, gamma, columns)
    if columns is not None:
        labeled = labeled[:, columns]
    masked = np.where(labeled, q, -np.inf)
    top = np.maximum.reduceat(masked, data.group_start, axis=0)
    best = labeled & (masked == top[data.group_of_u])
    index = np.where(best, np.arange(len(data.u_s))[:, None], len(data.u_s))
    first = np.minimum.reduceat(index, data.group_start, axis=0)
    out = np.full((data.grid.n_states, q.shape[1]), -1, dtype=np.int64)
    found = first < len(data.u_s)
    nxt = np.where(found, data.u_next[np.minimum(first, len(data.u_s) - 1)], -1)
    out[data.group_state] = nxt
    return out


def reaches(data: Dataset, nxt: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """[S, G] bool: following ``nxt`` from the start arrives at the goal within S steps;
    with ``columns`` (``nxt`` [S, C]), [S, C] for those goals."""
    n = data.grid.n_states
    goals = data.goals[_goal_columns(data, columns)]
    pos = np.repeat(np.arange(n)[:, None], len(goals), axis=1)
    index = np.broadcast_to(np.arange(len(goals)), pos.shape)
    done = pos == goals[None, :]
    for _ in range(n):
        step = nxt[pos, index]
        move = ~done & (step >= 0)
        if not move.any():
            break
        pos = np.where(move, step, pos)
        done |= pos == goals[None, :]
    return done


def connected(data: Dataset) -> np.ndarray:
    """[S, G] bool: a path of data transitions leads from the start to the goal
    (start != goal)."""
    n = data.grid.n_states
    reach = np.zeros((n, n), dtype=bool)
    reach[data.u_s, data.u_next] = True
    while True:
        more = reach | ((reach.astype(np.int64) @ reach.astype(np.int64)) > 0)
        if (more == reach).all():
            break
        reach = more
    out = reach[:, data.goals]
    out[data.goals, np.arange(data.n_goals)] = False
    return out


def same_trajectory(data: Dataset) -> np.ndarray:
    """[S, G] bool: some trajectory visits the start and later the goal."""
    out = np.zeros((data.grid.n_states, data.n_goals), dtype=bool)
    for path in data.paths:
        for i, s in enumerate(path):
            for g in path[i + 1 :]:
                if g != s:
                    out[s, data.goal_index[g]] = True
    return out


def log_posterior(
    returns: np.ndarray, temperature: float, log_prior: np.ndarray | None = None
) -> np.ndarray:
    """log q(ψ | τ_i) [N, K] of Eq. 7 (``returns`` = Σ_t r_ψ(τ_i)) or Eq. 8
    (``returns`` = Q(s_i, a_i, ψ)), float64: log p(ψ) + R/T - log Z(ψ), with
    log Z(ψ) = log (1/N) Σ_j exp(R_j(ψ)/T) over all N rows, normalized over tasks."""
    scaled = np.asarray(returns, dtype=np.float64) / temperature
    if scaled.ndim != 2 or not np.isfinite(scaled).all():
        raise ValueError("log_posterior: returns must be a finite [N, K] array")
    top = scaled.max(axis=0)
    log_z = top + np.log(np.exp(scaled - top).mean(axis=0))
    logits = scaled - log_z
    if log_prior is not None:
        logits = logits + np.asarray(log_prior, dtype=np.float64)
    peak = logits.max(axis=1, keepdims=True)
    return logits - (peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True)))


def sample_categorical(rng: np.random.Generator, log_probs: np.ndarray, count: int) -> np.ndarray:
    """``count`` draws per row of a categorical given as log-probabilities, [N, count]."""
    cdf = np.cumsum(np.exp(log_probs), axis=1)
    u = rng.random((len(log_probs), count)) * cdf[:, -1:]
    draws = (u[:, :, None] >= cdf[:, None, :]).sum(axis=2)
    return np.minimum(draws, log_probs.shape[1] - 1)


def draw_labels(
    strategy: str,
    data: Dataset,
    rng: np.random.Generator,
    count: int,
    values: np.ndarray,
    gamma: float,
    temperature: float,
) -> np.ndarray:
    """Goal indices [N, count] for every data row under ``strategy``; ``values`` is the
    learner's current V (used by hipi only)."""
    n = data.n_rows
    if strategy == "hipi":
        q = backup(data, values, gamma)[data.row_u]
        return sample_categorical(rng, log_posterior(q, temperature), count)
    if strategy == "her-final":
        final = np.array([data.goal_index[p[-1]] for p in data.paths])
        return np.repeat(final[data.traj][:, None], count, axis=1)
    if strategy == "her-future":
        lengths = np.array([len(p) for p in data.paths])[data.traj]
        later = data.t[:, None] + 1 + (rng.random((n, count)) * (lengths - 1 - data.t)[:, None])
        later = np.minimum(later.astype(np.int64), (lengths - 1)[:, None])
        states = np.array(
            [[data.paths[k][j] for j in row] for k, row in zip(data.traj, later, strict=True)]
        ).reshape(n, count)
        return np.vectorize(data.goal_index.__getitem__, otypes=[np.int64])(states)
    if strategy == "random":
        return rng.integers(0, data.n_goals, size=(n, count))
    if strategy == "none":
        return np.repeat(data.commanded_index[data.traj][:, None], count, axis=1)
    raise ValueError(f"unknown strategy {strategy!r}")


@dataclass(frozen=True)
class Score:
    """Success of one greedy policy on the data's connected (start, goal) pairs."""

    success: float
    """Over all connected pairs."""
    stitched: float
    """Over the connected pairs that no single trajectory covers (NaN if none)."""
    per_goal: list[float]
    """Per goal: over its connected starts (NaN for a goal no other state leads to)."""


def score(data: Dataset, success: np.ndarray) -> Score:
    """Success rates of a [S, G] success table on the connected pairs."""
    pairs, stitch = data.pairs, data.stitch
    hits = success & pairs
    with np.errstate(invalid="ignore", divide="ignore"):
        per_goal = hits.sum(axis=0) / pairs.sum(axis=0)
    stitched = float((hits & stitch).sum() / stitch.sum()) if stitch.any() else math.nan
    return Score(float(hits.sum() / pairs.sum()), stitched, [float(x) for x in per_goal])


def run_strategy(
    data: Dataset,
    strategy: str,
    rng: np.random.Generator,
    rounds: int,
    labels_per_round: int,
    alpha: float,
    gamma: float,
    temperature: float,
) -> tuple[list[Score], np.ndarray]:
    """Relabel and learn for ``rounds`` rounds; returns the score after each round and
    the final labeled mask [U, G]."""
    labeled = np.zeros((len(data.u_s), data.n_goals), dtype=bool)
    values = soft_value_iteration(data, labeled, alpha, gamma)
    success = np.zeros((data.grid.n_states, data.n_goals), dtype=bool)
    scores = []
    for _ in range(rounds):
        goals = draw_labels(strategy, data, rng, labels_per_round, values, gamma, temperature)
        before = labeled.copy()
        labeled[np.repeat(data.row_u, labels_per_round), goals.reshape(-1)] = True
        changed = np.flatnonzero((labeled != before).any(axis=0))  # only these goals move
        if len(changed):
            values[:, changed] = soft_value_iteration(
                data, labeled, alpha, gamma, start=values[:, changed], columns=changed
            )
            nxt = greedy_next(data, labeled, values[:, changed], gamma, changed)
            success[:, changed] = reaches(data, nxt, changed)
        scores.append(score(data, success))
    return scores, labeled


@dataclass(frozen=True)
class Layout:
    """The data of one panel: the paper's crossing pair, or random crossing walks."""

    kind: str = "paper"
    """paper (fixed: A -> B along a row, C -> D down a column) or random."""
    rows: int = 10
    """Grid rows (random layouts)."""
    cols: int = 10
    """Grid columns (random layouts)."""
    horizontal: int = 4
    """Walks along distinct rows (random layouts)."""
    vertical: int = 4
    """Walks along distinct columns (random layouts)."""
    min_length: int = 5
    """Fewest states of a walk (random layouts)."""

    @property
    def name(self) -> str:
        if self.kind == "paper":
            return "paper"
        return f"random-{self.rows}x{self.cols}-{self.horizontal}h{self.vertical}v"

    def check(self) -> None:
        check_choice(self.kind, "kind", LAYOUT_KINDS)
        check_int(self.rows, "rows", 2, MAX_SIDE)
        check_int(self.cols, "cols", 2, MAX_SIDE)
        check_int(self.horizontal, "horizontal", 0, self.rows)
        check_int(self.vertical, "vertical", 0, self.cols)
        if self.horizontal + self.vertical == 0:
            raise FieldError("horizontal", "give at least one walk (horizontal + vertical)")
        check_int(self.min_length, "min_length", 2, min(self.rows, self.cols))

    def dataset(self, rng: np.random.Generator) -> Dataset:
        """This layout's data for one seed (commanded goals drawn from the prior)."""
        if self.kind == "paper":
            grid, paths = paper_paths()
        else:
            grid = Gridworld(self.rows, self.cols)
            paths = random_paths(rng, grid, self.horizontal, self.vertical, self.min_length)
        states = np.unique(np.concatenate([np.array(p) for p in paths]))
        commanded = rng.choice(states, size=len(paths))
        return Dataset(grid, paths, [int(g) for g in commanded])


@dataclass(frozen=True)
class Fig3Config:
    """Settings of the Fig. 3 experiment; presets :meth:`tiny`, :meth:`reduced`, :meth:`full`."""

    layouts: tuple[Layout, ...] = (Layout(),)
    strategies: tuple[str, ...] = STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    rounds: int = 20
    """Relabel-and-learn rounds."""
    labels_per_round: int = 2
    """Goals drawn for every data transition in every round (the relabeling budget)."""
    alpha: float = 0.1
    """Soft Q-learning temperature (per unit of the -1 step reward)."""
    gamma: float = 0.95
    """Discount."""
    temperature: float = 4.0
    """Temperature T of hipi's posterior (Q/T; the project's --relabel-temperature)."""
    progress: bool = field(default=True, compare=False)
    """A progress bar over (layout, seed) jobs."""
    workers: int = field(default=1, compare=False)
    """Processes running (layout, seed) jobs (results do not depend on it)."""

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def tiny(cls) -> Fig3Config:
        """The paper's layout, two seeds, 40 rounds: seconds (tests)."""
        return cls(layouts=(Layout(),), seeds=(0, 1), rounds=40, progress=False)

    @classmethod
    def reduced(cls) -> Fig3Config:
        """The paper's layout and random 10 x 10 crossings, 10 seeds, 150 rounds:
        about a minute of CPU."""
        return cls(layouts=(Layout(), Layout("random")), seeds=tuple(range(10)), rounds=150)

    @classmethod
    def full(cls) -> Fig3Config:
        """Adds random 16 x 16 crossings (6 + 6 walks); 20 seeds, 300 rounds: about
        an hour of CPU (``--workers`` runs seeds in parallel)."""
        big = Layout("random", rows=16, cols=16, horizontal=6, vertical=6, min_length=8)
        return cls(layouts=(Layout(), Layout("random"), big), seeds=tuple(range(20)), rounds=300)

    @classmethod
    def preset(cls, name: str) -> Fig3Config:
        """``tiny``, ``reduced`` or ``full``."""
        if name not in PRESETS:
            raise InputError(f"--preset: expected one of {', '.join(PRESETS)}, got {name!r}")
        result: Fig3Config = getattr(cls, name)()
        return result

    def check(self) -> None:
        """InputError naming the first bad field."""
        if not self.layouts:
            raise FieldError("layouts", "give at least one layout")
        for i, layout in enumerate(self.layouts):
            if not isinstance(layout, Layout):
                raise FieldError("layouts", f"expected Layout entries, got {layout!r}")
            with nested(lambda name, i=i: f"layouts[{i}].{name}"):
                layout.check()
        if not self.strategies:
            raise FieldError("strategies", "give at least one strategy")
        for s in self.strategies:
            check_choice(s, "strategies", STRATEGIES)
        if len(set(self.strategies)) != len(self.strategies):
            raise FieldError("strategies", f"each strategy at most once, got {self.strategies}")
        with named("seeds"):
            check_seeds(self.seeds)
        check_int(self.rounds, "rounds", 1, 10_000)
        check_int(self.labels_per_round, "labels_per_round", 1, 10_000)
        check_number(self.alpha, "alpha")
        check_number(self.gamma, "gamma")
        if self.gamma >= 1.0:
            raise FieldError("gamma", f"must be below 1, got {self.gamma}")
        check_number(self.temperature, "temperature")
        check_int(self.workers, "workers", 1, 256)

    def settings(self) -> dict[str, Any]:
        """What the experiment computes (progress left out), JSON-ready."""
        data = asdict(self)
        data.pop("progress")
        data.pop("workers")
        data["layouts"] = [asdict(lay) for lay in self.layouts]
        data["strategies"] = list(self.strategies)
        data["seeds"] = list(self.seeds)
        return data


PRESETS: tuple[str, ...] = ("tiny", "reduced", "full")


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _finite(value: float) -> float | None:
    """None for NaN (JSON has no NaN)."""
    return None if math.isnan(value) else value


def run_seed(config: Fig3Config, layout: Layout, seed: int) -> dict[str, Any]:
    """One layout and seed: the data and, per strategy, the scores after each round."""
    data = layout.dataset(_rng(seed, 0))
    out: dict[str, Any] = {"seed": seed, "data": data.to_json(), "goals": data.goals.tolist()}
    out["pairs"] = int(data.pairs.sum())
    out["stitch_pairs"] = int(data.stitch.sum())
    for strategy in config.strategies:
        rng = _rng(seed, 1, STRATEGIES.index(strategy))
        scores, labeled = run_strategy(
            data,
            strategy,
            rng,
            config.rounds,
            config.labels_per_round,
            config.alpha,
            config.gamma,
            config.temperature,
        )
        out[strategy] = {
            "curve": [s.success for s in scores],
            "stitched_curve": [_finite(s.stitched) for s in scores],
            "success": scores[-1].success,
            "stitched": _finite(scores[-1].stitched),
            "per_goal": [_finite(x) for x in scores[-1].per_goal],
            "labels": int(labeled.sum()),
        }
    return out


def _seed_job(job: tuple[Fig3Config, Layout, int]) -> dict[str, Any]:
    return run_seed(*job)


def mean_se(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and standard error (ddof 1; None for one value) of the values that are
    not None or NaN."""
    x = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return {"mean": None, "stderr": None, "n": 0}
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None
    return {"mean": float(x.mean()), "stderr": se, "n": len(x)}


def run_fig3(config: Fig3Config, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every layout, seed and strategy; returns the results (JSON-ready)."""
    jobs = [(config, layout, seed) for layout in config.layouts for seed in config.seeds]
    per: dict[str, list[dict[str, Any]]] = {layout.name: [] for layout in config.layouts}
    with progress_bar(enabled=config.progress, total=len(jobs), desc="fig3", unit="seed") as bar:
        for (_, layout, _), result in zip(
            jobs, ordered_map(_seed_job, jobs, config.workers), strict=True
        ):
            per[layout.name].append(result)
            bar.update(1)
    layouts: dict[str, Any] = {}
    for layout in config.layouts:
        runs = per[layout.name]
        summary = {}
        for strategy in config.strategies:
            curves = np.array([r[strategy]["curve"] for r in runs], dtype=np.float64)
            summary[strategy] = {
                "success": mean_se([r[strategy]["success"] for r in runs]),
                "stitched": mean_se([r[strategy]["stitched"] for r in runs]),
                "curve_mean": curves.mean(axis=0).tolist(),
                "curve_stderr": (
                    (curves.std(axis=0, ddof=1) / math.sqrt(len(runs))).tolist()
                    if len(runs) > 1
                    else None
                ),
            }
        layouts[layout.name] = {"kind": layout.kind, "summary": summary, "seeds": runs}
    if log is not None:
        for line_ in table(layouts):
            log(line_)
    return {"fig3": {"settings": config.settings(), "layouts": layouts}}


def _pm(entry: dict[str, Any]) -> str:
    if entry["mean"] is None:
        return "n/a"
    se = "n/a" if entry["stderr"] is None else f"{entry['stderr']:.3f}"
    return f"{entry['mean']:.3f} ± {se}"


def table(layouts: dict[str, Any]) -> list[str]:
    """Markdown: one row per layout and pair set, one column per strategy."""
    strategies = [s for s in STRATEGIES if any(s in v["summary"] for v in layouts.values())]
    lines = [
        "| layout (pairs) | " + " | ".join(strategies) + " |",
        "|---|" + "---:|" * len(strategies),
    ]
    for name, entry in layouts.items():
        summary = entry["summary"]
        for key, label in (("success", "all connected"), ("stitched", "need stitching")):
            cells = [_pm(summary[s][key]) if s in summary else "" for s in strategies]
            lines.append(f"| {name} ({label}) | " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------------------- figure

STRATEGY_LABELS = {
    "hipi": "HIPI (inverse RL)",
    "her-final": "HER final",
    "her-future": "HER future",
    "random": "random",
    "none": "no relabeling",
}


def _colors() -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {s: cmap(i) for i, s in enumerate(STRATEGIES)}


def _draw_paths(ax: Any, data: dict[str, Any], alpha: float = 1.0, names: bool = False) -> None:
    cols = data["cols"]
    path_colors = [f"C{i}" for i in range(10)]
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for k, path in enumerate(data["paths"]):
        ys, xs = zip(*(divmod(s, cols) for s in path), strict=True)
        color = path_colors[k % len(path_colors)]
        ax.plot(xs, ys, "-", color=color, lw=2, alpha=alpha)
        ax.annotate(
            "",
            xy=(xs[-1], ys[-1]),
            xytext=(xs[-2], ys[-2]),
            arrowprops={"arrowstyle": "-|>", "color": color, "lw": 2, "alpha": alpha},
        )
        if names and 2 * k + 1 < len(letters):
            for (x, y), letter in (
                ((xs[0], ys[0]), letters[2 * k]),
                ((xs[-1], ys[-1]), letters[2 * k + 1]),
            ):
                badge = {"boxstyle": "circle,pad=0.15", "fc": color, "ec": "none"}
                ax.text(
                    x,
                    y,
                    letter,
                    ha="center",
                    va="center",
                    fontsize=9,
                    weight="bold",
                    color="white",
                    bbox=badge,
                )


def _grid_axes(ax: Any, rows: int, cols: int) -> None:
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xticks(np.arange(-0.5, cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, rows, 1), minor=True)
    ax.grid(which="minor", color="0.85", lw=0.5)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    ax.set_aspect("equal")


def reach_map(seed_runs: list[dict[str, Any]], strategy: str) -> np.ndarray:
    """[rows, cols]: per goal cell, the success over its connected starts averaged over
    the given runs (same layout); NaN where no run has the cell as a reachable goal."""
    data = seed_runs[0]["data"]
    total = np.zeros(data["rows"] * data["cols"])
    count = np.zeros_like(total)
    for run in seed_runs:
        for g, value in zip(run["goals"], run[strategy]["per_goal"], strict=True):
            if value is not None:
                total[g] += value
                count[g] += 1
    with np.errstate(invalid="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out.reshape(data["rows"], data["cols"])


def fig3_figure(results: dict[str, Any]) -> Figure:
    """One row per layout: the data and a per-goal reach map per strategy; a last row
    with, per layout, the mean success with ± standard error over seeds (all connected
    pairs and those that need stitching) and the success after each round."""
    from matplotlib.figure import Figure

    fig3 = results.get("fig3", results)
    layouts = fig3["layouts"]
    strategies = [s for s in STRATEGIES if s in next(iter(layouts.values()))["summary"]]
    colors = _colors()
    settings = fig3["settings"]
    ncols = 1 + len(strategies)
    heights = [
        max(2.0, 2.3 * min(e["seeds"][0]["data"]["rows"] / e["seeds"][0]["data"]["cols"], 1.4))
        + 0.8
        for e in layouts.values()
    ]
    pairs_per_row = 2  # layouts whose bars and curves share a row at the bottom
    bottom_rows = math.ceil(len(layouts) / pairs_per_row)
    fig = Figure(
        figsize=(2.6 * ncols, sum(heights) + 4.2 * bottom_rows + 0.6), layout="constrained"
    )
    rows = fig.subfigures(len(layouts) + 1, 1, height_ratios=[*heights, 4.2 * bottom_rows])
    fig.suptitle(
        "Fig. 3: relabeling with inverse RL stitches crossing trajectories\n"
        f"tabular soft Q-learning; {settings['rounds']} rounds x "
        f"{settings['labels_per_round']} goals drawn per data transition; "
        f"{len(settings['seeds'])} seeds; hipi temperature {settings['temperature']:g}",
        fontsize=11,
    )
    image = None
    map_axes = []
    for sub, (name, entry) in zip(rows[:-1], layouts.items(), strict=True):
        runs = entry["seeds"]
        fixed = entry["kind"] == "paper"
        shown = runs if fixed else runs[:1]
        data = runs[0]["data"]
        axes = sub.subplots(1, ncols, squeeze=False)[0]
        where = (
            "same data every seed: maps averaged" if fixed else f"maps of seed {runs[0]['seed']}"
        )
        sub.suptitle(
            f"{name}: {runs[0]['pairs']} connected (start, goal) pairs, "
            f"{runs[0]['stitch_pairs']} of them need stitching ({where})",
            fontsize=10,
        )
        _grid_axes(axes[0], data["rows"], data["cols"])
        _draw_paths(axes[0], data, names=fixed)
        axes[0].set_title("data trajectories", fontsize=9)
        for ax, strategy in zip(axes[1:], strategies, strict=True):
            _grid_axes(ax, data["rows"], data["cols"])
            image = ax.imshow(
                reach_map(shown, strategy), cmap="viridis", vmin=0.0, vmax=1.0,
                interpolation="nearest",
            )  # fmt: skip
            _draw_paths(ax, data, alpha=0.35)
            mean = entry["summary"][strategy]["success"]["mean"]
            ax.set_title(f"{STRATEGY_LABELS[strategy]}\nsuccess {mean:.2f}", fontsize=9)
            map_axes.append(ax)
    if image is not None:
        rows[len(layouts) - 1].colorbar(
            image,
            ax=list(axes[1:]),
            location="bottom",
            shrink=0.6,
            label="reach map: per goal cell, fraction of the connected start states from "
            "which the greedy policy arrives (blank: no start leads there)",
        )
    bottom = rows[-1].subplots(bottom_rows, 2 * pairs_per_row, squeeze=False).ravel()
    for ax in bottom[2 * len(layouts) :]:
        ax.set_visible(False)
    for k, (name, entry) in enumerate(layouts.items()):
        runs = entry["seeds"]
        ax = bottom[2 * k]
        x = np.arange(len(strategies))
        width = 0.4
        for offset, key, hatch, label in (
            (-width / 2, "success", None, "all connected pairs"),
            (width / 2, "stitched", "//", "pairs that need stitching"),
        ):
            stats = [entry["summary"][s][key] for s in strategies]
            means = [math.nan if e["mean"] is None else e["mean"] for e in stats]
            errors = [math.nan if e["stderr"] is None else e["stderr"] for e in stats]
            fills = [colors[s] for s in strategies]
            ax.bar(x + offset, means, width, yerr=errors, capsize=3, hatch=hatch,
                   color=fills, edgecolor="black", lw=0.5, label=label)  # fmt: skip
        names = [STRATEGY_LABELS[s].replace(" (inverse RL)", "") for s in strategies]
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.3)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel("success rate (fraction of pairs)")
        ax.set_title(
            f"{name}: after the last round,\nmean ± s.e. over {len(runs)} seeds", fontsize=9
        )
        ax.legend(fontsize=7, loc="upper right")
        ax = bottom[2 * k + 1]
        for strategy in strategies:
            summary = entry["summary"][strategy]
            mean = np.array(summary["curve_mean"])
            rounds = np.arange(1, len(mean) + 1)
            ax.plot(rounds, mean, color=colors[strategy], label=STRATEGY_LABELS[strategy])
            if summary["curve_stderr"] is not None:
                se = np.array(summary["curve_stderr"])
                ax.fill_between(rounds, mean - se, mean + se, color=colors[strategy], alpha=0.2)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("round (goals drawn, then soft value iteration)", fontsize=8)
        ax.set_ylabel("success rate (all connected pairs)")
        ax.set_title(f"{name}: learning curves,\nmean ± s.e. over {len(runs)} seeds", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    return fig
