"""LeRobot v3 importer: datasets written with pyarrow in the layout of LeRobot's own test
factories (tests/fixtures/dataset_factories.py, files.py: meta/info.json,
meta/tasks.parquet, meta/episodes/chunk-000/file-000.parquet, data/chunk-000/file-000.parquet,
videos/<key>/chunk-000/file-000.mp4), then imported and compared value for value."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.errors import InputError
from hipi_offline.io import import_dataset, import_lerobot
from hipi_offline.store import open_store

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FPS = 30
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
VIDEO_INFO = {"video.fps": FPS, "video.codec": "av1", "video.pix_fmt": "yuv420p"}
TASKS = ["Perform action 0.", "Perform action 1.", "Perform action 2."]
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


def features() -> dict[str, Any]:
    """DUMMY_MOTOR_FEATURES + a camera + DEFAULT_FEATURES, as LeRobot's features_factory,
    with a scalar reward and a 2-D environment state besides."""
    return {
        "action": {"dtype": "float32", "shape": [6], "names": JOINTS},
        "observation.state": {"dtype": "float32", "shape": [6], "names": JOINTS},
        "observation.environment_state": {"dtype": "float64", "shape": [2, 3], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        "observation.images.laptop": {
            "dtype": "video",
            "shape": [64, 96, 3],
            "names": ["height", "width", "channels"],
            "info": VIDEO_INFO,
        },
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }


def frames(lengths: list[int], episode_tasks: list[list[int]], seed: int = 0) -> dict[str, Any]:
    """The frame columns of all episodes, in episode order (numpy)."""
    rng = np.random.default_rng(seed)
    total = sum(lengths)
    episode = np.repeat(np.arange(len(lengths)), lengths)
    frame = np.concatenate([np.arange(n) for n in lengths])
    return {
        "action": rng.standard_normal((total, 6)).astype(np.float32),
        "observation.state": rng.standard_normal((total, 6)).astype(np.float32),
        "observation.environment_state": rng.standard_normal((total, 2, 3)),
        "next.reward": rng.standard_normal(total).astype(np.float32),
        "next.done": frame == np.repeat(np.asarray(lengths) - 1, lengths),
        "timestamp": (frame / FPS).astype(np.float32),
        "frame_index": frame.astype(np.int64),
        "episode_index": episode.astype(np.int64),
        "index": np.arange(total, dtype=np.int64),
        "task_index": np.repeat([t[0] for t in episode_tasks], lengths).astype(np.int64),
    }


def arrow_column(name: str, values: np.ndarray) -> Any:
    """Columns as HF datasets writes them: Value for shape [1], Sequence(length=n) as a
    fixed-size list (observation.state as a plain list, as older datasets wrote it),
    Array2D as a list of lists."""
    if values.ndim == 1:
        return pa.array(values)
    flat = pa.array(values.reshape(-1))
    if values.ndim == 3:
        inner = pa.FixedSizeListArray.from_arrays(flat, values.shape[2])
        return pa.FixedSizeListArray.from_arrays(inner, values.shape[1])
    if name == "observation.state":
        offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, flat)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def write_dataset(
    root: Path,
    lengths: tuple[int, ...] = (7, 5, 9, 4),
    episode_tasks: tuple[tuple[int, ...], ...] = ((0,), (1,), (2, 0), (1,)),
    files: tuple[int, ...] = (0, 0, 1, 1),
    info_changes: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A LeRobot v3 dataset folder; episode i's frames go to data file ``files[i]`` (and
    its episodes-table row to meta/episodes file ``files[i]``). Returns the frames."""
    lengths_list, tasks_list = list(lengths), [list(t) for t in episode_tasks]
    data = frames(lengths_list, tasks_list, seed)
    info = {
        "codebase_version": "v3.0",
        "robot_type": "dummy_robot",
        "total_episodes": len(lengths),
        "total_frames": sum(lengths),
        "total_tasks": len(TASKS),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": FPS,
        "splits": {},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": features(),
        **(info_changes or {}),
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    (root / "meta" / "stats.json").write_text("{}")
    # pandas' to_parquet of a DataFrame indexed by "task" writes the index as a column
    tasks = pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()), "task": TASKS})
    pq.write_table(tasks, root / "meta" / "tasks.parquet")
    ends = np.cumsum(lengths)
    starts = ends - np.asarray(lengths)
    for file in sorted(set(files)):
        chosen = [i for i, f in enumerate(files) if f == file]
        rows = np.concatenate([np.arange(starts[i], ends[i]) for i in chosen])
        table = pa.table({name: arrow_column(name, v[rows]) for name, v in data.items()})
        path = root / DATA_PATH.format(chunk_index=0, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=6)  # several row groups per file
        video = root / VIDEO_PATH.format(
            video_key="observation.images.laptop", chunk_index=0, file_index=file
        )
        video.parent.mkdir(parents=True, exist_ok=True)
        video.write_bytes(b"not decoded")
        episodes = {
            "episode_index": pa.array(chosen, pa.int64()),
            "meta/episodes/chunk_index": pa.array([0] * len(chosen), pa.int64()),
            "meta/episodes/file_index": pa.array([file] * len(chosen), pa.int64()),
            "data/chunk_index": pa.array([0] * len(chosen), pa.int64()),
            "data/file_index": pa.array([file] * len(chosen), pa.int64()),
            "dataset_from_index": pa.array([int(starts[i]) for i in chosen], pa.int64()),
            "dataset_to_index": pa.array([int(ends[i]) for i in chosen], pa.int64()),
            "tasks": pa.array([[TASKS[t] for t in tasks_list[i]] for i in chosen]),
            "length": pa.array([lengths[i] for i in chosen], pa.int64()),
            "videos/observation.images.laptop/chunk_index": pa.array([0] * len(chosen)),
            "videos/observation.images.laptop/file_index": pa.array([file] * len(chosen)),
            "stats/action/mean": pa.array([[0.5] * 6] * len(chosen)),
        }
        meta = root / "meta" / "episodes" / f"chunk-000/file-{file:03d}.parquet"
        meta.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(episodes), meta)
    return data


def error(root: Path, dest: Path, match: str) -> str:
    """The one-line InputError of importing ``root``; nothing is left beside ``dest``."""
    before = sorted(dest.parent.iterdir())
    with pytest.raises(InputError, match=match) as info:
        import_lerobot(root, dest)
    message = str(info.value)
    assert "\n" not in message
    assert sorted(dest.parent.iterdir()) == before
    return message


def rewrite(path: Path, **columns: Any) -> None:
    """Replace (or add) columns of a Parquet file."""
    table = pq.read_table(path)
    for name, values in columns.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    pq.write_table(table, path)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_import_lerobot_values_tasks_and_skipped_videos(tmp_path: Path, suffix: str) -> None:
    root = tmp_path / "dummy_repo"
    data = write_dataset(root)
    dest = import_lerobot(root, tmp_path / f"out{suffix}")
    with open_store(dest) as store:
        assert store.num_episodes == 4
        np.testing.assert_array_equal(store.ends, np.cumsum([7, 5, 9, 4]))
        fields = {name: store.read_steps(name) for name in store.step_fields()}
        renamed = {"observation.state": "observations", "action": "actions"}
        for name, values in data.items():
            stored = fields[f"steps/{renamed.get(name, name)}"]
            assert stored.dtype == values.dtype, name
            assert stored.shape == values.shape, name
            np.testing.assert_array_equal(stored, values)
        assert "steps/observation.images.laptop" not in fields
        np.testing.assert_array_equal(store.read_episode_field("episodes/source_id"), range(4))
        np.testing.assert_array_equal(store.read_episode_field("episodes/task"), [0, 1, 2, 1])
        np.testing.assert_array_equal(store.read_episode_field("episodes/num_tasks"), [1, 1, 2, 1])
        attrs = store.attrs
    assert attrs["source_format"] == "lerobot"
    assert attrs["source"] == str(root.resolve())
    assert attrs["lerobot_codebase_version"] == "v3.0"
    assert attrs["lerobot_fps"] == 30.0
    assert attrs["lerobot_robot_type"] == "dummy_robot"
    assert json.loads(attrs["lerobot_tasks"]) == TASKS
    assert json.loads(attrs["lerobot_state_names"]) == JOINTS
    assert list(attrs["lerobot_video_features"]) == ["observation.images.laptop"]
    assert list(attrs["skipped_fields"]) == ["observation.images.laptop"]
    assert json.loads(attrs["source_metadata"])["features"]["action"]["names"] == JOINTS


def test_import_lerobot_small_batches_give_the_same_store(tmp_path: Path) -> None:
    """Episodes cut into many appends (and row-group reads) store the same rows."""
    root = tmp_path / "ds"
    data = write_dataset(root, lengths=(3, 8, 1, 6, 2), episode_tasks=((0,),) * 5, files=(0,) * 5)
    dest = import_lerobot(root, tmp_path / "out.zarr", batch_steps=4, batch_bytes=1 << 30)
    with open_store(dest) as store:
        np.testing.assert_array_equal(store.lengths, [3, 8, 1, 6, 2])
        np.testing.assert_array_equal(
            store.read_steps("steps/observations"), data["observation.state"]
        )
        np.testing.assert_array_equal(
            store.read_steps("steps/observation.environment_state"),
            data["observation.environment_state"],
        )


def test_import_lerobot_info_json_path_and_registry(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root)
    dest = import_dataset("lerobot", root / "meta" / "info.json", tmp_path / "o.zarr")
    with open_store(dest) as store:
        assert store.num_episodes == 4


# ---------------------------------------------------------------- refused input
def test_missing_info_json(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root)
    (root / "meta" / "info.json").unlink()
    message = error(root, tmp_path / "o.zarr", "meta/info.json is missing")
    assert str(root) in message


def test_v21_dataset_is_refused_naming_the_version(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root, info_changes={"codebase_version": "v2.1"})
    error(root, tmp_path / "o.zarr", r"codebase_version v2\.1 is a LeRobot v2 dataset; only v3\.0")


def test_newer_and_malformed_versions(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root, info_changes={"codebase_version": "v4.0"})
    error(root, tmp_path / "o.zarr", "v4.0 is newer than v3.x")
    info = json.loads((root / "meta" / "info.json").read_text())
    info.pop("codebase_version")
    (root / "meta" / "info.json").write_text(json.dumps(info))
    error(root, tmp_path / "o.zarr", "codebase_version must be a version like 'v3.0', got None")


def test_unknown_feature_dtype(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    feats = features()
    feats["observation.pointcloud"] = {"dtype": "point_cloud", "shape": [3]}
    write_dataset(root, info_changes={"features": feats})
    error(root, tmp_path / "o.zarr", r"features\.observation\.pointcloud has dtype 'point_cloud'")


def test_missing_state_feature(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    feats = features()
    del feats["observation.state"]
    write_dataset(root, info_changes={"features": feats})
    error(root, tmp_path / "o.zarr", "features has no numeric observation.state")


def test_episode_length_mismatch_with_data_rows(tmp_path: Path) -> None:
    """The episodes table (and info.json) say 6 frames (indices 0..6); the data has 7."""
    root = tmp_path / "ds"
    write_dataset(root, info_changes={"total_frames": 24})
    meta = root / "meta/episodes/chunk-000/file-000.parquet"
    rewrite(
        meta,
        length=pa.array([6, 5], pa.int64()),
        dataset_to_index=pa.array([6, 12], pa.int64()),
    )
    error(root, tmp_path / "o.zarr", "episode 0 has 7 rows but length 6 in meta/episodes")


def test_length_disagrees_with_index_range(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root)
    rewrite(root / "meta/episodes/chunk-000/file-000.parquet", length=pa.array([7, 6], pa.int64()))
    error(root, tmp_path / "o.zarr", "length 6 does not match dataset_from_index 7")


def test_index_column_disagrees_with_episodes_table(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root)
    data = root / "data/chunk-000/file-000.parquet"
    rewrite(data, index=pa.array(np.arange(12) + 100, pa.int64()))
    error(root, tmp_path / "o.zarr", "column index does not run from dataset_from_index 0")


def test_total_frames_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root, info_changes={"total_frames": 99})
    error(root, tmp_path / "o.zarr", "total_frames is 99 but the episodes table has 25")


def test_rows_of_an_unlisted_episode(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root)
    data = root / "data/chunk-000/file-000.parquet"
    episode = np.repeat([0, 1], [7, 5])
    episode[-1] = 9
    rewrite(data, episode_index=pa.array(episode, pa.int64()))
    error(root, tmp_path / "o.zarr", "has rows of episode 9, which meta/episodes does not place")


def test_missing_feature_column_and_dtype_mismatch_and_nulls(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root)
    data = root / "data/chunk-000/file-001.parquet"
    original = pq.read_table(data)
    pq.write_table(original.drop_columns(["next.reward"]), data)
    error(root, tmp_path / "o.zarr", "column next.reward .* is missing")
    rewrite(data, **{"next.reward": pa.array(np.zeros(13))})  # float64, declared float32
    error(
        root, tmp_path / "o.zarr", "next.reward .* is float64 but meta/info.json declares float32"
    )
    rewrite(data, **{"next.reward": pa.array([None] + [0.0] * 12, pa.float32())})
    error(root, tmp_path / "o.zarr", r"next\.reward \(rows 0\.\.12\): holds nulls")
    pq.write_table(original, data)
    ragged = pa.array([[0.0] * 6] * 12 + [[0.0] * 5], pa.list_(pa.float32()))
    rewrite(data, **{"observation.state": ragged})
    error(root, tmp_path / "o.zarr", "has a row of 5 values where the shape .6. needs 6")


def test_task_not_in_tasks_table(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root)
    meta = root / "meta/episodes/chunk-000/file-000.parquet"
    rewrite(meta, tasks=pa.array([["Perform action 0."], ["Fly to the moon."]]))
    error(root, tmp_path / "o.zarr", "episode 1: task 'Fly to the moon.' is not in meta/tasks")


def test_data_path_template_may_only_name_the_indices(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root, info_changes={"data_path": "data/{chunk_index.__class__}/x.parquet"})
    error(root, tmp_path / "o.zarr", "may only use {chunk_index} and {file_index}")
    root2 = tmp_path / "ds2"
    write_dataset(root2, info_changes={"data_path": "../{chunk_index}/{file_index}.parquet"})
    error(root2, tmp_path / "o2.zarr", "is not a path inside the dataset folder")


def test_symlink_out_of_the_dataset_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root)
    outside = tmp_path / "elsewhere.parquet"
    data = root / "data/chunk-000/file-000.parquet"
    data.rename(outside)
    os.symlink(outside, data)
    error(root, tmp_path / "o.zarr", "is a symbolic link that leads out of the dataset folder")


def test_not_a_parquet_file(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root)
    (root / "data/chunk-000/file-001.parquet").write_bytes(b"PAR1 but not really")
    error(root, tmp_path / "o.zarr", "file-001.parquet: not a readable Parquet file")


# ---------------------------------------------------------------- command line
def test_cli_import_lerobot_and_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root)
    result = CliRunner().invoke(app, ["import", "lerobot", str(root), str(tmp_path / "o.zarr")])
    assert result.exit_code == 0, result.output
    assert "imported lerobot dataset" in result.output
    bad = tmp_path / "v2"
    write_dataset(bad, info_changes={"codebase_version": "v2.1"})
    result = CliRunner().invoke(app, ["import", "lerobot", str(bad), str(tmp_path / "b.zarr")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "v2.1" in lines[0]
    assert not (tmp_path / "b.zarr").exists()
