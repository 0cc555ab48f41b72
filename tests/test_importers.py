"""Importers (Minari, D4RL, robomimic) and the Minari exporter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from hipi_offline.errors import InputError
from hipi_offline.io import (
    export_minari,
    import_d4rl,
    import_dataset,
    import_minari,
    import_robomimic,
)
from hipi_offline.store import LabelSet, open_store, write_label_set
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

MINARI_WARNINGS = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MINARI_DATASETS_PATH in a temporary directory (needs minari's hdf5 + create extras)."""
    pytest.importorskip("PIL", reason="minari's HDF5 storage imports PIL")
    pytest.importorskip("jax", reason="minari.DataCollector needs jax")
    pytest.importorskip("minari")
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def one_line_error(call: Any, *args: Any, match: str, **kwargs: Any) -> str:
    with pytest.raises(InputError, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------- Minari sources
def collect(env: Any, dataset_id: str, episodes: int, partial_steps: int = 0) -> Path:
    """Step ``env`` in a minari.DataCollector with random actions; the dataset dir."""
    import minari

    collector = minari.DataCollector(env, record_infos=True)
    collector.reset(seed=7)
    done = 0
    while done < episodes:
        _, _, terminated, truncated, _ = collector.step(collector.action_space.sample())
        if terminated or truncated:
            done += 1
            collector.reset()
    for _ in range(partial_steps):
        collector.step(collector.action_space.sample())
    collector.create_dataset(
        dataset_id=dataset_id,
        algorithm_name="random",
        author="tests",
        author_email="tests@example.com",
        code_permalink="https://example.com",
        description="test data",
    )
    collector.close()
    return minari.storage.get_dataset_path(dataset_id)


def minari_episodes(dataset_dir: Path) -> list[dict[str, Any]]:
    """Every episode of a Minari dataset as read by minari itself."""
    import minari

    dataset = minari.MinariDataset(dataset_dir / "data")
    return [
        {
            "observations": ep.observations,
            "actions": ep.actions,
            "rewards": ep.rewards,
            "terminations": ep.terminations,
            "truncations": ep.truncations,
            "infos": ep.infos,
        }
        for ep in dataset.iterate_episodes()
    ]


def concat(episodes: list[dict[str, Any]], key: str, sub: str | None = None) -> np.ndarray:
    return np.concatenate([ep[key] if sub is None else ep[key][sub] for ep in episodes])


@MINARI_WARNINGS
@pytest.mark.slow
def test_minari_pendulum(minari_root: Path, tmp_path: Path, store_suffix: str) -> None:
    import gymnasium as gym

    env = gym.make("Pendulum-v1", max_episode_steps=20)
    source = collect(env, "test/pendulum-v0", episodes=3, partial_steps=5)
    episodes = minari_episodes(source)
    dest = import_minari(source, tmp_path / f"pendulum{store_suffix}", batch_steps=25)
    with open_store(dest) as store:
        assert store.lengths.tolist() == [20, 20, 20, 5]
        obs = np.concatenate([ep["observations"][:-1] for ep in episodes])
        np.testing.assert_array_equal(store.read_steps("steps/observations"), obs)
        finals = np.stack([ep["observations"][-1] for ep in episodes])
        np.testing.assert_array_equal(store.read_episode_field("final_observations"), finals)
        for key in ("actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(store.read_steps(f"steps/{key}"), concat(episodes, key))
        assert store.read_steps("steps/truncations")[[19, 39, 59, 64]].all()
        with h5py.File(source / "data" / "main_data.hdf5") as f:
            seeds = [int(f[f"episode_{i}"].attrs["seed"]) for i in range(4)]
        assert store.read_episode_field("seed").tolist() == seeds
        assert store.read_episode_field("has_seed").all()
        assert store.read_episode_field("source_id").tolist() == [0, 1, 2, 3]
        attrs = store.attrs
        assert attrs["env"] == "Pendulum-v1"
        assert attrs["source_format"] == "minari"
        assert attrs["minari_dataset_id"] == "test/pendulum-v0"
        assert json.loads(attrs["env_spec"])["max_episode_steps"] == 20
        assert json.loads(attrs["source_metadata"])["total_steps"] == 65
    from_file = import_minari(source / "data" / "main_data.hdf5", tmp_path / f"f{store_suffix}")
    with open_store(from_file) as store:
        np.testing.assert_array_equal(store.read_steps("steps/observations"), obs)


class DictEnv:
    """Built lazily so that gymnasium is imported only by the tests that need it."""

    @staticmethod
    def make() -> Any:
        import gymnasium as gym
        from gymnasium import spaces

        class _DictEnv(gym.Env):
            observation_space = spaces.Dict(
                {
                    "pos": spaces.Box(-10.0, 10.0, (2,), np.float32),
                    "vel": spaces.Box(-1.0, 1.0, (1,), np.float32),
                }
            )
            action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

            def _obs(self) -> dict[str, np.ndarray]:
                return {"pos": self.pos.copy(), "vel": self.vel.copy()}

            def _info(self) -> dict[str, Any]:
                return {"speed": float(abs(self.vel[0])), "count": np.int64(self.t)}

            def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
                super().reset(seed=seed)
                self.t, self.horizon = 0, int(self.np_random.integers(4, 9))
                self.pos = self.np_random.uniform(-1, 1, 2).astype(np.float32)
                self.vel = np.zeros(1, np.float32)
                return self._obs(), self._info()

            def step(self, action: np.ndarray) -> Any:
                self.t += 1
                self.vel = np.clip(self.vel + 0.1 * action, -1, 1).astype(np.float32)
                self.pos = (self.pos + self.vel[0]).astype(np.float32)
                done = self.t >= self.horizon
                return self._obs(), float(-np.abs(self.pos).sum()), done, False, self._info()

        return _DictEnv()


@MINARI_WARNINGS
def test_minari_dict_observations_and_infos(
    minari_root: Path, tmp_path: Path, store_suffix: str
) -> None:
    import minari

    source = collect(DictEnv.make(), "test/dict-v0", episodes=4)
    episodes = minari_episodes(source)
    dest = import_dataset("minari", source, tmp_path / f"dict{store_suffix}")
    with open_store(dest) as store:
        assert store.lengths.tolist() == [len(ep["actions"]) for ep in episodes]
        for key in ("pos", "vel"):
            obs = np.concatenate([ep["observations"][key][:-1] for ep in episodes])
            np.testing.assert_array_equal(store.read_steps(f"steps/observations/{key}"), obs)
            final = np.stack([ep["observations"][key][-1] for ep in episodes])
            np.testing.assert_array_equal(
                store.read_episode_field(f"final_observations/{key}"), final
            )
        for key in ("speed", "count"):
            # Minari 0.5 stores T+1 infos rows: the reset info, then one per step.
            assert all(len(ep["infos"][key]) == len(ep["actions"]) + 1 for ep in episodes)
            infos = np.concatenate([ep["infos"][key][:-1] for ep in episodes])
            np.testing.assert_array_equal(store.read_steps(f"steps/infos/{key}"), infos)
            final = np.stack([ep["infos"][key][-1] for ep in episodes])
            np.testing.assert_array_equal(store.read_episode_field(f"final_infos/{key}"), final)
        assert store.attrs["minari_infos_rows"] == "T+1"
    exported = export_minari(dest, minari_root / "test" / "dict-export-v0")
    dataset = minari.load_dataset("test/dict-export-v0")
    assert set(dataset.observation_space.spaces) == {"pos", "vel"}
    for original, ep in zip(episodes, dataset.iterate_episodes(), strict=True):
        for key in ("pos", "vel"):
            np.testing.assert_array_equal(ep.observations[key], original["observations"][key])
        np.testing.assert_array_equal(ep.actions, original["actions"])
        np.testing.assert_array_equal(ep.infos["speed"], original["infos"]["speed"])
    assert (
        json.loads((exported / "data" / "metadata.json").read_text())["final_observation_repeated"]
        is False
    )


# ---------------------------------------------------------------- D4RL
D4RL_LENGTHS = [5, 7, 4, 9, 3]
D4RL_ENDINGS = ["terminal", "timeout", "terminal", "timeout", None]


def write_d4rl(path: Path, endings: list[str | None] = D4RL_ENDINGS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    total = sum(D4RL_LENGTHS)
    ends = np.cumsum(D4RL_LENGTHS) - 1
    arrays = {
        "observations": rng.standard_normal((total, 4)).astype(np.float32),
        "next_observations": rng.standard_normal((total, 4)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (total, 2)).astype(np.float32),
        "rewards": rng.standard_normal(total).astype(np.float32),
        "terminals": np.zeros(total, bool),
        "timeouts": np.zeros(total, bool),
        "infos/qpos": rng.standard_normal((total, 3)),
        "infos/goal": rng.standard_normal((total, 2)),
    }
    for end, ending in zip(ends, endings, strict=True):
        if ending:
            arrays[ending + "s"][end] = True
    with h5py.File(path, "w") as f:
        for name, values in arrays.items():
            f.create_dataset(name, data=values)
        f["metadata/algorithm"] = "SAC"
        f["metadata/iteration"] = 12
        f["metadata/policy/fc0/weight"] = np.ones((3, 3))
        f["infos/name"] = np.array([b"x"] * total)
    return arrays


def test_d4rl_import(tmp_path: Path, store_suffix: str) -> None:
    arrays = write_d4rl(tmp_path / "hopper.hdf5")
    dest = import_d4rl(tmp_path / "hopper.hdf5", tmp_path / f"hopper{store_suffix}", batch_steps=6)
    with open_store(dest) as store:
        assert store.lengths.tolist() == D4RL_LENGTHS
        pairs = {
            "observations": "observations",
            "next_observations": "next_observations",
            "actions": "actions",
            "rewards": "rewards",
            "terminations": "terminals",
            "truncations": "timeouts",
            "infos/qpos": "infos/qpos",
            "infos/goal": "infos/goal",
        }
        for field, key in pairs.items():
            np.testing.assert_array_equal(store.read_steps(f"steps/{field}"), arrays[key])
        attrs = store.attrs
        assert attrs["d4rl_trailing_partial_episode"] is True
        assert attrs["source_format"] == "d4rl"
        source_metadata = json.loads(attrs["source_metadata"])
        assert source_metadata["algorithm"] == "SAC"
        assert source_metadata["iteration"] == 12
        assert "infos/name" in attrs["skipped_fields"]


def test_d4rl_without_trailing_partial(tmp_path: Path) -> None:
    write_d4rl(tmp_path / "d.hdf5", ["terminal", "timeout", "terminal", "timeout", "terminal"])
    with open_store(import_dataset("d4rl", tmp_path / "d.hdf5", tmp_path / "d.h5")) as store:
        assert store.lengths.tolist() == D4RL_LENGTHS
        assert not store.attrs["d4rl_trailing_partial_episode"]


# ---------------------------------------------------------------- robomimic
DEMO_LENGTHS = {10: 6, 0: 4, 2: 5, 1: 3}


def write_robomimic(path: Path, broken_demo: int | None = None) -> dict[int, dict[str, Any]]:
    rng = np.random.default_rng(1)
    demos: dict[int, dict[str, Any]] = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        env_args = {"env_name": "Lift", "type": 1, "env_kwargs": {"has_renderer": False}}
        data.attrs["env_args"] = json.dumps(env_args)
        data.attrs["total"] = sum(DEMO_LENGTHS.values())
        for n, length in DEMO_LENGTHS.items():  # written out of order on purpose
            demo = {
                "obs/eef_pos": rng.standard_normal((length, 3)),
                "obs/agentview": rng.integers(0, 255, (length, 4, 4, 3), dtype=np.uint8),
                "next_obs/eef_pos": rng.standard_normal((length, 3)),
                "next_obs/agentview": rng.integers(0, 255, (length, 4, 4, 3), dtype=np.uint8),
                "actions": rng.uniform(-1, 1, (length, 7)),
                "rewards": rng.uniform(0, 1, length),
                "dones": (np.arange(length) == length - 1).astype(np.int64),
                "states": rng.standard_normal((length, 5)),
            }
            if n == broken_demo:
                demo["rewards"] = demo["rewards"][:-1]
            group = data.create_group(f"demo_{n}")
            for name, values in demo.items():
                group.create_dataset(name, data=values)
            group.attrs["num_samples"] = length
            group.attrs["model_file"] = "<mujoco/>"
            demos[n] = demo
        f["mask/train"] = np.array([b"demo_0", b"demo_10"])
        f["mask/valid"] = np.array([b"demo_1", b"demo_2"])
    return demos


def test_robomimic_import(tmp_path: Path, store_suffix: str) -> None:
    demos = write_robomimic(tmp_path / "lift.hdf5")
    dest = import_dataset("robomimic", tmp_path / "lift.hdf5", tmp_path / f"lift{store_suffix}")
    order = [0, 1, 2, 10]
    with open_store(dest) as store:
        assert store.read_episode_field("source_id").tolist() == order
        assert store.lengths.tolist() == [DEMO_LENGTHS[n] for n in order]
        pairs = {
            "observations/eef_pos": "obs/eef_pos",
            "observations/agentview": "obs/agentview",
            "actions": "actions",
            "rewards": "rewards",
            "physics/states": "states",
        }
        for field, key in pairs.items():
            expected = np.concatenate([demos[n][key] for n in order])
            np.testing.assert_array_equal(store.read_steps(f"steps/{field}"), expected)
        dones = np.concatenate([demos[n]["dones"] for n in order]).astype(bool)
        np.testing.assert_array_equal(store.read_steps("steps/terminations"), dones)
        final = np.stack([demos[n]["next_obs/agentview"][-1] for n in order])
        np.testing.assert_array_equal(
            store.read_episode_field("final_observations/agentview"), final
        )
        assert store.read_episode_field("filter/train").tolist() == [True, False, False, True]
        assert store.read_episode_field("filter/valid").tolist() == [False, True, True, False]
        assert store.attrs["env"] == "Lift"
        assert json.loads(store.attrs["env_args"])["env_kwargs"] == {"has_renderer": False}
        assert "model_file" not in json.dumps(store.attrs)


# ---------------------------------------------------------------- export
def write_labels(store_path: Path, episodes: int, k: int = 3) -> LabelSet:
    rng = np.random.default_rng(3)
    candidates = rng.uniform(0, 3, (8, 1)).astype(np.float32)
    topk = np.stack([rng.permutation(8)[:k] for _ in range(episodes)]).astype(np.int64)
    logp = np.sort(np.log(rng.dirichlet(np.ones(8), episodes)), axis=1)[:, ::-1][:, :k]
    labels = LabelSet(
        name="hipi",
        candidates=candidates,
        log_z=np.zeros(8),
        topk_index=topk,
        topk_logprob=logp.astype(np.float32),
        entropy=rng.uniform(0, 2, episodes).astype(np.float32),
        coverage=np.ones(8),
        attrs={"method": "hipi"},
    )
    write_label_set(store_path, labels)
    return labels


@MINARI_WARNINGS
@pytest.mark.slow
def test_export_minari_with_labels(minari_root: Path, tmp_path: Path, store_suffix: str) -> None:
    import minari

    store_path = make_synthetic_store(
        tmp_path / f"syn{store_suffix}", SyntheticConfig(episodes=10, steps=20)
    )
    labels = write_labels(store_path, 10)
    dest = export_minari(store_path, minari_root / "hipi" / "synthetic-v0", batch_steps=45)
    dataset = minari.load_dataset("hipi/synthetic-v0")
    assert dataset.total_episodes == 10 and dataset.total_steps == 200
    with open_store(store_path) as store:
        for i, ep in enumerate(dataset.iterate_episodes()):
            steps = store.episode(i)
            assert ep.observations.shape == (21, 8)
            np.testing.assert_array_equal(ep.observations[:-1], steps["steps/observations"])
            np.testing.assert_array_equal(ep.observations[-1], ep.observations[-2])
            np.testing.assert_array_equal(ep.actions, steps["steps/actions"])
            np.testing.assert_array_equal(ep.infos["speed"][:-1], steps["steps/infos/speed"])
            assert not ep.rewards.any() and ep.truncations[-1] and not ep.terminations.any()
        tasks = store.read_episode_field("task")
    metadata = dataset.storage.metadata
    assert metadata["final_observation_repeated"] is True
    assert metadata["rewards_filled_with_zeros"] is True
    saved = metadata["hipi_labels"]["hipi"]
    np.testing.assert_array_equal(np.asarray(saved["candidates"], np.float32), labels.candidates)
    assert saved["attrs"]["method"] == "hipi" and saved["k"] == 3
    per_episode = list(dataset.storage.get_episode_metadata(range(10)))
    for i, meta in enumerate(per_episode):
        got = meta["labels"]["hipi"]
        np.testing.assert_array_equal(got["task"], labels.candidates[labels.topk_index[i, 0]])
        np.testing.assert_array_equal(got["topk_index"], labels.topk_index[i])
        np.testing.assert_array_equal(got["topk_logprob"], labels.topk_logprob[i])
        assert got["entropy"] == labels.entropy[i]
        np.testing.assert_array_equal(meta["episode_fields"]["task"], tasks[i])
    with h5py.File(dest / "data" / "main_data.hdf5") as f:
        assert (
            f["episode_3"].attrs["labels/hipi/topk_index"].tolist() == labels.topk_index[3].tolist()
        )


def test_round_trip_store_minari_store(tmp_path: Path, store_suffix: str) -> None:
    store_path = make_synthetic_store(
        tmp_path / f"a{store_suffix}", SyntheticConfig(episodes=6, steps=9)
    )
    exported = export_minari(store_path, tmp_path / "exported")
    assert (exported / "data" / "metadata.json").is_file()
    back = import_minari(exported, tmp_path / f"b{store_suffix}")
    with open_store(store_path) as a, open_store(back) as b:
        np.testing.assert_array_equal(a.ends, b.ends)
        for field in ("steps/observations", "steps/actions", "steps/infos/speed"):
            np.testing.assert_array_equal(a.read_steps(field), b.read_steps(field))
        last = a.read_steps("steps/observations")[a.ends - 1]
        np.testing.assert_array_equal(b.read_episode_field("final_observations"), last)
        assert b.attrs["source_format"] == "minari"


# ---------------------------------------------------------------- bad inputs
def test_missing_and_non_hdf5_sources(tmp_path: Path) -> None:
    one_line_error(import_d4rl, tmp_path / "nope.hdf5", tmp_path / "o.h5", match="nope.hdf5")
    one_line_error(import_minari, tmp_path / "nope", tmp_path / "o.h5", match="no such file")
    text = tmp_path / "notes.hdf5"
    text.write_text("not hdf5")
    one_line_error(import_robomimic, text, tmp_path / "o.h5", match="not an HDF5 file")
    one_line_error(import_minari, tmp_path, tmp_path / "o.h5", match="data/main_data.hdf5")
    one_line_error(import_dataset, "rlds", text, tmp_path / "o.h5", match="format")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.hdf5"]


def test_missing_actions(tmp_path: Path) -> None:
    write_d4rl(tmp_path / "d.hdf5")
    with h5py.File(tmp_path / "d.hdf5", "a") as f:
        del f["actions"]
    one_line_error(import_d4rl, tmp_path / "d.hdf5", tmp_path / "o.h5", match="actions")
    write_robomimic(tmp_path / "r.hdf5")
    with h5py.File(tmp_path / "r.hdf5", "a") as f:
        del f["data/demo_2/actions"]
    one_line_error(
        import_robomimic, tmp_path / "r.hdf5", tmp_path / "o.h5", match="data/demo_2/actions"
    )
    minari_like = tmp_path / "main_data.hdf5"
    with h5py.File(minari_like, "w") as f:
        f["episode_0/observations"] = np.zeros((3, 2))
    one_line_error(import_minari, minari_like, tmp_path / "o.h5", match="episode_0/actions")


def test_ragged_and_empty_sources(tmp_path: Path) -> None:
    write_d4rl(tmp_path / "d.hdf5")
    with h5py.File(tmp_path / "d.hdf5", "a") as f:
        rewards = f["rewards"][:-1]
        del f["rewards"]
        f["rewards"] = rewards
    one_line_error(import_d4rl, tmp_path / "d.hdf5", tmp_path / "o.h5", match="rewards has 27")
    write_robomimic(tmp_path / "r.hdf5", broken_demo=10)  # demo_10 is imported last
    one_line_error(  # batch_steps=1: earlier demos were appended before the failure
        import_robomimic,
        tmp_path / "r.hdf5",
        tmp_path / "o.zarr",
        match="demo_10/rewards",
        batch_steps=1,
    )
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("data")
    one_line_error(import_robomimic, tmp_path / "empty.hdf5", tmp_path / "o.h5", match="demo")
    leftovers = {p.name for p in tmp_path.iterdir()}
    assert leftovers == {"d.hdf5", "r.hdf5", "empty.hdf5"}, "a failed import left files"


def test_existing_destination(tmp_path: Path) -> None:
    write_d4rl(tmp_path / "d.hdf5")
    dest = make_synthetic_store(tmp_path / "s.h5", SyntheticConfig(episodes=2, steps=5))
    write_labels(dest, 2)
    one_line_error(import_d4rl, tmp_path / "d.hdf5", dest, match="already exists")
    import_d4rl(tmp_path / "d.hdf5", dest, overwrite=True)
    with open_store(dest) as store:
        assert store.attrs["source_format"] == "d4rl"
        assert store.label_names() == []
    exported = export_minari(dest, tmp_path / "m")
    one_line_error(export_minari, dest, exported, match="already exists")
    export_minari(dest, exported, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.hdf5", "m", "s.h5"]
