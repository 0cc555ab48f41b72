"""The paper's experiments (Fig. 7a, 7b) on their tiny presets, and the task spec's
``bias`` key against a plain-numpy float64 reference."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference as ref
import torch

import hipi_offline.experiments.common as common
from hipi_offline.errors import InputError
from hipi_offline.experiments import (
    EnvSetup,
    Fig7aConfig,
    Fig7bConfig,
    TrainSettings,
    biased_spec_text,
    run_fig7a,
    run_fig7b,
)
from hipi_offline.experiments.report import fig7a_table, fig7b_table
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.store import create_store, open_store
from hipi_offline.tasks import load_task_spec, parse_task_spec

REPO = Path(__file__).resolve().parents[1]
SPEED, ACT = "steps/infos/speed", "steps/actions"


CHEETAH = load_task_spec("cheetah-velocity").source


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fig. 7a and 7b, tiny presets, under one root (they share the cheetah data)."""
    root = tmp_path_factory.mktemp("fig7")
    torch.set_num_threads(1)
    run_fig7a(root, Fig7aConfig.tiny())
    run_fig7b(root, Fig7bConfig.tiny())
    return root


# ------------------------------------------------------------------ layout and results
@pytest.mark.slow  # runs the tiny Fig. 7a and 7b presets (module fixture)
def test_tiny_fig7a_writes_the_layout(tiny_root: Path) -> None:
    config = Fig7aConfig.tiny()
    settings = json.loads((tiny_root / "config.json").read_text())
    assert settings["fig7a"] == config.settings() and "fig7b" in settings
    results = json.loads((tiny_root / "results.json").read_text())
    assert set(results) == {"fig7a", "fig7b"}
    for setup in config.envs:
        env = tiny_root / setup.env
        assert (env / "data.h5").is_file()
        with open_store(env / "data.h5") as store:
            assert set(store.label_names()) >= {"hipi", "no-partition", "random", "original"}
        row = results["fig7a"][setup.env]
        assert list(row) == list(config.methods)
        for method in config.methods:
            for seed in config.seeds:
                run = env / "runs" / f"{method}-seed{seed}"
                assert (run / "config.json").is_file()
                evaluation = json.loads((env / "eval" / f"{method}-seed{seed}.json").read_text())
                assert evaluation["episodes"] == setup.eval_episodes
                assert len(evaluation["per_episode"]) == setup.eval_episodes
            entry = row[method]
            directed = setup.env != "desk"  # cheetah's tasks have a direction
            expected = {"mean", "stderr", "per_seed", "metric"}
            assert set(entry) == expected | ({"velocity_along_command"} if directed else set())
            assert len(entry["per_seed"]) == len(config.seeds)
            assert entry["metric"] == ("success_rate" if setup.env == "desk" else "return")
            assert math.isfinite(entry["mean"])
    directed = sum(setup.env != "desk" for setup in config.envs)
    assert len(fig7a_table(results)) == 2 + len(config.envs) + directed  # velocity rows


@pytest.mark.slow  # runs the tiny Fig. 7a and 7b presets (module fixture)
def test_tiny_fig7b_writes_results_and_hipi_labels_ignore_the_bias(tiny_root: Path) -> None:
    config = Fig7bConfig.tiny()
    results = json.loads((tiny_root / "results.json").read_text())["fig7b"]
    assert results["bias"] == list(config.biases)
    for method in ("hipi", "no-partition"):
        assert len(results[method]["mean"]) == len(config.biases)
        assert len(results[method]["stderr"]) == len(config.biases)
    assert max(results["hipi"]["label_tv"]) < 1e-6
    assert results["no-partition"]["label_tv"][-1] > 0.05
    # The 7a cheetah store was reused (same data), not collected again.
    a, b = tiny_root / "cheetah" / "data.h5", tiny_root / "fig7b" / "data.h5"
    assert a.stat().st_ino == b.stat().st_ino or a.read_bytes() == b.read_bytes()
    with open_store(b) as store:
        hipi = [store.read_labels(f"hipi-b{v:g}") for v in config.biases]
        nop = [store.read_labels(f"no-partition-b{v:g}") for v in config.biases]
    for other in hipi[1:]:
        np.testing.assert_array_equal(other.topk_index, hipi[0].topk_index)
        np.testing.assert_allclose(other.topk_logprob, hipi[0].topk_logprob, atol=1e-6)
    assert not np.allclose(nop[-1].topk_logprob, nop[0].topk_logprob, atol=1e-3)
    assert len(fig7b_table({"fig7b": results})) == 2 + len(config.biases)


# ------------------------------------------------------------------ resume
@pytest.mark.slow  # runs the tiny Fig. 7a and 7b presets (module fixture)
def test_rerun_skips_every_finished_stage(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = json.loads((tiny_root / "results.json").read_text())

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished stage ran again")

    for name in ("collect", "relabel", "train_bc", "evaluate"):
        monkeypatch.setattr(common, name, refuse)
    assert run_fig7a(tiny_root, Fig7aConfig.tiny()) == before
    assert run_fig7b(tiny_root, Fig7bConfig.tiny()) == before


@pytest.mark.slow  # runs the tiny Fig. 7a and 7b presets (module fixture)
def test_a_lost_evaluation_reruns_only_that_run(
    tiny_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost = tiny_root / "desk" / "eval" / "random-seed0.json"
    lost.unlink()
    calls: dict[str, list[Any]] = {"train": [], "evaluate": []}
    train, evaluate = common.train_bc, common.evaluate
    monkeypatch.setattr(
        common, "train_bc", lambda store, cfg: calls["train"].append(cfg) or train(store, cfg)
    )
    monkeypatch.setattr(
        common, "evaluate", lambda runs, cfg: calls["evaluate"].append(runs) or evaluate(runs, cfg)
    )
    run_fig7a(tiny_root, Fig7aConfig.tiny())
    assert [Path(c.out).name for c in calls["train"]] == ["random-seed0"]
    assert calls["train"][0].resume  # a finished run is found complete, not retrained
    assert [[Path(r).name for r in runs] for runs in calls["evaluate"]] == [["random-seed0"]]
    assert lost.is_file()


@pytest.mark.slow  # runs the tiny Fig. 7a and 7b presets (module fixture)
def test_parallel_training_gives_the_sequential_weights(tiny_root: Path, tmp_path: Path) -> None:
    """BC runs on two worker processes end with the weights of the same runs trained
    one after the other in this process."""
    from safetensors.torch import load_file

    store = tiny_root / "cheetah" / "data.h5"
    settings = TrainSettings(steps=20, batch_size=16, hidden=(8,))
    control = common.Control(workers=2, threads=1, progress=False)

    def jobs(folder: str) -> list[common.TrainJob]:
        return [
            common.TrainJob(store, tmp_path / folder / "hipi", "hipi", 5, settings, control),
            common.TrainJob(store, tmp_path / folder / "agnostic", None, 6, settings, control),
        ]

    common.train_runs(jobs("parallel"), workers=2, progress=False)
    common.train_runs(jobs("serial"), workers=1, progress=False)
    for name in ("hipi", "agnostic"):
        a, b = (
            load_file(tmp_path / folder / name / "checkpoints" / "step_0000020.safetensors")
            for folder in ("parallel", "serial")
        )
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


@pytest.mark.slow  # runs the tiny Fig. 7a and 7b presets (module fixture)
def test_other_settings_on_the_same_root_are_refused(tiny_root: Path) -> None:
    config = Fig7aConfig.tiny()
    changed = Fig7aConfig(envs=config.envs, seeds=(0, 1), train=config.train)
    with pytest.raises(InputError, match=r"^--root: .*\(seeds\)"):
        run_fig7a(tiny_root, changed)
    # run control (workers, threads, progress) may change
    run_fig7a(tiny_root, config.with_control(workers=2, progress=False))


# ------------------------------------------------------------------ the bias key
def _biased_reward(b: float, low: float, high: float) -> Any:
    base = ref.target_reward(SPEED, ctrl_cost=0.05)

    def reward(ep: dict[str, np.ndarray], psi: np.ndarray) -> np.ndarray:
        inside = bool(np.all((psi >= low) & (psi <= high)))
        return base(ep, psi) + (b if inside else 0.0)

    return reward


@pytest.mark.parametrize(
    ("gamma", "at", "temperature"), [(1.0, "all", 1.0), (0.9, "all", 2.0), (1.0, "final", 0.5)]
)
def test_bias_matches_a_float64_reference(
    tmp_path: Path, gamma: float, at: str, temperature: float
) -> None:
    rng = np.random.default_rng(3)
    lengths = [7, 12, 5, 9, 12, 3]  # unequal: the bias then moves even HIPI's labels
    rows = sum(lengths)
    steps = {
        "observations": rng.standard_normal((rows, 3)).astype(np.float32),
        "actions": np.clip(0.3 * rng.standard_normal((rows, 6)), -1, 1).astype(np.float32),
        "infos/speed": rng.uniform(0.0, 3.0, rows).astype(np.float32),
    }
    store = tmp_path / "data.h5"
    with create_store(store) as s:
        s.append_episodes(steps, lengths)
    candidates = [[0.0], [0.4], [1.0], [1.3], [2.2], [3.0]]
    body = (
        f"name: biased\nfamily: target\nfeature: {SPEED}\nctrl_cost: 0.05\n"
        f"prior: {{uniform: {{low: [0.0], high: [3.0]}}}}\ncandidates: {candidates}\n"
        f"temperature: {temperature}\ngamma: {gamma}\nat: {at}\n"
        "bias: {value: 0.7, low: [0.0], high: [1.0]}\n"
    )
    spec = tmp_path / "biased.yaml"
    spec.write_text(body)
    fields = {SPEED: steps["infos/speed"].astype(np.float64), ACT: steps["actions"].astype(float)}
    log_prior = np.full(len(candidates), -math.log(3.0))
    for method in ("hipi", "no-partition"):
        relabel(
            store,
            RelabelConfig(tasks=str(spec), method=method, top_k="all", device="cpu"),
        )
        with open_store(store) as s:
            labels = s.read_labels(method)
        stored = labels.candidates.astype(np.float64)  # the engine's float32 candidates
        returns = ref.returns_matrix(
            fields, lengths, stored, _biased_reward(0.7, 0.0, 1.0), gamma, at
        )
        post = ref.posterior(returns, temperature, log_prior, partition=method == "hipi")
        at_index = np.take_along_axis(post.log_q, labels.topk_index, axis=1)
        np.testing.assert_allclose(labels.topk_logprob, at_index, atol=1e-5)
        np.testing.assert_allclose(
            np.sort(at_index, axis=1), np.sort(post.log_q, axis=1), atol=1e-5
        )
        if method == "hipi":
            np.testing.assert_allclose(labels.log_z, post.log_z, rtol=1e-9, atol=1e-9)


def test_bias_reward_function_against_numpy() -> None:
    spec = parse_task_spec(CHEETAH + "bias: {value: -1.5, low: 0.5, high: 2.0}\n")
    rng = np.random.default_rng(0)
    speed, actions = rng.uniform(0, 3, 50), rng.uniform(-1, 1, (50, 6))
    tasks = np.array([[0.0], [0.5], [1.2], [2.0], [2.5]])
    got = spec.family.reward(
        {SPEED: torch.from_numpy(speed), ACT: torch.from_numpy(actions)},
        torch.from_numpy(tasks),
    ).numpy()
    want = -np.abs(speed[:, None] - tasks.T) - 0.05 * (actions**2).sum(axis=1)[:, None]
    want = want + np.where((tasks[:, 0] >= 0.5) & (tasks[:, 0] <= 2.0), -1.5, 0.0)[None, :]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert spec.family.name == "target" and spec.family.fields == (SPEED, ACT)


def test_bias_on_a_discrete_family_keeps_its_task_names() -> None:
    desk = load_task_spec("desk-discrete")
    box = "low: [0.5, 0, 0, 0, 0, 0, 0, 0, 0], high: [1, 1, 1, 1, 1, 1, 1, 1, 1]"
    spec = parse_task_spec(desk.source + f"bias: {{value: 2, {box}}}\n")
    assert spec.task_names == desk.task_names and spec.family.name == "discrete"


@pytest.mark.parametrize(
    ("bias", "key"),
    [
        ("3", "bias"),
        ("{low: [0]}", "bias"),
        ("{value: 1, foo: 2}", "bias"),
        ("{value: x}", "bias.value"),
        ("{value: .inf}", "bias.value"),
        ("{value: true}", "bias.value"),
        ("{value: 1, low: [0, 1]}", "bias.low"),
        ("{value: 1, high: [a]}", "bias.high"),
        ("{value: 1, low: 2, high: 1}", "bias.low"),
    ],
)
def test_bad_bias_is_an_input_error_naming_the_key(bias: str, key: str) -> None:
    with pytest.raises(InputError, match=rf"^spec.yaml: {key}[: ]"):
        parse_task_spec(CHEETAH + f"bias: {bias}\n", origin="spec.yaml")


def test_biased_spec_text_round_trips() -> None:
    text = biased_spec_text(CHEETAH, 2.0, (0.0,), (1.0,))
    family = parse_task_spec(text).family
    assert (family.value, family.low, family.high) == (2.0, (0.0,), (1.0,))


# ------------------------------------------------------------------ configs and CLI
@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Fig7aConfig(envs=()), "envs"),
        (lambda: Fig7aConfig(envs=(EnvSetup("mars", 1),)), "envs"),
        (lambda: Fig7aConfig(envs=(EnvSetup("desk", 0),)), "envs.desk.episodes"),
        (lambda: Fig7aConfig(envs=(EnvSetup("desk", 5),), methods=("hipi", "bogus")), "methods"),
        (lambda: Fig7aConfig(envs=(EnvSetup("desk", 5),), seeds=()), "seeds"),
        (
            lambda: Fig7aConfig(envs=(EnvSetup("desk", 5),), train=TrainSettings(steps=0)),
            "train.steps",
        ),
        (lambda: Fig7bConfig(biases=()), "biases"),
        (lambda: Fig7bConfig(biases=(0.0, math.nan)), "biases"),
        (lambda: Fig7bConfig(methods=("random",)), "methods"),
        (lambda: Fig7bConfig(low=(2.0,), high=(1.0,)), "bias.low"),
    ],
)
def test_bad_config_is_an_input_error_naming_the_field(make: Any, field: str) -> None:
    """A config checks itself when it is made (and its ``check`` says the same)."""
    with pytest.raises(InputError, match=rf"^{field}[: ]|: {field}[: ]"):
        make()


def _script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name[:-3], REPO / "benchmarks" / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["fig7a.py", "fig7b.py"])
def test_scripts_exit_2_on_bad_input(
    tmp_path: Path, script: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main = _script(script).main
    assert main(["--preset", "huge", "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --preset:")
    assert main(["--preset", "tiny", "--root", str(tmp_path), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --workers:")
    if script == "fig7a.py":
        assert main(["--preset", "tiny", "--root", str(tmp_path), "--envs", "quadruped"]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --envs:")
    assert not (tmp_path / "config.json").exists()


def test_only_envs_keeps_the_preset_settings_of_the_chosen_environments() -> None:
    full = Fig7aConfig.full()
    quadruped = full.only_envs(["quadruped"])
    assert [e.env for e in quadruped.envs] == ["quadruped"]
    assert quadruped.envs[0] == full.envs[1] and quadruped.train == full.train
    both = full.only_envs(["desk", "cheetah"])
    assert [e.env for e in both.envs] == ["cheetah", "desk"]  # the preset's order
    with pytest.raises(InputError, match="--envs"):
        full.only_envs([])
