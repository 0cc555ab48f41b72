"""OGBench importer: ``.npz`` files written like OGBench's data_gen_scripts
(generate_locomaze.py / generate_manipspace.py: one row per step holding the observation,
the action taken there and ``terminals`` = done, float32 arrays, bool terminals, int64
button_states, ``np.savez_compressed``, the val split in ``-val.npz``), imported and
compared with what ``ogbench.load_dataset`` makes of them; and the worked example of
docs/TASKS.md: import a maze dataset, relabel with a goal spec on observation dims 0-1,
train-bc, inspect."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.errors import InputError
from hipi_offline.io import import_dataset, import_ogbench
from hipi_offline.store import open_store

NAME = "pointmaze-medium-navigate-v0"


def trajectories(lengths: list[int], seed: int = 0, buttons: bool = False) -> dict[str, np.ndarray]:
    """Back-to-back trajectories of a point in a 2-D maze: observation = (x, y, vx, vy),
    actions in [-1, 1]^2, qpos = (x, y), qvel = (vx, vy); each trajectory drifts toward
    its own corner so that goals differ between episodes."""
    rng = np.random.default_rng(seed)
    obs, act, done, qpos, qvel, button = [], [], [], [], [], []
    for k, n in enumerate(lengths):
        target = np.array([[-8.0, -8.0], [8.0, 8.0], [-8.0, 8.0], [8.0, -8.0]][k % 4])
        xy = rng.uniform(-2.0, 2.0, 2)
        for t in range(n):
            action = np.clip((target - xy) / 10 + rng.normal(0, 0.2, 2), -1, 1)
            velocity = action * 0.5
            obs.append(np.concatenate([xy, velocity]))
            act.append(action)
            done.append(t == n - 1)
            qpos.append(xy.copy())
            qvel.append(velocity)
            button.append([k % 2, (k + 1) % 2])
            xy = xy + velocity
    data = {
        "observations": np.array(obs, dtype=np.float32),
        "actions": np.array(act, dtype=np.float32),
        "terminals": np.array(done, dtype=bool),
        "qpos": np.array(qpos, dtype=np.float32),
        "qvel": np.array(qvel, dtype=np.float32),
    }
    if buttons:
        data["button_states"] = np.array(button, dtype=np.int64)
    return data


def write_npz(path: Path, data: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path, **data)
    return path


def ogbench_transitions(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``ogbench.utils.load_dataset(compact_dataset=False, add_info=True)``'s regular view,
    restated: the rows with terminals == 0 are transitions, the next observation is the
    following row."""
    terminals = data["terminals"].astype(np.float32)
    ob_mask = (1.0 - terminals).astype(bool)
    next_ob_mask = np.concatenate([[False], ob_mask[:-1]])
    out = {
        "observations": data["observations"][ob_mask],
        "next_observations": data["observations"][next_ob_mask],
        "actions": data["actions"][ob_mask],
    }
    for key in ("qpos", "qvel", "button_states"):
        if key in data:
            out[key] = data[key][ob_mask]
    return out


def error(call: object, *args: object, match: str, **kwargs: object) -> str:
    with pytest.raises(InputError, match=match) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_import_matches_ogbench_transitions(tmp_path: Path, suffix: str) -> None:
    lengths = [6, 9, 4, 7]
    data = trajectories(lengths, buttons=True)
    src = write_npz(tmp_path / "cube-single-play-v0.npz", data)
    dest = import_ogbench(src, tmp_path / f"out{suffix}")
    reference = ogbench_transitions(data)
    with open_store(dest) as store:
        np.testing.assert_array_equal(store.lengths, [n - 1 for n in lengths])
        obs = store.read_steps("steps/observations")
        assert obs.dtype == np.float32
        np.testing.assert_array_equal(obs, reference["observations"])
        np.testing.assert_array_equal(store.read_steps("steps/actions"), reference["actions"])
        for key in ("qpos", "qvel", "button_states"):
            stored = store.read_steps(f"steps/physics/{key}")
            assert stored.dtype == data[key].dtype
            np.testing.assert_array_equal(stored, reference[key])
        # the next observation of each step: the next row, or the episode's final one
        final = store.read_episode_field("episodes/final_observations")
        starts = np.concatenate([[0], store.ends[:-1]])
        following = np.concatenate(
            [
                np.concatenate([obs[a + 1 : b], final[i : i + 1]])
                for i, (a, b) in enumerate(zip(starts, store.ends, strict=True))
            ]
        )
        np.testing.assert_array_equal(following, reference["next_observations"])
        last_rows = np.cumsum(lengths) - 1
        np.testing.assert_array_equal(final, data["observations"][last_rows])
        np.testing.assert_array_equal(
            store.read_episode_field("episodes/final_physics/qpos"), data["qpos"][last_rows]
        )
        np.testing.assert_array_equal(
            store.read_episode_field("episodes/source_row"), np.cumsum([0, *lengths[:-1]])
        )
        attrs = store.attrs
    assert attrs["source_format"] == "ogbench"
    assert attrs["ogbench_dataset"] == "cube-single-play-v0"
    assert attrs["ogbench_env"] == "cube-single-v0"
    assert attrs["env"] == "cube-single-v0"
    assert attrs["ogbench_split"] == "train"
    assert attrs["ogbench_ends_from"] == "terminals"
    assert not attrs["ogbench_trailing_partial_episode"]


def test_small_batches_give_the_same_rows(tmp_path: Path) -> None:
    data = trajectories([5, 3, 8, 2, 6])
    src = write_npz(tmp_path / f"{NAME}.npz", data)
    dest = import_ogbench(src, tmp_path / "o.zarr", batch_steps=3)
    with open_store(dest) as store:
        np.testing.assert_array_equal(store.lengths, [4, 2, 7, 1, 5])
        np.testing.assert_array_equal(
            store.read_steps("steps/observations"), ogbench_transitions(data)["observations"]
        )


def test_compact_valids_file_gives_the_same_store(tmp_path: Path) -> None:
    """A file saved from load_dataset(compact_dataset=True): valids = 0 marks each last row
    (and terminals is 1 on the two last rows)."""
    data = trajectories([5, 7, 3])
    raw = import_ogbench(write_npz(tmp_path / f"{NAME}.npz", data), tmp_path / "raw.zarr")
    compact = dict(data)
    terminals = data["terminals"].astype(np.float32)
    compact["valids"] = 1.0 - terminals
    compact["terminals"] = np.minimum(terminals + np.concatenate([terminals[1:], [1.0]]), 1.0)
    dest = import_ogbench(write_npz(tmp_path / "c.npz", compact), tmp_path / "c.zarr")
    with open_store(raw) as a, open_store(dest) as b:
        np.testing.assert_array_equal(a.ends, b.ends)
        for name in a.step_fields():
            np.testing.assert_array_equal(a.read_steps(name), b.read_steps(name))
        assert b.attrs["ogbench_ends_from"] == "valids"


def test_trailing_rows_form_a_flagged_last_episode(tmp_path: Path) -> None:
    data = trajectories([5, 4])
    data["terminals"][-1] = False
    dest = import_ogbench(write_npz(tmp_path / f"{NAME}.npz", data), tmp_path / "o.zarr")
    with open_store(dest) as store:
        np.testing.assert_array_equal(store.lengths, [4, 3])
        assert store.attrs["ogbench_trailing_partial_episode"]


def test_val_split_on_request(tmp_path: Path) -> None:
    train, val = trajectories([5, 6], seed=1), trajectories([4, 4, 4], seed=2)
    src = write_npz(tmp_path / f"{NAME}.npz", train)
    write_npz(tmp_path / f"{NAME}-val.npz", val)
    dest = import_dataset("ogbench", src, tmp_path / "val.zarr", split="val")
    with open_store(dest) as store:
        assert store.attrs["ogbench_split"] == "val"
        assert store.attrs["ogbench_dataset"] == NAME
        assert store.attrs["source"] == str((tmp_path / f"{NAME}-val.npz").resolve())
        np.testing.assert_array_equal(
            store.read_steps("steps/actions"), ogbench_transitions(val)["actions"]
        )
    with open_store(import_ogbench(src, tmp_path / "t.zarr", split="train")) as store:
        assert store.attrs["ogbench_split"] == "train"
        assert store.num_episodes == 2


def test_split_errors_before_anything_is_written(tmp_path: Path) -> None:
    src = write_npz(tmp_path / f"{NAME}.npz", trajectories([3, 3]))
    dest = tmp_path / "o.zarr"
    error(import_dataset, "ogbench", src, dest, split="test", match="--split: must be train or val")
    error(import_dataset, "d4rl", src, dest, split="val", match="--split: only ogbench datasets")
    error(
        import_ogbench, src, dest, split="val", match=r"--split val: .*-val\.npz .* does not exist"
    )
    val = write_npz(tmp_path / f"{NAME}-val.npz", trajectories([3]))
    error(import_ogbench, val, dest, split="train", match="is the val split; give " + NAME)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{NAME}-val.npz", f"{NAME}.npz"]


def test_bad_files_are_one_line_errors_and_leave_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "o.zarr"
    data = trajectories([4, 4])
    missing = write_npz(tmp_path / "a.npz", {k: v for k, v in data.items() if k != "terminals"})
    error(import_ogbench, missing, dest, match="required array terminals is missing")
    short = write_npz(tmp_path / "b.npz", {**data, "actions": data["actions"][:-1]})
    error(import_ogbench, short, dest, match="actions: has 7 rows, expected 8")
    strings = write_npz(tmp_path / "c.npz", {**data, "qpos": np.array(["x"] * 8)})
    error(import_ogbench, strings, dest, match="qpos: has dtype <U1; only numeric")
    single = dict(data)
    single["terminals"] = np.array([1, 0, 0, 1, 0, 0, 0, 1], dtype=bool)
    error(import_ogbench, write_npz(tmp_path / "d.npz", single), dest, match="row 0 has one row")
    flags = {**data, "terminals": np.array([0, 0, 0, 2, 0, 0, 0, 1], dtype=np.float32)}
    error(
        import_ogbench, write_npz(tmp_path / "e.npz", flags), dest, match="row 3 is 2.0, not 0 or 1"
    )
    regular = {**data, "next_observations": data["observations"]}
    error(import_ogbench, write_npz(tmp_path / "f.npz", regular), dest, match="next_observations")
    (tmp_path / "g.npz").write_bytes(b"not a zip archive")
    error(import_ogbench, tmp_path / "g.npz", dest, match="not an .npz archive")
    error(import_ogbench, tmp_path / "none.npz", dest, match="no such file")
    good = write_npz(tmp_path / "h.npz", data)
    with zipfile.ZipFile(good) as archive:
        observations = archive.read("observations.npy")
    with zipfile.ZipFile(tmp_path / "i.npz", "w") as archive:  # header says 8 rows, data has 7
        for name in ("actions", "terminals"):
            archive.writestr(f"{name}.npy", zipfile.ZipFile(good).read(f"{name}.npy"))
        archive.writestr("observations.npy", observations[:-16])
    error(import_ogbench, tmp_path / "i.npz", dest, match="size does not match its header")
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".npz"]


def test_cli_import_ogbench_split_and_errors(tmp_path: Path) -> None:
    src = write_npz(tmp_path / f"{NAME}.npz", trajectories([3, 5]))
    write_npz(tmp_path / f"{NAME}-val.npz", trajectories([4]))
    runner = CliRunner()
    result = runner.invoke(
        app, ["import", "ogbench", str(src), str(tmp_path / "v.zarr"), "--split", "val"]
    )
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "v.zarr") as store:
        assert store.num_episodes == 1 and store.attrs["ogbench_split"] == "val"
    result = runner.invoke(
        app, ["import", "d4rl", str(src), str(tmp_path / "x.h5"), "--split", "val"]
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --split: only ogbench datasets have splits, not d4rl"
    ]
    assert not (tmp_path / "x.h5").exists()


# ---------------------------------------------------------------- the worked example
DOCS = Path(__file__).resolve().parents[1] / "docs" / "TASKS.md"


def goal_spec() -> str:
    """The goal spec YAML of docs/TASKS.md's worked example (the test runs what it shows)."""
    text = DOCS.read_text()
    start = text.index("```yaml\n# maze-xy-goal.yaml") + len("```yaml\n")
    return text[start : text.index("```", start)]


def cli(*args: object, code: int = 0) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"{result.output}\n{result.exception!r}"
    return result.output


def test_worked_example_import_relabel_train_inspect(tmp_path: Path) -> None:
    """docs/TASKS.md: import an OGBench-style maze .npz, relabel it with a goal spec on
    observation dims 0-1, train HIPI-BC a few steps, inspect. The label set is checked
    against a float64 numpy reference of the posterior."""
    lengths = [30, 25, 30, 28, 30, 26, 30, 29]
    src = write_npz(tmp_path / f"{NAME}.npz", trajectories(lengths, seed=3))
    store_path = tmp_path / "maze.zarr"
    spec = tmp_path / "maze-goal.yaml"
    spec.write_text(goal_spec())
    cli("import", "ogbench", src, store_path, "--no-progress")
    cli(
        "relabel", store_path, "--tasks", spec, "--device", "cpu", "--top-k", "all", "--no-progress"
    )

    with open_store(store_path) as store:
        labels = store.read_labels("hipi")
        xy = store.read_steps("steps/observations")[:, :2].astype(np.float64)
        ends = store.ends
    goals = labels.candidates.astype(np.float64)
    episode = np.repeat(np.arange(len(ends)), np.diff(np.concatenate([[0], ends])))
    distance = np.linalg.norm(xy[:, None, :] - goals[None, :, :], axis=2)  # [S, K]
    returns = np.zeros((len(ends), len(goals)))
    np.add.at(returns, episode, -distance)  # R_ij = sum_t -||x_t[0:2] - g_j||
    scaled = returns / 5.0
    log_z = logsumexp(scaled, axis=0) - np.log(len(ends))
    log_q = scaled - log_z
    log_q -= logsumexp(log_q, axis=1, keepdims=True)
    # float64 math in a different reduction order: rtol 1e-12; log q is stored as float32
    np.testing.assert_allclose(labels.log_z, log_z, rtol=1e-12, atol=1e-12)
    order = np.argsort(-log_q, axis=1, kind="stable")
    np.testing.assert_array_equal(labels.topk_index[:, 0], order[:, 0])
    picked = np.take_along_axis(log_q, labels.topk_index, axis=1)
    np.testing.assert_allclose(labels.topk_logprob, picked, rtol=1e-6, atol=1e-6)
    # each episode's most probable goal lies nearer its own path than the paths heading
    # to the opposite corner
    means = np.array([xy[episode == i].mean(axis=0) for i in range(len(ends))])
    top = goals[labels.topk_index[:, 0]]
    opposite = {0: 1, 1: 0, 2: 3, 3: 2}
    for i in range(len(ends)):
        others = [j for j in range(len(ends)) if j % 4 == opposite[i % 4]]
        own = np.linalg.norm(top[i] - means[i])
        assert own < min(np.linalg.norm(top[i] - means[j]) for j in others), i

    run = tmp_path / "run"
    cli(
        "train-bc",
        store_path,
        "--labels",
        "hipi",
        "--out",
        run,
        "--steps",
        "20",
        "--batch-size",
        "32",
        "--hidden",
        "16,16",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert (run / "metrics.csv").is_file()
    shown = cli("inspect", store_path, "--no-progress")
    assert "hipi" in shown and "steps/physics/qpos" in shown
