"""SLURM through dask-jobqueue: the job script docs/SCALE.md shows is the one generated,
and a run against a stand-in ``sbatch`` (which starts the job script locally) works."""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import pytest

from hipi_offline.slurm import SlurmJobs, job_script, main

ROOT = Path(__file__).resolve().parents[1]
DOC_SETTINGS = SlurmJobs(
    jobs=4,
    cores=16,
    memory="64GiB",
    partition="cpu",
    account="robot-learning",
    walltime="04:00:00",
    python="python3",
    extra=("--exclusive",),
    host="127.0.0.1",
)


def _generic(script: str) -> str:
    """The script with the scheduler's (random) port spelled as in the docs."""
    return re.sub(r"tcp://[\d.]+:\d+", "tcp://HEAD-NODE:PORT", script).strip()


def test_docs_show_the_generated_job_script() -> None:
    script = _generic(job_script(DOC_SETTINGS))
    assert "#SBATCH --cpus-per-task=16" in script
    assert "--nthreads 1" in script and "--nworkers 16" in script
    assert script in (ROOT / "docs" / "SCALE.md").read_text()


def test_print_job_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--cores", "2", "--memory", "2GiB", "--host", "127.0.0.1", "--print-job-script"]) == 0
    )
    out = capsys.readouterr().out
    assert "#SBATCH --cpus-per-task=2" in out and "--memory-limit 1.00GiB" in out


FAKE_SBATCH = """#!/bin/sh
# stand-in for SLURM: run the job script in its own process group, print a job id
here="$(dirname "$0")"
cp "$1" "$here/job.sh"  # the caller deletes its script once sbatch returns
setsid sh "$here/job.sh" > "$here/job.log" 2>&1 &
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/bin/sh
for job in "$@"; do kill -- "-$job" 2>/dev/null; done; exit 0
"""


@pytest.mark.slow
def test_a_command_runs_on_slurm_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "answer.txt"
    probe = (
        "import sys; from distributed import Client; "
        "c = Client(sys.argv[-1]); "
        f"open({str(out)!r}, 'w').write(str(c.submit(sum, [1, 2, 3]).result()))"
    )
    code = main(
        ["--cores", "1", "--memory", "1GiB", "--host", "127.0.0.1", "--python", sys.executable]
        + ["--wait-seconds", "300"]
        + ["--", sys.executable, "-c", probe]
    )
    assert code == 0, (tmp_path / "bin" / "job.log").read_text()
    assert out.read_text() == "6"
