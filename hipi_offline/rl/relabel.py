"""Minibatch relabeling for off-policy RL: one registry of strategies (name ->
:class:`Strategy`), all drawn through :class:`Relabeler`.

* ``hipi`` -- the paper's Alg. 1 (approximate inverse RL on a minibatch). The B
  commanded tasks of the batch are the candidates. With Q_ij = Q(s_i, a_i, psi_j)
  the learner's soft Q-value (Eq. 8; the minimum of the twin critics) and a
  temperature T (the SAC entropy weight alpha: Q/alpha is the soft value in the
  units of Eq. 8's exponent)::

      log Z_j  = logsumexp_i(Q_ij / T) - log B          (log-mean-exp over i)
      score_ij = log w_j + Q_ij / T - log Z_j
      q(j | i) = softmax_j(score_ij)

  ``log w_j`` is zero by default: the candidates are the tasks the prior drew for
  the batch, so the prior is already their empirical distribution (the paper's
  non-parametric approximation, and the authors' code). Pass ``log_prior`` (the
  log-density ratio of the prior to the distribution that proposed the candidates)
  only for candidates not drawn from the prior.
* ``random`` -- a task drawn uniformly from the batch's commanded tasks (the
  authors' ``random`` relabeling: Alg. 1 with constant logits, so the prior enters
  as the empirical distribution of the commanded tasks, as for ``hipi``).
* ``none`` -- the batch unchanged.
* ``her-final`` / ``her-future`` -- goal families (``goal``, ``target``) only: the
  goal achieved at the episode's final step / at a uniformly drawn step t' in
  {t, ..., T-1} of the same episode (t' = t is the goal this transition reached:
  the step fields of step t are the state after action t). A ``goal`` family with
  ``margin: sampled`` keeps each transition's own margin.

Every strategy relabels ``round(fraction * B)`` rows (``floor(f * B + 1/2)``), a
uniformly drawn subset; the other rows are returned untouched. A relabeled row's
reward is recomputed with the family's own ``reward`` (the function ``relabel``
sums) in float64, on the transition's step fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from hipi_offline.errors import InputError
from hipi_offline.rl.batch import Batch, EpisodeLookup
from hipi_offline.tasks.families import GoalFamily, TargetFamily, base_family
from hipi_offline.tasks.registry import RewardFamily

QValues = Callable[[Tensor], Tensor]
"""candidates [K, task_dim] -> Q(s_i, a_i, psi_k) [B, K] of the batch's transitions."""

REWARD_CHUNK = 256
"""Rows per ``family.reward`` call when recomputing relabeled rewards (the call
computes a chunk x chunk block, of which the diagonal is kept)."""


@dataclass(frozen=True)
class Context:
    """What a strategy may read to draw new tasks."""

    batch: Batch
    family: RewardFamily
    generator: torch.Generator
    temperature: float | None
    q_values: QValues | None = None
    lookup: EpisodeLookup | None = None
    log_prior: Tensor | None = None


@dataclass(frozen=True)
class Draw:
    """New tasks [n, task_dim] for the chosen rows; ``index`` [n]: the candidate
    (batch row) each was taken from, -1 where none; ``log_probs`` [B, K]: hipi's
    relabeling distribution over the candidates for every row (float64)."""

    tasks: Tensor
    index: Tensor
    log_probs: Tensor | None = None


class Strategy(Protocol):
    name: str
    goal_only: bool
    """True: only for goal families (``goal``, ``target``)."""

    def draw(self, ctx: Context, rows: Tensor) -> Draw: ...


STRATEGIES: dict[str, Strategy] = {}


def _register(strategy: Strategy) -> Strategy:
    STRATEGIES[strategy.name] = strategy
    return strategy


# ---------------------------------------------------------------- Alg. 1
def hipi_log_probs(
    q: Tensor, temperature: float, log_prior: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(log q(j | i) [B, K], log Z [K]) of Alg. 1 for soft Q-values q [B, K], in float64."""
    scaled = q.to(torch.float64) / temperature
    log_z = torch.logsumexp(scaled, dim=0) - math.log(scaled.shape[0])
    scores = scaled - log_z
    if log_prior is not None:
        scores = scores + log_prior.to(scores)
    return scores - torch.logsumexp(scores, dim=1, keepdim=True), log_z


@dataclass(frozen=True)
class Hipi:
    name: str = "hipi"
    goal_only: bool = False

    def draw(self, ctx: Context, rows: Tensor) -> Draw:
        if ctx.q_values is None or ctx.temperature is None:
            raise ValueError("hipi relabeling needs q_values and a temperature")
        candidates = ctx.batch.tasks
        q = ctx.q_values(candidates)
        size = ctx.batch.size
        if tuple(q.shape) != (size, candidates.shape[0]):
            raise ValueError(f"q_values returned {tuple(q.shape)}, expected ({size}, {size})")
        log_probs, _ = hipi_log_probs(q, ctx.temperature, ctx.log_prior)
        if bool((log_probs.isnan() | (log_probs == math.inf)).any()):  # -inf: probability 0
            raise FloatingPointError(
                "hipi relabeling: the Q-values give no relabeling distribution "
                "(NaN or +inf Q-values: the critics diverged)"
            )
        probs = log_probs[rows].exp()
        index = torch.multinomial(probs, 1, generator=ctx.generator).squeeze(1)
        return Draw(candidates[index], index, log_probs)


@dataclass(frozen=True)
class Random:
    name: str = "random"
    goal_only: bool = False

    def draw(self, ctx: Context, rows: Tensor) -> Draw:
        size = ctx.batch.size
        index = torch.randint(0, size, (rows.numel(),), generator=ctx.generator, device=rows.device)
        return Draw(ctx.batch.tasks[index], index)


@dataclass(frozen=True)
class Unchanged:
    name: str = "none"
    goal_only: bool = False

    def draw(self, ctx: Context, rows: Tensor) -> Draw:
        return Draw(ctx.batch.tasks[rows], rows)


def goal_fields(family: RewardFamily) -> tuple[str, ...]:
    """The step fields holding a goal family's achieved goal."""
    base = base_family(family)
    if isinstance(base, GoalFamily):
        return (base.field,)
    if isinstance(base, TargetFamily):
        return (base.feature,)
    raise ValueError(f"{family.name} is not a goal family")


def achieved_goal(family: RewardFamily, fields: Mapping[str, Tensor], tasks: Tensor) -> Tensor:
    """The task under which ``fields`` (n rows) reached their goal exactly: the goal
    family's feature at its dims (plus the given ``tasks``' margin for a sampled
    margin), a target family's feature value."""
    base = base_family(family)
    if isinstance(base, TargetFamily):
        return base.value(fields).to(tasks.dtype)
    if not isinstance(base, GoalFamily):
        raise ValueError(f"achieved_goal: {family.name} is not a goal family")
    x = fields[base.field]
    x = x.reshape(x.shape[0], -1)
    if base.dims is not None:
        x = x[:, list(base.dims)]
    x = x.to(tasks.dtype)
    return torch.cat([x, tasks[:, -1:]], dim=1) if base.margin == "sampled" else x


@dataclass(frozen=True)
class Hindsight:
    """HER: the goal achieved at the final step, or at a uniform step in {t, ..., T-1}."""

    name: str
    future: bool
    goal_only: bool = True

    def draw(self, ctx: Context, rows: Tensor) -> Draw:
        batch = ctx.batch
        if ctx.lookup is None or batch.episodes is None or batch.steps is None:
            raise ValueError(f"{self.name} needs the batch's episodes, steps and a lookup")
        if batch.lengths is None:
            raise ValueError(f"{self.name} needs the batch's episode lengths")
        steps, lengths = batch.steps[rows], batch.lengths[rows]
        if self.future:
            u = torch.rand(
                rows.numel(), generator=ctx.generator, dtype=torch.float64, device=rows.device
            )
            span = (lengths - steps).to(torch.float64)
            later = steps + torch.floor(u * span).to(torch.int64)
            later = torch.minimum(later, lengths - 1)
        else:
            later = lengths - 1
        fields = ctx.lookup.step_fields(batch.episodes[rows], later, goal_fields(ctx.family))
        tasks = achieved_goal(ctx.family, fields, batch.tasks[rows])
        return Draw(tasks, torch.full_like(rows, -1))


for _strategy in (
    Hipi(),
    Random(),
    Unchanged(),
    Hindsight("her-final", future=False),
    Hindsight("her-future", future=True),
):
    _register(_strategy)


def is_goal_family(family: RewardFamily) -> bool:
    """Whether HER applies: the task is a point the step fields can reach."""
    return isinstance(base_family(family), (GoalFamily, TargetFamily))


# ---------------------------------------------------------------- driver
@dataclass(frozen=True)
class Relabeled:
    """The relabeled batch; ``relabeled`` [B] bool: the rows redrawn (a redrawn row
    may get its own task back); ``index`` [B]: the candidate row each redrawn task
    came from (-1: not redrawn, or a HER goal); ``log_probs``: hipi's [B, B]."""

    batch: Batch
    relabeled: Tensor
    index: Tensor
    log_probs: Tensor | None = None


def relabel_count(fraction: float, size: int) -> int:
    """round(fraction * size), halves rounded up."""
    return int(math.floor(fraction * size + 0.5))


def task_rewards(family: RewardFamily, fields: Mapping[str, Tensor], tasks: Tensor) -> Tensor:
    """r_{tasks[n]}(step n) [n] in float64: the diagonal of ``family.reward``,
    computed in blocks of :data:`REWARD_CHUNK` rows."""
    out = []
    for start in range(0, tasks.shape[0], REWARD_CHUNK):
        stop = min(start + REWARD_CHUNK, tasks.shape[0])
        block = {k: fields[k][start:stop].to(torch.float64) for k in family.fields}
        out.append(family.reward(block, tasks[start:stop].to(torch.float64)).diagonal())
    if not out:
        return tasks.new_zeros(0, dtype=torch.float64)
    return torch.cat(out)


@dataclass(frozen=True)
class Relabeler:
    """A checked strategy for one task family; call it on each minibatch."""

    strategy: Strategy
    family: RewardFamily
    fraction: float = 1.0
    temperature: float | None = None
    """hipi's temperature; None: the learner's alpha, passed to each call."""

    @property
    def name(self) -> str:
        return self.strategy.name

    def __call__(
        self,
        batch: Batch,
        generator: torch.Generator,
        q_values: QValues | None = None,
        lookup: EpisodeLookup | None = None,
        log_prior: Tensor | None = None,
        temperature: float | None = None,
    ) -> Relabeled:
        """Relabel ``batch``. ``temperature`` overrides the configured one (the
        learner's current alpha); ``generator`` lives on the batch's device."""
        size = batch.size
        device = batch.tasks.device
        keep = Relabeled(
            batch,
            torch.zeros(size, dtype=torch.bool, device=device),
            torch.full((size,), -1, dtype=torch.int64, device=device),
        )
        count = relabel_count(self.fraction, size)
        if self.strategy.name == "none" or count == 0:
            return keep
        if count == size:
            rows = torch.arange(size, device=device)
        else:
            perm = torch.randperm(size, generator=generator, device=device)
            rows = perm[:count].sort().values
        t = self.temperature if temperature is None else check_temperature(temperature)
        if t is None and self.strategy.name == "hipi":
            raise ValueError("hipi relabeling: pass temperature= (the learner's alpha)")
        ctx = Context(batch, self.family, generator, t, q_values, lookup, log_prior)
        draw = self.strategy.draw(ctx, rows)
        tasks = batch.tasks.clone()
        tasks[rows] = draw.tasks.to(tasks.dtype)
        rewards = batch.rewards.clone()
        fields = {k: batch.fields[k][rows] for k in self.family.fields}
        rewards[rows] = task_rewards(self.family, fields, tasks[rows]).to(rewards.dtype)
        mask = keep.relabeled.clone()
        mask[rows] = True
        index = keep.index.clone()
        index[rows] = draw.index
        return Relabeled(batch.with_tasks(tasks, rewards), mask, index, draw.log_probs)


def check_temperature(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(
            f"--relabel-temperature: expected a positive number or 'alpha', got {value!r}"
        )
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"--relabel-temperature: expected a positive finite number, got {value}")
    return value


def make_relabeler(
    name: str, family: RewardFamily, fraction: float = 1.0, temperature: float | str = "alpha"
) -> Relabeler:
    """The strategy ``name`` checked against ``family`` and the options, or an InputError.
    ``temperature``: a positive number, or ``alpha`` (the SAC temperature at each step:
    Q / alpha is the soft value in the units of Eq. 8's exponent)."""
    strategy = STRATEGIES.get(name)
    if strategy is None:
        known = ", ".join(STRATEGIES)
        raise InputError(f"--relabel: unknown strategy {name!r} (choose from {known})")
    if strategy.goal_only and not is_goal_family(family):
        raise InputError(
            f"--relabel: {name} needs a goal task family (goal or target), "
            f"the tasks are a {family.name} family"
        )
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise InputError(f"--relabel-fraction: expected a number in [0, 1], got {fraction!r}")
    if not 0.0 <= float(fraction) <= 1.0:  # NaN fails too
        raise InputError(f"--relabel-fraction: expected a number in [0, 1], got {fraction}")
    t = None if temperature == "alpha" else check_temperature(temperature)
    return Relabeler(strategy, family, float(fraction), t)
