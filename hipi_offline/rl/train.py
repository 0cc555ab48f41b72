"""``hipi-offline train-rl``: online task-conditioned SAC whose minibatches are
relabeled (paper Alg. 2), in one process.

Each episode draws its commanded task from the spec's prior and its reset seed from
``default_rng([seed, episode])`` (the first ``start_steps`` actions are uniform draws
of the same generator; later ones are the policy's draws). After every environment
step, once ``batch_size`` steps are stored and the random phase is over,
``updates_per_step`` minibatches are drawn uniformly from every stored step (the
running episode included) and passed through :func:`~hipi_offline.rl.sac.relabeled_update`.
Environments without termination: every discount is 1 (episode ends are time limits).

The run folder holds config.json, replay.h5 (finished episodes, a store that
``relabel``, ``train-bc`` and ``inspect`` read), metrics.csv (a row per episode) and
checkpoints/ (at episode ends: :mod:`hipi_offline.rl.checkpoint`). Rerunning the same
command continues from the last checkpoint: episodes a killed run appended after it are
dropped from the store and the metrics, and the run ends with the same parameters as an
uninterrupted one (same thread count).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hipi_offline.device import torch_threads
from hipi_offline.envs.base import TaskEnv, env_entry, make_env
from hipi_offline.errors import InputError, one_line
from hipi_offline.ownership import (
    MARKER_NAME,
    check_own_entries,
    marker_kind,
    remove_own_entries,
    write_marker,
)
from hipi_offline.progress import progress_bar
from hipi_offline.rl import checkpoint as ckpt
from hipi_offline.rl.config import RLConfig
from hipi_offline.rl.relabel import Relabeler, achieved_goal, is_goal_family, make_relabeler
from hipi_offline.rl.replay import Replay, append_episode, load_replay, rewrite_store
from hipi_offline.rl.sac import SAC, SACConfig, relabeled_update
from hipi_offline.store import open_store
from hipi_offline.store.atomic import atomic_write_bytes
from hipi_offline.store.backends import ArrayInfo
from hipi_offline.tasks.families import GoalFamily, base_family
from hipi_offline.tasks.spec import TaskSpec, load_task_spec

RUN_KIND = "rl-run"
"""The marker kind of a train-rl run folder."""
KILL_ENV = "HIPI_OFFLINE_TEST_KILL"
"""Test hook: ``rl:N`` kills the process with SIGKILL at the first episode end at or
after N environment steps, after the episode is stored and before any checkpoint."""
SUCCESS_RADIUS = 0.1
"""Success of a goal task without a margin: the final step within this distance."""
METRICS = (
    "step",
    "episode",
    "return",
    "final_distance",
    "success",
    "critic_loss",
    "actor_loss",
    "alpha",
    "entropy",
    "q_mean",
    "relabeled",
    "own_task",
    "env_steps_per_s",
    "updates_per_s",
)
STATS = ("critic_loss", "actor_loss", "alpha", "entropy", "q_mean", "relabeled", "own_task")


@dataclass(frozen=True)
class RLSummary:
    run_dir: Path
    env: str
    relabel: str
    env_steps: int
    episodes: int
    updates: int
    resumed_from: int | None
    env_steps_per_s: float
    updates_per_s: float
    recent: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        start = "" if self.resumed_from is None else f" (continued from step {self.resumed_from})"
        out = [
            f"trained on {self.env} with {self.relabel} relabeling{start}: {self.env_steps} "
            f"env steps, {self.episodes} episodes, {self.updates} updates -> {self.run_dir}"
        ]
        if self.recent:
            out.append(
                "  last episodes: "
                + ", ".join(f"{k} {v:.4g}" for k, v in self.recent.items() if math.isfinite(v))
            )
        out.append(f"  {self.env_steps_per_s:.0f} env steps/s, {self.updates_per_s:.0f} updates/s")
        return out


# ---------------------------------------------------------------- set-up checks
@dataclass
class Setup:
    env: TaskEnv
    spec: TaskSpec
    relabeler: Relabeler
    task_dim: int
    episode_steps: int


def _setup(env_name: str, config: RLConfig) -> Setup:
    """Everything checked before the run folder is touched."""
    if env_name.startswith("gymnasium:"):
        raise InputError(f"ENV: train-rl runs the registered environments, not {env_name!r}")
    entry = env_entry(env_name)
    try:
        spec = load_task_spec(config.tasks or entry.task_spec)
    except InputError as err:
        raise InputError(f"--tasks: {err}") from None
    env = make_env(env_name)
    info = env.info
    observation = env.reset(config.seed)
    result = env.step(0.5 * (info.action_low + info.action_high))
    store_fields = {
        "steps/observations": ArrayInfo((1, *np.shape(observation)), np.dtype(np.float32), 1),
        "steps/actions": ArrayInfo((1, info.action_dim), np.dtype(np.float32), 1),
        **{
            f"steps/{name}": ArrayInfo((1, *np.shape(v)), np.asarray(v).dtype, 1)
            for name, v in result.fields.items()
        },
    }
    try:
        task_dim = spec.task_dim(store_fields)
    except InputError as err:
        env.close()
        raise InputError(f"--tasks: {err}") from None
    temperature: float | str = config.relabel_temperature
    if temperature != "alpha":
        temperature = float(temperature)
    relabeler = make_relabeler(config.relabel, spec.family, config.relabel_fraction, temperature)
    steps = config.episode_steps or info.default_steps
    return Setup(env, spec, relabeler, task_dim, steps)


RUN_FILES = frozenset({"config.json", "metrics.csv", "replay.h5", MARKER_NAME})
RUN_FOLDERS = frozenset({ckpt.FOLDER, "replay.h5.labels"})
"""The entries of a train-rl run folder that train-rl (or relabel, for the replay
store's label sets) wrote: the only ones it reads, writes or removes."""


def _prepare_folder(run_dir: Path, env_name: str, config: RLConfig) -> bool:
    """Make or check the run folder; True when it holds a run to continue."""
    record = {"env": env_name, "config": config.identity()}
    exists = run_dir.exists() or run_dir.is_symlink()
    if exists and (run_dir.is_symlink() or not run_dir.is_dir()):
        raise InputError(f"--out: {run_dir} is not a folder")
    empty = exists and not any(run_dir.iterdir())
    ours = exists and marker_kind(run_dir) == RUN_KIND
    if exists and not empty and not ours:
        raise InputError(
            f"--out: {run_dir} is not a train-rl run folder; choose another --out "
            "(--overwrite replaces only a folder train-rl made)"
        )
    if ours:
        check_own_entries(run_dir, RUN_FILES, RUN_FOLDERS)
    if ours and config.overwrite:  # its own entries only: anything else in it stays
        remove_own_entries(run_dir, (RUN_FILES | RUN_FOLDERS) - {MARKER_NAME})
    elif ours:
        try:
            theirs = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError):
            theirs = None
        if theirs != record:
            diff = _describe_diff(record, theirs)
            raise InputError(
                f"--out: {run_dir} holds a run with other options ({diff}); "
                "pass --overwrite to start over, or another --out"
            )
        return bool(ckpt.list_checkpoints(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_marker(run_dir, RUN_KIND)
    atomic_write_bytes(run_dir / "config.json", json.dumps(record, indent=1).encode())
    return False


def _describe_diff(ours: dict[str, Any], theirs: Any) -> str:
    if not isinstance(theirs, dict) or not isinstance(theirs.get("config"), dict):
        return "its config.json is missing or damaged"
    flat_ours = {"env": ours["env"], **ours["config"]}
    flat_theirs = {"env": theirs.get("env"), **theirs["config"]}
    keys = sorted(
        k for k in set(flat_ours) | set(flat_theirs) if flat_ours.get(k) != flat_theirs.get(k)
    )
    shown = ", ".join(
        f"{k}: {flat_theirs.get(k)!r} there, {flat_ours.get(k)!r} now" for k in keys[:3]
    )
    return one_line(shown or "none", 300)


# ---------------------------------------------------------------- metrics
def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRICS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.csv as floats."""
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=METRICS, lineterminator="\n").writerow(row)


def _final_distance(
    spec: TaskSpec, fields: Mapping[str, np.ndarray], task: np.ndarray
) -> tuple[float, float]:
    """(distance of the episode's last step to its goal, success) for goal families;
    NaNs otherwise."""
    family = spec.family
    if not is_goal_family(family):
        return math.nan, math.nan
    tasks = torch.from_numpy(np.asarray(task, np.float64).reshape(1, -1))
    last = {name: torch.from_numpy(np.asarray(v[-1:])) for name, v in fields.items()}
    achieved = achieved_goal(family, last, tasks)
    base = base_family(family)
    sampled = isinstance(base, GoalFamily) and base.margin == "sampled"
    n = achieved.shape[1] - (1 if sampled else 0)
    dist = float(torch.linalg.vector_norm(achieved[0, :n] - tasks[0, :n]))
    if isinstance(base, GoalFamily) and base.margin is not None:
        margin = float(tasks[0, -1]) if sampled else float(base.margin)
    else:
        margin = SUCCESS_RADIUS
    return dist, float(dist < margin)


# ---------------------------------------------------------------- the run
def _reward(spec: TaskSpec, row: Mapping[str, np.ndarray], task: np.ndarray) -> float:
    """r_task of one transition by the family's reward (float64)."""
    named = {
        name: torch.from_numpy(np.asarray(row[name], np.float64).reshape(1, -1))
        for name in spec.family.fields
    }
    tasks = torch.from_numpy(np.asarray(task, np.float64).reshape(1, -1))
    return float(spec.family.reward(named, tasks)[0, 0])


def _kill_step() -> int | None:
    value = os.environ.get(KILL_ENV, "")
    if value.startswith("rl:") and value[3:].isdigit():
        return int(value[3:])
    return None


def train_rl(env_name: str, config: RLConfig) -> RLSummary:
    """Run (or continue) ``config``'s online run on the environment ``env_name``."""
    setup = _setup(env_name, config)
    try:
        with torch_threads(config.threads):
            return _train(env_name, config, setup)
    finally:
        setup.env.close()


def _train(env_name: str, config: RLConfig, setup: Setup) -> RLSummary:
    run_dir = Path(config.out)
    env, spec, info = setup.env, setup.spec, setup.env.info
    sac = SAC(
        info.observation_dim,
        info.action_dim,
        setup.task_dim,
        info.action_low,
        info.action_high,
        SACConfig(
            hidden=config.hidden,
            gamma=config.gamma,
            tau=config.tau,
            actor_lr=config.lr,
            critic_lr=config.lr,
            alpha_lr=config.lr,
            init_alpha=config.init_alpha,
        ),
        seed=config.seed,
    )
    generator = torch.Generator().manual_seed(config.seed + 1)
    resume = _prepare_folder(run_dir, env_name, config)
    store, metrics = run_dir / "replay.h5", run_dir / "metrics.csv"
    counters = ckpt.Counters(0, 0, 0)
    resumed_from = None
    if resume:
        step, path = ckpt.list_checkpoints(run_dir)[-1]
        counters = ckpt.restore(path, sac, generator)
        resumed_from = step
        replay = load_replay(store, counters.episodes, max(config.steps, counters.env_steps))
        if _stored_episodes(store) > counters.episodes:
            rewrite_store(store, env_name, replay)
        rows = [r for r in _read_rows(metrics) if int(float(r["episode"])) < counters.episodes]
        _write_metrics(metrics, rows)
    else:
        for leftover in (store, metrics):
            leftover.unlink(missing_ok=True)
        replay = Replay(config.steps + setup.episode_steps)
        _write_metrics(metrics, [])

    family_fields = tuple(spec.family.fields)
    kill_at = _kill_step()
    env_steps, episodes = counters.env_steps, counters.episodes
    next_checkpoint = (env_steps // config.checkpoint_every + 1) * config.checkpoint_every
    env_time = update_time = 0.0
    run_env_steps = run_updates = 0
    recent: list[dict[str, Any]] = []
    bar = progress_bar(
        enabled=config.progress,
        total=config.steps,
        initial=min(env_steps, config.steps),
        unit="step",
    )
    try:
        while env_steps < config.steps:
            rng = np.random.default_rng([config.seed, episodes])
            task = spec.prior.sample(1, rng)[0].astype(np.float32)
            task_t = torch.from_numpy(task[None])
            tic = time.perf_counter()
            observation = env.reset(int(rng.integers(2**31)))
            replay.start_episode(task)
            sums = {k: 0.0 for k in STATS}
            own_count = 0
            updates = 0
            ep_env = ep_upd = 0.0
            for _ in range(setup.episode_steps):
                if env_steps < config.start_steps:
                    action = rng.uniform(info.action_low, info.action_high).astype(np.float32)
                else:
                    obs_t = torch.from_numpy(np.asarray(observation, np.float32)[None])
                    action = sac.act(obs_t, task_t)[0].numpy()
                result = env.step(action)
                row = {
                    "steps/observations": np.asarray(observation, np.float32),
                    "steps/actions": action,
                    "steps/next_observations": np.asarray(result.observation, np.float32),
                    **{f"steps/{k}": np.asarray(v) for k, v in result.fields.items()},
                }
                row["steps/rewards"] = np.float64(_reward(spec, row, task))
                replay.add(row)
                observation = result.observation
                env_steps += 1
                toc = time.perf_counter()
                ep_env += toc - tic
                tic = toc
                if replay.size >= config.batch_size and env_steps >= config.start_steps:
                    for _ in range(config.updates_per_step):
                        batch = replay.sample(
                            config.batch_size, generator, family_fields, "steps/observations"
                        )
                        stats, _ = relabeled_update(
                            sac, setup.relabeler, batch, generator, lookup=replay
                        )
                        updates += 1
                        for k in STATS:
                            value = float(stats[k])
                            if k == "own_task" and math.isnan(value):
                                continue
                            sums[k] += value
                            own_count += k == "own_task"
                    toc = time.perf_counter()
                    ep_upd += toc - tic
                    tic = toc
            # the episode is over: store it, log it, maybe checkpoint
            episode = replay.episodes - 1
            steps_of = replay.episode_rows(episode)
            append_episode(store, env_name, steps_of, task)
            distance, success = _final_distance(spec, steps_of, task)
            means = {
                k: (sums[k] / own_count if own_count else math.nan)
                if k == "own_task"
                else (sums[k] / updates if updates else math.nan)
                for k in STATS
            }
            metric = {
                "step": env_steps,
                "episode": episode,
                "return": float(steps_of["steps/rewards"].sum()),
                "final_distance": distance,
                "success": success,
                **means,
                "env_steps_per_s": setup.episode_steps / ep_env if ep_env > 0 else math.nan,
                "updates_per_s": updates / ep_upd if ep_upd > 0 else math.nan,
            }
            _append_metrics(metrics, metric)
            recent = [*recent[-9:], metric]
            episodes += 1
            env_time += ep_env
            update_time += ep_upd
            run_env_steps += setup.episode_steps
            run_updates += updates
            bar.update(min(env_steps, config.steps) - bar.n)
            if kill_at is not None and env_steps >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if env_steps >= next_checkpoint or env_steps >= config.steps:
                counters = ckpt.Counters(env_steps, episodes, sac.updates)
                ckpt.save(run_dir, sac, generator, counters)
                next_checkpoint = (
                    env_steps // config.checkpoint_every + 1
                ) * config.checkpoint_every
    finally:
        bar.close()
    keys = ("return", "final_distance", "success")
    summary_recent = {k: float(np.mean([r[k] for r in recent])) for k in keys} if recent else {}
    return RLSummary(
        run_dir=run_dir,
        env=env_name,
        relabel=config.relabel,
        env_steps=env_steps,
        episodes=episodes,
        updates=sac.updates,
        resumed_from=resumed_from,
        env_steps_per_s=run_env_steps / env_time if env_time > 0 else math.nan,
        updates_per_s=run_updates / update_time if update_time > 0 else math.nan,
        recent=summary_recent,
    )


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _stored_episodes(path: Path) -> int:
    """The number of episodes committed to the run's store (0 without one)."""
    if not path.exists():
        return 0
    with open_store(path) as store:
        return store.num_episodes
