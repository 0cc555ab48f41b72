"""The paper's Fig. 7a: behavior cloning on relabeled data against its baselines.

For each environment: collect expert data once, relabel it with every method
(hipi, no-partition, random, original = the commanded tasks, the oracle), train
one behavior-cloning run per (method, seed) plus task-agnostic BC, evaluate every
run on the same episodes with tasks from the prior, and average over seeds.

Layout under ``root`` (read by the notebooks and plots; keep it)::

    config.json                       {"fig7a": settings, "fig7b": settings}
    <env>/data.h5                     collected store (label sets beside it)
    <env>/runs/<method>-seed<s>/      train-bc run directories
    <env>/eval/<method>-seed<s>.json  evaluate's JSON for that run
    results.json                      {"fig7a": {env: {method: {mean, stderr, per_seed, metric}}}}

Every stage skips what is already on disk, so rerunning continues a killed run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hipi_offline.bc.config import parse_hidden
from hipi_offline.collect import CollectConfig
from hipi_offline.configs import FieldError, check_seed, named, nested
from hipi_offline.envs.base import env_entry, env_names
from hipi_offline.errors import InputError
from hipi_offline.evaluate import EvalConfig
from hipi_offline.experiments.common import (
    ALL_METHODS,
    TASK_AGNOSTIC,
    Control,
    TrainJob,
    TrainSettings,
    aggregate,
    check_seeds,
    claim_root,
    collect_stage,
    evaluate_stage,
    jsonable,
    relabel_stage,
    train_runs,
    update_results,
)
from hipi_offline.relabel import RelabelConfig

QUADRUPED_TRAIN = TrainSettings(
    steps=5000, batch_size=256, hidden=(256, 256), head="deterministic", body_frame_task=True
)
"""Behavior cloning of the quadruped's trot (reduced preset; the full one trains
20,000 steps of a 3 x 256 network)."""


@dataclass(frozen=True)
class EnvSetup:
    """Data and evaluation sizes of one environment."""

    env: str
    """cheetah, quadruped or desk."""
    episodes: int
    """Collected episodes (desk: play windows)."""
    steps: int | None = None
    """Steps per collected episode (None: the environment's default)."""
    eval_episodes: int = 20
    """Evaluation episodes per run (tasks from the prior, the same for every run)."""
    eval_steps: int | None = None
    """Steps per evaluation episode (None: the environment's default)."""
    temperature: float | None = None
    """Override the task spec's temperature for relabeling."""
    candidates: int | None = None
    """Override the task spec's candidate count for relabeling."""
    train: TrainSettings | None = None
    """Behavior-cloning settings of this environment (None: the experiment's)."""

    @property
    def tasks(self) -> str:
        return env_entry(self.env).task_spec

    def check(self) -> None:
        if self.env not in env_names():
            raise InputError(
                f"envs: unknown environment {self.env!r} (use {', '.join(env_names())})"
            )
        where = f"envs.{self.env}"
        with nested(lambda name: f"{where}.{name}"):
            CollectConfig(episodes=self.episodes, steps=self.steps)
            RelabelConfig(self.tasks, temperature=self.temperature, candidates=self.candidates)
        with nested(lambda name: f"{where}.eval_{name}"):
            EvalConfig(episodes=self.eval_episodes, steps=self.eval_steps)
        if self.train is not None:
            self.train.check(f"{where}.train")


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": _flag,
    "tuple[int, ...]": parse_hidden,
}


Settings = dict[str, tuple[Callable[[str], Any], bool]]


def _settings(cls: type) -> Settings:
    """Field -> (parser, may be None) of each plainly typed field of a settings class:
    what ``--env ENV.FIELD=VALUE`` can set, read from the dataclass itself."""
    out = {}
    for f in fields(cls):
        base, none, _ = str(f.type).partition(" | None")
        if base in _PARSERS and f.name != "env":
            out[f.name] = (_PARSERS[base], bool(none))
    return out


def _setting(settings: Settings, field_name: str, text: str, shown: str) -> Any:
    """One ``--env`` value parsed for its field (``none``: the default, where the field
    may be None); the config's checks then apply."""
    parse, optional = settings[field_name]
    if optional and text.lower() in ("none", "default"):
        return None
    try:
        return parse(text)
    except (ValueError, InputError):
        raise InputError(f"--env: {shown} cannot be {text!r}") from None


@dataclass(frozen=True)
class Fig7aConfig:
    """Settings of the Fig. 7a experiment; presets :meth:`tiny`, :meth:`reduced`, :meth:`full`."""

    envs: tuple[EnvSetup, ...]
    methods: tuple[str, ...] = ALL_METHODS
    """Label sets to train on (hipi, no-partition, random, original) and task-agnostic."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """One behavior-cloning run per method and seed."""
    train: TrainSettings = field(default_factory=TrainSettings)
    """Behavior-cloning settings (an environment's own ``train`` replaces them)."""
    collect_seed: int = 0
    """Seed of the collected data."""
    eval_seed: int = 1000
    """Seed of the evaluation episodes (tasks, initial states), shared by all runs."""
    control: Control = field(default_factory=Control)
    """How the experiment runs (workers, threads, progress bars)."""

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def tiny(cls) -> Fig7aConfig:
        """Cheetah and desk on a handful of episodes, one seed: well under a minute
        (tests and notebooks; far too small to show the ordering)."""
        return cls(
            envs=(
                EnvSetup("cheetah", episodes=2, steps=20, eval_episodes=2, eval_steps=20),
                EnvSetup("desk", episodes=20, steps=50, eval_episodes=4, eval_steps=50),
            ),
            seeds=(0,),
            train=TrainSettings(steps=30, batch_size=32, hidden=(32, 32)),
            control=Control(workers=1, threads=1, progress=False),
        )

    @classmethod
    def reduced(cls) -> Fig7aConfig:
        """All three environments on small data, three seeds: under 30 minutes on a
        loaded 2-core machine."""
        return cls(
            envs=(
                EnvSetup("cheetah", episodes=32, steps=100, eval_episodes=16, eval_steps=100),
                # the trot expert's data (with its default action noise); BC with a
                # deterministic head and the task's direction in the body frame,
                # which is what makes the gait cloneable (benchmarks/RESULTS.md)
                EnvSetup(
                    "quadruped",
                    episodes=300,
                    steps=200,
                    eval_episodes=32,
                    eval_steps=200,
                    train=QUADRUPED_TRAIN,
                ),
                EnvSetup(
                    "desk",
                    episodes=400,
                    steps=50,
                    eval_episodes=45,
                    eval_steps=150,
                    temperature=0.05,
                    train=TrainSettings(steps=2500, batch_size=256, hidden=(256, 256)),
                ),
            ),
            seeds=(0, 1, 2),
            train=TrainSettings(steps=1500, batch_size=128, hidden=(128, 128)),
        )

    @classmethod
    def full(cls) -> Fig7aConfig:
        """Benchmark size (the datasets of datasets/README.md, five seeds): hours."""
        return cls(
            envs=(
                EnvSetup("cheetah", episodes=500, steps=200, eval_episodes=50, eval_steps=200),
                EnvSetup(
                    "quadruped",
                    episodes=1000,
                    steps=200,
                    eval_episodes=50,
                    eval_steps=200,
                    train=replace(QUADRUPED_TRAIN, steps=20_000, hidden=(256, 256, 256)),
                ),
                EnvSetup(
                    "desk",
                    episodes=900,
                    steps=50,
                    eval_episodes=90,
                    eval_steps=150,
                    temperature=0.05,
                ),
            ),
            seeds=(0, 1, 2, 3, 4),
            train=TrainSettings(steps=20_000, batch_size=256, hidden=(256, 256, 256)),
        )

    @classmethod
    def preset(cls, name: str) -> Fig7aConfig:
        """``tiny``, ``reduced`` or ``full``."""
        if name not in PRESETS:
            raise InputError(f"--preset: expected one of {', '.join(PRESETS)}, got {name!r}")
        return getattr(cls, name)()

    def only_envs(self, names: Sequence[str]) -> Fig7aConfig:
        """The same experiment on a subset of its environments (in the preset's order)."""
        known = [e.env for e in self.envs]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise InputError(f"--envs: expected names from {', '.join(known)}, got {list(names)}")
        return replace(self, envs=tuple(e for e in self.envs if e.env in names))

    def with_env_settings(self, items: Sequence[str]) -> Fig7aConfig:
        """The same experiment with settings of single environments changed, each item
        ``ENV.FIELD=VALUE`` (``cheetah.episodes=300``, ``desk.eval_steps=none``)."""
        setups = {e.env: e for e in self.envs}
        own, train_fields = _settings(EnvSetup), _settings(TrainSettings)
        for item in items:
            name, _, value = item.partition("=")
            env, _, key = name.strip().partition(".")
            setup, train_key = setups.get(env), key.removeprefix("train.")
            known = key in own or (key != train_key and train_key in train_fields)
            if not value or setup is None or not known:
                raise InputError(
                    f"--env: expected ENV.FIELD=VALUE with ENV one of {', '.join(setups)} and "
                    f"FIELD one of {', '.join(own)} or train.FIELD "
                    f"({', '.join(train_fields)}), got {item!r}"
                )
            if key in own:
                setups[env] = replace(setup, **{key: _setting(own, key, value.strip(), key)})
            else:  # this environment's own behavior-cloning settings
                parsed = _setting(train_fields, train_key, value.strip(), key)
                train = replace(setup.train or self.train, **{train_key: parsed})
                setups[env] = replace(setup, train=train)
        return replace(self, envs=tuple(setups[e.env] for e in self.envs))

    def with_control(self, **changes: Any) -> Fig7aConfig:
        """The same experiment run differently (workers, threads, progress)."""
        return replace(self, control=replace(self.control, **changes))

    def check(self) -> None:
        """InputError naming the first bad field."""
        if not self.envs:
            raise FieldError("envs", "give at least one environment")
        names = [e.env for e in self.envs]
        if len(set(names)) != len(names):
            raise FieldError("envs", f"each environment at most once, got {names}")
        for setup in self.envs:
            setup.check()
        if not self.methods:
            raise FieldError("methods", "give at least one method")
        for m in self.methods:
            if m not in ALL_METHODS:
                raise FieldError("methods", f"unknown method {m!r} (use {', '.join(ALL_METHODS)})")
        if len(set(self.methods)) != len(self.methods):
            raise FieldError("methods", f"each method at most once, got {list(self.methods)}")
        with named("seeds"):
            check_seeds(self.seeds)
        self.train.check()
        self.control.check()
        check_seed(self.collect_seed, "collect_seed")
        check_seed(self.eval_seed, "eval_seed")

    def settings(self) -> dict[str, Any]:
        """What the experiment computes (``config.json``; run control left out)."""
        data = asdict(self)
        data.pop("control")
        return jsonable(data)


PRESETS: tuple[str, ...] = ("tiny", "reduced", "full")


def run_name(method: str, seed: int) -> str:
    """``<method>-seed<s>``: the run directory and evaluation file name."""
    return f"{method}-seed{seed}"


def run_env(root: Path, setup: EnvSetup, config: Fig7aConfig) -> dict[str, Any]:
    """All stages of one environment; returns {method: aggregate}."""
    env_dir = root / setup.env
    store = env_dir / "data.h5"
    control = config.control
    collect_stage(store, setup.env, setup.episodes, setup.steps, config.collect_seed, control)
    for method in config.methods:
        if method != TASK_AGNOSTIC:
            relabel_stage(
                store,
                setup.tasks,
                method,
                method,
                temperature=setup.temperature,
                candidates=setup.candidates,
            )
    runs: dict[Path, Path] = {}
    jobs = []
    for method in config.methods:
        for seed in config.seeds:
            run = env_dir / "runs" / run_name(method, seed)
            out = env_dir / "eval" / f"{run_name(method, seed)}.json"
            if not out.exists():
                labels = None if method == TASK_AGNOSTIC else method
                jobs.append(
                    TrainJob(store, run, labels, seed, setup.train or config.train, control)
                )
            runs[run] = out
    train_runs(jobs, control.workers, control.progress)
    evaluate_stage(
        setup.env, runs, setup.eval_episodes, setup.eval_steps, config.eval_seed, control
    )
    return {
        method: aggregate([env_dir / "eval" / f"{run_name(method, s)}.json" for s in config.seeds])
        for method in config.methods
    }


def run_fig7a(root: str | Path, config: Fig7aConfig) -> dict[str, Any]:
    """Run (or continue) Fig. 7a under ``root``; returns the whole ``results.json``."""
    root = Path(root)
    claim_root(root, "fig7a", config.settings())
    table: dict[str, Any] = {}
    for setup in config.envs:
        table[setup.env] = run_env(root, setup, config)
    return update_results(root, "fig7a", table)
