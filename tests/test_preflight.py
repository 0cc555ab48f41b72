"""hipi_offline.preflight: the checks made before the first byte is written (writable
folders, free space) and the byte counts their messages show."""

from __future__ import annotations

from pathlib import Path

import pytest

from hipi_offline.errors import InputError, ResourceError
from hipi_offline.preflight import check_free_space, check_writable, existing_ancestor, human_bytes


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 2**30, "5.0 GiB"),
        (3 * 2**40, "3.0 TiB"),
    ],
)
def test_human_bytes(size: int, text: str) -> None:
    assert human_bytes(size) == text


def test_existing_ancestor(tmp_path: Path) -> None:
    assert existing_ancestor(tmp_path / "a" / "b" / "c.h5") == tmp_path
    (tmp_path / "f").write_text("x")
    assert existing_ancestor(tmp_path / "f") == tmp_path / "f"


def test_check_writable(tmp_path: Path) -> None:
    check_writable(tmp_path, "--out")  # an ordinary folder passes
    with pytest.raises(InputError, match=r"^--out: folder .*missing does not exist$"):
        check_writable(tmp_path / "missing", "--out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"^--out: folder .*file is not a folder$"):
        check_writable(tmp_path / "file", "--out")


def test_check_free_space_names_the_need_and_the_nearest_existing_folder(tmp_path: Path) -> None:
    check_free_space(tmp_path / "new" / "s.h5", 0, "the store")
    with pytest.raises(ResourceError) as err:
        check_free_space(tmp_path / "new" / "s.h5", 2**62, "the store")
    message = str(err.value)
    assert message.startswith("not enough free space for the store: needs about 4,194,304.0 TiB")
    assert f"{tmp_path} has " in message and "\n" not in message
