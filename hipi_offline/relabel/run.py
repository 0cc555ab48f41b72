"""The relabel stage: store + task spec -> a label set written into the store."""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from hipi_offline.configs import (
    FieldError,
    check_choice,
    check_flag,
    check_int,
    check_number,
    check_optional_int,
    check_seed,
    check_threads,
    named,
)
from hipi_offline.device import half_the_cores, resolve_device, torch_threads
from hipi_offline.errors import InputError
from hipi_offline.relabel.partitions import parse_memory
from hipi_offline.relabel.posterior import (
    NonFinitePosterior,
    Posterior,
    inverse_rl_posterior,
    one_hot_posterior,
    uniform_posterior,
)
from hipi_offline.relabel.returns import (
    RelabelSizes,
    check_fits,
    returns_tiles,
    tile_columns,
    whole_returns,
)
from hipi_offline.scheduler import check_scheduler
from hipi_offline.store.label_attrs import task_attrs
from hipi_offline.store.labels import (
    LabelSet,
    PosteriorSpread,
    check_can_write,
    check_label_name,
    check_label_space,
    label_lock,
    label_set_bytes,
    write_label_set,
)
from hipi_offline.store.location import store_location
from hipi_offline.store.store import DEFAULT_CHUNK_ROWS, TrajectoryStore, open_store
from hipi_offline.tasks.spec import TaskSpec, check_temperature, load_task_spec

METHODS: tuple[str, ...] = ("hipi", "no-partition", "random", "original")


@dataclass(frozen=True)
class RelabelConfig:
    """Options of one relabeling run (mirrors ``hipi-offline relabel``)."""

    tasks: str
    """Task spec: a YAML path or a built-in name (e.g. ``cheetah-velocity``)."""
    name: str | None = None
    """Label-set name; defaults to the method's name."""
    method: str = "hipi"
    """hipi, no-partition (drop log Z: the paper's ablation), random, or original."""
    temperature: float | None = None
    """Override the spec's temperature alpha."""
    candidates: int | None = None
    """Override the spec's candidate count K (draws from the prior)."""
    top_k: int | Literal["all"] = 32
    """How many of each episode's most probable candidates to store, or ``all``."""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda."""
    chunk_steps: int = DEFAULT_CHUNK_ROWS
    """Rows read and reduced at once."""
    seed: int = 0
    """Seed of the candidate draws (and of the random baseline)."""
    overwrite: bool = False
    """Replace an existing label set of the same name."""
    max_matrix_mb: float = 2048.0
    """Largest part of the N x K returns matrix held in memory; larger ones are tiled
    over K and spilled to a temporary file."""
    scheduler: str | None = None
    """local:N starts a LocalCluster of N one-thread worker processes; tcp://HOST:PORT
    uses a running Dask scheduler; unset: this process."""
    threads: int = 0
    """CPU threads for torch's returns and posterior math (0: half the usable cores, at
    least 1; on 2 cores one thread computes while the reader thread reads ahead, and two
    compute threads stall as soon as anything else runs). With ``--scheduler`` the
    workers compute on their own threads (one each for local:N)."""
    prefetch: bool = True
    """Read the next chunk of steps on a background thread while this one is reduced
    (--no-prefetch reads and reduces in turn, on one thread)."""
    worker_memory: str | None = None
    """Memory limit of each local:N worker (1GiB, 512MiB, 2GB; a plain number is MiB);
    with tcp:// it caps what a task is planned for. Unset: the machine's memory shared
    by the workers (or the running workers' limit). Partitions are sized to fit it."""

    def __post_init__(self) -> None:
        if not isinstance(self.tasks, str) or not self.tasks:
            raise FieldError("tasks", f"expected a spec path or built-in name, got {self.tasks!r}")
        check_choice(self.method, "method", METHODS)
        if self.name is not None:
            with named("name"):
                check_label_name(self.name)
        if self.temperature is not None:
            with named("temperature"):
                check_temperature(self.temperature, "temperature")
        check_optional_int(self.candidates, "candidates")
        if self.top_k != "all":
            with named("top_k"):
                _top_k(self.top_k, 1)
        if not isinstance(self.device, str):
            raise FieldError("device", f"expected auto, cpu or cuda, got {self.device!r}")
        check_int(self.chunk_steps, "chunk_steps")
        check_seed(self.seed)
        check_flag(self.overwrite, "overwrite")
        check_number(self.max_matrix_mb, "max_matrix_mb")
        check_scheduler(self.scheduler)
        check_threads(self.threads)
        check_flag(self.prefetch, "prefetch")
        if self.threads and self.scheduler is not None:
            raise FieldError(
                "threads",
                "sets this process's threads; with --scheduler each worker computes on its "
                "own (one for local:N)",
            )
        if self.worker_memory is not None:
            parse_memory(self.worker_memory)


@dataclass(frozen=True)
class RelabelSummary:
    """What a relabeling run did, for the closing summary."""

    name: str
    method: str
    family: str
    episodes: int
    steps: int
    candidates: int
    top_k: int
    seconds: float
    steps_per_second: float
    mean_entropy: float
    """Mean posterior entropy (nats) per episode."""
    effective_tasks: float
    """Mean of exp(entropy): how many tasks each episode is labeled with, in effect."""
    coverage_effective_tasks: float
    """exp(entropy of the coverage): how many tasks the data as a whole teaches."""
    device: str

    def lines(self) -> list[str]:
        return [
            f"label set '{self.name}' ({self.method}, {self.family}): {self.episodes} episodes, "
            f"{self.steps} steps, K={self.candidates}, top-k={self.top_k}, device={self.device}",
            f"time {self.seconds:.2f} s, {self.steps_per_second:,.0f} steps/s",
            f"posterior entropy {self.mean_entropy:.3f} nats "
            f"(effective tasks per episode {self.effective_tasks:.2f}); "
            f"data covers {self.coverage_effective_tasks:.1f} of {self.candidates} tasks in effect",
        ]


def _top_k(value: int | str, k: int) -> int:
    if value == "all":
        return k
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FieldError("top_k", f"expected a positive integer or 'all', got {value!r}")
    return min(value, k)


def _spec_with_overrides(config: RelabelConfig) -> TaskSpec:
    spec = load_task_spec(config.tasks)
    if config.temperature is not None:
        spec = replace(spec, temperature=float(config.temperature))
    return spec


def _hipi_posterior(
    store: TrajectoryStore,
    spec: TaskSpec,
    candidates: np.ndarray,
    log_prior: np.ndarray | None,
    config: RelabelConfig,
    device: torch.device,
    top_k: int,
) -> Posterior:
    n, k = store.num_episodes, len(candidates)
    tile = tile_columns(n, k, config.max_matrix_mb)
    passes = dict(device=device, chunk_steps=config.chunk_steps, prefetch=config.prefetch)
    prior = None if log_prior is None else torch.from_numpy(log_prior).to(device)
    options = dict(
        temperature=spec.temperature,
        log_prior=prior,
        partition=config.method == "hipi",
        top_k=top_k,
        tile=tile,
        device=device,
    )
    if tile >= k and device.type == "cpu":  # R's rows where the posterior needs them
        whole = whole_returns(store, spec, candidates, **passes)
        return inverse_rl_posterior(whole.block, n, k, **options, rows=whole.rows)
    tiles = returns_tiles(store, spec, candidates, tile=tile, **passes)
    if tile >= k:
        ((_, _, returns),) = tiles
        return inverse_rl_posterior(lambda a, b: returns[:, a:b], n, k, **options)
    with tempfile.TemporaryDirectory(prefix="hipi-returns-") as folder:
        spill = np.lib.format.open_memmap(
            Path(folder) / "returns.npy", mode="w+", dtype=np.float64, shape=(n, k)
        )
        for j0, j1, block in tiles:
            spill[:, j0:j1] = block.cpu().numpy()
        spill.flush()
        return inverse_rl_posterior(
            lambda a, b: torch.from_numpy(np.ascontiguousarray(spill[:, a:b])).to(device),
            n,
            k,
            **options,
        )


def _check_driver(n: int, k: int, dim: int, top_k: int, config: RelabelConfig) -> None:
    """Refuse a distributed run whose gathered top-k would not fit the driver."""
    sizes = RelabelSizes(k * (dim * 20 + 48), n * top_k * 48, 0, 0, 0)
    options = {"candidates": "--candidates", "top_k": f"--top-k {config.top_k}", "chunk": ""}
    check_fits(sizes, torch.device("cpu"), options)


def _check_sizes(
    store: TrajectoryStore, spec: TaskSpec, config: RelabelConfig, dim: int, device: torch.device
) -> None:
    """Refuse, naming the option, a run whose memory or spill cannot fit."""
    k = spec.candidate_count(config.candidates)
    top_k = _top_k(config.top_k, k)
    tile = tile_columns(store.num_episodes, k, config.max_matrix_mb)
    counts = (k, dim, top_k)
    sizes = RelabelSizes.of(store, spec, config.method, counts, config.chunk_steps, tile)
    given = config.candidates is not None
    options = {
        "candidates": f"--candidates {k}" if given else f"candidates {k} (in {spec.origin})",
        "top_k": f"--top-k {config.top_k}",
        "chunk": f"--chunk-steps {config.chunk_steps}",
    }
    check_fits(sizes, device, options)


def _original(store: TrajectoryStore, spec: TaskSpec, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates and each episode's index among them, from ``episodes/task``."""
    if "episodes/task" not in store.episode_fields():
        raise InputError("--method original: the store has no episodes/task field")
    task = store.read_episode_field("episodes/task")
    if spec.task_names is not None and task.ndim == 1 and task.dtype.kind in "iu":
        k = len(spec.task_names)
        if task.min() < 0 or task.max() >= k:
            raise InputError(f"episodes/task: task indices must lie in [0, {k})")
        return np.eye(k, dtype=np.float32), task.astype(np.int64)
    task = task.reshape(len(task), -1).astype(np.float32)
    finite = np.isfinite(task).all(axis=1)
    if not finite.all():
        raise InputError(f"episodes/task: NaN or inf at episode {int(np.argmin(finite))}")
    if task.shape[1] != dim:
        raise InputError(f"episodes/task: has {task.shape[1]} columns, the task spec needs {dim}")
    candidates, assigned = np.unique(task, axis=0, return_inverse=True)
    return candidates, assigned.reshape(-1).astype(np.int64)


def relabel(store_path: str | Path, config: RelabelConfig) -> RelabelSummary:
    """Compute the posterior over tasks of every episode and write it as a label set.
    Options and store are checked first; then the label set's lock is held from before
    the computation through the commit (a concurrent writer of the set is refused)."""
    location, store_path = store_path, store_location(store_path)  # a Path, or a URL
    name = config.method if config.name is None else config.name
    spec = _spec_with_overrides(config)
    device = resolve_device(config.device)
    open_store(store_path).close()  # a missing or damaged store: nothing is created
    threads = config.threads or half_the_cores()
    with label_lock(store_path, name), torch_threads(threads):
        return _relabel_locked(location, store_path, config, name, spec, device)


def _relabel_locked(
    location: str | Path,
    store_path: Path,
    config: RelabelConfig,
    name: str,
    spec: TaskSpec,
    device: torch.device,
) -> RelabelSummary:
    started = time.perf_counter()
    with open_store(store_path) as store:
        check_can_write(store_path, name, config.overwrite)
        if store.num_episodes == 0:
            raise InputError(f"{store_path}: the store has no episodes")
        dim = spec.task_dim(store.step_fields())
        distributed = config.scheduler is not None and config.method in ("hipi", "no-partition")
        if config.method == "original":
            candidates, assigned = _original(store, spec, dim)
            log_prior = None
        else:
            if not distributed:  # (a distributed run's workers are planned to fit)
                _check_sizes(store, spec, config, dim, device)  # before anything is allocated
            candidates, log_prior = spec.draw_candidates(config.seed, config.candidates)
        k = len(candidates)
        top_k = _top_k(config.top_k, k)
        task_size = int(np.prod(candidates.shape[1:]))
        needed = label_set_bytes(store.num_episodes, k, task_size, top_k)
        check_label_space(store_path, name, needed)  # before the computation
        if config.method == "original":
            posterior = one_hot_posterior(assigned, k, top_k)
        elif config.method == "random":
            posterior = uniform_posterior(store.num_episodes, k, top_k, config.seed)
        else:
            try:
                if distributed:
                    from hipi_offline.relabel.distributed import dask_posterior

                    _check_driver(store.num_episodes, k, task_size, top_k, config)
                    posterior = dask_posterior(
                        location, store, spec, candidates, log_prior, config, top_k
                    )
                else:
                    posterior = _hipi_posterior(
                        store, spec, candidates, log_prior, config, device, top_k
                    )
            except NonFinitePosterior as err:  # nothing non-finite is committed
                raise InputError(f"{spec.origin} ({spec.family.name} family): {err}") from None
        n, steps = store.num_episodes, store.num_steps
    labels = LabelSet(
        name=name,
        candidates=candidates,
        log_z=posterior.log_z,
        topk_index=posterior.topk_index,
        topk_logprob=posterior.topk_logprob.astype(np.float32),
        entropy=posterior.entropy.astype(np.float32),
        coverage=posterior.coverage,
        attrs={
            "spec": spec.source,
            "spec_origin": spec.origin,
            **task_attrs(spec),
            "method": config.method,
            "temperature": spec.temperature,
            "gamma": spec.gamma,
            "at": spec.at,
            "seed": config.seed,
            "k": top_k,
            "num_candidates": k,
            "num_episodes": n,
            "num_steps": steps,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    write_label_set(store_path, labels, overwrite=config.overwrite)
    seconds = time.perf_counter() - started
    spread = PosteriorSpread.of(posterior.entropy, posterior.coverage)
    return RelabelSummary(
        name=name,
        method=config.method,
        family=spec.family.name,
        episodes=n,
        steps=steps,
        candidates=k,
        top_k=top_k,
        seconds=seconds,
        steps_per_second=steps / max(seconds, 1e-9),
        mean_entropy=spread.mean_entropy,
        effective_tasks=spread.effective_tasks,
        coverage_effective_tasks=spread.coverage_effective_tasks,
        device=str(device),
    )
