"""Stages shared by the paper's experiments: collect, relabel, train, evaluate,
aggregate. Each stage is a plain function of (store, settings) that skips work
already on disk, so a killed experiment continues where it stopped."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hipi_offline.bc import BCConfig, train_bc
from hipi_offline.collect import CollectConfig, collect
from hipi_offline.collect.run import expert_choice, expert_label, recorded_expert
from hipi_offline.configs import nested
from hipi_offline.errors import InputError
from hipi_offline.evaluate import EvalConfig, evaluate
from hipi_offline.evaluate.report import report_json
from hipi_offline.parallel import ordered_map
from hipi_offline.progress import progress_bar
from hipi_offline.relabel import METHODS, RelabelConfig, relabel
from hipi_offline.store.atomic import atomic_write_bytes
from hipi_offline.store.store import open_store

TASK_AGNOSTIC = "task-agnostic"
ALL_METHODS: tuple[str, ...] = (*METHODS, TASK_AGNOSTIC)
"""hipi, no-partition, random, original (oracle: the commanded labels), task-agnostic."""


def check_seeds(seeds: Sequence[int], where: str = "seeds") -> None:
    """A non-empty tuple of distinct integers."""
    if not seeds:
        raise InputError(f"{where}: give at least one seed")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise InputError(f"{where}: expected integers, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"{where}: seeds must be distinct, got {list(seeds)}")


@dataclass(frozen=True)
class TrainSettings:
    """Behavior-cloning settings shared by every run of an experiment."""

    steps: int = 2000
    """Gradient steps per run."""
    batch_size: int = 256
    """Steps per minibatch."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the MLP."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    head: str = "gaussian"
    """gaussian (tanh-squashed) or deterministic."""
    body_frame_task: bool = False
    """Task-conditioned runs also get the task's direction in the body frame
    (``train-bc --body-frame-task``; environments that declare a body rotation)."""

    def check(self, where: str = "train") -> None:
        """InputError naming the first bad field (``<where>.<field>``): the checks of
        the :class:`BCConfig` each run is given."""
        with nested(lambda name: f"{where}.{name}"):
            BCConfig(out=".", labels="any", **asdict(self))  # every field is a BCConfig field


@dataclass(frozen=True)
class Control:
    """How an experiment runs (never what it computes): free to change on resume."""

    workers: int = 2
    """Worker processes for collection, behavior-cloning runs and evaluation."""
    threads: int = 1
    """Torch CPU threads per training run."""
    progress: bool = True
    """tqdm progress bars."""

    def check(self) -> None:
        """InputError naming the bad field: the checks of the stage configs it feeds."""
        CollectConfig(workers=self.workers)
        BCConfig(out=".", task_agnostic=True, threads=self.threads, progress=self.progress)


def collect_stage(
    store: Path, env: str, episodes: int, steps: int | None, seed: int, control: Control
) -> None:
    """Collect expert data into ``store`` unless it already holds ``episodes`` (a store
    collected with other options, such as another expert, is an error naming them)."""
    if store.exists():
        with open_store(store) as s:
            if s.num_episodes >= episodes:
                recorded = recorded_expert(env, s.attrs.get("collect_expert"))
                expected = expert_label(*expert_choice(env, ()))
                if recorded != expected:
                    raise InputError(
                        f"{store}: was collected with the expert {recorded!r}, not today's "
                        f"{expected!r}; give another --root"
                    )
                return
    store.parent.mkdir(parents=True, exist_ok=True)
    collect(
        env,
        store,
        CollectConfig(episodes=episodes, steps=steps, seed=seed, workers=control.workers),
    )


def relabel_stage(
    store: Path,
    tasks: str,
    method: str,
    name: str,
    *,
    temperature: float | None = None,
    candidates: int | None = None,
) -> bool:
    """Write label set ``name`` with ``method`` unless the store has it (label sets are
    committed atomically, so an existing one is complete). True when it ran."""
    with open_store(store) as s:
        if name in s.label_names():
            return False
    relabel(
        store,
        RelabelConfig(
            tasks=tasks,
            name=name,
            method=method,
            temperature=temperature,
            candidates=candidates,
            seed=0,
            device="cpu",
        ),
    )
    return True


def train_stage(
    store: Path, run: Path, labels: str | None, seed: int, train: TrainSettings, control: Control
) -> None:
    """Train (or resume, or find complete) one behavior-cloning run; ``labels`` None
    trains the task-agnostic baseline."""
    train_bc(
        store,
        BCConfig(
            out=run,
            labels=labels,
            task_agnostic=labels is None,
            steps=train.steps,
            batch_size=train.batch_size,
            hidden=tuple(train.hidden),
            head=train.head,
            body_frame_task=train.body_frame_task and labels is not None,
            lr=train.lr,
            warmup_steps=train.steps // 10,
            seed=seed,
            device="cpu",
            threads=control.threads,
            checkpoint_every=max(1, train.steps // 2),
            log_every=max(1, min(100, train.steps // 10)),
            resume=True,
            progress=control.progress,
        ),
    )


@dataclass(frozen=True)
class TrainJob:
    """One behavior-cloning run of an experiment (picklable, for worker processes)."""

    store: Path
    run: Path
    labels: str | None
    """Label set name; None for task-agnostic BC."""
    seed: int
    train: TrainSettings
    control: Control


def _train_job(job: TrainJob) -> Path:
    train_stage(job.store, job.run, job.labels, job.seed, job.train, job.control)
    return job.run


def train_runs(jobs: Sequence[TrainJob], workers: int, progress: bool = True) -> None:
    """Train the runs, ``workers`` at a time, each in its own process with the job's
    torch threads. Every run is seeded and uses its own threads, so the weights are
    the same whatever ``workers`` is; in parallel, one bar counts finished runs."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _train_job(job)
        return
    quiet = [replace(job, control=replace(job.control, progress=False)) for job in jobs]
    bar = progress_bar(total=len(jobs), desc="train-bc runs", unit="run", enabled=progress)
    with bar:
        for _ in ordered_map(_train_job, quiet, workers):
            bar.update()


def evaluate_stage(
    env: str,
    runs: Mapping[Path, Path],
    episodes: int,
    steps: int | None,
    seed: int,
    control: Control,
) -> None:
    """Evaluate the runs (run dir -> JSON path) whose JSON is missing, all on the same
    episodes (tasks from the prior, fixed by ``seed``), one JSON per run in the format
    of ``evaluate --json``."""
    todo = [(run, out) for run, out in runs.items() if not out.exists()]
    if not todo:
        return
    evaluation = evaluate(
        [run for run, _ in todo],
        EvalConfig(
            env=env,
            episodes=episodes,
            tasks="prior",
            steps=steps,
            seed=seed,
            workers=control.workers,
            progress=control.progress,
        ),
    )
    for (_, out), result in zip(todo, evaluation.results, strict=True):
        out.parent.mkdir(parents=True, exist_ok=True)
        document = report_json([result], evaluation.header)
        atomic_write_bytes(out, json.dumps(document, indent=1).encode())


def score(path: Path) -> tuple[float, float | None, str]:
    """(value, episode stderr, metric) of one evaluation JSON: the success rate for
    discrete tasks, else the mean return."""
    data = json.loads(path.read_text())
    if data.get("success_rate") is not None:
        return float(data["success_rate"]), data.get("success_stderr"), "success_rate"
    return float(data["mean_return"]), data.get("stderr"), "return"


def aggregate(paths: Sequence[Path]) -> dict[str, Any]:
    """Mean and standard error over seeds of the evaluations in ``paths`` (with one
    seed, the stderr is that evaluation's stderr over episodes)."""
    scores = [score(p) for p in paths]
    values = np.array([v for v, _, _ in scores], dtype=np.float64)
    if len(values) > 1:
        stderr: float | None = float(values.std(ddof=1) / math.sqrt(len(values)))
    else:
        stderr = scores[0][1]
    result = {
        "mean": float(values.mean()),
        "stderr": stderr,
        "per_seed": [float(v) for v in values],
        "metric": scores[0][2],
    }
    velocity = seed_velocities(paths)
    if velocity is not None:
        result["velocity_along_command"] = velocity
    return result


def seed_velocities(paths: Sequence[Path]) -> dict[str, Any] | None:
    """Mean velocity along the command over seeds (each seed's mean over its episodes;
    stderr over seeds, or over episodes with one seed); None when the evaluations do
    not report it (environments whose tasks have no direction)."""
    entries = [json.loads(p.read_text()).get("velocity_along_command") for p in paths]
    if not entries or any(not isinstance(e, dict) or e.get("mean") is None for e in entries):
        return None
    values = np.array([e["mean"] for e in entries], dtype=np.float64)
    if len(values) > 1:
        stderr = float(values.std(ddof=1) / math.sqrt(len(values)))
    else:
        stderr = entries[0].get("stderr")
    return {"mean": float(values.mean()), "stderr": stderr, "per_seed": values.tolist()}


def jsonable(value: Any) -> Any:
    """Tuples as lists, recursively (what ``config.json`` compares against)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when there is none; InputError when damaged."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(
            f"{path}: not a readable JSON file; remove it or use another --root"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def claim_root(root: Path, key: str, settings: dict[str, Any]) -> None:
    """Record ``settings`` under ``key`` in ``<root>/config.json``, or check that they
    match what is recorded there (a root holds one experiment of each kind)."""
    path = root / "config.json"
    config = read_json(path)
    recorded = config.get(key)
    if recorded is not None and recorded != settings:
        keys = set(recorded) | set(settings)
        diff = sorted(k for k in keys if recorded.get(k) != settings.get(k))
        raise InputError(
            f"--root: {root} holds a {key} experiment with other settings ({', '.join(diff)}); "
            "use another --root to run these"
        )
    if recorded is None:
        root.mkdir(parents=True, exist_ok=True)
        write_json(path, {**config, key: settings})


def update_results(root: Path, key: str, value: Any) -> dict[str, Any]:
    """Set ``results[key]`` in ``<root>/results.json`` (other keys are kept)."""
    path = root / "results.json"
    results = read_json(path)
    results[key] = value
    write_json(path, results)
    return results
