"""``hipi-offline train-rl``: online task-conditioned SAC whose minibatches are
relabeled (paper Alg. 2).

The run steps ``envs`` environments in lockstep (on worker processes when more than
one: :mod:`hipi_offline.rl.workers`), in rounds of one episode per environment. Online
episode ``i`` (counted from 0 over the rounds, environment order within a round) draws
its commanded task from the spec's prior and its reset seed from
``default_rng([seed, i])`` (the first ``start_steps`` actions are uniform draws of the
same generator; later ones are the policy's draws, one batched call for all
environments). After every lockstep step, once ``batch_size`` steps are stored and the
random phase is over, ``envs x updates_per_step`` minibatches are drawn uniformly from
every stored step (the running episodes included) and passed through
:func:`~hipi_offline.rl.sac.relabeled_update`. Nothing depends on which worker answers
first. Environments without termination: every discount is 1 (episode ends are time
limits).

``--init-store`` starts the buffer from another store's episodes
(:mod:`hipi_offline.rl.init_store`): they become the first episodes of replay.h5, and
``offline_updates`` updates are made on them before the first environment step.

The run folder holds config.json, replay.h5 (finished episodes, a store that
``relabel``, ``train-bc`` and ``inspect`` read; appended at each checkpoint, since every
append commits the store to disk), metrics.csv (a row per online episode),
checkpoints/ (at round ends: :mod:`hipi_offline.rl.checkpoint`) and, with
``--tensorboard``, tensorboard/ (the metrics.csv columns as ``train/<column>`` scalars
at the environment step). Rerunning the same command continues from the last
checkpoint: episodes a killed run appended after it are dropped from the store, the
metrics and the TensorBoard events, and the run ends with the same parameters as an
uninterrupted one (same thread count). SIGTERM and Ctrl-C stop the run at the next
safe point (:class:`StopRequest`; a second one at once): the workers are closed and the
command ends without a traceback, keeping the last checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import signal
import threading
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
from hipi_offline.rl.init_store import InitEpisodes, load_init_episodes
from hipi_offline.rl.relabel import Relabeler, achieved_goal, is_goal_family, make_relabeler
from hipi_offline.rl.replay import (
    Replay,
    append_episodes,
    load_replay,
    rewrite_store,
    store_metadata,
)
from hipi_offline.rl.sac import SAC, SACConfig, relabeled_update
from hipi_offline.rl.workers import EnvPool, make_pool
from hipi_offline.store import open_store
from hipi_offline.store.atomic import atomic_write_bytes
from hipi_offline.store.backends import ArrayInfo
from hipi_offline.tasks.families import GoalFamily, base_family
from hipi_offline.tasks.spec import TaskSpec, load_task_spec

RUN_KIND = "rl-run"
"""The marker kind of a train-rl run folder."""
KILL_ENV = "HIPI_OFFLINE_TEST_KILL"
"""Test hook: ``rl:N`` kills the process with SIGKILL at the first checkpoint at or
after N environment steps, after its episodes are appended to replay.h5 and before the
checkpoint is written (so the store holds episodes that the last checkpoint does not)."""
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
    envs: int = 1
    init_episodes: int = 0
    """Episodes the buffer started from (--init-store); counted in ``episodes``."""
    tensorboard: bool | None = None
    """Whether RUN/tensorboard was written (False: asked for, not installed)."""

    def lines(self) -> list[str]:
        start = "" if self.resumed_from is None else f" (continued from step {self.resumed_from})"
        where = f" on {self.envs} environments" if self.envs > 1 else ""
        init = f" ({self.init_episodes} from --init-store)" if self.init_episodes else ""
        out = [
            f"trained on {self.env}{where} with {self.relabel} relabeling{start}: "
            f"{self.env_steps} env steps, {self.episodes} episodes{init}, {self.updates} "
            f"updates -> {self.run_dir}"
        ]
        if self.recent:
            out.append(
                "  last episodes: "
                + ", ".join(f"{k} {v:.4g}" for k, v in self.recent.items() if math.isfinite(v))
            )
        out.append(f"  {self.env_steps_per_s:.0f} env steps/s, {self.updates_per_s:.0f} updates/s")
        if self.tensorboard:
            out.append(f"  tensorboard {self.run_dir / 'tensorboard'}")
        elif self.tensorboard is False:
            out.append("  tensorboard is not installed: metrics in metrics.csv only")
        return out


# ---------------------------------------------------------------- set-up checks
@dataclass
class Setup:
    env: TaskEnv
    spec: TaskSpec
    relabeler: Relabeler
    task_dim: int
    episode_steps: int
    rows: dict[str, tuple[tuple[int, ...], np.dtype]]
    """Shape and dtype of every step field of a stored transition."""


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
    rows = {
        "steps/observations": (tuple(np.shape(observation)), np.dtype(np.float32)),
        "steps/actions": ((info.action_dim,), np.dtype(np.float32)),
        "steps/next_observations": (tuple(np.shape(observation)), np.dtype(np.float32)),
        **{
            f"steps/{name}": (tuple(np.shape(v)), np.asarray(v).dtype)
            for name, v in result.fields.items()
        },
        "steps/rewards": ((), np.dtype(np.float64)),
    }
    return Setup(env, spec, relabeler, task_dim, steps, rows)


RUN_FILES = frozenset({"config.json", "metrics.csv", "replay.h5", MARKER_NAME})
RUN_FOLDERS = frozenset({ckpt.FOLDER, "replay.h5.labels", "tensorboard"})
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


def _resumable(run_dir: Path, config: RLConfig) -> bool:
    """Whether the run folder (read, never written) holds checkpoints this command
    would continue from; the folder's full checks come after (:func:`_prepare_folder`)."""
    try:
        return (
            not config.overwrite
            and run_dir.is_dir()
            and not run_dir.is_symlink()
            and marker_kind(run_dir) == RUN_KIND
            and not (run_dir / ckpt.FOLDER).is_symlink()
            and bool(ckpt.list_checkpoints(run_dir))
        )
    except OSError:
        return False


class StopRequest:
    """SIGTERM and SIGINT during a run: the first sets :attr:`requested`, which the
    run checks at safe points (after each lockstep step and update, and while it waits
    for a worker) and then stops like Ctrl-C; a second one interrupts at once. An
    exception raised by the handler itself could land anywhere, even in a finalizer
    that swallows it, and the run would go on."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def check(self) -> None:
        """KeyboardInterrupt once a stop was requested."""
        if self.requested:
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self.previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}


def train_rl(env_name: str, config: RLConfig) -> RLSummary:
    """Run (or continue) ``config``'s online run on the environment ``env_name``."""
    setup = _setup(env_name, config)
    stop = StopRequest()
    stop.install()
    try:
        init = None
        if config.init_store is not None and not _resumable(Path(config.out), config):
            init = load_init_episodes(
                config.init_store, config.init_labels, setup.rows, setup.spec, setup.task_dim
            )
            total = sum(init.lengths)
            if config.offline_updates and total < config.batch_size:
                raise InputError(
                    f"--offline-updates: the initial buffer has {total} steps, fewer than "
                    f"--batch-size {config.batch_size}"
                )
        with torch_threads(config.threads):
            return _train(env_name, config, setup, init, stop)
    finally:
        setup.env.close()
        stop.restore()


def _tensorboard_writer(run_dir: Path, purge_step: int) -> Any:
    """A SummaryWriter on RUN/tensorboard (None when tensorboard is not installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step or None)


def _train(
    env_name: str,
    config: RLConfig,
    setup: Setup,
    init: InitEpisodes | None,
    stop: StopRequest,
) -> RLSummary:
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
    board = run_dir / "tensorboard"
    counters = ckpt.Counters(0, 0, 0)
    resumed_from = None
    n_envs, length = config.envs, setup.episode_steps
    family_fields = tuple(spec.family.fields)
    if resume:
        step, path = ckpt.list_checkpoints(run_dir)[-1]
        counters = ckpt.restore(path, sac, generator)
        resumed_from = step
        metadata = store_metadata(store)
        replay = load_replay(store, counters.episodes, max(config.steps, counters.env_steps))
        if _stored_episodes(store) > counters.episodes:
            rewrite_store(store, env_name, replay, metadata)
        rows = [r for r in _read_rows(metrics) if int(float(r["episode"])) < counters.episodes]
        _write_metrics(metrics, rows)
    else:
        for leftover in (store, metrics):
            leftover.unlink(missing_ok=True)
        if board.is_dir() and not board.is_symlink():
            shutil.rmtree(board)
        initial = sum(init.lengths) if init is not None else 0
        replay = Replay(initial + config.steps + n_envs * length)
        metadata = {"made_by": "train-rl"}
        if init is not None:
            metadata.update(
                init_store=str(config.init_store),
                init_episodes=init.episodes,
                init_tasks=init.source,
            )
            for e in range(init.episodes):
                replay.add_episode(init.episode(e), init.tasks[e])
            append_episodes(store, env_name, replay, range(init.episodes), metadata)
            counters = ckpt.Counters(0, init.episodes, 0, init.episodes)
        _write_metrics(metrics, [])
        for _ in range(config.offline_updates):
            batch = replay.sample(config.batch_size, generator, family_fields, "steps/observations")
            relabeled_update(sac, setup.relabeler, batch, generator, lookup=replay)
            stop.check()

    writer = _tensorboard_writer(run_dir, counters.env_steps + 1) if config.tensorboard else None
    kill_at = _kill_step()
    pending: list[int] = []  # finished episodes not yet in replay.h5
    env_steps, episodes = counters.env_steps, counters.episodes
    init_episodes = counters.init_episodes
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
    pool: EnvPool | None = None
    try:
        pool = make_pool(env_name, n_envs, env, interrupted=stop)
        while env_steps < config.steps:
            stop.check()
            # one lockstep round: one episode on each environment, in environment order
            rngs = [
                np.random.default_rng([config.seed, episodes - init_episodes + k])
                for k in range(n_envs)
            ]
            tasks = [spec.prior.sample(1, rng)[0].astype(np.float32) for rng in rngs]
            task_t = torch.from_numpy(np.stack(tasks))
            tic = time.perf_counter()
            observations = pool.reset([int(rng.integers(2**31)) for rng in rngs])
            replay.start_round(tasks, length)
            sums = {k: 0.0 for k in STATS}
            own_count = 0
            updates = 0
            ep_env = ep_upd = 0.0
            for _ in range(length):
                if env_steps < config.start_steps:
                    actions = [
                        rng.uniform(info.action_low, info.action_high).astype(np.float32)
                        for rng in rngs
                    ]
                else:
                    obs_t = torch.from_numpy(
                        np.stack([np.asarray(o, np.float32) for o in observations])
                    )
                    actions = list(sac.act(obs_t, task_t).numpy())
                results = pool.step(actions)
                stop.check()
                rows = []
                for k, result in enumerate(results):
                    row = {
                        "steps/observations": np.asarray(observations[k], np.float32),
                        "steps/actions": actions[k],
                        "steps/next_observations": np.asarray(result.observation, np.float32),
                        **{f"steps/{n}": np.asarray(v) for n, v in result.fields.items()},
                    }
                    row["steps/rewards"] = np.float64(_reward(spec, row, tasks[k]))
                    rows.append(row)
                replay.add_round(rows)
                observations = [result.observation for result in results]
                env_steps += n_envs
                toc = time.perf_counter()
                ep_env += toc - tic
                tic = toc
                if replay.size >= config.batch_size and env_steps >= config.start_steps:
                    for _ in range(n_envs * config.updates_per_step):
                        batch = replay.sample(
                            config.batch_size, generator, family_fields, "steps/observations"
                        )
                        stats, _ = relabeled_update(
                            sac, setup.relabeler, batch, generator, lookup=replay
                        )
                        updates += 1
                        stop.check()
                        for k in STATS:
                            value = float(stats[k])
                            if k == "own_task" and math.isnan(value):
                                continue
                            sums[k] += value
                            own_count += k == "own_task"
                    toc = time.perf_counter()
                    ep_upd += toc - tic
                    tic = toc
            # the round is over: store its episodes, log them, maybe checkpoint
            finished = replay.end_round()
            pending += finished
            means = {
                k: (sums[k] / own_count if own_count else math.nan)
                if k == "own_task"
                else (sums[k] / updates if updates else math.nan)
                for k in STATS
            }
            for k, episode in enumerate(finished):
                steps_of = replay.episode_rows(episode)
                distance, success = _final_distance(spec, steps_of, tasks[k])
                metric = {
                    "step": env_steps,
                    "episode": episode,
                    "return": float(steps_of["steps/rewards"].sum()),
                    "final_distance": distance,
                    "success": success,
                    **means,
                    "env_steps_per_s": n_envs * length / ep_env if ep_env > 0 else math.nan,
                    "updates_per_s": updates / ep_upd if ep_upd > 0 else math.nan,
                }
                _append_metrics(metrics, metric)
                if writer is not None:
                    for name in METRICS[2:]:
                        if math.isfinite(metric[name]):
                            writer.add_scalar(f"train/{name}", metric[name], env_steps)
                recent = [*recent[-9:], metric]
            episodes += n_envs
            env_time += ep_env
            update_time += ep_upd
            run_env_steps += n_envs * length
            run_updates += updates
            bar.update(min(env_steps, config.steps) - bar.n)
            if env_steps >= next_checkpoint or env_steps >= config.steps:
                # the store first (one append of every episode since the last one), then
                # the checkpoint that counts them: a kill between the two leaves extra
                # episodes, which the resumed run drops
                if pending:
                    append_episodes(store, env_name, replay, pending, metadata)
                pending = []
                if writer is not None:
                    writer.flush()
                if kill_at is not None and env_steps >= kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                counters = ckpt.Counters(env_steps, episodes, sac.updates, init_episodes)
                ckpt.save(run_dir, sac, generator, counters)
                next_checkpoint = (
                    env_steps // config.checkpoint_every + 1
                ) * config.checkpoint_every
    finally:
        bar.close()
        if pool is not None:
            pool.close()
        if writer is not None:
            writer.close()
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
        envs=n_envs,
        init_episodes=init_episodes,
        tensorboard=None if not config.tensorboard else writer is not None,
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
