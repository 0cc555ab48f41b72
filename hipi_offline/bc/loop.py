"""The train-bc training loop (paper Alg. 3), top to bottom like cleanrl's.

Each iteration draws a minibatch of steps uniformly and, for every step, a task
psi ~ q(psi | tau) from its episode's stored posterior (redrawn every time), and
takes one AdamW step on the behavior-cloning loss of pi(a | s, psi). A metrics row
every ``log_every`` steps (mean loss over the window), a checkpoint every
``checkpoint_every`` steps and at the end. Under torchrun every rank runs this loop
on its slice of the global batch (:mod:`~hipi_offline.bc.distributed`); rank 0
alone writes.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hipi_offline.bc.checkpoint import TrainState, Window, damaged, save
from hipi_offline.bc.config import BCConfig
from hipi_offline.bc.data import (
    BatchSampler,
    Normalization,
    TaskSampler,
    WorkingSet,
    sampler_generator,
)
from hipi_offline.bc.description import RunDescription
from hipi_offline.bc.distributed import DebugHooks, Ranks
from hipi_offline.bc.policy import build_network, checkpoint_path
from hipi_offline.bc.rundir import Start, truncate_metrics, write_error
from hipi_offline.errors import ResourceError, one_line
from hipi_offline.progress import progress_bar
from hipi_offline.store.labels import LabelSet


@dataclass(frozen=True)
class TrainSummary:
    """What a train-bc run did, for the closing summary."""

    run_dir: str
    labels: str | None
    """Label-set name (None: task-agnostic)."""
    method: str | None
    """The label set's relabeling method."""
    head: str
    start_step: int
    """Step the run started from (> 0 when resumed)."""
    step: int
    """Step reached (== total steps when finished)."""
    total_steps: int
    batch_size: int
    parameters: int
    seconds: float
    """Time spent in the training loop."""
    samples_per_second: float
    final_loss: float | None
    """Mean loss over the last logging window (None when nothing was trained)."""
    checkpoint: str
    device: str
    tensorboard: bool
    """False when tensorboard is not installed (metrics.csv only)."""
    cpu_seconds: float = 0.0
    """CPU time of the calling thread in the training loop: with one torch thread on
    the CPU, the work done, unlike ``seconds`` hardly affected by other processes."""
    world_size: int = 1
    """Ranks of the torchrun group that trained the run (1: a single process)."""
    rank: int = 0
    """This process's rank; only rank 0 reports (:meth:`lines` is empty elsewhere)."""
    backend: str | None = None
    """The group's torch.distributed backend (gloo, nccl); None for one process."""

    def lines(self) -> list[str]:
        if self.rank != 0:
            return []
        what = (
            "task-agnostic"
            if self.labels is None
            else f"label set '{self.labels}' ({self.method or 'unknown method'})"
        )
        if self.step == self.start_step:
            first = f"run {self.run_dir} is already complete ({self.step} steps); nothing to do"
        else:
            resumed = f" (resumed at {self.start_step})" if self.start_step else ""
            first = (
                f"trained {self.head} policy, {what}: {self.step - self.start_step} steps"
                f"{resumed} to {self.step}/{self.total_steps}, batch {self.batch_size}, "
                f"{self.parameters:,} parameters, device={self.device}"
            )
            if self.world_size > 1:
                first += f" on each of {self.world_size} ranks ({self.backend})"
        loss = "n/a" if self.final_loss is None else f"{self.final_loss:.4f}"
        board = f"; tensorboard {Path(self.run_dir) / 'tensorboard'}" if self.tensorboard else ""
        return [
            first,
            f"time {self.seconds:.1f} s, {self.samples_per_second:,.0f} samples/s, "
            f"final loss {loss}",
            f"checkpoint {self.checkpoint}; metrics {Path(self.run_dir) / 'metrics.csv'}{board}",
        ]


def lr_at(step: int, config: BCConfig) -> float:
    """Learning rate of update ``step`` (0-based): linear warmup, then decay."""
    warmup = min(config.warmup_steps, config.steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    progress = (step - warmup) / max(1, config.steps - warmup)
    if config.schedule == "linear":
        return config.lr * (1.0 - progress)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def tensorboard_available() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _tensorboard_writer(run_dir: Path, purge_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step or None)


@dataclass(frozen=True)
class TrainingRun:
    """What the loop trains: prepared and checked by :func:`~hipi_offline.bc.train.train_bc`."""

    run_dir: Path
    config: BCConfig
    description: RunDescription
    data: WorkingSet
    labels: LabelSet | None
    """The label set tasks are drawn from (None: task-agnostic)."""
    candidates: np.ndarray | None
    """float32 [K, D] candidate tasks, saved in every checkpoint."""
    norm: Normalization
    start: Start
    resumed: dict[str, torch.Tensor] | None
    """The checked tensors of the checkpoint the run continues from."""
    device: torch.device
    ranks: Ranks = field(default_factory=Ranks)
    """The torchrun group (one rank without torchrun)."""


def summary_of(
    run_dir: Path,
    config: BCConfig,
    labels: LabelSet | None,
    device: torch.device,
    ranks: Ranks | None = None,
    **found: Any,
) -> TrainSummary:
    """The summary of a run with what the loop ``found`` (steps, time, loss...)."""
    ranks = ranks or Ranks()
    return TrainSummary(
        run_dir=str(run_dir),
        labels=None if labels is None else labels.name,
        method=None if labels is None else labels.attrs.get("method"),
        head=config.head,
        total_steps=config.steps,
        batch_size=config.batch_size,
        device=str(device),
        world_size=ranks.world,
        rank=ranks.rank,
        backend=ranks.backend,
        **found,
    )


def _write_row(metrics: Any, row: str, path: Path, saved: int) -> None:
    """Append a metrics row (rank 0; ``metrics`` is None on the other ranks)."""
    if metrics is None:
        return
    try:
        metrics.write(row)
        metrics.flush()
    except OSError as err:
        raise write_error(err, path, saved) from None


def _commit(
    lead: bool,
    run_dir: Path,
    step: int,
    state: TrainState,
    run: RunDescription,
    keep: int,
    saved: int,
) -> Path:
    """Commit the checkpoint of ``step`` on rank 0 (a one-line error naming it when
    that fails); the other ranks write nothing. Its path."""
    if not lead:
        return checkpoint_path(run_dir, step)
    try:
        return save(run_dir, step, state, run, keep)
    except OSError as err:
        raise write_error(err, checkpoint_path(run_dir, step), saved) from None


def train_loop(run: TrainingRun, stack: contextlib.ExitStack) -> TrainSummary:
    """Train from ``run.start`` to ``config.steps``; files stay open on ``stack``."""
    config, run_dir, device, ranks = run.config, run.run_dir, run.device, run.ranks
    torch.manual_seed(config.seed)
    sampler_seed = int(np.random.default_rng(config.seed).integers(2**62))
    network = build_network(run.description)
    network.set_normalization(run.norm)
    network.to(device)
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.lr, weight_decay=config.weight_decay, **fast
    )
    state = TrainState(
        network=network,
        optimizer=optimizer,
        generator=sampler_generator(run.data, device, sampler_seed),
        window=Window.empty(device),
        candidates=run.candidates,
    )
    start = run.start.step
    if run.resumed is not None:
        try:
            state.load_state_dict(run.resumed)
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise damaged(run.start.checkpoint, one_line(str(err), 200)) from None
    window = state.window
    tasks = None if run.labels is None else TaskSampler(run.labels, device)
    shard = ranks.shard(config.batch_size) if ranks.distributed else None
    batches = BatchSampler(run.data, tasks, config.batch_size, state.generator, device, shard)
    loss_of = ranks.loss_function(network)
    hooks = DebugHooks.from_env(ranks.rank)

    metrics_path = run_dir / "metrics.csv"
    metrics = writer = None
    if ranks.lead:
        truncate_metrics(metrics_path, start)
        metrics = stack.enter_context(open(metrics_path, "a"))  # noqa: SIM115
        writer = _tensorboard_writer(run_dir, start)
        if writer is not None:
            stack.callback(writer.close)
    bar = stack.enter_context(
        progress_bar(
            total=config.steps,
            initial=start,
            desc="train-bc",
            unit="step",
            enabled=config.progress and ranks.lead,
            dynamic_ncols=True,
        )
    )

    params = [p for p in network.parameters() if p.requires_grad]
    network.train()
    final_loss = None
    last_checkpoint = run.start.checkpoint
    timed_steps = 0  # steps of the window trained by this process (for the rate)
    saved = start  # step of the last committed checkpoint
    started = window_start = time.perf_counter()
    cpu_started = time.thread_time()
    try:
        for step in range(start, config.steps):
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            obs, act, task = batches.sample()
            loss = loss_of(obs, act, task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # several ranks: averages the gradients over them
            if config.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip, foreach=True)
                window.norm += norm
            optimizer.step()
            window.loss += loss.detach()
            window.steps += 1
            timed_steps += 1
            done = step + 1
            bar.update(1)

            if done % config.log_every == 0 or done == config.steps:
                ranks.mean_(window.loss)  # the global batch's mean loss
                final_loss = float(window.loss) / window.steps
                now = time.perf_counter()
                rate = timed_steps * config.batch_size / max(now - window_start, 1e-9)
                grad = f"{float(window.norm) / window.steps:.6g}" if config.grad_clip > 0 else ""
                row = f"{done},{final_loss:.9g},{lr:.9g},{rate:.1f},{grad}\n"
                ranks.agree(_write_row, metrics, row, metrics_path, saved)
                if writer is not None:
                    writer.add_scalar("train/loss", final_loss, done)
                    writer.add_scalar("train/lr", lr, done)
                    writer.add_scalar("train/samples_per_s", rate, done)
                bar.set_postfix(loss=f"{final_loss:.4f}", sps=f"{rate:,.0f}")
                window.reset()
                timed_steps, window_start = 0, now

            if done % config.checkpoint_every == 0 or done == config.steps:
                ranks.mean_(window.loss)  # the saved window is the same on every rank
                keep = config.keep_checkpoints
                last_checkpoint = ranks.agree(
                    _commit, ranks.lead, run_dir, done, state, run.description, keep, saved
                )
                saved = done
            hooks.after_step(done, network, len(obs))
    except RuntimeError as err:  # a collective of the backward pass whose peer is gone
        if not ranks.distributed or isinstance(err, ResourceError):
            raise
        raise ranks.failed(err, saved) from None

    seconds = time.perf_counter() - started
    trained = config.steps - start
    return summary_of(
        run_dir,
        config,
        run.labels,
        device,
        ranks,
        start_step=start,
        step=config.steps,
        parameters=sum(p.numel() for p in params),
        seconds=seconds,
        samples_per_second=trained * config.batch_size / max(seconds, 1e-9),
        final_loss=final_loss,
        checkpoint=str(last_checkpoint),
        tensorboard=writer is not None,
        cpu_seconds=time.thread_time() - cpu_started,
    )
