"""The ``hipi-offline`` command line: parses options and calls the library."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from cli import experiments
from cli.options import FLAGS, Flag, config_command, lazy_app
from hipi_offline.configs import FieldError
from hipi_offline.errors import InputError, ResourceError, describe_os_error, one_line

if TYPE_CHECKING:
    from hipi_offline.bc.config import BCConfig
    from hipi_offline.collect.run import CollectConfig
    from hipi_offline.evaluate.run import EvalConfig
    from hipi_offline.relabel.run import RelabelConfig
    from hipi_offline.report import ReportConfig
    from hipi_offline.rl.config import RLConfig
    from hipi_offline.store.synthetic import SyntheticConfig

app = lazy_app(
    help="Hindsight inference for policy improvement on offline trajectory data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
T = TypeVar("T")
_URL = ", or a .zarr URL such as s3://bucket/x.zarr"


def _progress(enabled: bool) -> None:
    """``--no-progress``: hide every bar of this process and of its workers."""
    if not enabled:
        os.environ["TQDM_DISABLE"] = "1"


@app.callback()
def _root(
    storage_options: Annotated[
        str | None,
        typer.Option(
            "--storage-options",
            metavar="JSON",
            help="Options of the file system of stores at URLs (s3://bucket/x.zarr, gs://...), "
            'a JSON object passed to fsspec, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' '
            "(also read from HIPI_STORAGE_OPTIONS). Without it the endpoint and credentials "
            "come from the usual variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_ENDPOINT_URL, AWS_DEFAULT_REGION). Given before the command.",
        ),
    ] = None,
) -> None:
    """Hindsight inference for policy improvement on offline trajectory data."""
    if storage_options is None:
        return
    from hipi_offline.store.location import STORAGE_OPTIONS_ENV, parse_storage_options

    options = _run(lambda: parse_storage_options(storage_options, "--storage-options"))
    # the environment carries them to the library and to the workers it starts
    os.environ[STORAGE_OPTIONS_ENV] = json.dumps(options)


def _fail(err: BaseException, code: int) -> typer.Exit:
    typer.secho(f"error: {one_line(str(err), 500)}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _run(action: Callable[[], T]) -> T:
    """Run a library call; a user-input error becomes one red line and exit code 2,
    an environment failure (disk full, read-only, out of memory) one line and 1."""
    try:
        return action()
    except FieldError as err:  # a config field: spelled as the flag the user typed
        flags = FLAGS.get()
        raise _fail(err.renamed(lambda field: flags.get(field, field)), 2) from None
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
        typer.secho(
            "interrupted; nothing half-written was kept (a training run keeps its "
            "checkpoints: the same command continues it)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(130) from None


@config_command(
    app, "make-synthetic", "hipi_offline.store.synthetic:SyntheticConfig", on_progress=_progress
)
def make_synthetic(
    config: Callable[[], SyntheticConfig],
    out: Annotated[str, typer.Argument(help=f"Store to write (.h5/.hdf5 or .zarr{_URL}).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
) -> None:
    """Generate the built-in synthetic runner dataset (hidden target speeds)."""
    from hipi_offline.store.synthetic import make_synthetic_store

    made = _run(config)
    path = _run(lambda: make_synthetic_store(out, made, overwrite=overwrite))
    typer.echo(f"wrote {made.episodes} episodes x {made.steps} steps to {path}")


@config_command(app, "collect", "hipi_offline.collect.run:CollectConfig", on_progress=_progress)
def collect(
    config: Callable[[], CollectConfig],
    env: Annotated[str, typer.Argument(help="Environment: cheetah, quadruped or desk.")],
    out: Annotated[
        str, typer.Option(help=f"Store to write or continue (.h5/.hdf5 or .zarr{_URL}).")
    ],
) -> None:
    """Collect expert episodes (commanded tasks in episodes/task; no rewards stored)."""
    from hipi_offline.collect import collect as run_collect

    summary = _run(lambda: run_collect(env, out, config()))
    for line in summary.lines():
        typer.echo(line)


def _hidden(text: str) -> tuple[int, ...]:
    """``--hidden 256,256,256`` (:func:`hipi_offline.bc.config.parse_hidden`)."""
    from hipi_offline.bc.config import parse_hidden

    return parse_hidden(text)


def _top_k(text: str) -> int | str:
    """``--top-k``: a number, or ``all``; anything else is left for the config to refuse."""
    return int(text) if text.isascii() and text.isdigit() else text


@config_command(
    app,
    "relabel",
    "hipi_offline.relabel.run:RelabelConfig",
    flags={"top_k": Flag(type=str, default="32", parse=_top_k)},
    on_progress=_progress,
)
def relabel(
    config: Callable[[], RelabelConfig],
    store: Annotated[str, typer.Argument(help=f"Trajectory store (.h5/.hdf5 or .zarr{_URL}).")],
) -> None:
    """Infer each episode's posterior over tasks (HIPI) and store it as a label set."""
    from hipi_offline.relabel import relabel as run_relabel

    summary = _run(lambda: run_relabel(store, config()))
    for line in summary.lines():
        typer.echo(line)


@config_command(app, "inspect", on_progress=_progress)
def inspect(
    store: Annotated[str, typer.Argument(help=f"Trajectory store (.h5/.hdf5 or .zarr{_URL}).")],
) -> None:
    """Show a store's fields, episodes and label sets (entropy, task coverage)."""
    from hipi_offline.store.describe import describe_store

    description = _run(lambda: describe_store(store))
    for line in description.lines():
        typer.echo(line)


@config_command(app, "report", "hipi_offline.report:ReportConfig", on_progress=_progress)
def report(
    config: Callable[[], ReportConfig],
    store: Annotated[str, typer.Argument(help=f"Trajectory store (.h5/.hdf5 or .zarr{_URL}).")],
) -> None:
    """Write one HTML page of what a label set teaches: task coverage, label entropy, examples."""
    from hipi_offline.report import make_report

    summary = _run(lambda: make_report(store, config()))
    for line in summary.lines():
        typer.echo(line)


@config_command(
    app,
    "train-bc",
    "hipi_offline.bc.config:BCConfig",
    flags={"hidden": Flag(type=str, default="256,256,256", parse=_hidden)},
)
def train_bc(
    config: Callable[[], BCConfig],
    store: Annotated[str, typer.Argument(help=f"Trajectory store (.h5/.hdf5 or .zarr{_URL}).")],
) -> None:
    """Train a task-conditioned behavior-cloning policy on a label set (paper Alg. 3)."""
    from hipi_offline.bc import train_bc as run_train_bc

    summary = _run(lambda: run_train_bc(store, config()))
    for line in summary.lines():
        typer.echo(line)


@config_command(
    app,
    "train-rl",
    "hipi_offline.rl.config:RLConfig",
    flags={"hidden": Flag(type=str, default="256,256", parse=_hidden)},
)
def train_rl(
    config: Callable[[], RLConfig],
    env: Annotated[str, typer.Argument(help="Environment to step, e.g. pointmass.")],
) -> None:
    """Train a task-conditioned SAC policy online, relabeling every minibatch (paper Alg. 2)."""
    from hipi_offline.rl.train import train_rl as run_train_rl

    summary = _run(lambda: run_train_rl(env, config()))
    for line in summary.lines():
        typer.echo(line)


@config_command(
    app,
    "evaluate",
    "hipi_offline.evaluate.run:EvalConfig",
    flags={"json_path": Flag(name="--json")},
)
def evaluate(
    config: Callable[[], EvalConfig],
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories or checkpoints (one per method).")
    ],
) -> None:
    """Roll trained policies out on the same episodes and compare their task returns."""
    from hipi_offline.evaluate import evaluate as run_evaluate

    evaluation = _run(lambda: run_evaluate(runs, config()))
    for line in evaluation.lines():
        typer.echo(line)


@config_command(app, "import", on_progress=_progress)
def import_cmd(
    fmt: Annotated[
        str, typer.Argument(help="Source format: minari, d4rl, robomimic, lerobot or ogbench.")
    ],
    src: Annotated[
        Path,
        typer.Argument(
            help="Source dataset: a file (D4RL/robomimic .hdf5, OGBench .npz), a Minari "
            "dataset folder, or a LeRobot v3 dataset folder (with meta/info.json)."
        ),
    ],
    dest: Annotated[str, typer.Argument(help=f"Store to write (.h5/.hdf5 or .zarr{_URL}).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
    split: Annotated[
        str | None,
        typer.Option(
            help="ogbench only: train (FILE.npz as given) or val (its FILE-val.npz); "
            "by default the split the file name says."
        ),
    ] = None,
) -> None:
    """Convert a Minari, D4RL, robomimic, LeRobot v3 or OGBench dataset into a store."""
    from hipi_offline.io import import_dataset

    path = _run(lambda: import_dataset(fmt, src, dest, overwrite=overwrite, split=split))
    typer.echo(f"imported {fmt} dataset {src} into {path}")


@config_command(app, "export", on_progress=_progress)
def export_cmd(
    fmt: Annotated[str, typer.Argument(help="Target format: minari.")],
    store: Annotated[str, typer.Argument(help=f"Trajectory store to export{_URL}.")],
    dest: Annotated[Path, typer.Argument(help="Dataset folder to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Write a store (with its label sets as episode metadata) in another format."""
    from hipi_offline.io import export_minari

    def action() -> Path:
        if fmt != "minari":
            raise InputError(f"format: only 'minari' can be exported, got {fmt!r}")
        return export_minari(store, dest, overwrite=overwrite)

    path = _run(action)
    typer.echo(f"exported {store} to {path}")


experiments.register(app, _run)


def _click_errors() -> Any:
    """The click exceptions module that Typer uses (vendored by recent Typer)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older Typer on upstream click
        from click import exceptions
    return exceptions


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: usage errors (a mistyped option value, a missing
    argument) are one line and exit code 2, like every other input error."""
    errors = _click_errors()
    try:
        code = app(args=argv, standalone_mode=False)
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


def exit_code(argv: list[str]) -> int:
    """Run the command line ``argv`` (without the program name) in this process and
    return its exit code (``benchmarks/fig7a.py`` is ``hipi-offline fig7a``)."""
    try:
        main(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    return 0


if __name__ == "__main__":
    main()
