"""Fixtures and helpers shared by the test files, built from the package's registries.

A test that means "every storage backend" takes the ``kind`` or ``store_suffix``
fixture, or loops over ``KINDS``/``SUFFIXES``; all of them come from
``hipi_offline.store.backend_names()``, so a newly registered backend is tested by
every such test without editing it. Test files import the constants and helpers
from here (``from conftest import KINDS``); ``tests/reference.py`` (the float64
reference of relabeling) stays its own module (``import reference as ref``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hipi_offline.store import LabelSet, backend_names, create_store, open_store
from hipi_offline.store.backends import backend_suffixes
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

BACKENDS: tuple[str, ...] = tuple(backend_names())
"""The registered storage backends (``hdf5``, ``zarr``), in registration order."""

SUFFIXES: tuple[str, ...] = tuple(backend_suffixes(kind)[0] for kind in BACKENDS)
"""The usual file suffix of each registered backend (``.h5``, ``.zarr``)."""

KINDS: tuple[str, ...] = tuple(suffix.removeprefix(".") for suffix in SUFFIXES)
"""Each backend as the tests name it: its usual suffix without the dot (``h5``,
``zarr``), so that ``f"runner.{kind}"`` is a store of that backend."""

SPEED_TARGET_SPEC = """\
family: target
feature: steps/infos/speed
ctrl_cost: 0.05
prior: {uniform: {low: [0.0], high: [3.0]}}
candidates: 16
"""
"""A task spec over the synthetic runner's speed (``steps/infos/speed``)."""


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for a module of tiny tensors (OpenMP's hand-off costs
    more than it gains, most of all on a busy machine); results are compared within one
    thread setting only. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    from hipi_offline.device import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Each registered backend, named as in :data:`KINDS`."""
    return request.param


@pytest.fixture(params=SUFFIXES)
def store_suffix(request: pytest.FixtureRequest) -> str:
    """The usual suffix of each registered backend (``.h5``, ``.zarr``)."""
    return request.param


def synthetic_stores(root: Path, config: SyntheticConfig) -> dict[str, Path]:
    """One synthetic store per backend, ``root/runner.<kind>``, keyed by kind."""
    out = {}
    for kind in KINDS:
        out[kind] = make_synthetic_store(root / f"runner.{kind}", config)
    return out


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every step and episode field of a store, and its ``episodes/ends``."""
    with open_store(path) as store:
        out = {name: store.read_steps(name) for name in store.step_fields()}
        out |= {name: store.read_episode_field(name) for name in store.episode_fields()}
        out["episodes/ends"] = store.ends.copy()
    return out


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """The same names, and equal arrays under each (the name in the message)."""
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def two_task_store(path: Path, episodes: int, steps: int, seed: int = 0) -> np.ndarray:
    """Write a store (env ``two-task``) whose observations carry no task information;
    actions are +0.5 (task 0, even episodes) or -0.5 (task 1) in every dimension, plus
    a little noise. Returns each episode's task."""
    rng = np.random.default_rng(seed)
    task = np.arange(episodes) % 2
    rows = episodes * steps
    sign = np.repeat(np.where(task == 0, 1.0, -1.0), steps)
    obs = rng.normal(size=(rows, 3)).astype(np.float32)  # [rows, 3]
    act = (0.5 * sign[:, None] + 0.05 * rng.normal(size=(rows, 2))).astype(np.float32)
    with create_store(path, env="two-task") as store:
        store.append_episodes(
            {"observations": obs, "actions": act}, [steps] * episodes, {"task": task}
        )
    return task


def two_task_labels(task: np.ndarray, discrete: bool, name: str) -> LabelSet:
    """A label set of a :func:`two_task_store`: all mass on each episode's commanded
    task (of two), as a one-hot (``discrete``) or a target-speed family."""
    n = len(task)
    return LabelSet(
        name=name,
        candidates=np.eye(2, dtype=np.float32) if discrete else np.array([[0.0], [2.0]], "f4"),
        log_z=np.zeros(2),
        topk_index=np.stack([task, 1 - task], axis=1).astype(np.int64),
        topk_logprob=np.tile(np.array([0.0, -np.inf], np.float32), (n, 1)),
        entropy=np.zeros(n, np.float32),
        coverage=np.full(2, 0.5),
        attrs={
            "family": "discrete" if discrete else "target",
            "method": "original",
            "task_names": '["left", "right"]' if discrete else "[]",
            "spec": "name: two-task\n",
        },
    )
