"""A store is untrusted input (issue 10, items 1, 3, 5, 9): a crafted store never
makes a command delete, write or read anything outside it; label-set names are
checked; writers of one label set are serialized; a kill during the first append
leaves a resumable store; a full disk, a read-only folder or a FIFO is one error
line with nothing left behind.

Processes are synchronized by conditions (a line on a pipe), never by sleeps.
The full-disk tests mount a small tmpfs and are skipped where mounting is not
permitted.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
from disk import snapshot
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.errors import InputError, ResourceError
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.store import create_store, open_store
from hipi_offline.store.labels import check_label_name, hdf5_sidecar
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

REPO = Path(__file__).resolve().parents[1]
SPEC = "synthetic-velocity"
WAIT = 300.0  # bound on any wait for another process's signal (generous under load)


# ------------------------------------------------------------------ helpers


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(result, code: int, *needles: str) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line holding every needle."""
    detail = f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), detail
    assert result.exit_code == code, detail
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, detail
    for needle in needles:
        assert needle in lines[0], detail
    return lines[0]


def relabel_args(store: Path, *extra: object) -> list[object]:
    return ["relabel", store, "--tasks", SPEC, "--device", "cpu", "--candidates", 8, *extra]


def small_store(folder: Path, kind: str, labels: tuple[str, ...] = ("hipi",)) -> Path:
    """A tiny synthetic store with the given label sets (method random: fast)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"runner.{kind}"
    make_synthetic_store(path, SyntheticConfig(episodes=12, steps=16, seed=1))
    for name in labels:
        config = RelabelConfig(tasks=SPEC, name=name, method="random", device="cpu", candidates=8)
        relabel(path, config)
    return path


def make_victim(root: Path) -> Path:
    """A folder of the user's that no command may touch."""
    victim = root / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "precious.txt").write_text("do not delete")
    (victim / "sub" / "more.txt").write_text("nor this")
    return victim


def dead_pid() -> int:
    """The pid of a process that has exited (for stale temporaries of a killed run)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def token(pid: int) -> str:
    return f"{pid}-{uuid.uuid4().hex}"


def version_link(store: Path, name: str) -> Path:
    return store / "labels" / name


def read_line(proc: subprocess.Popen, timeout: float = WAIT) -> str:
    """The next stdout line of ``proc`` (fails if none comes within ``timeout``)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line from pid {proc.pid} within {timeout} s"
    return proc.stdout.readline().decode().strip()


# ------------------------------------------------------------------ item 1: links
def zarr_attack(kind: str, store: Path, victim: Path) -> None:
    """Point some part of the Zarr label area at ``victim``."""
    labels = store / "labels"
    sets = labels / ".sets"
    if kind in ("relative", "absolute"):
        link = version_link(store, "hipi")
        link.unlink()
        target = os.path.relpath(victim, labels) if kind == "relative" else str(victim)
        os.symlink(target, link)
    elif kind == "dotdot-in-sets":
        link = version_link(store, "hipi")
        link.unlink()
        os.symlink(".sets/../../../victim", link)
    elif kind == "sets-is-link":
        (victim / f"hipi.{token(dead_pid())}").mkdir()  # looks like a stale version
        shutil.rmtree(sets)
        os.symlink(victim, sets)
    elif kind == "labels-is-link":
        shutil.rmtree(labels)
        os.symlink(victim, labels)
    elif kind == "version-is-link":
        version = sets / os.readlink(version_link(store, "hipi")).split("/")[-1]
        shutil.rmtree(version)
        os.symlink(victim, version)
    elif kind == "other-sets-version":
        link = version_link(store, "hipi")
        other = os.readlink(version_link(store, "other"))
        link.unlink()
        os.symlink(other, link)
    else:  # pragma: no cover
        raise AssertionError(kind)


ZARR_ATTACKS = (
    "relative",
    "absolute",
    "dotdot-in-sets",
    "sets-is-link",
    "labels-is-link",
    "version-is-link",
    "other-sets-version",
)


@pytest.fixture(scope="module")
def zarr_template(tmp_path_factory) -> Path:
    return small_store(tmp_path_factory.mktemp("tpl") / "data", "zarr", ("hipi", "other"))


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
@pytest.mark.parametrize("attack", ZARR_ATTACKS)
def test_crafted_zarr_links_never_lead_out(zarr_template, tmp_path, attack, overwrite):
    """relabel refuses, naming the link; nothing outside the store's own label area
    changes (the victim folder survives); reading refuses the link too."""
    store = tmp_path / "data" / zarr_template.name
    shutil.copytree(zarr_template, store, symlinks=True)
    victim = make_victim(tmp_path)
    zarr_attack(attack, store, victim)
    before, victim_before = snapshot(tmp_path / "data"), snapshot(victim)
    flags = ("--overwrite",) if overwrite else ()
    result = cli(*relabel_args(store, "--name", "hipi", "--method", "random", *flags))
    line = one_error(result, 2)
    assert "link" in line or "not a folder" in line, line
    assert snapshot(victim) == victim_before
    assert snapshot(tmp_path / "data") == before
    if attack not in ("sets-is-link", "labels-is-link"):  # those refuse any label read
        one_error(cli("inspect", store), 2, "labels/hipi")
    else:
        one_error(cli("inspect", store), 2, "symbolic link")


def test_zarr_label_chunk_link_is_not_read(zarr_template, tmp_path):
    """A link inside a label set's version folder is refused, not followed."""
    store = tmp_path / "data" / zarr_template.name
    shutil.copytree(zarr_template, store, symlinks=True)
    version = (store / "labels").joinpath(os.readlink(version_link(store, "hipi")))
    chunk = version / "entropy" / "c" / "0"
    outside = tmp_path / "outside.bin"
    shutil.copy(chunk, outside)
    chunk.unlink()
    os.symlink(outside, chunk)
    one_error(cli("inspect", store), 2, "symbolic link", "entropy")
    with open_store(store) as s, pytest.raises(InputError, match="symbolic link"):
        s.read_labels("hipi")


def test_zarr_step_chunk_link_is_refused(tmp_path):
    store = small_store(tmp_path / "data", "zarr", ())
    chunk = store / "steps" / "actions" / "c" / "0" / "0"
    outside = tmp_path / "outside.bin"
    shutil.copy(chunk, outside)
    chunk.unlink()
    os.symlink(outside, chunk)
    one_error(cli("inspect", store), 2, "symbolic link", "actions")


@pytest.mark.parametrize("attack", ["sidecar-is-link", "file-is-link"])
def test_crafted_hdf5_sidecar(tmp_path, attack):
    """The sidecar or a label file being a link: refused for reading and writing."""
    store = small_store(tmp_path / "data", "h5", ("hipi",))
    sidecar = hdf5_sidecar(store)
    victim = make_victim(tmp_path)
    if attack == "sidecar-is-link":
        shutil.copytree(sidecar, victim / "labels")
        shutil.rmtree(sidecar)
        os.symlink(victim / "labels", sidecar)
    else:
        shutil.copy(sidecar / "hipi.h5", victim / "hipi.h5")  # a valid label file, outside
        (sidecar / "hipi.h5").unlink()
        os.symlink(victim / "hipi.h5", sidecar / "hipi.h5")
    before, victim_before = snapshot(tmp_path / "data"), snapshot(victim)
    one_error(cli("inspect", store), 2, "symbolic link")
    result = cli(*relabel_args(store, "--name", "hipi", "--method", "random", "--overwrite"))
    one_error(result, 2, "symbolic link")
    assert snapshot(victim) == victim_before
    assert snapshot(tmp_path / "data") == before


def test_stale_cleanup_touches_only_its_own_temporaries(tmp_path, kind):
    """A killed writer's temporaries (our pattern, dead pid) are removed; files that
    merely look like temporaries, and links, are left alone."""
    store = small_store(tmp_path / "data", kind, ("hipi",))
    victim = make_victim(tmp_path)
    stale = token(dead_pid())
    if kind == "h5":
        area = hdf5_sidecar(store)
        ours = area / f".hipi.{stale}.tmp"
        ours.write_bytes(b"half a label file")
        foreign = [area / ".notes.tmp", area / ".hipi.1-xyz.tmp"]
        for path in foreign:
            path.write_text("the user's")
        link = area / f".other.{token(dead_pid())}.tmp"
    else:
        area = store / "labels" / ".sets"
        ours = area / f"hipi.{stale}"
        ours.mkdir()
        (ours / "zarr.json").write_text("{}")
        foreign = [area / "notes", area / "hipi.backup"]
        for path in foreign:
            path.mkdir()
            (path / "keep.txt").write_text("the user's")
        link = area / f"other.{token(dead_pid())}"
    os.symlink(victim, link)
    victim_before = snapshot(victim)
    result = cli(*relabel_args(store, "--name", "new", "--method", "random"))
    assert result.exit_code == 0, result.output
    assert not ours.exists()
    assert all(path.exists() for path in foreign)
    assert link.is_symlink() and snapshot(victim) == victim_before


# ------------------------------------------------------------------ item 9: names
@pytest.mark.parametrize(
    "name",
    ["", ".hidden", ".sets", "zarr.json", "ZARR.json", "x\n", "a\nb", "a\tb", "a\x00b",
     "-x", "a/b", "..", "x" * 101, "é"],
)  # fmt: skip
def test_bad_label_names_are_refused(name):
    with pytest.raises(InputError, match="name"):
        check_label_name(name)


@pytest.mark.parametrize("name", ["hipi", "a", "x" * 100, "v1.2-final_3", "_x"])
def test_good_label_names(name):
    assert check_label_name(name) == name


@pytest.mark.parametrize("name", ["", "x\n", "zarr.json", ".sets"])
def test_relabel_refuses_bad_names_and_changes_nothing(tmp_path, kind, name):
    """``--name ""`` used to become ``hipi`` (and replace it with --overwrite)."""
    store = small_store(tmp_path / "data", kind, ("hipi",))
    before = snapshot(tmp_path / "data")
    result = cli(*relabel_args(store, "--name", name, "--method", "random", "--overwrite"))
    one_error(result, 2, "name")
    assert snapshot(tmp_path / "data") == before


# ------------------------------------------------------------------ item 9: two at once
HOLDER = r"""
import sys
import cli.main
import hipi_offline.relabel.run as run

real = run.uniform_posterior

def held(*args, **kwargs):
    print("computing", flush=True)  # the lock is held: the computation has begun
    sys.stdin.readline()  # until the test says go on
    return real(*args, **kwargs)

run.uniform_posterior = held
sys.argv = ["hipi-offline", *sys.argv[1:]]
cli.main.main()
"""


@pytest.mark.slow
def test_two_relabels_of_one_name_do_not_both_succeed(tmp_path, kind):
    """The first relabel holds the label set's lock from before its computation
    through its commit; a second one meanwhile gets one clear error line, and after
    the first commits, the usual 'already exists'."""
    store = small_store(tmp_path / "data", kind, ())
    argv = [str(a) for a in relabel_args(store, "--name", "x", "--method", "random")]
    first = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *argv],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert read_line(first) == "computing"
        second = cli(*argv)
        one_error(second, 2, "labels/x", "another process is writing")
        with open_store(store) as s:
            assert s.label_names() == []
        first.stdin.write(b"go\n")
        first.stdin.close()
        assert first.wait(timeout=WAIT) == 0, first.stderr.read().decode()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    one_error(cli(*argv), 2, "labels/x", "already exists")
    with open_store(store) as s:
        assert s.label_names() == ["x"] and s.read_labels("x").num_episodes == 12
    leftovers = [p for p in snapshot(tmp_path / "data") if ".lock" in p]
    assert leftovers == []


# ------------------------------------------------------------------ item 3: first append
KILLED_APPEND = r"""
import os, sys
import numpy as np
from hipi_offline.store import create_store, open_store
from hipi_offline.store.backends import backend_class, backend_names
from hipi_offline.store.synthetic import synthetic_episodes

path = sys.argv[1]
create_store(path, env="synthetic-runner").close()
steps, episodes = synthetic_episodes(3, 10, np.random.default_rng(0))
for backend in map(backend_class, backend_names()):
    real = backend.create

    def create(self, name, *args, _real=real, **kwargs):
        _real(self, name, *args, **kwargs)
        print("created " + name, flush=True)
        sys.stdin.readline()  # never answered: the test kills us here

    backend.create = create
store = open_store(path, "a")
store.append_episodes(steps, [10, 10, 10], episodes)
"""


@pytest.mark.slow
def test_kill_during_first_append_leaves_a_resumable_store(tmp_path, kind):
    """SIGKILL after the first field of the first append is written (before any
    episode is committed): the store opens, holds no episode, and the resumed
    append makes a complete store with nothing left over."""
    path = tmp_path / f"new.{kind}"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_APPEND, str(path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        line = read_line(proc)
        assert line.startswith("created steps/"), line
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=WAIT) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if kind == "zarr":  # a kill in mid-metadata write: a half-written zarr.json
        meta = next((path / "steps").rglob("zarr.json"))
        meta.write_bytes(meta.read_bytes()[:7])
    with open_store(path) as store:
        assert store.num_episodes == 0
    from hipi_offline.store.synthetic import synthetic_episodes

    steps, episodes = synthetic_episodes(2, 5, np.random.default_rng(1))
    with open_store(path, "a") as store:
        store.append_episodes(steps, [5, 5], episodes)
    with open_store(path) as store:
        assert store.num_episodes == 2 and store.num_steps == 10
        np.testing.assert_array_equal(store.read_steps("steps/actions"), steps["actions"])
        assert sorted(store.step_fields()) == sorted(f"steps/{k}" for k in steps)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# ------------------------------------------------------------------ item 9/5: create
@pytest.mark.parametrize("what", ["dangling-link", "link-to-store", "file", "folder"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_make_synthetic_replaces_only_a_store(tmp_path, kind, what, overwrite):
    """make-synthetic never replaces a (dangling) link or something that is not a
    hipi-offline store, with or without --overwrite."""
    out = tmp_path / f"out.{kind}"
    if what == "dangling-link":
        os.symlink(tmp_path / "nowhere", out)
    elif what == "link-to-store":
        real = small_store(tmp_path / "real", kind, ())
        os.symlink(real, out)
    elif what == "file":
        out.write_text("the user's notes")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("the user's")
    before = snapshot(tmp_path)
    flags = ("--overwrite",) if overwrite else ()
    one_error(cli("make-synthetic", out, "--episodes", 3, "--steps", 5, *flags), 2, str(out))
    assert snapshot(tmp_path) == before


def test_make_synthetic_overwrites_a_store(tmp_path, kind):
    out = small_store(tmp_path, kind, ())
    result = cli("make-synthetic", out, "--episodes", 3, "--steps", 5, "--overwrite")
    assert result.exit_code == 0, result.output
    with open_store(out) as store:
        assert store.num_episodes == 3


# ------------------------------------------------------------------ item 6: special files
FIFO_CASES = ("store-h5", "store-zarr", "zarr-json", "step-chunk", "label-h5", "label-chunk")


def place_fifo(tmp_path: Path, case: str) -> Path:
    """Replace one file with a FIFO; return the store path."""
    if case == "store-h5":
        path = tmp_path / "fifo.h5"
        os.mkfifo(path)
        return path
    if case == "store-zarr":
        path = tmp_path / "fifo.zarr"
        os.mkfifo(path)
        return path
    kind = "h5" if case == "label-h5" else "zarr"
    store = small_store(tmp_path / "data", kind, ("hipi",))
    if case == "zarr-json":
        victim = store / "zarr.json"
    elif case == "step-chunk":
        victim = store / "steps" / "actions" / "c" / "0" / "0"
    elif case == "label-h5":
        victim = hdf5_sidecar(store) / "hipi.h5"
    else:
        victim = (store / "labels").joinpath(os.readlink(store / "labels" / "hipi"))
        victim = victim / "entropy" / "c" / "0"
    victim.unlink()
    os.mkfifo(victim)
    return store


@pytest.mark.parametrize("case", FIFO_CASES)
@pytest.mark.slow
def test_fifo_is_one_error_line_not_a_hang(tmp_path, case):
    """Run as a separate process with a time limit: a hang fails the test."""
    store = place_fifo(tmp_path, case)
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "inspect", str(store)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode in (1, 2), proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "FIFO" in errors[0] or "not a Zarr" in errors[0], errors[0]


# ------------------------------------------------------------------ item 8: inspect
@pytest.mark.parametrize("damage", ["task-names", "short-coverage", "index-range"])
def test_inspect_crafted_label_set_is_one_line(tmp_path, damage):
    store = small_store(tmp_path / "data", "h5", ("hipi",))
    with h5py.File(hdf5_sidecar(store) / "hipi.h5", "r+") as f:
        if damage == "task-names":
            f.attrs["task_names"] = "[not json"
        elif damage == "short-coverage":
            data = f["coverage"][()]
            del f["coverage"]
            f["coverage"] = data[:-1]
        else:
            data = f["topk_index"][()]
            del f["topk_index"]
            f["topk_index"] = data + 1000
    one_error(cli("inspect", store), 2, "labels/hipi", "damaged")


# ------------------------------------------------------------------ item 7: disk full, read-only
@pytest.fixture
def tiny_disk(tmp_path):
    """An 8 MiB tmpfs (root only; skipped where mounting is not permitted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run_cli(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command line as a separate process (a crash there cannot take pytest down)."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *[str(a) for a in args]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WAIT,
        env={**os.environ, **(env or {})},
    )


def one_error_proc(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    detail = f"exit {proc.returncode}\n{proc.stderr}"
    assert proc.returncode == code and len(errors) == 1, detail
    assert "Traceback" not in proc.stderr, detail
    for needle in needles:
        assert needle in errors[0], detail
    return errors[0]


@pytest.mark.slow
def test_make_synthetic_on_a_full_disk(tiny_disk, kind):
    """Was a segfault (exit 139) leaving a temporary; now exit 1 before any write."""
    proc = run_cli("make-synthetic", tiny_disk / f"big.{kind}", "--episodes", 2000)
    line = one_error_proc(proc, 1, "not enough free space", "needs about", "free")
    assert "MiB" in line
    assert list(tiny_disk.iterdir()) == []


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` free bytes with a file of the test's own."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


@pytest.mark.slow
def test_relabel_on_a_full_disk_fails_before_the_work(tiny_disk, kind):
    store = small_store(tiny_disk, kind, ("hipi",))
    fill(tiny_disk, 64 * 1024)
    before = snapshot(tiny_disk)
    proc = run_cli(*relabel_args(store, "--name", "big", "--top-k", "all", "--candidates", 4096))
    one_error_proc(proc, 1, "not enough free space", "label set big")
    assert snapshot(tiny_disk) == before


WRITE_FAILS = r"""
import shutil, sys
from collections import namedtuple
import cli.main

usage = namedtuple("usage", "total used free")
shutil.disk_usage = lambda path: usage(1 << 40, 0, 1 << 40)  # the check is fooled
sys.argv = ["hipi-offline", *sys.argv[1:]]
cli.main.main()
"""


@pytest.mark.slow
def test_write_that_hits_a_full_disk_leaves_the_old_state(tiny_disk, kind):
    """When the prediction is wrong and the disk fills during the label write: one
    line (exit 1), no temporaries, the old label set unchanged."""
    store = small_store(tiny_disk, kind, ("hipi",))
    fill(tiny_disk, 16 * 1024)
    before = snapshot(tiny_disk)
    argv = relabel_args(store, "--name", "hipi", "--overwrite", "--top-k", "all")
    argv[argv.index("--candidates") + 1] = 4096
    proc = subprocess.run(
        [sys.executable, "-c", WRITE_FAILS, *[str(a) for a in argv]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    one_error_proc(proc, 1, "no space left")
    assert snapshot(tiny_disk) == before


def test_relabel_in_a_read_only_folder_fails_at_the_start(tiny_disk, kind, monkeypatch):
    store = small_store(tiny_disk, kind, ())
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    before = snapshot(tiny_disk)

    def computation(*args, **kwargs):
        raise AssertionError("the computation started on a read-only store")

    monkeypatch.setattr("hipi_offline.relabel.run._hipi_posterior", computation)
    config = RelabelConfig(tasks=SPEC, name="hipi", device="cpu", candidates=8)
    with pytest.raises(ResourceError, match="read-only"):
        relabel(store, config)
    result = cli(*relabel_args(store))
    one_error(result, 1, "read-only")
    assert snapshot(tiny_disk) == before


def test_create_store_checks_free_space(tiny_disk):
    with pytest.raises(ResourceError, match="not enough free space"):
        create_store(tiny_disk / "x.zarr", expected_bytes=10 << 20)
    assert list(tiny_disk.iterdir()) == []


APPEND = r"""
import sys
import numpy as np
from hipi_offline.errors import ResourceError
from hipi_offline.store import open_store
from hipi_offline.store.synthetic import synthetic_episodes

steps, episodes = synthetic_episodes(100, 200, np.random.default_rng(2))
with open_store(sys.argv[1], "a") as store:
    try:
        store.append_episodes(steps, [200] * 100, episodes)
    except ResourceError as err:
        print("error:", err)
"""


def test_hdf5_append_checks_room_for_its_copy(tiny_disk):
    """An HDF5 append works on a copy of the file: when the copy fits but the new rows
    do not, the append is refused before h5py writes (which used to crash)."""
    store = small_store(tiny_disk, "h5", ())
    fill(tiny_disk, store.stat().st_size + 256 * 1024)
    before = snapshot(tiny_disk)
    proc = subprocess.run(
        [sys.executable, "-c", APPEND, str(store)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "not enough free space for appending to runner.h5" in proc.stdout, proc.stdout
    assert snapshot(tiny_disk) == before
    with open_store(store) as s:
        assert s.num_episodes == 12


def test_store_creation_removes_only_its_own_leftovers(tmp_path, kind):
    """A killed creation's staging copy (our name, dead pid) is removed by the next
    creation; the user's files that merely look alike are not."""
    out = tmp_path / f"out.{kind}"
    suffix = out.suffix
    ours = tmp_path / f".{out.name}.creating-{token(dead_pid())}{suffix}"
    ours.write_bytes(b"half a store")
    alike = [
        tmp_path / f".{out.name}.backup-{token(dead_pid())}{suffix}",
        tmp_path / f".{out.name}.notes",
        tmp_path / f".{out.name}.creating-{token(dead_pid())}.txt",
    ]
    for path in alike:
        path.write_text("the user's")
    result = cli("make-synthetic", out, "--episodes", 3, "--steps", 5)
    assert result.exit_code == 0, result.output
    assert not ours.exists() and all(path.exists() for path in alike)


# ------------------------------------------------------------------ replacing an HDF5 store
def _labeled_h5(tmp_path: Path) -> Path:
    path = tmp_path / "s.h5"
    make_synthetic_store(path, SyntheticConfig(episodes=4, steps=8, seed=3))
    relabel(path, RelabelConfig(tasks="synthetic-velocity", candidates=8))
    return path


def test_replacing_an_hdf5_store_never_leaves_old_labels_on_new_data(tmp_path: Path) -> None:
    path = _labeled_h5(tmp_path)
    make_synthetic_store(path, SyntheticConfig(episodes=4, steps=8, seed=4), overwrite=True)
    with open_store(path) as store:
        assert store.label_names() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_a_failed_replacement_keeps_the_old_store_and_its_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hipi_offline.store.store as store_module

    path = _labeled_h5(tmp_path)
    before = snapshot(tmp_path)

    def fail(source: Path, target: Path) -> None:
        assert not hdf5_sidecar(path).exists()  # the old labels were moved aside first
        raise OSError(28, "No space left on device", str(target))

    monkeypatch.setattr(store_module, "replace_path", fail)
    with pytest.raises(OSError):
        make_synthetic_store(path, SyntheticConfig(episodes=4, steps=8, seed=4), overwrite=True)
    assert snapshot(tmp_path) == before


def test_labels_retired_by_a_killed_replacement_are_removed_by_the_next_writer(
    tmp_path: Path,
) -> None:
    path = _labeled_h5(tmp_path)
    script = (
        "import os, signal, sys\n"
        "import hipi_offline.store.store as m\n"
        "from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store\n"
        "def killed(source, target):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "m.replace_path = killed\n"
        f"make_synthetic_store({str(path)!r}, SyntheticConfig(episodes=4, steps=8, seed=4),"
        " overwrite=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL
    with open_store(path) as store:  # the old store, intact, without its labels
        assert store.num_episodes == 4 and store.label_names() == []
    assert any(p.name.startswith(".s.h5.labels.old-") for p in tmp_path.iterdir())
    make_synthetic_store(path, SyntheticConfig(episodes=4, steps=8, seed=5), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
