"""Command-line smoke tests on tiny stores: make-synthetic -> relabel -> inspect."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import KINDS
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.store import open_store
from hipi_offline.tasks import builtin_spec_names, load_task_spec

METHODS = ("hipi", "no-partition", "random", "original")
EPISODES, STEPS = 30, 12
REPO = Path(__file__).resolve().parents[1]


def cli(*args: object, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    detail = f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert result.exit_code == code, detail
    return result


def relabel(store: Path, *extra: object, code: int = 0):
    return cli("relabel", store, "--device", "cpu", *extra, code=code)


def labels(store: Path, name: str):
    with open_store(store) as s:
        return s.read_labels(name)


@pytest.fixture
def store(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"runner.{kind}"
    result = cli("make-synthetic", path, "--episodes", EPISODES, "--steps", STEPS, "--seed", 4)
    assert f"wrote {EPISODES} episodes x {STEPS} steps" in result.stdout
    return path


def test_help():
    out = cli("--help").stdout
    for command in ("make-synthetic", "relabel", "inspect"):
        assert command in out
    out = cli("relabel", "--help").stdout
    for option in ("--tasks", "--method", "--top-k", "--temperature", "--overwrite"):
        assert option in out


def test_make_synthetic(store: Path):
    with open_store(store) as s:
        assert (s.num_episodes, s.num_steps) == (EPISODES, EPISODES * STEPS)
        assert set(s.step_fields()) == {
            "steps/observations",
            "steps/actions",
            "steps/infos/speed",
            "steps/infos/height",
        }
        assert set(s.episode_fields()) == {"episodes/task", "episodes/goal"}
        assert s.label_names() == []
    out = cli("inspect", store).stdout
    assert f"episodes {EPISODES}, steps {EPISODES * STEPS}" in out
    assert "steps/infos/speed" in out and "episodes/task" in out
    assert "label sets: (none)" in out


def test_make_synthetic_seed_and_overwrite(store: Path):
    relabel(store, "--tasks", "synthetic-velocity", "--candidates", 8)
    with open_store(store) as s:
        before = s.read_steps("steps/infos/speed")
    cli("make-synthetic", store, "--episodes", 5, "--steps", 7, "--seed", 9, "--overwrite")
    with open_store(store) as s:
        assert (s.num_episodes, s.num_steps) == (5, 35)
        assert s.label_names() == []  # the old store's label sets went with it
        assert not np.array_equal(s.read_steps("steps/infos/speed")[:35], before[:35])


@pytest.mark.parametrize("compression", ["fast", "small"])
def test_make_synthetic_compressed(tmp_path: Path, compression: str):
    for kind in KINDS:
        path = tmp_path / f"c.{kind}"
        cli("make-synthetic", path, "--episodes", 4, "--steps", 5, "--compression", compression)
        relabel(path, "--tasks", "synthetic-linear", "--candidates", 8)
        assert labels(path, "hipi").num_episodes == 4


def test_every_method_then_inspect(store: Path):
    for method in METHODS:
        out = relabel(
            store, "--tasks", "synthetic-velocity", "--method", method, "--candidates", 40
        ).stdout
        assert f"label set '{method}' ({method}, target): {EPISODES} episodes" in out
        assert "posterior entropy" in out and "data covers" in out
        assert "device=cpu" in out
        lab = labels(store, method)
        assert lab.attrs["method"] == method
        assert lab.num_episodes == EPISODES
        k = EPISODES if method == "original" else 40  # original: the distinct episode tasks
        assert lab.num_candidates == k
        assert lab.k == min(32, k)
        assert np.all(np.exp(lab.topk_logprob.astype(np.float64)).sum(axis=1) <= 1 + 1e-5)
        assert np.isclose(lab.coverage.sum(), 1.0)
    with open_store(store) as s:
        assert s.label_names() == sorted(METHODS)

    out = cli("inspect", store).stdout
    assert "label sets:" in out and "label sets: (none)" not in out
    for method in METHODS:
        assert re.search(
            rf"^  {re.escape(method)}: method {re.escape(method)}, family target", out, re.M
        )
    assert len(re.findall(r"posterior entropy [\d.]+ nats", out)) == len(METHODS)
    assert len(re.findall(r"data covers [\d.]+ tasks in effect", out)) == len(METHODS)
    assert out.count("best covered:") == len(METHODS)
    assert out.count("worst covered:") == len(METHODS)


def test_hipi_tracks_the_commanded_speed(store: Path):
    """The most probable relabeled speed follows the hidden commanded one (episodes are
    short, so the agent lags behind it: a correlation, not equality)."""
    relabel(store, "--tasks", "synthetic-velocity", "--candidates", 128)
    relabel(store, "--tasks", "synthetic-velocity", "--method", "random", "--candidates", 128)
    with open_store(store) as s:
        truth = s.read_episode_field("task")[:, 0]
    hipi = labels(store, "hipi").most_probable_tasks()[:, 0]
    rand = labels(store, "random").most_probable_tasks()[:, 0]
    assert np.corrcoef(hipi, truth)[0, 1] > 0.8
    assert abs(np.corrcoef(rand, truth)[0, 1]) < 0.6


def test_original_is_the_commanded_task(store: Path):
    relabel(store, "--tasks", "synthetic-velocity", "--method", "original")
    with open_store(store) as s:
        truth = s.read_episode_field("task")
    lab = labels(store, "original")
    np.testing.assert_array_equal(lab.most_probable_tasks(), truth)
    np.testing.assert_allclose(lab.topk_logprob[:, 0], 0.0)
    assert np.all(lab.entropy == 0)


def test_top_k_all_stores_every_candidate(store: Path):
    relabel(store, "--tasks", "synthetic-velocity", "--candidates", 24, "--top-k", "all")
    lab = labels(store, "hipi")
    assert lab.topk_index.shape == (EPISODES, 24)
    assert lab.topk_logprob.shape == (EPISODES, 24)
    np.testing.assert_array_equal(np.sort(lab.topk_index, axis=1), np.tile(np.arange(24), (30, 1)))
    probs = np.exp(lab.topk_logprob.astype(np.float64))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.diff(lab.topk_logprob, axis=1) <= 0)  # most probable first
    assert int(lab.attrs["k"]) == 24
    assert "top-k=24" in cli("inspect", store).stdout


@pytest.mark.parametrize(("top_k", "stored"), [("1", 1), ("5", 5), ("24", 24), ("1000", 24)])
def test_top_k_number(store: Path, top_k: str, stored: int):
    relabel(store, "--tasks", "synthetic-linear", "--candidates", 24, "--top-k", top_k)
    assert labels(store, "hipi").topk_index.shape == (EPISODES, stored)


def test_custom_name(store: Path):
    out = relabel(store, "--tasks", "synthetic-velocity", "--name", "speed-v1.a_b").stdout
    assert "label set 'speed-v1.a_b'" in out
    relabel(store, "--tasks", "synthetic-goal", "--name", "goals", "--candidates", 16)
    with open_store(store) as s:
        assert s.label_names() == ["goals", "speed-v1.a_b"]
    assert labels(store, "goals").attrs["family"] == "goal"
    out = cli("inspect", store).stdout
    assert "  goals: method hipi, family goal, K=16" in out
    assert "  speed-v1.a_b: method hipi, family target, K=256" in out


def test_builtin_specs_listed():
    names = builtin_spec_names()
    for name in ("cheetah-velocity", "synthetic-goal", "synthetic-linear", "synthetic-velocity"):
        assert name in names


SYNTHETIC_FIELDS = {
    "steps/observations",
    "steps/actions",
    "steps/infos/speed",
    "steps/infos/height",
}


@pytest.mark.parametrize("spec", builtin_spec_names())
def test_builtin_spec_names_work(store: Path, spec: str):
    """Every built-in spec loads by name; those whose fields the synthetic runner has
    relabel it, the others fail with the one-line error that names the missing field."""
    task_spec = load_task_spec(spec)
    family = task_spec.family.name
    missing = set(task_spec.family.fields) - SYNTHETIC_FIELDS
    if missing:
        result = relabel(store, "--tasks", spec, "--name", "b", code=2)
        assert result.stderr.strip().startswith(f"error: {spec}: ")
        assert any(field in result.stderr for field in missing)
        return
    out = relabel(store, "--tasks", spec, "--name", "b", "--candidates", 16).stdout
    assert f"label set 'b' (hipi, {family})" in out
    lab = labels(store, "b")
    assert lab.attrs["spec_origin"] == spec
    assert lab.attrs["family"] == family
    assert lab.num_candidates == 16
    assert np.isfinite(lab.log_z).all() and np.isfinite(lab.entropy).all()


def test_builtin_specs_have_one_copy_named_in_datasets_readme():
    """The packaged built-ins are the only copy of each spec; datasets/README.md names
    every one (and its way to print one) instead of holding a second copy."""
    folder = REPO / "datasets"
    assert sorted(folder.glob("*.y*ml")) == []
    readme = (folder / "README.md").read_text()
    builtin = REPO / "hipi_offline" / "tasks" / "builtin"
    for name in builtin_spec_names():
        assert f"`{name}`" in readme
        path = builtin / f"{name}.yaml"
        assert load_task_spec(name).source == load_task_spec(path).source == path.read_text()


def test_spec_file_with_explicit_candidates(store: Path, tmp_path: Path):
    spec = tmp_path / "speeds.yaml"
    spec.write_text(
        "family: target\nfeature: steps/infos/speed\n"
        "prior: {uniform: {low: [0.0], high: [3.0]}}\n"
        "candidates: [0.5, 1.0, 1.5, 2.0, 2.5]\ntemperature: 0.5\n"
    )
    out = relabel(store, "--tasks", spec, "--top-k", "all").stdout
    assert "K=5" in out
    lab = labels(store, "hipi")
    np.testing.assert_array_equal(lab.candidates[:, 0], [0.5, 1.0, 1.5, 2.0, 2.5])
    assert lab.attrs["temperature"] == 0.5
    assert lab.attrs["spec_origin"] == str(spec)
    assert "candidates: [0.5" in lab.attrs["spec"]


def test_overrides_and_determinism(store: Path):
    relabel(store, "--tasks", "synthetic-velocity", "--candidates", 16, "--seed", 3)
    first = labels(store, "hipi")
    relabel(store, "--tasks", "synthetic-velocity", "--candidates", 16, "--seed", 3,
            "--overwrite", "--chunk-steps", 7)  # fmt: skip
    again = labels(store, "hipi")
    np.testing.assert_array_equal(first.candidates, again.candidates)
    np.testing.assert_array_equal(first.topk_index, again.topk_index)
    np.testing.assert_allclose(first.topk_logprob, again.topk_logprob, rtol=1e-5, atol=1e-6)

    out = relabel(store, "--tasks", "synthetic-velocity", "--candidates", 16, "--seed", 4,
                  "--temperature", 2.5, "--overwrite").stdout  # fmt: skip
    assert "K=16" in out
    other = labels(store, "hipi")
    assert not np.array_equal(first.candidates, other.candidates)
    assert other.attrs["temperature"] == 2.5 and other.attrs["seed"] == 4
    assert "temperature 2.5" in cli("inspect", store).stdout


def test_overwrite_replaces_only_that_set(store: Path):
    relabel(store, "--tasks", "synthetic-velocity", "--candidates", 8, "--name", "keep")
    relabel(store, "--tasks", "synthetic-velocity", "--candidates", 8, "--seed", 1)
    keep = labels(store, "keep")
    relabel(store, "--tasks", "synthetic-linear", "--candidates", 8, "--overwrite")
    assert labels(store, "hipi").attrs["family"] == "linear"
    again = labels(store, "keep")
    np.testing.assert_array_equal(keep.topk_index, again.topk_index)
    assert dict(keep.attrs) == dict(again.attrs)


def test_device_auto_and_cpu(store: Path):
    out = cli("relabel", store, "--tasks", "synthetic-linear", "--candidates", 8).stdout
    assert re.search(r"device=(cpu|cuda)", out)
    out = relabel(store, "--tasks", "synthetic-linear", "--candidates", 8, "--name", "c").stdout
    assert "device=cpu" in out


# ------------------------------------------------------------------ the real console script
def _command() -> list[str]:
    script = shutil.which("hipi-offline")
    return [script] if script else [sys.executable, "-m", "cli.main"]


@pytest.mark.slow
def test_console_script_pipeline(tmp_path: Path):
    """The installed command in a subprocess: exit codes and streams as a user sees them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*_command(), *map(str, args)], capture_output=True, text=True, env=env, timeout=120
        )

    path = tmp_path / "runner.zarr"
    done = run("make-synthetic", path, "--episodes", 8, "--steps", 6)
    assert done.returncode == 0, done.stderr
    done = run("relabel", path, "--tasks", "synthetic-velocity", "--candidates", 12,
               "--name", "cli", "--device", "cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "label set 'cli'" in done.stdout
    done = run("inspect", path)
    assert done.returncode == 0, done.stderr
    assert "  cli: method hipi, family target, K=12" in done.stdout
    assert "posterior entropy" in done.stdout and "best covered" in done.stdout

    done = run("inspect", tmp_path / "missing.h5")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.h5'}: no such store"]
