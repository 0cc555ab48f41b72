"""The collect stage: determinism, worker independence, resume, and kill safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hipi_offline.collect import CollectConfig, collect
from hipi_offline.errors import InputError
from hipi_offline.store import open_store

STEPS = 12  # tiny cheetah episodes: the MPPI expert plans every step


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with open_store(path) as store:
        out = {name: store.read_steps(name) for name in store.step_fields()}
        out |= {name: store.read_episode_field(name) for name in store.episode_fields()}
        out["episodes/ends"] = store.ends.copy()
    return out


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Four cheetah episodes collected in one go (the reference)."""
    path = tmp_path_factory.mktemp("straight") / "cheetah.h5"
    summary = collect("cheetah", path, CollectConfig(episodes=4, steps=STEPS, seed=3))
    assert summary.collected == 4 and summary.total == 4
    return _arrays(path)


def test_collected_store_layout(straight: dict[str, np.ndarray]) -> None:
    assert straight["steps/observations"].shape == (4 * STEPS, 17)
    assert straight["steps/actions"].shape == (4 * STEPS, 6)
    assert straight["steps/infos/speed"].shape == (4 * STEPS,)
    np.testing.assert_array_equal(straight["episodes/ends"], STEPS * np.arange(1, 5))
    task = straight["episodes/task"]
    assert task.shape == (4, 1) and np.all((task >= 0) & (task <= 3))
    assert len(np.unique(task)) == 4  # every episode draws its own task
    assert "steps/rewards" not in straight  # datasets are saved without rewards


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_resume_equals_straight_run(
    tmp_path: Path, straight: dict[str, np.ndarray], suffix: str
) -> None:
    path = tmp_path / f"cheetah{suffix}"
    collect("cheetah", path, CollectConfig(episodes=2, steps=STEPS, seed=3))
    assert collect("cheetah", path, CollectConfig(episodes=4, steps=STEPS, seed=3)).collected == 2
    assert collect("cheetah", path, CollectConfig(episodes=4, steps=STEPS, seed=3)).collected == 0
    _assert_same(_arrays(path), straight)


def test_workers_do_not_change_the_data(tmp_path: Path, straight: dict[str, np.ndarray]) -> None:
    path = tmp_path / "cheetah.zarr"
    collect("cheetah", path, CollectConfig(episodes=4, steps=STEPS, seed=3, workers=2))
    _assert_same(_arrays(path), straight)


def test_other_seed_other_data(tmp_path: Path, straight: dict[str, np.ndarray]) -> None:
    path = tmp_path / "cheetah.h5"
    collect("cheetah", path, CollectConfig(episodes=1, steps=STEPS, seed=4))
    assert not np.array_equal(_arrays(path)["episodes/task"], straight["episodes/task"][:1])


def test_resume_with_other_options_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cheetah.h5"
    collect("cheetah", path, CollectConfig(episodes=1, steps=STEPS, seed=3))
    before = path.read_bytes()
    with pytest.raises(InputError, match="collect_seed"):
        collect("cheetah", path, CollectConfig(episodes=2, steps=STEPS, seed=5))
    with pytest.raises(InputError, match="collect_steps"):
        collect("cheetah", path, CollectConfig(episodes=2, steps=STEPS + 1, seed=3))
    assert path.read_bytes() == before


def test_bad_options(tmp_path: Path) -> None:
    for config, field in [
        (CollectConfig(episodes=0), "--episodes"),
        (CollectConfig(episodes=1, workers=0), "--workers"),
        (CollectConfig(episodes=1, steps=0), "--steps"),
    ]:
        with pytest.raises(InputError, match=field):
            collect("cheetah", tmp_path / "x.h5", config)
    with pytest.raises(InputError, match="unknown environment"):
        collect("nope", tmp_path / "x.h5", CollectConfig(episodes=1))
    assert not (tmp_path / "x.h5").exists()


_KILLABLE = """
import sys
from hipi_offline.collect import CollectConfig, collect
collect("cheetah", sys.argv[1], CollectConfig(episodes=40, steps={steps}, seed=3,
        commit_seconds=0.0))
"""


def _wait_for(path: Path, proc: subprocess.Popen, limit: float = 120.0) -> None:
    """Until the writer has created its store (or ended, or ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_killed_run_leaves_a_valid_store_of_finished_episodes(
    tmp_path: Path, straight: dict[str, np.ndarray], suffix: str
) -> None:
    """SIGKILL at seeded random moments: the store always opens, holds a prefix of
    the deterministic episode sequence, and a resumed run completes it."""
    path = tmp_path / f"cheetah{suffix}"
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILLABLE.format(steps=STEPS), str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        _wait_for(path, proc)  # imports take seconds, more on a loaded machine
        time.sleep(rng.uniform(0.0, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not path.exists():
            continue
        data = _arrays(path)
        episodes = len(data["episodes/ends"])
        counts.append(episodes)
        rows = int(data["episodes/ends"][-1]) if episodes else 0
        for name in ("steps/observations", "steps/actions", "steps/infos/speed"):
            np.testing.assert_array_equal(data[name][:rows][: 4 * STEPS], straight[name][:rows])
        np.testing.assert_array_equal(
            data["episodes/task"][: min(episodes, 4)], straight["episodes/task"][:episodes]
        )
    assert counts and counts == sorted(counts)
    collect("cheetah", path, CollectConfig(episodes=4, steps=STEPS, seed=3))
    with open_store(path) as store:
        assert store.num_episodes >= 4
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the resumed run removed what the killed writers left
