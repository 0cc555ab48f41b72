"""train-bc and load_policy against hostile input: folders it did not make, options and
sizes that cannot work, crafted checkpoints and run descriptions, failing disks, and
resumed runs whose metrics must equal the uninterrupted run's."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import two_task_labels, two_task_store
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from typer.testing import CliRunner

import hipi_offline.bc.checkpoint as checkpoint_module
import hipi_offline.bc.loop as loop_module
import hipi_offline.bc.train as train_module
from cli.main import app
from hipi_offline.bc import BCConfig, load_policy, train_bc
from hipi_offline.bc.policy import list_checkpoints
from hipi_offline.errors import InputError, ResourceError
from hipi_offline.ownership import MARKER_NAME, marker_kind, write_marker
from hipi_offline.store import write_label_set

REPO = Path(__file__).resolve().parents[1]
EPISODES, STEPS = 8, 10
SMALL = dict(
    hidden=(16, 16),
    batch_size=16,
    lr=3e-3,
    warmup_steps=5,
    log_every=10,
    checkpoint_every=20,
    device="cpu",
    threads=1,
    progress=False,
)
SMALL_ARGS = [
    "--labels", "original", "--hidden", "16,16", "--batch-size", "16", "--warmup-steps", "5",
    "--log-every", "10", "--checkpoint-every", "20", "--device", "cpu", "--threads", "1",
    "--lr", "0.003", "--no-progress",
]  # fmt: skip


def make_store(path: Path) -> Path:
    """Two tasks (actions +-0.5), a continuous label set 'original' on them."""
    task = two_task_store(path, EPISODES, STEPS, seed=0)
    labels = two_task_labels(task, discrete=False, name="original")
    del labels.attrs["task_names"]  # train_bc takes a continuous label set without one
    write_label_set(path, labels)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("safety") / "two.h5")


@pytest.fixture(scope="module")
def finished(store: Path) -> Path:
    """A finished 40-step run (checkpoints at 20 and 40); copy it before changing it."""
    out = store.parent / "finished"
    train_bc(store, BCConfig(out=out, labels="original", steps=40, **SMALL))
    return out


def cli(*args: object, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    detail = f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert result.exit_code == code, detail
    assert "Traceback" not in result.output, detail
    if code:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and len(result.stderr.splitlines()) == 1, detail
    return result


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` with its content (None for folders)."""
    found: dict[str, bytes | None] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}".encode()
        else:
            found[rel] = None if path.is_dir() else path.read_bytes()
    return found


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# ---------------------------------------------------------------- what --overwrite may touch
def test_new_run_folder_carries_the_marker(finished: Path):
    assert marker_kind(finished) == "bc-run"


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_folder_with_a_config_json_is_not_taken_for_a_run(store: Path, tmp_path: Path, flag: str):
    other = tmp_path / "other-tool"
    other.mkdir()
    (other / "config.json").write_text('{"learning_rate": 0.1}')
    (other / "metrics.csv").write_text("epoch,acc\n1,0.5\n")
    (other / "checkpoints").mkdir()
    (other / "checkpoints" / "model.pt").write_bytes(b"weights")
    before = snapshot(other)
    result = cli("train-bc", store, "--out", other, "--steps", 5, *SMALL_ARGS, flag, code=2)
    assert "not a bc-run made by hipi-offline (holds checkpoints, config.json" in result.stderr
    assert snapshot(other) == before


def test_other_kinds_links_and_files_are_refused(store: Path, tmp_path: Path):
    exported = tmp_path / "exported"
    exported.mkdir()
    write_marker(exported, "minari-export")
    (exported / "config.json").write_text("{}")
    link = tmp_path / "link"
    link.symlink_to(exported, target_is_directory=True)
    plain = tmp_path / "file.txt"
    plain.write_text("mine")
    for out, needle in (
        (exported, "a minari-export folder"),
        (link, "symbolic link"),
        (plain, "is a file"),
    ):
        before = snapshot(tmp_path)
        result = cli(
            "train-bc", store, "--out", out, "--steps", 5, *SMALL_ARGS, "--overwrite", code=2
        )
        assert needle in result.stderr
        assert snapshot(tmp_path) == before


def test_run_folder_inside_or_around_the_store_is_refused(store: Path, tmp_path: Path):
    inside = store / "run"
    result = cli("train-bc", store, "--out", inside, "--steps", 5, *SMALL_ARGS, code=2)
    assert "lies inside the source" in result.stderr
    holder = tmp_path / "holder"
    holder.mkdir()
    copy = shutil.copy(store, holder / "s.h5")
    result = cli("train-bc", copy, "--out", holder, "--steps", 5, *SMALL_ARGS, code=2)
    assert "contains the source" in result.stderr
    assert sorted(p.name for p in holder.iterdir()) == ["s.h5"]


def test_crafted_run_folder_with_linked_entries_is_refused(finished: Path, store: Path, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "step_0000020.safetensors").write_bytes(b"precious")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(victim, target_is_directory=True)
    result = cli("train-bc", store, "--out", run, "--steps", 40, *SMALL_ARGS, "--overwrite", code=2)
    assert "checkpoints: is a symbolic link" in result.stderr
    assert (victim / "step_0000020.safetensors").read_bytes() == b"precious"


def test_run_of_an_earlier_version_is_accepted_and_marked(finished: Path, store: Path, tmp_path):
    """A run folder without the marker, holding only a run's own entries and a
    config.json of the run format, is a run of an earlier version."""
    run = copy_run(finished, tmp_path / "old")
    (run / MARKER_NAME).unlink()
    result = cli("train-bc", store, "--out", run, "--steps", 40, *SMALL_ARGS, "--resume")
    assert "already complete" in result.stdout
    assert marker_kind(run) == "bc-run"
    # with a foreign entry it is no longer taken for a run
    other = copy_run(finished, tmp_path / "old-with-notes")
    (other / MARKER_NAME).unlink()
    (other / "notes.txt").write_text("mine")
    cli("train-bc", store, "--out", other, "--steps", 40, *SMALL_ARGS, "--overwrite", code=2)
    assert (other / "notes.txt").read_text() == "mine" and (other / "config.json").exists()


def test_overwrite_keeps_foreign_files_in_a_marked_run(finished: Path, store: Path, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    cli("train-bc", store, "--out", run, "--steps", 20, *SMALL_ARGS, "--overwrite")
    assert (run / "notes.txt").read_text() == "mine"
    assert [s for s, _ in list_checkpoints(run)] == [20]


# ---------------------------------------------------------------- options before any write
@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**70)], "--seed"),
        (["--seed", str(2**63)], "--seed"),
        (["--hidden", "1000000000,1000000000"], "--hidden"),
        (["--hidden", ",".join(["4"] * 300)], "--hidden"),
        (["--hidden", "１６"], "--hidden"),
        (["--batch-size", str(10**12)], "--batch-size"),
        (["--batch-size", str(2**70)], "--batch-size"),
        (["--threads", "100000"], "--threads"),
        (["--log-every", "0"], "--log-every"),
        (["--checkpoint-every", str(2**64)], "--checkpoint-every"),
        (["--steps", str(2**64)], "--steps"),
    ],
)
def test_bad_options_write_nothing(store: Path, tmp_path: Path, extra: list[str], needle: str):
    out = tmp_path / "parent" / "run"
    result = cli("train-bc", store, "--out", out, "--steps", 5, *SMALL_ARGS, *extra, code=2)
    assert f"error: {needle}" in result.stderr
    assert not (tmp_path / "parent").exists()


def test_refused_seed_leaves_nothing_that_blocks_the_corrected_run(store: Path, tmp_path: Path):
    out = tmp_path / "run"
    cli("train-bc", store, "--out", out, "--steps", 5, *SMALL_ARGS, "--seed", "-1", code=2)
    assert not out.exists()
    cli("train-bc", store, "--out", out, "--steps", 5, *SMALL_ARGS, "--seed", "1")
    # a leftover of the earlier version (config.json, no checkpoint) does not block either
    (out / MARKER_NAME).unlink()
    shutil.rmtree(out / "checkpoints")
    (out / "metrics.csv").unlink()
    cli("train-bc", store, "--out", out, "--steps", 5, *SMALL_ARGS, "--seed", "2")
    assert [s for s, _ in list_checkpoints(out)] == [5]


def test_run_killed_before_its_first_checkpoint_restarts_without_resume(
    finished: Path, store: Path, tmp_path: Path
):
    run = copy_run(finished, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    cli("train-bc", store, "--out", run, "--steps", 40, *SMALL_ARGS)
    assert [s for s, _ in list_checkpoints(run)] == [20, 40]


class _Statvfs:
    """os.statvfs's answer for a file system that is read-only or nearly full."""

    def __init__(self, real: os.statvfs_result, *, rdonly: bool = False, free: int | None = None):
        self.f_flag = real.f_flag | (os.ST_RDONLY if rdonly else 0)
        self.f_frsize = 1
        self.f_bavail = real.f_bavail * real.f_frsize if free is None else free
        self.f_blocks = real.f_blocks * real.f_frsize
        self.f_bfree = self.f_bavail


@pytest.mark.parametrize(
    ("fault", "needle"),
    [({"rdonly": True}, "read-only file system"), ({"free": 4096}, "not enough free space")],
)
def test_unwritable_or_full_destination_is_found_before_loading_data(
    store: Path, tmp_path: Path, monkeypatch, fault: dict, needle: str
):
    real = os.statvfs

    def statvfs(path):
        return _Statvfs(real(path), **fault)

    def no_loading(*args, **kwargs):
        raise AssertionError("the data was loaded before the destination was checked")

    monkeypatch.setattr(os, "statvfs", statvfs)
    monkeypatch.setattr(train_module, "load_working_set", no_loading)
    out = tmp_path / "parent" / "run"
    with pytest.raises(ResourceError, match=needle):
        train_bc(store, BCConfig(out=out, labels="original", steps=5, **SMALL))
    assert not (tmp_path / "parent").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_folder_without_write_permission_is_refused_before_training(store: Path, tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = cli("train-bc", store, "--out", locked / "run", "--steps", 5, *SMALL_ARGS, code=1)
    finally:
        locked.chmod(0o755)
    assert "not writable" in result.stderr and not (locked / "run").exists()


def test_network_too_large_for_memory_is_refused(store: Path, tmp_path: Path):
    """Sizes that pass the option checks but not the memory estimate (one wide layer)."""
    with pytest.raises(InputError, match=r"--hidden: a network of [\d,]+ parameters"):
        train_bc(
            store,
            BCConfig(
                out=tmp_path / "run", labels="original", steps=5, **{**SMALL, "hidden": (2**50,)}
            ),
        )
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- crafted checkpoints
def _recraft(path: Path, *, metadata: dict | None = None, tensors: dict | None = None) -> None:
    """Rewrite a checkpoint with changed metadata entries or tensors."""
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    meta = dict(header["__metadata__"])
    stored = load_bytes(data)
    for key, value in (metadata or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    for key, value in (tensors or {}).items():
        if value is None:
            stored.pop(key)
        else:
            stored[key] = value
    path.write_bytes(save_bytes(stored, metadata=meta))


def _network_change(finished: Path, **network) -> str:
    run = json.loads((finished / "config.json").read_text())
    run["network"] = {**run["network"], **network}
    return json.dumps(run)


CRAFTED_METADATA = {
    "run-not-json": {"run": "{not json"},
    "run-a-list": {"run": "[1, 2]"},
    "run-nested-deep": {"run": "[" * 100_000 + "]" * 100_000},
    "run-missing": {"run": None},
    "step-text": {"step": "abc"},
    "step-negative": {"step": "-5"},
    "step-huge": {"step": "9" * 5000},
    "format-missing": {"format": None},
    "format-other": {"format": "something/2"},
}


def _crafted_network(finished: Path) -> dict[str, dict[str, str]]:
    run = json.loads((finished / "config.json").read_text())
    no_network = {k: v for k, v in run.items() if k != "network"}
    bad_dims = {**run, "dims": {"obs_shape": [1000]}}
    bad_labels = {**run, "labels": "original"}
    bad_names = {**run, "labels": {**run["labels"], "task_names": [1, 2]}}
    return {
        "network-missing": {"run": json.dumps(no_network)},
        "hidden-text": {"run": _network_change(finished, hidden="abc")},
        "hidden-absurd": {"run": _network_change(finished, hidden=[10**12, 10**12])},
        "hidden-float": {"run": _network_change(finished, hidden=[16.5, 16])},
        "obs-dim-negative": {"run": _network_change(finished, obs_dim=-3)},
        "activation-unknown": {"run": _network_change(finished, activation="foo")},
        "head-unknown": {"run": _network_change(finished, head="mixture")},
        "task-dim-text": {"run": _network_change(finished, task_dim="1")},
        "dims-mismatch": {"run": json.dumps(bad_dims)},
        "labels-text": {"run": json.dumps(bad_labels)},
        "task-names-numbers": {"run": json.dumps(bad_names)},
    }


def test_crafted_checkpoint_metadata_is_one_input_error(finished: Path, tmp_path: Path):
    cases = {**CRAFTED_METADATA, **_crafted_network(finished)}
    (_, last), *_ = reversed(list_checkpoints(finished))
    for name, metadata in cases.items():
        path = tmp_path / f"{name}.safetensors"
        shutil.copy(last, path)
        _recraft(path, metadata=metadata)
        with pytest.raises(InputError) as info:
            load_policy(path, device="cpu")
        message = str(info.value)
        assert str(path) in message and "\n" not in message and len(message) < 400, name


def test_crafted_checkpoint_tensors_are_one_input_error(finished: Path, tmp_path: Path):
    (_, last), *_ = reversed(list_checkpoints(finished))
    weight = "policy.trunk.0.weight"
    cases = {
        "wrong-shape": {weight: torch.zeros(3, 3)},
        "integer-weights": {weight: torch.zeros(16, 4, dtype=torch.int64)},
        "missing": {weight: None},
        "extra": {"policy.extra.weight": torch.zeros(2)},
        "candidates-3d": {"tasks.candidates": torch.zeros(2, 1, 1)},
    }
    for name, tensors in cases.items():
        path = tmp_path / f"{name}.safetensors"
        shutil.copy(last, path)
        _recraft(path, tensors=tensors)
        with pytest.raises(InputError, match=str(path)):
            load_policy(path, device="cpu")
    broken = tmp_path / "header.safetensors"
    data = bytearray(last.read_bytes())
    data[8:12] = b"\xff\xfe{x"
    broken.write_bytes(bytes(data))
    with pytest.raises(InputError, match="not a readable train-bc checkpoint"):
        load_policy(broken, device="cpu")


def test_evaluate_reports_a_crafted_run_in_one_line(finished: Path, tmp_path: Path):
    run = copy_run(finished, tmp_path / "run")
    (_, last), *_ = reversed(list_checkpoints(run))
    _recraft(last, metadata={"run": _network_change(finished, hidden=[10**12])})
    result = cli("evaluate", run, "--episodes", 1, "--no-progress", code=2)
    assert str(last) in result.stderr and "asks for a network of" in result.stderr


def _resume_args(store: Path, run: Path) -> list[object]:
    return ["train-bc", store, "--out", run, "--steps", 40, *SMALL_ARGS, "--resume"]


@pytest.mark.parametrize(
    "damage",
    [
        "optim-shape",
        "optim-name",
        "rng-missing",
        "step-mismatch",
        "policy-shape",
        "config-not-json",
        "config-nested",
        "config-list",
        "config-network",
        "config-huge",
    ],
)
def test_resume_from_crafted_files_is_one_error_and_changes_nothing(
    finished: Path, store: Path, tmp_path: Path, damage: str
):
    run = copy_run(finished, tmp_path / "run")
    (_, last), *_ = reversed(list_checkpoints(run))
    config = run / "config.json"
    if damage == "optim-shape":
        _recraft(last, tensors={"optim.0.exp_avg": torch.zeros(5)})
    elif damage == "optim-name":
        _recraft(last, tensors={"optim.x": torch.zeros(1)})
    elif damage == "rng-missing":
        _recraft(last, tensors={"rng.sampler": None})
    elif damage == "step-mismatch":
        _recraft(last, metadata={"step": "10"})
    elif damage == "policy-shape":
        _recraft(last, tensors={"policy.out.weight": torch.zeros(4, 3)})
    elif damage == "config-not-json":
        config.write_text("{")
    elif damage == "config-nested":
        config.write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "config-list":
        config.write_text("[]")
    elif damage == "config-network":
        description = json.loads(config.read_text())
        description["network"]["hidden"] = ["x"]
        config.write_text(json.dumps(description))
    elif damage == "config-huge":
        config.write_bytes(b" " * (17 << 20) + b"{}")
    before = snapshot(run)
    result = cli(*_resume_args(store, run), code=2)
    assert str(run) in result.stderr
    assert snapshot(run) == before


# ---------------------------------------------------------------- failing disks
def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_checkpoint_that_cannot_be_written_leaves_nothing_behind(store: Path, tmp_path: Path):
    """A process that may write files of at most 32 KiB: config.json fits, the first
    checkpoint does not. One error line, exit code 1, no temporaries, no run folder;
    the same command then succeeds."""
    out = tmp_path / "runs" / "run"
    args = [
        sys.executable, "-m", "cli.main", "train-bc", str(store), "--out", str(out),
        "--steps", "20", *SMALL_ARGS[:2], "--hidden", "64,64", *SMALL_ARGS[4:],
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    failed = subprocess.run(
        args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=_limit_file_size(32 << 10),
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "runs").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [s for s, _ in list_checkpoints(out)] == [20]


def test_disk_full_after_a_checkpoint_keeps_the_run_resumable(
    store: Path, tmp_path: Path, monkeypatch
):
    real = checkpoint_module.write_checkpoint

    def fill_up(path: Path, *args, **kwargs):
        if "step_0000040" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "write_checkpoint", fill_up)
    config = BCConfig(out=tmp_path / "run", labels="original", steps=60, **SMALL)
    with pytest.raises(
        ResourceError,
        match="step_0000040.safetensors: no space left on device; "
        "the run can be resumed from step 20",
    ):
        train_bc(store, config)
    assert [s for s, _ in list_checkpoints(config.out)] == [20]
    monkeypatch.setattr(checkpoint_module, "write_checkpoint", real)
    summary = train_bc(store, replace(config, resume=True))
    assert summary.start_step == 20 and summary.step == 60


# ---------------------------------------------------------------- resumed metrics
def _rows(run: Path) -> dict[int, list[float]]:
    """step -> (loss, lr, grad_norm) of every metrics row."""
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    found = {}
    for row in rows:
        step, loss, lr, _, grad = row.split(",")
        found[int(step)] = [float(loss), float(lr), float(grad)]
    return found


def test_resumed_run_logs_the_rows_of_the_uninterrupted_run(store: Path, tmp_path: Path):
    """Checkpoints every 20 steps, a metrics row every 15: after resuming at 40 the row
    at 45 averages steps 31..45 as in the uninterrupted run, not only 41..45."""
    config = BCConfig(
        out=tmp_path / "straight",
        labels="original",
        steps=90,
        **{**SMALL, "log_every": 15, "checkpoint_every": 20},
    )
    train_bc(store, config)
    cut = copy_run(config.out, tmp_path / "cut")
    for step, path in list_checkpoints(cut):
        if step > 40:
            path.unlink()
    summary = train_bc(store, replace(config, out=cut, resume=True))
    assert summary.start_step == 40
    straight, resumed = _rows(config.out), _rows(cut)
    assert sorted(straight) == sorted(resumed) == [15, 30, 45, 60, 75, 90]
    for step in straight:
        np.testing.assert_allclose(resumed[step], straight[step], rtol=1e-6, err_msg=str(step))


def test_no_tensorboard_notice_when_it_is_not_used(store: Path, tmp_path: Path):
    result = cli("train-bc", store, "--out", tmp_path / "run", "--steps", 5, *SMALL_ARGS)
    if loop_module.tensorboard_available():
        assert f"tensorboard {tmp_path / 'run' / 'tensorboard'}" in result.stdout
    else:
        assert "tensorboard" not in result.stdout.replace(str(tmp_path), "TMP")
