"""Options of an online HIPI-RL run (mirrors ``hipi-offline train-rl``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hipi_offline.bc.config import check_hidden
from hipi_offline.configs import (
    FieldError,
    RunConfig,
    check_choice,
    check_flag,
    check_int,
    check_number,
    check_seed,
    check_threads,
)
from hipi_offline.errors import one_line
from hipi_offline.rl.relabel import STRATEGIES

RUN_CONTROL_FIELDS: frozenset[str] = frozenset(
    {"out", "steps", "overwrite", "threads", "checkpoint_every", "progress", "tensorboard"}
)
"""Fields that may differ when a run is continued: where and how it is carried out,
and how long (a rerun with more ``steps`` continues a finished run). The others must
match the run's config.json."""


@dataclass(frozen=True)
class RLConfig(RunConfig):
    """Options of one online RL run."""

    run_control: ClassVar[frozenset[str]] = RUN_CONTROL_FIELDS

    out: str | Path
    """Run directory: config.json, replay.h5, metrics.csv, checkpoints/ (and tensorboard/).
    Rerunning the same command continues it from its last checkpoint."""
    tasks: str | None = None
    """Task spec (a built-in name or a YAML file); default: the environment's own."""
    relabel: str = "hipi"
    """Minibatch relabeling: hipi (paper Alg. 1), her-final, her-future (goal families),
    random or none."""
    relabel_fraction: float = 0.5
    """Fraction of each minibatch relabeled, in [0, 1]."""
    relabel_temperature: str = "alpha"
    """hipi's temperature: alpha (the learned SAC temperature at each update) or a
    positive number."""
    steps: int = 20_000
    """Environment steps; the run ends at the first episode end at or after this many.
    A finished run given more steps continues."""
    episode_steps: int = 0
    """Steps per episode; 0: the environment's default."""
    start_steps: int = 1000
    """Uniformly random actions for this many first environment steps."""
    batch_size: int = 256
    """Transitions per minibatch, drawn uniformly from every stored step."""
    updates_per_step: int = 1
    """Gradient updates per environment step (once batch_size steps are stored): with
    ``envs`` environments, envs x updates_per_step updates after each lockstep step."""
    envs: int = 1
    """Environments stepped in lockstep, each on its own worker process when more than
    one; each lockstep round runs one episode on each (episode indices in environment
    order), so results do not depend on timing."""
    init_store: str | None = None
    """Start the replay buffer from this store's episodes (copied into replay.h5 first),
    each with its commanded task (episodes/task) or, with init_labels, a label's task."""
    init_labels: str | None = None
    """With init_store: each episode's task is the most probable task (the argmax) of
    this label set's posterior instead of its commanded task."""
    offline_updates: int = 0
    """Gradient updates on the initial buffer (init_store) before the first environment
    step."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the actor and of each critic."""
    gamma: float = 0.99
    """Discount of the soft Q-values."""
    tau: float = 0.005
    """Polyak step of the target critics."""
    lr: float = 3e-4
    """Adam learning rate of the actor, the critics and the temperature."""
    init_alpha: float = 1.0
    """Initial entropy temperature alpha (then learned toward -act_dim entropy)."""
    seed: int = 0
    """Seed of the networks, the tasks, the resets, the actions and every minibatch."""
    threads: int = 0
    """CPU threads for torch (0 keeps torch's default); one is often fastest for small
    networks on a busy machine."""
    checkpoint_every: int = 5000
    """Write a checkpoint at the first episode end after every this many environment
    steps (and always at the end)."""
    overwrite: bool = False
    """Delete an existing run in ``out`` (a folder this toolkit made) and start over."""
    progress: bool = True
    """Show a tqdm progress bar."""
    tensorboard: bool = False
    """Also write the per-episode metrics to RUN/tensorboard/ (needs the tensorboard
    package; metrics.csv stays the record)."""

    def __post_init__(self) -> None:
        check_config(self)


def check_config(config: RLConfig) -> None:
    """One-line FieldErrors naming the field of each bad value."""
    for name in ("steps", "batch_size", "updates_per_step", "checkpoint_every"):
        check_int(getattr(config, name), name)
    check_int(config.envs, "envs", high=256)
    for name in ("episode_steps", "start_steps", "offline_updates"):
        check_int(getattr(config, name), name, low=0)
    check_threads(config.threads)
    check_seed(config.seed)
    check_choice(config.relabel, "relabel", tuple(STRATEGIES))
    fraction = config.relabel_fraction
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0.0 <= fraction <= 1.0
    ):
        raise FieldError("relabel_fraction", f"expected a number in [0, 1], got {fraction!r}")
    temperature = config.relabel_temperature
    if temperature != "alpha":
        try:
            value = float(temperature)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise FieldError(
                "relabel_temperature",
                "expected alpha or a positive finite number, got "
                + one_line(repr(temperature), 80),
            )
    check_hidden(config.hidden)
    for name in ("gamma", "tau"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise FieldError(name, f"expected a number in [0, 1], got {value!r}")
    check_number(config.lr, "lr")
    check_number(config.init_alpha, "init_alpha")
    for name in ("overwrite", "progress", "tensorboard"):
        check_flag(getattr(config, name), name)
    if not isinstance(config.out, (str, Path)) or not str(config.out):
        raise FieldError("out", f"expected a run directory, got {one_line(repr(config.out), 80)}")
    if config.tasks is not None and (not isinstance(config.tasks, str) or not config.tasks):
        raise FieldError("tasks", f"expected a task spec, got {one_line(repr(config.tasks), 80)}")
    for name in ("init_store", "init_labels"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise FieldError(name, f"expected a name, got {one_line(repr(value), 80)}")
    if config.init_labels is not None and config.init_store is None:
        raise FieldError("init_labels", "needs --init-store")
    if config.offline_updates and config.init_store is None:
        raise FieldError("offline_updates", "needs --init-store (an initial buffer)")
