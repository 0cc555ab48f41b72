"""Environments without a working GL library, and the noise of building them.

A broken GL is simulated portably in a subprocess: an invalid ``MUJOCO_GL`` value,
or a ``PyOpenGL`` on the path that cannot load its library (what a machine without
libEGL gives). Simulation must not need GL; only ``--video`` does, and then the
failure is one line naming the Debian packages and ``MUJOCO_GL``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hipi_offline.bc import BCConfig, train_bc
from hipi_offline.envs.base import GL_PACKAGES
from hipi_offline.store import create_store, open_store

ROOT = Path(__file__).resolve().parents[1]
BROKEN_OPENGL = (
    'raise ImportError("Unable to load EGL library: libEGL.so.1: cannot open shared object file")\n'
)


def _broken_gl_env(tmp: Path, how: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    env.pop("DISPLAY", None)
    if how == "invalid":
        env["MUJOCO_GL"] = "no-such-backend"
    else:  # an OpenGL package that cannot load its library, as without libEGL
        fake = tmp / "fake_gl" / "OpenGL"
        fake.mkdir(parents=True, exist_ok=True)
        (fake / "__init__.py").write_text(BROKEN_OPENGL)
        env["MUJOCO_GL"] = "egl"
        env["PYTHONPATH"] = f"{fake.parent}{os.pathsep}{ROOT}"
    return env


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "from cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def cheetah_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny task-agnostic cheetah run (what it does does not matter here)."""
    tmp = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    rows = 8 * 10
    with create_store(tmp / "c.h5", env="cheetah") as store:
        store.append_episodes(
            {
                "observations": rng.normal(size=(rows, 17)).astype(np.float32),
                "actions": rng.uniform(-1, 1, size=(rows, 6)).astype(np.float32),
                "infos/speed": rng.uniform(0, 3, rows).astype(np.float32),
            },
            [10] * 8,
        )
    out = tmp / "agnostic"
    config = BCConfig(out=out, task_agnostic=True, hidden=(8,), batch_size=16, steps=5)
    train_bc(tmp / "c.h5", config)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("how", ["invalid", "missing-library"])
def test_without_gl_simulation_works_and_video_is_one_line(
    cheetah_run: Path, tmp_path: Path, how: str
) -> None:
    env = _broken_gl_env(tmp_path, how)
    out = tmp_path / "c.h5"
    done = _cli(["collect", "cheetah", "--out", str(out), "--episodes", "1", "--steps", "3"], env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "settotalmass" not in done.stderr
    with open_store(out) as store:
        assert store.num_episodes == 1
    plain = ["evaluate", str(cheetah_run), "--episodes", "1", "--steps", "3", "--no-progress"]
    done = _cli(plain, env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    video = tmp_path / "ep.gif"
    done = _cli([*plain, "--video", str(video), "--json", str(tmp_path / "e.json")], env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: rendering needs"), done.stderr
    assert GL_PACKAGES in lines[0] and "MUJOCO_GL" in lines[0]
    assert not video.exists() and not (tmp_path / "e.json").exists()


@pytest.mark.slow
def test_collect_prints_no_settotalmass_warning(tmp_path: Path) -> None:
    """dm_control logs MuJoCo's deprecation of the cheetah model's ``settotalmass``
    each time the model is compiled; a collect with two workers shows it zero times."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    args = ["collect", "cheetah", "--out", str(tmp_path / "c.zarr"), "--episodes", "2"]
    done = _cli([*args, "--steps", "2", "--workers", "2"], env)
    assert done.returncode == 0, done.stderr
    assert "settotalmass" not in done.stderr and "settotalmass" not in done.stdout


def test_other_model_warnings_still_show() -> None:
    """Only the settotalmass message is filtered, not the absl logger."""
    import logging

    from hipi_offline.envs.base import quiet_model_warnings

    quiet_model_warnings()
    logger = logging.getLogger("absl")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("compiler attribute 'settotalmass' is deprecated")
        logger.warning("another MuJoCo warning")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["another MuJoCo warning"]
