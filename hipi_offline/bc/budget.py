"""A train-bc run's budget, checked before it writes anything: whether the network and a
minibatch fit in memory, and whether ``--out`` is writable with room for a checkpoint.

The estimates are deliberately coarse (a few bytes per value, with the optimizer's
state and the backward pass's buffers): they catch sizes that cannot work, like
``--hidden 1000000000,1000000000`` or ``--batch-size 1000000000000``, before any data
is loaded, instead of a failed allocation or a full disk after the computation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hipi_offline.bc.config import HEAD_OUTPUTS, BCConfig
from hipi_offline.bc.policy import parameter_count
from hipi_offline.errors import InputError
from hipi_offline.preflight import available_memory as host_memory
from hipi_offline.preflight import check_free_space, existing_ancestor
from hipi_offline.preflight import check_writable as check_folder_writable

FLOAT = 4
"""Bytes of a float32."""
TRAIN_COPIES = 6
"""Weights, gradients, AdamW's two moments and the foreach update's temporaries."""
RNG_BYTES = 2 * 5056
"""The sampler's and torch's generator states in a checkpoint."""
MARGIN = 64 << 10
"""Room for the marker, the lock and file-system overhead besides the estimates."""


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:,.1f} MiB"


def network_spec(
    config: BCConfig,
    obs_dim: int,
    act_dim: int,
    task_dim: int,
    task_frame: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The network arguments (the run description's ``network``) of ``config``; a
    ``task_frame`` (``--body-frame-task``) is listed only when given, so the runs of
    earlier versions keep their description."""
    spec = {
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "task_dim": task_dim,
        "hidden": list(config.hidden),
        "activation": config.activation,
        "head": config.head,
        "task_embedding": config.task_embedding,
    }
    if task_frame is not None:
        spec["task_frame"] = task_frame
    return spec


def _parameters(spec: dict[str, Any]) -> int:
    return parameter_count(**{**spec, "hidden": tuple(spec["hidden"])})


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (None when unknown)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    return host_memory()


def batch_bytes(spec: dict[str, Any], batch_size: int, top_k: int) -> int:
    """Coarse memory of one training step's minibatch: inputs, every layer's output
    and activation with their gradients, and the sampler's gathered posterior rows."""
    embedded = spec["task_embedding"] if spec["task_embedding"] and spec["task_dim"] else 0
    width = spec["obs_dim"] + (embedded or spec["task_dim"]) + 2 * ("task_frame" in spec)
    out = spec["act_dim"] * HEAD_OUTPUTS[spec["head"]]
    values = 3 * width + 4 * sum(spec["hidden"]) + 8 * out
    values += 2 * (spec["obs_dim"] + spec["act_dim"] + spec["task_dim"])
    return batch_size * (FLOAT * values + 8 * (4 + 2 * top_k))


def check_memory(
    config: BCConfig,
    spec: dict[str, Any],
    num_steps: int,
    top_k: int,
    device: torch.device,
    sharing: int = 1,
) -> None:
    """Refuse hidden sizes, batch sizes and working sets that cannot fit in memory, with
    an InputError naming the option. ``sharing`` processes of this machine (torchrun's
    ranks on one node) each need as much: host memory is split among them."""
    params = _parameters(spec)
    model = TRAIN_COPIES * FLOAT * params
    batch = batch_bytes(spec, config.batch_size, top_k)
    working_set = FLOAT * num_steps * (spec["obs_dim"] + spec["act_dim"])
    in_memory = working_set <= config.max_memory_mb * 2**20
    avail = available_memory(device)
    if avail is None:
        return
    if device.type != "cuda":
        avail //= sharing
    share = f" (its share for one of {sharing} ranks on this machine)" if sharing > 1 else ""
    where = "GPU memory" if device.type == "cuda" else f"memory{share}"
    if model > avail:
        raise InputError(
            f"--hidden: a network of {params:,} parameters needs about {_gib(model)} of "
            f"{where} to train, more than the {_gib(avail)} available; use smaller layers"
        )
    if model + batch > avail:
        raise InputError(
            f"--batch-size: a batch of {config.batch_size:,} steps through layers "
            f"{','.join(map(str, spec['hidden']))} needs about {_gib(batch)} of {where}, more "
            f"than the {_gib(avail - model)} left; use a smaller --batch-size"
        )
    host = avail if device.type != "cuda" else available_memory(torch.device("cpu"))
    if host is not None and device.type == "cuda":
        host //= sharing
    host_used = model + batch if device.type != "cuda" else 0
    if in_memory and host is not None and host_used + working_set > host:
        raise InputError(
            f"--max-memory-mb: the working set of {num_steps:,} steps needs {_gib(working_set)} "
            f"of memory{share}, more than the {_gib(max(host - host_used, 0))} left; pass a "
            "smaller --max-memory-mb to spill it to a file in the run folder"
        )


def checkpoint_bytes(spec: dict[str, Any], num_candidates: int, description_bytes: int) -> int:
    """Coarse size of one checkpoint: weights and AdamW's moments, buffers, candidate
    tasks, generator states and the run description in its metadata."""
    buffers = 2 * spec["obs_dim"] + 4 * spec["act_dim"] + 2 * spec["task_dim"]
    tensors = 3 * _parameters(spec) + buffers + num_candidates * spec["task_dim"]
    return FLOAT * tensors + RNG_BYTES + 2 * description_bytes


def description_bytes(spec: dict[str, Any], extra_text: int) -> int:
    """Coarse size of a run description: statistics as JSON numbers plus texts."""
    numbers = 8 * (spec["obs_dim"] + spec["act_dim"] + spec["task_dim"])
    return 16_384 + 32 * numbers + 2 * extra_text


def check_writable(run_dir: Path, needed: int) -> None:
    """Refuse an ``--out`` that cannot be written (read-only file system, no
    permission) or lacks ``needed`` free bytes, before anything is computed."""
    what = f"--out {run_dir}"
    check_folder_writable(existing_ancestor(run_dir), what)
    check_free_space(run_dir, needed, f"{what} (a checkpoint of this run)")
