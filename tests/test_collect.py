"""The collect stage: determinism, worker independence, resume, and kill safety."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_arrays, store_arrays

from hipi_offline.collect import CollectConfig, collect
from hipi_offline.collect import run as run_module
from hipi_offline.envs import env_entry, env_names, make_env
from hipi_offline.errors import InputError
from hipi_offline.store import open_store

STEPS = 12  # tiny cheetah episodes: the MPPI expert plans every step


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Four cheetah episodes collected in one go (the reference)."""
    path = tmp_path_factory.mktemp("straight") / "cheetah.h5"
    summary = collect("cheetah", path, CollectConfig(episodes=4, steps=STEPS, seed=3))
    assert summary.collected == 4 and summary.total == 4
    return store_arrays(path)


def test_collected_store_layout(straight: dict[str, np.ndarray]) -> None:
    assert straight["steps/observations"].shape == (4 * STEPS, 17)
    assert straight["steps/actions"].shape == (4 * STEPS, 6)
    assert straight["steps/infos/speed"].shape == (4 * STEPS,)
    np.testing.assert_array_equal(straight["episodes/ends"], STEPS * np.arange(1, 5))
    task = straight["episodes/task"]
    assert task.shape == (4, 1) and np.all((task >= 0) & (task <= 3))
    assert len(np.unique(task)) == 4  # every episode draws its own task
    assert "steps/rewards" not in straight  # datasets are saved without rewards


@pytest.mark.parametrize("name", env_names())
def test_every_environment_collects_by_its_registered_collection(tmp_path: Path, name: str) -> None:
    """Commanded environments store one episode per unit with the commanded task;
    play environments store ``windows`` windows of a stream, labeled with a sub-task."""
    entry, env = env_entry(name), make_env(name)
    info = env.info
    env.close()
    steps, windows = 6, 2
    path = tmp_path / f"{name}.h5"
    config = CollectConfig(episodes=windows, steps=steps, seed=1, windows=windows)
    summary = collect(name, path, config)
    assert summary.total == windows and summary.steps == steps
    data = store_arrays(path)
    assert data["steps/observations"].shape == (windows * steps, info.observation_dim)
    assert data["steps/actions"].shape == (windows * steps, info.action_dim)
    with open_store(path) as store:
        assert store.attrs["env"] == name
        assert ("collect_windows" in store.attrs) == entry.plays
    if entry.plays:
        np.testing.assert_array_equal(data["episodes/window"], np.arange(windows))
        assert data["episodes/task"].shape == (windows,)
    else:
        assert data["episodes/task"].ndim == 2 and len(data["episodes/task"]) == windows


@pytest.mark.slow
def test_resume_equals_straight_run(
    tmp_path: Path, straight: dict[str, np.ndarray], store_suffix: str
) -> None:
    path = tmp_path / f"cheetah{store_suffix}"
    collect("cheetah", path, CollectConfig(episodes=2, steps=STEPS, seed=3))
    assert collect("cheetah", path, CollectConfig(episodes=4, steps=STEPS, seed=3)).collected == 2
    assert collect("cheetah", path, CollectConfig(episodes=4, steps=STEPS, seed=3)).collected == 0
    assert_same_arrays(store_arrays(path), straight)


@pytest.mark.slow
def test_workers_do_not_change_the_data(tmp_path: Path, straight: dict[str, np.ndarray]) -> None:
    path = tmp_path / "cheetah.zarr"
    collect("cheetah", path, CollectConfig(episodes=4, steps=STEPS, seed=3, workers=2))
    assert_same_arrays(store_arrays(path), straight)


@pytest.mark.slow
def test_other_seed_other_data(tmp_path: Path, straight: dict[str, np.ndarray]) -> None:
    path = tmp_path / "cheetah.h5"
    collect("cheetah", path, CollectConfig(episodes=1, steps=STEPS, seed=4))
    assert not np.array_equal(store_arrays(path)["episodes/task"], straight["episodes/task"][:1])


@pytest.mark.slow
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
    for options, field in [
        ({"episodes": 0}, "episodes"),
        ({"episodes": 1, "workers": 0}, "workers"),
        ({"episodes": 1, "steps": 0}, "steps"),
        ({"episodes": 1, "commit_seconds": -1.0}, "commit_seconds"),
    ]:
        with pytest.raises(InputError, match=f"^{field}: "):
            collect("cheetah", tmp_path / "x.h5", CollectConfig(**options))
    with pytest.raises(InputError, match="unknown environment"):
        collect("nope", tmp_path / "x.h5", CollectConfig(episodes=1))
    assert not (tmp_path / "x.h5").exists()


_KILLABLE = """
import sys
from hipi_offline.collect import run

commit = run._Sink.commit


def reporting_commit(self):
    print("committing", flush=True)
    commit(self)
    print("committed", self.episodes, flush=True)


run._Sink.commit = reporting_commit
run.collect("cheetah", sys.argv[1], run.CollectConfig(episodes=40, steps={steps}, seed=3,
            commit_seconds=0.0))
"""
KILL_TIMEOUT = 300.0
"""Seconds a writer may take to reach its kill point (imports are slow under load)."""


def _kill_at(proc: subprocess.Popen, word: str, count: int) -> None:
    """SIGKILL the writer as soon as it has printed ``word`` ``count`` times (a commit
    begun or a commit done), waiting at most :data:`KILL_TIMEOUT` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + KILL_TIMEOUT
    seen = 0
    while seen < count:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the writer did not reach {word} #{count} in {KILL_TIMEOUT} s"
        line = proc.stdout.readline()
        assert line, f"the writer ended before {word} #{count} (exit {proc.wait()})"
        seen += line.split()[0] == word
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


@pytest.mark.slow
def test_killed_run_leaves_a_valid_store_of_finished_episodes(
    tmp_path: Path, straight: dict[str, np.ndarray], store_suffix: str
) -> None:
    """SIGKILL while a commit is under way (the very first one included) or just after
    one: the store is absent or opens, holds a prefix of the deterministic episode
    sequence, and a resumed run completes it and removes the killed writers' files."""
    path = tmp_path / f"cheetah{store_suffix}"
    rng = np.random.default_rng(0)
    counts = []
    kill_points = [("committing", 1), ("committed", 1)]
    kill_points += [(str(rng.choice(["committing", "committed"])), int(rng.integers(1, 4)))]
    kill_points += [("committing", 5)]  # the store holds >= 4 episodes by then
    for word, count in kill_points:
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILLABLE.format(steps=STEPS), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        _kill_at(proc, word, count)
        if not path.exists():
            assert (word, count) == ("committing", 1)  # killed within the first commit
            continue
        data = store_arrays(path)
        episodes = len(data["episodes/ends"])
        assert episodes >= 1  # a store appears only with committed episodes
        counts.append(episodes)
        rows = int(data["episodes/ends"][-1])
        for name in ("steps/observations", "steps/actions", "steps/infos/speed"):
            np.testing.assert_array_equal(data[name][:rows][: 4 * STEPS], straight[name][:rows])
        np.testing.assert_array_equal(
            data["episodes/task"][: min(episodes, 4)], straight["episodes/task"][:episodes]
        )
    assert counts and counts == sorted(counts) and counts[-1] >= 4
    collect("cheetah", path, CollectConfig(episodes=4, steps=STEPS, seed=3))
    with open_store(path) as store:
        assert store.num_episodes == counts[-1]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the resumed run removed what the killed writers left


def _dead_pid() -> int:
    """The id of a process that has ended (its temporaries count as abandoned)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_resume_with_nothing_to_do_removes_a_killed_writers_temporaries(
    tmp_path: Path, store_suffix: str
) -> None:
    path = tmp_path / f"cheetah{store_suffix}"
    collect("cheetah", path, CollectConfig(episodes=1, steps=STEPS, seed=3))
    token = f"{_dead_pid()}-{'0' * 32}"
    left = [tmp_path / f".{path.name}.append-{token}{store_suffix}"]
    left.append(tmp_path / f".{path.name}.creating-{token}{store_suffix}")
    for leftover in left:
        leftover.mkdir()
    other = tmp_path / f".{path.name}.append-{os.getpid()}-{'1' * 32}{store_suffix}"
    other.mkdir()  # a live writer's (this process's): kept
    assert collect("cheetah", path, CollectConfig(episodes=1, steps=STEPS, seed=3)).collected == 0
    assert not any(p.exists() for p in left) and other.exists()


@pytest.mark.slow
def test_a_new_store_appears_only_with_its_first_episodes(tmp_path: Path) -> None:
    """Collect creates the store with its first committed episodes (a kill before
    leaves nothing at --out; a Zarr store is never visible half-appended)."""
    path = tmp_path / "cheetah.zarr"
    seen = []
    original = run_module._Sink.commit

    def watching(sink: run_module._Sink) -> None:
        seen.append(path.exists())
        original(sink)

    run_module._Sink.commit = watching  # type: ignore[method-assign]
    try:
        collect("cheetah", path, CollectConfig(episodes=2, steps=STEPS, seed=3, commit_seconds=0))
    finally:
        run_module._Sink.commit = original  # type: ignore[method-assign]
    assert seen[0] is False and any(seen)  # absent until the first commit
