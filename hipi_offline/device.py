"""Where tensors live: the ``--device`` option (auto, cpu, cuda) of relabel, train-bc
and the policy loader."""

from __future__ import annotations

import torch

from hipi_offline.errors import InputError

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
"""The accepted names (``cuda:N`` picks one GPU)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES[1:] and not name.startswith("cuda:"):
        raise InputError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device: cuda requested but no CUDA device is available")
    return torch.device(name)
