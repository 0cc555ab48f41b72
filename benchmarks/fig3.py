"""The paper's Fig. 3: relabeling with inverse RL stitches crossing trajectories.

Tabular soft Q-learning on a gridworld whose data are straight trajectories that cross
(hipi_offline/experiments/gridworld.py): HIPI (the inverse-RL posterior, exact partition
function) against HER (final, future), random relabeling and none, several seeds.

    python benchmarks/fig3.py --preset reduced            # about a minute on 2 cores
    python benchmarks/fig3.py --preset full --out runs/fig3

Prints a markdown table (success rate of the greedy policy over the (start, goal) pairs
that the data connects, mean ± standard error over seeds; and over the pairs that need
stitching) and writes ``fig3-<preset>.json`` and ``fig3-<preset>.png`` into ``--out``
(default: this folder). Results: benchmarks/RESULTS.md, section "Fig. 3".
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from hipi_offline.configs import FieldError
from hipi_offline.errors import InputError, ResourceError, describe_os_error, one_line
from hipi_offline.experiments.gridworld import PRESETS, Fig3Config, fig3_figure, run_fig3
from hipi_offline.store.atomic import atomic_write_bytes

HERE = Path(__file__).resolve().parent

FLAGS = {
    "seeds": "--seeds",
    "rounds": "--rounds",
    "labels_per_round": "--labels-per-round",
    "temperature": "--temperature",
    "alpha": "--alpha",
    "gamma": "--gamma",
    "workers": "--workers",
}
"""Config field -> option (error messages name the option)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"error: {one_line(message)}", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--preset", default="reduced", help=", ".join(PRESETS))
    p.add_argument("--out", default=str(HERE), help="folder of the JSON and PNG")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    p.add_argument("--rounds", help="relabel-and-learn rounds")
    p.add_argument("--labels-per-round", help="goals drawn per transition and round")
    p.add_argument("--temperature", help="temperature of hipi's posterior")
    p.add_argument("--alpha", help="soft Q-learning temperature")
    p.add_argument("--gamma", help="discount, below 1")
    p.add_argument("--workers", help="processes running seeds (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _parse(flag: str, text: str, kind: type) -> Any:
    try:
        if kind is tuple:
            return tuple(int(x) for x in text.split(","))
        return kind(text)
    except ValueError:
        what = {int: "an integer", float: "a number", tuple: "comma-separated integers"}[kind]
        raise InputError(f"{flag}: expected {what}, got {text!r}") from None


def config_from(args: argparse.Namespace) -> Fig3Config:
    """The preset with the options applied; InputError naming the option."""
    config = Fig3Config.preset(args.preset)
    kinds = {"seeds": tuple, "rounds": int, "labels_per_round": int, "workers": int}
    changes = {
        name: _parse(flag, getattr(args, name), kinds.get(name, float))
        for name, flag in FLAGS.items()
        if getattr(args, name) is not None
    }
    try:
        return replace(config, progress=not args.no_progress, **changes)
    except FieldError as err:
        raise err.renamed(lambda name: FLAGS.get(name, name)) from None


def outputs(out: str, preset: str) -> tuple[Path, Path]:
    """The JSON and PNG paths, checked before anything runs: never a link, never a
    folder; the folder is a folder or does not exist yet."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out: {folder} is not a folder")
    paths = folder / f"fig3-{preset}.json", folder / f"fig3-{preset}.png"
    for path in paths:
        if path.is_symlink():
            raise InputError(f"--out: {path} is a symbolic link; remove it or choose another --out")
        if path.exists() and not path.is_file():
            raise InputError(f"--out: {path} exists and is not a file")
    return paths


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as done:  # a bad option (one error line, code 2) or --help (0)
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    try:
        config = config_from(args)
        json_path, png_path = outputs(args.out, args.preset)
        started = time.perf_counter()
        results = run_fig3(config, log=print)
        minutes = (time.perf_counter() - started) / 60
        figure = fig3_figure(results)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json_path, (json.dumps(results, indent=1) + "\n").encode())
        atomic_write_bytes(png_path, buffer.getvalue())
    except (InputError, ResourceError) as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2 if isinstance(err, InputError) else 1
    except OSError as err:
        described = describe_os_error(err)
        print(f"error: {one_line(str(described))}", file=sys.stderr)
        return 2 if isinstance(described, InputError) else 1
    load = os.getloadavg()[0]
    print(f"{args.preset}: {minutes:.2f} min, load average {load:.2f} (1 min) at the end")
    print(f"json: {json_path}")
    print(f"chart: {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
