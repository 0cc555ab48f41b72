"""What a newcomer meets first: the README's Python example runs as written, its two
set-up commands are the ones CI runs, and every command accepts ``--no-progress``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMANDS = (
    "make-synthetic",
    "collect",
    "relabel",
    "inspect",
    "train-bc",
    "evaluate",
    "import",
    "export",
)


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path: Path) -> None:
    (block,) = _python_blocks()
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "label set 'hipi'" in done.stdout
    assert "(8, 1)" in done.stdout
    assert (tmp_path / "demo.h5").is_file()


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    setup = README.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    commands = [
        line
        for block in re.findall(r"```bash\n(.*?)```", setup, re.S)
        for line in block.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1].strip() in ci


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_accepts_no_progress(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--no-progress" in result.output


def _cli_without_bar_switch(*args: str) -> subprocess.CompletedProcess[str]:
    """``hipi-offline ARGS`` in a subprocess whose environment does not hide bars."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_no_progress_hides_the_bars(tmp_path: Path) -> None:
    store = str(tmp_path / "s.h5")
    for args in (
        ("make-synthetic", store, "--episodes", "5", "--steps", "20"),
        ("relabel", store, "--tasks", "synthetic-velocity"),
    ):
        done = _cli_without_bar_switch(*args, "--no-progress")
        assert done.returncode == 0, done.stderr
        assert "%|" not in done.stderr


@pytest.mark.slow
def test_main_job_keeps_the_readme_invariant(tmp_path: Path) -> None:
    """The README's first command (without its pip install) on this machine: HIPI-BC
    beats task-agnostic BC by more than two paired standard errors."""
    setup = README.split("## Set up and run", 1)[1]
    line = next(
        line
        for line in re.findall(r"```bash\n(.*?)```", setup, re.S)[0].splitlines()
        if line.startswith("pip install")
    )
    steps = [step.strip() for step in line.split("&&")]
    assert steps[0].startswith("pip install")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    for step in steps[1:]:
        done = subprocess.run(
            step, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"{step}\n{done.stderr[-2000:]}"
    result = json.loads((tmp_path / "runs" / "demo-eval.json").read_text())
    hipi, agnostic = (run["per_episode"] for run in result["runs"])
    diff = np.array([a["return"] - b["return"] for a, b in zip(hipi, agnostic, strict=True)])
    stderr = diff.std(ddof=1) / np.sqrt(len(diff))
    assert diff.mean() > 2 * stderr, (diff.mean(), stderr)
