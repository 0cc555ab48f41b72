"""``train-rl --init-store STORE [--init-labels NAME]``: the episodes an online run's
replay buffer starts from.

The store is untrusted: it is opened read-only through
:func:`~hipi_offline.store.open_store` (which validates it and never follows a link out
of it, label sets included), and everything is checked before the run folder is
touched: the step fields the run stores (``steps/observations``, ``steps/actions``,
``steps/next_observations`` when present, and the environment's own step fields,
which include the task spec's) must be there with the environment's per-step shapes and
a numeric dtype; each episode's task is ``episodes/task`` (the commanded task) or, with
``--init-labels``, the most probable task of the label set's posterior (its argmax, the
deterministic choice), of the spec's task dimension. Values are cast to the dtypes of
the online rows. A store without ``steps/next_observations`` gives each episode's steps
but the last, whose next observation is the following step's observation. Rewards are
recomputed under each episode's task by the task family's reward (float64), as for
online episodes.

The run copies these episodes into its own replay.h5 first, so a run folder is
self-contained and a resumed run never reads the init store again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from hipi_offline.errors import InputError, one_line
from hipi_offline.preflight import available_memory, human_bytes
from hipi_offline.store import open_store
from hipi_offline.store.backends import ArrayInfo
from hipi_offline.tasks.spec import TaskSpec

REQUIRED = ("steps/observations", "steps/actions")


@dataclass(frozen=True)
class InitEpisodes:
    """The episodes a replay buffer starts from, in the online rows' dtypes."""

    steps: dict[str, np.ndarray]
    """Every step field the run stores, ``steps/rewards`` included, rows concatenated."""
    lengths: list[int]
    tasks: np.ndarray
    """float32 [episodes, task_dim]."""
    source: str
    """Where the tasks came from: ``episodes/task`` or ``labels/NAME (argmax)``."""

    @property
    def episodes(self) -> int:
        return len(self.lengths)

    @cached_property
    def starts(self) -> np.ndarray:
        """int64 [episodes]: each episode's first row (summed once, not per episode)."""
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    def episode(self, index: int) -> dict[str, np.ndarray]:
        start = int(self.starts[index])
        stop = start + self.lengths[index]
        return {name: values[start:stop] for name, values in self.steps.items()}


def load_init_episodes(
    path: str,
    labels: str | None,
    rows: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    spec: TaskSpec,
    task_dim: int,
) -> InitEpisodes:
    """The checked episodes of ``path``. ``rows``: the shape and dtype of every step
    field of an online row (``steps/rewards`` and ``steps/next_observations`` included)."""
    where = f"--init-store: {path}"
    try:
        store = open_store(path)
    except InputError as err:
        raise InputError(f"--init-store: {err}") from None
    except OSError as err:
        raise InputError(one_line(f"{where}: {err.strerror or err}")) from None
    with store:
        if store.num_episodes == 0:
            raise InputError(f"{where}: holds no episodes")
        fields = store.step_fields()
        has_next = "steps/next_observations" in fields
        needed = [n for n in rows if n != "steps/rewards" and (has_next or "next_obs" not in n)]
        for name in needed:
            if name not in fields:
                raise InputError(
                    f"{where}: has no {name}, which the environment's steps have "
                    "(the store must come from the same environment)"
                )
            shape, _ = rows[name]
            info = fields[name]
            if tuple(info.shape[1:]) != tuple(shape):
                raise InputError(
                    f"{where}: {name} has rows of shape {tuple(info.shape[1:])}, "
                    f"the environment's are {tuple(shape)}"
                )
            if np.dtype(info.dtype).kind not in "biuf":
                raise InputError(f"{where}: {name} has dtype {info.dtype}, expected numbers")
        lengths, starts = store.lengths, store.starts
        if not has_next and int(lengths.min()) < 2:
            raise InputError(
                f"{where}: has no steps/next_observations and an episode of one step "
                "(its transition has no next observation)"
            )
        if labels is None:
            source = "episodes/task"
            if "episodes/task" not in store.episode_fields():
                raise InputError(f"{where}: has no episodes/task; pass --init-labels NAME")
            tasks = np.asarray(store.read_episode_field("task"))
            what = "episodes/task"
        else:
            source = f"labels/{labels} (argmax)"
            try:
                label_set = store.read_labels(labels)
            except InputError as err:
                raise InputError(f"--init-labels: {err}") from None
            tasks = np.asarray(label_set.most_probable_tasks())
            what = f"labels/{labels}"
        flag = "--init-store" if labels is None else "--init-labels"
        if tasks.ndim != 2 or tasks.shape != (store.num_episodes, task_dim):
            raise InputError(
                f"{flag}: {what} of {path} has shape {tuple(tasks.shape)}, expected "
                f"({store.num_episodes}, {task_dim}): one task of the spec's dimension "
                "per episode"
            )
        if tasks.dtype.kind not in "biuf" or not np.isfinite(tasks).all():
            raise InputError(f"{flag}: {what} of {path} holds non-finite or non-numeric tasks")
        _check_memory(where, store.num_steps, {n: fields[n] for n in needed}, rows, spec)
        data = {name: store.read_steps(name) for name in needed}
    for name, values in data.items():
        _check_finite(where, name, np.asarray(values), starts)
    tasks = tasks.astype(np.float32)
    if not has_next:  # each episode's steps but the last; s' = the following observation
        keep = np.ones(int(lengths.sum()), bool)
        keep[starts + lengths - 1] = False
        following = np.roll(data["steps/observations"], -1, axis=0)
        data = {name: values[keep] for name, values in data.items()}
        data["steps/next_observations"] = following[keep]
        lengths = lengths - 1
    steps = {name: np.asarray(data[name]).astype(rows[name][1]) for name in data}
    steps["steps/rewards"] = _rewards(spec, steps, tasks, lengths).astype(rows["steps/rewards"][1])
    return InitEpisodes({n: steps[n] for n in rows}, [int(n) for n in lengths], tasks, source)


def _rewards(
    spec: TaskSpec, steps: Mapping[str, np.ndarray], tasks: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """float64 [rows]: each step's reward under its episode's task."""
    episode = np.repeat(np.arange(len(lengths)), lengths)
    named = {
        name: torch.from_numpy(np.asarray(steps[name], np.float64).reshape(len(episode), -1))
        for name in spec.family.fields
    }
    all_tasks = torch.from_numpy(tasks.astype(np.float64))
    out = np.empty(len(episode), np.float64)
    start = 0
    for e, length in enumerate(lengths):
        stop = start + int(length)
        part = {name: values[start:stop] for name, values in named.items()}
        out[start:stop] = spec.family.reward(part, all_tasks[e : e + 1])[:, 0].numpy()
        start = stop
    return out


def _check_memory(
    where: str,
    steps: int,
    fields: Mapping[str, ArrayInfo],
    rows: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    spec: TaskSpec,
) -> None:
    """Refuse a store whose steps would not fit in memory: read as stored, cast to the
    online rows' dtypes, held again by the replay buffer, plus the float64 reward inputs."""
    need = 0
    for name, info in fields.items():
        shape, dtype = rows[name]
        elements = int(np.prod(shape, dtype=np.int64))
        stored = int(np.prod(info.shape[1:], dtype=np.int64))
        need += stored * np.dtype(info.dtype).itemsize + 2 * elements * dtype.itemsize
    for name in spec.family.fields:
        shape = rows[name][0] if name in rows else (1,)
        need += 8 * int(np.prod(shape, dtype=np.int64))
    need = steps * (need + 3 * 8)  # rewards, episode ids and offsets
    free = available_memory()
    if free is not None and need > free:
        raise InputError(
            f"{where}: its {steps} steps need about {human_bytes(need)} in memory and "
            f"{human_bytes(free)} is available; start from a smaller store"
        )


def _check_finite(where: str, name: str, values: np.ndarray, starts: np.ndarray) -> None:
    """Refuse NaN or inf in a float step field, naming the first step and episode."""
    if values.dtype.kind != "f":
        return
    good = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if not good.all():
        row = int(np.argmin(good))
        episode = int(np.searchsorted(starts, row, side="right")) - 1
        raise InputError(f"{where}: {name} holds NaN or inf at step {row} (episode {episode})")
