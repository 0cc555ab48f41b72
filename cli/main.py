"""The ``hipi-offline`` command line: parses options and calls the library."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from hipi_offline.errors import InputError, ResourceError, describe_os_error, one_line

app = typer.Typer(
    help="Hindsight inference for policy improvement on offline trajectory data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
T = TypeVar("T")


def _progress(enabled: bool) -> None:
    """``--no-progress``: hide every bar of this process and of its workers."""
    if not enabled:
        os.environ["TQDM_DISABLE"] = "1"


def _fail(err: BaseException, code: int) -> typer.Exit:
    typer.secho(f"error: {one_line(str(err), 500)}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _run(action: Callable[[], T]) -> T:
    """Run a library call; a user-input error becomes one red line and exit code 2,
    an environment failure (disk full, read-only, out of memory) one line and 1."""
    try:
        return action()
    except InputError as err:
        raise _fail(err, 2) from None
    except ResourceError as err:
        raise _fail(err, 1) from None
    except OSError as err:
        known = describe_os_error(err)
        raise _fail(known, 2 if isinstance(known, InputError) else 1) from None
    except MemoryError:
        raise _fail(
            ResourceError("out of memory; use a smaller dataset, batch or candidate count"), 1
        ) from None
    except KeyboardInterrupt:
        typer.secho("interrupted; nothing was committed", fg=typer.colors.RED, err=True)
        raise typer.Exit(130) from None


@app.command("make-synthetic")
def make_synthetic(
    out: Annotated[Path, typer.Argument(help="Store to write (.h5/.hdf5 or .zarr).")],
    episodes: Annotated[int, typer.Option(help="Number of episodes.")] = 200,
    steps: Annotated[int, typer.Option(help="Steps per episode.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    compression: Annotated[str, typer.Option(help="none, fast or small.")] = "none",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Generate the built-in synthetic runner dataset (hidden target speeds)."""
    _progress(progress)
    from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store

    config = SyntheticConfig(episodes=episodes, steps=steps, seed=seed, compression=compression)
    path = _run(lambda: make_synthetic_store(out, config, overwrite=overwrite))
    typer.echo(f"wrote {episodes} episodes x {steps} steps to {path}")


@app.command()
def collect(
    env: Annotated[str, typer.Argument(help="Environment: cheetah, quadruped or desk.")],
    out: Annotated[Path, typer.Option(help="Store to write or continue (.h5/.hdf5 or .zarr).")],
    episodes: Annotated[int, typer.Option(help="Episodes the store should hold.")] = 100,
    steps: Annotated[int | None, typer.Option(help="Steps per episode [env default].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of tasks, initial states and noise.")] = 0,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    windows: Annotated[int, typer.Option(help="desk: windows per play stream.")] = 10,
    stream_out: Annotated[
        Path | None,
        typer.Option(help="desk: also store each whole play stream here (one episode each)."),
    ] = None,
    expert: Annotated[
        list[str] | None,
        typer.Option(
            help="The expert's name (quadruped: trot, the default, or mppi) and its "
            "options NAME=VALUE, repeatable: --expert mppi --expert samples=32."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Collect expert episodes (commanded tasks in episodes/task; no rewards stored)."""
    _progress(progress)
    from hipi_offline.collect import CollectConfig
    from hipi_offline.collect import collect as run_collect

    config = CollectConfig(
        episodes=episodes,
        steps=steps,
        seed=seed,
        workers=workers,
        windows=windows,
        stream_out=stream_out,
        expert=tuple(expert or ()),
    )
    summary = _run(lambda: run_collect(env, out, config))
    for line in summary.lines():
        typer.echo(line)


@app.command()
def relabel(
    store: Annotated[Path, typer.Argument(help="Trajectory store (.h5/.hdf5 or .zarr).")],
    tasks: Annotated[str, typer.Option(help="Task spec YAML path or built-in name.")],
    name: Annotated[str | None, typer.Option(help="Label-set name [default: method]")] = None,
    method: Annotated[str, typer.Option(help="hipi, no-partition, random or original.")] = "hipi",
    temperature: Annotated[float | None, typer.Option(help="Override alpha.")] = None,
    candidates: Annotated[int | None, typer.Option(help="Override K.")] = None,
    top_k: Annotated[str, typer.Option("--top-k", help="Stored top-k, or 'all'.")] = "32",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    chunk_steps: Annotated[int, typer.Option(help="Rows per streamed chunk.")] = 65536,
    seed: Annotated[int, typer.Option(help="Seed of the candidate draws.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing label set.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Infer each episode's posterior over tasks (HIPI) and store it as a label set."""
    _progress(progress)
    from hipi_offline.relabel import RelabelConfig
    from hipi_offline.relabel import relabel as run_relabel

    def parse_top_k() -> int | str:
        if top_k == "all":
            return "all"
        if not top_k.isdigit():
            raise InputError(f"--top-k: expected a positive integer or 'all', got {top_k!r}")
        return int(top_k)

    def action() -> object:
        config = RelabelConfig(
            tasks=tasks,
            name=name,
            method=method,
            temperature=temperature,
            candidates=candidates,
            top_k=parse_top_k(),
            device=device,
            chunk_steps=chunk_steps,
            seed=seed,
            overwrite=overwrite,
        )
        return run_relabel(store, config)

    summary = _run(action)
    for line in summary.lines():  # type: ignore[attr-defined]
        typer.echo(line)


@app.command()
def inspect(
    store: Annotated[Path, typer.Argument(help="Trajectory store (.h5/.hdf5 or .zarr).")],
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Show a store's fields, episodes and label sets (entropy, task coverage)."""
    _progress(progress)
    from hipi_offline.store.describe import describe_store

    description = _run(lambda: describe_store(store))
    for line in description.lines():
        typer.echo(line)


@app.command("train-bc")
def train_bc(
    store: Annotated[Path, typer.Argument(help="Trajectory store (.h5/.hdf5 or .zarr).")],
    out: Annotated[Path, typer.Option(help="Run directory (config, metrics, checkpoints).")],
    labels: Annotated[
        str | None, typer.Option(help="Label set: hipi, no-partition, random, original, ...")
    ] = None,
    task_agnostic: Annotated[
        bool, typer.Option(help="No task input (the baseline); needs no labels.")
    ] = False,
    steps: Annotated[int, typer.Option(help="Gradient steps.")] = 100_000,
    batch_size: Annotated[int, typer.Option(help="Steps per minibatch.")] = 256,
    hidden: Annotated[str, typer.Option(help="MLP layer sizes, e.g. 256,256,256.")] = "256,256,256",
    activation: Annotated[str, typer.Option(help="relu, gelu, silu or tanh.")] = "relu",
    head: Annotated[str, typer.Option(help="gaussian (tanh-squashed) or deterministic.")] = (
        "gaussian"
    ),
    task_embedding: Annotated[
        int, typer.Option(help="Discrete tasks: learned embedding size (0: one-hot as is).")
    ] = 0,
    body_frame_task: Annotated[
        bool,
        typer.Option(
            help="Also give the policy the task's direction in the body frame "
            "(environments whose observation holds the body's rotation: quadruped)."
        ),
    ] = False,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 3e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-4,
    schedule: Annotated[str, typer.Option(help="cosine, linear or constant.")] = "cosine",
    warmup_steps: Annotated[int, typer.Option(help="Linear warmup steps.")] = 1000,
    grad_clip: Annotated[float, typer.Option(help="Gradient-norm clip (0: off).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of weights, batches and task draws.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads (0: torch default).")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 10_000,
    keep_checkpoints: Annotated[int, typer.Option(help="Keep the last N (0: all).")] = 0,
    log_every: Annotated[int, typer.Option(help="Steps per metrics row.")] = 100,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a task-conditioned behavior-cloning policy on a label set (paper Alg. 3)."""
    from hipi_offline.bc import BCConfig, parse_hidden
    from hipi_offline.bc import train_bc as run_train_bc

    def action() -> object:
        config = BCConfig(
            out=out,
            labels=labels,
            task_agnostic=task_agnostic,
            steps=steps,
            batch_size=batch_size,
            hidden=parse_hidden(hidden),
            activation=activation,
            head=head,
            task_embedding=task_embedding,
            body_frame_task=body_frame_task,
            lr=lr,
            weight_decay=weight_decay,
            schedule=schedule,
            warmup_steps=warmup_steps,
            grad_clip=grad_clip,
            seed=seed,
            device=device,
            threads=threads,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
            log_every=log_every,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
        )
        return run_train_bc(store, config)

    summary = _run(action)
    for line in summary.lines():  # type: ignore[attr-defined]
        typer.echo(line)


@app.command()
def evaluate(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories or checkpoints (one per method).")
    ],
    env: Annotated[str | None, typer.Option(help="Environment [the run's store's].")] = None,
    episodes: Annotated[
        int | None, typer.Option(help="Episodes per run [20, or one per listed task].")
    ] = None,
    tasks: Annotated[str, typer.Option(help="prior, or a YAML/JSON/.npy file of tasks.")] = (
        "prior"
    ),
    steps: Annotated[int | None, typer.Option(help="Steps per episode [env default].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of tasks, initial states and noise.")] = 0,
    sample: Annotated[bool, typer.Option(help="Sample actions (default: the mean).")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    video: Annotated[
        Path | None, typer.Option(help="Render episode 0 of each run: .gif, .mp4 or .png strip.")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    save_rollouts: Annotated[
        Path | None, typer.Option(help="Folder: write each run's rollouts as a store.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Roll trained policies out on the same episodes and compare their task returns."""
    from hipi_offline.evaluate import EvalConfig
    from hipi_offline.evaluate import evaluate as run_evaluate

    config = EvalConfig(
        env=env,
        episodes=episodes,
        tasks=tasks,
        steps=steps,
        seed=seed,
        sample=sample,
        workers=workers,
        video=video,
        json_path=json_path,
        save_rollouts=save_rollouts,
        progress=progress,
    )
    evaluation = _run(lambda: run_evaluate(runs, config))
    for line in evaluation.lines():
        typer.echo(line)


@app.command("import")
def import_cmd(
    fmt: Annotated[str, typer.Argument(help="Source format: minari, d4rl or robomimic.")],
    src: Annotated[Path, typer.Argument(help="Source dataset (file or Minari dataset folder).")],
    dest: Annotated[Path, typer.Argument(help="Store to write (.h5/.hdf5 or .zarr).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Convert a Minari, D4RL or robomimic dataset into a hipi-offline store."""
    _progress(progress)
    from hipi_offline.io import import_dataset

    path = _run(lambda: import_dataset(fmt, src, dest, overwrite=overwrite))
    typer.echo(f"imported {fmt} dataset {src} into {path}")


@app.command("export")
def export_cmd(
    fmt: Annotated[str, typer.Argument(help="Target format: minari.")],
    store: Annotated[Path, typer.Argument(help="Trajectory store to export.")],
    dest: Annotated[Path, typer.Argument(help="Dataset folder to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Write a store (with its label sets as episode metadata) in another format."""
    _progress(progress)
    from hipi_offline.io import export_minari

    def action() -> Path:
        if fmt != "minari":
            raise InputError(f"format: only 'minari' can be exported, got {fmt!r}")
        return export_minari(store, dest, overwrite=overwrite)

    path = _run(action)
    typer.echo(f"exported {store} to {path}")


def _click_errors() -> Any:
    """The click exceptions module that Typer uses (vendored by recent Typer)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older Typer on upstream click
        from click import exceptions
    return exceptions


def main() -> None:
    """Console-script entry point: usage errors (a mistyped option value, a missing
    argument) are one line and exit code 2, like every other input error."""
    errors = _click_errors()
    try:
        code = app(standalone_mode=False)
    except errors.NoArgsIsHelpError:
        raise SystemExit(2) from None  # the help text was printed
    except errors.UsageError as err:
        command = err.ctx.command_path if err.ctx is not None else "hipi-offline"
        message = " ".join(err.format_message().split())
        typer.secho(f"error: {command}: {message}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
    except typer.Abort:
        typer.secho("aborted", fg=typer.colors.RED, err=True)
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
