"""Options of a task-conditioned behavior-cloning run (mirrors ``hipi-offline train-bc``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hipi_offline.configs import (
    INT_LIMIT,
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

HEAD_OUTPUTS: dict[str, int] = {"gaussian": 2, "deterministic": 1}
"""Policy heads and the network outputs each needs per action dimension (a Gaussian's
mean and log-std; a deterministic head's action)."""
HEADS: tuple[str, ...] = tuple(HEAD_OUTPUTS)
SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "silu", "tanh")
MAX_LAYERS = 256
"""Most hidden layers a network may have."""

RUN_CONTROL_FIELDS: frozenset[str] = frozenset(
    {
        "out",
        "resume",
        "overwrite",
        "device",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "progress",
        "max_memory_mb",
        "threads",
    }
)
"""Fields that may differ when a run is resumed: they say where and how a run is
carried out and logged, not what it computes (bit-exact resumption also needs the
same device)."""


@dataclass(frozen=True)
class BCConfig(RunConfig):
    """Options of one behavior-cloning run."""

    run_control: ClassVar[frozenset[str]] = RUN_CONTROL_FIELDS

    out: str | Path
    """Run directory: config.json, metrics.csv, checkpoints/ and tensorboard/."""
    labels: str | None = None
    """Label set to draw each step's task from (hipi, no-partition, random, original,
    or any other stored name); must be None with ``task_agnostic``."""
    task_agnostic: bool = False
    """Train pi(a | s) without a task input (the paper's baseline); needs no labels."""
    steps: int = 100_000
    """Gradient steps."""
    batch_size: int = 256
    """Steps per minibatch; each is drawn uniformly from all stored steps."""
    hidden: tuple[int, ...] = (256, 256, 256)
    """Hidden layer sizes of the MLP."""
    activation: str = "relu"
    """Hidden activation: relu, gelu, silu or tanh."""
    head: str = "gaussian"
    """gaussian (tanh-squashed Gaussian, maximum likelihood) or deterministic (MSE)."""
    task_embedding: int = 0
    """Discrete task families only: 0 feeds the one-hot candidate row as is; a positive
    size maps it through a learned linear embedding of that size first."""
    body_frame_task: bool = False
    """Also give the policy the task's world direction expressed in the body frame, for
    environments that declare where their observation holds the body's rotation
    (``TaskFrame``; the quadruped)."""
    lr: float = 3e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    schedule: str = "cosine"
    """Learning-rate decay after warmup: cosine or linear (to zero), or constant."""
    warmup_steps: int = 1000
    """Steps of linear warmup from zero (capped at ``steps``)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    seed: int = 0
    """Seed of the initial weights and of every minibatch and task draw."""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda."""
    threads: int = 0
    """CPU threads for torch (0 keeps torch's default). On a busy machine one thread
    is often much faster than several for small networks."""
    checkpoint_every: int = 10_000
    """Write a checkpoint every this many steps (and always at the end)."""
    keep_checkpoints: int = 0
    """Keep only this many most recent checkpoints; 0 keeps all."""
    log_every: int = 100
    """Write a metrics row (mean loss over the window) every this many steps."""
    max_memory_mb: float = 16_384.0
    """Working sets (observations + actions as float32) larger than this are spilled
    to a memory-mapped file in the run directory instead of held in RAM."""
    resume: bool = False
    """Continue the run in ``out`` from its last checkpoint (starts fresh when there
    is none); the run's config must match."""
    overwrite: bool = False
    """Delete an existing run in ``out`` (its own files only) and start over."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        check_config(self)


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"256,256,256"`` -> (256, 256, 256); a FieldError of ``hidden`` for anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    valid = len(parts) <= MAX_LAYERS and all(
        p.isascii() and p.isdigit() and len(p) <= 18 and int(p) > 0 for p in parts
    )
    if not valid:
        raise FieldError(
            "hidden",
            f"expected up to {MAX_LAYERS} comma-separated positive layer sizes "
            f"like 256,256,256, got {one_line(repr(text), 80)}",
        )
    return tuple(int(p) for p in parts)


def check_hidden(hidden: Any) -> None:
    """``hidden``: a tuple of 1 to :data:`MAX_LAYERS` positive layer sizes."""
    if (
        not isinstance(hidden, tuple)
        or not hidden
        or len(hidden) > MAX_LAYERS
        or any(
            isinstance(h, bool) or not isinstance(h, int) or not 1 <= h < INT_LIMIT for h in hidden
        )
    ):
        raise FieldError(
            "hidden",
            f"expected 1 to {MAX_LAYERS} positive layer sizes, got {one_line(repr(hidden), 80)}",
        )


def check_config(config: BCConfig) -> None:
    """Refuse bad option values with one-line FieldErrors naming the field
    (``BCConfig`` calls this when it is made)."""
    for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
        check_int(getattr(config, name), name)
    for name in ("warmup_steps", "keep_checkpoints", "task_embedding"):
        check_int(getattr(config, name), name, low=0)
    check_threads(config.threads)
    check_seed(config.seed)
    check_hidden(config.hidden)
    check_choice(config.head, "head", HEADS)
    check_choice(config.schedule, "schedule", SCHEDULES)
    check_choice(config.activation, "activation", ACTIVATIONS)
    check_number(config.lr, "lr")
    for name in ("weight_decay", "grad_clip", "max_memory_mb"):
        check_number(getattr(config, name), name, allow_zero=True)
    for name in ("task_agnostic", "body_frame_task", "resume", "overwrite", "progress"):
        check_flag(getattr(config, name), name)
    if not isinstance(config.out, (str, Path)) or not str(config.out):
        raise FieldError("out", f"expected a run directory, got {one_line(repr(config.out), 80)}")
    if not isinstance(config.device, str):
        raise FieldError("device", f"expected auto, cpu or cuda, got {config.device!r}")
    if config.labels is not None and not isinstance(config.labels, str):
        raise FieldError("labels", f"expected a label-set name, got {config.labels!r}")
    if config.task_agnostic and config.labels is not None:
        raise FieldError("task_agnostic", "trains without tasks; drop labels", ["labels"])
    if not config.task_agnostic and not config.labels:
        raise FieldError(
            "labels", "name the label set to train on, or pass task_agnostic", ["task_agnostic"]
        )
    if config.task_agnostic and config.task_embedding:
        raise FieldError("task_embedding", "a task-agnostic policy has no task input")
    if config.task_agnostic and config.body_frame_task:
        raise FieldError("body_frame_task", "a task-agnostic policy has no task input")
    if config.resume and config.overwrite:
        raise FieldError(
            "resume", "pass at most one of resume and overwrite", ["resume", "overwrite"]
        )
