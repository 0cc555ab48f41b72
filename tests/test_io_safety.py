"""Import and export never destroy data: overlapping and foreign destinations are
refused, malformed sources and damaged label sets are one error line, and a
destination that cannot hold the result is refused before anything is written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from disk import snapshot
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.io import common
from hipi_offline.ownership import marker_kind
from hipi_offline.store import LabelSet, open_store, write_label_set
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

PROGRESS = re.compile(r"^\s*[\w ]+:\s+\d+%\|")  # a tqdm progress-bar refresh
LENGTHS = [4, 3, 5]


# ---------------------------------------------------------------- helpers


def cli(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def error_line(result: Any, code: int = 2) -> str:
    """The exit code is ``code`` and stderr holds exactly one ``error:`` line."""
    detail = f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), detail
    assert result.exit_code == code, detail
    assert "Traceback" not in result.output, detail
    lines = [
        line for line in result.stderr.splitlines() if line.strip() and not PROGRESS.match(line)
    ]
    assert len(lines) == 1 and lines[0].startswith("error: "), detail
    return lines[0]


def refused(root: Path, *args: object, needles: tuple[str, ...] = (), code: int = 2) -> str:
    """Run the CLI: one error line with every needle, and nothing under ``root`` changed."""
    before = snapshot(root)
    line = error_line(cli(*args), code)
    after = snapshot(root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"changed on disk: {changed}"
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def succeeds(*args: object) -> Any:
    result = cli(*args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


# ---------------------------------------------------------------- sources
Edit = Callable[[h5py.File, dict[str, Any]], "str | None"]


def d4rl_source(folder: Path, edit: Edit | None = None) -> Path:
    rng = np.random.default_rng(0)
    total = sum(LENGTHS)
    terminals = np.zeros(total, bool)
    terminals[np.cumsum(LENGTHS) - 1] = True
    path = folder / "d4rl.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = rng.standard_normal((total, 3)).astype(np.float32)
        f["actions"] = rng.standard_normal((total, 2)).astype(np.float32)
        f["rewards"] = rng.standard_normal(total)
        f["terminals"] = terminals
        f["timeouts"] = np.zeros(total, bool)
        f["metadata/algorithm"] = "SAC"
        f.attrs["note"] = "fine"
        if edit is not None:
            edit(f, {})
    return path


def robomimic_source(folder: Path, edit: Edit | None = None) -> Path:
    rng = np.random.default_rng(1)
    path = folder / "robomimic.hdf5"
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_kwargs": {}})
        data.attrs["total"] = sum(LENGTHS)
        for n, length in enumerate(LENGTHS):
            demo = data.create_group(f"demo_{n}")
            demo["obs/pos"] = rng.standard_normal((length, 3))
            demo["actions"] = rng.standard_normal((length, 2))
            demo["rewards"] = rng.standard_normal(length)
            demo["dones"] = np.arange(length) == length - 1
            demo.attrs["num_samples"] = length
        f["mask/train"] = np.array([b"demo_0", b"demo_2"])
        if edit is not None:
            edit(f, {})
    return path


def minari_source(folder: Path, edit: Edit | None = None) -> Path:
    rng = np.random.default_rng(2)
    dataset = folder / "minari-ds"
    (dataset / "data").mkdir(parents=True)
    spec = json.dumps({"id": "Pendulum-v1", "max_episode_steps": 200})
    meta: dict[str, Any] = {
        "dataset_id": "test/pendulum-v0",
        "minari_version": "0.5.0",
        "data_format": "hdf5",
        "env_spec": spec,
        "jpeg_encoding": False,
        "total_steps": sum(LENGTHS),
    }
    with h5py.File(dataset / "data" / "main_data.hdf5", "w") as f:
        for n, length in enumerate(LENGTHS):
            episode = f.create_group(f"episode_{n}")
            episode["observations"] = rng.standard_normal((length + 1, 3))
            episode["actions"] = rng.standard_normal((length, 1))
            episode["rewards"] = rng.standard_normal(length)
            episode["terminations"] = np.zeros(length, bool)
            episode["truncations"] = np.arange(length) == length - 1
            episode["infos/speed"] = rng.standard_normal(length + 1)
            episode.attrs["id"] = n
            episode.attrs["seed"] = 10 + n
            episode.attrs["total_steps"] = length
        text = edit(f, meta) if edit is not None else None
    (dataset / "data" / "metadata.json").write_text(text or json.dumps(meta))
    return dataset


SOURCES = {"d4rl": d4rl_source, "robomimic": robomimic_source, "minari": minari_source}


def attr(path: str, key: str, value: Any) -> Edit:
    def edit(f: h5py.File, meta: dict[str, Any]) -> None:
        target = f[path]
        if key in target.attrs:
            del target.attrs[key]
        target.attrs[key] = value(f) if callable(value) else value

    return edit


def replace(path: str, value: Any) -> Edit:
    def edit(f: h5py.File, meta: dict[str, Any]) -> None:
        del f[path]
        f[path] = value(f) if callable(value) else value

    return edit


def regroup(path: str, leaf: str = "x", rows: int = sum(LENGTHS)) -> Edit:
    """Replace the dataset at ``path`` by a group holding one dataset ``leaf``."""

    def edit(f: h5py.File, meta: dict[str, Any]) -> None:
        del f[path]
        f[f"{path}/{leaf}"] = np.zeros(rows)

    return edit


def add(path: str, value: Any) -> Edit:
    def edit(f: h5py.File, meta: dict[str, Any]) -> None:
        f[path] = value

    return edit


def meta(**values: Any) -> Edit:
    def edit(f: h5py.File, meta: dict[str, Any]) -> None:
        meta.update(values)

    return edit


def meta_text(text: str) -> Edit:
    return lambda f, meta: text


DEEP = "[" * 100_000 + "]" * 100_000
MALFORMED: list[tuple[str, str, Edit, str]] = [
    # d4rl
    ("d4rl", "complex-root-attr", attr("/", "note", 1 + 2j), "note"),
    ("d4rl", "empty-root-attr", attr("/", "note", h5py.Empty("f")), "note"),
    ("d4rl", "reference-root-attr", attr("/", "note", lambda f: f.ref), "note"),
    ("d4rl", "complex-metadata", replace("metadata/algorithm", np.complex64(1j)), "algorithm"),
    ("d4rl", "huge-env-name", add("metadata/env_name", "x" * 20_000), "env_name"),
    ("d4rl", "int-env-name", add("metadata/env_name", 7), "env_name"),
    ("d4rl", "terminals-group", regroup("terminals"), "terminals"),
    ("d4rl", "dangling-link", add("infos", h5py.SoftLink("/nowhere")), "infos"),
    ("d4rl", "external-link", replace("rewards", h5py.ExternalLink("gone.h5", "/r")), "rewards"),
    # robomimic
    ("robomimic", "env-args-not-json", attr("data", "env_args", "{not json"), "env_args"),
    ("robomimic", "env-args-list", attr("data", "env_args", "[1, 2]"), "env_args"),
    ("robomimic", "env-args-int", attr("data", "env_args", 5), "env_args"),
    ("robomimic", "env-args-deep", attr("data", "env_args", DEEP), "env_args"),
    ("robomimic", "env-name-dict", attr("data", "env_args", '{"env_name": {"a": 1}}'), "env_name"),
    ("robomimic", "env-args-huge", attr("data", "env_args", "{}" + " " * (2 << 20)), "env_args"),
    ("robomimic", "total-text", attr("data", "total", "abc"), "total"),
    ("robomimic", "total-negative", attr("data", "total", -5), "total"),
    ("robomimic", "total-huge", attr("data", "total", 1e300), "total"),
    ("robomimic", "total-nan", attr("data", "total", np.nan), "total"),
    ("robomimic", "complex-data-attr", attr("data", "extra", 2j), "extra"),
    ("robomimic", "num-samples-text", attr("data/demo_1", "num_samples", "x"), "num_samples"),
    ("robomimic", "num-samples-array", attr("data/demo_1", "num_samples", [1, 2]), "num_samples"),
    ("robomimic", "data-not-group", replace("data", np.zeros(3)), "data"),
    ("robomimic", "demo-not-group", replace("data/demo_1", np.zeros(3)), "demo_1"),
    ("robomimic", "actions-group", regroup("data/demo_0/actions", rows=LENGTHS[0]), "actions"),
    ("robomimic", "mask-not-utf8", replace("mask/train", np.array([b"\xff\xfe"])), "mask"),
    # minari
    ("minari", "metadata-not-object", meta_text("[1, 2]"), "metadata.json"),
    ("minari", "metadata-not-json", meta_text("{oops"), "metadata.json"),
    ("minari", "metadata-deep", meta_text(DEEP), "metadata.json"),
    ("minari", "jpeg-not-bool", meta(jpeg_encoding="yes"), "jpeg_encoding"),
    ("minari", "space-not-json", meta(jpeg_encoding=True, action_space="{bad"), "action_space"),
    ("minari", "space-not-text", meta(jpeg_encoding=True, action_space=[1]), "action_space"),
    ("minari", "dataset-id-dict", meta(dataset_id={"a": 1}), "dataset_id"),
    ("minari", "env-spec-list", meta(env_spec=[1, 2]), "env_spec"),
    ("minari", "version-int", meta(minari_version=5), "minari_version"),
    ("minari", "env-spec-huge", meta(env_spec="x" * (2 << 20)), "env_spec"),
    ("minari", "seed-text", attr("episode_1", "seed", "abc"), "seed"),
    ("minari", "seed-float", attr("episode_1", "seed", 1.5), "seed"),
    ("minari", "seed-complex", attr("episode_1", "seed", 1j), "seed"),
    ("minari", "root-attr-complex", attr("/", "author", 3j), "author"),
    ("minari", "episode-not-group", replace("episode_2", np.zeros(4)), "episode_2"),
]


@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_clean_sources_import(tmp_path: Path, fmt: str) -> None:
    """The builders below make valid sources: only the malformation fails."""
    src = SOURCES[fmt](tmp_path)
    succeeds("import", fmt, src, tmp_path / "out.h5")
    with open_store(tmp_path / "out.h5") as store:
        assert store.lengths.tolist() == LENGTHS


@pytest.mark.parametrize(
    ("fmt", "edit", "needle"),
    [pytest.param(fmt, edit, needle, id=f"{fmt}-{name}") for fmt, name, edit, needle in MALFORMED],
)
def test_malformed_source_is_one_line(
    tmp_path: Path, fmt: str, edit: Edit, needle: str | None, store_suffix: str
) -> None:
    src = SOURCES[fmt](tmp_path, edit)
    line = refused(tmp_path, "import", fmt, src, tmp_path / f"out{store_suffix}")
    assert needle is None or needle in line
    assert str(src.name) in line or "metadata.json" in line or "main_data" in line


@pytest.mark.parametrize(
    "space",
    [{"type": "Box", "shape": 5}, {"type": "Box", "shape": [40, 40], "low": "a"}, [1, 2], None],
)
def test_odd_spaces_are_not_images(tmp_path: Path, space: Any) -> None:
    """Minari's JPEG test reads any space JSON without failing (it is not an image)."""
    src = minari_source(tmp_path, meta(jpeg_encoding=True, observation_space=json.dumps(space)))
    succeeds("import", "minari", src, tmp_path / "out.zarr")


# ---------------------------------------------------------------- overlapping destinations
def labeled_store(path: Path, episodes: int = 4) -> Path:
    make_synthetic_store(path, SyntheticConfig(episodes=episodes, steps=6))
    rng = np.random.default_rng(3)
    labels = LabelSet(
        name="hipi",
        candidates=rng.uniform(0, 3, (5, 1)).astype(np.float32),
        log_z=np.zeros(5),
        topk_index=np.stack([rng.permutation(5)[:2] for _ in range(episodes)]),
        topk_logprob=np.log(np.full((episodes, 2), 0.3, np.float32)),
        entropy=np.ones(episodes, np.float32),
        coverage=np.full(5, 0.2),
        attrs={"method": "hipi"},
    )
    write_label_set(path, labels)
    return path


def test_export_into_the_store_folder_is_refused(tmp_path: Path) -> None:
    """The issue's case: `export minari proj/x.h5 proj --overwrite` deleted proj/."""
    proj = tmp_path / "proj"
    proj.mkdir()
    store = labeled_store(proj / "x.h5")
    (proj / "notes.txt").write_text("mine")
    refused(tmp_path, "export", "minari", store, proj, "--overwrite", needles=("contains",))
    labels = Path(f"{store}.labels")
    for dest in (store, labels, labels / "out", proj / "x.h5" / "sub"):
        refused(tmp_path, "export", "minari", store, dest, "--overwrite")
    zarr = labeled_store(tmp_path / "y.zarr")
    for dest in (zarr, zarr / "labels", tmp_path):
        refused(tmp_path, "export", "minari", zarr, dest, "--overwrite")
    os.symlink(proj, tmp_path / "alias")
    refused(tmp_path, "export", "minari", store, tmp_path / "alias", "--overwrite")
    inside = tmp_path / "alias" / "x.h5.labels" / "x-v0"
    refused(tmp_path, "export", "minari", store, inside, needles=("inside",))


def test_export_overwrite_replaces_only_an_earlier_export(tmp_path: Path) -> None:
    store = labeled_store(tmp_path / "s.h5")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    line = refused(tmp_path, "export", "minari", store, foreign, "--overwrite")
    assert "thesis.tex" in line and "refuses" in line
    (tmp_path / "file").write_text("x")
    refused(tmp_path, "export", "minari", store, tmp_path / "file", "--overwrite")
    succeeds("export", "minari", store, tmp_path / "ex")
    assert marker_kind(tmp_path / "ex") == "minari-export"
    os.symlink(tmp_path / "ex", tmp_path / "link")
    refused(
        tmp_path, "export", "minari", store, tmp_path / "link", "--overwrite", needles=("link",)
    )
    refused(tmp_path, "export", "minari", store, tmp_path / "link", needles=("link",))
    refused(tmp_path, "export", "minari", store, tmp_path / "ex", needles=("--overwrite",))
    (tmp_path / "ex" / "data" / "old.txt").write_text("stale")
    succeeds("export", "minari", store, tmp_path / "ex", "--overwrite")
    assert not (tmp_path / "ex" / "data" / "old.txt").exists()
    assert marker_kind(tmp_path / "ex") == "minari-export"


def test_import_onto_its_own_source_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The issue's case: `import d4rl a.hdf5 a.hdf5 --overwrite` replaced its own source."""
    src = d4rl_source(tmp_path)
    (tmp_path / "dir").mkdir()
    os.symlink(src, tmp_path / "link.hdf5")
    monkeypatch.chdir(tmp_path)
    for dest in (src, "./d4rl.hdf5", "dir/../d4rl.hdf5", tmp_path / "link.hdf5"):
        refused(tmp_path, "import", "d4rl", src, dest, "--overwrite")
        refused(tmp_path, "import", "d4rl", "./d4rl.hdf5", dest, "--overwrite")
    (tmp_path / "m.zarr").mkdir()
    minari = minari_source(tmp_path / "m.zarr")
    main = minari / "data" / "main_data.hdf5"
    for dest in (main, tmp_path / "m.zarr", minari / "data" / "metadata.json.zarr" / ".."):
        refused(tmp_path, "import", "minari", minari, dest, "--overwrite")


def test_import_overwrite_replaces_only_a_store(tmp_path: Path) -> None:
    src = d4rl_source(tmp_path)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["precious"] = np.arange(3)
    line = refused(tmp_path, "import", "d4rl", src, tmp_path / "plain.h5", "--overwrite")
    assert "not a hipi-offline store" in line
    folder = tmp_path / "folder.zarr"
    folder.mkdir()
    (folder / "mine.txt").write_text("x")
    line = refused(tmp_path, "import", "d4rl", src, folder, "--overwrite")
    assert "mine.txt" in line
    os.symlink(tmp_path / "plain.h5", tmp_path / "link.h5")
    refused(tmp_path, "import", "d4rl", src, tmp_path / "link.h5", "--overwrite", needles=("link",))
    os.symlink(tmp_path / "missing.h5", tmp_path / "dangling.h5")
    refused(tmp_path, "import", "d4rl", src, tmp_path / "dangling.h5", needles=("link",))
    store = labeled_store(tmp_path / "s.h5")
    refused(tmp_path, "import", "d4rl", src, store, needles=("--overwrite",))
    succeeds("import", "d4rl", src, store, "--overwrite")
    with open_store(store) as opened:
        assert opened.attrs["source_format"] == "d4rl"


def test_import_keeps_a_foreign_label_folder(tmp_path: Path) -> None:
    """Committing an HDF5 store deletes X.h5.labels/: never one that is not its own."""
    src = d4rl_source(tmp_path)
    stray = tmp_path / "new.h5.labels"
    stray.mkdir()
    (stray / "keep.txt").write_text("x")
    for extra in ((), ("--overwrite",)):
        refused(tmp_path, "import", "d4rl", src, tmp_path / "new.h5", *extra, needles=("labels",))
    store = labeled_store(tmp_path / "s.h5")
    inner = Path(f"{store}.labels") / "src.hdf5"
    shutil.copy(src, inner)
    refused(tmp_path, "import", "d4rl", inner, store, "--overwrite", needles=("source",))


# ---------------------------------------------------------------- damaged label sets
def spoil_labels(store: Path, how: str) -> None:
    path = Path(f"{store}.labels") / "hipi.h5"
    if how in ("truncated", "garbage"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if how == "truncated" else os.urandom(len(data)))
        return
    with h5py.File(path, "a") as f:
        if how == "missing-topk":
            del f["topk_index"]
        elif how == "index-out-of-range":
            f["topk_index"][0, 0] = 99
        elif how == "negative-index":
            f["topk_index"][1, 1] = -1
        elif how == "float-index":
            index = f["topk_index"][()]
            del f["topk_index"]
            f["topk_index"] = index.astype(np.float64)
        elif how == "candidates-1d":
            del f["candidates"]
            f["candidates"] = np.zeros(5, np.float32)
        elif how == "entropy-short":
            del f["entropy"]
            f["entropy"] = np.zeros(2, np.float32)
        elif how == "logprob-shape":
            del f["topk_logprob"]
            f["topk_logprob"] = np.zeros((4, 3), np.float32)
        elif how == "complex-attr":
            f.attrs["method"] = 1j
        elif how == "text-entropy":
            del f["entropy"]
            f["entropy"] = np.array([b"a"] * 4)


SPOILS = [
    "truncated",
    "garbage",
    "missing-topk",
    "index-out-of-range",
    "negative-index",
    "float-index",
    "candidates-1d",
    "entropy-short",
    "logprob-shape",
    "complex-attr",
    "text-entropy",
]


@pytest.mark.parametrize("how", SPOILS)
def test_export_of_damaged_labels_is_one_line(tmp_path: Path, how: str) -> None:
    store = labeled_store(tmp_path / "s.h5")
    spoil_labels(store, how)
    refused(tmp_path, "export", "minari", store, tmp_path / "out" / "ds", needles=("hipi",))


# ---------------------------------------------------------------- free space, leftovers
def fake_free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    real = shutil.disk_usage

    def disk_usage(path: Any) -> Any:
        usage = real(path)
        return type(usage)(usage.total, usage.used, free)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_import_refuses_when_the_disk_is_too_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    src = SOURCES[fmt](tmp_path)
    fake_free(monkeypatch, 1 << 20)
    line = refused(tmp_path, "import", fmt, src, tmp_path / "new" / "o.zarr", code=1)
    assert "free" in line and "o.zarr" in line
    fake_free(monkeypatch, 1 << 30)
    succeeds("import", fmt, src, tmp_path / "new" / "o.zarr")


@pytest.mark.slow
def test_free_space_prediction_counts_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The prediction grows with the source: a source whose arrays alone exceed
    what is free is refused although the fixed margin would fit."""
    rng = np.random.default_rng(5)
    src = tmp_path / "big.hdf5"
    with h5py.File(src, "w") as f:
        f["observations"] = rng.standard_normal((40_000, 50))  # 16 MB
        f["actions"] = rng.standard_normal((40_000, 2))
        f["terminals"] = np.arange(40_000) % 100 == 99
    fake_free(monkeypatch, common.FREE_SPACE_MARGIN + 8_000_000)
    refused(tmp_path, "import", "d4rl", src, tmp_path / "o.h5", code=1, needles=("MiB",))
    store = labeled_store(tmp_path / "s.zarr", episodes=4)
    with open_store(store) as opened:
        size = sum(
            opened.field_info(name).dtype.itemsize * int(np.prod(opened.field_info(name).shape))
            for name in opened.step_fields()
        )
    fake_free(monkeypatch, common.FREE_SPACE_MARGIN + size // 2)
    refused(tmp_path, "export", "minari", store, tmp_path / "ex", code=1, needles=("free",))
    fake_free(monkeypatch, common.FREE_SPACE_MARGIN + 2 * size + (1 << 16))
    succeeds("export", "minari", store, tmp_path / "ex")


def test_failed_import_removes_the_folders_it_made(tmp_path: Path) -> None:
    """Damage found late (the last demo) leaves neither a store nor new parent folders."""

    def spoil(f: h5py.File, meta: dict[str, Any]) -> None:
        rewards = f["data/demo_2/rewards"][:-1]
        del f["data/demo_2/rewards"]
        f["data/demo_2/rewards"] = rewards

    src = robomimic_source(tmp_path, spoil)
    refused(
        tmp_path, "import", "robomimic", src, tmp_path / "a" / "b" / "o.h5", needles=("demo_2",)
    )


@pytest.mark.slow
def test_fifo_source_is_refused_without_hanging(tmp_path: Path) -> None:
    """A FIFO as the source is an error, not a read that blocks forever."""
    fifo = tmp_path / "pipe.hdf5"
    os.mkfifo(fifo)
    exe = shutil.which("hipi-offline")
    command = [exe] if exe else [sys.executable, "-c", "from cli.main import main; main()"]
    done = subprocess.run(
        [*command, "import", "d4rl", str(fifo), str(tmp_path / "o.h5")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("error:") == 1 and "special file" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.hdf5"]


# ---------------------------------------------------------------- kill -9
CHILD = """
import sys
from pathlib import Path
import hipi_offline.io.common as common
import hipi_offline.io.minari_export as export
from hipi_offline.io import export_minari, import_d4rl

def pause(original):
    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        print("written", flush=True)
        sys.stdin.readline()  # blocks until the test kills us
        return result
    return wrapped

what, src, dest = sys.argv[1:4]
if what == "import":
    common.TrajectoryStore.append_episodes = pause(common.TrajectoryStore.append_episodes)
    import_d4rl(src, dest, overwrite=True, batch_steps=4)
else:
    export._write_episode = pause(export._write_episode)
    export_minari(src, dest, overwrite=True)
"""


def kill_after_first_write(what: str, src: Path, dest: Path) -> None:
    """Run an import/export in a child, kill -9 it once it has written data."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, what, str(src), str(dest)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "written"  # blocks until the first write
    finally:
        child.kill()
        child.wait(timeout=60)


def visible(folder: Path) -> set[str]:
    return {name for name in os.listdir(folder) if not name.startswith(".")}


@pytest.mark.parametrize("replace_existing", [False, True])
@pytest.mark.slow
def test_killed_import_and_export_leave_nothing_that_blocks_a_rerun(
    tmp_path: Path, replace_existing: bool
) -> None:
    """A kill -9 after data was written leaves no visible destination (or the old
    one intact); the rerun succeeds and removes the hidden temporaries."""
    src = d4rl_source(tmp_path)
    labeled = labeled_store(tmp_path / "s.h5")
    store, exported = tmp_path / "o.h5", tmp_path / "ex"
    if replace_existing:
        succeeds("import", "d4rl", src, store)
        succeeds("export", "minari", labeled, exported)
    names = visible(tmp_path)
    kill_after_first_write("import", src, store)
    kill_after_first_write("export", labeled, exported)
    assert visible(tmp_path) == names
    if replace_existing:
        with open_store(store) as opened:
            assert opened.lengths.tolist() == LENGTHS
        assert marker_kind(exported) == "minari-export"
    succeeds("import", "d4rl", src, store, "--overwrite")
    succeeds("export", "minari", labeled, exported, "--overwrite")
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")], "leftovers"
