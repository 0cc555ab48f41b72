"""Where tensors live and what computes them: the ``--device`` option (auto, cpu, cuda)
of relabel, train-bc and the policy loader, and the ``--threads`` option."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from hipi_offline.errors import InputError

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
"""The accepted names (``cuda:N`` picks one GPU)."""


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and
    SLURM narrow), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def half_the_cores() -> int:
    """Half of :func:`usable_cores`, at least 1: a stage that reads its next chunk on
    a thread of its own leaves that thread a core (1 thread on 2 cores, where two
    threads stall as soon as something else runs)."""
    return max(1, usable_cores() // 2)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (0: leave torch's own),
    then restore the previous count."""
    if not threads:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES[1:] and not name.startswith("cuda:"):
        raise InputError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device: cuda requested but no CUDA device is available")
    return torch.device(name)


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of one rank of a torchrun group: ``cuda:LOCAL_RANK`` when ``name``
    resolves to CUDA (one GPU per rank on each node), else the CPU."""
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise InputError(
            f"--device: {name} under torchrun; each rank uses cuda:LOCAL_RANK, pass cuda or auto"
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise InputError(
            f"--device: rank with LOCAL_RANK={local_rank} has no GPU of its own ({count} on "
            "this node); start at most one rank per GPU (--nproc-per-node)"
        )
    return torch.device("cuda", local_rank)
