"""The paper's Fig. 7b: a constant reward bias on part of the task space.

On cheetah, every step's reward for the target speeds inside a box (by default
ψ in [0, 1]) gets a constant b (the task spec key ``bias``), for each b in a
range. The data is relabeled with the biased reward by ``hipi`` and by
``no-partition``, policies are trained on those labels and evaluated with the
true, unbiased reward on tasks from the prior. HIPI's log Z absorbs a per-task
constant, so its labels (and results) do not move with b; the ablation's do.

Layout under ``root`` (beside Fig. 7a's)::

    fig7b/data.h5                          cheetah store (a hard link to cheetah/data.h5
                                           when Fig. 7a collected the same data)
    fig7b/specs/bias-<b>.yaml              the biased task specs
    fig7b/runs/<method>-b<b>-seed<s>/      train-bc runs
    fig7b/eval/<method>-b<b>-seed<s>.json  evaluate's JSON
    results.json                           "fig7b": {"bias": [...], method: {"mean": [...],
                                           "stderr": [...], "per_seed": [[...]],
                                           "label_tv": [...]}}

``label_tv`` is the mean total-variation distance between each episode's posterior
under bias b and under no bias (0 for HIPI up to float rounding).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hipi_offline.collect import CollectConfig
from hipi_offline.configs import FieldError, check_seed, named, nested
from hipi_offline.envs.base import env_entry
from hipi_offline.errors import InputError
from hipi_offline.evaluate import EvalConfig
from hipi_offline.experiments.common import (
    Control,
    TrainJob,
    TrainSettings,
    aggregate,
    check_seeds,
    claim_root,
    collect_stage,
    evaluate_stage,
    jsonable,
    read_json,
    relabel_stage,
    train_runs,
    update_results,
)
from hipi_offline.store.labels import LabelSet
from hipi_offline.store.store import open_store
from hipi_offline.tasks.spec import load_task_spec, parse_task_spec

ENV = "cheetah"
BASE_SPEC = env_entry(ENV).task_spec
"""The task spec the biased specs add ``bias`` to (the environment's own)."""
BIAS_METHODS: tuple[str, ...] = ("hipi", "no-partition")


def biased_spec_text(
    base: str, value: float, low: tuple[float, ...], high: tuple[float, ...]
) -> str:
    """A task spec's YAML text with a ``bias`` key added (checked by parsing it)."""
    data = yaml.safe_load(base)
    if not isinstance(data, dict) or "bias" in data:
        raise InputError("bias: the base spec must be a mapping without a bias key")
    line = yaml.safe_dump(
        {"bias": {"value": float(value), "low": list(low), "high": list(high)}},
        default_flow_style=None,
    )
    text = base.rstrip("\n") + "\n" + line
    parse_task_spec(text, origin="biased spec")
    return text


def bias_name(value: float) -> str:
    """``b0.5``: the bias part of label-set, run and file names."""
    return f"b{value:g}"


@dataclass(frozen=True)
class Fig7bConfig:
    """Settings of the Fig. 7b experiment; presets :meth:`tiny`, :meth:`reduced`, :meth:`full`."""

    episodes: int = 32
    """Collected cheetah episodes."""
    steps: int | None = 100
    """Steps per collected episode."""
    biases: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    """Per-step reward bias values b (include 0)."""
    low: tuple[float, ...] = (0.0,)
    """Lower corner of the biased box of target speeds."""
    high: tuple[float, ...] = (1.0,)
    """Upper corner of the biased box."""
    methods: tuple[str, ...] = BIAS_METHODS
    """Relabeling methods compared: hipi and no-partition."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """One behavior-cloning run per method, bias and seed."""
    train: TrainSettings = field(default_factory=TrainSettings)
    """Behavior-cloning settings."""
    eval_episodes: int = 16
    """Evaluation episodes per run (tasks from the prior, the same for every run)."""
    eval_steps: int | None = 100
    """Steps per evaluation episode."""
    collect_seed: int = 0
    """Seed of the collected data."""
    eval_seed: int = 1000
    """Seed of the evaluation episodes (tasks, initial states), shared by all runs."""
    control: Control = field(default_factory=Control)
    """How the experiment runs (workers, threads, progress bars)."""

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def tiny(cls) -> Fig7bConfig:
        """Seconds: two biases, one seed (tests)."""
        return cls(
            episodes=2,
            steps=20,
            biases=(0.0, 2.0),
            seeds=(0,),
            train=TrainSettings(steps=30, batch_size=32, hidden=(32, 32)),
            eval_episodes=2,
            eval_steps=20,
            control=Control(workers=1, threads=1, progress=False),
        )

    @classmethod
    def reduced(cls) -> Fig7bConfig:
        """The cheetah data of Fig. 7a's reduced preset (shared when both run under one
        root), six biases, three seeds."""
        return cls(
            biases=(0.0, 0.1, 0.25, 0.5, 1.0, 2.0),
            train=TrainSettings(steps=1500, batch_size=128, hidden=(128, 128)),
        )

    @classmethod
    def full(cls) -> Fig7bConfig:
        """Benchmark size (hours)."""
        return cls(
            episodes=500,
            steps=200,
            biases=(0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
            seeds=(0, 1, 2, 3, 4),
            train=TrainSettings(steps=20_000, batch_size=256, hidden=(256, 256, 256)),
            eval_episodes=50,
            eval_steps=200,
        )

    @classmethod
    def preset(cls, name: str) -> Fig7bConfig:
        """``tiny``, ``reduced`` or ``full``."""
        if name not in ("tiny", "reduced", "full"):
            raise InputError(f"--preset: expected one of tiny, reduced, full, got {name!r}")
        return getattr(cls, name)()

    def with_control(self, **changes: Any) -> Fig7bConfig:
        """The same experiment run differently (workers, threads, progress)."""
        return replace(self, control=replace(self.control, **changes))

    def check(self) -> None:
        """InputError naming the first bad field."""
        CollectConfig(episodes=self.episodes, steps=self.steps)
        with nested(lambda name: f"eval_{name}"):
            EvalConfig(episodes=self.eval_episodes, steps=self.eval_steps)
        if not self.biases:
            raise FieldError("biases", "give at least one bias value")
        for b in self.biases:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
                raise FieldError("biases", f"expected finite numbers, got {b!r}")
        if len({bias_name(b) for b in self.biases}) != len(self.biases):
            raise FieldError("biases", f"values must be distinct, got {list(self.biases)}")
        if not self.methods or any(m not in BIAS_METHODS for m in self.methods):
            raise FieldError("methods", f"expected some of {', '.join(BIAS_METHODS)}")
        with named("seeds"):
            check_seeds(self.seeds)
        self.train.check()
        self.control.check()
        check_seed(self.collect_seed, "collect_seed")
        check_seed(self.eval_seed, "eval_seed")
        base = load_task_spec(BASE_SPEC).source
        biased_spec_text(base, 0.0, self.low, self.high)  # checks low/high

    def settings(self) -> dict[str, Any]:
        """What the experiment computes (``config.json``; run control left out)."""
        data = asdict(self)
        data.pop("control")
        return jsonable(data)


def _reuse_fig7a_store(root: Path, store: Path, config: Fig7bConfig) -> None:
    """Hard-link Fig. 7a's cheetah store when it holds exactly this data (the label
    sets live beside each path, so neither experiment sees the other's)."""
    source = root / ENV / "data.h5"
    if store.exists() or not source.exists():
        return
    fig7a = read_json(root / "config.json").get("fig7a") or {}
    setup = next((e for e in fig7a.get("envs", []) if e.get("env") == ENV), None)
    if setup is None or fig7a.get("collect_seed") != config.collect_seed:
        return
    if (setup.get("episodes"), setup.get("steps")) != (config.episodes, config.steps):
        return
    with open_store(source) as s:
        if s.num_episodes != config.episodes:
            return
    store.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, store)
    except OSError:
        shutil.copyfile(source, store)


def label_tv(labels: LabelSet, reference: LabelSet) -> float:
    """Mean over episodes of the total-variation distance between two (top-k) posteriors
    over the same candidates."""
    p, q = labels.topk_probabilities(), reference.topk_probabilities()
    k = labels.num_candidates
    n = labels.num_episodes
    dense_p = np.zeros((n, k))
    dense_q = np.zeros((n, k))
    rows = np.arange(n)[:, None]
    dense_p[rows, labels.topk_index] = p
    dense_q[rows, reference.topk_index] = q
    return float(0.5 * np.abs(dense_p - dense_q).sum(axis=1).mean())


def run_fig7b(root: str | Path, config: Fig7bConfig) -> dict[str, Any]:
    """Run (or continue) Fig. 7b under ``root``; returns the whole ``results.json``."""
    root = Path(root)
    claim_root(root, "fig7b", config.settings())
    folder = root / "fig7b"
    store = folder / "data.h5"
    control = config.control
    _reuse_fig7a_store(root, store, config)
    collect_stage(store, ENV, config.episodes, config.steps, config.collect_seed, control)
    base = load_task_spec(BASE_SPEC).source
    runs: dict[Path, Path] = {}
    jobs: list[TrainJob] = []
    for b in config.biases:
        spec = folder / "specs" / f"bias-{b:g}.yaml"
        if not spec.exists():
            spec.parent.mkdir(parents=True, exist_ok=True)
            spec.write_text(biased_spec_text(base, b, config.low, config.high))
        for method in config.methods:
            name = f"{method}-{bias_name(b)}"
            relabel_stage(store, str(spec), method, name)
            for seed in config.seeds:
                run = folder / "runs" / f"{name}-seed{seed}"
                out = folder / "eval" / f"{name}-seed{seed}.json"
                if not out.exists():
                    jobs.append(TrainJob(store, run, name, seed, config.train, control))
                runs[run] = out
    train_runs(jobs, control.workers, control.progress)
    evaluate_stage(ENV, runs, config.eval_episodes, config.eval_steps, config.eval_seed, control)
    table: dict[str, Any] = {
        "bias": [float(b) for b in config.biases],
        "box": {"low": list(config.low), "high": list(config.high)},
    }
    with open_store(store) as s:
        for method in config.methods:
            stats = [
                aggregate(
                    [
                        folder / "eval" / f"{method}-{bias_name(b)}-seed{s_}.json"
                        for s_ in config.seeds
                    ]
                )
                for b in config.biases
            ]
            reference = s.read_labels(f"{method}-{bias_name(config.biases[0])}")
            table[method] = {
                "mean": [x["mean"] for x in stats],
                "stderr": [x["stderr"] for x in stats],
                "per_seed": [x["per_seed"] for x in stats],
                "metric": "return",
                "label_tv": [
                    label_tv(s.read_labels(f"{method}-{bias_name(b)}"), reference)
                    for b in config.biases
                ],
            }
    return update_results(root, "fig7b", table)
