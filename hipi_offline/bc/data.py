"""The behavior-cloning working set and the per-step task draws.

Observations and actions are read once into float32 tensors (a memory-mapped
file for working sets above a size limit) while their statistics are reduced
in float64 in the same streaming pass. Each minibatch draws step indices
uniformly and, for every drawn step, a task psi ~ q(psi | tau) from the stored
(top-k, renormalized) posterior of the step's episode, by inverse-CDF sampling
on the gathered rows: one ``searchsorted`` for the whole batch, redrawn every
iteration (paper Alg. 3). All randomness comes from one CPU ``torch.Generator``
whose state is checkpointed, so the batches do not depend on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hipi_offline.errors import InputError
from hipi_offline.store.label_attrs import labels_are_discrete
from hipi_offline.store.labels import LabelSet
from hipi_offline.store.store import DEFAULT_CHUNK_ROWS, TrajectoryStore

OBSERVATIONS = "steps/observations"
ACTIONS = "steps/actions"
STD_FLOOR = 1e-6
"""Standard deviations below this (constant dimensions) are replaced by 1."""


@dataclass
class RunningStats:
    """Streaming mean / variance (Chan et al. merge), min and max, in float64."""

    count: int
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> RunningStats:
        return cls(0, np.zeros(dim), np.zeros(dim), np.full(dim, np.inf), np.full(dim, -np.inf))

    def update(self, rows: np.ndarray) -> None:
        n = len(rows)
        if n == 0:
            return
        mean = rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total
        self.low = np.minimum(self.low, rows.min(axis=0))
        self.high = np.maximum(self.high, rows.max(axis=0))

    @property
    def std(self) -> np.ndarray:
        std = np.sqrt(self.m2 / max(self.count, 1))
        return np.where(std < STD_FLOOR, 1.0, std)


@dataclass(frozen=True)
class Normalization:
    """Store statistics (float64) used by the network's normalization buffers."""

    obs_mean: np.ndarray
    obs_std: np.ndarray
    act_mean: np.ndarray
    act_std: np.ndarray
    act_low: np.ndarray
    act_high: np.ndarray
    task_mean: np.ndarray
    task_std: np.ndarray

    def to_json(self) -> dict[str, list[float]]:
        return {k: [float(x) for x in getattr(self, k)] for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Normalization:
        return cls(**{k: np.asarray(data[k], np.float64) for k in cls.__dataclass_fields__})


@dataclass
class WorkingSet:
    """All stored steps, ready to be indexed by a minibatch."""

    observations: Tensor
    """float32 [S, obs_dim] (flattened trailing dims), raw (not normalized)."""
    actions: Tensor
    """float32 [S, act_dim], raw."""
    step_episode: Tensor
    """int32 [S]: the episode of every step."""
    obs_shape: tuple[int, ...]
    obs_stats: RunningStats
    act_stats: RunningStats
    spill: Path | None = None
    """The memory-mapped file backing the tensors, if spilled."""

    @property
    def num_steps(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def nbytes(self) -> int:
        return 4 * self.num_steps * (self.obs_dim + self.act_dim)

    def normalization(self, task_mean: np.ndarray, task_std: np.ndarray) -> Normalization:
        """The network's normalization: these steps' statistics and the given task ones."""
        obs, act = self.obs_stats, self.act_stats
        return Normalization(
            obs_mean=obs.mean,
            obs_std=obs.std,
            act_mean=act.mean,
            act_std=act.std,
            act_low=act.low,
            act_high=act.high,
            task_mean=task_mean,
            task_std=task_std,
        )


def plain_field(store: TrajectoryStore, name: str) -> tuple[int, ...]:
    """The row shape of a non-dict numeric step field, or an InputError."""
    fields = store.step_fields()
    if name not in fields:
        keys = sorted(k[len(name) + 1 :] for k in fields if k.startswith(name + "/"))
        if keys:
            raise InputError(
                f"{name}: dict {name.split('/')[-1]} ({', '.join(keys)}) are not supported by "
                "train-bc yet; store them as one flat array"
            )
        raise InputError(f"{store.path}: required field {name} is missing")
    info = fields[name]
    if info.dtype.kind not in "fiub":
        raise InputError(f"{name}: non-numeric dtype {info.dtype}")
    return tuple(int(s) for s in info.shape[1:])


def load_working_set(
    store: TrajectoryStore,
    *,
    max_memory_mb: float = math.inf,
    spill_dir: Path | None = None,
    chunk_steps: int = DEFAULT_CHUNK_ROWS,
) -> WorkingSet:
    """Read observations and actions into float32 tensors and reduce their statistics."""
    if store.num_episodes == 0:
        raise InputError(f"{store.path}: the store has no episodes")
    obs_shape = plain_field(store, OBSERVATIONS)
    act_shape = plain_field(store, ACTIONS)
    obs_dim, act_dim = math.prod(obs_shape), math.prod(act_shape)
    if obs_dim == 0 or act_dim == 0:
        raise InputError(f"{store.path}: observations and actions must have at least one column")
    total = store.num_steps
    nbytes = 4 * total * (obs_dim + act_dim)
    spill = None
    if nbytes > max_memory_mb * 2**20 and spill_dir is not None:
        spill_dir.mkdir(parents=True, exist_ok=True)
        spill = spill_dir / "working_set.f32"
        flat = np.memmap(spill, dtype=np.float32, mode="w+", shape=(total, obs_dim + act_dim))
        obs, act = flat[:, :obs_dim], flat[:, obs_dim:]
    else:
        obs = np.empty((total, obs_dim), np.float32)
        act = np.empty((total, act_dim), np.float32)
    obs_stats, act_stats = RunningStats.empty(obs_dim), RunningStats.empty(act_dim)
    for chunk in store.iter_chunks([OBSERVATIONS, ACTIONS], chunk_steps):
        for name, stats, target, dim in (
            (OBSERVATIONS, obs_stats, obs, obs_dim),
            (ACTIONS, act_stats, act, act_dim),
        ):
            rows = np.asarray(chunk.fields[name]).reshape(chunk.stop - chunk.start, dim)
            rows64 = rows.astype(np.float64)
            finite = np.isfinite(rows64).all(axis=1)
            if not finite.all():
                raise InputError(
                    f"{name}: NaN or inf at step {chunk.start + int(np.argmin(finite))}"
                )
            stats.update(rows64)
            target[chunk.start : chunk.stop] = rows
    if spill is not None:
        obs_t = torch.from_numpy(np.asarray(flat)).narrow(1, 0, obs_dim)
        act_t = torch.from_numpy(np.asarray(flat)).narrow(1, obs_dim, act_dim)
    else:
        obs_t, act_t = torch.from_numpy(obs), torch.from_numpy(act)
    episode = np.repeat(np.arange(store.num_episodes, dtype=np.int32), store.lengths)
    return WorkingSet(
        observations=obs_t,
        actions=act_t,
        step_episode=torch.from_numpy(episode),
        obs_shape=obs_shape,
        obs_stats=obs_stats,
        act_stats=act_stats,
        spill=spill,
    )


def check_labels(labels: LabelSet) -> None:
    """A label set usable for task draws: finite candidates, sane top-k rows."""
    name = f"labels/{labels.name}"
    cand = np.asarray(labels.candidates)
    if cand.ndim != 2 or cand.shape[0] == 0 or cand.shape[1] == 0:
        raise InputError(f"{name}: candidates must be a non-empty [K, D] array, got {cand.shape}")
    if not np.isfinite(cand).all():
        raise InputError(f"{name}: candidates hold NaN or inf")
    index = np.asarray(labels.topk_index)
    logp = np.asarray(labels.topk_logprob, np.float64)
    if index.ndim != 2 or index.shape != logp.shape or index.shape[1] == 0:
        raise InputError(f"{name}: topk_index and topk_logprob must be matching [N, k] arrays")
    if index.size and (index.min() < 0 or index.max() >= len(cand)):
        raise InputError(f"{name}: topk_index out of range for {len(cand)} candidates")
    if np.isnan(logp).any() or np.isposinf(logp).any():
        raise InputError(f"{name}: topk_logprob holds NaN or +inf")
    empty = ~np.isfinite(logp).any(axis=1)
    if empty.any():
        raise InputError(
            f"{name}: episode {int(np.argmax(empty))} has no task with probability > 0"
        )


def encode_candidates(labels: LabelSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidates float32 [K, D], task_mean, task_std): continuous tasks are
    standardized by the candidates' statistics; discrete one-hot rows are kept."""
    cand = np.asarray(labels.candidates, np.float32)
    dim = cand.shape[1]
    if labels_are_discrete(labels.attrs):  # one-hot rows, fed as is
        return cand, np.zeros(dim), np.ones(dim)
    c64 = cand.astype(np.float64)
    mean, std = c64.mean(axis=0), c64.std(axis=0)
    return cand, mean, np.where(std < STD_FLOOR, 1.0, std)


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` (on the CPU) on ``device``. CUDA copies go through pinned memory with
    ``non_blocking``: a copy from pageable memory would wait for the GPU to finish all
    queued work first, once per training step."""
    if device.type != "cuda" or tensor.device.type == "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class TaskSampler:
    """Draws psi ~ q(psi | tau) for many episodes at once: :meth:`LabelSet.sample_tasks`
    on the training device, with uniforms from a checkpointed torch generator."""

    def __init__(self, labels: LabelSet, device: torch.device | str = "cpu") -> None:
        check_labels(labels)
        cdf = labels.topk_cdf()  # the draws of LabelSet.sample_tasks, on the device
        self.device = torch.device(device)
        self.candidates = torch.from_numpy(np.asarray(labels.candidates, np.float32)).to(
            self.device
        )
        self.topk_index = torch.from_numpy(np.asarray(labels.topk_index, np.int64)).to(self.device)
        self._flat_index = self.topk_index.reshape(-1)
        self.cdf = torch.from_numpy(cdf).to(self.device)
        self.k = labels.k

    def choose(self, episodes: Tensor, u: Tensor) -> Tensor:
        """Candidate indices [B] for episodes [B] given uniforms u [B] in [0, 1)."""
        rows = self.cdf.index_select(0, episodes)
        slot = torch.searchsorted(rows, u.to(rows.dtype).unsqueeze(1), right=True)
        slot = slot.squeeze(1).clamp_(max=self.k - 1)
        # one flat gather instead of 2-d advanced indexing: topk_index[episodes, slot]
        return self._flat_index.index_select(0, slot.add_(episodes * self.k))

    def sample(self, episodes: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(candidate indices [B], tasks [B, D]) for episodes [B]; uniforms come from
        ``generator`` (on its own device; they are moved to the sampler's device)."""
        u = torch.rand(
            len(episodes), generator=generator, dtype=torch.float64, device=generator.device
        )
        chosen = self.choose(episodes.to(self.device), to_device(u, self.device))
        return chosen, self.candidates.index_select(0, chosen)


def working_device(data: WorkingSet, device: torch.device) -> torch.device:
    """Where the minibatch sampler keeps the working set: on ``device``, unless it was
    spilled to a memory-mapped file (then on the CPU, copied over per batch)."""
    return device if data.spill is None else torch.device("cpu")


def sampler_generator(data: WorkingSet, device: torch.device, seed: int) -> torch.Generator:
    """The minibatch sampler's random stream, beside the working set: on the GPU when
    the working set is there (no host-to-device copy of indices and uniforms per
    step), else on the CPU. The CPU stream is the same on every machine; a CUDA one
    differs from it."""
    return torch.Generator(device=working_device(data, device)).manual_seed(seed)


class BatchSampler:
    """Uniform minibatches of steps with one freshly drawn task per step; indices and
    posterior uniforms come from ``generator`` (see :func:`sampler_generator`). With a
    ``shard``, the whole batch is drawn (every rank of a data-parallel run draws the
    same) and only the shard's rows are gathered."""

    def __init__(
        self,
        data: WorkingSet,
        tasks: TaskSampler | None,
        batch_size: int,
        generator: torch.Generator,
        device: torch.device | str,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.shard = shard
        """``[start, stop)``: this rank's slice of every (global) batch; None: all."""
        self.generator = generator
        self.tasks = tasks
        where = working_device(data, self.device)
        self.observations = data.observations.to(where)
        self.actions = data.actions.to(where)
        # int64 once here, so no per-step conversion before the posterior gathers
        self.step_episode = data.step_episode.to(
            tasks.device if tasks is not None else where, torch.int64
        )
        self.num_steps = data.num_steps
        self.pin = where != self.device and self.device.type == "cuda"

    def sample(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """(observations [B, obs_dim], actions [B, act_dim], tasks [B, D] or None)."""
        g = self.generator
        idx = torch.randint(self.num_steps, (self.batch_size,), generator=g, device=g.device)
        u = None
        if self.tasks is not None:  # the posterior uniforms of the whole batch
            u = torch.rand(self.batch_size, generator=g, dtype=torch.float64, device=g.device)
        if self.shard is not None:
            start, stop = self.shard
            idx = idx[start:stop]
            u = None if u is None else u[start:stop]
        where = self.observations.device
        idx_where = to_device(idx, where)
        task = None
        if self.tasks is not None and u is not None:
            on = self.step_episode.device
            idx_ep = idx_where if on == where else to_device(idx, on)
            episodes = self.step_episode.index_select(0, idx_ep)
            chosen = self.tasks.choose(
                episodes.to(self.tasks.device), to_device(u, self.tasks.device)
            )
            task = self.tasks.candidates.index_select(0, chosen)
            task = task.to(self.device, non_blocking=True)
        obs = self.observations.index_select(0, idx_where)
        act = self.actions.index_select(0, idx_where)
        if self.pin:
            obs, act = obs.pin_memory(), act.pin_memory()
        obs = obs.to(self.device, non_blocking=True)
        act = act.to(self.device, non_blocking=True)
        return obs, act, task
