"""RL training throughput on the point mass: train-rl against a bare torch SAC loop and SB3.

One process times, side by side, online SAC on the ``pointmass`` domain (goals from the
``pointmass-goal`` prior, reward -||p - g||, 50-step episodes) with the same networks
(actor and twin critics, ``--hidden`` 256,256, relu), batch size (256), random first
``--start-steps`` (1000), one gradient update per environment step after them, the
same learning rates, gamma, tau, initial temperature, and one torch thread:

* **train-rl none / train-rl hipi**: ``hipi_offline.rl.train.train_rl`` end to end
  (replay mirror, rewards by the task family, relabeling of ``--relabel-fraction`` of
  each minibatch, metrics rows, the store appended at every episode end, checkpoints
  every 5000 steps and at the end);
* **bare**: a torch SAC loop written here (:class:`BareSAC`, :class:`Ring`): the same
  actor and critic architectures as ``hipi_offline.rl.sac.SAC`` (tanh-Gaussian actor,
  twin critics on [s, a standardized by the action range, psi], target critics by
  Polyak averaging, learned log alpha toward -act_dim entropy, Adam), a preallocated
  numpy ring buffer, no store, relabeling, metrics or checkpoints;
* **sb3**: Stable-Baselines3's ``SAC`` (``MlpPolicy``, ``net_arch`` = hidden,
  ``learning_starts`` = start steps, ``train_freq=1``, ``gradient_steps=1``,
  ``ent_coef="auto_<init alpha>"``, ``device="cpu"``) on the point mass wrapped as a
  ``gymnasium.Env`` whose observation is [position, goal]. Optional: install it with
  ``pip install -c constraints.txt -e '.[bench]'`` (or ``pip install -c constraints.txt
  stable-baselines3``); without it the row is skipped with a one-line note.

For every run: the wall time of the whole run (set-up excluded for SB3 and the bare
loop, included for train-rl), the main thread's CPU time, and the two phases (env
stepping, with the action draw and the buffer write; the update phase, with the
minibatch draw and any relabeling). Env steps/s are over the whole run, updates/s over
the update phase. ``--repeats`` rounds run every method back to back (order rotated),
and each method's best round is reported. Run ``python benchmarks/rl_throughput.py``;
see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import datetime as dt
import io
import json
import math
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_machine, when imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_machine import cpu_description, load_average, package_versions  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from hipi_offline.bc import parse_hidden  # noqa: E402
from hipi_offline.bc.policy import HALF_RANGE_FLOOR, LOG_STD_MAX, LOG_STD_MIN  # noqa: E402
from hipi_offline.device import torch_threads  # noqa: E402
from hipi_offline.envs.pointmass import PointMassEnv  # noqa: E402
from hipi_offline.rl.config import RLConfig  # noqa: E402
from hipi_offline.rl.train import train_rl  # noqa: E402
from hipi_offline.tasks.spec import load_task_spec  # noqa: E402

ENV = "pointmass"
TASKS = "pointmass-goal"
GOAL_BARE = 0.8
"""train-rl should reach at least this fraction of the bare loop's env steps/s."""
METHODS = ("bare", "train-rl none", "train-rl hipi", "sb3")
_LOG_2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class Setting:
    """The hyperparameters every method shares (train-rl's defaults)."""

    steps: int = 20_000
    start_steps: int = 1000
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    init_alpha: float = 1.0
    relabel_fraction: float = 0.5
    seed: int = 0
    threads: int = 1


# ---------------------------------------------------------------- the bare loop
def mlp(inputs: int, outputs: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """Linear-relu layers of the ``hidden`` widths, then a linear output layer."""
    layers: list[nn.Module] = []
    width = inputs
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


class BareSAC(nn.Module):
    """SAC with twin critics, target critics and a learned temperature, in plain torch.

    The actor maps [s, psi] to the mean and the squashed log-std of a tanh-Gaussian
    (log_std = MIN + (MAX - MIN) (tanh(raw) + 1) / 2) scaled to the action range; each
    critic maps [s, (a - center) / half, psi] to Q. The same math as
    ``hipi_offline.rl.sac.SAC`` with identity observation statistics (train-rl's)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        task_dim: int,
        low: np.ndarray,
        high: np.ndarray,
        setting: Setting,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.gamma, self.tau = setting.gamma, setting.tau
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(setting.seed)
            self.actor = mlp(obs_dim + task_dim, 2 * act_dim, setting.hidden)
            self.critics = nn.ModuleList(
                mlp(obs_dim + act_dim + task_dim, 1, setting.hidden) for _ in range(2)
            )
        self.targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(setting.init_alpha)))
        self.to(dtype)
        low_t = torch.as_tensor(np.asarray(low, np.float64), dtype=dtype)
        high_t = torch.as_tensor(np.asarray(high, np.float64), dtype=dtype)
        self.center = 0.5 * (high_t + low_t)
        self.half = (0.5 * (high_t - low_t)).clamp(min=HALF_RANGE_FLOOR)
        # -act_dim in the box scaled to [-1, 1] (SB3's 'auto', which acts in that box)
        self.target_entropy = float(torch.log(self.half.double()).sum()) - act_dim
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=setting.lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=setting.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=setting.lr)
        self.generator = torch.Generator().manual_seed(setting.seed)

    def sample(self, obs: Tensor, task: Tensor) -> tuple[Tensor, Tensor]:
        """A reparameterized action [B, act_dim] and its log-density [B]."""
        mu, raw = self.actor(torch.cat([obs, task], dim=1)).chunk(2, dim=1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)
        noise = torch.randn(mu.shape, generator=self.generator, dtype=mu.dtype)
        u = mu + log_std.exp() * noise
        log_u = (-0.5 * noise.pow(2) - log_std - _LOG_SQRT_2PI).sum(dim=1)
        log_jac = (2.0 * (_LOG_2 - u - nn.functional.softplus(-2.0 * u))).sum(dim=1)
        action = self.center + self.half * torch.tanh(u)
        return action, log_u - log_jac - torch.log(self.half).sum()

    def q(self, critics: nn.ModuleList, obs: Tensor, action: Tensor, task: Tensor) -> Tensor:
        """[2, B]: both critics' Q(s, a, psi)."""
        x = torch.cat([obs, (action - self.center) / self.half, task], dim=1)
        return torch.stack([critic(x).squeeze(1) for critic in critics])

    @torch.no_grad()
    def td_target(
        self, rewards: Tensor, next_obs: Tensor, discounts: Tensor, tasks: Tensor
    ) -> Tensor:
        """r + gamma d (min target Q(s', a') - alpha log pi(a' | s')), a' ~ pi."""
        next_action, next_log_prob = self.sample(next_obs, tasks)
        next_q = self.q(self.targets, next_obs, next_action, tasks).min(dim=0).values
        soft = next_q - self.log_alpha.detach().exp() * next_log_prob
        return rewards.to(soft) + self.gamma * discounts.to(soft) * soft

    def update(
        self,
        obs: Tensor,
        actions: Tensor,
        rewards: Tensor,
        next_obs: Tensor,
        discounts: Tensor,
        tasks: Tensor,
    ) -> dict[str, Tensor]:
        """One Adam step on the critic, actor and temperature losses, then Polyak."""
        target = self.td_target(rewards, next_obs, discounts, tasks)
        q = self.q(self.critics, obs, actions, tasks)
        critic_loss = 0.5 * (q - target).pow(2).mean(dim=1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        alpha = self.log_alpha.detach().exp()
        self.critics.requires_grad_(False)
        action, log_prob = self.sample(obs, tasks)
        q_pi = self.q(self.critics, obs, action, tasks).min(dim=0).values
        actor_loss = (alpha * log_prob - q_pi).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.critics.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.targets.parameters()), list(self.critics.parameters()), self.tau
            )
        return {
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "alpha_loss": alpha_loss.detach(),
            "target": target,
        }


class Ring:
    """A preallocated ring buffer of transitions (numpy arrays, read through torch)."""

    NAMES = ("obs", "actions", "rewards", "next_obs", "discounts", "tasks")

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, task_dim: int) -> None:
        self.capacity, self.size, self.position = capacity, 0, 0
        widths = (obs_dim, act_dim, 0, obs_dim, 0, task_dim)
        self.arrays = [np.zeros((capacity, w) if w else capacity, np.float32) for w in widths]
        self.views = [torch.from_numpy(a) for a in self.arrays]

    def add(self, *row: Any) -> None:
        """One transition, in the order of :attr:`NAMES`."""
        i = self.position
        for array, value in zip(self.arrays, row, strict=True):
            array[i] = value
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, size: int, generator: torch.Generator) -> list[Tensor]:
        """``size`` transitions drawn uniformly with replacement."""
        index = torch.randint(0, self.size, (size,), generator=generator)
        return [v.index_select(0, index) for v in self.views]


def goal_reward(position: np.ndarray, goal: np.ndarray) -> float:
    """-||p - g|| in float64 (the ``pointmass-goal`` family's reward)."""
    d = np.asarray(position, np.float64) - np.asarray(goal, np.float64)
    return -math.sqrt(float(d @ d))


def run_bare(setting: Setting) -> dict[str, float]:
    """The bare loop, episodes drawn as train-rl draws them; timings and counts."""
    env = PointMassEnv()
    info = env.info
    prior = load_task_spec(TASKS).prior
    episode_steps = info.default_steps
    obs_dim, act_dim, task_dim = info.observation_dim, info.action_dim, prior.dim
    learner = BareSAC(obs_dim, act_dim, task_dim, info.action_low, info.action_high, setting)
    ring = Ring(setting.steps + episode_steps, obs_dim, act_dim, task_dim)
    generator = torch.Generator().manual_seed(setting.seed + 1)
    env_steps = episodes = updates = 0
    env_time = update_time = 0.0
    start, cpu = time.perf_counter(), time.thread_time()
    while env_steps < setting.steps:
        rng = np.random.default_rng([setting.seed, episodes])
        task = prior.sample(1, rng)[0].astype(np.float32)
        task_t = torch.from_numpy(task[None])
        tic = time.perf_counter()
        observation = env.reset(int(rng.integers(2**31)))
        for _ in range(episode_steps):
            if env_steps < setting.start_steps:
                action = rng.uniform(info.action_low, info.action_high).astype(np.float32)
            else:
                with torch.no_grad():
                    obs_t = torch.from_numpy(observation[None])
                    action = learner.sample(obs_t, task_t)[0][0].numpy()
            result = env.step(action)
            reward = goal_reward(result.fields["infos/position"], task)
            ring.add(observation, action, reward, result.observation, 1.0, task)
            observation = result.observation
            env_steps += 1
            toc = time.perf_counter()
            env_time += toc - tic
            tic = toc
            if ring.size >= setting.batch_size and env_steps >= setting.start_steps:
                learner.update(*ring.sample(setting.batch_size, generator))
                updates += 1
                toc = time.perf_counter()
                update_time += toc - tic
                tic = toc
        episodes += 1
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.thread_time() - cpu,
        "env_seconds": env_time,
        "update_seconds": update_time,
        "env_steps": env_steps,
        "updates": updates,
    }


# ---------------------------------------------------------------- train-rl
def run_train_rl(setting: Setting, relabel: str, out: Path) -> dict[str, float]:
    """One fresh ``train_rl`` run (its set-up included in the wall time)."""
    config = RLConfig(
        out=out,
        relabel=relabel,
        relabel_fraction=setting.relabel_fraction,
        steps=setting.steps,
        start_steps=setting.start_steps,
        batch_size=setting.batch_size,
        hidden=setting.hidden,
        gamma=setting.gamma,
        tau=setting.tau,
        lr=setting.lr,
        init_alpha=setting.init_alpha,
        seed=setting.seed,
        threads=setting.threads,
        progress=False,
        overwrite=True,
    )
    start, cpu = time.perf_counter(), time.thread_time()
    summary = train_rl(ENV, config)
    seconds, cpu_seconds = time.perf_counter() - start, time.thread_time() - cpu
    shutil.rmtree(out, ignore_errors=True)
    nan = math.nan
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "env_seconds": summary.env_steps / summary.env_steps_per_s if summary.env_steps else nan,
        "update_seconds": summary.updates / summary.updates_per_s if summary.updates else nan,
        "env_steps": summary.env_steps,
        "updates": summary.updates,
        "reported_env_steps_per_s": summary.env_steps_per_s,
        "reported_updates_per_s": summary.updates_per_s,
    }


# ---------------------------------------------------------------- Stable-Baselines3
def goal_env_class() -> type:
    """The point mass as a ``gymnasium.Env``: observation [position, goal] (float32
    [4]), reward -||p - g||, truncated after the environment's default steps."""
    import gymnasium as gym

    class PointMassGoalEnv(gym.Env):  # type: ignore[type-arg]
        metadata: dict[str, Any] = {"render_modes": []}

        def __init__(self) -> None:
            self.env = PointMassEnv()
            info = self.env.info
            self.prior = load_task_spec(TASKS).prior
            self.episode_steps = info.default_steps
            self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
            self.action_space = gym.spaces.Box(
                info.action_low.astype(np.float32),
                info.action_high.astype(np.float32),
                dtype=np.float32,
            )
            self.goal = np.zeros(2, np.float32)
            self.t = 0

        def reset(
            self, *, seed: int | None = None, options: dict[str, Any] | None = None
        ) -> tuple[np.ndarray, dict[str, Any]]:
            super().reset(seed=seed)
            self.goal = self.prior.sample(1, self.np_random)[0].astype(np.float32)
            observation = self.env.reset(int(self.np_random.integers(2**31)))
            self.t = 0
            return np.concatenate([observation, self.goal]), {}

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
            result = self.env.step(action)
            reward = goal_reward(result.fields["infos/position"], self.goal)
            self.t += 1
            observation = np.concatenate([result.observation, self.goal])
            return observation, reward, False, self.t >= self.episode_steps, {}

    return PointMassGoalEnv


def sb3_version() -> str | None:
    """Stable-Baselines3's version, or None when it is not importable."""
    try:
        import stable_baselines3
    except ImportError:
        return None
    return str(stable_baselines3.__version__)


def run_sb3(setting: Setting) -> dict[str, float]:
    """SB3's SAC ``learn`` on the wrapped point mass; its ``train`` calls are the
    update phase, the rest of ``learn`` the env phase."""
    from stable_baselines3 import SAC as SB3SAC

    model = SB3SAC(
        "MlpPolicy",
        goal_env_class()(),
        learning_rate=setting.lr,
        buffer_size=setting.steps,
        learning_starts=setting.start_steps,
        batch_size=setting.batch_size,
        tau=setting.tau,
        gamma=setting.gamma,
        train_freq=1,
        gradient_steps=1,
        ent_coef=f"auto_{setting.init_alpha}",
        target_entropy="auto",
        policy_kwargs={"net_arch": list(setting.hidden)},
        device="cpu",
        seed=setting.seed,
        verbose=0,
    )
    train = model.train
    update_time = [0.0]

    def timed_train(*args: Any, **kwargs: Any) -> None:
        tic = time.perf_counter()
        train(*args, **kwargs)
        update_time[0] += time.perf_counter() - tic

    model.train = timed_train  # type: ignore[method-assign]
    start, cpu = time.perf_counter(), time.thread_time()
    model.learn(total_timesteps=setting.steps)
    seconds, cpu_seconds = time.perf_counter() - start, time.thread_time() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "env_seconds": seconds - update_time[0],
        "update_seconds": update_time[0],
        "env_steps": int(model.num_timesteps),
        "updates": int(model._n_updates),
    }


# ---------------------------------------------------------------- report
def rates(run: dict[str, float]) -> dict[str, float]:
    """A run's figures: env steps/s over the whole run (wall and thread CPU time),
    updates/s over the update phase, env steps/s over the env phase."""
    nan = math.nan
    upd = run["update_seconds"]
    return {
        "env_steps_per_s": run["env_steps"] / run["seconds"],
        "cpu_env_steps_per_s": run["env_steps"] / run["cpu_seconds"],
        "updates_per_s": run["updates"] / upd if run["updates"] and upd > 0 else nan,
        "env_phase_steps_per_s": run["env_steps"] / run["env_seconds"],
        "other_seconds": run["seconds"] - run["env_seconds"] - (upd if run["updates"] else 0),
    }


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The round with the shortest wall time, with its rates."""
    chosen = min(runs, key=lambda r: r["seconds"])
    return {**chosen, **rates(chosen)}


def ratios(methods: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """train-rl against the bare loop (goal >= GOAL_BARE) and against SB3 (goal > 1)."""
    found = []
    for relabel in ("none", "hipi"):
        name = f"train-rl {relabel}"
        for other, goal in (("bare", GOAL_BARE), ("sb3", 1.0)):
            if name not in methods or other not in methods:
                continue
            ours, theirs = methods[name], methods[other]
            same = ours["env_steps"] == theirs["env_steps"]
            entry: dict[str, Any] = {"ratio": f"{name} / {other}", "goal": goal}
            for key in ("env_steps_per_s", "cpu_env_steps_per_s", "updates_per_s"):
                if key != "updates_per_s" and not same:
                    entry[key] = math.nan  # whole runs of other lengths: not comparable
                else:
                    entry[key] = ours[key] / theirs[key]
            value = entry["env_steps_per_s"]
            entry["met"] = bool(value >= goal if goal < 1 else value > goal) if same else None
            found.append(entry)
    return found


def _num(value: float, spec: str = ",.0f") -> str:
    return "n/a" if not math.isfinite(value) else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    s = result["setting"]
    lines = [
        f"RL throughput on {ENV} ({TASKS}), MLP {'x'.join(str(h) for h in s['hidden'])} "
        f"actor and twin critics, batch {s['batch_size']}, {s['steps']:,} env steps "
        f"({s['start_steps']:,} random first, then 1 update per step), train-rl "
        f"relabel fraction {s['relabel_fraction']}, {s['threads']} torch thread(s), "
        f"best of {result['repeats']} interleaved round(s), {result['date']}",
        "",
        f"Machine: {result['machine']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
        f"Command: `{result['command']}`",
        "",
        "| method | env steps | updates | env steps/s (whole run) | CPU-time env steps/s "
        "| updates/s (update phase) | env-phase steps/s | env s | update s | other s "
        "| total s | load before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method in METHODS:
        m = result["methods"].get(method)
        if m is None:
            continue
        lines.append(
            f"| {method} | {m['env_steps']:,} | {m['updates']:,} | "
            f"{_num(m['env_steps_per_s'])} | {_num(m['cpu_env_steps_per_s'])} | "
            f"{_num(m['updates_per_s'], ',.1f')} | {_num(m['env_phase_steps_per_s'])} | "
            f"{m['env_seconds']:.1f} | {_num(m['update_seconds'], '.1f')} | "
            f"{m['other_seconds']:.1f} | {m['seconds']:.1f} | {m['load']:.2f} |"
        )
    lines += [
        "",
        "| ratio | env steps/s (whole run) | CPU-time env steps/s | updates/s | goal |",
        "|---|---:|---:|---:|---|",
    ]
    for r in result["ratios"]:
        verdict = {True: "met", False: "NOT met", None: "n/a (runs of other lengths)"}[r["met"]]
        lines.append(
            f"| {r['ratio']} | {_num(r['env_steps_per_s'], '.3f')} | "
            f"{_num(r['cpu_env_steps_per_s'], '.3f')} | {_num(r['updates_per_s'], '.3f')} | "
            f"{'>=' if r['goal'] < 1 else '>'} {r['goal']:g}: {verdict} |"
        )
    lines.append("")
    for note in result["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--steps", type=int, default=20_000, help="env steps per run")
    p.add_argument(
        "--hipi-steps",
        type=int,
        default=0,
        help="env steps of the train-rl hipi run (0: --steps); its B x B pair Q-values "
        "make it far slower",
    )
    p.add_argument("--start-steps", type=int, default=1000, help="random first steps")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=parse_hidden, default=(256, 256), help="e.g. 256,256")
    p.add_argument("--relabel-fraction", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (every method)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds; best of")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS), help="subset of " + ",".join(METHODS))
    p.add_argument("--profile", type=Path, help="cProfile the train-rl runs of one more round")
    p.add_argument("--markdown", type=Path, help="write the report here too")
    p.add_argument("--json", type=Path, help="write the raw figures here")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> str | None:
    """The first bad option as an ``error:`` line's text, or None."""
    for name in ("steps", "batch_size", "repeats", "threads"):
        value = getattr(args, name)
        if value < 1:
            return f"--{name.replace('_', '-')}: expected a positive integer, got {value}"
    for name in ("hipi_steps", "start_steps"):
        value = getattr(args, name)
        if value < 0:
            return f"--{name.replace('_', '-')}: expected an integer >= 0, got {value}"
    if not 0.0 <= args.relabel_fraction <= 1.0:
        return f"--relabel-fraction: expected a number in [0, 1], got {args.relabel_fraction}"
    unknown = [m for m in args.methods.split(",") if m.strip() and m.strip() not in METHODS]
    if unknown:
        return f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(METHODS)})"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_args(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # no progress bars in the benchmark output; only while it runs (a test imports and
    # runs this module, and the environment reaches every subprocess its session starts)
    quiet = {"TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1")}
    with mock.patch.dict(os.environ, quiet), torch_threads(args.threads):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    setting = Setting(
        steps=args.steps,
        start_steps=args.start_steps,
        batch_size=args.batch_size,
        hidden=tuple(args.hidden),
        relabel_fraction=args.relabel_fraction,
        seed=args.seed,
        threads=args.threads,
    )
    hipi_setting = Setting(**{**asdict(setting), "steps": args.hipi_steps or args.steps})
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    notes: list[str] = []
    if "sb3" in methods and sb3_version() is None:
        methods.remove("sb3")
        line = (
            "sb3 skipped: stable-baselines3 is not installed "
            "(pip install -c constraints.txt -e '.[bench]')"
        )
        print(line, flush=True)
        notes.append(line)
    work = Path(tempfile.mkdtemp(prefix="rl_bench_"))
    counter = iter(range(10**9))
    trainers: dict[str, Callable[[], dict[str, float]]] = {
        "bare": lambda: run_bare(setting),
        "train-rl none": lambda: run_train_rl(setting, "none", work / f"run{next(counter)}"),
        "train-rl hipi": lambda: run_train_rl(hipi_setting, "hipi", work / f"run{next(counter)}"),
        "sb3": lambda: run_sb3(setting),
    }
    order = [m for m in METHODS if m in methods]
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in order}
    try:
        for repeat in range(args.repeats):
            shift = repeat % len(order)
            for method in order[shift:] + order[:shift]:
                load = load_average()
                run = {**trainers[method](), "load": load}
                runs[method].append(run)
                r = rates(run)
                print(
                    f"round {repeat + 1}/{args.repeats} {method:14s} "
                    f"{r['env_steps_per_s']:8,.0f} env steps/s, "
                    f"{_num(r['updates_per_s'], ',.1f')} updates/s "
                    f"({run['seconds']:.1f} s, load {load:.2f}, torch threads "
                    f"{torch.get_num_threads()})",
                    flush=True,
                )
        if args.profile:
            for method in (m for m in order if m.startswith("train-rl")):
                profile(trainers[method], Path(f"{args.profile}.{method.split()[-1]}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.hipi_steps and "train-rl hipi" in order and args.hipi_steps != args.steps:
        notes.append(
            f"train-rl hipi ran {args.hipi_steps:,} env steps (--hipi-steps), the others "
            f"{args.steps:,}: only its updates/s ratio compares"
        )
    chosen = {m: best(r) for m, r in runs.items() if r}
    result: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": cpu_description(),
        "versions": package_versions(
            "torch", "hipi-offline", "stable-baselines3", "gymnasium", "numpy"
        ),
        "setting": asdict(setting),
        "hipi_steps": hipi_setting.steps,
        "repeats": args.repeats,
        "methods": chosen,
        "runs": runs,
        "ratios": ratios(chosen),
        "notes": notes,
    }
    report = markdown(result)
    print()
    print(report)
    if args.markdown:
        args.markdown.write_text(report)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def profile(trainer: Callable[[], dict[str, float]], path: Path) -> None:
    """cProfile one more run; stats to ``path``, the top 25 by own time printed."""
    prof = cProfile.Profile()
    prof.enable()
    trainer()
    prof.disable()
    prof.dump_stats(str(path))
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
    print(f"profile -> {path}\n{text.getvalue()}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
