"""Relabeling benchmark: HIPI relabel() against the I/O floor and a per-trajectory numpy loop.

One run measures, on a synthetic store of N episodes x T steps (default 10k x 1000 =
10M steps, generated once into benchmarks/_data/ as .h5 and .zarr and reused):

* the wall time of a full ``relabel()`` call (read, returns, posterior, label-set
  write) for the ``linear8`` family (K=1024, 8 features in one field, on a second
  store of N=4,000 x T), the ``linear`` family (K=1024, features speed + height) and
  the ``target`` family (K=256, feature speed, ctrl_cost 0.05, so actions are read
  too), on HDF5 and Zarr, on each requested device (and, with ``--before REV``, on
  the engine of another git revision too, in the same run);
* the I/O floor: merely reading the same step fields from the same store with
  ``store.iter_chunks(fields, chunk_steps)`` and summing every array, right before
  and right after the relabel in the same process (best of ``--repeats`` each);
* the per-trajectory numpy loop people write today (Generalized Hindsight's
  relabeler style: for each trajectory, for each candidate, compute that
  candidate's rewards with numpy and sum them) on a subset of trajectories,
  extrapolated linearly to all N trajectories;
* peak RSS of each relabel in its own fresh (spawned) process, and a sweep that
  varies the steps per episode T with N and K fixed (memory should not grow with
  the number of steps: it is bounded by one chunk plus the N x K returns matrix).

Run ``python benchmarks/relabel_bench.py`` (full, ~10 min on 2 cores) or
``--small`` (1M steps, ~1 min); ``--devices cpu,cuda`` adds GPU rows when CUDA exists.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the benchmark output

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
SPEED, HEIGHT, ACTIONS = "steps/infos/speed", "steps/infos/height", "steps/actions"
SEED = 0

FAMILIES: dict[str, dict[str, Any]] = {
    "linear": {
        "k": 1024,
        "fields": [SPEED, HEIGHT],
        "yaml": (
            "# benchmark: linear rewards psi . (speed, height)\n"
            "family: linear\n"
            "features: [steps/infos/speed, steps/infos/height]\n"
            "prior: {uniform: {low: [-1.0, 0.0], high: [1.0, 1.0]}}\n"
            "candidates: 1024\n"
            "temperature: 1.0\n"
        ),
    },
    "target": {
        "k": 256,
        "fields": [SPEED, ACTIONS],
        "yaml": (
            "# benchmark: r = -|speed - psi| - 0.05 ||a||^2\n"
            "family: target\n"
            "feature: steps/infos/speed\n"
            "ctrl_cost: 0.05\n"
            "prior: {uniform: {low: [0.0], high: [3.0]}}\n"
            "candidates: 256\n"
            "temperature: 1.0\n"
        ),
    },
}
FEAT = "steps/infos/feat"
FAMILIES["linear8"] = {
    "k": 1024,
    "fields": [FEAT],
    "store": "feat",
    "yaml": (
        "# benchmark: linear rewards psi . phi, phi = 8 float32 features in one field\n"
        "family: linear\n"
        "features: [steps/infos/feat]\n"
        f"prior: {{uniform: {{low: {[-1.0] * 8}, high: {[1.0] * 8}}}}}\n"
        "candidates: 1024\n"
        "temperature: 1.0\n"
    ),
}
BACKENDS = {"hdf5": ".h5", "zarr": ".zarr"}
GOALS = {"linear8": 2.0, "linear": 3.0, "target": 3.0}  # relabel / read floor on the CPU
FEAT_EPISODES = 4000  # the F = 8 row: N = 4,000 episodes of T steps


# --------------------------------------------------------------------------- helpers
def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process: VmHWM on Linux (reset by exec, so a
    spawned child reports its own peak; ru_maxrss would carry the parent's over
    fork + exec), else ru_maxrss (KiB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def mib(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def machine_info() -> dict[str, Any]:
    import h5py
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 0
    try:
        import zarr

        zarr_version = zarr.__version__
    except ImportError:
        zarr_version = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(ram / 2**30, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "h5py": h5py.__version__,
        "zarr": zarr_version,
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------- data
def store_path(data_dir: Path, episodes: int, steps: int, backend: str, feat: bool = False) -> Path:
    name = "synthfeat" if feat else "synth"
    return data_dir / f"{name}_N{episodes}_T{steps}{BACKENDS[backend]}"


def feature_store(path: Path, episodes: int, steps: int) -> None:
    """The synthetic runner's episodes plus ``steps/infos/feat``: 8 float32 columns
    (speed, height, observations 0-5) in one field, the issue-14 workload."""
    from hipi_offline.store import create_store
    from hipi_offline.store.synthetic import synthetic_episodes

    rng = np.random.default_rng(SEED)
    with create_store(
        path, env="synthetic-runner", overwrite=True,  # replaces only a hipi-offline store
        metadata={"generator": "hipi_offline.store.synthetic+feat", "seed": SEED},
    ) as store:
        batch = max(1, min(episodes, 500_000 // steps))
        for first in range(0, episodes, batch):
            count = min(batch, episodes - first)
            fields, per_episode = synthetic_episodes(count, steps, rng)
            fields["infos/feat"] = np.concatenate(
                [fields["infos/speed"][:, None], fields["infos/height"][:, None],
                 fields["observations"][:, :6]], axis=1,
            )
            store.append_episodes(fields, [steps] * count, per_episode)


def store_matches(path: Path, episodes: int, steps: int, feat: bool = False) -> bool:
    from hipi_offline.errors import InputError
    from hipi_offline.store import open_store

    if not path.exists():
        return False
    try:
        with open_store(path) as store:
            attrs = store.attrs
            return (
                store.num_episodes == episodes
                and store.num_steps == episodes * steps
                and attrs.get("generator")
                == "hipi_offline.store.synthetic" + ("+feat" if feat else "")
                and attrs.get("seed") == SEED
            )
    except (InputError, OSError, KeyError, ValueError):
        return False


def ensure_store(
    data_dir: Path, episodes: int, steps: int, backend: str, feat: bool = False
) -> tuple[Path, float]:
    """The synthetic store of this size (``feat``: with the 8-column feature field),
    generated (into a temporary name, then renamed) unless a matching one exists.
    Returns (path, seconds spent generating)."""
    from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

    path = store_path(data_dir, episodes, steps, backend, feat)
    if store_matches(path, episodes, steps, feat):
        return path, 0.0
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in (path, Path(str(path) + ".labels")):
        if stale.exists():
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    tmp = path.with_name("tmp-" + path.name)
    started = time.perf_counter()
    # the library's generator is vectorized over episodes (~1 s per 1M steps here)
    batch = max(1, min(episodes, 500_000 // steps))
    if feat:
        feature_store(tmp, episodes, steps)
    else:
        config = SyntheticConfig(episodes=episodes, steps=steps, seed=SEED, batch_episodes=batch)
        make_synthetic_store(tmp, config, overwrite=True)
    tmp.rename(path)
    if Path(str(tmp) + ".labels").exists():
        shutil.rmtree(Path(str(tmp) + ".labels"))
    seconds = time.perf_counter() - started
    print(f"  generated {path.name}: {episodes * steps:,} steps in {seconds:.1f} s", flush=True)
    return path, seconds


def size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- measurements
def read_floor(path: Path, fields: list[str], chunk_steps: int) -> float:
    """Seconds to open the store and stream the fields chunk by chunk, touching every value."""
    from hipi_offline.store import open_store

    started = time.perf_counter()
    total = 0.0
    with open_store(path) as store:
        for chunk in store.iter_chunks(fields, chunk_steps):
            for value in chunk.fields.values():
                total += float(value.sum(dtype=np.float64))
    seconds = time.perf_counter() - started
    if not np.isfinite(total):
        raise RuntimeError("read floor: non-finite sum")
    return seconds


def numpy_loop(path: Path, family: str, k: int, episodes: int) -> dict[str, Any]:
    """The per-trajectory numpy loop (Generalized Hindsight's relabeler style) on the
    first ``episodes`` trajectories: per trajectory, per candidate, rewards over the
    steps with numpy, summed. Returns its time and a check against the engine's reward."""
    import torch

    from hipi_offline.store import open_store
    from hipi_offline.tasks.spec import parse_task_spec

    spec = parse_task_spec(FAMILIES[family]["yaml"])
    candidates, _ = spec.draw_candidates(SEED, k)
    cands = candidates.astype(np.float64)
    fields = FAMILIES[family]["fields"]
    with open_store(path) as store:
        episodes = min(episodes, store.num_episodes)
        returns = np.empty((episodes, k))
        started = time.perf_counter()
        for i in range(episodes):
            traj = {name: v.astype(np.float64) for name, v in store.episode(i, fields).items()}
            for j in range(k):
                psi = cands[j]
                if family.startswith("linear"):
                    phi = np.concatenate([traj[f].reshape(len(traj[f]), -1) for f in fields], 1)
                    rewards = phi @ psi
                else:
                    rewards = -np.abs(traj[SPEED] - psi[0]) - 0.05 * np.square(
                        traj[ACTIONS]
                    ).sum(axis=1)
                returns[i, j] = rewards.sum()
        seconds = time.perf_counter() - started
        n = store.num_episodes
        # sanity check: the engine's one reward function on the first 3 trajectories
        worst = 0.0
        tasks = torch.from_numpy(cands)
        for i in range(min(3, episodes)):
            traj = {
                name: torch.from_numpy(value.astype(np.float64))
                for name, value in store.episode(i, fields).items()
            }
            ref = spec.family.reward(traj, tasks).sum(dim=0).numpy()
            worst = max(worst, float(np.max(np.abs(ref - returns[i]) / (1 + np.abs(ref)))))
    return {
        "loop_episodes": episodes,
        "loop_seconds": seconds,
        "loop_extrapolated_seconds": seconds * n / episodes,
        "loop_max_rel_diff": worst,
    }


def phase_breakdown(
    path: Path, spec_path: str, k: int, device: str, chunk_steps: int
) -> dict[str, float]:
    """Seconds of the two compute phases of relabel(), timed separately: the
    streaming returns pass (read + reduce, one pass) and the posterior over N x K
    (which, on the CPU, computes the rows of R it needs from the pass's sums)."""
    import torch

    from hipi_offline.relabel import returns as returns_module
    from hipi_offline.relabel.posterior import inverse_rl_posterior
    from hipi_offline.store import open_store
    from hipi_offline.tasks.spec import load_task_spec

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    spec = load_task_spec(spec_path)
    candidates, _ = spec.draw_candidates(SEED, k)
    # R's rows computed where the posterior needs them (CPU engines that have it), else
    # R whole from one tile
    whole_returns = getattr(returns_module, "whole_returns", None) if dev.type == "cpu" else None
    with open_store(path) as store:
        n = store.num_episodes
        sync()
        t0 = time.perf_counter()
        rows: dict[str, Any] = {}
        if whole_returns is not None:
            whole = whole_returns(
                store, spec, candidates, device=dev, chunk_steps=chunk_steps, show_progress=False
            )
            block, rows = whole.block, {"rows": whole.rows}
        else:
            (_, _, returns), = list(returns_module.returns_tiles(
                store, spec, candidates, device=dev, chunk_steps=chunk_steps, tile=k
            ))
            block = lambda a, b: returns[:, a:b]  # noqa: E731
        sync()
        t1 = time.perf_counter()
        inverse_rl_posterior(
            block, n, k, temperature=spec.temperature, log_prior=None,
            partition=True, top_k=32, tile=k, device=dev, **rows,
        )
        sync()
        t2 = time.perf_counter()
    return {"returns_pass_seconds": t1 - t0, "posterior_seconds": t2 - t1}


def use_engine(job: dict[str, Any]) -> None:
    """Import ``hipi_offline`` from the job's ``engine_path`` (a worktree of another
    revision, for the "before" rows) rather than from this checkout."""
    if not job.get("engine_path"):
        return
    sys.path.insert(0, job["engine_path"])
    import hipi_offline

    where = Path(hipi_offline.__file__).resolve()
    if not where.is_relative_to(Path(job["engine_path"]).resolve()):
        raise RuntimeError(f"hipi_offline came from {where}, not {job['engine_path']}")


def bench_config(job: dict[str, Any]) -> Any:
    """The relabel options of a row, with torch's thread count of this process (an
    engine that has ``threads`` would otherwise choose its own)."""
    import dataclasses

    import torch

    from hipi_offline.relabel import RelabelConfig

    options: dict[str, Any] = dict(
        tasks=job["spec_path"], name="bench", candidates=FAMILIES[job["family"]]["k"],
        device=job["device"], chunk_steps=job["chunk_steps"], overwrite=True, top_k=32,
    )
    known = {f.name for f in dataclasses.fields(RelabelConfig)}
    if "threads" in known:
        options["threads"] = torch.get_num_threads()
    if not job.get("prefetch", True):
        options["prefetch"] = False  # an engine without the option cannot run this row
    return RelabelConfig(**options)


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement in a fresh process (so that its peak RSS is its own)."""
    os.environ["TQDM_DISABLE"] = "1"
    use_engine(job)
    import torch

    from hipi_offline.relabel import relabel

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    path, family, device = Path(job["path"]), job["family"], job["device"]
    k, fields, chunk = FAMILIES[family]["k"], FAMILIES[family]["fields"], job["chunk_steps"]
    if device == "cuda":
        torch.zeros(1, device="cuda")  # context creation is not the relabel's cost
    result: dict[str, Any] = dict(job, torch_threads=torch.get_num_threads(), load_before=load())
    result["rss_base_bytes"] = rss_bytes()
    floors_before = [read_floor(path, fields, chunk) for _ in range(job["floor_repeats"])]
    times, summary = [], None
    for _ in range(job["relabel_repeats"]):
        config = bench_config(job)
        started = time.perf_counter()
        summary = relabel(path, config)
        times.append(time.perf_counter() - started)
    floors_after = [read_floor(path, fields, chunk) for _ in range(job["floor_repeats"])]
    result["rss_peak_bytes"] = peak_rss_bytes()
    if device == "cuda":
        result["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    assert summary is not None
    result.update(
        episodes=summary.episodes,
        steps=summary.steps,
        relabel_seconds=min(times),
        relabel_first_seconds=times[0],
        relabel_all_seconds=times,
        floor_before=floors_before,
        floor_after=floors_after,
        mean_entropy=summary.mean_entropy,
    )
    if job.get("breakdown"):
        result.update(phase_breakdown(path, job["spec_path"], k, device, chunk))
    if job.get("numpy_loop"):
        result.update(numpy_loop(path, family, k, job["numpy_loop"]))
    if job.get("profile"):
        result["profile_text"] = profile_relabel(job)
    result["load_after"] = load()
    return result


def profile_relabel(job: dict[str, Any]) -> str:
    """cProfile of one more relabel. Only the main thread is profiled: the prefetch
    thread's reads show up as GIL and lock waits in whatever the main thread runs."""
    import cProfile
    import io
    import pstats

    from hipi_offline.relabel import relabel

    config = bench_config(job)
    profiler = cProfile.Profile()
    profiler.enable()
    relabel(job["path"], config)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
    return out.getvalue()


def engine(r: dict[str, Any]) -> str:
    """``cpu (2 thr)``, ``cpu (1 thr, no prefetch)`` or ``cuda``."""
    reads = "" if r.get("prefetch", True) else ", no prefetch"
    return f"cpu ({r['torch_threads']} thr{reads})" if r["device"] == "cpu" else r["device"]


def floor_of(r: dict[str, Any]) -> float:
    floors = r["floor_before"] + r["floor_after"]
    return min(floors) if floors else float("nan")


def progress_line(r: dict[str, Any]) -> None:
    floor = floor_of(r)
    extra = ""
    if floor == floor:
        extra = f", floor {floor:.2f} s, ratio {r['relabel_seconds'] / floor:.1f}x"
    print(
        f"  {r['revision'][:6]:6s} {r['backend']:5s} {r['family']:7s} {engine(r):11s} "
        f"N={r['episodes']:,} "
        f"S={r['steps']:,}: relabel {r['relabel_seconds']:.2f} s{extra}, "
        f"peak RSS {mib(r['rss_peak_bytes'])} MiB (load {r['load_before']}->{r['load_after']})",
        flush=True,
    )


def worktree(revision: str, folder: Path) -> str:
    """A detached checkout of ``revision`` under ``folder`` (removed with it)."""
    target = folder / "engine-before"
    subprocess.run(
        ["git", "-C", str(HERE), "worktree", "add", "--detach", str(target), revision],
        check=True, capture_output=True, text=True,
    )
    return str(target)


def run_isolated(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each job in its own spawned process, one after another."""
    results = []
    ctx = mp.get_context("spawn")
    for job in jobs:
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                result = pool.submit(worker, job).result()
        except Exception as err:  # report the row as failed, keep measuring the others
            print(f"  FAILED {job['backend']} {job['family']} {job['device']} "
                  f"(threads {job['threads']}): {type(err).__name__}: {err}", flush=True)
            continue
        results.append(result)
        progress_line(result)
    return results


# --------------------------------------------------------------------------- report
def fmt_s(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:,.0f}"


def before_after(main: list[dict[str, Any]]) -> list[str]:
    """The before/after table (``--before``): each row's best relabel on both engines,
    measured in the same run, and both against the same read floor."""
    key = lambda r: (r["backend"], r["family"], engine(r))  # noqa: E731
    before = {key(r): r for r in main if r["engine_path"]}
    if not before:
        return []
    lines = [
        "### Before / after (same run, same stores, rows interleaved by engine)",
        "",
        "| backend | family | K | engine | before s | after s | speed-up "
        "| read floor s | before / floor | after / floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in main:
        old = before.get(key(r))
        if r["engine_path"] or old is None:
            continue
        floor = min(floor_of(r), floor_of(old))
        a, b = r["relabel_seconds"], old["relabel_seconds"]
        lines.append(
            f"| {r['backend']} | {r['family']} | {FAMILIES[r['family']]['k']} | {engine(r)} "
            f"| {b:.3f} | {a:.3f} | {b / a:.1f}x | {floor:.3f} | {b / floor:.1f}x "
            f"| **{a / floor:.1f}x** |"
        )
    return [*lines, ""]


def report(
    info: dict[str, Any],
    args: argparse.Namespace,
    main: list[dict[str, Any]],
    memory: list[dict[str, Any]],
    generation: dict[str, float],
    sizes: dict[str, int],
    command: str,
) -> str:
    n_steps = args.episodes * args.steps
    lines = [
        "## Relabel benchmark",
        "",
        f"- command: `{command}`",
        f"- date: {info['date']}",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, "
        f"GPU: {info['gpu']}",
        f"- software: Python {info['python']}, numpy {info['numpy']}, torch {info['torch']} "
        f"({info['torch_threads']} threads by default), h5py {info['h5py']}, zarr {info['zarr']}",
        f"- store: synthetic, N={args.episodes:,} episodes x T={args.steps:,} steps = "
        f"{n_steps:,} steps, float32, uncompressed, chunk_steps={args.chunk_steps}; "
        + ", ".join(f"{name} {mib(size)} MiB" for name, size in sizes.items())
        + " (page cache warm: the floor is a memory-speed read, not a disk read)",
        f"- relabel = best of {args.repeats} full `relabel()` calls (read + returns + posterior "
        "+ label-set write with fsync; the first call in brackets), each (backend, family, "
        f"engine) in its own spawned process; floor = best of {args.repeats} reads before and "
        f"{args.repeats} after, same process; returns pass and posterior: the two compute "
        "phases timed alone once; load = 1-min load average before -> after (other processes "
        "share the machine)",
        "",
        "| revision | backend | family | K | engine | relabel s (first) | steps/s | read floor s "
        "| relabel / floor | returns pass s | posterior s | numpy loop s, extrapolated "
        "| speed-up vs loop | peak RSS MiB | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in main:
        floor = floor_of(r)
        loop = r.get("loop_extrapolated_seconds")
        loop_s = f"{fmt_s(loop)} (from {r['loop_episodes']} eps)" if loop else "-"
        speed = f"{loop / r['relabel_seconds']:,.0f}x" if loop else "-"
        gpu = f" (GPU {mib(r['gpu_peak_bytes'])})" if "gpu_peak_bytes" in r else ""
        lines.append(
            f"| {r['revision']} | {r['backend']} | {r['family']} | {FAMILIES[r['family']]['k']} "
            f"| {engine(r)} | {r['relabel_seconds']:.2f} ({r['relabel_first_seconds']:.2f}) "
            f"| {r['steps'] / r['relabel_seconds'] / 1e6:.1f} M "
            f"| {floor:.2f} | **{r['relabel_seconds'] / floor:.1f}x** "
            f"| {r.get('returns_pass_seconds', float('nan')):.2f} "
            f"| {r.get('posterior_seconds', float('nan')):.2f} "
            f"| {loop_s} | {speed} | {mib(r['rss_peak_bytes'])}{gpu} "
            f"| {r['load_before']}->{r['load_after']} |"
        )
    loops = [r for r in main if r.get("loop_seconds")]
    if loops:
        worst = max(r["loop_max_rel_diff"] for r in loops)
        lines += [
            "",
            "The numpy loop column is **extrapolated**: the loop ran on the first "
            f"{loops[0]['loop_episodes']} trajectories (each read from the store and cast to "
            "float64; for each of the K candidates: rewards over the steps, summed) and its time "
            f"is scaled by N / {loops[0]['loop_episodes']}. It computes only the returns matrix "
            "(no posterior, no write), so it flatters the loop. Its returns match the engine's "
            f"reward function to a relative {worst:.1e}. speed-up = extrapolated loop / relabel.",
        ]
    lines.append("")
    if memory:
        lines += [
            "### Peak memory against the number of steps",
            "",
            "Each row: one `relabel()` (HDF5, CPU) in a fresh spawned process; RSS after "
            "imports (base) and peak (VmHWM). N x K x 8 B = one float64 returns matrix.",
            "",
            "| family | K | N | T | steps | N x K x 8 B MiB | base RSS MiB | peak RSS MiB "
            "| peak - base MiB | relabel s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in memory:
            k = FAMILIES[r["family"]]["k"]
            lines.append(
                f"| {r['family']} | {k} | {r['episodes']:,} | {r['steps'] // r['episodes']:,} "
                f"| {r['steps']:,} | {mib(r['episodes'] * k * 8)} | {mib(r['rss_base_bytes'])} "
                f"| {mib(r['rss_peak_bytes'])} | {mib(r['rss_peak_bytes'] - r['rss_base_bytes'])} "
                f"| {r['relabel_seconds']:.2f} |"
            )
        lines.append("")
    lines += before_after(main)
    lines += ["### Goals", ""]
    for family, goal in GOALS.items():
        for r in main:
            if r["family"] != family or r["device"] != "cpu" or r["engine_path"]:
                continue
            if not r.get("prefetch", True):
                continue
            ratio = r["relabel_seconds"] / floor_of(r)
            verdict = "met" if ratio <= goal else "NOT met"
            lines.append(
                f"- {family} on {r['backend']}, {engine(r)}: relabel / read floor = "
                f"{ratio:.1f}x (goal <= {goal}x): **{verdict}**"
            )
    if memory:
        fixed_n = max(r["episodes"] for r in memory)
        for family in FAMILIES:
            rows = [r for r in memory if r["family"] == family and r["episodes"] == fixed_n]
            if len(rows) < 2:
                continue
            deltas = [r["rss_peak_bytes"] - r["rss_base_bytes"] for r in rows]
            steps = [r["steps"] for r in rows]
            spread = max(deltas) - min(deltas)
            streamed = max(steps) * sum(
                4 * (6 if f == ACTIONS else 1) for f in FAMILIES[family]["fields"]
            )
            # independent: the spread is small next to the peak and to the data streamed
            verdict = "met" if spread <= max(0.1 * max(deltas), 64 * 2**20) else "NOT met"
            lines.append(
                f"- {family}: peak RSS over base for {min(steps):,} .. {max(steps):,} steps "
                f"(N={fixed_n:,}) spans {mib(min(deltas))} .. {mib(max(deltas))} MiB (spread "
                f"{mib(spread)} MiB; {mib(streamed)} MiB of fields streamed at the largest "
                f"size): memory independent of the number of steps **{verdict}**"
            )
    lines.append("")
    if generation:
        lines.append(
            "Store generation (only when missing): "
            + ", ".join(f"{name} {sec:.1f} s" for name, sec in generation.items())
        )
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="quick run: N=1000 x T=1000 (1M steps), memory sweep at N=1000")
    parser.add_argument("--episodes", type=int, help="N (default 10000; --small 1000)")
    parser.add_argument("--steps", type=int, default=1000, help="T, steps per episode")
    parser.add_argument("--memory-steps", default="100,300,1000",
                        help="T values of the memory sweep at N fixed ('' to skip the sweep)")
    parser.add_argument("--memory-episodes", type=int,
                        help="extra memory row: this N at the largest T (default N/10)")
    parser.add_argument("--devices", default="auto",
                        help="comma list of cpu,cuda; auto = cpu, plus cuda when available")
    parser.add_argument("--threads", default="0,1",
                        help="CPU rows per torch thread count, comma list (0: torch's default)")
    parser.add_argument("--backends", default="hdf5,zarr", help="comma list of hdf5,zarr")
    parser.add_argument("--families", default="linear8,linear,target",
                        help="comma list of " + ",".join(FAMILIES))
    parser.add_argument("--chunk-steps", type=int, default=None,
                        help="rows per chunk (default: the engine's default, 65536)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed relabel calls, and floor reads before and after (best kept)")
    parser.add_argument("--loop-episodes", type=int, default=None,
                        help="trajectories the numpy loop runs on (default 200; --small 100)")
    parser.add_argument("--data-dir", type=Path, default=HERE / "_data",
                        help="where the synthetic stores are generated once and reused")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile one CPU relabel per row and print the top functions")
    parser.add_argument("--before", metavar="REV",
                        help="also run every relabel row on the engine of git revision REV "
                             "(checked out into a temporary worktree): before/after table")
    parser.add_argument("--no-prefetch-rows", dest="prefetch_rows", action="store_false",
                        help="skip the 1-thread CPU rows that read without the prefetch thread")
    parser.add_argument("--feat-episodes", type=int, default=FEAT_EPISODES,
                        help="N of the linear8 row (8 features in one field, T = --steps)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--markdown", type=Path, help="write the markdown report here")
    args = parser.parse_args(argv)
    if args.episodes is None:
        args.episodes = 1000 if args.small else 10_000
    if args.loop_episodes is None:
        args.loop_episodes = 100 if args.small else 200
    if args.chunk_steps is None:
        from hipi_offline.store.store import DEFAULT_CHUNK_ROWS

        args.chunk_steps = DEFAULT_CHUNK_ROWS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/relabel_bench.py", *given])
    import torch

    info = machine_info()
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if devices == ["auto"]:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        print("note: --devices names cuda but CUDA is not available; skipping the GPU rows")
        devices = [d for d in devices if d != "cuda"]
    threads = [int(t) for t in str(args.threads).split(",") if t.strip()] or [0]
    engines = [(d, t) for d in devices for t in (threads if d == "cpu" else [0])]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "zarr" in backends:
        try:
            import zarr  # noqa: F401
        except ImportError:
            print("note: zarr is not installed; skipping the Zarr rows")
            backends.remove("zarr")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    print(f"# {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB, GPU {info['gpu']}; "
          f"load {load()}", flush=True)

    # ---- data (generated once, reused while the size matches)
    print("data:", flush=True)
    generation: dict[str, float] = {}
    sizes: dict[str, int] = {}
    paths: dict[tuple[str, str], Path] = {}
    for backend in backends:
        for variant in sorted({FAMILIES[f].get("store", "runner") for f in families}):
            feat = variant == "feat"
            episodes = args.feat_episodes if feat else args.episodes
            path, seconds = ensure_store(args.data_dir, episodes, args.steps, backend, feat)
            paths[backend, variant], sizes[path.name] = path, size_on_disk(path)
            if seconds:
                generation[path.name] = seconds
    memory_sizes: list[tuple[int, int]] = []
    if args.memory_steps:
        memory_sizes = [(args.episodes, t) for t in sorted({int(x) for x in
                                                             args.memory_steps.split(",")})]
        small_n = args.memory_episodes or max(1, args.episodes // 10)
        memory_sizes.append((small_n, memory_sizes[-1][1]))
    memory_paths = {}
    for n, t in memory_sizes:
        path, seconds = ensure_store(args.data_dir, n, t, "hdf5")
        memory_paths[(n, t)] = path
        if seconds:
            generation[path.name] = seconds
    if generation:
        os.sync()  # finish the writeback before timing (label-set writes fsync)
        time.sleep(1.0)

    spec_dir = Path(tempfile.mkdtemp(prefix="hipi-bench-"))
    spec_paths = {}
    for family in families:
        spec_paths[family] = str(spec_dir / f"{family}.yaml")
        Path(spec_paths[family]).write_text(FAMILIES[family]["yaml"])
    try:
        print("relabel vs read floor (each row in a fresh process):", flush=True)
        revisions = [("after", None)]
        if args.before:
            revisions.insert(0, (f"before ({args.before})", worktree(args.before, spec_dir)))
        jobs = []
        for backend in backends:
            for family in families:
                for index, (device, count) in enumerate(engines):
                    for tag, engine_path in revisions:
                        jobs.append(dict(
                            kind="main", backend=backend, family=family, device=device,
                            threads=count, spec_path=spec_paths[family],
                            path=str(paths[backend, FAMILIES[family].get("store", "runner")]),
                            revision=tag, engine_path=engine_path,
                            chunk_steps=args.chunk_steps, floor_repeats=args.repeats,
                            relabel_repeats=args.repeats, breakdown=True,
                            numpy_loop=args.loop_episodes if index == 0 and not engine_path else 0,
                            profile=args.profile and device == "cpu",
                        ))
        if args.prefetch_rows and "cpu" in devices:  # the read/compute overlap, measured
            for backend in backends:
                for family in families:
                    jobs.append(dict(
                        kind="main", backend=backend, family=family, device="cpu", threads=1,
                        spec_path=spec_paths[family], prefetch=False,
                        path=str(paths[backend, FAMILIES[family].get("store", "runner")]),
                        revision="after", engine_path=None, chunk_steps=args.chunk_steps,
                        floor_repeats=args.repeats, relabel_repeats=args.repeats,
                        breakdown=False, numpy_loop=0, profile=False,
                    ))
        main_results = run_isolated(jobs)
        memory_results: list[dict[str, Any]] = []
        if memory_sizes:
            print("peak memory sweep (HDF5, CPU, each in a fresh process):", flush=True)
            memory_results = run_isolated([
                dict(
                    kind="memory", backend="hdf5", family=family, device="cpu",
                    revision="after", engine_path=None,
                    threads=threads[0], path=str(memory_paths[size]),
                    spec_path=spec_paths[family], chunk_steps=args.chunk_steps,
                    floor_repeats=0, relabel_repeats=1,
                )
                for family in families
                if FAMILIES[family].get("store", "runner") == "runner"
                for size in memory_sizes
            ])
    finally:
        if args.before:
            subprocess.run(["git", "-C", str(HERE), "worktree", "prune"], check=False)
        shutil.rmtree(spec_dir, ignore_errors=True)

    for r in main_results:
        if "profile_text" in r:
            print(f"\n### cProfile: {r['backend']} {r['family']} ({engine(r)})\n")
            print("```\n" + r.pop("profile_text").strip() + "\n```")
    text = report(info, args, main_results, memory_results, generation, sizes, command)
    print()
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(
            {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
             "main": main_results, "memory": memory_results},
            indent=2, default=str,
        ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
