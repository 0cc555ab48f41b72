"""Contract tests of the store, run over every registered storage backend.

Each backend owns its files, its crash-safe append with the committed
``episodes/ends``, and its label sets; these tests hold every backend to the same
behaviour: a create/append/reopen round trip, an append interrupted by an error
that leaves the committed episodes as they were, the label-set list/read/commit/
remove round trip, and the refusal of links inside the label area.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from disk import snapshot

from hipi_offline.errors import InputError
from hipi_offline.store import (
    LabelSet,
    backend_names,
    create_store,
    open_store,
    read_label_set,
    remove_label_set,
    write_label_set,
)
from hipi_offline.store.backends import (
    StorageBackend,
    backend_class,
    backend_kind,
    backend_suffixes,
    register_backend,
)
from hipi_offline.store.labels import label_area, list_label_sets
from hipi_offline.store.synthetic import synthetic_episodes

BACKENDS = backend_names()


def store_path(folder: Path, kind: str) -> Path:
    """``folder/s<suffix>`` with the usual suffix of backend ``kind``."""
    return folder / f"s{backend_suffixes(kind)[0]}"


def episodes(count: int, steps: int, seed: int) -> tuple[dict, dict]:
    return synthetic_episodes(count, steps, np.random.default_rng(seed))


def make_store(folder: Path, kind: str, count: int = 3, steps: int = 6) -> Path:
    """A store of ``count`` synthetic episodes of ``steps`` steps (seed 0)."""
    path = store_path(folder, kind)
    step_fields, episode_fields = episodes(count, steps, 0)
    with create_store(path, env="synthetic-runner", chunk_rows=4) as store:
        store.append_episodes(step_fields, [steps] * count, episode_fields)
    return path


def label_set(name: str, episodes: int, seed: int, k: int = 2, candidates: int = 5) -> LabelSet:
    """A valid label set over ``episodes`` episodes (posteriors from a seeded draw)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(episodes, candidates))
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    order = np.argsort(-logp, axis=1)[:, :k]
    return LabelSet(
        name=name,
        candidates=rng.uniform(0, 3, size=(candidates, 1)).astype(np.float32),
        log_z=rng.normal(size=candidates),
        topk_index=order.astype(np.int64),
        topk_logprob=np.take_along_axis(logp, order, axis=1).astype(np.float32),
        entropy=-(np.exp(logp) * logp).sum(axis=1).astype(np.float32),
        coverage=np.full(candidates, 1.0 / candidates),
        attrs={"method": "hipi", "seed": seed, "task_names": "[]"},
    )


def assert_same_labels(got: LabelSet, want: LabelSet) -> None:
    for key in ("candidates", "log_z", "topk_index", "topk_logprob", "entropy", "coverage"):
        np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)
    assert dict(got.attrs) == dict(want.attrs)


# ------------------------------------------------------------------ registry
def test_both_backends_are_registered_and_chosen_by_suffix() -> None:
    assert BACKENDS == ["hdf5", "zarr"]
    for kind in BACKENDS:
        cls = backend_class(kind)
        assert issubclass(cls, StorageBackend) and cls.kind == kind
        for suffix in backend_suffixes(kind):
            assert backend_kind(Path(f"data/s{suffix}")) == kind
            assert backend_kind(Path(f"data/s{suffix.upper()}")) == kind
    with pytest.raises(InputError, match=r"unknown store suffix '\.npz'; use .h5/.hdf5 \(HDF5\)"):
        backend_kind(Path("s.npz"))
    with pytest.raises(ValueError, match="already registered"):
        register_backend("other", "Other", (".zarr",), "somewhere:Other")
    assert backend_names() == BACKENDS


# ------------------------------------------------------------------ data
@pytest.mark.parametrize("kind", BACKENDS)
def test_create_append_reopen_round_trip(tmp_path: Path, kind: str) -> None:
    path = store_path(tmp_path, kind)
    first, first_eps = episodes(3, 6, 0)
    second, second_eps = episodes(2, 4, 1)
    with create_store(path, env="synthetic-runner", metadata={"note": "x"}, chunk_rows=4) as s:
        assert s.kind == kind
        s.append_episodes(first, [6, 6, 6], first_eps)
    with open_store(path, "a") as store:
        assert store.num_episodes == 3
        store.append_episodes(second, [4, 4], second_eps)
        np.testing.assert_array_equal(store.ends, [6, 12, 18, 22, 26])
    with open_store(path) as store:
        assert store.kind == kind
        assert store.attrs["env"] == "synthetic-runner" and store.attrs["note"] == "x"
        np.testing.assert_array_equal(store.ends, [6, 12, 18, 22, 26])
        np.testing.assert_array_equal(store.lengths, [6, 6, 6, 4, 4])
        assert sorted(store.step_fields()) == sorted(f"steps/{k}" for k in first)
        for name in first:
            np.testing.assert_array_equal(
                store.read_steps(f"steps/{name}"), np.concatenate([first[name], second[name]])
            )
        for name in first_eps:
            np.testing.assert_array_equal(
                store.read_episode_field(name), np.concatenate([first_eps[name], second_eps[name]])
            )
        np.testing.assert_array_equal(store.episode(3)["steps/actions"], second["actions"][:4])
        assert store.label_names() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporaries


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("prefetch", [True, False])
def test_chunks_of_a_row_range_are_cut_where_the_whole_stores_are(
    tmp_path: Path, kind: str, prefetch: bool
) -> None:
    path = make_store(tmp_path, kind, count=5, steps=7)  # 35 rows, storage chunks of 4
    with open_store(path) as store:
        actions = store.read_steps("steps/actions")
        for chunk_steps in (1, 3, 4, 9, 100):
            whole = store.chunk_bounds(chunk_steps)
            cuts = {a for a, _ in whole} | {35}
            for start, stop in [(0, 35), (0, 0), (7, 7), (7, 21), (5, 6), (3, 35)]:
                bounds = store.chunk_bounds(chunk_steps, start, stop)
                inner = sorted({start, stop} | {c for c in cuts if start < c < stop})
                assert bounds == list(zip(inner[:-1], inner[1:], strict=True)), chunk_steps
                chunks = list(
                    store.iter_chunks(["steps/actions"], chunk_steps, prefetch, start, stop)
                )
                assert [(c.start, c.stop) for c in chunks] == bounds
                got = [c.fields["steps/actions"] for c in chunks]
                np.testing.assert_array_equal(
                    np.concatenate(got) if got else actions[:0], actions[start:stop]
                )
        for start, stop in [(-1, 3), (4, 3), (0, 36)]:
            with pytest.raises(ValueError, match="out of range"):
                store.chunk_bounds(4, start, stop)


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("stage", ["first-field", "ends"])
def test_an_interrupted_append_keeps_the_committed_ends(
    tmp_path: Path, kind: str, stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error inside the append (after some fields are written: at the first step
    field, or at the very last write, of ``episodes/ends``) leaves the committed
    episodes unchanged, for the open store and on disk; the next append succeeds."""
    path = make_store(tmp_path, kind)
    before = open_store(path)
    data = {name: before.read_steps(name) for name in before.step_fields()}
    before.close()
    cls = backend_class(kind)
    real_write, real_create = cls.write, cls.create

    def interrupted(name: str) -> None:
        if (stage == "ends") == (name == "episodes/ends"):
            raise RuntimeError(f"interrupted at {name}")

    def write(self: StorageBackend, name: str, *args: object) -> None:
        interrupted(name)
        real_write(self, name, *args)

    def create(self: StorageBackend, name: str, *args: object) -> None:
        interrupted(name)
        real_create(self, name, *args)

    more, more_eps = episodes(2, 5, 7)
    with open_store(path, "a") as store:
        monkeypatch.setattr(cls, "write", write)
        monkeypatch.setattr(cls, "create", create)
        with pytest.raises(RuntimeError, match="interrupted at"):
            store.append_episodes(more, [5, 5], more_eps)
        monkeypatch.undo()
        np.testing.assert_array_equal(store.ends, [6, 12, 18])
        with open_store(path) as reader:
            np.testing.assert_array_equal(reader.ends, [6, 12, 18])
            for name, values in data.items():
                np.testing.assert_array_equal(reader.read_steps(name), values)
        store.append_episodes(more, [5, 5], more_eps)
    with open_store(path) as store:
        np.testing.assert_array_equal(store.ends, [6, 12, 18, 23, 28])
        actions = store.read_steps("steps/actions")
    np.testing.assert_array_equal(actions[:18], data["steps/actions"])
    np.testing.assert_array_equal(actions[18:], more["actions"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# ------------------------------------------------------------------ label sets
@pytest.mark.parametrize("kind", BACKENDS)
def test_label_sets_list_read_commit_remove(tmp_path: Path, kind: str) -> None:
    path = make_store(tmp_path, kind)
    assert list_label_sets(path) == []
    hipi, other = label_set("hipi", 3, seed=1), label_set("other", 3, seed=2, k=5)
    write_label_set(path, hipi)
    write_label_set(path, other)
    assert list_label_sets(path) == ["hipi", "other"]
    assert_same_labels(read_label_set(path, "hipi"), hipi)
    with open_store(path) as store:
        assert store.label_names() == ["hipi", "other"]
        assert_same_labels(store.read_labels("other"), other)

    newer = label_set("hipi", 3, seed=3)
    with pytest.raises(InputError, match="labels/hipi: already exists; pass --overwrite"):
        write_label_set(path, newer)
    assert_same_labels(read_label_set(path, "hipi"), hipi)
    write_label_set(path, newer, overwrite=True)
    assert_same_labels(read_label_set(path, "hipi"), newer)

    remove_label_set(path, "hipi")
    assert list_label_sets(path) == ["other"]
    assert_same_labels(read_label_set(path, "other"), other)
    for action in (lambda: read_label_set(path, "hipi"), lambda: remove_label_set(path, "hipi")):
        with pytest.raises(InputError, match=r"labels/hipi: no such label set .*have: other"):
            action()
    write_label_set(path, hipi)  # the name can be used again
    assert list_label_sets(path) == ["hipi", "other"]
    area = label_area(path)
    assert area is not None
    hidden = [p for p in area.rglob("*") if ".lock" in p.name or p.name.endswith(".tmp")]
    assert hidden == []  # no lock file or temporary is left behind
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def move_out_behind_a_link(inside: Path, outside: Path) -> None:
    """Move ``inside`` to ``outside`` and leave a symbolic link to it in its place."""
    shutil.move(inside, outside)
    os.symlink(outside, inside)


def all_refused(path: Path, name: str) -> None:
    """Every label-set operation on ``name`` is one InputError about a link."""
    for action in (
        lambda: read_label_set(path, name),
        lambda: write_label_set(path, label_set(name, 3, seed=9), overwrite=True),
        lambda: remove_label_set(path, name),
    ):
        with pytest.raises(InputError, match="symbolic link"):
            action()


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_symlinked_label_area_is_refused(tmp_path: Path, kind: str) -> None:
    """The label area moved out of the store behind a link: nothing is read, written
    or deleted through it."""
    (tmp_path / "data").mkdir()
    path = make_store(tmp_path / "data", kind)
    write_label_set(path, label_set("hipi", 3, seed=1))
    area = label_area(path)
    assert area is not None
    move_out_behind_a_link(area, tmp_path / "elsewhere")
    before = snapshot(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="symbolic link"):
        list_label_sets(path)
    all_refused(path, "hipi")
    with pytest.raises(InputError, match="symbolic link"):
        write_label_set(path, label_set("new", 3, seed=2))
    assert snapshot(tmp_path / "elsewhere") == before
    assert area.is_symlink()


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_label_file_that_is_a_symlink_is_refused(tmp_path: Path, kind: str) -> None:
    """The files of a label set moved out of the store behind a link (the link sits
    where the backend keeps the set's data): refused, and the outside is untouched."""
    (tmp_path / "data").mkdir()
    path = make_store(tmp_path / "data", kind)
    write_label_set(path, label_set("hipi", 3, seed=1))
    write_label_set(path, label_set("other", 3, seed=2))
    area = label_area(path)
    assert area is not None
    entry = next(p for p in area.iterdir() if p.name.split(".")[0] == "hipi")
    data = Path(os.path.realpath(entry))  # the label file (HDF5) or version folder (Zarr)
    assert area in data.parents
    move_out_behind_a_link(data, tmp_path / "elsewhere")
    before = snapshot(tmp_path / "elsewhere")
    assert list_label_sets(path) == ["hipi", "other"]  # listed, refused when used
    all_refused(path, "hipi")
    assert snapshot(tmp_path / "elsewhere") == before
    assert data.is_symlink()
    assert read_label_set(path, "other").num_episodes == 3  # the other set is fine
