"""Whole desk play streams (``collect desk --stream-out``): one episode per stream,
consistent with the windows cut from it, deterministic, resumable, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_arrays, store_arrays
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.collect import CollectConfig, collect
from hipi_offline.collect.episodes import unit_seeds
from hipi_offline.envs import make_env
from hipi_offline.errors import InputError
from hipi_offline.experts.desk_play import DeskPlay, PlayStream
from hipi_offline.store import open_store

STEPS, WINDOWS, EPISODES = 20, 3, 6  # two play streams of three short windows


def _config(**options: object) -> CollectConfig:
    defaults: dict[str, object] = {"episodes": EPISODES, "steps": STEPS, "windows": WINDOWS}
    return CollectConfig(**{**defaults, "seed": 2, **options})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("stream")
    windows, streams = folder / "desk.h5", folder / "desk-stream.h5"
    summary = collect("desk", windows, _config(stream_out=streams))
    assert (summary.total, summary.streams) == (EPISODES, EPISODES // WINDOWS)
    return windows, streams


def test_windows_are_rows_of_their_stream(stores: tuple[Path, Path]) -> None:
    windows, streams = (store_arrays(p) for p in stores)
    assert len(streams["episodes/ends"]) == EPISODES // WINDOWS
    np.testing.assert_array_equal(streams["episodes/stream"], np.arange(EPISODES // WINDOWS))
    stream_starts = np.concatenate([[0], streams["episodes/ends"][:-1]])
    window_starts = np.concatenate([[0], windows["episodes/ends"][:-1]])
    step_names = [n for n in windows if n.startswith("steps/")]
    assert set(streams) - set(windows) == {"steps/infos/subtask"}
    for e in range(EPISODES):
        stream, offset = (
            int(windows["episodes/stream"][e]),
            int(windows["episodes/stream_offset"][e]),
        )
        src = slice(stream_starts[stream] + offset, stream_starts[stream] + offset + STEPS)
        dst = slice(window_starts[e], window_starts[e] + STEPS)
        for name in step_names:
            np.testing.assert_array_equal(windows[name][dst], streams[name][src], err_msg=name)
        last = src.stop - 1
        task = int(windows["episodes/task"][e])
        assert streams["steps/infos/subtask"][last] == task  # the window's label
        assert streams["steps/infos/achieved"][last, task] == 1.0
    # each stream ends with the last row of its last window
    last_windows = np.flatnonzero(windows["episodes/window"] == WINDOWS - 1)
    lengths = np.diff(np.concatenate([[0], streams["episodes/ends"]]))
    np.testing.assert_array_equal(lengths, windows["episodes/stream_offset"][last_windows] + STEPS)


def test_stream_equals_a_direct_recording(stores: tuple[Path, Path]) -> None:
    """The first stored stream is the play stream of unit 0 recorded in one piece."""
    streams = store_arrays(stores[1])
    length = int(streams["episodes/ends"][0])
    env = make_env("desk")
    try:
        seed = int(unit_seeds(2, 0).generate_state(1)[0])
        piece = PlayStream(env, DeskPlay(), seed).record(length)
    finally:
        env.close()
    np.testing.assert_array_equal(streams["steps/actions"][:length], piece.actions)
    np.testing.assert_array_equal(streams["steps/observations"][:length], piece.observations)
    np.testing.assert_array_equal(streams["steps/infos/subtask"][:length], piece.subtask)


def test_windows_do_not_depend_on_the_stream_option(
    tmp_path: Path, stores: tuple[Path, Path]
) -> None:
    plain = tmp_path / "plain.h5"
    collect("desk", plain, _config())
    assert_same_arrays(store_arrays(plain), store_arrays(stores[0]))


@pytest.mark.slow
def test_resume_fills_both_stores(
    tmp_path: Path, stores: tuple[Path, Path], store_suffix: str
) -> None:
    """A run that stopped after one stream, or that had no stream store yet, is
    completed to the same two stores as a straight run."""
    windows, streams = tmp_path / f"desk{store_suffix}", tmp_path / f"desk-stream{store_suffix}"
    collect("desk", windows, _config(episodes=WINDOWS, stream_out=streams))
    collect("desk", windows, _config())  # the stream store falls behind
    collect("desk", windows, _config(stream_out=streams))
    for got, want in zip((windows, streams), stores, strict=True):
        assert_same_arrays(store_arrays(got), store_arrays(want))


def test_bad_stream_options(tmp_path: Path, stores: tuple[Path, Path]) -> None:
    with pytest.raises(InputError, match="--stream-out: only play environments"):
        collect("cheetah", tmp_path / "c.h5", CollectConfig(episodes=1, stream_out="s.h5"))
    same = tmp_path / "d.h5"
    with pytest.raises(InputError, match="another store"):
        collect("desk", same, _config(stream_out=same))
    with pytest.raises(InputError, match="give it as --stream-out"):
        collect("desk", stores[1], _config())
    with pytest.raises(InputError, match="collect_stream"):
        collect("desk", tmp_path / "e.h5", _config(stream_out=stores[0]))
    assert not any(tmp_path.iterdir())


def test_cli_stream_out(tmp_path: Path) -> None:
    runner = CliRunner()
    out, streams = tmp_path / "d.h5", tmp_path / "s.h5"
    args = ["collect", "desk", "--out", str(out), "--episodes", "2", "--steps", str(STEPS)]
    result = runner.invoke(app, [*args, "--windows", "2", "--stream-out", str(streams)])
    assert result.exit_code == 0, result.output
    assert "1 whole play streams" in result.output
    with open_store(streams) as store:
        assert store.num_episodes == 1 and "steps/infos/subtask" in store.step_fields()
    bad = ["collect", "cheetah", "--out", str(tmp_path / "c.h5"), "--stream-out", str(streams)]
    result = runner.invoke(app, bad)
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: --stream-out")
