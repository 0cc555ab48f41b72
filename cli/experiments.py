"""``hipi-offline fig7a`` and ``fig7b``: the paper's experiments from the command line.

A preset (tiny, reduced or full) gives every setting; each option replaces one field
of it: the experiment's own (``--seeds``), its behavior-cloning settings
(``--train-steps``) and how it runs (``--workers``, ``--threads``, ``--no-progress``).
The options are made from the config dataclasses, like every other command's.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.options import (
    FLAGS,
    Flag,
    add_command,
    config_options,
    flag_name,
    overridden,
    override_options,
    resolve,
)


def _fixed(figure: str) -> list[inspect.Parameter]:
    """The options every run of ``figure`` has besides the config's fields."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    fixed = [
        inspect.Parameter(
            "root",
            keyword,
            default=Path("runs/fig7"),
            annotation=Annotated[Path, typer.Option(help="Experiment folder.")],
        ),
        inspect.Parameter(
            "preset",
            keyword,
            default="reduced",
            annotation=Annotated[str, typer.Option(help="tiny, reduced or full.")],
        ),
    ]
    if figure == "fig7a":
        envs = typer.Option(
            help="Comma-separated subset of the preset's environments (default: all)."
        )
        fixed.append(
            inspect.Parameter("envs", keyword, default=None, annotation=Annotated[str | None, envs])
        )
        env = typer.Option(
            help="ENV.FIELD=VALUE: one environment's setting (episodes, steps, eval_episodes, "
            "eval_steps, temperature, candidates, or train.FIELD for its own behavior-cloning "
            "settings; none: the default), e.g. cheetah.episodes=300 or "
            "quadruped.train.steps=20000. Repeatable."
        )
        fixed.append(
            inspect.Parameter(
                "env", keyword, default=None, annotation=Annotated[list[str] | None, env]
            )
        )
    return fixed


def register(app: typer.Typer, run: Callable[[Callable[[], Any]], Any]) -> None:
    """Add ``fig7a`` and ``fig7b`` to ``app`` (a :func:`~cli.options.lazy_app`); ``run``
    turns errors into one line."""
    for figure, cls, summary in (
        ("fig7a", "hipi_offline.experiments.fig7:Fig7aConfig", "Fig. 7a: relabeling methods "
         "(and task-agnostic BC) compared by the return of the policies cloned."),
        ("fig7b", "hipi_offline.experiments.bias:Fig7bConfig", "Fig. 7b: HIPI with and without "
         "the partition function under a biased reward."),
    ):  # fmt: skip
        add_command(
            app,
            figure,
            lambda figure=figure, cls=cls, summary=summary: _command(run, figure, cls, summary),
        )


def _command(
    run: Callable[[Callable[[], Any]], Any], figure: str, cls_path: str, summary: str
) -> Callable[..., None]:
    """The command function of ``figure`` (imports the experiments)."""
    from hipi_offline.bc.config import parse_hidden
    from hipi_offline.experiments.common import Control, TrainSettings

    cls = resolve(cls_path)
    hidden = {"hidden": Flag(type=str, parse=parse_hidden)}  # --train-hidden 128,128
    own = override_options(cls, skip=("envs",))
    train = override_options(TrainSettings, prefix="train_", flags=hidden)
    control = config_options(Control)
    flags = {o.field: flag_name(o.parameter.name) for o in own}
    flags |= {f"train.{o.field}": flag_name(o.parameter.name) for o in train}
    flags |= {o.field: flag_name(o.field) for o in control}
    parameters = _fixed(figure) + [o.parameter for o in (*own, *train, *control)]

    def command(**values: Any) -> None:
        from hipi_offline.experiments import run_fig7a, run_fig7b
        from hipi_offline.experiments.report import (
            fig7a_table,
            fig7b_table,
            plot_fig7a,
            plot_fig7b,
        )

        if not values["progress"]:  # every bar: the relabel engine's and the workers' too
            os.environ["TQDM_DISABLE"] = "1"
        root = Path(values["root"])
        runner, table, plot = {
            "fig7a": (run_fig7a, fig7a_table, plot_fig7a),
            "fig7b": (run_fig7b, fig7b_table, plot_fig7b),
        }[figure]

        def action() -> tuple[list[str], Path]:
            config = cls.preset(values["preset"])  # type: ignore[attr-defined]
            config = overridden(config, own, values)
            changed_train = overridden(config.train, train, values)
            changed_control = {o.field: values[o.field] for o in control}
            config = config.with_control(**changed_control)
            if changed_train is not config.train:
                config = replace(config, train=changed_train)
            if values.get("env"):
                config = config.with_env_settings(values["env"])
            if values.get("envs"):
                config = config.only_envs(values["envs"].split(","))
            results = runner(root, config)
            return table(results), plot(results, root / f"{figure}.png")

        started = time.perf_counter()
        token = FLAGS.set(flags)
        try:
            lines, png = run(action)
        finally:
            FLAGS.reset(token)
        for line in lines:
            typer.echo(line)
        minutes = (time.perf_counter() - started) / 60
        load = os.getloadavg()[0]
        typer.echo(
            f"{values['preset']}: {minutes:.1f} min, load average {load:.2f} (1 min) at the end"
        )
        typer.echo(f"chart: {png}")

    command.__name__ = figure
    command.__doc__ = summary
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command
