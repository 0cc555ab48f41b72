"""One-line errors: filesystem failures map to exit 2 (input) or 1 (environment), and a
very long path does not push the reason out of the line."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.errors import InputError, ResourceError, describe_os_error, one_line


def test_long_words_are_shortened_in_the_middle_and_the_reason_survives() -> None:
    line = one_line("/" + "a" * 5000 + "/x.h5: no such store", 300)
    assert line.endswith("/x.h5: no such store")
    assert len(line) < 300


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        (errno.ENOSPC, ResourceError, "no space left on device"),
        (errno.EROFS, ResourceError, "read-only file system"),
        (errno.EACCES, ResourceError, "Permission denied"),
        (errno.ENAMETOOLONG, InputError, "too long"),
        (errno.ENOENT, InputError, "No such file"),
    ],
)
def test_os_errors_become_one_line_of_the_right_kind(code: int, kind: type, words: str) -> None:
    import os

    err = describe_os_error(OSError(code, os.strerror(code), "/data/x.h5"))
    assert isinstance(err, kind)
    assert str(err).startswith("/data/x.h5: ")
    assert words.lower() in str(err).lower()


@pytest.mark.parametrize("command", ["inspect", "relabel"])
def test_a_5000_character_path_is_one_error_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / ("d" * 5000) / "x.h5"
    args = [command, str(path)] + (
        ["--tasks", "synthetic-velocity"] if command == "relabel" else []
    )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert len(lines[0]) < 600
    assert "Traceback" not in result.output
