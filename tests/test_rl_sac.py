"""Task-conditioned SAC (hipi_offline.rl.sac): the B x K pair Q-values, the tanh-Gaussian
log-density against the BC network's, one update's effects (critic TD error, exact
Polyak step, temperature direction), seeded determinism, a task-conditioned bandit
learned with HIPI relabeling, and one-line option errors.

Float64 networks are compared with rtol 1e-12 where the math is the same in another
order, and bit for bit only for the same computation repeated (determinism)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hipi_offline.errors import InputError
from hipi_offline.rl.batch import Batch
from hipi_offline.rl.relabel import make_relabeler
from hipi_offline.rl.sac import SAC, SACConfig, relabeled_update
from hipi_offline.tasks.families import TargetFamily

F64 = torch.float64
SMALL = SACConfig(hidden=(32, 32))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_sac(seed: int = 0, config: SACConfig = SMALL, dtype=F64) -> SAC:
    return SAC(3, 2, 2, [-1.0, -2.0], [1.0, 0.5], config, seed=seed, dtype=dtype)


def make_batch(size: int = 16, seed: int = 0, dtype=F64) -> Batch:
    g = torch.Generator().manual_seed(seed)
    actions = torch.rand(size, 2, generator=g, dtype=dtype) * torch.tensor(
        [2.0, 2.5]
    ) - torch.tensor([1.0, 2.0])
    return Batch(
        obs=torch.randn(size, 3, generator=g, dtype=dtype),
        actions=actions.to(dtype),
        rewards=torch.randn(size, generator=g, dtype=dtype),
        next_obs=torch.randn(size, 3, generator=g, dtype=dtype),
        discounts=(torch.rand(size, generator=g) > 0.2).to(dtype),
        tasks=torch.randn(size, 2, generator=g, dtype=dtype),
        fields={"steps/actions": actions},
    )


def test_pair_q_is_the_min_of_twins_on_every_pair() -> None:
    sac = make_sac()
    batch = make_batch(7)
    tasks = torch.randn(5, 2, dtype=F64)
    pair = sac.pair_q(batch.obs, batch.actions, tasks)
    assert pair.shape == (7, 5)
    want = torch.empty(7, 5, dtype=F64)
    for j in range(5):
        q = sac.q_values(batch.obs, batch.actions, tasks[j].expand(7, 2)).detach()
        want[:, j] = torch.minimum(q[0], q[1])
    torch.testing.assert_close(pair, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        sac.pair_q(batch.obs, batch.actions, tasks, chunk=11), want, rtol=1e-12, atol=1e-12
    )


def test_sample_log_density_matches_the_bc_network() -> None:
    sac = make_sac()
    batch = make_batch(32)
    action, log_prob = sac.sample(batch.obs, batch.tasks)
    low, high = torch.tensor([-1.0, -2.0], dtype=F64), torch.tensor([1.0, 0.5], dtype=F64)
    assert bool(((action > low) & (action < high)).all())
    want = sac.actor.log_prob(batch.obs, batch.tasks, action.detach())
    torch.testing.assert_close(log_prob.detach(), want, rtol=1e-8, atol=1e-8)
    mean = sac.act(batch.obs, batch.tasks, deterministic=True)
    torch.testing.assert_close(mean, sac.actor.mean_action(batch.obs, batch.tasks))


def test_update_reduces_the_td_error_on_a_fixed_batch() -> None:
    sac = make_sac(config=SACConfig(hidden=(32, 32), critic_lr=1e-3))
    batch = make_batch(64)
    state = sac.generator.get_state()
    target = sac.td_target(batch)
    sac.generator.set_state(state)  # update draws the same next actions first
    before = (sac.q_values(batch.obs, batch.actions, batch.tasks).detach() - target).pow(2)
    stats = sac.update(batch)
    torch.testing.assert_close(
        stats["critic_loss"], 0.5 * before.mean(dim=1).sum(), rtol=1e-12, atol=0
    )
    after = (sac.q_values(batch.obs, batch.actions, batch.tasks).detach() - target).pow(2)
    assert float(after.mean()) < float(before.mean())
    assert set(stats) == {"critic_loss", "actor_loss", "alpha_loss", "alpha", "entropy", "q_mean"}


def test_target_networks_move_by_exactly_tau() -> None:
    tau = 0.05
    sac = make_sac(config=SACConfig(hidden=(32, 32), tau=tau))
    batch = make_batch()
    for _ in range(2):  # after the first step targets and critics differ
        old = [p.detach().clone() for p in sac.targets.parameters()]
        sac.update(batch)
        for before, target, online in zip(
            old, sac.targets.parameters(), sac.critics.parameters(), strict=True
        ):
            torch.testing.assert_close(
                target, before + tau * (online - before), rtol=1e-12, atol=1e-15
            )
    moved = [
        not torch.equal(t, o)
        for t, o in zip(sac.targets.parameters(), sac.critics.parameters(), strict=True)
    ]
    assert all(moved)


@pytest.mark.parametrize(("target_entropy", "sign"), [(50.0, 1), (-50.0, -1)])
def test_temperature_moves_toward_the_target_entropy(target_entropy: float, sign: int) -> None:
    sac = make_sac(config=SACConfig(hidden=(32, 32), target_entropy=target_entropy))
    batch = make_batch()
    before = float(sac.alpha)
    stats = sac.update(batch)
    assert sign * (float(sac.alpha) - before) > 0
    # the entropy lies between the two targets: raise alpha below the target, lower above
    assert -50.0 < float(stats["entropy"]) < 50.0
    frozen = make_sac(
        config=SACConfig(hidden=(32, 32), target_entropy=target_entropy, learn_alpha=False)
    )
    frozen.update(batch)
    assert float(frozen.alpha) == 1.0


@pytest.mark.parametrize("half", [0.1, 1.0, 3.0])
def test_default_target_entropy_is_minus_act_dim_in_the_unit_box(half: float) -> None:
    """-act_dim in the [-1, 1] box is -act_dim + sum log(half-width) in environment
    units; a fresh policy (std ~ 1 before tanh) sits above it for any box width, so the
    temperature goes down first instead of growing without bound in a small box."""
    sac = SAC(
        3, 2, 2, [-half, -2 * half], [half, 0.0], SACConfig(hidden=(32, 32)), seed=0, dtype=F64
    )
    expected = math.log(half) + math.log(half) - 2.0  # both half-widths are `half`
    assert sac.target_entropy == pytest.approx(expected, rel=1e-12, abs=1e-12)
    before = float(sac.alpha)
    stats = sac.update(make_batch())
    assert float(stats["entropy"]) > sac.target_entropy
    assert float(sac.alpha) < before


def test_updates_are_deterministic_given_the_seed() -> None:
    runs = []
    for seed in (4, 4, 5):
        sac = make_sac(seed=seed)
        for step in range(3):
            sac.update(make_batch(seed=step))
        runs.append(torch.cat([p.detach().flatten() for p in sac.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.slow
def test_task_conditioned_bandit_learns_per_task_actions_with_hipi() -> None:
    """One-step episodes, reward -|a - psi| (a target family on the action): from
    uniform random actions under random commanded tasks, 300 HIPI-relabeled SAC
    updates (half of each batch relabeled) learn to act differently per task."""
    g = torch.Generator().manual_seed(0)
    family = TargetFamily(feature="steps/actions")
    count = 4096
    actions = torch.rand(count, 1, generator=g) * 2 - 1
    tasks = torch.rand(count, 1, generator=g) * 1.6 - 0.8
    rewards = family.reward({"steps/actions": actions.double()}, tasks.double()).diagonal().float()
    config = SACConfig(
        hidden=(64, 64), actor_lr=3e-3, critic_lr=3e-3, alpha_lr=3e-3, init_alpha=0.1
    )
    sac = SAC(1, 1, 1, [-1.0], [1.0], config, seed=0)
    relabeler = make_relabeler("hipi", family, fraction=0.5)  # at the learner's alpha
    rng = torch.Generator().manual_seed(1)
    zeros = torch.zeros(64, 1)
    for _ in range(300):
        rows = torch.randint(0, count, (64,), generator=rng)
        batch = Batch(
            obs=zeros,
            actions=actions[rows],
            rewards=rewards[rows],
            next_obs=zeros,
            discounts=torch.zeros(64),
            tasks=tasks[rows],
            fields={"steps/actions": actions[rows]},
        )
        stats, out = relabeled_update(sac, relabeler, batch, rng)
        assert int(out.relabeled.sum()) == 32 and float(stats["relabeled"]) == 0.5
    probe = torch.tensor([[-0.6], [0.0], [0.6]])
    mean = sac.act(torch.zeros(3, 1), probe, deterministic=True).flatten()
    assert float(mean[0]) < -0.3 and float(mean[2]) > 0.3
    assert float(mean[0]) < float(mean[1]) < float(mean[2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": 1.5}, "--gamma: expected a number in [0, 1], got 1.5"),
        ({"tau": -0.1}, "--tau: expected a number in [0, 1], got -0.1"),
        ({"actor_lr": 0.0}, "--actor-lr: expected a positive finite number, got 0.0"),
        ({"critic_lr": float("nan")}, "--critic-lr: expected a positive finite number, got nan"),
        ({"init_alpha": -1.0}, "--init-alpha: expected a positive finite number, got -1.0"),
        ({"target_entropy": float("inf")}, "--target-entropy: expected a finite number, got inf"),
        ({"hidden": ()}, "--hidden: expected positive layer widths, got []"),
    ],
)
def test_bad_config_gives_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError) as err:
        SACConfig(**kwargs)
    assert str(err.value) == message


def test_bad_action_bounds_give_one_line() -> None:
    with pytest.raises(InputError, match=r"^action bounds: every high must exceed its low$"):
        SAC(3, 2, 2, [-1.0, 1.0], [1.0, 1.0], SMALL)
    assert np.isfinite(float(make_sac().alpha))


@pytest.mark.parametrize("temperature", ["alpha", 0.3])
def test_relabeled_update_is_relabel_then_update(temperature) -> None:
    """relabeled_update == hipi relabeling with pair_q at alpha (or the fixed
    temperature), then update, on the same generators."""
    family = TargetFamily(feature="steps/actions")
    relabeler = make_relabeler("hipi", family, fraction=0.75, temperature=temperature)
    batch = make_batch(12)
    one, two = make_sac(seed=3), make_sac(seed=3)
    for step in range(2):
        stats, out = relabeled_update(one, relabeler, batch, torch.Generator().manual_seed(step))
        t = float(two.alpha) if temperature == "alpha" else None
        q = lambda c, s=two: s.pair_q(batch.obs, batch.actions, c)  # noqa: E731
        want = relabeler(batch, torch.Generator().manual_seed(step), q_values=q, temperature=t)
        two.update(want.batch)
        assert torch.equal(out.batch.tasks, want.batch.tasks)
        assert torch.equal(out.batch.rewards, want.batch.rewards)
        assert int(out.relabeled.sum()) == 9
        own = (out.index == torch.arange(12)) & out.relabeled
        assert float(stats["own_task"]) == int(own.sum()) / 9
    for a, b in zip(one.parameters(), two.parameters(), strict=True):
        assert torch.equal(a, b)
