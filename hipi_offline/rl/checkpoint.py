"""Checkpoints of an online RL run: one safetensors file per checkpoint, written
atomically, named by the environment step it was taken at
(``checkpoints/step-00012000.safetensors``).

Tensors: ``sac.*`` (the actor, the twin critics, their targets, log alpha and the
networks' statistics: :meth:`SAC.state_dict`), ``opt.<actor|critic|alpha>.<i>.<key>``
(Adam's state of parameter i), ``rng.sac`` and ``rng.train`` (the learner's and the
minibatch sampler's generators) and the counters ``count.env_steps``,
``count.episodes``, ``count.updates``, ``count.init_episodes`` (episodes copied from
``--init-store``; absent in older checkpoints: 0). Checkpoints are taken at the ends of
lockstep rounds, so the replay buffer is the store's first ``count.episodes`` episodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor

from hipi_offline.errors import InputError
from hipi_offline.rl.sac import SAC
from hipi_offline.store.atomic import atomic_write_bytes

FOLDER = "checkpoints"
_NAME = re.compile(r"^step-(\d{8,})\.safetensors$")
OPTIMIZERS = ("actor", "critic", "alpha")


@dataclass(frozen=True)
class Counters:
    env_steps: int
    episodes: int
    """Episodes in the buffer (the init store's included)."""
    updates: int
    init_episodes: int = 0
    """Episodes copied from --init-store (the first ones of the buffer)."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / FOLDER / f"step-{step:08d}.safetensors"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints, oldest first."""
    folder = run_dir / FOLDER
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file() and not path.is_symlink():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _optimizer(sac: SAC, name: str) -> torch.optim.Optimizer:
    return {"actor": sac.actor_opt, "critic": sac.critic_opt, "alpha": sac.alpha_opt}[name]


def state_tensors(sac: SAC, train_generator: torch.Generator, counters: Counters) -> dict:
    """Every tensor a resumed run needs (see the module docstring)."""
    tensors: dict[str, Tensor] = {
        f"sac.{k}": v.detach().clone().contiguous() for k, v in sac.state_dict().items()
    }
    for name in OPTIMIZERS:
        for index, state in _optimizer(sac, name).state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"opt.{name}.{index}.{key}"] = torch.as_tensor(value).clone()
    tensors["rng.sac"] = sac.generator.get_state()
    tensors["rng.train"] = train_generator.get_state()
    for key, value in vars(counters).items():
        tensors[f"count.{key}"] = torch.tensor(value, dtype=torch.int64)
    return tensors


def save(
    run_dir: Path, sac: SAC, train_generator: torch.Generator, counters: Counters, keep: int = 2
) -> Path:
    """Commit a checkpoint atomically; keep the newest ``keep``."""
    path = checkpoint_path(run_dir, counters.env_steps)
    path.parent.mkdir(exist_ok=True)
    atomic_write_bytes(path, save_bytes(state_tensors(sac, train_generator, counters)))
    for _, old in list_checkpoints(run_dir)[:-keep]:
        if old != path:
            old.unlink(missing_ok=True)
    return path


def restore(path: Path, sac: SAC, train_generator: torch.Generator) -> Counters:
    """Load a checkpoint into ``sac`` and the generator; return its counters."""
    try:
        tensors = load_bytes(path.read_bytes())
        sac.load_state_dict(
            {k[4:]: v for k, v in tensors.items() if k.startswith("sac.")}, strict=True
        )
        for name in OPTIMIZERS:
            optimizer = _optimizer(sac, name)
            state: dict[int, dict[str, Tensor]] = {}
            for key, value in tensors.items():
                if key.startswith(f"opt.{name}."):
                    _, _, index, field = key.split(".", 3)
                    state.setdefault(int(index), {})[field] = value
            current = optimizer.state_dict()
            current["state"] = state
            optimizer.load_state_dict(current)
        sac.generator.set_state(tensors["rng.sac"])
        train_generator.set_state(tensors["rng.train"])
        counters = Counters(
            **{k: int(tensors[f"count.{k}"]) for k in ("env_steps", "episodes", "updates")},
            init_episodes=int(tensors.get("count.init_episodes", torch.tensor(0))),
        )
    except Exception as err:  # noqa: BLE001 - safetensors and torch raise many kinds
        raise InputError(f"{path}: not a checkpoint this run can resume from ({err})") from None
    sac.updates = counters.updates
    return counters
