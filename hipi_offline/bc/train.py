"""The train-bc stage: store + label set -> a task-conditioned policy (paper Alg. 3).

This module checks everything and prepares the run; the pieces live beside it:
:mod:`~hipi_offline.bc.rundir` (the run folder: lock, resume point, metrics file),
:mod:`~hipi_offline.bc.description` (what a run is, ``config.json``),
:mod:`~hipi_offline.bc.checkpoint` (:class:`TrainState`) and
:mod:`~hipi_offline.bc.loop` (the training loop).

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

Under torchrun (``torchrun --nproc-per-node N --no-python hipi-offline train-bc ...``)
every rank runs :func:`train_bc`: ``--batch-size`` is the global batch, each step's
gradients are averaged over the ranks, rank 0 alone reads and writes the run folder,
and a resumed run continues exactly as well (:mod:`~hipi_offline.bc.distributed`).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import uuid
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
from hipi_offline.bc.checkpoint import policy_parameters, read_resumable
from hipi_offline.bc.config import BCConfig
from hipi_offline.bc.data import (
    ACTIONS,
    OBSERVATIONS,
    check_labels,
    encode_candidates,
    load_working_set,
    plain_field,
)
from hipi_offline.bc.description import (
    RUN_FORMAT,
    NewRun,
    data_fingerprint,
    describe_new_run,
)
from hipi_offline.bc.distributed import Ranks, join_group
from hipi_offline.bc.loop import (
    TrainingRun,
    TrainSummary,
    lr_at,
    summary_of,
    tensorboard_available,
    train_loop,
)
from hipi_offline.bc.policy import atomic_write_bytes
from hipi_offline.bc.rundir import (
    METRICS_HEADER,
    RunFolder,
    Start,
    check_destination,
    clean_temporaries,
    remove_own,
    start_point,
    write_error,
)
from hipi_offline.device import torch_threads
from hipi_offline.envs.base import env_names, env_task_frame
from hipi_offline.errors import InputError
from hipi_offline.ownership import check_disjoint
from hipi_offline.store.label_attrs import label_task_names, labels_are_discrete
from hipi_offline.store.labels import LabelSet
from hipi_offline.store.location import is_url, store_location
from hipi_offline.store.store import TrajectoryStore, open_store

__all__ = ["METRICS_HEADER", "RUN_FORMAT", "TrainSummary", "lr_at", "train_bc"]


# ---------------------------------------------------------------- preflight
def _read_labels(store: TrajectoryStore, config: BCConfig) -> LabelSet | None:
    if config.task_agnostic:
        return None
    labels = store.read_labels(str(config.labels))
    check_labels(labels)
    label_task_names(labels.attrs)  # a damaged attribute is refused before any write
    if config.task_embedding and not labels_are_discrete(labels.attrs):
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


# ---------------------------------------------------------------- the stage
def train_bc(store_path: str | Path, config: BCConfig) -> TrainSummary:
    """Train a (task-conditioned) behavior-cloning policy; see the module docstring.

    Every option, the sizes, the destination and its free space are checked before
    the run folder is created or any data is loaded. Under torchrun this process is
    one rank of a data-parallel run (:mod:`~hipi_offline.bc.distributed`)."""
    ranks = join_group(config.device, config.batch_size)
    with contextlib.ExitStack() as stack:
        stack.callback(ranks.close)
        return _train(store_location(store_path), config, ranks, stack)  # a Path, or a URL


def _train(
    store_path: str | Path, config: BCConfig, ranks: Ranks, stack: contextlib.ExitStack
) -> TrainSummary:
    """:func:`train_bc` on this rank: every pre-flight step is agreed by all ranks
    (:meth:`Ranks.agree`); rank 0 alone reads and writes the run folder."""
    run_dir = Path(config.out)
    device, lead = ranks.device, ranks.lead

    def destination() -> None:
        if lead:
            if not is_url(store_path):  # a run folder cannot overlap a store at a URL
                check_disjoint(store_path, run_dir)
            check_destination(run_dir, config)

    ranks.agree(destination)
    stack.enter_context(torch_threads(config.threads))
    store_scope = stack.enter_context(contextlib.ExitStack())

    def inspect() -> tuple[TrajectoryStore, LabelSet | None, dict[str, Any], dict[str, Any]]:
        store = store_scope.enter_context(open_store(store_path))
        labels = _read_labels(store, config)
        spec = _spec(config, store, labels)
        top_k = 0 if labels is None else labels.k
        check_memory(config, spec, store.num_steps, top_k, device, ranks.local_world)
        fingerprint = data_fingerprint(store, labels)
        if lead:
            start_point(run_dir, config, fingerprint, spec)  # refuse before writing anything
            check_writable(run_dir, _needed_space(config, spec, store, labels) + MARGIN)
        return store, labels, spec, fingerprint

    store, labels, spec, fingerprint = ranks.agree(inspect)
    ranks.same(str(store_path), fingerprint)
    folder = RunFolder(run_dir)
    opened = []

    def take_folder() -> tuple[Start, dict[str, torch.Tensor] | None]:
        folder.open(stack)
        opened.append(folder)
        start = start_point(run_dir, config, fingerprint, spec)  # now under the lock
        resumed = None
        if start.checkpoint is not None:
            resumed = read_resumable(start.checkpoint, start.step, spec)
        else:
            remove_own(run_dir)
        folder.mark()
        return start, resumed

    try:
        start, resumed = ranks.broadcast(ranks.agree(take_folder if lead else lambda: None))
        if resumed is not None and start.step >= config.steps:
            return _already_complete(run_dir, config, labels, start, resumed, device, ranks)
        if lead:
            clean_temporaries(run_dir)
            stack.callback(shutil.rmtree, run_dir / ".cache", True)
            spill_dir = run_dir / ".cache"
        else:  # other ranks write nothing in the run folder
            spill_dir = Path(tempfile.gettempdir()) / f"hipi-offline-{uuid.uuid4().hex}"
            stack.callback(shutil.rmtree, spill_dir, True)
        data = ranks.agree(
            lambda: load_working_set(store, max_memory_mb=config.max_memory_mb, spill_dir=spill_dir)
        )
        if labels is not None:
            candidates, task_mean, task_std = encode_candidates(labels)
        else:
            candidates, task_mean, task_std = None, np.zeros(0), np.ones(0)
        norm = data.normalization(task_mean, task_std)
        description = start.description
        if description is None and lead:
            new = NewRun(
                store_path=store_path,
                store=store,
                config=config,
                labels=labels,
                norm=norm,
                obs_shape=data.obs_shape,
                fingerprint=fingerprint,
                network=spec,
                tensorboard=tensorboard_available(),
            )
            description = describe_new_run(new)
        description, norm = ranks.broadcast((description, norm))
        store_scope.close()

        def write_description() -> None:
            if resumed is None and lead:
                text = json.dumps(description.to_json(), indent=2).encode()
                try:
                    atomic_write_bytes(run_dir / "config.json", text)
                except OSError as err:
                    raise write_error(err, run_dir / "config.json", 0) from None

        ranks.agree(write_description)
        run = TrainingRun(
            run_dir=run_dir,
            config=config,
            description=description,
            data=data,
            labels=labels,
            candidates=candidates,
            norm=norm,
            start=start,
            resumed=resumed,
            device=device,
            ranks=ranks,
        )
        return train_loop(run, stack)
    except BaseException:
        if opened:
            folder.discard_if_unused()
        raise


def _already_complete(
    run_dir: Path,
    config: BCConfig,
    labels: LabelSet | None,
    start: Start,
    tensors: dict[str, torch.Tensor],
    device: torch.device,
    ranks: Ranks,
) -> TrainSummary:
    """The summary of a resumed run that has nothing left to do."""
    return summary_of(
        run_dir,
        config,
        labels,
        device,
        ranks,
        start_step=start.step,
        step=start.step,
        parameters=policy_parameters(tensors),
        seconds=0.0,
        samples_per_second=0.0,
        final_loss=None,
        checkpoint=str(start.checkpoint),
        tensorboard=False,
    )
