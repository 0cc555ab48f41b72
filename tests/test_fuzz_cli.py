"""Fuzzing the command line with hostile input: random options, task specs, damaged
stores and damaged checkpoints.

Every case runs the real entry point (``cli.main.main``) in this process and must
end with exit code 0, or with exit code 2 and exactly one ``error:`` line, never a
traceback; a failing case must leave every file as it was. The generator is seeded,
the number of cases bounded, and each group stops early at a time limit (then
fewer cases run, the same ones on every machine up to that point).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import KINDS, SPEED_TARGET_SPEC, SUFFIXES
from disk import snapshot

from cli.main import main
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

SEED = 20261201
CASES = 80
SECONDS = 60.0
NASTY_NUMBERS = (
    "0", "-1", "-0", "1e309", "nan", "inf", "-inf", "1e-320", "2e9", "1000000000",
    "18446744073709551617", "1.5", "abc", "", " ", "0x10", "1e308", "-9223372036854775809",
)  # fmt: skip
NASTY_NAMES = (
    "",
    ".hidden",
    "zarr.json",
    "a\n",
    "a/b",
    "../x",
    "x" * 300,
    "-x",
    "a b",
    "\x01",
    "ok",
)
SPEC = SPEED_TARGET_SPEC + "temperature: 1.0\n"
SPEC_VALUES = (
    "null", "[]", "{}", "-1", "0", "1e400", ".nan", ".inf", "-.inf", "abc", "[1, 2, 3]",
    "{uniform: {low: [0.0], high: [1e39]}}", "{uniform: {low: [3.0], high: [0.0]}}",
    "{sphere: {radius: .inf}}", "1e-320", "2000000000", "'x'", "[[1], [2, 3]]", "true",
)  # fmt: skip


# ------------------------------------------------------------------ running
@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    crash: str | None


def run_cli(args: list[str]) -> Outcome:
    """Run ``hipi-offline ARGS`` in this process; a crash is the formatted traceback."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["hipi-offline", *args]
    crash = None
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - any escape is the bug we look for
        crash = traceback.format_exc()
        code = -1
    finally:
        sys.argv = saved
    return Outcome(code, out.getvalue(), err.getvalue(), crash)


def error_lines(stderr: str) -> list[str]:
    """Lines of stderr that are not progress-bar refreshes or warnings."""
    lines = []
    for line in stderr.replace("\r", "\n").splitlines():
        if not line.strip() or "%|" in line or line.startswith(("WARNING:", "warning:")):
            continue
        lines.append(line)
    return lines


def check(case: str, outcome: Outcome, before: dict[str, str], root: Path) -> str | None:
    """A description of what went wrong, or None."""
    if outcome.crash is not None:
        return f"{case}: traceback\n{outcome.crash[-1500:]}"
    if "Traceback" in outcome.stderr:
        return f"{case}: traceback in stderr\n{outcome.stderr[-1500:]}"
    if outcome.code not in (0, 2):
        return f"{case}: exit code {outcome.code}: {outcome.stderr[-500:]}"
    if outcome.code == 2:
        lines = error_lines(outcome.stderr)
        if len(lines) != 1 or not lines[0].startswith("error:"):
            return f"{case}: expected one error line, got {lines[:5]!r}"
        after = snapshot(root)
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))[:5]
            return f"{case}: exit 2 but files changed: {changed}"
    return None


def fuzz(
    name: str, make_case: Callable[[np.random.Generator, Path], tuple[str, list[str]]], base: Path
) -> None:
    """Run up to CASES seeded cases of one group (stopping at SECONDS); fail with all
    problems found."""
    rng = np.random.default_rng([SEED, sum(map(ord, name))])
    problems: list[str] = []
    started = time.monotonic()
    for index in range(CASES):
        if time.monotonic() - started > SECONDS:
            break
        root = base / f"{name}-{index}"
        shutil.copytree(base / "template", root, symlinks=True)
        case, args = make_case(rng, root)
        before = snapshot(root)
        cwd = os.getcwd()
        os.chdir(root)
        try:
            outcome = run_cli(args)
        finally:
            os.chdir(cwd)
        problem = check(f"{name}[{index}] {case} {args!r}", outcome, before, root)
        if problem:
            problems.append(problem)
        shutil.rmtree(root, ignore_errors=True)
    assert not problems, "\n\n".join(problems[:8])


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A template folder: tiny HDF5 and Zarr stores with a ``hipi`` label set, a spec
    and a finished 20-step BC run."""
    root = tmp_path_factory.mktemp("fuzz")
    template = root / "template"
    template.mkdir()
    os.environ["TQDM_DISABLE"] = "1"
    for kind in KINDS:
        store = template / f"s.{kind}"
        make_synthetic_store(store, SyntheticConfig(episodes=6, steps=12, seed=1))
        relabel(store, RelabelConfig(tasks="synthetic-velocity", candidates=16))
    (template / "spec.yaml").write_text(SPEC)
    outcome = run_cli(
        ["train-bc", str(template / "s.h5"), "--labels", "hipi", "--out", str(template / "run"),
         "--steps", "20", "--warmup-steps", "2", "--checkpoint-every", "10", "--threads", "1",
         "--batch-size", "16", "--hidden", "8,8", "--no-progress"]
    )  # fmt: skip
    assert outcome.code == 0, outcome.stderr + (outcome.crash or "")
    return root


# ------------------------------------------------------------------ groups
def _options(rng: np.random.Generator, root: Path) -> tuple[str, list[str]]:
    store = str(rng.choice([f"s{suffix}" for suffix in SUFFIXES]))
    pick = lambda pool: str(pool[int(rng.integers(len(pool)))])  # noqa: E731
    command = pick(["relabel", "train-bc", "make-synthetic", "export", "inspect"])
    if command == "relabel":
        options = {
            "--temperature": NASTY_NUMBERS,
            "--candidates": NASTY_NUMBERS,
            "--top-k": (*NASTY_NUMBERS, "all"),
            "--chunk-steps": NASTY_NUMBERS,
            "--seed": NASTY_NUMBERS,
            "--name": NASTY_NAMES,
            "--method": ("hipi", "random", "original", "bogus", ""),
            "--device": ("cpu", "cuda", "tpu", ""),
        }
        args = ["relabel", store, "--tasks", pick(["spec.yaml", "synthetic-velocity", "nope"])]
    elif command == "train-bc":
        options = {
            "--steps": NASTY_NUMBERS,
            "--batch-size": NASTY_NUMBERS,
            "--hidden": ("8,8", "0", "-1,8", "a,b", "", "1000000000,1000000000", "8,,8"),
            "--lr": NASTY_NUMBERS,
            "--seed": NASTY_NUMBERS,
            "--warmup-steps": NASTY_NUMBERS,
            "--log-every": NASTY_NUMBERS,
            "--checkpoint-every": NASTY_NUMBERS,
            "--labels": NASTY_NAMES,
            "--activation": ("relu", "bogus"),
            "--head": ("gaussian", "bogus"),
        }
        out = pick(["run", "new-run", "s.h5", "spec.yaml"])
        args = ["train-bc", store, "--out", out, "--threads", "1", "--steps", "3"]
    elif command == "make-synthetic":
        options = {
            "--episodes": NASTY_NUMBERS,
            "--steps": NASTY_NUMBERS,
            "--seed": NASTY_NUMBERS,
            "--compression": ("none", "fast", "bogus"),
        }
        args = ["make-synthetic", pick(["s.h5", "s.zarr", "spec.yaml", "run", "x.txt"])]
    elif command == "export":
        options = {}
        args = ["export", pick(["minari", "d4rl"]), store, pick(["run", ".", "s.zarr", store])]
    else:
        options = {}
        args = ["inspect", pick([store, "spec.yaml", "run", "missing.h5"])]
    for option, pool in options.items():
        if rng.random() < 0.35:
            args += [option, pick(pool)]
    if rng.random() < 0.3:
        args.append("--overwrite")
    return "options", args


def _spec(rng: np.random.Generator, root: Path) -> tuple[str, list[str]]:
    lines = SPEC.splitlines()
    mutation = int(rng.integers(4))
    if mutation == 0:  # replace a value
        i = int(rng.integers(len(lines)))
        key = lines[i].split(":", 1)[0]
        lines[i] = f"{key}: {SPEC_VALUES[int(rng.integers(len(SPEC_VALUES)))]}"
    elif mutation == 1:  # drop a key
        del lines[int(rng.integers(len(lines)))]
    elif mutation == 2:  # an unknown key or a duplicate
        lines.append(str(rng.choice(["bogus: 1", "family: linear", "candidates: 3"])))
    text = "\n".join(lines) + "\n"
    data = text.encode()
    if mutation == 3:  # damage bytes
        raw = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
        data = bytes(raw)
    (root / "spec.yaml").write_bytes(data)
    store = str(rng.choice([f"s{suffix}" for suffix in SUFFIXES]))
    return f"spec mutation {mutation}", ["relabel", store, "--tasks", "spec.yaml", "--name", "new"]


def _damage_file(rng: np.random.Generator, path: Path) -> str:
    raw = bytearray(path.read_bytes())
    if not raw or rng.random() < 0.3:
        cut = int(rng.integers(len(raw) + 1))
        path.write_bytes(bytes(raw[:cut]))
        return f"truncated {path.name} at {cut}"
    for _ in range(int(rng.integers(1, 16))):
        raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
    path.write_bytes(bytes(raw))
    return f"flipped bytes of {path.name}"


ATTR_VALUES = (None, -1, 0, 2**70, 1.5, float("nan"), "x" * 5000, "", [1, 2], {"a": 1}, True)


def _h5_attr(value: object) -> object:
    """What HDF5 can hold of a hostile attribute value."""
    if value is None or isinstance(value, (list, dict)):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return float(value)
    return value


def _damage_semantics(rng: np.random.Generator, store: Path) -> str:
    """Well-formed files with hostile content: root attributes and episodes/ends."""
    import h5py
    import zarr

    key = str(rng.choice(["hipi_offline_format", "env", "chunk_rows", "compression", "new"]))
    value = ATTR_VALUES[int(rng.integers(len(ATTR_VALUES)))]
    ends_kind = int(rng.integers(4))
    ends = [np.array([5, 3, 12]), np.array([-4]), np.array([2**62]), np.array([0.5, 1.5])][
        ends_kind
    ]
    if store.suffix == ".h5":
        with h5py.File(store, "r+") as f:
            if rng.random() < 0.5:
                f.attrs[key] = _h5_attr(value)
                return f"attribute {key}={value!r}"
            del f["episodes/ends"]
            f["episodes/ends"] = ends
            return f"episodes/ends={ends.tolist()}"
    group = zarr.open_group(str(store), mode="r+")
    if rng.random() < 0.5:
        group.attrs[key] = value
        return f"attribute {key}={value!r}"
    del group["episodes/ends"]
    group.create_array("episodes/ends", data=ends)
    return f"episodes/ends={ends.tolist()}"


def _store(rng: np.random.Generator, root: Path) -> tuple[str, list[str]]:
    store = root / str(rng.choice([f"s{suffix}" for suffix in SUFFIXES]))
    label_root = Path(str(store) + ".labels") if store.suffix == ".h5" else store / "labels"
    if rng.random() < 0.3:
        what = _damage_semantics(rng, store)
    elif rng.random() < 0.5 or store.suffix == ".h5" and rng.random() < 0.5:
        files = [p for p in (store.rglob("*") if store.is_dir() else [store]) if p.is_file()]
        files += [p for p in label_root.rglob("*") if p.is_file() and not p.is_symlink()]
        target = files[int(rng.integers(len(files)))]
        if rng.random() < 0.15:
            target.unlink()
            what = f"deleted {target.relative_to(root)}"
        else:
            what = _damage_file(rng, target)
    else:
        files = [p for p in label_root.rglob("*") if p.is_file()]
        target = files[int(rng.integers(len(files)))]
        what = _damage_file(rng, target)
    command = str(rng.choice(["inspect", "relabel", "train-bc", "export"]))
    name = store.name
    args = {
        "inspect": ["inspect", name],
        "relabel": ["relabel", name, "--tasks", "spec.yaml", "--name", "new"],
        "train-bc": [
            "train-bc",
            name,
            "--labels",
            "hipi",
            "--out",
            "new-run",
            "--steps",
            "3",
            "--threads",
            "1",
            "--hidden",
            "8,8",
            "--batch-size",
            "8",
        ],  # fmt: skip
        "export": ["export", "minari", name, "exported"],
    }[command]
    return what, args


def _checkpoint(rng: np.random.Generator, root: Path) -> tuple[str, list[str]]:
    checkpoints = sorted((root / "run" / "checkpoints").glob("*.safetensors"))
    target = checkpoints[-1] if rng.random() < 0.7 else root / "run" / "config.json"
    raw = bytearray(target.read_bytes())
    if target.suffix == ".safetensors" and rng.random() < 0.6:
        # damage the JSON header (8-byte length, then the header with the metadata)
        header = int.from_bytes(raw[:8], "little")
        for _ in range(int(rng.integers(1, 6))):
            raw[8 + int(rng.integers(max(header, 1)))] = int(rng.integers(32, 127))
        target.write_bytes(bytes(raw))
        what = f"header bytes of {target.name}"
    else:
        what = _damage_file(rng, target)
    args = ["train-bc", "s.h5", "--labels", "hipi", "--out", "run", "--steps", "30",
            "--warmup-steps", "2", "--checkpoint-every", "10", "--threads", "1",
            "--batch-size", "16", "--hidden", "8,8", "--resume"]  # fmt: skip
    return what, args


@pytest.mark.slow
def test_fuzz_options(base: Path) -> None:
    fuzz("options", _options, base)


@pytest.mark.slow
def test_fuzz_task_specs(base: Path) -> None:
    fuzz("spec", _spec, base)


@pytest.mark.slow
def test_fuzz_damaged_stores(base: Path) -> None:
    fuzz("store", _store, base)


@pytest.mark.slow
def test_fuzz_damaged_checkpoints(base: Path) -> None:
    fuzz("checkpoint", _checkpoint, base)
