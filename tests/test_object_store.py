"""Stores on object storage: Zarr at s3:// URLs against a moto S3 server on 127.0.0.1
(started here), manifest-last label commits, and one-line errors for wrong URLs,
missing buckets, missing credentials and bad --storage-options."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SPEED_TARGET_SPEC
from s3server import fresh_bucket, s3_server
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.errors import InputError
from hipi_offline.store import (
    LabelSet,
    create_store,
    object_backend,
    open_store,
    read_label_set,
    remove_label_set,
    write_label_set,
)
from hipi_offline.store.labels import list_label_sets
from hipi_offline.store.location import store_location
from hipi_offline.store.remote import filesystem
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

EPISODES, STEPS = 12, 10


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """One moto S3 server on 127.0.0.1 for this module's tests."""
    with s3_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket; the environment points s3fs at the server."""
    home = tmp_path / "aws-home"
    home.mkdir()
    return fresh_bucket(endpoint, str(home), "hipi-test", monkeypatch)


def cli(*args: object, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    detail = f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert result.exit_code == code, detail
    return result


def error_line(result) -> str:
    """The one ``error:`` line of a failed command (and nothing else on stderr)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


def objects(url: str) -> list[str]:
    """Every object under ``url`` (relative keys, sorted)."""
    fs, root = filesystem(url)
    if not fs.exists(root):
        return []
    return sorted(key[len(root) + 1 :] for key in fs.find(root))


def synthetic(url: str | Path) -> None:
    config = SyntheticConfig(episodes=EPISODES, steps=STEPS, seed=3, chunk_rows=64)
    make_synthetic_store(url, config)


def label_set(name: str, seed: int, n: int = EPISODES, k: int = 3) -> LabelSet:
    """A valid label set of random numbers (what a relabel writes)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 5))
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    order = np.argsort(-logp, axis=1)[:, :k]
    return LabelSet(
        name=name,
        candidates=rng.uniform(0, 3, size=(5, 1)).astype(np.float32),
        log_z=rng.normal(size=5),
        topk_index=order.astype(np.int64),
        topk_logprob=np.take_along_axis(logp, order, axis=1).astype(np.float32),
        entropy=-(np.exp(logp) * logp).sum(axis=1).astype(np.float32),
        coverage=np.exp(logp).mean(axis=0),
        attrs={"method": "hipi", "seed": seed},
    )


def assert_same_labels(a: LabelSet, b: LabelSet) -> None:
    np.testing.assert_array_equal(a.candidates, b.candidates)
    np.testing.assert_allclose(a.log_z, b.log_z, rtol=1e-12)
    np.testing.assert_array_equal(a.topk_index, b.topk_index)
    np.testing.assert_allclose(a.topk_logprob, b.topk_logprob, rtol=1e-6)
    np.testing.assert_allclose(a.entropy, b.entropy, rtol=1e-6)
    np.testing.assert_allclose(a.coverage, b.coverage, rtol=1e-6)


def full_posterior(labels: LabelSet) -> np.ndarray:
    """float64 [N, K]: each episode's log-posterior over all K (the top-k is all K)."""
    assert labels.k == labels.num_candidates
    full = np.full((labels.num_episodes, labels.num_candidates), np.nan)
    np.put_along_axis(full, labels.topk_index, labels.topk_logprob.astype(np.float64), axis=1)
    return full


def assert_same_posterior(a: LabelSet, b: LabelSet) -> None:
    """Equal labels up to the order of exactly tied candidates in the top-k."""
    np.testing.assert_allclose(a.log_z, b.log_z, rtol=1e-12)
    np.testing.assert_allclose(full_posterior(a), full_posterior(b), rtol=1e-6)
    np.testing.assert_allclose(a.entropy, b.entropy, rtol=1e-6)
    np.testing.assert_allclose(a.coverage, b.coverage, rtol=1e-6)


def versions(url: str, name: str) -> list[str]:
    return sorted(
        {key.split("/")[2] for key in objects(url) if key.startswith(f"labels/{name}/v-")}
    )


# ----------------------------------------------------------------------------- stores


def test_make_synthetic_and_inspect_at_s3(bucket: str, tmp_path: Path):
    url = f"s3://{bucket}/runner.zarr"
    result = cli("make-synthetic", url, "--episodes", EPISODES, "--steps", STEPS, "--seed", 3)
    assert f"to {url}" in result.stdout
    local = tmp_path / "runner.zarr"
    cli("make-synthetic", local, "--episodes", EPISODES, "--steps", STEPS, "--seed", 3)
    with open_store(url) as remote, open_store(local) as here:
        assert remote.kind == "zarr" and remote.path == url
        np.testing.assert_array_equal(remote.ends, here.ends)
        assert remote.step_fields().keys() == here.step_fields().keys()
        for name in here.step_fields():
            np.testing.assert_array_equal(remote.read_steps(name), here.read_steps(name))
        np.testing.assert_array_equal(
            remote.read_episode_field("task"), here.read_episode_field("task")
        )
    shown = cli("inspect", url).stdout
    assert url in shown and f"episodes {EPISODES}, steps {EPISODES * STEPS}" in shown
    assert not [key for key in objects(url) if ".hipi-offline-probe-" in key]


@pytest.mark.slow
def test_overwrite_and_append_at_s3(bucket: str):
    url = f"s3://{bucket}/runner.zarr"
    synthetic(url)
    again = cli("make-synthetic", url, "--episodes", 2, "--steps", 3, code=2)
    assert "already exists; pass --overwrite" in error_line(again)
    cli("make-synthetic", url, "--episodes", 2, "--steps", 3, "--overwrite")
    with open_store(url, "a") as store:
        assert store.num_episodes == 2
        fields = {name: store.read_steps(name, 0, 3) for name in store.step_fields()}
        extra = {"task": np.ones((1, 1), np.float32), "goal": np.zeros((1, 2), np.float32)}
        store.append_episodes({k.removeprefix("steps/"): v for k, v in fields.items()}, [3], extra)
    with open_store(url) as store:
        assert store.num_episodes == 3 and list(store.ends) == [3, 6, 9]
        np.testing.assert_array_equal(
            store.read_steps("steps/actions", 6, 9), fields["steps/actions"]
        )


@pytest.mark.slow
def test_killed_append_at_s3_is_not_committed(bucket: str, monkeypatch: pytest.MonkeyPatch):
    """Data arrays first, ``episodes/ends`` last: a failure before ``ends`` is written
    leaves the committed episodes as they were."""
    url = f"s3://{bucket}/runner.zarr"
    synthetic(url)
    original = object_backend.ObjectZarrBackend.write

    def fail_on_ends(self, name, start, data):
        if name == "episodes/ends":
            raise KeyboardInterrupt
        original(self, name, start, data)

    monkeypatch.setattr(object_backend.ObjectZarrBackend, "write", fail_on_ends)
    with open_store(url, "a") as store:
        fields = {name: store.read_steps(name, 0, 4) for name in store.step_fields()}
        extra = {"task": np.ones((1, 1), np.float32), "goal": np.zeros((1, 2), np.float32)}
        with pytest.raises(KeyboardInterrupt):
            store.append_episodes(
                {k.removeprefix("steps/"): v for k, v in fields.items()}, [4], extra
            )
    with open_store(url) as store:
        assert store.num_episodes == EPISODES and store.num_steps == EPISODES * STEPS


@pytest.mark.slow
def test_failed_creation_at_s3_leaves_nothing(bucket: str, monkeypatch: pytest.MonkeyPatch):
    from hipi_offline.store import synthetic as synthetic_module

    def broken(*args, **kwargs):
        raise RuntimeError("generator failed")

    monkeypatch.setattr(synthetic_module, "synthetic_episodes", broken)
    url = f"s3://{bucket}/runner.zarr"
    with pytest.raises(RuntimeError, match="generator failed"):
        synthetic(url)
    assert objects(url) == []
    assert "--storage-options" in cli("--help").stdout


def test_refuses_objects_it_did_not_write(bucket: str):
    fs, root = filesystem(f"s3://{bucket}/other.zarr")
    fs.pipe_file(f"{root}/notes.txt", b"someone else's")
    result = cli("make-synthetic", f"s3://{bucket}/other.zarr", "--overwrite", code=2)
    assert "not a hipi-offline store" in error_line(result)
    assert objects(f"s3://{bucket}/other.zarr") == ["notes.txt"]


def test_file_url_is_a_local_store(tmp_path: Path):
    url = f"file://{tmp_path}/runner.zarr"
    assert store_location(url) == tmp_path / "runner.zarr"
    cli("make-synthetic", url, "--episodes", 3, "--steps", 4)
    assert (tmp_path / "runner.zarr" / "zarr.json").is_file()
    write_label_set(url, label_set("hipi", 1, n=3))
    assert (tmp_path / "runner.zarr" / "labels" / "hipi").is_symlink()  # the local layout
    assert "hipi" in cli("inspect", url).stdout


# ----------------------------------------------------------------------------- labels


def test_label_set_commit_overwrite_and_cleanup(bucket: str):
    url = f"s3://{bucket}/runner.zarr"
    first = label_set("hipi", 1)
    write_label_set(url, first)
    assert list_label_sets(url) == ["hipi"]
    assert_same_labels(read_label_set(url, "hipi"), first)
    [old] = versions(url, "hipi")
    fs, root = filesystem(url)
    pointer = json.loads(fs.cat_file(f"{root}/labels/hipi/CURRENT"))
    assert pointer["version"] == old and pointer["label_set"] == "hipi"
    listed = {key: entry["size"] for key, entry in pointer["objects"].items()}
    prefix = f"labels/hipi/{old}/"
    keys = [key for key in objects(url) if key.startswith(prefix)]
    assert listed == {key[len(prefix) :]: fs.size(f"{root}/{key}") for key in keys}

    with pytest.raises(InputError, match="already exists"):
        write_label_set(url, label_set("hipi", 2))
    second = label_set("hipi", 2)
    write_label_set(url, second, overwrite=True)
    assert_same_labels(read_label_set(url, "hipi"), second)
    [new] = versions(url, "hipi")
    assert new != old  # the replaced version is gone

    remove_label_set(url, "hipi")
    assert list_label_sets(url) == []
    assert not [key for key in objects(url) if key.startswith("labels/")]


def copy_version(url: str, name: str, to_name: str, version: str) -> None:
    """Copy label set ``name``'s current version to ``labels/to_name/version`` without a
    pointer: what a writer killed between its version and its pointer leaves."""
    fs, root = filesystem(url)
    current = json.loads(fs.cat_file(f"{root}/labels/{name}/CURRENT"))["version"]
    source = f"{root}/labels/{name}/{current}"
    for key in fs.find(source):
        fs.pipe_file(
            f"{root}/labels/{to_name}/{version}/{key[len(source) + 1 :]}", fs.cat_file(key)
        )


@pytest.mark.slow
def test_version_without_pointer_is_invisible_and_cleaned_up(bucket: str):
    url = f"s3://{bucket}/runner.zarr"
    write_label_set(url, label_set("hipi", 1))
    young = object_backend.new_version_name()
    stale = "v-20000101T000000Z-" + "0" * 32
    copy_version(url, "hipi", "crashed", young)  # a first commit killed before its pointer
    copy_version(url, "hipi", "hipi", young)  # a newer version of hipi without a pointer
    copy_version(url, "hipi", "hipi", stale)  # a killed writer's, long ago
    assert list_label_sets(url) == ["hipi"]
    with pytest.raises(InputError, match="no such label set"):
        read_label_set(url, "crashed")
    assert_same_labels(read_label_set(url, "hipi"), label_set("hipi", 1))

    write_label_set(url, label_set("hipi", 3), overwrite=True)
    left = versions(url, "hipi")
    assert stale not in left  # old and unpointed: removed
    assert young in left  # may be a concurrent writer's: kept, and invisible
    assert_same_labels(read_label_set(url, "hipi"), label_set("hipi", 3))


@pytest.mark.slow
def test_failed_commit_keeps_the_old_label_set(bucket: str, monkeypatch: pytest.MonkeyPatch):
    url = f"s3://{bucket}/runner.zarr"
    write_label_set(url, label_set("hipi", 1))
    [old] = versions(url, "hipi")

    fs, _ = filesystem(url)  # the file system the backend uses (one per environment)
    written: list[str] = []
    pipe, pipe_file = fs.pipe, fs.pipe_file

    def version_objects(objects, **kwargs):
        written.extend(objects)
        return pipe(objects, **kwargs)

    def pointer(path, value, **kwargs):  # killed after the version, before its pointer
        if path.endswith("/CURRENT"):
            raise KeyboardInterrupt
        return pipe_file(path, value, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(fs, "pipe", version_objects)
        patch.setattr(fs, "pipe_file", pointer)
        with pytest.raises(KeyboardInterrupt):
            write_label_set(url, label_set("hipi", 2), overwrite=True)
    assert written and all("/labels/hipi/v-" in key for key in written)
    assert versions(url, "hipi") == [old]  # the new version was removed
    assert_same_labels(read_label_set(url, "hipi"), label_set("hipi", 1))


def test_damaged_or_foreign_label_sets_are_refused(bucket: str):
    url = f"s3://{bucket}/runner.zarr"
    write_label_set(url, label_set("hipi", 1))
    fs, root = filesystem(url)
    [version] = versions(url, "hipi")
    chunk = f"{root}/labels/hipi/{version}/log_z/c/0"
    raw = fs.cat_file(chunk)
    fs.pipe_file(chunk, raw[:-1] + bytes([raw[-1] ^ 1]))  # same size, other bytes
    with pytest.raises(InputError, match="does not match its pointer"):
        read_label_set(url, "hipi")
    fs.rm_file(chunk)
    with pytest.raises(InputError, match="does not match its pointer"):
        read_label_set(url, "hipi")
    fs.pipe_file(f"{root}/labels/mine/CURRENT", b'{"version": "../../elsewhere"}')
    with pytest.raises(InputError, match="not a label-set pointer written by hipi-offline"):
        write_label_set(url, label_set("mine", 2), overwrite=True)
    assert objects(url + "/labels/mine") == ["CURRENT"]


@pytest.mark.slow
def test_relabel_at_s3_matches_local(bucket: str, tmp_path: Path):
    url = f"s3://{bucket}/runner.zarr"
    local = tmp_path / "runner.zarr"
    spec = tmp_path / "speed.yaml"
    spec.write_text(SPEED_TARGET_SPEC)
    for store in (url, local):
        synthetic(store)
        cli("relabel", store, "--tasks", spec, "--device", "cpu", "--seed", 0)
    assert_same_labels(read_label_set(url, "hipi"), read_label_set(local, "hipi"))
    shown = cli("inspect", url).stdout
    assert "hipi" in shown


@pytest.mark.slow
def test_dask_relabel_at_s3(bucket: str, tmp_path: Path):
    """Workers of ``--scheduler local:1`` open the store at its URL (they inherit the
    endpoint and credentials from the environment) and give the local result."""
    url = f"s3://{bucket}/runner.zarr"
    local = tmp_path / "runner.zarr"
    spec = tmp_path / "speed.yaml"
    spec.write_text(SPEED_TARGET_SPEC)
    synthetic(url)
    synthetic(local)
    cli("relabel", url, "--tasks", spec, "--device", "cpu", "--scheduler", "local:1")
    cli("relabel", local, "--tasks", spec, "--device", "cpu")
    assert_same_posterior(read_label_set(url, "hipi"), read_label_set(local, "hipi"))


# ----------------------------------------------------------------------------- errors


def test_missing_bucket_and_wrong_url(bucket: str):
    missing = cli("make-synthetic", "s3://no-such-bucket-hipi/x.zarr", code=2)
    line = error_line(missing)
    assert "s3://no-such-bucket-hipi/x.zarr" in line and "bucket" in line
    fs, _ = filesystem(f"s3://{bucket}/x.zarr")
    assert not fs.exists("no-such-bucket-hipi")
    wrong = cli("inspect", f"s3://{bucket}/nothing.zarr", code=2)
    assert f"s3://{bucket}/nothing.zarr: no such store" in error_line(wrong)
    no_bucket = cli("inspect", "s3://no-such-bucket-hipi/x.zarr", code=2)
    assert "bucket no-such-bucket-hipi does not exist" in error_line(no_bucket)
    assert objects(f"s3://{bucket}/x.zarr") == []


def test_missing_credentials(bucket: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    url = f"s3://{bucket}/x.zarr"
    result = cli("make-synthetic", url, code=1)
    line = error_line(result)
    assert url in line and "credentials" in line
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # back to the server's keys:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")  # nothing was written
    assert objects(url) == []


def test_storage_options(bucket: str, endpoint: str, monkeypatch: pytest.MonkeyPatch):
    url = f"s3://{bucket}/x.zarr"
    bad = cli("--storage-options", "{not json", "make-synthetic", url, code=2)
    assert "--storage-options: not valid JSON" in error_line(bad)
    listed = cli("--storage-options", "[1, 2]", "inspect", url, code=2)
    assert "--storage-options: must be a JSON object" in error_line(listed)
    assert objects(url) == []
    # the endpoint and the keys from --storage-options alone
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    options = json.dumps({"endpoint_url": endpoint, "key": "testing", "secret": "testing"})
    cli("--storage-options", options, "make-synthetic", url, "--episodes", 2, "--steps", 3)
    assert "episodes 2, steps 6" in cli("--storage-options", options, "inspect", url).stdout
    monkeypatch.setenv("HIPI_STORAGE_OPTIONS", "{oops")
    with pytest.raises(InputError, match="HIPI_STORAGE_OPTIONS: not valid JSON"):
        open_store(url)


def test_unsupported_urls(bucket: str):
    h5 = cli("make-synthetic", f"s3://{bucket}/x.h5", code=2)
    assert f"s3://{bucket}/x.h5: HDF5 stores live on local disks only" in error_line(h5)
    suffix = cli("inspect", f"s3://{bucket}/x.data", code=2)
    assert "unknown store suffix '.data' for a store at a URL; use .zarr" in error_line(suffix)
    scheme = cli("inspect", "nosuchscheme://b/x.zarr", code=2)
    assert "unknown URL scheme 'nosuchscheme'" in error_line(scheme)
    bare = cli("inspect", "s3://x.zarr", code=2)
    assert "names a bucket and a path" in error_line(bare)
    with pytest.raises(InputError, match="local disks only"):
        create_store(f"s3://{bucket}/x.hdf5")
    assert objects(f"s3://{bucket}/x.h5") == []


def test_missing_protocol_package(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if it were not installed
    result = cli("inspect", "gs://bucket/x.zarr", code=1)
    assert "gs://bucket/x.zarr: gs:// needs gcsfs" in error_line(result)
    assert "pip install gcsfs" in error_line(result)


# ----------------------------------------------------------------------------- other stages


def store_arrays(location: str | Path) -> dict[str, np.ndarray]:
    with open_store(location) as store:
        out = {name: store.read_steps(name) for name in store.step_fields()}
        out.update({name: store.read_episode_field(name) for name in store.episode_fields()})
        out["episodes/ends"] = store.ends
    return out


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    import h5py

    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as file:
        file.visititems(
            lambda name, node: (
                found.__setitem__(name, node[()]) if isinstance(node, h5py.Dataset) else None
            )
        )
    return found


@pytest.mark.slow
def test_export_and_train_bc_from_s3(bucket: str, tmp_path: Path):
    url = f"s3://{bucket}/runner.zarr"
    local = tmp_path / "runner.zarr"
    spec = tmp_path / "speed.yaml"
    spec.write_text(SPEED_TARGET_SPEC)
    small = ["--hidden", "8,8", "--batch-size", 16, "--device", "cpu", "--threads", 1]
    small += ["--steps", 4, "--log-every", 1, "--no-progress", "--seed", 2]
    losses = []
    for name, store in (("remote", url), ("local", local)):
        synthetic(store)
        cli("relabel", store, "--tasks", spec, "--method", "original", "--device", "cpu")
        cli("export", "minari", store, tmp_path / f"{name}-v0")
        run = tmp_path / f"run-{name}"
        cli("train-bc", store, "--labels", "original", "--out", run, *small)
        lines = (run / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        losses.append([float(line.split(",")[header.index("loss")]) for line in lines[1:]])
    remote = h5_arrays(tmp_path / "remote-v0" / "data" / "main_data.hdf5")
    here = h5_arrays(tmp_path / "local-v0" / "data" / "main_data.hdf5")
    assert remote.keys() == here.keys() and remote
    for key in here:
        np.testing.assert_array_equal(remote[key], here[key])
    assert len(losses[0]) == 4
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


@pytest.mark.slow
def test_collect_out_s3(bucket: str, tmp_path: Path):
    url = f"s3://{bucket}/cheetah.zarr"
    local = tmp_path / "cheetah.zarr"
    for out in (url, local):
        result = cli(
            "collect",
            "cheetah",
            "--out",
            out,
            "--episodes",
            2,
            "--steps",
            6,
            "--seed",
            3,
            "--no-progress",
        )
        assert "2" in result.stdout
    remote, here = store_arrays(url), store_arrays(local)
    assert remote.keys() == here.keys()
    for key in here:
        np.testing.assert_array_equal(remote[key], here[key])
    again = cli(
        "collect",
        "cheetah",
        "--out",
        url,
        "--episodes",
        3,
        "--steps",
        6,
        "--seed",
        3,
        "--no-progress",
    )
    assert store_arrays(url)["episodes/ends"].tolist() == [6, 12, 18]
    assert url in again.stdout
    bad = cli(
        "collect",
        "cheetah",
        "--out",
        "s3://no-such-bucket-hipi/c.zarr",
        "--episodes",
        1,
        "--steps",
        6,
        code=2,
    )
    assert "--out s3://no-such-bucket-hipi/c.zarr" in error_line(bad)


@pytest.mark.slow
def test_import_into_s3(bucket: str, tmp_path: Path):
    import h5py

    rng = np.random.default_rng(0)
    total = 9
    arrays = {
        "observations": rng.standard_normal((total, 4)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (total, 2)).astype(np.float32),
        "rewards": rng.standard_normal(total).astype(np.float32),
        "terminals": np.zeros(total, bool),
        "timeouts": np.zeros(total, bool),
    }
    arrays["timeouts"][[3, 8]] = True
    with h5py.File(tmp_path / "d.hdf5", "w") as file:
        for key, value in arrays.items():
            file[key] = value
    url = f"s3://{bucket}/d.zarr"
    cli("import", "d4rl", tmp_path / "d.hdf5", url)
    cli("import", "d4rl", tmp_path / "d.hdf5", tmp_path / "d.zarr")
    remote, here = store_arrays(url), store_arrays(tmp_path / "d.zarr")
    assert remote.keys() == here.keys() and remote["episodes/ends"].tolist() == [4, 9]
    for key in here:
        np.testing.assert_array_equal(remote[key], here[key])
    again = cli("import", "d4rl", tmp_path / "d.hdf5", url, code=2)
    assert "already exists; pass --overwrite" in error_line(again)
