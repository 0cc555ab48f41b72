"""Data-parallel train-bc under torchrun: the group of ranks a run trains with.

``torchrun --standalone --nproc-per-node N --no-python hipi-offline train-bc ...``
(or ``--nnodes``/``--rdzv-endpoint`` across nodes) starts one process per rank and
sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`join_group` reads them and joins the process group (``gloo`` on the CPU,
``nccl`` with ``cuda:LOCAL_RANK``). Without them, or with one rank, a run is the
single process it always was.

What the ranks share:

* ``--batch-size`` is the global batch. Every rank draws the whole batch (step
  indices, then posterior uniforms) from the same seeded stream and trains on its
  slice; DistributedDataParallel averages the slices' mean gradients, which is the
  gradient of the global batch's mean loss. So N ranks follow the trajectory of one
  process (to float rounding), and hold identical parameters after every step.
* Only rank 0 touches the run folder: it checks it, locks it, writes config.json,
  metrics, TensorBoard and checkpoints, and reads the checkpoint a run resumes from.
  It hands the other ranks the run description and the resumed state over the
  group, so nodes need not share a filesystem. Every rank reads the store itself
  (the same path or URL must name the same data on every node: their fingerprints
  are compared) and writes nothing (a working set spilled for lack of memory goes
  to a temporary folder of its own, removed at exit).
* Each pre-flight step is agreed (:meth:`Ranks.agree`): when it fails on any rank,
  every rank raises the same one-line error before anything is trained.

A rank that dies ends the run: torchrun stops the other ranks (SIGTERM, turned into
a one-line error here), and a collective whose peer is gone raises (the group's
timeout, :data:`TIMEOUT_ENV`, bounds every wait). Checkpoints are committed
atomically, so a rerun with ``--resume`` continues from the last one exactly.

Test hooks (environment variables, for the test suite only): :data:`DIGEST_ENV`
names a folder where every rank appends a digest of its parameters after each
step; :data:`KILL_ENV` (``RANK:STEP``) makes that rank kill itself with SIGKILL
after that step.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import inspect
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from hipi_offline.configs import FieldError
from hipi_offline.device import rank_device, resolve_device
from hipi_offline.errors import InputError, ResourceError, describe_os_error, one_line

T = TypeVar("T")

TORCHRUN_ENV: tuple[str, ...] = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""The variables torchrun sets for every rank; a run is distributed when they are set."""
TIMEOUT_ENV = "HIPI_OFFLINE_DDP_TIMEOUT_S"
"""Seconds a rank waits for the others in one collective (default :data:`TIMEOUT_S`)."""
TIMEOUT_S = 1800.0
DIGEST_ENV = "HIPI_OFFLINE_TEST_DIGEST"
KILL_ENV = "HIPI_OFFLINE_TEST_KILL"


@dataclass(frozen=True)
class Launch:
    """What torchrun told this process."""

    rank: int
    world: int
    local_rank: int
    address: str
    local_world: int = 1
    """Ranks on this node (``LOCAL_WORLD_SIZE``; 1 when unset)."""


def torchrun_launch(environ: dict[str, str] | None = None) -> Launch | None:
    """This process's place in a torchrun group, or None outside torchrun."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    missing = [name for name in TORCHRUN_ENV if not env.get(name)]
    if missing:
        raise InputError(
            f"torchrun environment: WORLD_SIZE is set but {', '.join(missing)} is not; "
            "start train-bc with torchrun"
        )
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        text = env[name]
        if not (text.isascii() and text.isdigit()):
            raise InputError(f"torchrun environment: {name}={one_line(text, 40)!r} is no number")
        values[name] = int(text)
    world, rank = values["WORLD_SIZE"], values["RANK"]
    if world < 1 or rank >= world:
        raise InputError(f"torchrun environment: RANK={rank} with WORLD_SIZE={world}")
    local = env.get("LOCAL_WORLD_SIZE", "1")
    local_world = int(local) if local.isascii() and local.isdigit() and int(local) > 0 else 1
    address = f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    return Launch(rank, world, values["LOCAL_RANK"], address, min(local_world, world))


def group_timeout(environ: dict[str, str] | None = None) -> float:
    """The collectives' timeout in seconds (:data:`TIMEOUT_ENV`)."""
    text = (os.environ if environ is None else environ).get(TIMEOUT_ENV, "")
    if not text:
        return TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 10**7:
        raise InputError(f"{TIMEOUT_ENV}: expected seconds > 0, got {one_line(text, 40)!r}")
    return value


# ---------------------------------------------------------------- errors across ranks
def _report(err: BaseException) -> tuple[str, Any]:
    """A picklable description of a pre-flight failure, rebuilt by :func:`_rebuild`."""
    if isinstance(err, FieldError):
        return "field", (err.field, err.problem, err.mentions)
    if isinstance(err, OSError):
        err = describe_os_error(err)
    if isinstance(err, MemoryError):
        err = ResourceError("out of memory; use a smaller dataset, batch or candidate count")
    if isinstance(err, InputError):
        return "input", one_line(str(err), 500)
    if isinstance(err, ResourceError):
        return "resource", one_line(str(err), 500)
    return "resource", one_line(f"{type(err).__name__}: {err}", 500)


def _rebuild(kind: str, detail: Any, rank: int) -> Exception:
    if kind == "field":
        name, problem, mentions = detail
        return FieldError(name, problem, mentions)
    where = "" if rank == 0 else f"rank {rank}: "
    if kind == "input":
        return InputError(f"{where}{detail}")
    return ResourceError(f"{where}{detail}")


class Stopped(ResourceError):
    """A rank was told to stop (torchrun's SIGTERM when another rank failed)."""


# ---------------------------------------------------------------- the group
@dataclass
class Ranks:
    """This process's rank in the run's group; one rank of one without torchrun.
    Every collective method is a no-op for a single process."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    """gloo or nccl; None for a single process."""
    local_world: int = 1
    """Ranks on this machine (they share its memory)."""
    _objects: Any = None
    """The gloo group picklable objects travel over."""
    _owns_group: bool = False
    _restore: list[Callable[[], None]] = field(default_factory=list)

    @property
    def lead(self) -> bool:
        """Rank 0: the rank that reads and writes the run folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, batch_size: int) -> tuple[int, int]:
        """This rank's slice ``[start, stop)`` of a global batch."""
        size = batch_size // self.world
        return self.rank * size, (self.rank + 1) * size

    def failed(self, err: BaseException, resumable_at: int = 0) -> ResourceError:
        """The one-line error of a collective that failed (a rank died or stopped)."""
        hint = f"; resume from step {resumable_at} with --resume" if resumable_at else ""
        return ResourceError(
            f"rank {self.rank} of {self.world}: the torchrun group failed, a rank died or "
            f"stopped ({one_line(str(err), 160)}){hint}"
        )

    # ------------------------------------------------------------ collectives
    def gather(self, value: T) -> list[T]:
        """``value`` of every rank, in rank order."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(out, value, group=self._objects)
        except RuntimeError as err:
            raise self.failed(err) from None
        return out

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.lead else None]
        try:
            dist.broadcast_object_list(box, src=0, group=self._objects)
        except RuntimeError as err:
            raise self.failed(err) from None
        return box[0]

    def agree(self, action: Callable[..., T], *args: Any) -> T:
        """``action(*args)`` on this rank; when it fails on any rank, raise the failure
        of the lowest such rank on every rank (one and the same line)."""
        if not self.distributed:
            return action(*args)
        failure: BaseException | None = None
        result: Any = None
        try:
            result = action(*args)
        except Exception as err:  # every failure must reach the other ranks
            failure = err
        reports = self.gather(None if failure is None else _report(failure))
        for rank, report in enumerate(reports):
            if report is None:
                continue
            known = (InputError, ResourceError, OSError, MemoryError)
            if rank == self.rank and failure is not None and not isinstance(failure, known):
                raise failure  # an unexpected error keeps its traceback here
            raise _rebuild(*report, rank) from None
        return result

    def same(self, what: str, value: Any) -> None:
        """Refuse a ``value`` (the data's fingerprint) that differs between ranks."""
        values = self.gather(value)
        for rank, other in enumerate(values):
            if other != values[0]:
                keys = sorted(
                    k for k in set(values[0]) | set(other) if values[0].get(k) != other.get(k)
                )
                raise InputError(
                    f"{what}: rank {rank} reads other data than rank 0 (differs in "
                    f"{', '.join(keys[:3])}); every rank must see the same store"
                )

    def mean_(self, tensor: Tensor) -> Tensor:
        """Average ``tensor`` over the ranks, in place."""
        if self.distributed:
            import torch.distributed as dist

            try:
                dist.all_reduce(tensor)
            except RuntimeError as err:
                raise self.failed(err) from None
            tensor.div_(self.world)
        return tensor

    def loss_function(self, network: torch.nn.Module) -> Callable[..., Tensor]:
        """``network.loss``; wrapped in DistributedDataParallel for several ranks, so
        the backward pass averages the gradients over the ranks."""
        if not self.distributed:
            return network.loss  # type: ignore[return-value]
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device] if self.device.type == "cuda" else None
        # the buffers (normalization statistics) are equal on every rank: no sync per step
        no_sync = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        buffers = {"forward_sync_buffers" if no_sync else "broadcast_buffers": False}
        return DistributedDataParallel(_Loss(network), device_ids=ids, **buffers)

    def close(self) -> None:
        """Leave the group (when this run joined it) and restore the signal handler."""
        while self._restore:
            self._restore.pop()()


class _Loss(torch.nn.Module):
    """The network's training loss as ``forward``, the call DDP synchronizes."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, obs: Tensor, act: Tensor, task: Tensor | None) -> Tensor:
        return self.network.loss(obs, act, task)  # type: ignore[operator]


def check_launch(launch: Launch, device_name: str, batch_size: int) -> torch.device:
    """This rank's device, after refusing a global batch that does not split evenly
    over the ranks and a device a rank cannot own."""
    if batch_size % launch.world:
        raise FieldError(
            "batch_size",
            f"{batch_size} does not split evenly over the {launch.world} ranks of the torchrun "
            f"group (the batch is global); pass a multiple of {launch.world}",
        )
    return rank_device(device_name, launch.local_rank)


def join_group(device_name: str, batch_size: int) -> Ranks:
    """This process's :class:`Ranks`: under torchrun with several ranks, the joined
    process group; otherwise one rank on ``resolve_device(device_name)``.

    The options (:func:`check_launch`) are refused only once every rank has joined
    (over gloo when they are wrong), all ranks at once: a rank that stopped early
    would have torchrun stop the others before they could say why."""
    launch = torchrun_launch()
    if launch is None or launch.world == 1:
        return Ranks(device=resolve_device(device_name))
    problem: InputError | None = None
    try:
        device = check_launch(launch, device_name, batch_size)
        seconds = group_timeout()
    except InputError as err:
        problem, device, seconds = err, torch.device("cpu"), TIMEOUT_S
    backend = "nccl" if device.type == "cuda" else "gloo"
    ranks = Ranks(launch.rank, launch.world, device, backend, launch.local_world)
    timeout = datetime.timedelta(seconds=seconds)
    import torch.distributed as dist

    if dist.is_initialized():  # a caller's own group (train_bc called in a torchrun script)
        if dist.get_world_size() != launch.world:
            raise ResourceError("torchrun group: the initialized group is not WORLD_SIZE")
    else:
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend, timeout=timeout)
        except (RuntimeError, ValueError) as err:
            raise ResourceError(
                f"rank {launch.rank} of {launch.world}: cannot join the torchrun group at "
                f"{launch.address} ({backend}): {one_line(str(err), 160)}"
            ) from None
        ranks._restore.append(dist.destroy_process_group)
    try:
        ranks._objects = (
            dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
        )
        _stop_on_sigterm(ranks)
        ranks.agree(_raise, problem)
    except BaseException:
        ranks.close()
        raise
    return ranks


def _raise(problem: Exception | None) -> None:
    if problem is not None:
        raise problem


def _stop_on_sigterm(ranks: Ranks) -> None:
    """Turn torchrun's SIGTERM (another rank failed) into a one-line error."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        raise Stopped(
            f"rank {ranks.rank} of {ranks.world}: stopped by SIGTERM (torchrun stops every rank "
            "when one fails); the run can be resumed from its last checkpoint with --resume"
        )

    previous = signal.signal(signal.SIGTERM, stop)
    ranks._restore.insert(0, lambda: signal.signal(signal.SIGTERM, previous))


# ---------------------------------------------------------------- test hooks
@dataclass(frozen=True)
class DebugHooks:
    """The test suite's per-step hooks (:data:`DIGEST_ENV`, :data:`KILL_ENV`)."""

    digest: Path | None = None
    kill_step: int | None = None

    @classmethod
    def from_env(cls, rank: int) -> DebugHooks:
        folder = os.environ.get(DIGEST_ENV)
        kill = os.environ.get(KILL_ENV, "")
        who, _, step = kill.partition(":")
        kill_step = int(step) if who.isdigit() and int(who) == rank and step.isdigit() else None
        return cls(Path(folder) / f"rank{rank}.txt" if folder else None, kill_step)

    def after_step(self, step: int, network: torch.nn.Module, rows: int) -> None:
        """After ``step`` (trained on ``rows`` rows here): ``STEP ROWS SHA256`` of the
        parameters and buffers to the digest file; the kill."""
        if self.digest is not None:
            digest = hashlib.sha256()
            for tensor in network.state_dict().values():
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            with open(self.digest, "a") as out:
                out.write(f"{step} {rows} {digest.hexdigest()}\n")
        if self.kill_step == step:
            with contextlib.suppress(OSError):
                os.kill(os.getpid(), signal.SIGKILL)
