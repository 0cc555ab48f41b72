"""Evaluate trained runs in their environment (``hipi-offline evaluate``).

Every run meets the same episodes: tasks from the environment's prior (or a file),
initial states and action noise fixed by (seed, episode). Each episode is scored
with its task's reward, the function relabeling sums. Results: mean return with
standard error and a 95% t-interval per run, the paired difference to the first
run, success rates for discrete task families, optional JSON, video and the
rollouts themselves as a store (which relabels like any other).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.bc.policy import Policy, load_policy
from hipi_offline.configs import (
    MAX_WORKERS,
    FieldError,
    check_flag,
    check_int,
    check_optional_int,
    check_seed,
)
from hipi_offline.envs.base import TaskEnv, gl_message, gl_unavailable
from hipi_offline.envs.gymnasium_env import PREFIX, check_gymnasium_id
from hipi_offline.errors import InputError, ResourceError
from hipi_offline.evaluate.outputs import (
    check_output_file,
    check_rollouts_folder,
    rollout_store_names,
)
from hipi_offline.evaluate.report import RunResult, report_json, report_lines
from hipi_offline.evaluate.rollout import (
    EpisodeOutcome,
    RolloutJob,
    cached_envs,
    check_compatible,
    check_spec_fields,
    describe_policy,
    run_job,
)
from hipi_offline.evaluate.tasks import evaluation_spec, plan_episodes
from hipi_offline.evaluate.video import check_video_path, video_paths, write_video
from hipi_offline.parallel import ordered_map
from hipi_offline.progress import progress_bar
from hipi_offline.rl.policy import RLPolicy
from hipi_offline.store import open_store
from hipi_offline.store.atomic import atomic_write_bytes
from hipi_offline.store.location import is_url

MAX_RENDER_SIZE = 4096
"""Largest frame height or width, in pixels."""
VIDEO_FPS = 25.0
"""Target frame rate of videos; frames are taken every round(1 / (fps * dt)) steps."""


@dataclass(frozen=True)
class EvalConfig:
    """Options of one evaluation call."""

    env: str | None = None
    """Environment: a built-in name, gymnasium:ID (any Gymnasium environment id), or
    dataset (the Gymnasium environment the first run's store was imported from);
    default: the one the first run's store was collected in (a train-rl run: the one
    its config.json names)."""
    episodes: int | None = None
    """Episodes per run (default 20 from the prior, or one per listed task)."""
    tasks: str = "prior"
    """``prior`` or a YAML/JSON/.npy file of tasks."""
    task_spec: str | None = None
    """Task spec (YAML file or built-in name) whose family scores the episodes; default:
    the one the train-rl runs were trained with, else the environment's own, else
    (Gymnasium) the one the runs' label sets were made with."""
    steps: int | None = None
    """Control steps per episode (default: the environment's; with ``--env dataset``, the
    time limit the dataset was collected with, when it records one; for a first run
    from train-rl in its own environment, its training episodes' length)."""
    seed: int = 0
    """Seed of the tasks, initial states and sampled-action noise."""
    sample: bool = False
    """Sample actions from the policy instead of taking its mean action."""
    workers: int = 1
    """Worker processes (each rolls out groups of ``group_size`` episodes)."""
    group_size: int = 16
    """Episodes stepped in lockstep with one batched policy call. Groups are fixed by
    episode index, so results never depend on ``workers``; the group size itself
    can change the last bits of the policy's batched matrix products."""
    video: str | Path | None = None
    """Render episode 0 of each run to this .gif / .mp4 / .png (frame strip)."""
    render_episodes: tuple[int, ...] = ()
    """Further episode indices whose frames are kept (``RunResult.outcomes[i].frames``)."""
    render_size: tuple[int, int] = (240, 320)
    """Height and width of rendered frames, in pixels."""
    json_path: str | Path | None = None
    """Write the results as JSON here."""
    save_rollouts: str | Path | None = None
    """Folder: write each run's rollouts as a store ``<i>-<method>.h5`` (rewards not
    stored; the commanded task in ``episodes/task``)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.env is not None and (not isinstance(self.env, str) or not self.env):
            raise FieldError("env", f"expected an environment name, got {self.env!r}")
        check_optional_int(self.episodes, "episodes")
        if not isinstance(self.tasks, (str, Path)):
            raise FieldError("tasks", f"expected prior or a file of tasks, got {self.tasks!r}")
        if self.task_spec is not None and (
            not isinstance(self.task_spec, str) or not self.task_spec
        ):
            raise FieldError("task_spec", f"expected a task spec, got {self.task_spec!r}")
        check_optional_int(self.steps, "steps")
        check_seed(self.seed)
        check_flag(self.sample, "sample")
        check_int(self.workers, "workers", 1, MAX_WORKERS)
        check_int(self.group_size, "group_size")
        if not isinstance(self.render_episodes, tuple):
            raise FieldError("render_episodes", f"expected a tuple, got {self.render_episodes!r}")
        for index in self.render_episodes:
            check_int(index, "render_episodes", low=0)
        if not isinstance(self.render_size, tuple) or len(self.render_size) != 2:
            raise FieldError("render_size", f"expected (height, width), got {self.render_size!r}")
        for size in self.render_size:
            check_int(size, "render_size", 1, MAX_RENDER_SIZE)
        check_flag(self.progress, "progress")


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate`."""

    results: list[RunResult]
    header: dict[str, Any]
    seconds: float
    videos: list[Path]

    def lines(self) -> list[str]:
        steps = sum(o.steps for r in self.results for o in r.outcomes)
        out = report_lines(self.results, self.header)
        out.append(f"{steps:,} env steps in {self.seconds:.1f} s ({steps / self.seconds:,.0f}/s)")
        out += [f"video: {p}" for p in self.videos]
        return out

    def to_json(self) -> dict[str, Any]:
        return report_json(self.results, self.header)


def evaluate(runs: Sequence[str | Path], config: EvalConfig) -> Evaluation:
    """Roll out each run's policy on the same episodes and score them."""
    started = time.perf_counter()
    runs = [str(r) for r in runs]
    if not runs:
        raise InputError("RUN: give at least one run directory or checkpoint")
    _check(config)
    policies = [load_policy(r, device="cpu") for r in runs]
    env_name, dataset_steps = _env_name(config.env, runs[0], policies[0])
    if config.steps is None and isinstance(policies[0], RLPolicy):
        dataset_steps = _rl_episode_steps(policies[0], env_name) or dataset_steps
    env = cached_envs(env_name, 1)[0]
    labels = [(run, policy.run.labels) for run, policy in zip(runs, policies, strict=True)]
    trained = [
        (run, policy.trained_spec)
        for run, policy in zip(runs, policies, strict=True)
        if isinstance(policy, RLPolicy)
    ]
    spec = evaluation_spec(config.task_spec, env.info.task_spec, labels, trained)
    for run, policy in zip(runs, policies, strict=True):
        check_compatible(policy, env, spec, run)
    check_spec_fields(env, spec)
    info = env.info
    steps = config.steps if config.steps is not None else (dataset_steps or info.default_steps)
    if steps < 1:
        raise InputError(f"--steps: must be positive, got {steps}")
    plans = plan_episodes(spec, config.tasks, config.episodes, config.seed)
    video = Path(config.video) if config.video else None
    methods = [describe_policy(p) for p in policies]
    _check_outputs(config, runs, methods, env)
    render = set(config.render_episodes) | ({0} if video else set())
    every = max(1, round(1.0 / (VIDEO_FPS * info.control_dt)))
    jobs = [
        RolloutJob(
            run=run,
            env=env_name,
            steps=steps,
            plans=tuple(plans[g : g + config.group_size]),
            spec_source=spec.source,
            spec_origin=spec.origin,
            sample=config.sample,
            render=tuple(sorted(i for i in render if g <= i < g + config.group_size)),
            render_every=every,
            render_size=tuple(config.render_size),
            keep_arrays=config.save_rollouts is not None,
        )
        for run in runs
        for g in range(0, len(plans), config.group_size)
    ]
    outcomes: dict[str, list[EpisodeOutcome]] = {r: [] for r in runs}
    with progress_bar(
        total=len(plans) * len(runs),
        desc=f"evaluate {env_name}",
        unit="ep",
        enabled=config.progress,
    ) as bar:
        # with one worker the jobs run here, and the environments stay cached for the
        # next call
        for job, done in zip(jobs, ordered_map(run_job, jobs, config.workers), strict=True):
            outcomes[job.run] += done
            bar.update(len(done))
    results = [
        RunResult(run, method, policy.step, outcomes[run], spec)
        for run, method, policy in zip(runs, methods, policies, strict=True)
    ]
    header = {
        "env": env_name,
        "task_spec": spec.origin,
        "tasks": str(config.tasks),
        "episodes": len(plans),
        "steps": steps,
        "seed": config.seed,
        "sample": config.sample,
    }
    videos = []
    if video is not None:
        fps = 1.0 / (info.control_dt * every)
        for result, path in zip(results, video_paths(video, methods), strict=True):
            frames = result.outcomes[0].frames
            assert frames is not None
            videos.append(write_video(frames, path, fps))
    if config.save_rollouts is not None:
        save_rollouts(Path(config.save_rollouts), results, env_name, header)
    evaluation = Evaluation(results, header, time.perf_counter() - started, videos)
    if config.json_path is not None:
        text = json.dumps(evaluation.to_json(), indent=1)
        atomic_write_bytes(Path(config.json_path), text.encode())
    return evaluation


def _env_name(env: str | None, run: str, policy: Policy) -> tuple[str, int | None]:
    """The environment to evaluate in, and its default episode length (None: the
    environment's own): ``--env`` as given, or for ``dataset`` (and by default) the one
    the run's store records. For ``dataset`` the store's ``gymnasium_env`` attribute
    (written by ``import minari`` from the dataset's ``env_spec``) is read when the store
    is still where the run found it, else the run description's environment. A store's
    Gymnasium id is untrusted: it must be a registered id that names no module."""
    if env is not None and env != "dataset":
        return env, None
    recorded, steps = policy.env, None
    if env is not None:
        attrs = _store_attrs(policy)
        if "gymnasium_env" in attrs:
            recorded = str(attrs["gymnasium_env"])
            steps = _positive_int(attrs.get("gymnasium_max_episode_steps"))
    if not recorded and env is None:
        raise InputError(f"--env: {run} does not record its environment; pass --env")
    if not recorded:
        raise InputError(
            f"--env dataset: {run} does not record its dataset's environment (a Minari "
            "dataset's env_spec); pass --env gymnasium:ID"
        )
    if env is None and not recorded.startswith(PREFIX):
        return recorded, None  # a built-in environment (env_entry checks the name)
    flag = "--env" if env is None else "--env dataset"
    where = f"{flag}: {run}'s store records environment"
    name = check_gymnasium_id(recorded.removeprefix(PREFIX), where, trusted=False)
    return PREFIX + name, steps


def _store_attrs(policy: Policy) -> dict[str, Any]:
    """The root attributes of the store a run was trained on; {} when the run does not
    name a local store or it cannot be opened (moved, deleted)."""
    store = policy.run.store
    if store is None or not store.path or is_url(store.path):
        return {}
    try:
        with open_store(store.path) as opened:
            return dict(opened.attrs)
    except (InputError, ResourceError, OSError):
        return {}


def _rl_episode_steps(policy: RLPolicy, env_name: str) -> int | None:
    """A train-rl run's episode length, when it is evaluated in its own environment
    (None: the environment's default). Its config.json is untrusted: a length that
    :func:`_positive_int` would not take is refused."""
    run = policy.rl_run
    value = run.config.episode_steps
    if env_name != run.env or not value:
        return None
    steps = _positive_int(value)
    if steps is None:
        raise InputError(
            f"{run.run_dir / 'config.json'}: field config.episode_steps: {value} is more "
            f"steps than evaluate takes from a run (below 2**31); pass --steps"
        )
    return steps


def _positive_int(value: Any) -> int | None:
    """A positive integer attribute value (below 2**31), else None."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value) if 0 < value < 2**31 else None
    return None


def _check(config: EvalConfig) -> None:
    """Outputs that need no policy or environment (the config checked its values)."""
    if config.json_path is not None:
        check_output_file(Path(config.json_path), "--json")
    if config.video:
        check_video_path(Path(config.video))
    if config.save_rollouts is not None:
        check_rollouts_folder(Path(config.save_rollouts), [])


def _check_outputs(config: EvalConfig, runs: list[str], methods: list[str], env: TaskEnv) -> None:
    """Every output, before the first rollout: writable, not a folder or special file,
    not an input; stores in ``--save-rollouts`` replaced only if hipi-offline made
    them; and, for ``--video``, a GL library that renders."""
    if config.json_path is not None:
        check_output_file(Path(config.json_path), "--json", runs)
    if config.video:
        for path in video_paths(Path(config.video), methods):
            check_output_file(path, "--video", runs)
        problem = gl_unavailable()
        if problem is not None:
            raise ResourceError(gl_message(problem))
        env.render(width=16, height=16)  # a GL library that loads may still fail here
    if config.save_rollouts is not None:
        check_rollouts_folder(Path(config.save_rollouts), methods)


def save_rollouts(
    folder: Path, results: list[RunResult], env: str, header: dict[str, Any]
) -> list[Path]:
    """Write each run's rollouts as a store in ``folder`` (replacing older ones)."""
    from hipi_offline.store.store import create_store

    check_rollouts_folder(folder, [r.method for r in results])
    folder.mkdir(exist_ok=True)
    paths = []
    names = rollout_store_names([r.method for r in results])
    for name, result in zip(names, results, strict=True):
        path = folder / name
        arrays = [o.arrays for o in result.outcomes]
        steps = {name: np.concatenate([a[name] for a in arrays]) for name in arrays[0]}
        metadata = {"evaluated_run": result.run, "evaluation": json.dumps(header)}
        with create_store(path, env=env, metadata=metadata, overwrite=True) as store:
            store.append_episodes(
                steps=steps,
                lengths=[len(a["actions"]) for a in arrays],
                episodes={"task": np.stack([o.task for o in result.outcomes])},
            )
        paths.append(path)
    return paths
