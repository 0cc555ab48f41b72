"""Policy rollouts in lockstep: one batched policy call per control step for a group
of environments, each scored by the task family's reward (the function relabeling
sums), so evaluation returns equal offline returns of the same rollout. Episodes of
tasks that command a direction also get their mean velocity along it, from the same
step fields.

Episodes are grouped into fixed groups of ``group_size`` by index, whatever the
number of worker processes, and the policy runs on one CPU thread: the numbers
of a given (run, episode) never depend on ``workers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hipi_offline.bc.policy import CHECKPOINT_DIR, Policy, load_policy
from hipi_offline.envs.base import (
    StepResult,
    TaskEnv,
    make_env,
    stack_fields,
    transition_rewards,
    velocity_along_command,
)
from hipi_offline.errors import InputError
from hipi_offline.evaluate.tasks import MAX_RESET_ATTEMPTS, EpisodePlan, task_is_feasible
from hipi_offline.tasks.spec import TaskSpec, parse_task_spec


@dataclass(frozen=True)
class RolloutJob:
    """One group of episodes of one run (picklable, for worker processes)."""

    run: str
    env: str
    steps: int
    plans: tuple[EpisodePlan, ...]
    spec_source: str
    """The YAML text of the task spec that scores the episodes."""
    spec_origin: str
    sample: bool = False
    render: tuple[int, ...] = ()
    """Episode indices whose frames are recorded."""
    render_every: int = 1
    render_size: tuple[int, int] = (240, 320)
    keep_arrays: bool = False
    """Return the step arrays too (for saving rollouts as a store)."""


@dataclass
class EpisodeOutcome:
    """The result of one evaluation episode."""

    index: int
    task: np.ndarray
    env_seed: int
    episode_return: float
    success: bool | None
    steps: int = 0
    """Control steps taken (fewer than asked when the environment ended the episode)."""
    """Discrete families: the task was achieved (return >= 1); else None."""
    velocity_along_command: float | None = None
    """Mean over the episode's steps of the velocity along the task's commanded
    direction (m/s); None when the environment or the task commands no direction."""
    frames: np.ndarray | None = None
    """uint8 [F, H, W, 3] when the episode was rendered."""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """``observations``, ``actions`` and each step field, when kept."""


def episode_return(
    spec: TaskSpec,
    observations: np.ndarray,
    actions: np.ndarray,
    fields: Mapping[str, np.ndarray],
    task: np.ndarray,
) -> float:
    """The float64 return of one episode for one task, as the relabeling engine
    computes it (the spec's discount and ``at: final`` included)."""
    rewards = transition_rewards(spec, observations, actions, fields, task.reshape(1, -1))[:, 0]
    return spec.discounted_return(rewards)


def mean_velocity_along_command(
    env: TaskEnv, fields: Mapping[str, np.ndarray], task: np.ndarray
) -> float | None:
    """The float64 mean over one episode's steps of the velocity along the task's
    commanded direction, from the episode's step fields; None when the environment
    or the task commands no direction."""
    velocity = velocity_along_command(env, fields, task)
    if velocity is None:
        return None
    velocity = np.asarray(velocity, np.float64).reshape(-1)
    return float(velocity.mean()) if len(velocity) else None


_POLICIES: dict[tuple[str, int, int | None], Policy] = {}
_SPECS: dict[tuple[str, str], TaskSpec] = {}
_ENVS: dict[str, list[TaskEnv]] = {}


def _policy(run: str) -> Policy:
    """The policy of a run, cached per process; reloaded when the run (a checkpoint
    file or a folder) or its checkpoints/ folder changes: a BC or RL run that goes on
    training adds its checkpoints there, which leaves the run folder's own time."""
    path = Path(run)
    folder = path / CHECKPOINT_DIR
    changed = folder.stat().st_mtime_ns if folder.is_dir() else None
    key = (str(path.resolve()), path.stat().st_mtime_ns, changed)
    if key not in _POLICIES:
        _POLICIES[key] = load_policy(path, device="cpu")
    return _POLICIES[key]


def cached_envs(name: str, count: int) -> list[TaskEnv]:
    """``count`` environments of ``name``, cached per process for its lifetime
    (building one takes about 0.1 s)."""
    pool = _ENVS.setdefault(name, [])
    while len(pool) < count:
        pool.append(make_env(name))
    return pool[:count]


def job_spec(job: RolloutJob) -> TaskSpec:
    """The task spec of a job, parsed once per process."""
    key = (job.spec_source, job.spec_origin)
    if key not in _SPECS:
        _SPECS[key] = parse_task_spec(job.spec_source, origin=job.spec_origin)
    return _SPECS[key]


def _ended(env: TaskEnv) -> bool:
    """Whether the environment ended its episode (a Gymnasium termination or time
    limit); the built-in environments never do."""
    return bool(getattr(env, "episode_over", False))


def _reset(env: TaskEnv, spec: TaskSpec, plan: EpisodePlan) -> tuple[np.ndarray, int]:
    """Reset to the first initial state in which the plan's task can be achieved."""
    for attempt in range(MAX_RESET_ATTEMPTS):
        seed = plan.env_seed(attempt)
        obs = env.reset(seed)
        if task_is_feasible(spec, env, plan.task):
            return obs, seed
    raise InputError(
        f"--tasks: task {plan.task.tolist()} already holds in {MAX_RESET_ATTEMPTS} initial "
        "states; it cannot be achieved"
    )


def run_job(job: RolloutJob) -> list[EpisodeOutcome]:
    """Roll out one group of episodes in lockstep and score them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_job(job)
    finally:
        torch.set_num_threads(threads)


def _run_job(job: RolloutJob) -> list[EpisodeOutcome]:
    policy = _policy(job.run)
    envs = cached_envs(job.env, len(job.plans))
    spec = job_spec(job)
    starts = [_reset(env, spec, plan) for env, plan in zip(envs, job.plans, strict=True)]
    obs = np.stack([o for o, _ in starts]).astype(np.float32)
    tasks = np.stack([p.task for p in job.plans]).astype(np.float32)
    noise = [p.noise_rng() for p in job.plans]
    rendered = [p.index in job.render for p in job.plans]
    frames: list[list[np.ndarray]] = [[] for _ in job.plans]
    height, width = job.render_size
    columns: list[dict[str, np.ndarray]] = []  # per step: {name: [B, ...]}
    lengths = [job.steps] * len(envs)
    last: list[StepResult | None] = [None] * len(envs)
    for t in range(job.steps):
        if all(length <= t for length in lengths):
            break
        for b, env in enumerate(envs):
            if rendered[b] and lengths[b] > t and t % job.render_every == 0:
                frames[b].append(env.render(width=width, height=height))
        draws = (
            np.stack([rng.standard_normal(policy.act_dim) for rng in noise]) if job.sample else None
        )
        actions = policy.act(
            obs, None if policy.task_agnostic else tasks, sample=job.sample, noise=draws
        )
        actions = np.asarray(actions, np.float32).reshape(len(envs), -1)
        results = []
        for b, env in enumerate(envs):
            info = env.info
            actions[b] = np.clip(actions[b], info.action_low, info.action_high)
            if lengths[b] > t:  # else the episode ended: its rows past the end are cut
                last[b] = env.step(actions[b])
                if _ended(env):
                    lengths[b] = t + 1
            results.append(last[b])
        fields = stack_fields([r.fields for r in results])
        columns.append({"observations": obs, "actions": actions, **fields})
        obs = np.stack([r.observation for r in results]).astype(np.float32)
    for b, env in enumerate(envs):
        if rendered[b]:
            frames[b].append(env.render(width=width, height=height))
    stacked = stack_fields(columns, axis=1)  # {name: [B, T, ...]}
    outcomes = []
    for b, plan in enumerate(job.plans):
        episode = {k: v[b, : lengths[b]] for k, v in stacked.items()}
        fields = {k: v for k, v in episode.items() if k not in ("observations", "actions")}
        value = episode_return(spec, episode["observations"], episode["actions"], fields, plan.task)
        outcomes.append(
            EpisodeOutcome(
                index=plan.index,
                task=plan.task,
                env_seed=starts[b][1],
                episode_return=value,
                success=(value >= 1.0) if spec.is_discrete else None,
                steps=lengths[b],
                velocity_along_command=mean_velocity_along_command(envs[b], fields, plan.task),
                frames=np.stack(frames[b]) if rendered[b] else None,
                arrays=episode if job.keep_arrays else {},
            )
        )
    return outcomes


def check_compatible(policy: Policy, env: TaskEnv, spec: TaskSpec, run: str) -> None:
    """Fail early, naming the mismatch, when a policy cannot act in an environment."""
    info = env.info
    if int(np.prod(policy.obs_shape)) != info.observation_dim:
        raise InputError(
            f"{run}: policy observations have shape {policy.obs_shape}, "
            f"{info.name} gives {info.observation_dim}"
        )
    if policy.act_dim != info.action_dim:
        raise InputError(
            f"{run}: policy acts in {policy.act_dim} dims, {info.name} needs {info.action_dim}"
        )
    if not policy.task_agnostic and policy.task_dim != spec.prior.dim:
        raise InputError(
            f"{run}: policy takes tasks of dimension {policy.task_dim}, but {info.name}'s task "
            f"spec {spec.origin} has dimension {spec.prior.dim}"
        )


def check_spec_fields(env: TaskEnv, spec: TaskSpec) -> None:
    """Fail early when the task family reads a step field the environment does not
    report, or dimensions it does not have: one probe step from a reset (every
    episode resets again before it starts)."""
    from hipi_offline.store.backends import ArrayInfo

    info = env.info
    obs = np.asarray(env.reset(0), np.float32).reshape(-1)
    action = ((info.action_low + info.action_high) / 2).astype(np.float32)
    step = env.step(np.nan_to_num(action))
    shapes = {
        "steps/observations": (obs, obs.dtype),
        "steps/actions": (action, action.dtype),
        **{f"steps/{k}": (np.asarray(v), np.asarray(v).dtype) for k, v in step.fields.items()},
    }
    fields = {k: ArrayInfo((1, *np.shape(v)), dtype, 1) for k, (v, dtype) in shapes.items()}
    try:
        spec.task_dim(fields)
    except InputError as err:
        message = str(err).replace("is not in the store", f"is not reported by {info.name}")
        raise InputError(message.replace("(step fields:", "(it reports:")) from None


def describe_policy(policy: Policy) -> str:
    """The method a policy was trained with: its label set's name, or task-agnostic."""
    if policy.task_agnostic:
        return "task-agnostic"
    labels = policy.run.labels
    return (labels.name if labels is not None else None) or "task-conditioned"
