"""Policy networks pi(a | s, psi), checkpoint files, and the rollout wrapper.

The network holds its normalization statistics as buffers, so a checkpoint
(``safetensors``) is self-contained: weights, statistics, the candidate tasks
and, in its metadata, the run description (config.json's content). Evaluation
code uses only :func:`load_policy` and :meth:`Policy.act`::

    policy = load_policy("runs/hipi")            # latest checkpoint of a run
    action = policy.act(obs, task)               # mean action, env units
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hipi_offline.bc.config import HEAD_OUTPUTS
from hipi_offline.bc.data import Normalization
from hipi_offline.bc.description import RunDescription, check_run
from hipi_offline.device import resolve_device
from hipi_offline.errors import InputError, one_line
from hipi_offline.store.atomic import atomic_write_bytes

CHECKPOINT_FORMAT = "hipi_offline.bc/1"
CHECKPOINT_DIR = "checkpoints"
POLICY_PREFIX = "policy."
"""Checkpoint tensors of the network (weights and normalization statistics)."""
CANDIDATES = "tasks.candidates"
"""The checkpoint tensor of the candidate tasks."""
_CHECKPOINT = re.compile(r"^step_(\d+)\.safetensors$")
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
ACTION_EPS = 1e-5
"""Normalized data actions are clipped to +-(1 - ACTION_EPS) before atanh (the
bounds are the data's min and max, so some actions lie exactly on them)."""
HALF_RANGE_FLOOR = 1e-6
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class BCNetwork(nn.Module):
    """MLP on [normalized observation, task encoding] with a tanh-Gaussian or a
    deterministic head. Inputs and outputs are in raw (environment) units."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        task_dim: int,
        hidden: tuple[int, ...] = (256, 256, 256),
        activation: str = "relu",
        head: str = "gaussian",
        task_embedding: int = 0,
        task_frame: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if head not in HEAD_OUTPUTS:
            raise InputError(f"--head: expected {' or '.join(HEAD_OUTPUTS)}, got {head!r}")
        self.obs_dim, self.act_dim, self.task_dim = obs_dim, act_dim, task_dim
        self.head = head
        self.spec = {
            "obs_dim": obs_dim,
            "act_dim": act_dim,
            "task_dim": task_dim,
            "hidden": [int(h) for h in hidden],
            "activation": activation,
            "head": head,
            "task_embedding": task_embedding,
        }
        """The constructor arguments (saved as the run description's ``network``)."""
        self.frame = _frame_indices(task_frame) if task_dim else None
        """(rotation index, direction x, direction y): the task's direction is also
        given in the body frame (``--body-frame-task``); None: it is not."""
        if task_frame is not None:
            self.spec["task_frame"] = dict(task_frame)
        for name, dim, fill in (
            ("obs_mean", obs_dim, 0.0),
            ("obs_std", obs_dim, 1.0),
            ("act_mean", act_dim, 0.0),
            ("act_std", act_dim, 1.0),
            ("act_low", act_dim, -1.0),
            ("act_high", act_dim, 1.0),
            ("task_mean", task_dim, 0.0),
            ("task_std", task_dim, 1.0),
        ):
            self.register_buffer(name, torch.full((dim,), fill, dtype=torch.float32))
        self.embed = (
            nn.Linear(task_dim, task_embedding, bias=False) if task_embedding and task_dim else None
        )
        width = obs_dim + (task_embedding if self.embed is not None else task_dim)
        width += FRAME_FEATURES if self.frame is not None else 0
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, size), _ACTIVATIONS[activation]()]
            width = size
        self.trunk = nn.Sequential(*layers)
        self.out = nn.Linear(width, act_dim * HEAD_OUTPUTS[head])

    # ------------------------------------------------------------ normalization
    def set_normalization(self, norm: Normalization) -> None:
        for name in Normalization.__dataclass_fields__:
            value = torch.as_tensor(np.asarray(getattr(norm, name)), dtype=torch.float32)
            getattr(self, name).copy_(value)

    def _center_half(self) -> tuple[Tensor, Tensor]:
        center = 0.5 * (self.act_high + self.act_low)
        half = (0.5 * (self.act_high - self.act_low)).clamp(min=HALF_RANGE_FLOOR)
        return center, half

    # ------------------------------------------------------------ forward
    def forward(self, obs: Tensor, task: Tensor | None = None) -> Tensor:
        """The raw head output [B, act_dim * (2 or 1)]."""
        x = (obs - self.obs_mean) / self.obs_std
        if self.task_dim:
            if task is None:
                raise ValueError("this policy is task-conditioned: pass a task")
            t = (task - self.task_mean) / self.task_std
            if self.embed is not None:
                t = self.embed(t)
            x = torch.cat([x, t], dim=1)
            if self.frame is not None:
                x = torch.cat([x, body_frame_direction(obs, task, self.frame)], dim=1)
        return self.out(self.trunk(x))

    def gaussian(self, obs: Tensor, task: Tensor | None) -> tuple[Tensor, Tensor]:
        """(mean, log_std) of the pre-tanh Gaussian, each [B, act_dim]."""
        mu, raw = self(obs, task).chunk(2, dim=1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)
        return mu, log_std

    def loss(self, obs: Tensor, action: Tensor, task: Tensor | None) -> Tensor:
        """Mean negative log-likelihood of the data actions (gaussian, in normalized
        action units y in (-1, 1), tanh correction included) or mean squared error
        of the standardized action (deterministic)."""
        if self.head == "deterministic":
            target = (action - self.act_mean) / self.act_std
            return (self(obs, task) - target).pow(2).mean()
        return -self._log_prob_normalized(obs, task, action).mean()

    def _log_prob_normalized(self, obs: Tensor, task: Tensor | None, action: Tensor) -> Tensor:
        center, half = self._center_half()
        y = ((action - center) / half).clamp(-1.0 + ACTION_EPS, 1.0 - ACTION_EPS)
        u = torch.atanh(y)
        mu, log_std = self.gaussian(obs, task)
        z = (u - mu) * torch.exp(-log_std)
        log_u = -0.5 * z.pow(2) - log_std - _LOG_SQRT_2PI
        return (log_u - torch.log1p(-y.pow(2))).sum(dim=1)

    def log_prob(self, obs: Tensor, task: Tensor | None, action: Tensor) -> Tensor:
        """log pi(a | s, psi) [B] of actions in environment units (gaussian head)."""
        if self.head != "gaussian":
            raise ValueError("log_prob needs the gaussian head")
        _, half = self._center_half()
        return self._log_prob_normalized(obs, task, action) - torch.log(half).sum()

    def mean_action(self, obs: Tensor, task: Tensor | None) -> Tensor:
        """The deterministic action [B, act_dim] in environment units."""
        center, half = self._center_half()
        if self.head == "deterministic":
            action = self(obs, task) * self.act_std + self.act_mean
            return torch.maximum(torch.minimum(action, self.act_high), self.act_low)
        mu, _ = self.gaussian(obs, task)
        return center + half * torch.tanh(mu)

    def sample_action(
        self,
        obs: Tensor,
        task: Tensor | None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """A stochastic action [B, act_dim] (the mean action for the deterministic head).

        ``noise``: the standard-normal draw [B, act_dim] to use instead of drawing
        from ``generator`` (lets a caller give each episode its own random stream)."""
        if self.head == "deterministic":
            return self.mean_action(obs, task)
        center, half = self._center_half()
        mu, log_std = self.gaussian(obs, task)
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return center + half * torch.tanh(mu + torch.exp(log_std) * noise)


FRAME_FEATURES = 2
"""Inputs added by ``--body-frame-task``: the task's direction in the body frame."""


def body_frame_direction(obs: Tensor, task: Tensor, frame: tuple[int, int, int]) -> Tensor:
    """[B, 2] the task's world (x, y) direction entries expressed in the body frame:
    the x and y rows of R^T (d_x, d_y, 0), R the row-major body-to-world rotation held
    at observation entries ``frame[0]`` .. ``frame[0] + 8``."""
    start, dx, dy = frame
    rotation = obs[:, start : start + 9].reshape(-1, 3, 3)[:, :2, :2]
    direction = torch.stack([task[:, dx], task[:, dy]], dim=1)
    return torch.einsum("bmk,bm->bk", rotation, direction)


def _frame_indices(frame: Mapping[str, Any] | None) -> tuple[int, int, int] | None:
    if frame is None:
        return None
    direction = list(frame["direction"])
    return int(frame["rotation"]), int(direction[0]), int(direction[1])


def parameter_count(
    obs_dim: int,
    act_dim: int,
    task_dim: int,
    hidden: tuple[int, ...],
    head: str = "gaussian",
    task_embedding: int = 0,
    activation: str = "relu",
    task_frame: Mapping[str, Any] | None = None,
) -> int:
    """Trainable parameters of the :class:`BCNetwork` these arguments describe
    (arithmetic only: nothing is allocated)."""
    del activation  # no parameters
    embedded = bool(task_embedding and task_dim)
    count = task_dim * task_embedding if embedded else 0
    width = obs_dim + (task_embedding if embedded else task_dim)
    width += FRAME_FEATURES if task_frame is not None and task_dim else 0
    for size in hidden:
        count += (width + 1) * size
        width = size
    out = act_dim * HEAD_OUTPUTS[head]
    return count + (width + 1) * out


def _describe(value: Any) -> str:
    return one_line(repr(value), 60)


def build_network(run: RunDescription) -> BCNetwork:
    """The (untrained) network a run description's ``network`` entry asks for."""
    return BCNetwork(**run.network_args())


def policy_tensors(network: BCNetwork) -> dict[str, Tensor]:
    """The network's weights and statistics as checkpoint tensors (``policy.*``)."""
    return {POLICY_PREFIX + k: v for k, v in network.state_dict().items()}


def network_state(tensors: Mapping[str, Tensor], prefix: str = POLICY_PREFIX) -> dict[str, Tensor]:
    """The network's ``state_dict`` held in checkpoint tensors (``policy.*``, or the
    names under another ``prefix``: ``sac.actor.`` in a train-rl checkpoint)."""
    cut = len(prefix)
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix)}


def check_policy_tensors(
    tensors: Mapping[str, Tensor],
    spec: Mapping[str, Any],
    where: str,
    prefix: str = POLICY_PREFIX,
) -> None:
    """Refuse checkpoint tensors that do not fit the network ``spec`` describes (names,
    shapes, floating types), before any real network is built. The network's tensors
    are those named ``prefix`` + its state_dict key (errors name them so)."""
    present = {prefix + k: v for k, v in network_state(tensors, prefix).items()}
    described = parameter_count(**spec)
    held = sum(v.numel() for v in present.values())
    if described > held:
        raise InputError(
            f"{where}: its run description asks for a network of {described:,} parameters, "
            f"the checkpoint holds {held:,} values; it is damaged"
        )
    with torch.device("meta"):
        expected = {prefix + k: v.shape for k, v in BCNetwork(**spec).state_dict().items()}
    for key in sorted(set(expected) | set(present)):
        if key not in present or key not in expected:
            what = "lacks" if key not in present else "has an unexpected"
            raise InputError(
                f"{where}: checkpoint {what} tensor {key}; it does not match its run description"
            )
        found = present[key]
        if found.shape != expected[key] or not found.is_floating_point():
            raise InputError(
                f"{where}: checkpoint tensor {key} is {found.dtype} {list(found.shape)}, its run "
                f"description needs float {list(expected[key])}; it is damaged"
            )
    cand = tensors.get(CANDIDATES)
    if cand is not None and not (
        cand.ndim == 2 and cand.is_floating_point() and cand.shape[1] == spec["task_dim"]
    ):
        raise InputError(
            f"{where}: checkpoint tensor tasks.candidates must be float [K, {spec['task_dim']}], "
            f"got {cand.dtype} {list(cand.shape)}; it is damaged"
        )


# ---------------------------------------------------------------- checkpoint files
def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:07d}.safetensors"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of a run's committed checkpoints, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def write_checkpoint(
    path: Path, tensors: Mapping[str, Tensor], step: int, run: RunDescription
) -> Path:
    """Write a checkpoint atomically (a kill leaves the old file set, never a torn file)."""
    from safetensors.torch import save

    payload = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "step": str(int(step)),
        "run": json.dumps(run.to_json()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(payload, metadata=metadata))
    return path


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], int, RunDescription]:
    """(tensors, step, run description) of a checkpoint file, or an InputError."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = Path(path).read_bytes()
        tensors = load(data)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        metadata = header.get("__metadata__") or {}
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"format {_describe(metadata.get('format'))} is not {CHECKPOINT_FORMAT}"
            )
        step_text = metadata["step"]
        if not (isinstance(step_text, str) and step_text.isascii() and step_text.isdigit()):
            raise ValueError(f"step {_describe(step_text)} is not a non-negative integer")
        if len(step_text) > 18:
            raise ValueError(f"step {_describe(step_text)} is out of range")
        run = json.loads(metadata["run"])
    except KeyError as err:
        raise InputError(
            f"{path}: not a readable train-bc checkpoint (no {err} metadata)"
        ) from None
    except (OSError, ValueError, TypeError, AttributeError, RecursionError, SafetensorError) as err:
        reason = one_line(str(err), 200) or type(err).__name__
        raise InputError(f"{path}: not a readable train-bc checkpoint ({reason})") from None
    return tensors, int(step_text), RunDescription.from_json(run, str(path))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the latest checkpoint of a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = list_checkpoints(path) or list_checkpoints(path.parent)
        if path.name == CHECKPOINT_DIR and not found:
            found = list_checkpoints(path.parent)
        if found:
            return found[-1][1]
        raise InputError(f"{path}: no checkpoints (checkpoints/step_*.safetensors) found")
    raise InputError(f"{path}: no such run directory or checkpoint file")


# ---------------------------------------------------------------- rollout wrapper
class Policy:
    """A trained policy for rollouts: raw observations and tasks in, actions out.

    Normalization, device placement, batching and the discrete task encoding are
    handled here (like robomimic's ``RolloutPolicy``)."""

    def __init__(
        self,
        network: BCNetwork,
        run: RunDescription,
        candidates: np.ndarray | None = None,
        step: int = 0,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.run = run
        self.candidates = candidates
        self.step = step
        labels = run.labels
        self.task_names: list[str] = [] if labels is None else list(labels.task_names)
        self.discrete = labels is not None and labels.is_discrete
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    # ------------------------------------------------------------ description
    @property
    def obs_shape(self) -> tuple[int, ...]:
        return self.run.dims.obs_shape

    @property
    def act_dim(self) -> int:
        return self.network.act_dim

    @property
    def task_dim(self) -> int:
        return self.network.task_dim

    @property
    def task_agnostic(self) -> bool:
        return self.network.task_dim == 0

    @property
    def env(self) -> str:
        return self.run.env

    @property
    def action_low(self) -> np.ndarray:
        return self.network.act_low.cpu().numpy().copy()

    @property
    def action_high(self) -> np.ndarray:
        return self.network.act_high.cpu().numpy().copy()

    def __repr__(self) -> str:
        name = None if self.run.labels is None else self.run.labels.name
        what = "task-agnostic" if self.task_agnostic else f"labels={name!r}"
        return (
            f"Policy({self.network.head}, {what}, obs={self.obs_shape}, act={self.act_dim}, "
            f"step={self.step}, device={self.device})"
        )

    # ------------------------------------------------------------ acting
    def _observations(self, obs: Any) -> tuple[np.ndarray, bool]:
        obs = np.asarray(obs, dtype=np.float32)
        shape = self.obs_shape
        if obs.shape == shape:
            return obs.reshape(1, -1), True
        if obs.shape[1:] == shape:
            return obs.reshape(len(obs), -1), False
        if obs.ndim == 2 and obs.shape[1] == math.prod(shape):
            return obs, False
        raise ValueError(f"obs: expected shape {shape} or [B, *{shape}], got {obs.shape}")

    def _tasks(self, task: Any) -> tuple[np.ndarray, bool]:
        dim = self.task_dim
        if isinstance(task, str) or (
            isinstance(task, (list, tuple)) and task and all(isinstance(t, str) for t in task)
        ):
            names = [task] if isinstance(task, str) else list(task)
            unknown = [n for n in names if n not in self.task_names]
            if not self.discrete or unknown:
                known = ", ".join(self.task_names) or "none"
                raise ValueError(
                    f"task: unknown task name {(unknown or names)[0]!r} (have {known})"
                )
            index = [self.task_names.index(n) for n in names]
            task = index[0] if isinstance(task, str) else np.asarray(index)
        arr = np.asarray(task)
        if self.discrete and arr.dtype.kind in "iu":
            if arr.ndim > 1 or arr.size == 0 or arr.min() < 0 or arr.max() >= dim:
                raise ValueError(f"task: indices must lie in [0, {dim}), got {arr!r}")
            return np.eye(dim, dtype=np.float32)[arr.reshape(-1)], arr.ndim == 0
        arr = arr.astype(np.float32)
        if arr.shape == (dim,) or (dim == 1 and arr.ndim == 0):
            return arr.reshape(1, dim), True
        if arr.ndim == 2 and arr.shape[1] == dim:
            return arr, False
        if dim == 1 and arr.ndim == 1:
            return arr.reshape(-1, 1), False
        raise ValueError(f"task: expected shape ({dim},) or [B, {dim}], got {arr.shape}")

    @torch.inference_mode()
    def act(
        self, obs: Any, task: Any = None, *, sample: bool = False, noise: Any = None
    ) -> np.ndarray:
        """Actions for one observation ([act_dim]) or a batch ([B, act_dim]).

        ``task``: a task vector ([D] or [B, D]); for discrete families also a task
        index, an index array, or a task name. A single task is used for every
        observation of a batch. Ignored by task-agnostic policies. The action is
        the deterministic mean (tanh of the Gaussian mean) unless ``sample``; with
        ``sample``, ``noise`` ([act_dim] or [B, act_dim] standard-normal draws)
        replaces the policy's own generator."""
        obs_np, single = self._observations(obs)
        task_t = None
        if not self.task_agnostic:
            if task is None:
                raise ValueError("task: this policy is task-conditioned; pass a task")
            task_np, single_task = self._tasks(task)
            b = max(len(obs_np), len(task_np))
            if len(obs_np) not in (1, b) or len(task_np) not in (1, b):
                raise ValueError(f"obs and task: batch sizes {len(obs_np)} and {len(task_np)}")
            if len(obs_np) != b:
                obs_np = np.repeat(obs_np, b, axis=0)
            if len(task_np) != b:
                task_np = np.repeat(task_np, b, axis=0)
            single = single and single_task
            task_t = torch.from_numpy(np.ascontiguousarray(task_np)).to(self.device)
        obs_t = torch.from_numpy(np.ascontiguousarray(obs_np)).to(self.device)
        if sample:
            noise_t = None
            if noise is not None:
                noise_np = np.asarray(noise, dtype=np.float32).reshape(-1, self.act_dim)
                if len(noise_np) != len(obs_t):
                    raise ValueError(f"noise: expected {len(obs_t)} rows, got {len(noise_np)}")
                noise_t = torch.from_numpy(np.ascontiguousarray(noise_np)).to(self.device)
            action = self.network.sample_action(obs_t, task_t, self.generator, noise_t)
        else:
            action = self.network.mean_action(obs_t, task_t)
        out = action.cpu().numpy()
        return out[0] if single else out

    __call__ = act

    # ------------------------------------------------------------ saving
    def save(self, path: str | Path) -> Path:
        """Write this policy alone (no optimizer state) as a checkpoint file."""
        tensors = policy_tensors(self.network)
        if self.candidates is not None:
            tensors[CANDIDATES] = torch.from_numpy(self.candidates)
        run = replace(self.run, network=self.network.spec)
        return write_checkpoint(Path(path), tensors, self.step, run)


def policy_from_tensors(
    tensors: Mapping[str, Tensor],
    step: int,
    run: RunDescription,
    device: torch.device | str = "cpu",
    seed: int = 0,
    where: str = "checkpoint",
    prefix: str = POLICY_PREFIX,
) -> Policy:
    """The policy of checkpoint tensors and their run description, the tensors checked
    first (``where`` names the checkpoint in errors; ``prefix``: see
    :func:`check_policy_tensors`)."""
    spec = check_run(run.to_json(), where)
    check_policy_tensors(tensors, spec, where, prefix)
    network = BCNetwork(**spec)
    try:
        network.load_state_dict(network_state(tensors, prefix), strict=True)
    except RuntimeError as err:
        reason = one_line(str(err), 200)
        raise InputError(f"checkpoint does not match its run description ({reason})") from None
    cand = tensors.get(CANDIDATES)
    candidates = None if cand is None else cand.float().numpy()
    return Policy(network, run, candidates=candidates, step=step, device=device, seed=seed)


def load_policy(path: str | Path, device: str = "auto", seed: int = 0) -> Policy:
    """Load a policy from a run directory (its latest checkpoint) or a checkpoint file.

    ``device``: auto (CUDA when available), cpu or cuda; ``seed`` seeds the
    generator used by ``act(..., sample=True)``. A train-rl run folder, its
    checkpoints/ folder or one of its checkpoint files gives the run's SAC actor
    (:func:`hipi_offline.rl.policy.load_rl_policy`)."""
    from hipi_offline.rl.policy import load_rl_policy, rl_run_of

    located = rl_run_of(Path(path))
    if located is not None:
        return load_rl_policy(located, resolve_device(device), seed)
    checkpoint = resolve_checkpoint(path)
    tensors, step, run = read_checkpoint(checkpoint)
    return policy_from_tensors(tensors, step, run, resolve_device(device), seed, str(checkpoint))
