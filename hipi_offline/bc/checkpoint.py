"""A training checkpoint: everything a resumed run restores, in one :class:`TrainState`.

A checkpoint file holds, beside the run description in its metadata::

    policy.*                   the network's weights and normalization statistics
    tasks.candidates           the candidate tasks (task-conditioned runs)
    optim.<i>.<name>           AdamW's state of parameter i (step, exp_avg, exp_avg_sq)
    rng.sampler, rng.torch     the minibatch sampler's and torch's generator states
    metrics.window_*           the logging window's running sums

The learning rate is a pure function of the step, so this is all a run needs to
continue bit for bit on the same device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hipi_offline.bc.description import RunDescription
from hipi_offline.bc.policy import (
    CANDIDATES,
    BCNetwork,
    check_policy_tensors,
    checkpoint_path,
    list_checkpoints,
    network_state,
    policy_tensors,
    read_checkpoint,
    write_checkpoint,
)
from hipi_offline.errors import InputError, one_line

OPTIM_PREFIX = "optim."
OPTIM_STATE = ("step", "exp_avg", "exp_avg_sq")
"""AdamW's state per parameter, as checkpointed."""
RNG = ("rng.sampler", "rng.torch")
"""The sampler's generator state and torch's global one."""
WINDOW = ("metrics.window_loss", "metrics.window_norm", "metrics.window_steps")
"""The logging window's running sums, checkpointed so a resumed run logs the same rows."""


def damaged(path: Path | None, what: str) -> InputError:
    """The error of a checkpoint a run cannot resume from."""
    return InputError(
        f"{path}: cannot resume from this checkpoint ({what}); pass --overwrite to start over"
    )


@dataclass
class Window:
    """The logging window: running sums since the last metrics row."""

    loss: Tensor
    norm: Tensor
    steps: int = 0

    @classmethod
    def empty(cls, device: torch.device) -> Window:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device))

    def reset(self) -> None:
        self.loss.zero_()
        self.norm.zero_()
        self.steps = 0


@dataclass
class TrainState:
    """The state a checkpoint saves and a resumed run restores."""

    network: BCNetwork
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    """The minibatch sampler's random stream."""
    window: Window
    candidates: np.ndarray | None = None
    """float32 [K, D] candidate tasks, saved for the policy (never restored)."""

    def state_dict(self) -> dict[str, Tensor]:
        """The checkpoint tensors (see the module docstring)."""
        tensors = policy_tensors(self.network)
        if self.candidates is not None:
            tensors[CANDIDATES] = torch.from_numpy(self.candidates)
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"{OPTIM_PREFIX}{index}.{key}"] = torch.as_tensor(value)
        sampler, global_rng = RNG
        tensors[sampler] = self.generator.get_state()
        tensors[global_rng] = torch.get_rng_state()
        loss, norm, steps = WINDOW
        tensors[loss] = self.window.loss
        tensors[norm] = self.window.norm
        tensors[steps] = torch.tensor(self.window.steps)
        return tensors

    def load_state_dict(self, tensors: dict[str, Tensor]) -> None:
        """Continue from checkpoint tensors checked by :func:`check_resumable` (one
        without the window's sums starts an empty window)."""
        self.network.load_state_dict(network_state(tensors), strict=True)
        optim_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(OPTIM_PREFIX):
                _, index, name = key.split(".", 2)
                optim_state.setdefault(int(index), {})[name] = value
        current = self.optimizer.state_dict()
        current["state"] = optim_state
        self.optimizer.load_state_dict(current)
        sampler, global_rng = RNG
        self.generator.set_state(tensors[sampler])
        torch.set_rng_state(tensors[global_rng])
        loss, norm, steps = WINDOW
        if steps in tensors:
            self.window.loss.copy_(tensors[loss])
            self.window.norm.copy_(tensors[norm])
            self.window.steps = int(tensors[steps])


# ---------------------------------------------------------------- checks
def _check_optimizer_tensors(tensors: dict[str, Tensor], spec: dict, path: Path) -> None:
    """Refuse optimizer state that does not fit the network (it would fail only at the
    first training step, after the data is loaded)."""
    with torch.device("meta"):
        shapes = [p.shape for p in BCNetwork(**spec).parameters()]
    seen: dict[int, set[str]] = {}
    for key, value in tensors.items():
        if not key.startswith(OPTIM_PREFIX):
            continue
        parts = key.split(".")
        index = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1
        if not 0 <= index < len(shapes) or parts[2] not in OPTIM_STATE:
            raise damaged(path, f"unexpected tensor {one_line(key, 60)}")
        want = torch.Size([]) if parts[2] == "step" else shapes[index]
        if value.shape != want or not value.is_floating_point():
            raise damaged(path, f"{key} is {value.dtype} {list(value.shape)}, not {list(want)}")
        seen.setdefault(index, set()).add(parts[2])
    if any(names != set(OPTIM_STATE) for names in seen.values()):
        raise damaged(path, "incomplete optimizer state")


def check_resumable(tensors: dict[str, Tensor], spec: dict, path: Path) -> None:
    """Refuse a checkpoint whose tensors cannot be restored into this run."""
    check_policy_tensors(tensors, spec, str(path))
    _check_optimizer_tensors(tensors, spec, path)
    for key in RNG:
        value = tensors.get(key)
        if value is None or value.dtype != torch.uint8 or value.ndim != 1:
            raise damaged(path, f"no valid {key} state")
    present = [key for key in WINDOW if key in tensors]
    if present and (len(present) != len(WINDOW) or any(tensors[k].ndim for k in WINDOW)):
        raise damaged(path, "damaged metrics window")


def read_resumable(path: Path, step: int, spec: dict) -> dict[str, Tensor]:
    """The tensors of the checkpoint of ``step`` a run resumes from, checked against
    the run's network ``spec``."""
    tensors, found, _ = read_checkpoint(path)
    if found != step:
        raise damaged(path, f"its metadata says step {found}")
    check_resumable(tensors, spec, path)
    return tensors


def policy_parameters(tensors: dict[str, Tensor]) -> int:
    """The number of trainable values (weights and biases) of checkpoint tensors."""
    return sum(
        v.numel()
        for k, v in network_state(tensors).items()
        if k.split(".")[-1] in ("weight", "bias")
    )


def save(run_dir: Path, step: int, state: TrainState, run: RunDescription, keep: int) -> Path:
    """Commit the checkpoint of ``step``; with ``keep``, drop all but the newest ``keep``."""
    path = write_checkpoint(checkpoint_path(run_dir, step), state.state_dict(), step, run)
    if keep:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            if old != path:
                old.unlink(missing_ok=True)
    return path
