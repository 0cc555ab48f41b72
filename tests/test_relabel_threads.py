"""``relabel --threads``: torch's thread count during the math, its default, its checks.

Labels computed on 1 and 2 threads agree within float64 rounding (a reduction split
over threads adds in another order), and the caller's thread count is restored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hipi_offline.relabel.run as run_module
from cli.main import app
from hipi_offline.configs import FieldError
from hipi_offline.device import half_the_cores, torch_threads, usable_cores
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.store import open_store
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("threads") / "s.h5"
    make_synthetic_store(path, SyntheticConfig(episodes=300, steps=40, seed=3))
    return path


def spy_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records torch's thread count each time the posterior is computed."""
    seen: list[int] = []
    real = run_module._hipi_posterior

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "_hipi_posterior", spy)
    return seen


def test_threads_set_during_the_math_and_restored(store, monkeypatch):
    seen = spy_threads(monkeypatch)
    before = torch.get_num_threads()
    labels = {}
    for threads in (1, 2):
        name = f"t{threads}"
        relabel(store, RelabelConfig(tasks="synthetic-linear", name=name, threads=threads))
        with open_store(store) as s:
            labels[threads] = s.read_labels(name)
        assert torch.get_num_threads() == before
    assert seen == [1, 2]
    one, two = labels[1], labels[2]
    np.testing.assert_allclose(two.log_z, one.log_z, rtol=1e-12)
    np.testing.assert_allclose(two.coverage, one.coverage, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(two.entropy, one.entropy, rtol=1e-6)
    np.testing.assert_array_equal(two.topk_index[:, 0], one.topk_index[:, 0])


def test_default_is_half_the_usable_cores(store, monkeypatch):
    seen = spy_threads(monkeypatch)
    relabel(store, RelabelConfig(tasks="synthetic-linear", name="auto", overwrite=True))
    assert seen == [half_the_cores()]
    assert half_the_cores() == max(1, usable_cores() // 2)


def test_torch_threads_restores_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0 leaves torch's own count
        assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"threads": -1}, "must be an integer from 0 to 1024, got -1"),
        ({"threads": 5000}, "must be an integer from 0 to 1024, got 5000"),
        ({"threads": 1.5}, "must be an integer from 0 to 1024, got 1.5"),
        ({"threads": 2, "scheduler": "local:2"}, "with --scheduler each worker computes"),
    ],
)
def test_bad_threads_are_refused(options, needle):
    with pytest.raises(FieldError, match=needle):
        RelabelConfig(tasks="synthetic-linear", **options)


def test_bad_threads_on_the_command_line_change_nothing(store):
    with open_store(store) as s:
        before = s.label_names()
    args = ["relabel", str(store), "--tasks", "synthetic-linear", "--name", "x", "--threads", "-2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: --threads: must be an integer from 0 to 1024, got -2"]
    with open_store(store) as s:
        assert s.label_names() == before


def test_no_prefetch_reads_in_turn_and_gives_the_same_labels(store, monkeypatch):
    from hipi_offline.store.store import TrajectoryStore

    seen: list[bool] = []
    real = TrajectoryStore.iter_chunks

    def spy(self, fields, chunk_steps=65536, prefetch=True, start=0, stop=None):
        seen.append(prefetch)
        return real(self, fields, chunk_steps, prefetch, start, stop)

    monkeypatch.setattr(TrajectoryStore, "iter_chunks", spy)
    labels = {}
    for prefetch in (True, False):
        name = f"prefetch-{prefetch}"
        config = RelabelConfig(
            tasks="synthetic-linear", name=name, threads=1, prefetch=prefetch, chunk_steps=1000
        )
        relabel(store, config)
        with open_store(store) as s:
            labels[prefetch] = s.read_labels(name)
    assert seen == [True, False]
    on, off = labels[True], labels[False]
    for key in ("log_z", "topk_index", "topk_logprob", "entropy", "coverage"):
        # one thread, the same chunks in the same order: only who reads them differs
        np.testing.assert_array_equal(getattr(off, key), getattr(on, key), err_msg=key)
