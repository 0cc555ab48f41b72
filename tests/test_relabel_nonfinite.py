"""Relabel never commits a non-finite posterior, task specs are parsed with limits, and
sizes that cannot fit are refused before anything is allocated.

Each failing case asserts exit code 2 (or an InputError), one ``error:`` line naming
the cause, and a store folder whose files are byte-for-byte unchanged (no label set).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hipi_offline.relabel.returns as returns_module
from cli.main import app
from hipi_offline.errors import InputError
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.relabel.returns import RelabelSizes, available_memory, check_fits
from hipi_offline.store import create_store, open_store
from hipi_offline.tasks import load_task_spec, parse_task_spec
from hipi_offline.tasks.spec import MAX_SPEC_BYTES

EPISODES, STEPS = 8, 16
SPEED, HEIGHT = "steps/infos/speed", "steps/infos/height"
PROGRESS = re.compile(r"^\s*[\w ]+:\s+\d+%\|")
TARGET = """\
family: target
feature: steps/infos/speed
prior: {uniform: {low: [0.0], high: [3.0]}}
candidates: 8
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ helpers
def make_store(path: Path, speed: np.ndarray | None = None, height: np.ndarray | None = None):
    """EPISODES x STEPS steps; ``speed``/``height`` (any float dtype) replace the defaults."""
    rng = np.random.default_rng(0)
    rows = EPISODES * STEPS
    steps = {
        "steps/observations": rng.uniform(-1, 1, (rows, 3)).astype(np.float32),
        "steps/actions": rng.uniform(-1, 1, (rows, 2)).astype(np.float32),
        SPEED: rng.uniform(0, 3, rows).astype(np.float32) if speed is None else speed,
        HEIGHT: np.full(rows, 0.6, np.float32) if height is None else height,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with create_store(path, env="test") as store:
        store.append_episodes(steps, [STEPS] * EPISODES)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "data" / "s.h5")


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            data = b"dir" if path.is_dir() else path.read_bytes()
            out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def cli_fails(store: Path, tasks: object, *extra: object, needles: tuple[str, ...] = ()) -> str:
    """Run relabel; exit 2, one ``error:`` line holding every needle, nothing changed."""
    before = snapshot(store.parent)
    args = ["relabel", store, "--tasks", tasks, "--device", "cpu", "--name", "x", *extra]
    result = CliRunner().invoke(app, [str(a) for a in args])
    detail = f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert result.exit_code == 2, detail
    assert "Traceback" not in result.output, detail
    lines = [
        line for line in result.stderr.splitlines() if line.strip() and not PROGRESS.match(line)
    ]
    assert len(lines) == 1 and lines[0].startswith("error: "), detail
    assert len(lines[0]) < 600, lines[0][:600]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert snapshot(store.parent) == before
    with open_store(store) as opened:
        assert opened.label_names() == []
    return lines[0]


def labels(store: Path, tasks: object, **options):
    relabel(store, RelabelConfig(tasks=str(tasks), name="ok", device="cpu", **options))
    with open_store(store) as opened:
        return opened.read_labels("ok")


# ------------------------------------------------------------------ 1. overflow and NaN
def test_huge_rewards_overflow_the_returns(tmp_path: Path):
    speed = np.random.default_rng(1).uniform(0, 3, EPISODES * STEPS)
    speed[2 * STEPS : 3 * STEPS] = 1e308  # finite, but 16 of them sum to inf
    path = make_store(tmp_path / "data" / "s.h5", speed=speed)
    cli_fails(path, spec(tmp_path, TARGET), needles=("target family", "overflow", "episode 2"))


def test_linear_reward_overflow(tmp_path: Path):
    speed = np.full(EPISODES * STEPS, 1e300)  # float64 field; psi . phi overflows
    path = make_store(tmp_path / "data" / "s.h5", speed=speed)
    text = "family: linear\nfeatures: [steps/infos/speed]\n"
    text += "prior: {uniform: {low: [1.0e+30], high: [1.0e+38]}}\ncandidates: 4\n"
    cli_fails(path, spec(tmp_path, text), needles=("linear family", "overflow float64"))


def test_huge_bias_overflows(store: Path, tmp_path: Path):
    text = TARGET + "bias: {value: 1.0e+308}\n"
    cli_fails(store, spec(tmp_path, text), needles=("target family", "overflow"))


def test_overflow_is_found_in_a_spilled_tile(tmp_path: Path):
    """R tiled over K and spilled to disk: the check still sees every tile."""
    speed = np.random.default_rng(1).uniform(0, 3, EPISODES * STEPS)
    speed[5 * STEPS : 6 * STEPS] = -1e308
    path = make_store(tmp_path / "data" / "s.h5", speed=speed)
    tasks = spec(tmp_path, TARGET.replace("candidates: 8", "candidates: 16"))
    with pytest.raises(InputError, match="overflow float64.*episode 5"):
        labels(path, tasks, max_matrix_mb=4 * 8 * EPISODES / 2**20)  # tiles of 4 columns
    with open_store(path) as opened:
        assert opened.label_names() == []


@pytest.mark.parametrize("where", ["spec", "option"])
def test_subnormal_temperature_is_refused(store: Path, tmp_path: Path, where: str):
    if where == "spec":
        tasks = spec(tmp_path, TARGET + "temperature: 1.0e-320\n")
        cli_fails(store, tasks, needles=("temperature", "too small for float64"))
    else:
        cli_fails(store, spec(tmp_path, TARGET), "--temperature", "1e-320",
                  needles=("--temperature", "too small for float64"))  # fmt: skip


def test_temperature_too_small_for_these_returns(store: Path, tmp_path: Path):
    """alpha is a normal float64, but |R| / alpha overflows: named with the bound."""
    line = cli_fails(store, spec(tmp_path, TARGET), "--temperature", "1e-307",
                     needles=("temperature 1e-307 is too small", "largest |R|"))  # fmt: skip
    least = float(re.search(r"at least ([0-9.e+-]+)", line).group(1))
    labels(store, spec(tmp_path, TARGET), temperature=least)  # the suggested alpha works


@pytest.mark.parametrize(
    ("prior", "needle"),
    [
        ("{uniform: {low: [0.0], high: [1.0e+39]}}", "prior.uniform.high"),
        ("{uniform: {low: [-1.0e+39], high: [0.0]}}", "prior.uniform.low"),
        ("{normal: {mean: [0.0], std: [1.0e+38]}}", "prior.normal"),
        ("{normal: {mean: [3.0e+38], std: [1.0e+37]}}", "prior.normal"),
        ("{sphere: {dim: 1, radius: .inf}}", "prior.sphere.radius"),
        ("{sphere: {dim: 1, radius: 1.0e+39}}", "prior.sphere.radius"),
        ("{sphere: {dim: 1, radius: 1.0e-300}}", "prior.sphere.radius"),
        ("{categorical: {tasks: [1.0, 1.0e+39]}}", "prior.categorical.tasks"),
    ],
)
def test_prior_outside_float32_is_refused_at_parse_time(
    store: Path, tmp_path: Path, prior: str, needle: str
):
    text = TARGET.replace("{uniform: {low: [0.0], high: [3.0]}}", prior)
    if "categorical" in prior:
        text = text.replace("candidates: 8\n", "")
    cli_fails(store, spec(tmp_path, text), needles=(needle, "float32"))


def test_explicit_candidates_outside_float32(store: Path, tmp_path: Path):
    text = TARGET.replace("{uniform: {low: [0.0], high: [3.0]}}", "{normal: {mean: [0], std: [1]}}")
    text = text.replace("candidates: 8", "candidates: [[1.0], [1.0e+39]]")
    cli_fails(store, spec(tmp_path, text), needles=("candidates", "float32"))


CUSTOM = '''
import torch


def bad(fields, actions, tasks):
    """-|speed - psi|, but {kind} on episode 4 (height 9) for the candidate psi = 2."""
    speed = fields["steps/infos/speed"].reshape(-1, 1)
    out = -(speed - tasks[:, 0][None, :]).abs()
    hit = (fields["steps/infos/height"].reshape(-1, 1) > 5) & (tasks[:, 0][None, :] == 2.0)
    return torch.where(hit, torch.full_like(out, float("{kind}")), out)
'''


@pytest.fixture
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "custom"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    for kind in ("nan", "inf"):
        monkeypatch.delitem(sys.modules, f"hipi_test_{kind}", raising=False)
        (folder / f"hipi_test_{kind}.py").write_text(CUSTOM.replace("{kind}", kind))
    yield folder
    for kind in ("nan", "inf"):
        sys.modules.pop(f"hipi_test_{kind}", None)


@pytest.mark.parametrize(("kind", "tile_mb"), [("nan", 2048.0), ("inf", 2 * 8 * 8 / 2**20)])
def test_custom_reward_nan_names_function_episode_and_candidate(
    tmp_path: Path, custom_module: Path, kind: str, tile_mb: float
):
    """The candidate index is global even when K is tiled (tiles of 2 columns)."""
    height = np.full(EPISODES * STEPS, 0.6)
    height[4 * STEPS + 3] = 9.0
    path = make_store(tmp_path / "data" / "s.h5", height=height)
    text = (
        f"family: custom\nfunction: hipi_test_{kind}:bad\n"
        "fields: [steps/infos/speed, steps/infos/height]\n"
        "prior: {normal: {mean: [1.0], std: [1.0]}}\n"
        "candidates: [[0.5], [1.0], [1.5], [2.0], [2.5]]\n"
    )
    expected = f"hipi_test_{kind}:bad returned {'NaN' if kind == 'nan' else 'inf'}"
    with pytest.raises(InputError, match=re.escape(expected) + ".*episode 4, candidate 3"):
        labels(path, spec(tmp_path, text), max_matrix_mb=tile_mb)
    with open_store(path) as opened:
        assert opened.label_names() == []


def test_zero_prior_mass_gives_a_finite_posterior(store: Path, tmp_path: Path):
    """A categorical task of probability 0 has q = 0 (it was a math domain error); the
    others' posterior equals the one without it."""
    with_zero = "{categorical: {tasks: [0.5, 1.5, 2.5], probs: [0.5, 0.5, 0.0]}}"
    without = "{categorical: {tasks: [0.5, 1.5], probs: [0.5, 0.5]}}"
    base = TARGET.replace("candidates: 8\n", "")
    prior = "{uniform: {low: [0.0], high: [3.0]}}"
    a = labels(store, spec(tmp_path, base.replace(prior, with_zero), "a.yaml"), top_k="all")
    b = labels(store, spec(tmp_path, base.replace(prior, without), "b.yaml"), top_k="all",
               overwrite=True)  # fmt: skip
    assert np.isfinite(a.entropy).all() and np.isfinite(a.coverage).all()
    assert np.isfinite(a.log_z).all()
    assert a.coverage[2] == 0.0
    np.testing.assert_allclose(a.coverage[:2], b.coverage, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.entropy, b.entropy, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.topk_index[:, 2], 2)  # last, with log q = -inf
    assert np.all(a.topk_logprob[:, 2] == -np.inf)
    np.testing.assert_allclose(a.topk_logprob[:, :2], b.topk_logprob, rtol=1e-5, atol=1e-6)


def test_all_candidates_of_zero_prior_mass_are_refused(store: Path, tmp_path: Path):
    text = TARGET.replace(
        "{uniform: {low: [0.0], high: [3.0]}}",
        "{categorical: {tasks: [0.5, 1.5, 2.5], probs: [0.5, 0.5, 0.0]}}",
    ).replace("candidates: 8", "candidates: [[2.5]]")
    cli_fails(store, spec(tmp_path, text), needles=("candidates", "prior probability 0"))


# ------------------------------------------------------------------ 2. YAML limits
def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (TARGET + "description: &x [*x]\n", "recursive YAML alias"),
        (TARGET + "description: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested deeper"),
        (TARGET + "description: " + "{a: " * 40 + "1" + "}" * 40 + "\n", "nested deeper"),
        (TARGET + "1: 2\n", "must be a string"),
        (TARGET + "? [1, 2]\n: 3\n", "must be a string"),
        ("- family\n- target\n", "expected a YAML mapping"),
        ("just text\n", "expected a YAML mapping"),
        (TARGET + "description: 2020-13-45\n", "malformed YAML"),
        (TARGET + "temperature: " + "9" * 400 + "\n", "too large for float64"),
        (TARGET.replace("3.0]", "1" + "0" * 400 + "]"), "too large for float64"),
        (TARGET.replace("candidates: 8", "description: *nothing"), "malformed YAML"),
    ],
    ids=["recursive", "deep-seq", "deep-map", "int-key", "list-key", "list", "scalar",
         "timestamp", "huge-int-temperature", "huge-int-bound", "undefined-alias"],
)  # fmt: skip
def test_malformed_or_hostile_yaml_is_one_line(store: Path, tmp_path: Path, text: str, needle: str):
    cli_fails(store, spec(tmp_path, text), needles=(needle,))


@pytest.mark.parametrize("levels", [9, 60])
def test_alias_bomb_is_refused_quickly_in_one_short_line(store: Path, tmp_path: Path, levels: int):
    """9 levels of 9 aliases is 9**9 strings; 60 levels of doubling is 2**60."""
    if levels == 60:
        text = "a0: &a0 [1, 1]\n" + "".join(
            f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, levels)
        )
    else:
        text = _bomb(levels)
    text += TARGET.replace("candidates: 8", f"candidates: *a{levels - 1}")
    line = cli_fails(store, spec(tmp_path, text), needles=("YAML holds more than",))
    assert len(line) < 200


def test_aliases_within_limits_still_work(store: Path, tmp_path: Path):
    text = "family: target\nfeature: steps/infos/speed\nbounds: &b {low: [0.0], high: [3.0]}\n"
    with pytest.raises(InputError, match="unknown key 'bounds'"):
        parse_task_spec(text + "prior: {uniform: *b}\n")
    plain = parse_task_spec(TARGET)
    aliased = parse_task_spec(
        "family: target\nfeature: steps/infos/speed\n"
        "prior: {uniform: &u {low: [0.0], high: [3.0]}}\ncandidates: 8\n"
        "description: [*u, *u]\n"
    )
    np.testing.assert_array_equal(plain.draw_candidates(3)[0], aliased.draw_candidates(3)[0])


def test_oversized_spec_file_is_refused_before_parsing(store: Path, tmp_path: Path):
    big = spec(tmp_path, TARGET + "#" * MAX_SPEC_BYTES + "\n")
    cli_fails(store, big, needles=("larger than", str(MAX_SPEC_BYTES)))
    with pytest.raises(InputError, match="larger than"):
        parse_task_spec(TARGET + "#" * MAX_SPEC_BYTES)


def test_fifo_spec_does_not_hang(store: Path, tmp_path: Path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        load_task_spec(fifo)
    cli_fails(store, fifo, needles=("not a regular file",))


# ------------------------------------------------------------------ 3. sizes
def test_a_billion_candidates_is_refused_up_front(store: Path, tmp_path: Path):
    """The estimate alone refuses it: nothing is drawn or allocated (it used to try 7 GiB)."""
    cli_fails(store, "synthetic-velocity", "--candidates", 10**15,
              needles=("--candidates 10000000000", "of memory", "lower --candidates"))  # fmt: skip
    text = TARGET.replace("candidates: 8", f"candidates: {10**15}")
    cli_fails(store, spec(tmp_path, text), needles=("candidates 1000000000000000", "spec.yaml"))
    cli_fails(store, "synthetic-goal", "--candidates", 10**13, "--method", "random",
              needles=("--candidates",))  # fmt: skip


def test_a_billion_candidates_against_the_available_memory(
    store: Path, monkeypatch: pytest.MonkeyPatch
):
    """--candidates 1e9 asks for tens of GiB; with 8 GiB available it is refused."""
    monkeypatch.setattr(returns_module, "available_memory", lambda: 8 * 2**30)
    cli_fails(store, "synthetic-velocity", "--candidates", 10**9,
              needles=("--candidates 1000000000", "8 GiB is available"))  # fmt: skip


def _sizes(**parts: int) -> RelabelSizes:
    values = {"candidates": 0, "top_k": 0, "chunk": 0, "spill": 0, "device_part": 0}
    return RelabelSizes(**{**values, **parts})


OPTIONS = {"candidates": "--candidates 9", "top_k": "--top-k all", "chunk": "--chunk-steps 99"}


@pytest.mark.parametrize("part", ["candidates", "top_k", "chunk"])
def test_check_fits_names_the_largest_part(monkeypatch: pytest.MonkeyPatch, part: str):
    monkeypatch.setattr(returns_module, "available_memory", lambda: 2**30)
    parts = {"candidates": 2**29, "top_k": 2**29, "chunk": 2**29}
    parts[part] = 2**31
    option = OPTIONS[part]
    expected = f"^{re.escape(option)}: needs about 3.* GiB of memory but 1 GiB is available"
    with pytest.raises(InputError, match=expected + f"; lower {option.split()[0]}$"):
        check_fits(_sizes(**parts), torch.device("cpu"), OPTIONS)
    check_fits(_sizes(candidates=2**29), torch.device("cpu"), OPTIONS)  # fits


def test_spill_beyond_the_free_temporary_disk_is_refused(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """K tiled over a tiny max_matrix_mb spills N x K float64 to TMPDIR: checked first."""

    class Usage:
        free = 1000

    monkeypatch.setattr(returns_module.shutil, "disk_usage", lambda folder: Usage)
    with pytest.raises(InputError, match=r"--candidates 64: the N x K returns matrix.*TMPDIR"):
        labels(store, "synthetic-velocity", candidates=64, max_matrix_mb=1e-4)
    with open_store(store) as opened:
        assert opened.label_names() == []


def test_available_memory_is_known_and_plausible():
    available = available_memory()
    assert available is not None and available > 0
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert available <= total


PEAK = """
import sys
import torch
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.relabel.returns import RelabelSizes, tile_columns
from hipi_offline.store import open_store
from hipi_offline.tasks import load_task_spec


def high_water():
    # VmHWM: this process image's peak RSS. Unlike getrusage's ru_maxrss it is not
    # inherited from a large parent (pytest) across fork and exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


torch.set_num_threads(1)
store, tasks, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = load_task_spec(tasks)
with open_store(store) as s:
    n = s.num_episodes
    dim = spec.task_dim(s.step_fields())
    sizes = RelabelSizes.of(s, spec, "hipi", (k, dim, 32), 65536, tile_columns(n, k, 2048.0))
base = high_water()
relabel(store, RelabelConfig(tasks=tasks, name="p", candidates=k, device="cpu"))
peak = high_water()
print(peak - base, sizes.memory, n * k * 8)
"""


@pytest.mark.parametrize("tasks", ["synthetic-velocity", "synthetic-goal"])
@pytest.mark.slow
def test_memory_estimate_bounds_the_measured_peak(tmp_path: Path, tasks: str):
    """The estimate is an upper bound of the real peak (RSS) and not wildly above it,
    for the sorted-target path and the generic one (N x K float64 = 64 MB)."""
    from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

    path = tmp_path / "m.h5"
    make_synthetic_store(path, SyntheticConfig(episodes=400, steps=2, seed=0))
    script = tmp_path / "peak.py"
    script.write_text(PEAK)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(script), str(path), tasks, "20000"],
        capture_output=True, text=True, env=env, timeout=600, check=True,
    )  # fmt: skip
    measured, estimate, matrix = (int(x) for x in out.stdout.split())
    assert measured > matrix  # the run really held R
    assert measured <= estimate, (measured, estimate)
    assert estimate <= 4 * measured, (measured, estimate)


def test_original_method_top_k_needs_no_n_by_k_index():
    """``original`` with one distinct task per episode (K = N): the top-k indices are
    built in O(N x k) memory (they were an N x K tile: 200 MB here)."""
    import tracemalloc

    from hipi_offline.relabel.posterior import one_hot_posterior

    n = 5000
    assigned = np.random.default_rng(0).permutation(n)
    tracemalloc.start()
    try:
        posterior = one_hot_posterior(assigned, n, 4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20, peak
    np.testing.assert_array_equal(posterior.topk_index[:, 0], assigned)
    rest = posterior.topk_index[:, 1:]
    expected = np.array([[j for j in range(n) if j != a][:3] for a in assigned[:50]])
    np.testing.assert_array_equal(rest[:50], expected)
    assert not (rest == assigned[:, None]).any()
