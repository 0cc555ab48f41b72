"""The actor of a train-rl run as a :class:`~hipi_offline.bc.policy.Policy`, so that
``evaluate`` (and any code that calls :func:`~hipi_offline.bc.policy.load_policy`)
takes an RL run like a BC run::

    policy = load_policy("runs/rl")              # the run's latest checkpoint
    action = policy.act(obs, task)               # center + half * tanh(mean)

The actor is the BC network class with its tanh-Gaussian head (:mod:`.sac`), held in a
checkpoint under ``sac.actor.*``, so its deterministic action (the tanh of the Gaussian
mean scaled to the action box) and its sampled actions are the BC policy's.

Everything in the run folder is untrusted: its own entries must not be links
(:func:`~hipi_offline.ownership.check_own_entries`), config.json is read strictly
(:meth:`RLConfig.from_json`, the training options' own checks), and the actor's
tensors are checked against the network that config.json and the tensors' vector
sizes describe (:func:`~hipi_offline.bc.policy.check_policy_tensors`) before a
network is built. Each problem is one InputError naming the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hipi_offline.bc.description import RunDescription
from hipi_offline.bc.policy import Policy, policy_from_tensors
from hipi_offline.configs import FieldError
from hipi_offline.envs.base import env_entry
from hipi_offline.envs.gymnasium_env import PREFIX
from hipi_offline.errors import InputError, one_line
from hipi_offline.ownership import check_own_entries, marker_kind
from hipi_offline.rl import checkpoint as ckpt
from hipi_offline.rl.config import RLConfig
from hipi_offline.rl.sac import SACConfig
from hipi_offline.rl.train import RUN_FILES, RUN_FOLDERS, RUN_KIND
from hipi_offline.store.label_attrs import label_task_names, task_attrs
from hipi_offline.tasks.spec import builtin_spec_names, load_task_spec

ACTOR_PREFIX = "sac.actor."
"""Checkpoint tensors of the actor (:meth:`SAC.state_dict` under ``sac.``)."""
RL_RUN_FORMAT = "hipi_offline.rl.actor/1"
"""The ``format`` of the run description an RL actor's policy carries."""
MAX_CONFIG_BYTES = 1 << 20
"""Largest config.json read (train-rl writes a few hundred bytes)."""
ACTOR_HEAD = "gaussian"
"""The head of SAC's actor network (:class:`~hipi_offline.rl.sac.SAC`)."""


@dataclass(frozen=True)
class RLRun:
    """What config.json says about a train-rl run, checked."""

    run_dir: Path
    env: str
    """A registered environment."""
    config: RLConfig
    trained_spec: str
    """The task spec the run was trained with (``--tasks``, else the environment's)."""

    @property
    def method(self) -> str:
        """The name evaluate shows: ``rl-`` and the relabeling strategy."""
        return f"rl-{self.config.relabel}"


class RLPolicy(Policy):
    """A train-rl run's actor; a :class:`Policy` that also names the run's task spec."""

    def __init__(
        self,
        base: Policy,
        rl_run: RLRun,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__(base.network, base.run, step=base.step, device=device, seed=seed)
        self.rl_run = rl_run

    @property
    def trained_spec(self) -> str:
        """The task spec the run was trained with (a built-in name or a file path)."""
        return self.rl_run.trained_spec


# ---------------------------------------------------------------- locating
def rl_run_of(path: Path) -> tuple[Path, Path | None] | None:
    """(run folder, checkpoint file or None for the latest) when ``path`` is a train-rl
    run folder, its checkpoints/ folder or a file in it; None otherwise (a BC run)."""
    path = Path(path)
    if path.is_dir() and marker_kind(path) == RUN_KIND:
        return path, None
    if path.name == ckpt.FOLDER and path.is_dir() and marker_kind(path.parent) == RUN_KIND:
        return path.parent, None
    parent = path.parent
    in_run = parent.name == ckpt.FOLDER and marker_kind(parent.parent) == RUN_KIND
    if in_run and (path.is_symlink() or not path.is_dir()):
        return parent.parent, path
    if path.is_file() and _holds_an_actor(path):
        raise InputError(
            f"{path}: a train-rl checkpoint outside its run folder; its options are in the "
            "run's config.json, so give the run folder or a checkpoint in its checkpoints/"
        )
    return None


def _holds_an_actor(path: Path) -> bool:
    """Whether a file is a safetensors file with ``sac.actor.*`` tensors (its header
    only is read; anything unreadable is left to the BC reader's errors)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return any(k.startswith(ACTOR_PREFIX) for k in handle.keys())  # noqa: SIM118
    except (OSError, ValueError, RuntimeError, TypeError, SafetensorError):
        return False


def _checkpoint(run_dir: Path, given: Path | None) -> tuple[Path, int]:
    """The checkpoint to load (``given``, or the latest) and its environment step."""
    folder = run_dir / ckpt.FOLDER
    if folder.is_dir():
        links = sorted(p.name for p in folder.iterdir() if p.is_symlink())
        if links:
            raise InputError(
                f"{folder / links[0]}: is a symbolic link; a run's checkpoints must be plain "
                "files (remove it yourself)"
            )
    found = ckpt.list_checkpoints(run_dir)
    if given is None:
        if not found:
            raise InputError(
                f"{run_dir}: no checkpoints (checkpoints/step-*.safetensors) found; "
                "train-rl writes one at the first episode end after --checkpoint-every steps"
            )
        step, path = found[-1]
        return path, step
    for step, path in found:
        if path.name == given.name:
            return path, step
    raise InputError(
        f"{given}: not a checkpoint of the train-rl run {run_dir} "
        "(checkpoints/step-NNNNNNNN.safetensors)"
    )


# ---------------------------------------------------------------- config.json
def read_run(run_dir: Path) -> RLRun:
    """The checked content of a train-rl run's config.json."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise InputError(f"{path}: missing; the train-rl run folder is damaged")
    with path.open("rb") as handle:
        raw = handle.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise InputError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; it is damaged")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as err:
        reason = one_line(str(err), 120) or type(err).__name__
        raise InputError(f"{path}: not JSON ({reason}); it is damaged") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object; it is damaged")
    env = data.get("env")
    if not isinstance(env, str) or env.startswith(PREFIX):
        raise InputError(
            f"{path}: field env must name a registered environment, got "
            f"{one_line(repr(env), 80)}; it is damaged"
        )
    try:
        entry = env_entry(env)
    except InputError as err:
        raise InputError(f"{path}: field env: {str(err).removeprefix('ENV: ')}") from None
    options = data.get("config")
    if not isinstance(options, dict):
        raise InputError(f"{path}: field config must be an object; it is damaged")
    try:
        config = RLConfig.from_json({**options, "out": str(run_dir)})
    except FieldError as err:
        raise InputError(f"{path}: field config.{err.field}: {err.problem}") from None
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    except (TypeError, ValueError) as err:  # a value no check foresaw
        raise InputError(f"{path}: field config: {one_line(str(err), 160)}") from None
    return RLRun(run_dir, env, config, config.tasks or entry.task_spec)


# ---------------------------------------------------------------- the checkpoint
def read_actor_tensors(path: Path) -> dict[str, Tensor]:
    """The ``sac.actor.*`` tensors of a train-rl checkpoint (nothing else is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            names = [k for k in handle.keys() if k.startswith(ACTOR_PREFIX)]  # noqa: SIM118
            return {k: handle.get_tensor(k) for k in names}
    except (OSError, ValueError, RuntimeError, TypeError, SafetensorError) as err:
        reason = one_line(str(err), 200) or type(err).__name__
        raise InputError(f"{path}: not a readable train-rl checkpoint ({reason})") from None


def _length(tensors: dict[str, Tensor], name: str, where: str) -> int:
    """The size of the actor's statistics vector ``name`` (it fixes a dimension)."""
    key = ACTOR_PREFIX + name
    value = tensors.get(key)
    if value is None or value.ndim != 1 or value.shape[0] < 1:
        got = "nothing" if value is None else f"{value.dtype} {list(value.shape)}"
        raise InputError(
            f"{where}: checkpoint tensor {key} must be a non-empty vector, got {got}; it is damaged"
        )
    return int(value.shape[0])


def actor_description(run: RLRun, tensors: dict[str, Tensor], where: str) -> RunDescription:
    """The run description of the actor: the network config.json's options make
    (SAC's actor: :class:`~hipi_offline.bc.policy.BCNetwork` with the gaussian head),
    in the dimensions of the checkpoint's statistics vectors (``where`` names the
    checkpoint; ``evaluate`` checks them against the environment); its label name is
    the method (``rl-hipi``). Layer sizes no network can have are refused naming
    config.json."""
    dims = {
        name: _length(tensors, f"{name}_{vector}", where)
        for name, vector in (("obs", "mean"), ("act", "low"), ("task", "mean"))
    }
    spec: dict[str, Any] = {
        "obs_dim": dims["obs"],
        "act_dim": dims["act"],
        "task_dim": dims["task"],
        "hidden": list(run.config.hidden),
        "activation": SACConfig().activation,
        "head": ACTOR_HEAD,
        "task_embedding": 0,
    }
    labels: dict[str, Any] = {
        "name": run.method,
        "method": run.method,
        "spec_origin": run.trained_spec,
    }
    if run.trained_spec in builtin_spec_names():
        attrs = task_attrs(load_task_spec(run.trained_spec))
        labels["family"] = attrs["family"]
        labels["task_names"] = label_task_names(attrs)
    description = {
        "format": RL_RUN_FORMAT,
        "config": None,
        "store": {"path": str(run.run_dir / "replay.h5"), "env": run.env},
        "labels": labels,
        "dims": {
            "obs": dims["obs"],
            "obs_shape": [dims["obs"]],
            "act": dims["act"],
            "task": dims["task"],
        },
        "network": spec,
    }
    return RunDescription.from_json(description, str(run.run_dir / "config.json"))


def load_rl_policy(
    located: tuple[Path, Path | None], device: torch.device | str = "cpu", seed: int = 0
) -> RLPolicy:
    """The actor of a train-rl run (``located`` as :func:`rl_run_of` gives it): the
    given checkpoint or the run's latest, as a policy on ``device``; ``seed`` seeds
    ``act(..., sample=True)``."""
    run_dir, given = located
    check_own_entries(run_dir, RUN_FILES, RUN_FOLDERS)
    run = read_run(run_dir)
    path, step = _checkpoint(run_dir, given)
    where = str(path)
    tensors = read_actor_tensors(path)
    description = actor_description(run, tensors, where)
    base = policy_from_tensors(tensors, step, description, device, seed, where, ACTOR_PREFIX)
    return RLPolicy(base, run, device, seed)
