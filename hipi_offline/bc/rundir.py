"""The run folder of train-bc: what may be replaced, where a run starts, and the
clean-up of a run that failed before its first checkpoint.

A run folder carries the marker :data:`~hipi_offline.ownership.MARKER_NAME` of kind
:data:`RUN_KIND`, written when the folder is taken into use. A folder made by an
earlier version, without the marker, is accepted as a run folder when it holds a
``config.json`` of :data:`RUN_FORMAT` and nothing but a run's own entries; it gets
the marker when it is used again. An empty folder is accepted too (nothing can be
lost). Anything else is refused with an error that names what is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hipi_offline import ownership
from hipi_offline.bc.config import BCConfig
from hipi_offline.bc.description import RUN_FORMAT, RunDescription
from hipi_offline.bc.policy import list_checkpoints
from hipi_offline.errors import InputError, describe_os_error, one_line
from hipi_offline.ownership import (
    MARKER_NAME,
    check_replaceable_folder,
    marker_kind,
    write_marker,
)
from hipi_offline.store.atomic import atomic_write_bytes

RUN_KIND = "bc-run"
"""The marker kind of a train-bc run folder."""
METRICS_HEADER = "step,loss,lr,samples_per_s,grad_norm\n"
CONFIG_MAX_BYTES = 16 << 20
"""A config.json larger than this is taken for damaged (real ones are a few KiB)."""
_FILES = frozenset({"config.json", "metrics.csv", ".lock", MARKER_NAME})
_FOLDERS = frozenset({"checkpoints", "tensorboard", ".cache"})
OWN_ENTRIES = _FILES | _FOLDERS
"""The entries a run folder may hold that train-bc wrote."""


@dataclass(frozen=True)
class Start:
    """Where a run starts: step 0 and no checkpoint for a fresh run."""

    step: int
    checkpoint: Path | None
    description: RunDescription | None
    """The run description (config.json) of the run that is resumed."""


# ---------------------------------------------------------------- what may be touched
def check_own_entries(run_dir: Path) -> None:
    """Refuse a run folder whose own entries are links or of the wrong kind (a crafted
    or damaged folder): train-bc never reads or writes through them."""
    ownership.check_own_entries(run_dir, _FILES, _FOLDERS)


def read_description(run_dir: Path) -> dict[str, Any]:
    """The content of ``run_dir/config.json``, or an InputError for a damaged one."""
    path = run_dir / "config.json"
    try:
        if path.stat().st_size > CONFIG_MAX_BYTES:
            raise ValueError(f"larger than {CONFIG_MAX_BYTES >> 20} MiB")
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, RecursionError) as err:
        reason = one_line(str(err), 120) or type(err).__name__
        raise InputError(
            f"--out {run_dir}: config.json is damaged ({reason}); pass --overwrite to start over"
        ) from None
    return data


def is_legacy_run(run_dir: Path) -> bool:
    """A run folder of a version before run folders were marked: a config.json of
    :data:`RUN_FORMAT` and nothing but a run's own entries."""
    try:
        names = set(os.listdir(run_dir))
    except OSError:
        return False
    if "config.json" not in names or not names <= OWN_ENTRIES:
        return False
    config = run_dir / "config.json"
    if config.is_symlink() or not config.is_file():
        return False
    try:
        return read_description(run_dir).get("format") == RUN_FORMAT
    except InputError:
        return False


def check_destination(run_dir: Path, config: BCConfig) -> None:
    """Refuse an ``--out`` that is not absent, empty or a run folder (reads only)."""
    option = "--overwrite" if config.overwrite else "--out"
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        check_replaceable_folder(run_dir, RUN_KIND, option)
    if not run_dir.exists():
        return
    with os.scandir(run_dir) as entries:
        empty = next(entries, None) is None
    if not empty and marker_kind(run_dir) != RUN_KIND and not is_legacy_run(run_dir):
        check_replaceable_folder(run_dir, RUN_KIND, option)
    check_own_entries(run_dir)


# ---------------------------------------------------------------- where a run starts
def _describe_diff(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    keys = sorted(set(ours) | set(theirs))
    diffs = [k for k in keys if ours.get(k) != theirs.get(k)]
    return ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now" for k in diffs[:3])


def start_point(
    run_dir: Path, config: BCConfig, fingerprint: dict[str, Any], network: dict[str, Any]
) -> Start:
    """Where the run in ``run_dir`` starts (reads only). A folder without a committed
    checkpoint starts afresh (nothing is lost); one with checkpoints must hold the same
    config, data and network, and is continued only with ``--resume``."""
    if config.overwrite or not (run_dir / "config.json").is_file():
        return Start(0, None, None)
    found = list_checkpoints(run_dir)
    if not found:
        return Start(0, None, None)
    previous = read_description(run_dir)
    try:
        old_config = BCConfig.from_json(previous["config"]).identity()
        old_fingerprint = previous["fingerprint"]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(
            f"--out {run_dir}: config.json is damaged (no readable config or fingerprint); "
            "pass --overwrite to start over"
        ) from None
    new_config = config.identity()
    if old_config != new_config:
        raise InputError(
            f"--out {run_dir}: holds a run with a different config "
            f"({_describe_diff(new_config, old_config)}); pass --overwrite to replace it "
            "or choose another --out"
        )
    if old_fingerprint != fingerprint:
        raise InputError(
            f"--out {run_dir}: was trained on different data "
            f"({_describe_diff(fingerprint, old_fingerprint)}); pass --overwrite to start over"
        )
    description = RunDescription.from_json(previous, f"{run_dir / 'config.json'}")
    if description.network != network:
        raise InputError(
            f"--out {run_dir}: config.json's network does not match its config; it is "
            "damaged, pass --overwrite to start over"
        )
    step, path = found[-1]
    if not config.resume:
        state = "a finished run" if step >= config.steps else f"a run at step {step}"
        hint = "" if step >= config.steps else "--resume to continue it or "
        raise InputError(
            f"--out {run_dir}: already holds {state} of {config.steps}; pass {hint}"
            "--overwrite to start over"
        )
    return Start(step, path, description)


# ---------------------------------------------------------------- writing the folder
def remove_own(run_dir: Path, *, everything: bool = False) -> None:
    """Delete the run's own entries (links as links); the marker and the lock stay
    unless ``everything``."""
    names = OWN_ENTRIES if everything else OWN_ENTRIES - {".lock", MARKER_NAME}
    ownership.remove_own_entries(run_dir, names)


def _lock(run_dir: Path, stack: contextlib.ExitStack) -> None:
    """Hold an exclusive lock on the run directory (released on exit or kill)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    handle = stack.enter_context(open(run_dir / ".lock", "a+"))  # noqa: SIM115
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise InputError(f"{run_dir}: another train-bc run is writing it") from None


class RunFolder:
    """The run folder this invocation writes: created, locked and marked here; what
    it wrote is removed again when the run fails before its first checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created: list[Path] = []
        """Folders this invocation created, outermost first."""
        self.had_marker = False

    def open(self, stack: contextlib.ExitStack) -> None:
        """Create the folder (and missing parents) and lock it."""
        missing = []
        folder = self.path
        while not folder.exists() and not folder.is_symlink():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            folder.mkdir()
            self.created.append(folder)
        self.had_marker = marker_kind(self.path) == RUN_KIND
        _lock(self.path, stack)

    def mark(self) -> None:
        """Write the run-folder marker unless it is there."""
        if marker_kind(self.path) != RUN_KIND:
            write_marker(self.path, RUN_KIND)

    def discard_if_unused(self) -> None:
        """After a failure: unless a checkpoint was committed, remove what this run
        wrote, and the folders it created (best effort; the failure is reported)."""
        with contextlib.suppress(OSError):
            if list_checkpoints(self.path):
                return
            remove_own(self.path, everything=not self.had_marker)
            for folder in reversed(self.created):
                folder.rmdir()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows past ``step`` (written after the checkpoint a run resumes from)."""
    keep = [METRICS_HEADER]
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines(keepends=True)[1:]:
            head = line.split(",", 1)[0]
            if line.endswith("\n") and head.isascii() and head.isdigit() and int(head) <= step:
                keep.append(line)
    atomic_write_bytes(path, "".join(keep).encode())


def clean_temporaries(run_dir: Path) -> None:
    """Remove what killed runs left: write temporaries and the spill cache."""
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            for stale in folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
    shutil.rmtree(run_dir / ".cache", ignore_errors=True)


def write_error(err: OSError, path: Path, resumable_at: int) -> Exception:
    """The one-line error of a failed write of ``path`` (a full disk names no file),
    with the step the run can be resumed from."""
    known = describe_os_error(OSError(err.errno, err.strerror, str(path)))
    hint = ""
    if resumable_at:
        hint = f"; the run can be resumed from step {resumable_at} with --resume"
    return type(known)(f"{known}{hint}")
