"""Bad input: one clear ``error: ...`` line, exit code 2, and nothing written or
changed on disk (the store, its label sets and every other file in the folder).

Every failing command runs against a copy of a tiny store that already holds a
label set ``hipi``; the whole folder is hashed before and after the command and
the label set is read back afterwards.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr
from conftest import KINDS, SPEED_TARGET_SPEC, synthetic_stores
from disk import snapshot
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.store import create_store, open_store
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store, synthetic_episodes

EPISODES, STEPS = 12, 16
ROWS = EPISODES * STEPS
PROGRESS = re.compile(r"^\s*[\w ]+:\s+\d+%\|")  # a tqdm progress-bar refresh

VELOCITY = SPEED_TARGET_SPEC


# ------------------------------------------------------------------ helpers


def labels_equal(a, b) -> bool:
    arrays = ("candidates", "log_z", "topk_index", "topk_logprob", "entropy", "coverage")
    return all(
        np.array_equal(getattr(a, k), getattr(b, k), equal_nan=True) for k in arrays
    ) and dict(a.attrs) == dict(b.attrs)


def error_lines(result) -> list[str]:
    """stderr lines other than progress-bar refreshes."""
    return [
        line for line in result.stderr.splitlines() if line.strip() and not PROGRESS.match(line)
    ]


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_input_error(result, *needles: str) -> str:
    """Exit code 2 and exactly one ``error:`` line that contains every needle."""
    detail = f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), detail
    assert result.exit_code == 2, detail
    assert "Traceback" not in result.output, detail
    lines = error_lines(result)
    assert len(lines) == 1, detail
    assert lines[0].startswith("error: "), detail
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert result.stdout == "", detail
    return lines[0]


def check_unchanged(root: Path, store: Path | None, action: Callable[[], object]):
    """Run ``action``; assert no byte under ``root`` changed and the label set survives."""
    before = snapshot(root)
    old = None
    if store is not None:
        with open_store(store) as s:
            old = s.read_labels("hipi")
    result = action()
    after = snapshot(root)
    assert after == before, _diff(before, after)
    if old is not None:
        with open_store(store) as s:
            assert s.label_names() == ["hipi"]
            assert labels_equal(s.read_labels("hipi"), old)
    return result


def _diff(before: dict, after: dict) -> str:
    keys = sorted(set(before) | set(after))
    return "changed: " + ", ".join(k for k in keys if before.get(k) != after.get(k))


def fails(root: Path, store: Path | None, *args: object, needles: tuple[str, ...] = ()) -> str:
    """Run the CLI, expect an input error and an unchanged folder; return the line."""
    result = check_unchanged(root, store, lambda: cli(*args))
    return assert_input_error(result, *needles)


def relabel_args(store: Path, tasks: object, *extra: object) -> list[object]:
    return [
        "relabel", store, "--tasks", tasks, "--device", "cpu", "--name", "hipi",
        "--overwrite", *extra,
    ]  # fmt: skip


def seed_labels(store: Path, method: str = "hipi") -> None:
    config = RelabelConfig(
        tasks="synthetic-velocity", name="hipi", method=method, candidates=16, device="cpu"
    )
    relabel(store, config)


def clone(template: Path, folder: Path) -> Path:
    """Copy a store (and, for HDF5, its label sidecar) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / template.name
    if template.is_dir():
        shutil.copytree(template, dst, symlinks=True)
    else:
        shutil.copy2(template, dst)
        sidecar = Path(str(template) + ".labels")
        if sidecar.exists():
            shutil.copytree(sidecar, Path(str(dst) + ".labels"), symlinks=True)
    return dst


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    """Tiny synthetic stores, one per backend, each with the label set ``hipi``."""
    config = SyntheticConfig(episodes=EPISODES, steps=STEPS, seed=3)
    out = synthetic_stores(tmp_path_factory.mktemp("templates"), config)
    for path in out.values():
        seed_labels(path)
    return out


@pytest.fixture
def store(kind: str, templates, tmp_path) -> Path:
    return clone(templates[kind], tmp_path / "data")


@pytest.fixture
def h5store(templates, tmp_path) -> Path:
    return clone(templates["h5"], tmp_path / "data")


def build_store(path: Path, edit: Callable[[dict, dict], None] | None = None) -> Path:
    """A synthetic store whose fields ``edit`` may change first, with label set ``hipi``
    written by the ``random`` method (which reads no step field)."""
    steps, episodes = synthetic_episodes(EPISODES, STEPS, np.random.default_rng(5))
    if edit is not None:
        edit(steps, episodes)
    with create_store(path, env="test") as s:
        s.append_episodes(steps, [STEPS] * EPISODES, episodes)
    seed_labels(path, method="random")
    return path


def spec_file(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ task specs
SPEC_CASES = [
    ("malformed-yaml", "family: target\nfeature: [steps/infos/speed\n", ["malformed YAML"]),
    ("bad-indent", "family: target\n  feature: x\n bad", ["malformed YAML"]),
    ("not-a-mapping", "- family\n- target\n", ["mapping"]),
    ("empty-file", "", ["mapping"]),
    ("unknown-family", VELOCITY.replace("family: target", "family: quadratic"), ["quadratic"]),
    ("no-family", VELOCITY.replace("family: target\n", ""), ["family"]),
    ("unknown-key", VELOCITY + "colour: red\n", ["colour"]),
    ("misspelled-key", VELOCITY.replace("ctrl_cost", "ctrl_costs"), ["ctrl_costs"]),
    ("missing-feature", VELOCITY.replace("feature: steps/infos/speed\n", ""), ["feature"]),
    (
        "missing-prior",
        VELOCITY.replace("prior: {uniform: {low: [0.0], high: [3.0]}}\n", ""),
        ["prior"],
    ),
    ("prior-missing-high", VELOCITY.replace(", high: [3.0]", ""), ["high"]),
    ("prior-unknown-key", VELOCITY.replace("high: [3.0]", "high: [3.0], mid: 1"), ["mid"]),
    ("prior-unknown-kind", VELOCITY.replace("uniform", "gamma_dist"), ["gamma_dist"]),
    ("prior-low-string", VELOCITY.replace("low: [0.0]", "low: [zero]"), ["low"]),
    ("prior-high-below-low", VELOCITY.replace("high: [3.0]", "high: [-1.0]"), ["high"]),
    ("prior-dims-disagree", VELOCITY.replace("high: [3.0]", "high: [3.0, 4.0]"), ["high"]),
    (
        "normal-std-negative",
        VELOCITY.replace("uniform: {low: [0.0], high: [3.0]}", "normal: {mean: [1], std: [-1]}"),
        ["std"],
    ),
    ("temperature-string", VELOCITY + "temperature: hot\n", ["temperature"]),
    ("temperature-zero", VELOCITY + "temperature: 0\n", ["temperature"]),
    ("temperature-nan", VELOCITY + "temperature: .nan\n", ["temperature"]),
    ("temperature-bool", VELOCITY + "temperature: true\n", ["temperature"]),
    ("candidates-string", VELOCITY.replace("candidates: 16", "candidates: many"), ["candidates"]),
    ("candidates-zero", VELOCITY.replace("candidates: 16", "candidates: 0"), ["candidates"]),
    ("candidates-float", VELOCITY.replace("candidates: 16", "candidates: 2.5"), ["candidates"]),
    (
        "candidates-outside-prior",
        VELOCITY.replace("candidates: 16", "candidates: [[5.0]]"),
        ["candidates"],
    ),
    (
        "candidates-wrong-length",
        VELOCITY.replace("candidates: 16", "candidates: [[1.0, 2.0]]"),
        ["candidates[0]"],
    ),
    ("gamma-string", VELOCITY + "gamma: '0.9'\n", ["gamma"]),
    ("gamma-above-one", VELOCITY + "gamma: 1.5\n", ["gamma"]),
    ("ctrl-cost-string", VELOCITY.replace("ctrl_cost: 0.05", "ctrl_cost: cheap"), ["ctrl_cost"]),
    ("dims-string", VELOCITY + "dims: first\n", ["dims"]),
    ("at-unknown", VELOCITY + "at: middle\n", ["at"]),
    ("feature-number", VELOCITY.replace("feature: steps/infos/speed", "feature: 3"), ["feature"]),
    ("feature-not-a-step-path", VELOCITY.replace("steps/infos/speed", "infos/speed"), ["feature"]),
    (
        "linear-no-features",
        "family: linear\nfeatures: []\nprior: {uniform: {low: [0], high: [1]}}\n",
        ["features"],
    ),
    (
        "goal-margin-negative",
        "family: goal\nfield: steps/observations\ndims: [0, 1]\nmargin: -1\n"
        "prior: {uniform: {low: [-1, -1], high: [1, 1]}}\n",
        ["margin"],
    ),
    ("discrete-tasks-list", "family: discrete\ntasks: [run, walk]\n", ["tasks"]),
    (
        "discrete-predicate-key",
        "family: discrete\ntasks: {run: {field: steps/infos/speed, above: 1, colour: 2}}\n",
        ["colour"],
    ),
    (
        "discrete-above-string",
        "family: discrete\ntasks: {run: {field: steps/infos/speed, above: fast}}\n",
        ["above"],
    ),
    (
        "custom-missing-module",
        "family: custom\nfunction: no_such_module_xyz:reward\nfields: [steps/infos/speed]\n"
        "prior: {uniform: {low: [0], high: [1]}}\n",
        ["no_such_module_xyz"],
    ),
]


@pytest.mark.parametrize(
    ("text", "needles"), [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES]
)
def test_bad_task_spec(h5store: Path, tmp_path: Path, text: str, needles: list[str]):
    spec = spec_file(tmp_path, text)
    line = fails(tmp_path, h5store, *relabel_args(h5store, spec), needles=tuple(needles))
    assert str(spec) in line  # the error names the spec file


# spec is valid, but does not fit the store
MISMATCH_CASES = [
    (
        "field-missing",
        VELOCITY.replace("steps/infos/speed", "steps/infos/nope"),
        ["steps/infos/nope"],
    ),
    (
        "linear-field-missing",
        "family: linear\nfeatures: [steps/infos/speed, steps/infos/torque]\n"
        "prior: {uniform: {low: [0, 0], high: [1, 1]}}\n",
        ["steps/infos/torque"],
    ),
    (
        "linear-prior-dim",
        "family: linear\nfeatures: [steps/infos/speed, steps/infos/height]\n"
        "prior: {uniform: {low: [0, 0, 0], high: [1, 1, 1]}}\n",
        ["prior", "3", "2"],
    ),
    (
        "linear-prior-dim-obs",
        "family: linear\nfeatures: [steps/observations]\n"
        "prior: {uniform: {low: [0, 0], high: [1, 1]}}\n",
        ["prior", "8"],
    ),
    (
        "target-vector-feature-no-dims",
        VELOCITY.replace("steps/infos/speed", "steps/observations"),
        ["prior", "8"],
    ),
    (
        "goal-dims-out-of-range",
        "family: goal\nfield: steps/observations\ndims: [0, 9]\n"
        "prior: {uniform: {low: [-1, -1], high: [1, 1]}}\n",
        ["dims", "9"],
    ),
    (
        "goal-dims-negative",
        "family: goal\nfield: steps/observations\ndims: [-1, 0]\n"
        "prior: {uniform: {low: [-1, -1], high: [1, 1]}}\n",
        ["dims", "-1"],
    ),
    (
        "goal-prior-dim",
        "family: goal\nfield: steps/observations\ndims: [0, 1]\n"
        "prior: {uniform: {low: [-1], high: [1]}}\n",
        ["prior"],
    ),
    (
        "discrete-column-out-of-range",
        "family: discrete\ntasks: {far: {field: steps/observations, column: 8, above: 0.5}}\n",
        ["column", "8"],
    ),
    (
        "discrete-vector-field-no-column",
        "family: discrete\ntasks: {far: {field: steps/observations, above: 0.5}}\n",
        ["column"],
    ),
    (
        "discrete-field-missing",
        "family: discrete\ntasks: {fly: {field: steps/infos/altitude, above: 0.5}}\n",
        ["steps/infos/altitude"],
    ),
]


@pytest.mark.parametrize(
    ("text", "needles"), [c[1:] for c in MISMATCH_CASES], ids=[c[0] for c in MISMATCH_CASES]
)
def test_spec_does_not_fit_store(store: Path, tmp_path: Path, text: str, needles: list[str]):
    spec = spec_file(tmp_path, text)
    fails(tmp_path, store, *relabel_args(store, spec), needles=tuple(needles))


def test_missing_spec_file(h5store: Path, tmp_path: Path):
    fails(tmp_path, h5store, *relabel_args(h5store, tmp_path / "nope.yaml"), needles=("nope",))


def test_unknown_builtin_spec(h5store: Path, tmp_path: Path):
    fails(tmp_path, h5store, *relabel_args(h5store, "no-such-spec"), needles=("no-such-spec",))


def test_spec_directory(h5store: Path, tmp_path: Path):
    folder = tmp_path / "specs.yaml"
    folder.mkdir()
    fails(tmp_path, h5store, *relabel_args(h5store, folder), needles=("specs.yaml",))


def test_spec_not_utf8(h5store: Path, tmp_path: Path):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes("family: target\nfeature: caf\xe9\n".encode("latin-1"))
    fails(tmp_path, h5store, *relabel_args(h5store, spec), needles=("latin1.yaml", "UTF-8"))


def test_spec_is_a_binary_file(h5store: Path, tmp_path: Path):
    """--tasks given the store by mistake."""
    fails(tmp_path, h5store, *relabel_args(h5store, h5store), needles=(h5store.name,))


# ------------------------------------------------------------------ non-finite data
NONFINITE_CASES = [
    # (id, field to spoil, value, spec, field named in the error)
    ("nan-speed", "infos/speed", np.nan, "synthetic-velocity", "steps/infos/speed"),
    ("inf-speed", "infos/speed", np.inf, "synthetic-velocity", "steps/infos/speed"),
    ("neg-inf-speed", "infos/speed", -np.inf, "cheetah-velocity", "steps/infos/speed"),
    ("nan-actions-ctrl-cost", "actions", np.nan, "synthetic-velocity", "steps/actions"),
    ("nan-height-linear", "infos/height", np.nan, "synthetic-linear", "steps/infos/height"),
    ("inf-obs-goal", "observations", np.inf, "synthetic-goal", "steps/observations"),
]


@pytest.mark.parametrize(
    ("field", "value", "spec", "named"),
    [c[1:] for c in NONFINITE_CASES],
    ids=[c[0] for c in NONFINITE_CASES],
)
def test_nonfinite_reward_field(tmp_path: Path, kind, field, value, spec, named):
    def spoil(steps: dict, episodes: dict) -> None:
        data = steps[field]
        data[ROWS - 5 if data.ndim == 1 else (ROWS - 5, 0)] = value  # late: not in 1st chunk

    path = build_store(tmp_path / f"nan.{kind}", spoil)
    line = fails(tmp_path, path, *relabel_args(path, spec, "--chunk-steps", 64), needles=(named,))
    assert "NaN or inf" in line


def test_nan_in_unread_field_is_fine(tmp_path: Path, kind):
    """NaN only in a field the reward does not read: the relabel succeeds."""

    def spoil(steps: dict, episodes: dict) -> None:
        steps["infos/height"][3] = np.nan

    path = build_store(tmp_path / f"nan.{kind}", spoil)
    result = cli(*relabel_args(path, "synthetic-velocity", "--candidates", 8))
    assert result.exit_code == 0, result.output
    with open_store(path) as s:
        assert s.read_labels("hipi").attrs["method"] == "hipi"


# ------------------------------------------------------------------ damaged stores
def test_empty_store(tmp_path: Path):
    for kind in KINDS:
        path = tmp_path / f"empty.{kind}"
        create_store(path).close()
        fails(tmp_path, None, *relabel_args(path, "synthetic-velocity"), needles=("no episodes",))


def _replace_array(path: Path, name: str, data: np.ndarray) -> None:
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as f:
            del f[name]
            f.create_dataset(name, data=data)
    else:
        group = zarr.open_group(str(path), mode="r+")
        group.create_array(name, data=data, overwrite=True)


ENDS = np.arange(1, EPISODES + 1, dtype=np.int64) * STEPS
ENDS_CASES = [
    ("decreasing", np.concatenate([ENDS[:3], ENDS[4:5], ENDS[3:4], ENDS[5:]]), ["ends"]),
    ("zero-length-episode", np.concatenate([ENDS[:3], ENDS[2:3], ENDS[4:]]), ["ends", "3"]),
    ("zero-first-end", np.concatenate([[0], ENDS[1:]]), ["ends", "0"]),
    ("negative", np.concatenate([[-4], ENDS[1:]]), ["ends"]),
    ("beyond-rows", np.concatenate([ENDS[:-1], [ROWS + 5]]), [str(ROWS + 5)]),
    ("float-dtype", ENDS.astype(np.float64), ["ends", "float64"]),
    ("2-d", ENDS.reshape(-1, 2), ["ends", "1-D"]),
    ("more-episodes-than-rows", np.concatenate([ENDS, [ROWS + STEPS]]), ["rows"]),
]


@pytest.mark.parametrize("command", ["relabel", "inspect"])
@pytest.mark.parametrize(
    ("ends", "needles"), [c[1:] for c in ENDS_CASES], ids=[c[0] for c in ENDS_CASES]
)
def test_inconsistent_ends(store: Path, tmp_path: Path, command, ends, needles):
    _replace_array(store, "episodes/ends", ends)
    args = relabel_args(store, "synthetic-velocity") if command == "relabel" else [command, store]
    line = fails(tmp_path, None, *args, needles=tuple(needles))
    assert store.name in line


def test_episode_field_too_short(store: Path, tmp_path: Path):
    _replace_array(store, "episodes/task", np.zeros((EPISODES - 2, 1), np.float32))
    fails(tmp_path, None, *relabel_args(store, "synthetic-velocity"),
          needles=("episodes/task",))  # fmt: skip


def test_required_field_missing(store: Path, tmp_path: Path):
    if store.suffix == ".h5":
        with h5py.File(store, "r+") as f:
            del f["steps/actions"]
    else:
        shutil.rmtree(store / "steps" / "actions")
    fails(tmp_path, None, *relabel_args(store, "synthetic-velocity"), needles=("steps/actions",))
    fails(tmp_path, None, "inspect", store, needles=("steps/actions",))


def test_unsupported_format_version(store: Path, tmp_path: Path):
    if store.suffix == ".h5":
        with h5py.File(store, "r+") as f:
            f.attrs["hipi_offline_format"] = 99
    else:
        zarr.open_group(str(store), mode="r+").attrs["hipi_offline_format"] = 99
    fails(tmp_path, None, "inspect", store, needles=("99",))
    fails(tmp_path, None, *relabel_args(store, "synthetic-velocity"), needles=("99",))


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.01])
def test_truncated_hdf5(h5store: Path, tmp_path: Path, fraction: float):
    size = h5store.stat().st_size
    with open(h5store, "r+b") as f:
        f.truncate(int(size * fraction))
    for args in (relabel_args(h5store, "synthetic-velocity"), ["inspect", h5store]):
        fails(tmp_path, None, *args, needles=(h5store.name,))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize(
    "target",
    ["zarr.json", "steps/infos/speed/zarr.json", "steps/zarr.json", "steps/infos/speed/c/0",
     "episodes/ends/c/0", "episodes/ends/zarr.json"],
)  # fmt: skip
def test_truncated_zarr(templates, tmp_path: Path, target: str):
    path = clone(templates["zarr"], tmp_path / "data")
    _truncate(path / target)
    commands = [relabel_args(path, "synthetic-velocity")]
    if not target.startswith("steps/infos/speed/c"):  # inspect reads no step data
        commands.append(["inspect", path])
    for args in commands:
        fails(tmp_path, None, *args, needles=(path.name,))


def test_compressed_zarr_chunk_damaged(tmp_path: Path):
    path = tmp_path / "small.zarr"
    config = SyntheticConfig(episodes=EPISODES, steps=STEPS, compression="small")
    make_synthetic_store(path, config)
    seed_labels(path)
    chunk = path / "steps/infos/speed/c/0"
    chunk.write_bytes(chunk.read_bytes()[:10] + b"\x00garbage" * 8)
    fails(tmp_path, path, *relabel_args(path, "synthetic-velocity"),
          needles=("steps/infos/speed",))  # fmt: skip


def test_hdf5_compressed_chunk_damaged(tmp_path: Path):
    path = tmp_path / "small.h5"
    config = SyntheticConfig(episodes=EPISODES, steps=STEPS, compression="small")
    make_synthetic_store(path, config)
    seed_labels(path)
    with h5py.File(path, "r") as f:
        offset = f["steps/infos/speed"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 64)
    fails(tmp_path, path, *relabel_args(path, "synthetic-velocity"),
          needles=("steps/infos/speed",))  # fmt: skip


def test_group_is_an_array(tmp_path: Path):
    """A store whose ``steps`` (or ``episodes``) is an array, not a group."""
    for kind in KINDS:
        for group in ("steps", "episodes"):
            path = tmp_path / f"{group}-array.{kind}"
            if kind == "h5":
                with h5py.File(path, "w") as f:
                    f.attrs["hipi_offline_format"] = 1
                    f[group] = np.zeros(3)
                    if group == "steps":
                        f["episodes/ends"] = np.array([3])
            else:
                root = zarr.open_group(str(path), mode="w")
                root.attrs["hipi_offline_format"] = 1
                root.create_array(group, data=np.zeros(3))
            for args in (["inspect", path], relabel_args(path, "synthetic-velocity")):
                fails(tmp_path, None, *args, needles=(path.name, group))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_label_set(store: Path, tmp_path: Path, damage: str):
    """A damaged label set: inspect says so in one line; relabel --overwrite repairs it."""
    if store.suffix == ".h5":
        target = Path(str(store) + ".labels") / "hipi.h5"
    else:
        target = (store / "labels" / "hipi").resolve() / "entropy" / "c" / "0"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:5] + b"?" * 40)
    fails(tmp_path, None, "inspect", store, needles=("labels/hipi", "damaged"))
    fails(tmp_path, None, "relabel", store, "--tasks", "synthetic-velocity",
          needles=("labels/hipi", "exists"))  # fmt: skip
    result = cli(*relabel_args(store, "synthetic-velocity", "--candidates", 8))
    assert result.exit_code == 0, result.output
    assert "  hipi: method hipi" in cli("inspect", store).stdout


NOT_A_STORE = {
    "random-bytes.h5": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
    "random-bytes.hdf5": lambda p: p.write_bytes(np.random.default_rng(1).bytes(100)),
    "empty.h5": lambda p: p.write_bytes(b""),
    "text.h5": lambda p: p.write_text("hello\n"),
    "plain.h5": lambda p: h5py.File(p, "w").create_dataset("x", data=[1, 2]).file.close(),
    "folder.h5": lambda p: p.mkdir(),
    "no-zarr-json.zarr": lambda p: (p.mkdir(), (p / "data.bin").write_bytes(b"x")),
    "empty-dir.zarr": lambda p: p.mkdir(),
    "file.zarr": lambda p: p.write_bytes(b"\x00" * 10),
    "plain-group.zarr": lambda p: zarr.open_group(str(p), mode="w").create_array(
        "x", shape=(2,), dtype="i4"
    ),
    "garbage-json.zarr": lambda p: (p.mkdir(), (p / "zarr.json").write_text("{not json")),
    "array-root.zarr": lambda p: zarr.create_array(str(p), shape=(3,), dtype="f4"),
}


@pytest.mark.parametrize("command", ["relabel", "inspect"])
@pytest.mark.parametrize("name", list(NOT_A_STORE))
def test_not_a_store(tmp_path: Path, name: str, command: str):
    path = tmp_path / name
    NOT_A_STORE[name](path)
    args = relabel_args(path, "synthetic-velocity") if command == "relabel" else [command, path]
    fails(tmp_path, None, *args, needles=(name,))


@pytest.mark.parametrize("command", ["relabel", "inspect"])
@pytest.mark.parametrize("name", ["store.txt", "store", "store.h5.bak", "store.npz"])
def test_unknown_suffix(tmp_path: Path, name: str, command: str):
    path = tmp_path / name
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    args = relabel_args(path, "synthetic-velocity") if command == "relabel" else [command, path]
    fails(tmp_path, None, *args, needles=(name, "suffix"))


@pytest.mark.parametrize("command", ["relabel", "inspect"])
@pytest.mark.parametrize("name", ["missing.h5", "missing.zarr", "no/such/dir/x.h5"])
def test_missing_store(tmp_path: Path, name: str, command: str):
    path = tmp_path / name
    args = relabel_args(path, "synthetic-velocity") if command == "relabel" else [command, path]
    fails(tmp_path, None, *args, needles=(Path(name).name,))
    assert not path.exists()


# ------------------------------------------------------------------ options
def test_existing_label_set_needs_overwrite(store: Path, tmp_path: Path):
    args = ["relabel", store, "--tasks", "synthetic-velocity", "--device", "cpu"]
    fails(tmp_path, store, *args, needles=("hipi", "--overwrite"))
    fails(tmp_path, store, *args, "--name", "hipi", "--method", "random",
          needles=("hipi", "--overwrite"))  # fmt: skip


OPTION_CASES = [
    ("top-k-zero", ["--top-k", "0"], ["--top-k"]),
    ("top-k-negative", ["--top-k", "-3"], ["--top-k"]),
    ("top-k-word", ["--top-k", "many"], ["--top-k"]),
    ("top-k-float", ["--top-k", "1.5"], ["--top-k"]),
    ("top-k-empty", ["--top-k", ""], ["--top-k"]),
    ("method", ["--method", "magic"], ["--method", "magic"]),
    ("method-case", ["--method", "HIPI"], ["--method"]),
    ("device-tpu", ["--device", "tpu"], ["--device", "tpu"]),
    ("temperature-zero", ["--temperature", "0"], ["--temperature"]),
    ("temperature-negative", ["--temperature", "-1.5"], ["--temperature"]),
    ("temperature-nan", ["--temperature", "nan"], ["--temperature"]),
    ("temperature-inf", ["--temperature", "inf"], ["--temperature"]),
    ("chunk-steps-zero", ["--chunk-steps", "0"], ["--chunk-steps"]),
    ("chunk-steps-negative", ["--chunk-steps", "-5"], ["--chunk-steps"]),
    ("candidates-zero", ["--candidates", "0"], ["candidates"]),
    ("candidates-negative", ["--candidates", "-2"], ["candidates"]),
    ("name-path", ["--name", "../evil"], ["name"]),
    ("name-hidden", ["--name", ".hidden"], ["name"]),
    ("name-slash", ["--name", "a/b"], ["name"]),
]


@pytest.mark.parametrize("extra", [c[1] for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES])
def test_bad_option(store: Path, tmp_path: Path, extra: list[str]):
    needles = dict((tuple(c[1]), c[2]) for c in OPTION_CASES)[tuple(extra)]
    args = ["relabel", store, "--tasks", "synthetic-velocity", "--device", "cpu",
            "--overwrite", "--name", "hipi", *extra]  # fmt: skip
    fails(tmp_path, store, *args, needles=tuple(needles))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_gpu(store: Path, tmp_path: Path, device: str):
    args = relabel_args(store, "synthetic-velocity")
    args[args.index("--device") + 1] = device
    fails(tmp_path, store, *args, needles=("--device", "cuda"))


@pytest.mark.parametrize(
    "extra",
    [["--temperature", "hot"], ["--candidates", "many"], ["--chunk-steps", "1e3"],
     ["--seed", "x"], ["--bogus-option"]],
)  # fmt: skip
def test_unparsable_option(store: Path, tmp_path: Path, extra: list[str]):
    """Option types are checked by the command-line parser (a usage message, exit 2)."""
    args = relabel_args(store, "synthetic-velocity", *extra)
    result = check_unchanged(tmp_path, store, lambda: cli(*args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert extra[0] in result.stderr


def test_original_without_episode_tasks(tmp_path: Path):
    for kind in KINDS:
        path = build_store(tmp_path / f"notask.{kind}", lambda s, e: e.pop("task"))
        fails(tmp_path, path, *relabel_args(path, "synthetic-velocity", "--method", "original"),
              needles=("episodes/task",))  # fmt: skip


def test_original_task_columns_do_not_fit(store: Path, tmp_path: Path):
    fails(tmp_path, store, *relabel_args(store, "synthetic-goal", "--method", "original"),
          needles=("episodes/task",))  # fmt: skip


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_original_nonfinite_episode_tasks(tmp_path: Path, value: float):
    def spoil(steps: dict, episodes: dict) -> None:
        episodes["task"][4, 0] = value

    path = build_store(tmp_path / "nantask.h5", spoil)
    fails(tmp_path, path, *relabel_args(path, "synthetic-velocity", "--method", "original"),
          needles=("episodes/task",))  # fmt: skip


# ------------------------------------------------------------------ make-synthetic
def test_make_synthetic_refuses_existing(store: Path, tmp_path: Path):
    fails(tmp_path, store, "make-synthetic", store, "--episodes", 3, "--steps", 4,
          needles=(store.name, "exists"))  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [["--episodes", "0"], ["--steps", "0"], ["--episodes", "-4"], ["--compression", "zip"]],
)
@pytest.mark.parametrize("overwrite", [False, True])
def test_make_synthetic_bad_options(store: Path, tmp_path: Path, extra, overwrite):
    """Bad sizes or compression: no new store, and an existing one is not replaced."""
    flags = ["--overwrite"] if overwrite else []
    new = tmp_path / "data" / f"new{store.suffix}"
    fails(tmp_path, store, "make-synthetic", new, *extra, needles=(extra[0].strip("-"),))
    fails(tmp_path, store, "make-synthetic", store, *extra, *flags)
    assert not new.exists()


def test_make_synthetic_unknown_suffix(tmp_path: Path):
    fails(tmp_path, None, "make-synthetic", tmp_path / "out.csv", needles=("out.csv", "suffix"))
    assert list(tmp_path.iterdir()) == []
