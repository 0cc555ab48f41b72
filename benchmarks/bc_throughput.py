"""BC training throughput: the train-bc pipeline against a bare torch loop and d3rlpy's BC.

On a synthetic store (default 200 episodes x 500 steps, observations 17-d and actions
6-d like cheetah, generated once into benchmarks/_data/ and relabeled with the
``synthetic-velocity`` target family, K=256, top-k 32), one process times, in
interleaved repeats, the same network (MLP, default 3 x 256, gaussian head), batch
size, number of steps and thread count:

* **pipeline**: ``train_bc`` end to end (store read, statistics, posterior
  resampling of every step's task every iteration, normalization, LR schedule,
  gradient clipping, metrics rows, final checkpoint); the training loop (final
  checkpoint included) and the set-up are reported separately;
* **floor**: a bare torch loop on pre-made tensors (observations, actions and one
  frozen task per step already on the device; a random index per step; the same
  ``BCNetwork`` and loss, AdamW and gradient clipping; no schedule, logging or
  checkpoint);
* **d3rlpy**: ``d3rlpy.algos.BCConfig`` on the same data (observation and task vector
  concatenated, as d3rlpy has no task conditioning), a ``VectorEncoderFactory`` of the
  same hidden sizes, AdamW with the same clipping, the same batch size; steps/s of its
  ``fit`` loop with its set-up excluded. Optional: skipped with a note when d3rlpy is
  not importable.

Run ``python benchmarks/bc_throughput.py`` (5-10 minutes on 2 cores); see
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import io
import json
import logging
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the benchmark output
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_machine, when imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_machine import cpu_description, load_average, package_versions  # noqa: E402

from hipi_offline.bc import BCConfig, BCNetwork, parse_hidden, train_bc  # noqa: E402
from hipi_offline.bc.data import (  # noqa: E402
    TaskSampler,
    encode_candidates,
    load_working_set,
)
from hipi_offline.device import resolve_device  # noqa: E402
from hipi_offline.errors import InputError  # noqa: E402
from hipi_offline.relabel import RelabelConfig, relabel  # noqa: E402
from hipi_offline.store import open_store  # noqa: E402
from hipi_offline.store.store import TrajectoryStore  # noqa: E402
from hipi_offline.store.synthetic import synthetic_episodes  # noqa: E402

HERE = Path(__file__).resolve().parent
LABELS = "hipi"
TASKS = "synthetic-velocity"
GOAL_FLOOR = 0.85
"""The pipeline should reach at least this fraction of the floor's samples/s."""
GENERATOR = "benchmarks/bc_throughput.py"
METHODS = ("pipeline", "floor", "d3rlpy")


# ---------------------------------------------------------------- data
def make_store(
    path: Path, episodes: int, steps: int, obs_dim: int, act_dim: int, seed: int
) -> Path:
    """The synthetic runner store with observations padded by noise to ``obs_dim``
    and ``act_dim`` actions, labeled by HIPI; reused when its parameters match."""
    params = {
        "generator": GENERATOR,
        "episodes": episodes,
        "steps": steps,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "seed": seed,
    }
    if path.exists():
        with contextlib.suppress(Exception), open_store(path) as store:
            if json.loads(str(store.attrs.get("bench", "{}"))) == params and LABELS in (
                store.label_names()
            ):
                return path
    rng = np.random.default_rng(seed)
    fields, episode_fields = synthetic_episodes(episodes, steps, rng)
    total = episodes * steps
    obs = fields["observations"]
    if obs_dim != obs.shape[1]:
        extra = rng.standard_normal((total, max(obs_dim - obs.shape[1], 0))).astype(np.float32)
        obs = np.concatenate([obs, extra], axis=1)[:, :obs_dim]
    act = fields["actions"]
    if act_dim != act.shape[1]:
        extra = np.clip(0.3 * rng.standard_normal((total, act_dim)), -1, 1).astype(np.float32)
        act = np.concatenate([act, extra], axis=1)[:, :act_dim]
    fields["observations"], fields["actions"] = np.ascontiguousarray(obs), act
    with TrajectoryStore.create(
        path, env="synthetic-runner", metadata={"bench": json.dumps(params)}, overwrite=True
    ) as store:
        store.append_episodes(fields, [steps] * episodes, episode_fields)
    relabel(path, RelabelConfig(tasks=TASKS, device="cpu", overwrite=True, seed=seed))
    return path


# ---------------------------------------------------------------- the three trainers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Floor:
    """The bare loop: pre-made device tensors, the same BCNetwork, loss, AdamW, clipping."""

    def __init__(self, store_path: Path, args: argparse.Namespace, device: torch.device) -> None:
        with open_store(store_path) as store:
            data = load_working_set(store)
            labels = store.read_labels(LABELS)
            candidates, task_mean, task_std = encode_candidates(labels)
            sampler = TaskSampler(labels)
        gen = torch.Generator().manual_seed(args.seed)
        _, task = sampler.sample(data.step_episode.long(), gen)  # one frozen draw per step
        self.norm = data.normalization(task_mean, task_std)
        self.obs = data.observations.to(device)
        self.act = data.actions.to(device)
        self.task = task.to(device)
        self.task_dim = int(candidates.shape[1])
        self.device = device
        self.args = args

    def train(self, steps: int) -> dict[str, float]:
        """Train a fresh network for ``steps`` steps; the loop's wall time."""
        args, device = self.args, self.device
        torch.manual_seed(args.seed)
        net = BCNetwork(
            self.obs.shape[1], self.act.shape[1], self.task_dim, args.hidden, head=args.head
        )
        net.set_normalization(self.norm)
        net.to(device).train()
        fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
        optim = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=1e-4, **fast)
        params = list(net.parameters())
        n = self.obs.shape[0]
        sync(device)
        start, cpu = time.perf_counter(), time.thread_time()
        for _ in range(steps):
            idx = torch.randint(n, (args.batch_size,), device=device)
            obs, act = self.obs.index_select(0, idx), self.act.index_select(0, idx)
            loss = net.loss(obs, act, self.task.index_select(0, idx))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            optim.step()
        final = float(loss)
        sync(device)
        return {
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.thread_time() - cpu,
            "setup": 0.0,
            "final_loss": final,
        }


def run_pipeline(
    store_path: Path, args: argparse.Namespace, steps: int, out: Path
) -> dict[str, float]:
    """One fresh ``train_bc`` run; loop time (final checkpoint included) and set-up."""
    config = BCConfig(
        out=out,
        labels=LABELS,
        steps=steps,
        batch_size=args.batch_size,
        hidden=args.hidden,
        head=args.head,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        log_every=args.log_every,
        checkpoint_every=max(steps, 1),
        warmup_steps=min(1000, steps),
        progress=False,
        overwrite=True,
    )
    start = time.perf_counter()
    summary = train_bc(store_path, config)
    total = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": summary.seconds,
        "cpu_seconds": summary.cpu_seconds,
        "setup": total - summary.seconds,
        "final_loss": float(summary.final_loss or float("nan")),
    }


class D3rlpyBC:
    """d3rlpy's BC on [observation, task] with one frozen task per step."""

    def __init__(self, floor: Floor, args: argparse.Namespace, device: torch.device) -> None:
        import d3rlpy
        import structlog

        # d3rlpy logs every fit's parameters and progress through structlog: keep warnings only
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        self.d3rlpy = d3rlpy
        obs = torch.cat([floor.obs, floor.task], dim=1).cpu().numpy()
        act = floor.act.cpu().numpy()
        n = len(obs)
        terminals = np.zeros(n, np.float32)
        timeouts = np.zeros(n, np.float32)
        timeouts[args.episode_steps - 1 :: args.episode_steps] = 1.0
        self.dataset = d3rlpy.dataset.MDPDataset(
            observations=obs,
            actions=act,
            rewards=np.zeros(n, np.float32),
            terminals=terminals,
            timeouts=timeouts,
            action_space=d3rlpy.constants.ActionSpace.CONTINUOUS,
        )
        self.device_arg: Any = "cuda:0" if device.type == "cuda" else False
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="bc_bench_d3rlpy_"))

    def train(self, steps: int) -> dict[str, float]:
        d3 = self.d3rlpy
        args = self.args
        config = d3.algos.BCConfig(
            batch_size=args.batch_size,
            learning_rate=3e-4,
            policy_type="stochastic" if args.head == "gaussian" else "deterministic",
            encoder_factory=d3.models.VectorEncoderFactory(
                hidden_units=list(args.hidden), activation="relu"
            ),
            optim_factory=d3.optimizers.AdamWFactory(weight_decay=1e-4, clip_grad_norm=1.0),
            observation_scaler=d3.preprocessing.StandardObservationScaler(),
            action_scaler=d3.preprocessing.MinMaxActionScaler(),
        )
        algo = config.create(device=self.device_arg)
        stamps: list[tuple[float, float]] = []
        device = resolve_device(args.device)

        def callback(_algo: Any, _epoch: int, _step: int) -> None:
            if _step == 1 or _step == steps:
                sync(device)
                stamps.append((time.perf_counter(), time.thread_time()))

        start = time.perf_counter()
        algo.fit(
            self.dataset,
            n_steps=steps,
            n_steps_per_epoch=steps,
            show_progress=False,
            logger_adapter=d3.logging.FileAdapterFactory(root_dir=str(self.root)),
            callback=callback,
        )
        total = time.perf_counter() - start
        # the loop between the end of step 1 and the end of the last step, scaled to all steps
        scale = steps / max(steps - 1, 1)
        loop = (stamps[-1][0] - stamps[0][0]) * scale
        cpu = (stamps[-1][1] - stamps[0][1]) * scale
        nan = float("nan")
        return {"seconds": loop, "cpu_seconds": cpu, "setup": total - loop, "final_loss": nan}

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------- report
def machine(device: torch.device) -> str:
    text = cpu_description()
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def summarize(runs: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    """Median / best samples/s over repeats, by wall time and by thread CPU time."""
    rates = [samples / r["seconds"] for r in runs]
    cpu_rates = [samples / r["cpu_seconds"] for r in runs]
    return {
        "samples_per_s_median": statistics.median(rates),
        "samples_per_s_best": max(rates),
        "samples_per_s_all": rates,
        "cpu_samples_per_s_median": statistics.median(cpu_rates),
        "cpu_samples_per_s_all": cpu_rates,
        "setup_s_median": statistics.median(r["setup"] for r in runs),
        "loop_s_median": statistics.median(r["seconds"] for r in runs),
        "load": [r["load"] for r in runs],
    }


def ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per-repeat samples/s ratios (repeats run back to back), by wall and CPU time."""
    found: dict[str, dict[str, Any]] = {}
    for num, den in (("pipeline", "floor"), ("d3rlpy", "pipeline")):
        if runs.get(num) and runs.get(den):
            for key, clock in (("", "seconds"), ("cpu ", "cpu_seconds")):
                per = [b[clock] / a[clock] for a, b in zip(runs[num], runs[den], strict=True)]
                found[f"{key}{num}/{den}"] = {"median": statistics.median(per), "all": per}
    return found


def _fmt(values: list[float], spec: str) -> str:
    return ", ".join(format(x, spec) for x in values)


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"BC throughput, {cfg['episodes']} x {cfg['episode_steps']} steps "
        f"(obs {cfg['obs_dim']}, act {cfg['act_dim']}, task 1-d, K=256 top-32), MLP "
        f"{'x'.join(str(h) for h in cfg['hidden'])} {cfg['head']}, batch {cfg['batch_size']}, "
        f"{cfg['steps']} steps, threads {cfg['threads'] or 'default'} "
        f"(torch uses {result['torch_threads']}), device {result['device']}, "
        f"{cfg['repeats']} interleaved repeats, {result['date']}",
        "",
        f"Machine: {result['machine']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
        f"Command: `{result['command']}`",
        "",
        "| method | samples/s (median) | all repeats | CPU-time samples/s (median) "
        "| loop s (median) | set-up s (median) | load avg before each |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for method in METHODS:
        s = result["methods"].get(method)
        if s is None:
            continue
        lines.append(
            f"| {method} | {s['samples_per_s_median']:,.0f} | "
            f"{_fmt(s['samples_per_s_all'], ',.0f')} | {s['cpu_samples_per_s_median']:,.0f} | "
            f"{s['loop_s_median']:.2f} | {s['setup_s_median']:.2f} | {_fmt(s['load'], '.2f')} |"
        )
    lines.append("")
    goals = {
        "pipeline/floor": (lambda r: r >= GOAL_FLOOR, f"goal >= {GOAL_FLOOR}"),
        "d3rlpy/pipeline": (lambda r: r < 1.0, "goal < 1, pipeline faster"),
    }
    for name, r in result["ratios"].items():
        clock = "thread CPU time" if name.startswith("cpu ") else "wall time"
        ok, goal = goals[name.removeprefix("cpu ")]
        lines.append(
            f"- {name.removeprefix('cpu ')} samples/s by {clock}: median of per-repeat ratios "
            f"{r['median']:.3f} (range {min(r['all']):.3f}-{max(r['all']):.3f}); {goal}: "
            f"{'met' if ok(r['median']) else 'NOT met'}"
        )
    for note in result["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--steps", type=int, default=2000, help="gradient steps per timed run")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=parse_hidden, default=(256, 256, 256), help="e.g. 256,256,256")
    p.add_argument("--head", choices=("gaussian", "deterministic"), default="gaussian")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads for every method (0: default)"
    )
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats per method")
    p.add_argument("--warmup-steps", type=int, default=100, help="untimed first run per method")
    p.add_argument("--log-every", type=int, default=100, help="pipeline metrics row interval")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--episode-steps", type=int, default=500)
    p.add_argument("--obs-dim", type=int, default=17)
    p.add_argument("--act-dim", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS), help="subset of " + ",".join(METHODS))
    p.add_argument("--data-dir", type=Path, default=HERE / "_data")
    p.add_argument("--profile", type=Path, help="also cProfile one pipeline run; stats to PATH")
    p.add_argument("--markdown", type=Path, help="write the report here too")
    p.add_argument("--json", type=Path, help="write the raw figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.device = device.type
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    notes: list[str] = []
    if device.type == "cpu":
        notes.append("CPU only: no GPU figures in this run (pass --device cuda on a GPU machine).")
    if device.type != "cpu" or args.threads != 1:
        notes.append(
            "CPU-time figures count the main thread only: meaningful with --threads 1 on the CPU"
        )

    args.data_dir.mkdir(parents=True, exist_ok=True)
    name = (
        f"bc_E{args.episodes}_T{args.episode_steps}_O{args.obs_dim}_A{args.act_dim}_s{args.seed}.h5"
    )
    t0 = time.perf_counter()
    store_path = make_store(
        args.data_dir / name,
        args.episodes,
        args.episode_steps,
        args.obs_dim,
        args.act_dim,
        args.seed,
    )
    print(f"store {store_path} ready in {time.perf_counter() - t0:.1f} s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bc_bench_"))
    floor = Floor(store_path, args, device)
    trainers: dict[str, Callable[[int], dict[str, float]]] = {}
    counter = iter(range(10**9))
    if "pipeline" in methods:
        trainers["pipeline"] = lambda steps: run_pipeline(
            store_path, args, steps, work / f"run{next(counter)}"
        )
    if "floor" in methods:
        trainers["floor"] = floor.train
    d3: D3rlpyBC | None = None
    if "d3rlpy" in methods:
        try:
            d3 = D3rlpyBC(floor, args, device)
            trainers["d3rlpy"] = d3.train
        except ImportError as err:
            notes.append(
                f"d3rlpy skipped: not importable ({err}); install it with "
                "`pip install -c constraints.txt d3rlpy` (see benchmarks/README.md)"
            )
        except Exception as err:  # noqa: BLE001 - a broken optional dependency is reported
            notes.append(f"d3rlpy skipped: it failed to set up ({type(err).__name__}: {err})")
    try:
        for method, train in list(trainers.items()):
            if args.warmup_steps:
                try:
                    train(args.warmup_steps)
                except Exception as err:  # noqa: BLE001
                    if method != "d3rlpy":
                        raise
                    notes.append(f"d3rlpy skipped: it failed ({type(err).__name__}: {err})")
                    del trainers[method]
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in trainers}
        order = list(trainers)
        for repeat in range(args.repeats):
            rotated = order[repeat % len(order) :] + order[: repeat % len(order)]
            for method in rotated:
                load = load_average()
                result = trainers[method](args.steps)
                result["load"] = load
                runs[method].append(result)
                rate = args.steps * args.batch_size / result["seconds"]
                print(
                    f"repeat {repeat + 1}/{args.repeats} {method:8s} {rate:10,.0f} samples/s "
                    f"(loop {result['seconds']:.2f} s, set-up {result['setup']:.2f} s, "
                    f"load {load:.2f})",
                    flush=True,
                )
        if args.profile and "pipeline" in trainers:
            prof = cProfile.Profile()
            prof.enable()
            trainers["pipeline"](args.steps)
            prof.disable()
            prof.dump_stats(str(args.profile))
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
            print(text.getvalue())
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if d3 is not None:
            d3.close()

    samples = args.steps * args.batch_size
    result: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(device),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions("torch", "hipi-offline", "d3rlpy", "numpy"),
        "config": {
            "episodes": args.episodes,
            "episode_steps": args.episode_steps,
            "obs_dim": args.obs_dim,
            "act_dim": args.act_dim,
            "hidden": list(args.hidden),
            "head": args.head,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "threads": args.threads,
            "repeats": args.repeats,
        },
        "methods": {m: summarize(r, samples) for m, r in runs.items() if r},
        "runs": runs,
        "ratios": ratios(runs),
        "notes": notes,
    }
    report = markdown(result)
    print()
    print(report)
    if args.markdown:
        args.markdown.write_text(report)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
