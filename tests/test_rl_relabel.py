"""Minibatch relabeling (hipi_offline.rl.relabel): Alg. 1 against a float64 numpy
reference, the paper's Sec. 4.1 and 4.2 on transitions, chi-square tests of the
draws, the fraction option, HER against hand-built episodes, and every bad option.

Float64 math is compared with rtol 1e-12 (the reference sums in another order).
Each chi-square test fails falsely with probability 1e-6 (a fixed seed makes the
outcome reproducible; the threshold is the chi-square quantile at 1 - 1e-6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from hipi_offline.errors import InputError
from hipi_offline.rl.batch import Batch, EpisodeTable
from hipi_offline.rl.relabel import (
    STRATEGIES,
    Unchanged,
    hipi_log_probs,
    make_relabeler,
    relabel_count,
)
from hipi_offline.tasks.families import GoalFamily, LinearFamily, TargetFamily

POS = "steps/infos/pos"
FALSE_FAILURE = 1e-6
GOAL = GoalFamily(field=POS)


def make_batch(pos: torch.Tensor, tasks: torch.Tensor, family=GOAL, **extra) -> Batch:
    size = pos.shape[0]
    fields = {POS: pos, "steps/actions": torch.zeros(size, 2, dtype=torch.float64)}
    rewards = family.reward(fields, tasks).diagonal().clone()
    return Batch(
        obs=torch.zeros(size, 3, dtype=torch.float64),
        actions=torch.zeros(size, 2, dtype=torch.float64),
        rewards=rewards,
        next_obs=torch.zeros(size, 3, dtype=torch.float64),
        discounts=torch.ones(size, dtype=torch.float64),
        tasks=tasks,
        fields=fields,
        **extra,
    )


def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def numpy_alg1(q: np.ndarray, temperature: float, log_prior: np.ndarray | None):
    """Alg. 1 written out in float64 numpy: (row-softmax probabilities, log Z)."""
    s = q / temperature
    top = s.max(axis=0)
    log_z = np.log(np.mean(np.exp(s - top), axis=0)) + top
    scores = s - log_z + (0.0 if log_prior is None else log_prior)
    scores = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(scores)
    return probs / probs.sum(axis=1, keepdims=True), log_z


@pytest.mark.parametrize("temperature", [0.05, 1.0, 7.5])
@pytest.mark.parametrize("with_prior", [False, True])
def test_hipi_math_matches_numpy_reference(temperature: float, with_prior: bool) -> None:
    rng = np.random.default_rng(3)
    q = rng.normal(scale=4.0, size=(9, 9))
    log_prior = rng.normal(size=9) if with_prior else None
    want_p, want_z = numpy_alg1(q, temperature, log_prior)
    prior_t = None if log_prior is None else torch.from_numpy(log_prior)
    log_p, log_z = hipi_log_probs(torch.from_numpy(q), temperature, prior_t)
    np.testing.assert_allclose(log_z.numpy(), want_z, rtol=1e-12)
    np.testing.assert_allclose(log_p.exp().numpy(), want_p, rtol=1e-12, atol=1e-300)
    # the same distribution reaches the relabeler's output, from float32 Q-values too
    pos = torch.from_numpy(rng.normal(size=(9, 2)))
    batch = make_batch(pos, torch.from_numpy(rng.normal(size=(9, 2))))
    relabeler = make_relabeler("hipi", GOAL, temperature=temperature)
    q32 = torch.from_numpy(q).float()
    out = relabeler(batch, generator(0), q_values=lambda c: q32, log_prior=prior_t)
    want32, _ = numpy_alg1(q32.double().numpy(), temperature, log_prior)
    np.testing.assert_allclose(out.log_probs.exp().numpy(), want32, rtol=1e-12, atol=1e-300)
    assert out.log_probs.dtype == torch.float64


def test_goal_reward_small_temperature_relabels_to_the_reached_goal() -> None:
    """Sec. 4.1: Q from the goal reward itself; each transition gets the goal it reached
    (the commanded tasks are the goals other transitions reached)."""
    rng = np.random.default_rng(5)
    reached = torch.from_numpy(rng.uniform(-1, 1, size=(16, 2)))
    order = rng.permutation(16)
    perm = torch.empty(16, dtype=torch.int64)
    perm[order] = torch.from_numpy(np.roll(order, 1))  # one 16-cycle: no fixed point
    batch = make_batch(reached, reached[perm].clone())
    assert bool((batch.rewards < 0).all())  # commanded goals were missed
    relabeler = make_relabeler("hipi", GOAL, temperature=1e-3)
    q_values = lambda cands: GOAL.reward(batch.fields, cands)  # noqa: E731
    out = relabeler(batch, generator(1), q_values=q_values)
    assert torch.equal(out.batch.tasks, reached)
    assert torch.equal(out.index, torch.argsort(perm))
    assert bool((out.batch.rewards == 0).all())
    own = out.log_probs.exp()[torch.arange(16), torch.argsort(perm)]
    assert bool((own > 1 - 1e-12).all())


def test_partition_function_normalizes_reward_scales() -> None:
    """Sec. 4.2 / Fig. 2: task 0 pays more to every transition; the highest-reward
    task would take both, log Z gives each transition its own."""
    q = torch.tensor([[5.0, 0.0], [4.0, 2.0]], dtype=torch.float64)
    assert torch.equal(q.argmax(dim=1), torch.tensor([0, 0]))
    log_p, _ = hipi_log_probs(q, 1.0)
    assert torch.equal(log_p.argmax(dim=1), torch.tensor([0, 1]))


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum(axis=-1, keepdims=True) * probs
    return float(((counts - expected) ** 2 / expected).sum())


def test_hipi_draws_follow_the_row_softmax() -> None:
    rng = np.random.default_rng(11)
    size, draws = 6, 3000
    q = torch.from_numpy(rng.normal(scale=0.8, size=(size, size)))
    batch = make_batch(
        torch.from_numpy(rng.normal(size=(size, 2))), torch.eye(size)[:, :2].double()
    )
    relabeler = make_relabeler("hipi", GOAL, temperature=0.7)
    g = generator(2024)
    counts = np.zeros((size, size))
    for _ in range(draws):
        out = relabeler(batch, g, q_values=lambda c: q)
        counts[np.arange(size), out.index.numpy()] += 1
    probs = out.log_probs.exp().numpy()
    assert (draws * probs).min() >= 5  # the chi-square approximation holds
    threshold = chi2.isf(FALSE_FAILURE, df=size * (size - 1))
    assert chi_square(counts, probs) < threshold
    # the test has power: the draws are far from uniform and from the row softmax
    # without the partition function
    assert chi_square(counts, np.full((size, size), 1 / size)) > threshold
    assert chi_square(counts, torch.softmax(q / 0.7, dim=1).numpy()) > threshold


@pytest.mark.parametrize(
    ("fraction", "count"), [(0.0, 0), (0.05, 1), (0.34, 3), (0.35, 4), (0.5, 5), (1.0, 10)]
)
@pytest.mark.parametrize("name", ["hipi", "random"])
def test_fraction_relabels_exactly_that_many_rows(name: str, fraction: float, count: int) -> None:
    rng = np.random.default_rng(7)
    size = 10
    assert relabel_count(fraction, size) == count
    batch = make_batch(
        torch.from_numpy(rng.normal(size=(size, 2))), torch.from_numpy(rng.normal(size=(size, 2)))
    )
    relabeler = make_relabeler(name, GOAL, fraction=fraction, temperature=0.5)
    q = torch.from_numpy(rng.normal(size=(size, size)))
    out = relabeler(batch, generator(9), q_values=lambda c: q)
    mask = out.relabeled
    assert int(mask.sum()) == count
    assert torch.equal(out.batch.tasks[~mask], batch.tasks[~mask])
    assert torch.equal(out.batch.rewards[~mask], batch.rewards[~mask])
    assert torch.equal(out.index[~mask], torch.full(((~mask).sum(),), -1))
    assert torch.equal(out.batch.tasks[mask], batch.tasks[out.index[mask]])
    for i in torch.nonzero(mask).flatten().tolist():
        one = {POS: batch.fields[POS][i : i + 1]}
        want = GOAL.reward(one, out.batch.tasks[i : i + 1])[0, 0]
        torch.testing.assert_close(out.batch.rewards[i], want, rtol=1e-12, atol=0)


def test_fraction_subsets_cover_every_row() -> None:
    batch = make_batch(torch.zeros(8, 2, dtype=torch.float64), torch.ones(8, 2).double())
    relabeler = make_relabeler("random", GOAL, fraction=0.25)
    g = generator(0)
    seen = torch.zeros(8, dtype=torch.bool)
    for _ in range(60):
        seen |= relabeler(batch, g).relabeled
    assert bool(seen.all())


def test_none_returns_the_batch_unchanged() -> None:
    batch = make_batch(torch.ones(4, 2).double(), torch.zeros(4, 2).double())
    out = make_relabeler("none", GOAL)(batch, generator(0))
    assert out.batch is batch and not bool(out.relabeled.any())
    rows = torch.tensor([1, 3])
    assert torch.equal(Unchanged().draw(_ctx(batch), rows).tasks, batch.tasks[rows])


def _ctx(batch: Batch):
    from hipi_offline.rl.relabel import Context

    return Context(batch, GOAL, generator(0), 1.0)


def episodes_table() -> tuple[EpisodeTable, list[torch.Tensor]]:
    lengths = [4, 1, 6]
    positions = [
        torch.tensor([[10.0 * e + t, -t] for t in range(n)], dtype=torch.float64)
        for e, n in enumerate(lengths)
    ]
    actions = [
        torch.full((n, 2), 0.1 * (e + 1), dtype=torch.float64) for e, n in enumerate(lengths)
    ]
    table = EpisodeTable(
        [{POS: p, "steps/actions": a} for p, a in zip(positions, actions, strict=True)]
    )
    return table, positions


def her_batch(family, task_dim: int = 2) -> tuple[Batch, EpisodeTable, list[torch.Tensor]]:
    table, positions = episodes_table()
    episodes = torch.tensor([0, 0, 1, 2, 2, 2])
    steps = torch.tensor([0, 3, 0, 1, 4, 5])
    fields = table.step_fields(episodes, steps, [POS, "steps/actions"])
    tasks = torch.full((6, task_dim), 50.0, dtype=torch.float64)
    if task_dim == 3:
        tasks[:, 2] = torch.arange(1, 7, dtype=torch.float64)
    batch = Batch(
        obs=torch.zeros(6, 1, dtype=torch.float64),
        actions=fields["steps/actions"],
        rewards=family.reward(fields, tasks).diagonal().clone(),
        next_obs=torch.zeros(6, 1, dtype=torch.float64),
        discounts=torch.ones(6, dtype=torch.float64),
        tasks=tasks,
        fields=fields,
        episodes=episodes,
        steps=steps,
        lengths=table.lengths[episodes],
    )
    return batch, table, positions


def test_her_final_relabels_to_the_episode_final_goal() -> None:
    batch, table, positions = her_batch(GOAL)
    out = make_relabeler("her-final", GOAL)(batch, generator(0), lookup=table)
    want = torch.stack([positions[e][-1] for e in batch.episodes.tolist()])
    assert torch.equal(out.batch.tasks, want)
    assert bool(out.relabeled.all()) and bool((out.index == -1).all())
    torch.testing.assert_close(
        out.batch.rewards, GOAL.reward(batch.fields, want).diagonal(), rtol=1e-12, atol=0
    )
    # the final step's own transition reaches its goal exactly
    assert float(out.batch.rewards[1]) == 0.0 and float(out.batch.rewards[5]) == 0.0


def test_her_future_draws_a_uniform_later_step_of_the_same_episode() -> None:
    batch, table, positions = her_batch(GOAL)
    relabeler = make_relabeler("her-future", GOAL)
    g = generator(3)
    draws = 4000
    counts = [np.zeros(int(n - t)) for n, t in zip(batch.lengths, batch.steps, strict=True)]
    for _ in range(draws):
        out = relabeler(batch, g, lookup=table)
        for i, (e, t) in enumerate(zip(batch.episodes.tolist(), batch.steps.tolist(), strict=True)):
            later = positions[e][t:]
            hit = torch.nonzero((later == out.batch.tasks[i]).all(dim=1)).flatten()
            assert hit.numel() == 1  # a goal of this episode at step t or after
            counts[i][int(hit)] += 1
    torch.testing.assert_close(
        out.batch.rewards, GOAL.reward(batch.fields, out.batch.tasks).diagonal(), rtol=1e-12, atol=0
    )
    stat = sum(chi_square(c, np.full(len(c), 1 / len(c))) for c in counts if len(c) > 1)
    dof = sum(len(c) - 1 for c in counts)
    assert stat < chi2.isf(FALSE_FAILURE, df=dof)
    assert counts[1].tolist() == [draws] and counts[5].tolist() == [draws]


def test_her_keeps_a_sampled_margin_and_works_on_target_families() -> None:
    family = GoalFamily(field=POS, margin="sampled")
    batch, table, positions = her_batch(family, task_dim=3)
    out = make_relabeler("her-final", family)(batch, generator(0), lookup=table)
    assert torch.equal(out.batch.tasks[:, 2], batch.tasks[:, 2])
    assert torch.equal(
        out.batch.tasks[:, :2], torch.stack([positions[e][-1] for e in [0, 0, 1, 2, 2, 2]])
    )
    target = TargetFamily(feature=POS, dims=(0,), ctrl_cost=0.5)
    batch, table, positions = her_batch(target, task_dim=1)
    out = make_relabeler("her-final", target, fraction=0.5)(batch, generator(1), lookup=table)
    rows = out.relabeled
    assert int(rows.sum()) == 3
    want = target.reward(batch.fields, out.batch.tasks).diagonal()
    torch.testing.assert_close(
        out.batch.rewards, torch.where(rows, want, batch.rewards), rtol=1e-12, atol=0
    )
    assert bool((out.batch.rewards[rows] <= -0.5 * 2 * 0.01).all())  # the control cost stays


def test_registry_names() -> None:
    assert sorted(STRATEGIES) == ["her-final", "her-future", "hipi", "none", "random"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "hipii"},
            "--relabel: unknown strategy 'hipii' "
            "(choose from hipi, random, none, her-final, her-future)",
        ),
        (
            {"name": "her-final", "family": LinearFamily(("steps/infos/speed",))},
            "--relabel: her-final needs a goal task family (goal or target), "
            "the tasks are a linear family",
        ),
        (
            {"name": "her-future", "family": LinearFamily(("steps/infos/speed",))},
            "--relabel: her-future needs a goal",
        ),
        ({"fraction": -0.1}, "--relabel-fraction: expected a number in [0, 1], got -0.1"),
        ({"fraction": 1.5}, "--relabel-fraction: expected a number in [0, 1], got 1.5"),
        ({"fraction": float("nan")}, "--relabel-fraction: expected a number in [0, 1], got nan"),
        ({"fraction": "half"}, "--relabel-fraction: expected a number in [0, 1], got 'half'"),
        ({"fraction": True}, "--relabel-fraction: expected a number in [0, 1], got True"),
        ({"temperature": 0.0}, "--relabel-temperature: expected a positive finite number, got 0.0"),
        ({"temperature": -2}, "--relabel-temperature: expected a positive finite number, got -2.0"),
        (
            {"temperature": math.inf},
            "--relabel-temperature: expected a positive finite number, got inf",
        ),
        (
            {"temperature": "hot"},
            "--relabel-temperature: expected a positive number or 'alpha', got 'hot'",
        ),
    ],
)
def test_bad_options_give_one_line(kwargs: dict, message: str) -> None:
    args = {"name": "hipi", "family": GOAL, **kwargs}
    name, family = args.pop("name"), args.pop("family")
    with pytest.raises(InputError) as err:
        make_relabeler(name, family, **args)
    text = str(err.value)
    assert "\n" not in text and text.startswith(message)


def test_bad_runtime_temperature_is_one_line() -> None:
    batch = make_batch(torch.zeros(3, 2).double(), torch.zeros(3, 2).double())
    with pytest.raises(InputError, match=r"^--relabel-temperature: expected a positive finite"):
        make_relabeler("hipi", GOAL)(
            batch, generator(0), q_values=lambda c: torch.zeros(3, 3), temperature=float("nan")
        )


def test_hipi_temperature_alpha_is_given_per_call() -> None:
    batch = make_batch(torch.zeros(3, 2).double(), torch.eye(3)[:, :2].double())
    relabeler = make_relabeler("hipi", GOAL)
    assert relabeler.temperature is None
    q = torch.arange(9.0, dtype=torch.float64).reshape(3, 3)
    with pytest.raises(ValueError, match="temperature"):
        relabeler(batch, generator(0), q_values=lambda c: q)
    out = relabeler(batch, generator(0), q_values=lambda c: q, temperature=2.0)
    want, _ = numpy_alg1(q.numpy(), 2.0, None)
    np.testing.assert_allclose(out.log_probs.exp().numpy(), want, rtol=1e-12)
    # random and HER need no temperature
    assert bool(make_relabeler("random", GOAL)(batch, generator(0)).relabeled.all())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_q_values_are_refused(bad: float) -> None:
    batch = make_batch(torch.zeros(3, 2).double(), torch.eye(3)[:, :2].double())
    q = torch.zeros(3, 3, dtype=torch.float64)
    q[1, 2] = bad
    with pytest.raises(FloatingPointError, match="critics diverged"):
        make_relabeler("hipi", GOAL, temperature=1.0)(batch, generator(0), q_values=lambda c: q)


def test_minus_infinity_q_values_get_probability_zero() -> None:
    """Eq. 9's reward: -inf where the goal was missed; only the reached goals remain."""
    batch = make_batch(torch.zeros(3, 2).double(), torch.eye(3)[:, :2].double())
    q = torch.tensor([[0.0, -math.inf, 0.0], [-math.inf, 0.0, -math.inf], [0.0] * 3])
    out = make_relabeler("hipi", GOAL, temperature=1.0)(batch, generator(0), q_values=lambda c: q)
    probs = out.log_probs.exp()
    assert float(probs[0, 1]) == 0.0 and float(probs[1, 0]) == 0.0 == float(probs[1, 2])
    assert out.index[1] == 1 and out.index[0] != 1
