"""Task-conditioned soft actor-critic (Haarnoja et al. 2018b) in torch.

The actor pi(a | s, psi) is the BC policy's :class:`~hipi_offline.bc.policy.BCNetwork`
with its tanh-Gaussian head, so an RL actor is evaluated, saved and loaded like a
BC policy. Each twin critic Q(s, a, psi) is the same network class with a
one-output deterministic head on the input [s, a]: its observation statistics
cover s and a (a is standardized by the action range). Target critics follow by
Polyak averaging; the entropy temperature alpha is learned toward a target
entropy (by default -act_dim in the action box scaled to [-1, 1]). :meth:`SAC.pair_q`
evaluates the B x K (transition, task) pairs in one batched forward, for HIPI relabeling::

    sac = SAC(obs_dim, act_dim, task_dim, low, high, SACConfig(), seed=0)
    stats = sac.update(batch)                      # one gradient step on each loss
    q = sac.pair_q(batch.obs, batch.actions, batch.tasks)   # [B, B], min of twins
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from hipi_offline.bc.policy import HALF_RANGE_FLOOR, BCNetwork
from hipi_offline.errors import InputError
from hipi_offline.rl.batch import Batch, EpisodeLookup
from hipi_offline.rl.relabel import Relabeled, Relabeler

_LOG_2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
PAIR_CHUNK_CPU = 2048
"""Rows per piece of :meth:`SAC.pair_q` on the CPU: at width 256 a piece's activations
(2 MiB) stay in cache (B = K = 256 on one thread: 0.33 s instead of 0.68 s)."""


@dataclass(frozen=True)
class SACConfig:
    """SAC's hyperparameters (the defaults are SAC v2's)."""

    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    gamma: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 1.0
    target_entropy: float | None = None
    """None: -act_dim for the action box scaled to [-1, 1]^act_dim (SAC v2's target, made
    for that box), that is -act_dim + sum_i log(half-width_i) in environment units, the
    units of the log-densities. A plain -act_dim is out of reach for a small box (the
    point mass's +-0.1: its largest entropy is 2 log 0.2 = -3.2) and alpha then only grows."""
    learn_alpha: bool = True

    def __post_init__(self) -> None:
        for name, low, high in (
            ("gamma", 0.0, 1.0),
            ("tau", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and low <= value <= high):
                raise InputError(f"--{name}: expected a number in [{low:g}, {high:g}], got {value}")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "init_alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                flag = name.replace("_", "-")
                raise InputError(f"--{flag}: expected a positive finite number, got {value}")
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise InputError(
                f"--target-entropy: expected a finite number, got {self.target_entropy}"
            )
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise InputError(f"--hidden: expected positive layer widths, got {list(self.hidden)}")


class SAC(nn.Module):
    """Actor, twin critics, their targets and log alpha, with one optimizer each."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        task_dim: int,
        action_low: np.ndarray | Tensor,
        action_high: np.ndarray | Tensor,
        config: SACConfig | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if task_dim < 1:
            raise ValueError("SAC: task_dim must be at least 1 (a task-conditioned learner)")
        self.config = config = config or SACConfig()
        self.obs_dim, self.act_dim, self.task_dim = obs_dim, act_dim, task_dim
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float64)).reshape(act_dim)
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float64)).reshape(act_dim)
        if not bool((high > low).all()):
            raise InputError("action bounds: every high must exceed its low")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = BCNetwork(
                obs_dim, act_dim, task_dim, config.hidden, config.activation, head="gaussian"
            )
            self.critics = nn.ModuleList(
                BCNetwork(
                    obs_dim + act_dim,
                    1,
                    task_dim,
                    config.hidden,
                    config.activation,
                    head="deterministic",
                )
                for _ in range(2)
            )
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.init_alpha)))
        self.to(device=device, dtype=dtype)
        with torch.no_grad():
            self.actor.act_low.copy_(low)
            self.actor.act_high.copy_(high)
            center = 0.5 * (high + low)
            half = (0.5 * (high - low)).clamp(min=HALF_RANGE_FLOOR)
            for critic in self.critics:
                critic.obs_mean[obs_dim:] = center
                critic.obs_std[obs_dim:] = half
        self.target_entropy = (
            float(torch.log(half.double()).sum()) - act_dim
            if config.target_entropy is None
            else float(config.target_entropy)
        )
        self.targets = copy.deepcopy(self.critics)
        self.targets.requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=config.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        self.generator = torch.Generator(device=self.log_alpha.device)
        self.generator.manual_seed(seed)
        self.updates = 0

    # ------------------------------------------------------------ statistics
    def set_observation_normalization(self, mean: Tensor, std: Tensor) -> None:
        """Standardize observations by ``mean``/``std`` [obs_dim] in every network."""
        for net in (self.actor, *self.critics, *self.targets):
            net.obs_mean[: self.obs_dim] = torch.as_tensor(mean).to(net.obs_mean)
            net.obs_std[: self.obs_dim] = torch.as_tensor(std).to(net.obs_std)

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    # ------------------------------------------------------------ actor
    def sample(
        self, obs: Tensor, task: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """A reparameterized action [B, act_dim] (environment units) and its log-density
        log pi(a | s, psi) [B] (tanh and action-range corrections included)."""
        mu, log_std = self.actor.gaussian(obs, task)
        if noise is None:
            noise = torch.randn(
                mu.shape, generator=self.generator, device=mu.device, dtype=mu.dtype
            )
        u = mu + log_std.exp() * noise
        log_u = (-0.5 * noise.pow(2) - log_std - _LOG_SQRT_2PI).sum(dim=1)
        # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|
        log_jac = (2.0 * (_LOG_2 - u - nn.functional.softplus(-2.0 * u))).sum(dim=1)
        center = 0.5 * (self.actor.act_high + self.actor.act_low)
        half = (0.5 * (self.actor.act_high - self.actor.act_low)).clamp(min=HALF_RANGE_FLOOR)
        action = center + half * torch.tanh(u)
        return action, log_u - log_jac - torch.log(half).sum()

    @torch.no_grad()
    def act(self, obs: Tensor, task: Tensor, deterministic: bool = False) -> Tensor:
        """Actions [B, act_dim]: the mean action, or a draw from the policy."""
        if deterministic:
            return self.actor.mean_action(obs, task)
        return self.sample(obs, task)[0]

    # ------------------------------------------------------------ critics
    @staticmethod
    def _q(critics: nn.ModuleList, obs: Tensor, action: Tensor, task: Tensor) -> Tensor:
        """[2, B]: both critics' Q(s, a, psi)."""
        x = torch.cat([obs, action], dim=1)
        return torch.stack([c(x, task).squeeze(1) for c in critics])

    def q_values(self, obs: Tensor, action: Tensor, task: Tensor) -> Tensor:
        """[2, B]: the twin critics on the given rows (with gradients)."""
        return self._q(self.critics, obs, action, task)

    @torch.no_grad()
    def pair_q(
        self, obs: Tensor, actions: Tensor, tasks: Tensor, chunk: int | None = None
    ) -> Tensor:
        """min_k Q_k(s_i, a_i, psi_j) [B, K] for every transition i and task j, without
        Python loops over pairs: the first layer is applied to the B transitions and the
        K tasks apart (its input is their concatenation) and broadcast-added; the rest
        of each critic runs as one batched forward of B*K rows (in pieces of at most
        ``chunk`` rows; default :data:`PAIR_CHUNK_CPU` on the CPU, where pieces that stay
        in cache halve the time of B = K = 256, and 1 << 16 on a GPU)."""
        if chunk is None:
            chunk = PAIR_CHUNK_CPU if obs.device.type == "cpu" else 1 << 16
        size, count = obs.shape[0], tasks.shape[0]
        x = torch.cat([obs, actions], dim=1)
        rows_per = max(1, chunk // max(count, 1))
        parts = []
        for critic in self.critics:
            first = critic.trunk[0]
            width = x.shape[1]
            hx = torch.nn.functional.linear(
                (x - critic.obs_mean) / critic.obs_std, first.weight[:, :width], first.bias
            )
            ht = ((tasks - critic.task_mean) / critic.task_std) @ first.weight[:, width:].T
            out = []
            for start in range(0, size, rows_per):
                h = (hx[start : start + rows_per, None, :] + ht[None, :, :]).flatten(0, 1)
                q = critic.out(critic.trunk[1:](h))
                out.append(q.reshape(-1, count))
            parts.append(torch.cat(out) if out else x.new_zeros(0, count))
        return torch.minimum(parts[0], parts[1])

    @torch.no_grad()
    def td_target(self, batch: Batch) -> Tensor:
        """r + gamma * d * (min target Q(s', a') - alpha log pi(a' | s')), a' ~ pi (draws
        from the learner's generator, as :meth:`update` does first)."""
        next_action, next_log_prob = self.sample(batch.next_obs, batch.tasks)
        next_q = self._q(self.targets, batch.next_obs, next_action, batch.tasks).min(dim=0).values
        soft = next_q - self.alpha * next_log_prob
        return batch.rewards.to(soft) + self.config.gamma * batch.discounts.to(soft) * soft

    # ------------------------------------------------------------ learning
    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One step on the critic, actor and temperature losses, then the Polyak step
        of the target critics. Returns detached 0-d tensors (no device sync)."""
        target = self.td_target(batch)
        q = self.q_values(batch.obs, batch.actions, batch.tasks)
        critic_loss = 0.5 * (q - target).pow(2).mean(dim=1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        alpha = self.alpha
        self.critics.requires_grad_(False)
        action, log_prob = self.sample(batch.obs, batch.tasks)
        q_pi = self.q_values(batch.obs, action, batch.tasks).min(dim=0).values
        actor_loss = (alpha * log_prob - q_pi).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.critics.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        if self.config.learn_alpha:
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()

        self.polyak()
        self.updates += 1
        return {
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "alpha_loss": alpha_loss.detach(),
            "alpha": self.alpha,
            "entropy": -log_prob.detach().mean(),
            "q_mean": q.detach().mean(),
        }

    @torch.no_grad()
    def polyak(self) -> None:
        """target <- target + tau (online - target), parameters only (statistics copied)."""
        online = list(self.critics.parameters())
        torch._foreach_lerp_(list(self.targets.parameters()), online, self.config.tau)
        for mine, theirs in zip(self.targets.buffers(), self.critics.buffers(), strict=True):
            mine.copy_(theirs)


def relabeled_update(
    sac: SAC,
    relabeler: Relabeler,
    batch: Batch,
    generator: torch.Generator,
    lookup: EpisodeLookup | None = None,
) -> tuple[dict[str, Tensor], Relabeled]:
    """Alg. 2's inner step: relabel the minibatch (hipi with the critics' pair Q-values,
    at the learner's alpha unless the relabeler fixes a temperature), then one SAC
    update on the relabeled batch. The stats gain ``relabeled`` (the fraction of rows
    redrawn) and ``own_task`` (the fraction of redrawn rows that drew their own
    commanded task; NaN for HER or when no row was redrawn)."""
    temperature = float(sac.alpha) if relabeler.temperature is None else None
    q_values = None
    if relabeler.name == "hipi":

        def q_values(candidates: Tensor) -> Tensor:
            return sac.pair_q(batch.obs, batch.actions, candidates)

    out = relabeler(batch, generator, q_values=q_values, lookup=lookup, temperature=temperature)
    stats = sac.update(out.batch)
    rows = torch.arange(batch.size, device=out.index.device)
    redrawn = out.relabeled & (out.index >= 0)
    own = (out.index == rows) & redrawn
    stats["relabeled"] = out.relabeled.to(torch.float64).mean()
    stats["own_task"] = own.sum().to(torch.float64) / redrawn.sum().to(torch.float64)
    return stats, out
