"""A slow, plain-numpy float64 reference of HIPI relabeling, for the tests.

Written from the definitions (paper "Rewriting History with Inverse RL", Eq. 7,
and docs/TASKS.md), independent of ``hipi_offline``: rewards are evaluated per
episode and per candidate with numpy formulas, returns are discounted with t
counted from each episode's start, and the posterior is computed densely::

    R_ij        = sum_t w_t r_psi_j(s_t, a_t),  w_t = gamma^t   (at: all)
                  w_t = gamma^(T-1) on the last step, 0 elsewhere (at: final)
    log Z_j     = logsumexp_i (R_ij / alpha) - log N
    log q_ij    = log p(psi_j) + R_ij / alpha - log Z_j, normalized over j
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# A reward of one task over one episode: (fields of the episode [T, ...], psi [D]) -> [T].
EpisodeReward = Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray]


def logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """Stable log(sum(exp(x))) along ``axis`` (no scipy)."""
    x = np.asarray(x, dtype=np.float64)
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    out = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return np.squeeze(out, axis=axis)


def _matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def _pick(x: np.ndarray, dims: Sequence[int] | None) -> np.ndarray:
    x = _matrix(x)
    return x if dims is None else x[:, list(dims)]


# ------------------------------------------------------------------ rewards
def linear_reward(features: Sequence[str]) -> EpisodeReward:
    """r = psi . phi, phi = the features' columns concatenated."""

    def reward(ep: Mapping[str, np.ndarray], psi: np.ndarray) -> np.ndarray:
        phi = np.concatenate([_matrix(ep[f]) for f in features], axis=1)
        return phi @ psi

    return reward


def target_reward(
    feature: str, dims: Sequence[int] | None = None, ctrl_cost: float = 0.0
) -> EpisodeReward:
    """r = -||f - psi|| - ctrl_cost * ||a||^2."""

    def reward(ep: Mapping[str, np.ndarray], psi: np.ndarray) -> np.ndarray:
        f = _pick(ep[feature], dims)
        out = -np.sqrt(np.sum((f - psi[None, :]) ** 2, axis=1))
        if ctrl_cost:
            out = out - ctrl_cost * np.sum(_matrix(ep["steps/actions"]) ** 2, axis=1)
        return out

    return reward


def goal_reward(
    field: str, dims: Sequence[int] | None = None, margin: float | str | None = None
) -> EpisodeReward:
    """r = -||x - g||, or 1[||x - g|| < m] - 1 (m = psi[-1] when ``sampled``)."""

    def reward(ep: Mapping[str, np.ndarray], psi: np.ndarray) -> np.ndarray:
        x = _pick(ep[field], dims)
        goal = psi[: x.shape[1]]
        dist = np.sqrt(np.sum((x - goal[None, :]) ** 2, axis=1))
        if margin is None:
            return -dist
        m = psi[-1] if margin == "sampled" else float(margin)
        return np.where(dist < m, 1.0, 0.0) - 1.0

    return reward


@dataclass(frozen=True)
class Pred:
    """``above < field[column] < below`` scores ``reward``."""

    field: str
    column: int | None = None
    above: float | None = None
    below: float | None = None
    reward: float = 1.0


def discrete_reward(predicates: Sequence[Pred]) -> EpisodeReward:
    """r = sum_k psi_k * reward_k * 1[above_k < field_k < below_k]."""

    def reward(ep: Mapping[str, np.ndarray], psi: np.ndarray) -> np.ndarray:
        total = np.zeros(len(next(iter(ep.values()))))
        for k, p in enumerate(predicates):
            x = _matrix(ep[p.field])[:, 0 if p.column is None else p.column]
            hit = np.ones(len(x), dtype=bool)
            if p.above is not None:
                hit &= x > p.above
            if p.below is not None:
                hit &= x < p.below
            total = total + psi[k] * p.reward * hit.astype(np.float64)
        return total

    return reward


# ------------------------------------------------------------------ returns
def step_weights(length: int, gamma: float, at: str) -> np.ndarray:
    """w_t for one episode of ``length`` steps."""
    t = np.arange(length, dtype=np.float64)
    w = gamma**t
    if at == "final":
        w[:-1] = 0.0
    return w


def returns_matrix(
    fields: Mapping[str, np.ndarray],
    lengths: Sequence[int],
    candidates: np.ndarray,
    reward: EpisodeReward,
    gamma: float = 1.0,
    at: str = "all",
) -> np.ndarray:
    """R [N, K], one episode and one candidate at a time."""
    lengths = [int(n) for n in lengths]
    candidates = np.asarray(candidates, dtype=np.float64)
    out = np.zeros((len(lengths), len(candidates)))
    start = 0
    for i, length in enumerate(lengths):
        ep = {k: np.asarray(v[start : start + length], dtype=np.float64) for k, v in fields.items()}
        w = step_weights(length, gamma, at)
        for j, psi in enumerate(candidates):
            out[i, j] = float(np.sum(w * reward(ep, psi)))
        start += length
    return out


# ------------------------------------------------------------------ posterior
def normal_log_prob(tasks: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """log N(psi; mean, diag(std^2)), summed over dimensions."""
    tasks = np.asarray(tasks, dtype=np.float64)
    out = np.zeros(len(tasks))
    for j, psi in enumerate(tasks):
        for d, (m, s) in enumerate(zip(mean, std, strict=True)):
            out[j] += -0.5 * ((psi[d] - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    return out


@dataclass(frozen=True)
class RefPosterior:
    log_z: np.ndarray  # [K]
    log_q: np.ndarray  # [N, K]
    entropy: np.ndarray  # [N]
    coverage: np.ndarray  # [K]

    def topk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, log-probs) [N, k], most probable first (ties: lower index first)."""
        order = np.argsort(-self.log_q, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(self.log_q, order, axis=1)


def posterior(
    returns: np.ndarray,
    temperature: float,
    log_prior: np.ndarray | None = None,
    partition: bool = True,
) -> RefPosterior:
    """The dense float64 posterior from R (hipi: ``partition=True``)."""
    returns = np.asarray(returns, dtype=np.float64)
    n, k = returns.shape
    log_z = np.array([logsumexp(returns[:, j] / temperature, 0) - math.log(n) for j in range(k)])
    log_q = np.zeros((n, k))
    entropy = np.zeros(n)
    for i in range(n):
        s = returns[i] / temperature
        if partition:
            s = s - log_z
        if log_prior is not None:
            s = s + log_prior
        log_q[i] = s - logsumexp(s, 0)
        q = np.exp(log_q[i])
        entropy[i] = -float(np.sum(np.where(q > 0, q * log_q[i], 0.0)))
    coverage = np.exp(log_q).sum(axis=0) / n
    return RefPosterior(log_z, log_q, entropy, coverage)
