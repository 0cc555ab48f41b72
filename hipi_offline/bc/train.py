"""The train-bc stage: store + label set -> a task-conditioned policy (paper Alg. 3).

Each iteration draws a minibatch of steps uniformly and, for every step, a task
psi ~ q(psi | tau) from its episode's stored posterior (redrawn every time), and
takes one AdamW step on the behavior-cloning loss of pi(a | s, psi).

Run directory::

    .hipi-offline                     marker: a run folder made by hipi-offline
    config.json                       run description (config, statistics, task spec)
    metrics.csv                       step, loss, lr, samples_per_s, grad_norm
    checkpoints/step_XXXXXXX.safetensors
    tensorboard/                      only when tensorboard is installed

``--overwrite`` and ``--resume`` touch only a folder with the marker, or a run folder
of an earlier version (a config.json of :data:`RUN_FORMAT` and nothing but a run's
own entries), which then gets the marker; any other existing folder is refused. All
options, sizes, the destination's writability and its free space are checked before
the run folder is created; a run that fails before its first checkpoint removes
what it wrote, so the corrected command starts afresh.

A checkpoint holds the weights and statistics, the optimizer state and the
sampler's RNG state; the learning rate is a pure function of the step. So
``resume`` continues exactly where the last checkpoint left off: on the same
device, the losses and weights equal those of an uninterrupted run bit for bit. The
logging window's running sums are checkpointed too, so the metrics rows after a
resume are those of the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hipi_offline.bc.budget import (
    MARGIN,
    check_memory,
    check_writable,
    checkpoint_bytes,
    description_bytes,
    network_spec,
)
from hipi_offline.bc.config import BCConfig, check_config
from hipi_offline.bc.data import (
    ACTIONS,
    OBSERVATIONS,
    BatchSampler,
    Normalization,
    TaskSampler,
    check_labels,
    encode_candidates,
    is_discrete,
    load_working_set,
    plain_field,
    sampler_generator,
    task_names,
)
from hipi_offline.bc.policy import (
    BCNetwork,
    atomic_write_bytes,
    build_network,
    check_policy_tensors,
    checkpoint_path,
    list_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from hipi_offline.bc.rundir import (
    METRICS_HEADER,
    RUN_FORMAT,
    RunFolder,
    Start,
    check_destination,
    clean_temporaries,
    remove_own,
    start_point,
    truncate_metrics,
)
from hipi_offline.envs.base import env_names, env_task_frame
from hipi_offline.errors import InputError, describe_os_error, one_line
from hipi_offline.ownership import check_disjoint
from hipi_offline.progress import progress_bar
from hipi_offline.relabel.run import resolve_device
from hipi_offline.store.labels import LabelSet
from hipi_offline.store.store import TrajectoryStore, open_store

__all__ = ["METRICS_HEADER", "RUN_FORMAT", "TrainSummary", "lr_at", "train_bc"]
OPTIM_STATE = ("step", "exp_avg", "exp_avg_sq")
"""AdamW's state per parameter, as checkpointed."""
WINDOW = ("metrics.window_loss", "metrics.window_norm", "metrics.window_steps")
"""The logging window's running sums, checkpointed so a resumed run logs the same rows."""


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
    spec: dict[str, Any],
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
        "network": dict(spec),
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
@dataclass
class Window:
    """The logging window: running sums since the last metrics row."""

    loss: torch.Tensor
    norm: torch.Tensor
    steps: int = 0

    @classmethod
    def empty(cls, device: torch.device) -> Window:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device))

    def tensors(self) -> dict[str, torch.Tensor]:
        loss, norm, steps = WINDOW
        return {loss: self.loss, norm: self.norm, steps: torch.tensor(self.steps)}

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        """Continue the sums of a checkpoint (one without them starts an empty window)."""
        loss, norm, steps = WINDOW
        if steps in tensors:
            self.loss.copy_(tensors[loss])
            self.norm.copy_(tensors[norm])
            self.steps = int(tensors[steps])

    def reset(self) -> None:
        self.loss.zero_()
        self.norm.zero_()
        self.steps = 0


def _checkpoint_tensors(
    network: BCNetwork,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    candidates: np.ndarray | None,
    window: Window,
) -> dict[str, torch.Tensor]:
    tensors = {f"policy.{k}": v for k, v in network.state_dict().items()}
    if candidates is not None:
        tensors["tasks.candidates"] = torch.from_numpy(candidates)
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    tensors["rng.sampler"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors.update(window.tensors())
    return tensors


def _damaged(path: Path, what: str) -> InputError:
    return InputError(
        f"{path}: cannot resume from this checkpoint ({what}); pass --overwrite to start over"
    )


def _check_optimizer_tensors(tensors: dict[str, torch.Tensor], spec: dict, path: Path) -> None:
    """Refuse optimizer state that does not fit the network (it would fail only at the
    first training step, after the data is loaded)."""
    with torch.device("meta"):
        shapes = [p.shape for p in BCNetwork(**spec).parameters()]
    seen: dict[int, set[str]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        parts = key.split(".")
        index = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1
        if not 0 <= index < len(shapes) or parts[2] not in OPTIM_STATE:
            raise _damaged(path, f"unexpected tensor {one_line(key, 60)}")
        want = torch.Size([]) if parts[2] == "step" else shapes[index]
        if value.shape != want or not value.is_floating_point():
            raise _damaged(path, f"{key} is {value.dtype} {list(value.shape)}, not {list(want)}")
        seen.setdefault(index, set()).add(parts[2])
    if any(names != set(OPTIM_STATE) for names in seen.values()):
        raise _damaged(path, "incomplete optimizer state")


def _check_resumable(tensors: dict[str, torch.Tensor], spec: dict, path: Path) -> None:
    """Refuse a checkpoint whose tensors cannot be restored into this run."""
    check_policy_tensors(tensors, spec, str(path))
    _check_optimizer_tensors(tensors, spec, path)
    for key in ("rng.sampler", "rng.torch"):
        value = tensors.get(key)
        if value is None or value.dtype != torch.uint8 or value.ndim != 1:
            raise _damaged(path, f"no valid {key} state")
    present = [key for key in WINDOW if key in tensors]
    if present and (len(present) != len(WINDOW) or any(tensors[k].ndim for k in WINDOW)):
        raise _damaged(path, "damaged metrics window")


def _restore(
    tensors: dict[str, torch.Tensor],
    network: BCNetwork,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    window: Window,
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
    window.restore(tensors)


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


def _write_error(err: OSError, path: Path, resumable_at: int) -> Exception:
    """The one-line error of a failed write of ``path`` (a full disk names no file),
    with the step the run can be resumed from."""
    known = describe_os_error(OSError(err.errno, err.strerror, str(path)))
    hint = ""
    if resumable_at:
        hint = f"; the run can be resumed from step {resumable_at} with --resume"
    return type(known)(f"{known}{hint}")


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


# ---------------------------------------------------------------- preflight
def _read_labels(store: TrajectoryStore, config: BCConfig) -> LabelSet | None:
    if config.task_agnostic:
        return None
    labels = store.read_labels(str(config.labels))
    check_labels(labels)
    if config.task_embedding and not is_discrete(labels):
        raise InputError(
            f"--task-embedding: labels/{labels.name} are a "
            f"{labels.attrs.get('family') or 'continuous'} family; a learned "
            "embedding applies to discrete families only"
        )
    return labels


def _spec(config: BCConfig, store: TrajectoryStore, labels: LabelSet | None) -> dict[str, Any]:
    """The network of this run, from the store's field shapes (no data is read)."""
    obs_dim = math.prod(plain_field(store, OBSERVATIONS))
    act_dim = math.prod(plain_field(store, ACTIONS))
    if obs_dim == 0 or act_dim == 0:
        raise InputError(f"{store.path}: observations and actions must have at least one column")
    task_dim = 0 if labels is None else int(np.shape(labels.candidates)[1])
    frame = _task_frame(config, store, obs_dim, task_dim)
    return network_spec(config, obs_dim, act_dim, task_dim, frame)


def _task_frame(
    config: BCConfig, store: TrajectoryStore, obs_dim: int, task_dim: int
) -> dict[str, Any] | None:
    """``--body-frame-task``: the store's environment's :class:`TaskFrame`, checked
    against the observation and task sizes."""
    if not config.body_frame_task:
        return None
    env = store.attrs.get("env")
    frame = env_task_frame(env) if isinstance(env, str) and env in env_names() else None
    if frame is None:
        have = [name for name in env_names() if env_task_frame(name) is not None]
        raise InputError(
            f"--body-frame-task: {store.path} holds data of environment {env!r}, which "
            f"declares no body rotation in its observation (have: {', '.join(have)})"
        )
    if frame.rotation + 9 > obs_dim or max(frame.direction) >= task_dim:
        raise InputError(
            f"--body-frame-task: {store.path} has {obs_dim} observation entries and "
            f"{task_dim} task entries; environment {env!r} puts its rotation at "
            f"{frame.rotation} and its direction at {list(frame.direction)}"
        )
    return frame.as_json()


def _needed_space(
    config: BCConfig, spec: dict[str, Any], store: TrajectoryStore, labels: LabelSet | None
) -> int:
    """Bytes a run writes besides its later checkpoints: one checkpoint, config.json,
    the metrics, and the spilled working set when it does not fit in memory."""
    texts = 0 if labels is None else len(json.dumps(labels.attrs, default=str))
    description = description_bytes(spec, texts)
    candidates = 0 if labels is None else labels.num_candidates
    working_set = 4 * store.num_steps * (spec["obs_dim"] + spec["act_dim"])
    spill = working_set if working_set > config.max_memory_mb * 2**20 else 0
    rows = min(config.steps // config.log_every + 1, 10**7)
    return checkpoint_bytes(spec, candidates, description) + description + 80 * rows + spill


def _read_resumable(start: Start, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint a run resumes from, checked against the run."""
    assert start.checkpoint is not None
    tensors, step, _ = read_checkpoint(start.checkpoint)
    if step != start.step:
        raise _damaged(start.checkpoint, f"its metadata says step {step}")
    _check_resumable(tensors, spec, start.checkpoint)
    return tensors


# ---------------------------------------------------------------- the stage
def train_bc(store_path: str | Path, config: BCConfig) -> TrainSummary:
    """Train a (task-conditioned) behavior-cloning policy; see the module docstring.

    Every option, the sizes, the destination and its free space are checked before
    the run folder is created or any data is loaded."""
    check_config(config)
    store_path = Path(store_path)
    run_dir = Path(config.out)
    device = resolve_device(config.device)
    check_disjoint(store_path, run_dir)
    check_destination(run_dir, config)
    with contextlib.ExitStack() as stack:
        if config.threads:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(config.threads)
        store_scope = stack.enter_context(contextlib.ExitStack())
        store = store_scope.enter_context(open_store(store_path))
        labels = _read_labels(store, config)
        spec = _spec(config, store, labels)
        top_k = 0 if labels is None else labels.k
        check_memory(config, spec, store.num_steps, top_k, device)
        fingerprint = _fingerprint(store, labels)
        start_point(run_dir, config, fingerprint, spec)  # refuse before writing anything
        check_writable(run_dir, _needed_space(config, spec, store, labels) + MARGIN)
        folder = RunFolder(run_dir)
        folder.open(stack)
        try:
            start = start_point(run_dir, config, fingerprint, spec)  # now under the lock
            resumed = None if start.checkpoint is None else _read_resumable(start, spec)
            if resumed is None:
                remove_own(run_dir)
            folder.mark()
            if resumed is not None and start.step >= config.steps:
                return _already_complete(run_dir, config, labels, start, resumed, device)
            clean_temporaries(run_dir)
            stack.callback(shutil.rmtree, run_dir / ".cache", True)
            data = load_working_set(
                store, max_memory_mb=config.max_memory_mb, spill_dir=run_dir / ".cache"
            )
            if labels is not None:
                candidates, task_mean, task_std = encode_candidates(labels)
            else:
                candidates, task_mean, task_std = None, np.zeros(0), np.ones(0)
            norm = data.normalization(task_mean, task_std)
            if start.description is None:
                run = _run_description(
                    store_path,
                    store,
                    config,
                    labels,
                    norm,
                    data.obs_shape,
                    fingerprint,
                    _tensorboard_available(),
                    spec,
                )
            else:
                run = start.description
            store_scope.close()
            if resumed is None:
                description = json.dumps(run, indent=2).encode()
                try:
                    atomic_write_bytes(run_dir / "config.json", description)
                except OSError as err:
                    raise _write_error(err, run_dir / "config.json", 0) from None
            return _train(
                run_dir, config, run, data, labels, candidates, norm, start, resumed, device, stack
            )
        except BaseException:
            folder.discard_if_unused()
            raise


def _already_complete(
    run_dir: Path,
    config: BCConfig,
    labels: LabelSet | None,
    start: Start,
    tensors: dict[str, torch.Tensor],
    device: Any,
) -> TrainSummary:
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
        start_step=start.step,
        step=start.step,
        total_steps=config.steps,
        batch_size=config.batch_size,
        parameters=params,
        seconds=0.0,
        samples_per_second=0.0,
        final_loss=None,
        checkpoint=str(start.checkpoint),
        device=str(device),
        tensorboard=False,
    )


def _train(
    run_dir: Path,
    config: BCConfig,
    run: dict[str, Any],
    data: Any,
    labels: LabelSet | None,
    candidates: np.ndarray | None,
    norm: Normalization,
    start_at: Start,
    resumed: dict[str, torch.Tensor] | None,
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
    window = Window.empty(device)
    start = start_at.step
    if resumed is not None:
        try:
            _restore(resumed, network, optimizer, generator, window)
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise _damaged(start_at.checkpoint, one_line(str(err), 200)) from None
    tasks = None if labels is None else TaskSampler(labels, device)
    batches = BatchSampler(data, tasks, config.batch_size, generator, device)
    metrics_path = run_dir / "metrics.csv"
    truncate_metrics(metrics_path, start)
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
    final_loss = None
    last_checkpoint = start_at.checkpoint
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
                raise _write_error(err, metrics_path, saved) from None
            if writer is not None:
                writer.add_scalar("train/loss", final_loss, done)
                writer.add_scalar("train/lr", lr, done)
                writer.add_scalar("train/samples_per_s", rate, done)
            bar.set_postfix(loss=f"{final_loss:.4f}", sps=f"{rate:,.0f}")
            window.reset()
            timed_steps, window_start = 0, now
        if done % config.checkpoint_every == 0 or done == config.steps:
            tensors = _checkpoint_tensors(network, optimizer, generator, candidates, window)
            try:
                last_checkpoint = _save(run_dir, done, tensors, run, config.keep_checkpoints)
            except OSError as err:
                raise _write_error(err, checkpoint_path(run_dir, done), saved) from None
            saved = done
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
