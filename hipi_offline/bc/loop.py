"""The train-bc training loop (paper Alg. 3), top to bottom like cleanrl's.

Each iteration draws a minibatch of steps uniformly and, for every step, a task
psi ~ q(psi | tau) from its episode's stored posterior (redrawn every time), and
takes one AdamW step on the behavior-cloning loss of pi(a | s, psi). A metrics row
every ``log_every`` steps (mean loss over the window), a checkpoint every
``checkpoint_every`` steps and at the end.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
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
from hipi_offline.bc.policy import build_network, checkpoint_path
from hipi_offline.bc.rundir import Start, truncate_metrics, write_error
from hipi_offline.errors import one_line
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

    def lines(self) -> list[str]:
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


def summary_of(
    run_dir: Path, config: BCConfig, labels: LabelSet | None, device: torch.device, **found: Any
) -> TrainSummary:
    """The summary of a run with what the loop ``found`` (steps, time, loss...)."""
    return TrainSummary(
        run_dir=str(run_dir),
        labels=None if labels is None else labels.name,
        method=None if labels is None else labels.attrs.get("method"),
        head=config.head,
        total_steps=config.steps,
        batch_size=config.batch_size,
        device=str(device),
        **found,
    )


def train_loop(run: TrainingRun, stack: contextlib.ExitStack) -> TrainSummary:
    """Train from ``run.start`` to ``config.steps``; files stay open on ``stack``."""
    config, run_dir, device = run.config, run.run_dir, run.device
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
    batches = BatchSampler(run.data, tasks, config.batch_size, state.generator, device)

    metrics_path = run_dir / "metrics.csv"
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
            enabled=config.progress,
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
    for step in range(start, config.steps):
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        obs, act, task = batches.sample()
        loss = network.loss(obs, act, task)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            window.norm += torch.nn.utils.clip_grad_norm_(params, config.grad_clip, foreach=True)
        optimizer.step()
        window.loss += loss.detach()
        window.steps += 1
        timed_steps += 1
        done = step + 1
        bar.update(1)

        if done % config.log_every == 0 or done == config.steps:
            final_loss = float(window.loss) / window.steps
            now = time.perf_counter()
            rate = timed_steps * config.batch_size / max(now - window_start, 1e-9)
            grad = f"{float(window.norm) / window.steps:.6g}" if config.grad_clip > 0 else ""
            try:
                metrics.write(f"{done},{final_loss:.9g},{lr:.9g},{rate:.1f},{grad}\n")
                metrics.flush()
            except OSError as err:
                raise write_error(err, metrics_path, saved) from None
            if writer is not None:
                writer.add_scalar("train/loss", final_loss, done)
                writer.add_scalar("train/lr", lr, done)
                writer.add_scalar("train/samples_per_s", rate, done)
            bar.set_postfix(loss=f"{final_loss:.4f}", sps=f"{rate:,.0f}")
            window.reset()
            timed_steps, window_start = 0, now

        if done % config.checkpoint_every == 0 or done == config.steps:
            try:
                last_checkpoint = save(
                    run_dir, done, state, run.description, config.keep_checkpoints
                )
            except OSError as err:
                raise write_error(err, checkpoint_path(run_dir, done), saved) from None
            saved = done

    seconds = time.perf_counter() - started
    trained = config.steps - start
    return summary_of(
        run_dir,
        config,
        run.labels,
        device,
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
