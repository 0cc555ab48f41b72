"""The train-bc stage: store + label set -> a task-conditioned policy (paper Alg. 3).

Each iteration draws a minibatch of steps uniformly and, for every step, a task
psi ~ q(psi | tau) from its episode's stored posterior (redrawn every time), and
takes one AdamW step on the behavior-cloning loss of pi(a | s, psi).

Run directory::

    config.json                       run description (config, statistics, task spec)
    metrics.csv                       step, loss, lr, samples_per_s, grad_norm
    checkpoints/step_XXXXXXX.safetensors
    tensorboard/                      only when tensorboard is installed

A checkpoint holds the weights and statistics, the optimizer state and the
sampler's RNG state; the learning rate is a pure function of the step. So
``resume`` continues exactly where the last checkpoint left off: on the same
device, the losses and weights equal those of an uninterrupted run bit for bit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hipi_offline.bc.config import BCConfig, check_config
from hipi_offline.bc.data import (
    BatchSampler,
    Normalization,
    TaskSampler,
    check_labels,
    encode_candidates,
    is_discrete,
    load_working_set,
    sampler_generator,
    task_names,
)
from hipi_offline.bc.policy import (
    BCNetwork,
    atomic_write_bytes,
    build_network,
    checkpoint_path,
    list_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from hipi_offline.errors import InputError
from hipi_offline.progress import progress_bar
from hipi_offline.relabel.run import resolve_device
from hipi_offline.store.labels import LabelSet
from hipi_offline.store.store import TrajectoryStore, open_store

RUN_FORMAT = "hipi_offline.bc.run/1"
METRICS_HEADER = "step,loss,lr,samples_per_s,grad_norm\n"
_OWN_ENTRIES = frozenset(
    {"config.json", "metrics.csv", "checkpoints", "tensorboard", ".lock", ".cache"}
)


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
        board = (
            f"tensorboard {Path(self.run_dir) / 'tensorboard'}"
            if self.tensorboard
            else "tensorboard not installed (skipped)"
        )
        return [
            first,
            f"time {self.seconds:.1f} s, {self.samples_per_second:,.0f} samples/s, "
            f"final loss {loss}",
            f"checkpoint {self.checkpoint}; metrics {Path(self.run_dir) / 'metrics.csv'}; {board}",
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


# ---------------------------------------------------------------- run directory
def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _fingerprint(store: TrajectoryStore, labels: LabelSet | None) -> dict[str, Any]:
    """What identifies the training data (compared on resume)."""
    found: dict[str, Any] = {
        "env": str(store.attrs.get("env", "")),
        "num_episodes": store.num_episodes,
        "num_steps": store.num_steps,
        "ends": _digest(store.ends),
    }
    if labels is not None:
        found["labels"] = _digest(labels.candidates, labels.topk_index, labels.topk_logprob)
    return found


def _describe_diff(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    keys = sorted(set(ours) | set(theirs))
    diffs = [k for k in keys if ours.get(k) != theirs.get(k)]
    return ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now" for k in diffs[:3])


def _remove_own(run_dir: Path) -> None:
    for name in _OWN_ENTRIES - {".lock"}:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _lock(run_dir: Path, stack: contextlib.ExitStack) -> None:
    """Hold an exclusive lock on the run directory (released on exit or kill)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    handle = stack.enter_context(open(run_dir / ".lock", "a+"))  # noqa: SIM115
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise InputError(f"{run_dir}: another train-bc run is writing it") from None


def _prepare_run_dir(
    run_dir: Path, config: BCConfig, fingerprint: dict[str, Any], stack: contextlib.ExitStack
) -> tuple[int, Path | None]:
    """Lock the run directory and decide how to start: (step, checkpoint to resume
    from or None for a fresh start). Refuses to touch anything it did not write."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--out {run_dir}: exists and is not a directory")
    if run_dir.is_dir():
        entries = set(os.listdir(run_dir))
        foreign = sorted(entries - _OWN_ENTRIES)
        if foreign and not (run_dir / "config.json").is_file():
            raise InputError(
                f"--out {run_dir}: exists and is not a train-bc run directory (holds "
                f"{foreign[0]}); choose another --out"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    _lock(run_dir, stack)
    config_file = run_dir / "config.json"
    if not config_file.is_file() or config.overwrite:
        _remove_own(run_dir)
        return 0, None
    try:
        previous = json.loads(config_file.read_text())
        old_config = BCConfig.from_json(previous["config"]).identity()
        old_fingerprint = previous["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(
            f"--out {run_dir}: config.json is damaged; pass --overwrite to start over"
        ) from None
    new_config = config.identity()
    if old_config != new_config:
        raise InputError(
            f"--out {run_dir}: holds a run with a different config "
            f"({_describe_diff(new_config, old_config)}); pass --overwrite to replace it "
            "or choose another --out"
        )
    if old_fingerprint != fingerprint:
        raise InputError(
            f"--out {run_dir}: was trained on different data "
            f"({_describe_diff(fingerprint, old_fingerprint)}); pass --overwrite to start over"
        )
    found = list_checkpoints(run_dir)
    step = found[-1][0] if found else 0
    if not config.resume:
        state = "a finished run" if step >= config.steps else f"a run at step {step}"
        hint = "" if step >= config.steps else "--resume to continue it or "
        raise InputError(
            f"--out {run_dir}: already holds {state} of {config.steps}; pass {hint}"
            "--overwrite to start over"
        )
    if not found:
        _remove_own(run_dir)
        return 0, None
    return step, found[-1][1]


def _remove_if_unused(run_dir: Path) -> None:
    if not (run_dir / "config.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows past ``step`` (written after the checkpoint a run resumes from)."""
    keep = [METRICS_HEADER]
    if path.is_file():
        for line in path.read_text().splitlines(keepends=True)[1:]:
            head = line.split(",", 1)[0]
            if line.endswith("\n") and head.isdigit() and int(head) <= step:
                keep.append(line)
    atomic_write_bytes(path, "".join(keep).encode())


def _clean_temporaries(run_dir: Path) -> None:
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            for stale in folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
    shutil.rmtree(run_dir / ".cache", ignore_errors=True)


# ---------------------------------------------------------------- run description
def _label_info(labels: LabelSet, task_mean: np.ndarray, task_std: np.ndarray) -> dict:
    attrs = labels.attrs
    cand = np.asarray(labels.candidates, np.float64)
    return {
        "name": labels.name,
        "method": attrs.get("method"),
        "family": attrs.get("family"),
        "task_names": task_names(labels),
        "spec": attrs.get("spec"),
        "spec_origin": attrs.get("spec_origin"),
        "num_candidates": labels.num_candidates,
        "k": labels.k,
        "created": attrs.get("created"),
        "candidate_stats": {
            "mean": task_mean.tolist(),
            "std": task_std.tolist(),
            "min": cand.min(axis=0).tolist(),
            "max": cand.max(axis=0).tolist(),
        },
    }


def _run_description(
    store_path: Path,
    store: TrajectoryStore,
    config: BCConfig,
    labels: LabelSet | None,
    norm: Normalization,
    obs_shape: tuple[int, ...],
    fingerprint: dict[str, Any],
    tensorboard: bool,
) -> dict[str, Any]:
    from importlib import metadata

    try:
        version = metadata.version("hipi-offline")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "format": RUN_FORMAT,
        "config": config.to_json(),
        "store": {
            "path": str(store_path.resolve()),
            "env": str(store.attrs.get("env", "")),
            "num_episodes": store.num_episodes,
            "num_steps": store.num_steps,
        },
        "labels": None if labels is None else _label_info(labels, norm.task_mean, norm.task_std),
        "dims": {
            "obs": len(norm.obs_mean),
            "obs_shape": list(obs_shape),
            "act": len(norm.act_mean),
            "task": len(norm.task_mean),
        },
        "network": {
            "obs_dim": len(norm.obs_mean),
            "act_dim": len(norm.act_mean),
            "task_dim": len(norm.task_mean),
            "hidden": list(config.hidden),
            "activation": config.activation,
            "head": config.head,
            "task_embedding": config.task_embedding,
        },
        "normalization": norm.to_json(),
        "action_bounds": {"low": norm.act_low.tolist(), "high": norm.act_high.tolist()},
        "fingerprint": fingerprint,
        "tensorboard": tensorboard,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "hipi_offline": version,
            "torch": torch.__version__,
        },
    }


# ---------------------------------------------------------------- checkpoints
def _checkpoint_tensors(
    network: BCNetwork,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    candidates: np.ndarray | None,
) -> dict[str, torch.Tensor]:
    tensors = {f"policy.{k}": v for k, v in network.state_dict().items()}
    if candidates is not None:
        tensors["tasks.candidates"] = torch.from_numpy(candidates)
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    tensors["rng.sampler"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors


def _restore(
    tensors: dict[str, torch.Tensor],
    network: BCNetwork,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    state = {k[len("policy.") :]: v for k, v in tensors.items() if k.startswith("policy.")}
    network.load_state_dict(state, strict=True)
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    current = optimizer.state_dict()
    current["state"] = optim_state
    optimizer.load_state_dict(current)
    generator.set_state(tensors["rng.sampler"])
    torch.set_rng_state(tensors["rng.torch"])


def _save(
    run_dir: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    run: dict[str, Any],
    keep: int,
) -> Path:
    path = write_checkpoint(checkpoint_path(run_dir, step), tensors, step, run)
    if keep:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def _tensorboard_writer(run_dir: Path, purge_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step or None)


def _tensorboard_available() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- the stage
def train_bc(store_path: str | Path, config: BCConfig) -> TrainSummary:
    """Train a (task-conditioned) behavior-cloning policy; see the module docstring."""
    check_config(config)
    store_path = Path(store_path)
    run_dir = Path(config.out)
    device = resolve_device(config.device)
    with contextlib.ExitStack() as stack:
        if config.threads:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(config.threads)
        with open_store(store_path) as store:
            labels = None if config.task_agnostic else store.read_labels(str(config.labels))
            if labels is not None:
                check_labels(labels)
                if config.task_embedding and not is_discrete(labels):
                    raise InputError(
                        f"--task-embedding: labels/{labels.name} are a "
                        f"{labels.attrs.get('family') or 'continuous'} family; a learned "
                        "embedding applies to discrete families only"
                    )
            fingerprint = _fingerprint(store, labels)
            created = not run_dir.exists()
            start, resume_from = _prepare_run_dir(run_dir, config, fingerprint, stack)
            if created:  # a run that fails before its config.json leaves nothing behind
                stack.callback(_remove_if_unused, run_dir)
            if start >= config.steps and resume_from is not None:
                return _already_complete(run_dir, config, labels, resume_from, device)
            _clean_temporaries(run_dir)
            stack.callback(shutil.rmtree, run_dir / ".cache", True)
            data = load_working_set(
                store, max_memory_mb=config.max_memory_mb, spill_dir=run_dir / ".cache"
            )
            if labels is not None:
                candidates, task_mean, task_std = encode_candidates(labels)
            else:
                candidates, task_mean, task_std = None, np.zeros(0), np.ones(0)
            norm = data.normalization(task_mean, task_std)
            run = _run_description(
                store_path,
                store,
                config,
                labels,
                norm,
                data.obs_shape,
                fingerprint,
                _tensorboard_available(),
            )
        if resume_from is None:
            atomic_write_bytes(run_dir / "config.json", json.dumps(run, indent=2).encode())
        else:
            run = json.loads((run_dir / "config.json").read_text())
        return _train(
            run_dir, config, run, data, labels, candidates, norm, start, resume_from, device, stack
        )


def _already_complete(
    run_dir: Path, config: BCConfig, labels: LabelSet | None, checkpoint: Path, device: Any
) -> TrainSummary:
    tensors, step, _ = read_checkpoint(checkpoint)
    params = sum(
        v.numel()
        for k, v in tensors.items()
        if k.startswith("policy.") and k.split(".")[-1] in ("weight", "bias")
    )
    return TrainSummary(
        run_dir=str(run_dir),
        labels=None if labels is None else labels.name,
        method=None if labels is None else labels.attrs.get("method"),
        head=config.head,
        start_step=step,
        step=step,
        total_steps=config.steps,
        batch_size=config.batch_size,
        parameters=params,
        seconds=0.0,
        samples_per_second=0.0,
        final_loss=None,
        checkpoint=str(checkpoint),
        device=str(device),
        tensorboard=_tensorboard_available(),
    )


def _train(
    run_dir: Path,
    config: BCConfig,
    run: dict[str, Any],
    data: Any,
    labels: LabelSet | None,
    candidates: np.ndarray | None,
    norm: Normalization,
    start: int,
    resume_from: Path | None,
    device: torch.device,
    stack: contextlib.ExitStack,
) -> TrainSummary:
    torch.manual_seed(config.seed)
    sampler_seed = int(np.random.default_rng(config.seed).integers(2**62))
    generator = sampler_generator(data, device, sampler_seed)
    network = build_network(run)
    network.set_normalization(norm)
    network.to(device)
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.lr, weight_decay=config.weight_decay, **fast
    )
    if resume_from is not None:
        tensors, step, _ = read_checkpoint(resume_from)
        try:
            _restore(tensors, network, optimizer, generator)
        except (KeyError, RuntimeError, ValueError) as err:
            reason = " ".join(str(err).split())[:200]
            raise InputError(
                f"{resume_from}: cannot resume from this checkpoint ({reason}); "
                "pass --overwrite to start over"
            ) from None
        start = step
    tasks = None if labels is None else TaskSampler(labels, device)
    batches = BatchSampler(data, tasks, config.batch_size, generator, device)
    metrics_path = run_dir / "metrics.csv"
    _truncate_metrics(metrics_path, start)
    metrics = stack.enter_context(open(metrics_path, "a"))  # noqa: SIM115
    writer = _tensorboard_writer(run_dir, start)
    if writer is not None:
        stack.callback(writer.close)
    params = [p for p in network.parameters() if p.requires_grad]
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
    network.train()
    window_loss = torch.zeros((), device=device)
    window_norm = torch.zeros((), device=device)
    window_steps, final_loss = 0, None
    last_checkpoint = resume_from
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
            window_norm += torch.nn.utils.clip_grad_norm_(params, config.grad_clip, foreach=True)
        optimizer.step()
        window_loss += loss.detach()
        window_steps += 1
        done = step + 1
        bar.update(1)
        if done % config.log_every == 0 or done == config.steps:
            final_loss = float(window_loss) / window_steps
            now = time.perf_counter()
            rate = window_steps * config.batch_size / max(now - window_start, 1e-9)
            grad = f"{float(window_norm) / window_steps:.6g}" if config.grad_clip > 0 else ""
            metrics.write(f"{done},{final_loss:.9g},{lr:.9g},{rate:.1f},{grad}\n")
            metrics.flush()
            if writer is not None:
                writer.add_scalar("train/loss", final_loss, done)
                writer.add_scalar("train/lr", lr, done)
                writer.add_scalar("train/samples_per_s", rate, done)
            bar.set_postfix(loss=f"{final_loss:.4f}", sps=f"{rate:,.0f}")
            window_loss.zero_()
            window_norm.zero_()
            window_steps, window_start = 0, now
        if done % config.checkpoint_every == 0 or done == config.steps:
            tensors = _checkpoint_tensors(network, optimizer, generator, candidates)
            last_checkpoint = _save(run_dir, done, tensors, run, config.keep_checkpoints)
    seconds = time.perf_counter() - started
    cpu_seconds = time.thread_time() - cpu_started
    trained = config.steps - start
    return TrainSummary(
        run_dir=str(run_dir),
        labels=None if labels is None else labels.name,
        method=None if labels is None else labels.attrs.get("method"),
        head=config.head,
        start_step=start,
        step=config.steps,
        total_steps=config.steps,
        batch_size=config.batch_size,
        parameters=sum(p.numel() for p in params),
        seconds=seconds,
        samples_per_second=trained * config.batch_size / max(seconds, 1e-9),
        final_loss=final_loss,
        checkpoint=str(last_checkpoint),
        device=str(device),
        tensorboard=writer is not None,
        cpu_seconds=cpu_seconds,
    )
