"""Progress bars obey TQDM_DISABLE even when it is set after the library is imported."""

from __future__ import annotations

import pytest

from hipi_offline.progress import progress_bar, progress_disabled
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store


@pytest.mark.parametrize(
    ("value", "enabled", "hidden"),
    [(None, True, False), (None, False, True), ("1", True, True), ("0", True, False)],
)
def test_progress_bar_reads_the_environment_at_each_call(
    monkeypatch: pytest.MonkeyPatch, value: str | None, enabled: bool, hidden: bool
) -> None:
    if value is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", value)
    assert progress_disabled() is (value == "1")
    with progress_bar(total=2, enabled=enabled) as bar:
        assert bar.disable is hidden


def test_library_bars_vanish_when_the_variable_is_set_late(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    make_synthetic_store(tmp_path / "shown.h5", SyntheticConfig(episodes=4, steps=5))
    assert "synthetic episodes" in capfd.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")  # what --no-progress does, after the imports
    make_synthetic_store(tmp_path / "hidden.h5", SyntheticConfig(episodes=4, steps=5))
    assert "synthetic episodes" not in capfd.readouterr().err
