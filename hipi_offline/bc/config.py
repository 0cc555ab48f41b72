"""Options of a task-conditioned behavior-cloning run (mirrors ``hipi-offline train-bc``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hipi_offline.errors import InputError, one_line
from hipi_offline.preflight import check_seed

HEADS: tuple[str, ...] = ("gaussian", "deterministic")
SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "silu", "tanh")
INT_LIMIT = 2**63
"""Step counts, sizes and intervals stay below this (torch's int64)."""
MAX_LAYERS = 256
"""Most hidden layers a network may have."""
MAX_THREADS = 1024
"""More torch threads than this are refused (torch accepts absurd counts, then fails)."""

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
class BCConfig:
    """Options of one behavior-cloning run."""

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

    def identity(self) -> dict[str, Any]:
        """The fields that define what the run computes (compared on resume)."""
        return {k: v for k, v in self.to_json().items() if k not in RUN_CONTROL_FIELDS}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BCConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "hidden" in values:
            values["hidden"] = tuple(int(h) for h in values["hidden"])
        return cls(**values)


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"256,256,256"`` -> (256, 256, 256); an InputError for anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    valid = len(parts) <= MAX_LAYERS and all(
        p.isascii() and p.isdigit() and len(p) <= 18 and int(p) > 0 for p in parts
    )
    if not valid:
        raise InputError(
            f"--hidden: expected up to {MAX_LAYERS} comma-separated positive layer sizes "
            f"like 256,256,256, got {one_line(repr(text), 80)}"
        )
    return tuple(int(p) for p in parts)


def check_config(config: BCConfig) -> None:
    """Refuse bad option values with one-line InputErrors naming the option."""

    def positive_int(
        value: Any, flag: str, allow_zero: bool = False, high: int = INT_LIMIT
    ) -> None:
        low = 0 if allow_zero else 1
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
            what = "a non-negative" if allow_zero else "a positive"
            raise InputError(f"{flag}: expected {what} integer below {high}, got {value!r}")

    positive_int(config.steps, "--steps")
    positive_int(config.batch_size, "--batch-size")
    positive_int(config.checkpoint_every, "--checkpoint-every")
    positive_int(config.log_every, "--log-every")
    positive_int(config.warmup_steps, "--warmup-steps", allow_zero=True)
    positive_int(config.keep_checkpoints, "--keep-checkpoints", allow_zero=True)
    positive_int(config.task_embedding, "--task-embedding", allow_zero=True)
    positive_int(config.threads, "--threads", allow_zero=True, high=MAX_THREADS + 1)
    check_seed(config.seed)
    hidden = config.hidden
    if (
        not hidden
        or len(hidden) > MAX_LAYERS
        or any(
            isinstance(h, bool) or not isinstance(h, int) or not 1 <= h < INT_LIMIT for h in hidden
        )
    ):
        raise InputError(
            f"--hidden: expected 1 to {MAX_LAYERS} positive layer sizes, "
            f"got {one_line(repr(hidden), 80)}"
        )
    if config.head not in HEADS:
        raise InputError(f"--head: expected one of {', '.join(HEADS)}, got {config.head!r}")
    if config.schedule not in SCHEDULES:
        raise InputError(
            f"--schedule: expected one of {', '.join(SCHEDULES)}, got {config.schedule!r}"
        )
    if config.activation not in ACTIVATIONS:
        raise InputError(
            f"--activation: expected one of {', '.join(ACTIVATIONS)}, got {config.activation!r}"
        )
    for flag, value, allow_zero in (
        ("--lr", config.lr, False),
        ("--weight-decay", config.weight_decay, True),
        ("--grad-clip", config.grad_clip, True),
        ("--max-memory-mb", config.max_memory_mb, True),
    ):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = (
            ok
            and value == value
            and value != float("inf")
            and (value >= 0 if allow_zero else value > 0)
        )
        if not ok:
            what = "a non-negative" if allow_zero else "a positive"
            raise InputError(f"{flag}: expected {what} finite number, got {value!r}")
    if config.task_agnostic and config.labels is not None:
        raise InputError("--task-agnostic trains without tasks; drop --labels")
    if not config.task_agnostic and not config.labels:
        raise InputError("--labels: name the label set to train on, or pass --task-agnostic")
    if config.task_agnostic and config.task_embedding:
        raise InputError("--task-embedding: a task-agnostic policy has no task input")
    if config.task_agnostic and config.body_frame_task:
        raise InputError("--body-frame-task: a task-agnostic policy has no task input")
    if config.resume and config.overwrite:
        raise InputError("--resume and --overwrite: pass at most one")
