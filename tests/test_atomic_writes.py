"""Label writes are atomic: a kill at any moment of ``hipi-offline relabel
--overwrite`` leaves the store intact and the label set either exactly the old
version or exactly the new one, with no stray temporary visible as a label set.

Starting Python and importing torch takes seconds, far longer than the relabel
run itself, so most runs are forked from a "zygote": a child process that has
imported the command line (and torch) once and forks one fresh process per run,
which then runs ``cli.main.main()`` with the relabel arguments exactly as the
console script does. The test SIGKILLs that process by its pid at seeded random
times. One run per backend also goes through ``python -m cli.main`` itself.

A second test makes the crash points deterministic: the forked process exits
abruptly (``os._exit``, as a kill would) just before or just after its N-th file
system commit call (replace, rename, symlink, link, unlink, fsync, rmtree, ...),
for every N of a complete run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_stores

from hipi_offline.store import open_store
from hipi_offline.store.labels import LABEL_ARRAYS, hdf5_sidecar
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

REPO = Path(__file__).resolve().parents[1]
NAME = "x"  # the label set that is overwritten again and again
OTHER = "other"  # a label set that no run touches
SPEC = "synthetic-velocity"  # target family on a scalar feature: the sorted fast path

ZYGOTE = r"""
import json, os, shutil, sys, traceback
import numpy, h5py, zarr, torch, typer, yaml  # imported once, before any fork
import cli.main
import hipi_offline.relabel, hipi_offline.store.describe, hipi_offline.tasks

EVENTS = [(os, n) for n in ("replace", "rename", "symlink", "link", "unlink", "rmdir", "fsync")]
EVENTS.append((shutil, "rmtree"))


def install_crash(crash_at):
    # exit abruptly (no cleanup, like SIGKILL) at event number crash_at;
    # each call of a hooked function is two events: just before, just after
    trace = []

    def tick(what):
        if len(trace) == crash_at:
            os._exit(137)
        trace.append(what)

    for owner, name in EVENTS:
        real = getattr(owner, name)

        def hooked(*args, _real=real, _name=name, **kwargs):
            target = os.path.basename(str(args[-1])) if args else ""
            tick(f"{_name}:{target}:before")
            try:
                return _real(*args, **kwargs)
            finally:
                tick(f"{_name}:{target}:after")

        setattr(owner, name, hooked)
    return trace


def child(request):
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    trace = install_crash(request["crash_at"]) if request["crash_at"] is not None else None
    sys.argv = ["hipi-offline", *request["argv"]]
    code = 1
    try:
        cli.main.main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
    if trace is not None:
        sys.stderr.write("\nevents " + json.dumps(trace) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# warm up the command line's lazy imports (option parsing) without running torch
with open(os.devnull, "w") as sink:
    sys.stdout, sys.stderr = sink, sink
    for argv in (["relabel", "missing.h5", "--tasks", "missing.yaml"], ["inspect", "missing.h5"]):
        try:
            cli.main.app(argv)
        except SystemExit:
            pass
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            child(request)
        finally:
            os._exit(1)
    print(f"pid {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
"""


class Zygote:
    """A warm Python process that forks one ``hipi-offline`` run per request."""

    def __init__(self, logs: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            cwd=REPO,
            env=env,
        )
        self.logs = logs
        self.runs = 0
        self._buffer = b""
        assert self._line() == "ready"

    def _line(self, timeout: float | None = None) -> str | None:
        """The zygote's next line, or None if none comes within ``timeout`` seconds."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.perf_counter())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"zygote died (exit {self.proc.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode().strip()

    def start(self, argv: list[object], crash_at: int | None = None) -> int:
        """Fork a run of ``hipi-offline *argv``; return its pid."""
        self.runs += 1
        self.log = self.logs / f"run-{self.runs}.log"
        request = {"argv": [str(a) for a in argv], "crash_at": crash_at, "log": str(self.log)}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        word, pid = self._line().split()
        assert word == "pid"
        return int(pid)

    def wait(self, timeout: float | None = None) -> int | None:
        """Exit code of the current run (negative: killed by that signal), or None
        if it is still running after ``timeout`` seconds."""
        line = self._line(timeout)
        if line is None:
            return None
        word, code = line.split()
        assert word == "exit"
        return int(code)

    def kill_after(self, pid: int, delay: float) -> int:
        """SIGKILL the current run after ``delay`` seconds unless it ends before;
        return its exit code. (Until the zygote reaps the run, the pid is still that
        run's; when the run was reaped between our timeout and the kill, its exit
        line is on its way.)"""
        code = self.wait(delay)
        if code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            code = self.wait()
        return code

    def run(self, argv: list[object], crash_at: int | None = None) -> tuple[int, float]:
        t0 = time.perf_counter()
        self.start(argv, crash_at)
        code = self.wait()
        return code, time.perf_counter() - t0

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote-logs"))
    yield z
    z.close()


# ------------------------------------------------------------------ helpers
def tree_hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file, the target of every link, under ``root`` (or of one file)."""
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    out: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if rel.split("/")[0] in skip:
                continue
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def step_data_hash(store: Path) -> dict[str, str]:
    """Everything of the store except its label sets."""
    return tree_hashes(store, skip=("labels",))


def label_files(store: Path, name: str) -> dict[str, str]:
    """Bytes of one committed label set (the HDF5 file, or the Zarr version folder)."""
    if store.suffix == ".h5":
        return tree_hashes(hdf5_sidecar(store) / f"{name}.h5")
    link = store / "labels" / name
    return {"link": os.readlink(link), **tree_hashes(link.resolve())}


def read_set(store: Path, name: str = NAME) -> dict:
    with open_store(store) as s:
        labels = s.read_labels(name)
    attrs = {k: v for k, v in labels.attrs.items() if k != "created"}
    return {"attrs": attrs, **{k: np.asarray(getattr(labels, k)) for k in LABEL_ARRAYS}}


def same(a: dict, b: dict) -> bool:
    return a["attrs"] == b["attrs"] and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k], equal_nan=True)
        for k in LABEL_ARRAYS
    )


def relabel_argv(store: Path, seed: int) -> list[object]:
    """Relabel NAME with --overwrite; the seed picks the candidates (so the version).
    All K candidates are kept, so a label set of a big store is some 15 MB."""
    candidates = 1024 if store.parent.name.startswith("big") else 64
    return [
        "relabel", store, "--tasks", SPEC, "--name", NAME, "--seed", seed, "--device", "cpu",
        "--top-k", "all", "--candidates", candidates, "--overwrite",
    ]  # fmt: skip


def temporaries(store: Path, live: set[str]) -> list[Path]:
    """Files a label write leaves while in flight (and a kill may leave behind)."""
    if store.suffix == ".h5":
        sidecar = hdf5_sidecar(store)
        return list(sidecar.glob(".*")) if sidecar.is_dir() else []
    versions = store / "labels" / ".sets"
    return [p for p in versions.iterdir() if p.name != "zarr.json" and p.name not in live]


def live_versions(store: Path) -> set[str]:
    if store.suffix == ".h5":
        return set()
    labels = store / "labels"
    return {os.readlink(p).split("/")[-1] for p in labels.iterdir() if p.is_symlink()}


class Checker:
    """The invariants after every run, whatever happened to it."""

    def __init__(self, store: Path, old: dict, new: dict) -> None:
        self.store = store
        self.versions = {"old": old, "new": new}
        self.data = step_data_hash(store)
        self.other = label_files(store, OTHER)
        now = read_set(store)
        found = [v for v in ("old", "new") if same(now, self.versions[v])]
        assert found, f"label set {NAME} is neither version to begin with"
        self.current = found[0]

    def check(self, target: str) -> str:
        """Assert the invariants; return which version the label set now is."""
        with open_store(self.store) as s:  # opens and validates
            assert s.label_names() == sorted([NAME, OTHER])
            assert s.num_episodes > 0
        assert step_data_hash(self.store) == self.data, "step data changed"
        assert label_files(self.store, OTHER) == self.other, f"label set {OTHER} changed"
        got = read_set(self.store)
        if same(got, self.versions[target]):
            self.current = target
        else:
            assert same(got, self.versions[self.current]), (
                f"label set {NAME} is neither the {self.current} nor the {target} version"
            )
        return self.current


def other_version(v: str) -> str:
    return "new" if v == "old" else "old"


SEEDS = {"old": 1, "new": 2}


def prepare(zygote: Zygote, store: Path) -> tuple[dict, dict, float]:
    """Write OTHER, then NAME in the new and then the old version; return both and
    the duration of one full run."""
    code, _ = zygote.run(["relabel", store, "--tasks", SPEC, "--name", OTHER, "--method",
                          "random", "--device", "cpu", "--overwrite"])  # fmt: skip
    assert code == 0, zygote.log.read_text()
    code, t_new = zygote.run(relabel_argv(store, SEEDS["new"]))
    assert code == 0, zygote.log.read_text()
    new = read_set(store)
    code, t_old = zygote.run(relabel_argv(store, SEEDS["old"]))
    assert code == 0, zygote.log.read_text()
    old = read_set(store)
    assert not same(old, new), "the two versions must differ"
    return old, new, max(t_new, t_old)


@pytest.fixture(scope="module")
def big_stores(zygote: Zygote, tmp_path_factory):
    """Per backend: a store on which one relabel run takes about a second, with the
    label sets OTHER and NAME (old version); made on first use."""
    root = tmp_path_factory.mktemp("big")
    made: dict[str, tuple[Path, dict, dict, float]] = {}

    def get(kind: str) -> tuple[Path, dict, dict, float]:
        if kind not in made:
            path = root / f"runner.{kind}"
            make_synthetic_store(path, SyntheticConfig(episodes=1200, steps=200, seed=7))
            made[kind] = (path, *prepare(zygote, path))
        return made[kind]

    return get


def new_temporaries(store: Path, stale: set[Path]) -> bool:
    return bool(set(temporaries(store, live_versions(store))) - stale)


# ------------------------------------------------------------------ random kills
@pytest.mark.slow
def test_sigkill_during_relabel(zygote: Zygote, big_stores, kind: str):
    store, old, new, duration = big_stores(kind)
    assert 0.05 < duration < 20, f"one run took {duration:.2f} s"
    checker = Checker(store, old, new)

    rng = np.random.default_rng(2024 if kind == "h5" else 2025)
    # kill after a delay (spread over the run, plus late ones near its end), or
    # ("watch") as soon as the label write's temporary appears (plus 0-4 ms)
    plan: list[tuple[str, float]] = [("delay", t) for t in rng.uniform(0, duration, 10)]
    plan += [("delay", t) for t in rng.uniform(0.85 * duration, 1.1 * duration, 6)]
    plan += [("watch", t) for t in rng.uniform(0, 0.004, 5)]
    outcomes = {"killed, old kept": 0, "killed, new committed": 0, "finished": 0}
    watched = 0
    for index in rng.permutation(len(plan)):
        mode, delay = plan[index]
        target = other_version(checker.current)
        before = checker.current
        stale = set(temporaries(store, live_versions(store)))
        pid = zygote.start(relabel_argv(store, SEEDS[target]))
        code = None
        if mode == "watch":
            while (code := zygote.wait(0)) is None:
                if new_temporaries(store, stale):
                    watched += 1
                    break
                time.sleep(0.0002)
        if code is None:
            code = zygote.kill_after(pid, delay)
        assert code in (0, -signal.SIGKILL), zygote.log.read_text()
        now = checker.check(target)
        if code == 0:
            assert now == target, zygote.log.read_text()
            outcomes["finished"] += 1
        else:
            outcomes["killed, old kept" if now == before else "killed, new committed"] += 1

    assert outcomes["killed, old kept"] >= 5, outcomes
    assert watched >= 1, "no kill landed while a label write was in flight"
    # a clean run afterwards succeeds and sweeps what the kills left behind
    target = other_version(checker.current)
    code, _ = zygote.run(relabel_argv(store, SEEDS[target]))
    assert code == 0, zygote.log.read_text()
    assert checker.check(target) == target
    assert temporaries(store, live_versions(store)) == []
    print(f"{kind}: run {duration:.2f} s, {outcomes}, {watched} kills during the write")


# Both backends are killed during their label write; a kill while it computes (before any
# write begins) touches no backend code, so one backend suffices for it.
@pytest.mark.parametrize(
    ("kind", "mode"), [("h5", "write"), ("zarr", "write"), ("zarr", "compute")]
)
@pytest.mark.slow
def test_sigkill_real_command(big_stores, kind: str, mode: str):
    """``python -m cli.main relabel`` itself, killed while it relabels (after its
    imports) or as soon as its label write has begun."""
    store, old, new, duration = big_stores(kind)
    checker = Checker(store, old, new)
    before = checker.current
    target = other_version(before)
    stale = set(temporaries(store, live_versions(store)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *map(str, relabel_argv(store, SEEDS[target]))],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    started = threading.Event()

    def drain() -> None:  # the progress bar on stderr says the relabel has begun
        while chunk := proc.stderr.read1(4096):
            if b"relabel:" in chunk:
                started.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert started.wait(60), "relabel never started"
        if mode == "compute":
            time.sleep(np.random.default_rng(11).uniform(0.1, 0.6) * duration)
        else:
            while proc.poll() is None and not new_temporaries(store, stale):
                time.sleep(0.0002)
    finally:
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        reader.join(5)
    assert code in (0, -signal.SIGKILL)
    now = checker.check(target)
    if mode == "compute":
        assert (code, now) == (-signal.SIGKILL, before)


# ------------------------------------------------------------------ every crash point
@pytest.fixture(scope="module")
def small_stores(tmp_path_factory) -> dict[str, Path]:
    config = SyntheticConfig(episodes=40, steps=20, seed=1)
    return synthetic_stores(tmp_path_factory.mktemp("small"), config)


def _events(log: Path) -> list[str]:
    lines = [line for line in log.read_text().splitlines() if line.startswith("events ")]
    assert lines, log.read_text()
    return json.loads(lines[-1][len("events ") :])


def crash_points(trace: list[str], rng: np.random.Generator, sample: int = 10) -> list[int]:
    """Every point around the commit (the link swap or the file rename) and the first
    and last ones; a seeded sample of the many file writes, fsyncs and deletions."""
    commit = [i for i, event in enumerate(trace) if event.startswith(("symlink:", "replace:x"))]
    near = {j for i in commit for j in range(i - 4, i + 10)}
    near |= {0, 1, 2, len(trace) - 2, len(trace) - 1}
    near = {i for i in near if 0 <= i < len(trace)}
    rest = sorted(set(range(len(trace))) - near)
    picked = rng.choice(rest, size=min(sample, len(rest)), replace=False) if rest else []
    return sorted(near | {int(i) for i in picked})


@pytest.mark.slow
def test_crash_at_file_system_calls(zygote: Zygote, small_stores, kind: str):
    store = small_stores[kind]
    old, new, _ = prepare(zygote, store)
    checker = Checker(store, old, new)
    # the hooked calls of a complete run (crash_at beyond the end)
    code, _ = zygote.run(relabel_argv(store, SEEDS["new"]), crash_at=10**9)
    assert code == 0, zygote.log.read_text()
    trace = _events(zygote.log)
    assert checker.check("new") == "new"
    assert any(e.startswith("replace:x") for e in trace), trace  # the commit is hooked
    seen = {"old": 0, "new": 0}
    for crash_at in crash_points(trace, np.random.default_rng(99)):
        target = other_version(checker.current)
        before = checker.current
        code, _ = zygote.run(relabel_argv(store, SEEDS[target]), crash_at=crash_at)
        assert code == 137, zygote.log.read_text()
        now = checker.check(target)
        seen["old" if now == before else "new"] += 1
    # crashing before the commit keeps the old set; after it, the new one is complete
    assert seen["old"] >= 1 and seen["new"] >= 1, seen
    code, _ = zygote.run(relabel_argv(store, SEEDS[other_version(checker.current)]))
    assert code == 0
    assert temporaries(store, live_versions(store)) == []
