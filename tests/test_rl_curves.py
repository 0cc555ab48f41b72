"""Learning curves of Fig. 5 / Fig. 6 (hipi_offline/experiments/rl_curves.py and
benchmarks/fig5.py, fig6.py): the binning of metrics.csv and the mean ± standard error
over seeds against a direct numpy computation on hand-made CSVs, the checks of the
grid's config and command line (one ``error:`` line, nothing written), and the tiny
presets end to end (slow: a few dozen train-rl runs)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from hipi_offline.configs import FieldError
from hipi_offline.errors import InputError
from hipi_offline.experiments.rl_curves import (
    FIG5_PRESETS,
    FIG6_PRESETS,
    TINY_TRAIN,
    CurvesConfig,
    Panel,
    aggregate_curves,
    binned,
    curves_figure,
    save_png,
)
from hipi_offline.rl.train import METRICS
from hipi_offline.tasks.spec import load_task_spec

REPO = Path(__file__).resolve().parents[1]


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_metrics(path: Path, steps: np.ndarray, values: dict[str, np.ndarray]) -> Path:
    """A metrics.csv in train-rl's format: every column, the given ones filled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS, lineterminator="\n")
        writer.writeheader()
        for i, step in enumerate(steps):
            row = {name: "nan" for name in METRICS}
            row.update(step=int(step), episode=i)
            row.update({name: repr(float(v[i])) for name, v in values.items()})
            writer.writerow(row)
    return path


# ---------------------------------------------------------------- aggregation
@pytest.mark.parametrize("episode_steps", [50, 30, 7])
def test_curves_are_bin_means_then_mean_and_stderr_over_seeds(
    tmp_path: Path, episode_steps: int
) -> None:
    """Each seed's bin value is the mean of its episodes ending in (b*W, (b+1)*W];
    the curve is the float64 mean over seeds and std(ddof=1)/sqrt(n)."""
    rng = np.random.default_rng(episode_steps)
    total, width, seeds = 400, 100, 3
    steps = np.arange(episode_steps, total + episode_steps, episode_steps)
    steps = steps[: int(np.ceil(total / episode_steps))]  # the run ends at or after 400
    paths, expected_bins = [], []
    for seed in range(seeds):
        values = rng.normal(size=len(steps))
        paths.append(
            write_metrics(tmp_path / f"s{seed}" / "metrics.csv", steps, {"return": values})
        )
        row = []
        for b in range(math.ceil(total / width)):
            inside = [
                v for s, v in zip(steps, values, strict=True) if b * width < s <= (b + 1) * width
            ]
            row.append(sum(inside) / len(inside))
        expected_bins.append(row)
    table = np.array(expected_bins, np.float64)
    curve = aggregate_curves(paths, "return", width, total)
    assert curve["steps"] == [100, 200, 300, 400]
    np.testing.assert_allclose(curve["per_seed"], table, rtol=1e-12)
    np.testing.assert_allclose(curve["mean"], table.mean(axis=0), rtol=1e-12)
    stderr = np.sqrt(((table - table.mean(axis=0)) ** 2).sum(axis=0) / (seeds - 1) / seeds)
    np.testing.assert_allclose(curve["stderr"], stderr, rtol=1e-12)
    assert curve["final"]["mean"] == pytest.approx(table[:, -1].mean(), rel=1e-12)
    assert curve["final"]["stderr"] == pytest.approx(stderr[-1], rel=1e-12)
    assert curve["final"]["per_seed"] == pytest.approx(table[:, -1].tolist(), rel=1e-12)


def test_one_seed_has_no_stderr(tmp_path: Path) -> None:
    steps = np.array([50, 100, 150, 200])
    path = write_metrics(tmp_path / "metrics.csv", steps, {"success": np.array([0, 1, 1, 0.0])})
    curve = aggregate_curves([path], "success", 100, 200)
    assert curve["mean"] == [0.5, 0.5] and curve["stderr"] == [None, None]
    assert curve["final"] == {"mean": 0.5, "stderr": None, "per_seed": [0.5]}


def test_binned_leaves_empty_bins_nan() -> None:
    out = binned(np.array([10.0, 20.0, 310.0]), np.array([1.0, 3.0, 5.0]), 100, 4)
    assert out[0] == 2.0 and out[3] == 5.0 and np.isnan(out[1:3]).all()


def test_an_unfinished_run_or_a_missing_metric_is_an_error(tmp_path: Path) -> None:
    short = write_metrics(
        tmp_path / "a" / "metrics.csv", np.array([50, 100]), {"return": np.ones(2)}
    )
    with pytest.raises(InputError, match=r"a/metrics.csv: no finite return in steps \(100, 200\]"):
        aggregate_curves([short], "return", 100, 300)
    # final_distance is NaN for a family without goals: refused, not averaged as NaN
    with pytest.raises(InputError, match="no finite final_distance"):
        aggregate_curves([short], "final_distance", 100, 100)
    bad = tmp_path / "b.csv"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(InputError, match="not a train-rl metrics.csv"):
        aggregate_curves([bad], "return", 100, 100)


# ---------------------------------------------------------------- config checks
def test_new_point_mass_specs_load_with_their_families() -> None:
    assert load_task_spec("pointmass-discrete").family.name == "discrete"
    assert load_task_spec("pointmass-discrete").prior.dim == 6
    assert load_task_spec("pointmass-linear").family.name == "linear"
    margin = load_task_spec("pointmass-goal-margin")
    assert margin.family.margin == "sampled" and margin.prior.dim == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategies": ("hipi", "her-final")}, "panels.p.strategies: her-final needs a goal"),
        ({"metric": "success"}, "panels.p.metric: success needs a goal family"),
        ({"metric": "speed"}, "panels.p.metric: expected one of"),
        ({"strategies": ("hipi", "hipi")}, "panels.p.strategies: expected distinct"),
        ({"strategies": ("bogus",)}, "panels.p.strategies: unknown strategy 'bogus'"),
        ({"env": "nope"}, "ENV: unknown environment 'nope'"),
        ({"tasks": "no-such-spec"}, "panels.p.tasks: --tasks: 'no-such-spec'"),
        ({"key": "a/b"}, "panels.a/b.key: expected a plain folder name"),
    ],
)
def test_bad_panels_are_refused(change: dict[str, object], message: str) -> None:
    fields = {
        "key": "p",
        "title": "t",
        "env": "pointmass",
        "tasks": "pointmass-linear",
        "metric": "return",
        "strategies": ("hipi", "none"),
    }
    fields.update(change)
    with pytest.raises(InputError) as err:
        CurvesConfig("fig", "t", (Panel(**fields),), (0,), TINY_TRAIN)  # type: ignore[arg-type]
    assert str(err.value).startswith(message)


def test_bad_training_settings_name_their_field() -> None:
    from dataclasses import replace

    with pytest.raises(FieldError, match=r"^train\.batch_size: "):
        replace(FIG5_PRESETS["tiny"](), train=replace(TINY_TRAIN, batch_size=0))
    with pytest.raises(FieldError, match=r"^bin_steps: "):
        replace(FIG5_PRESETS["tiny"](), bin_steps=0)


def test_settings_leave_out_steps_seeds_and_run_control() -> None:
    config = FIG6_PRESETS["reduced"]()
    settings = config.settings()
    assert "seeds" not in settings and "workers" not in settings and "progress" not in settings
    assert "steps" not in settings["train"] and settings["train"]["batch_size"] == 64
    assert [p["key"] for p in settings["panels"]] == ["discrete", "linear", "margin"]
    assert [p["metric"] for p in settings["panels"]] == ["return", "return", "final_distance"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "huge"], "error: fig5.py: argument --preset: invalid choice: 'huge'"),
        (["--workers", "0"], "error: fig5.py: argument --workers: expected a positive"),
        (["--steps", "-5"], "error: fig5.py: argument --steps: expected a positive"),
        (["--seeds", "0,x"], "error: fig5.py: argument --seeds: expected integers"),
        (["--seeds", "1,1"], "error: --seeds: seeds must be distinct"),
        (["--panels", "dense,nope"], "error: --panels: expected names from dense, sparse"),
        (["--png", "{root}/fig.jpg"], "error: --png: expected a .png file path"),
        (["--json", "{root}"], "error: --json: expected a .json file path"),
    ],
)
def test_bad_options_give_one_error_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    root = tmp_path / "root"
    args = ["--preset", "tiny", "--root", str(root), *(a.format(root=root) for a in argv)]
    assert script("fig5").main(args) == 2
    out, err = capsys.readouterr()
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert not root.exists()


def test_missing_root_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert script("fig6").main(["--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fig6.py: the following arguments are required: --root")
    assert len(err.strip().splitlines()) == 1


def test_figure_has_a_panel_per_variant_and_decodes(tmp_path: Path) -> None:
    """The PNG of a hand-made results entry: a titled, labeled panel per variant."""
    import matplotlib.image

    curve = {"steps": [100, 200], "mean": [1.0, 0.5], "stderr": [0.1, None], "per_seed": []}
    entry = {
        "title": "T",
        "seeds": [0, 1],
        "panels": {
            key: {"title": key, "env": "pointmass", "tasks": "x", "metric": metric,
                  "curves": {"hipi": curve, "none": curve}}
            for key, metric in (("a", "final_distance"), ("b", "return"))
        },
    }  # fmt: skip
    fig = curves_figure(entry)
    axes = fig.get_axes()
    assert [ax.get_title().split("\n")[0] for ax in axes] == ["a", "b"]
    assert all(ax.get_xlabel() == "environment steps" for ax in axes)
    assert axes[0].get_ylabel().startswith("final distance to goal")
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == [
        "HIPI (inverse RL)",
        "none (SAC)",
    ]
    save_png(fig, tmp_path / "f.png")
    image = matplotlib.image.imread(tmp_path / "f.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize(("name", "workers"), [("fig5", 2), ("fig6", 1)])
def test_tiny_preset_end_to_end_and_continued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, workers: int
) -> None:
    """The tiny preset runs every (panel, strategy, seed), writes a decodable PNG and
    curves equal to a recomputation from the runs' metrics.csv; rerunning with more
    steps continues the same runs (train-rl resumes them)."""
    import matplotlib.image

    root = tmp_path / "root"
    run = script(name).main
    base = ["--preset", "tiny", "--root", str(root), "--workers", str(workers), "--no-progress"]
    assert run([*base, "--steps", "100"]) == 0
    assert run(base) == 0  # the preset's 200 steps: the same runs, continued
    out = capsys.readouterr().out
    assert "| panel | metric | hipi |" in out
    presets = FIG5_PRESETS if name == "fig5" else FIG6_PRESETS
    config = presets["tiny"]()
    document = json.loads((root / f"{name}.json").read_text())
    assert document == {
        **json.loads((root / "results.json").read_text())[name],
        "preset": "tiny",
        "settings": json.loads(json.dumps(config.settings())),
    }
    assert list(document["panels"]) == [p.key for p in config.panels]
    for panel in config.panels:
        for strategy in panel.strategies:
            runs = [root / panel.key / f"{strategy}-seed{s}" for s in config.seeds]
            for folder in runs:  # 200 steps of 50-step episodes, in one run folder
                rows = list(csv.DictReader((folder / "metrics.csv").open()))
                assert [int(r["step"]) for r in rows] == [50, 100, 150, 200]
            entry = document["panels"][panel.key]
            tables = {panel.metric: entry["curves"], **entry["other_metrics"]}
            goal = panel.tasks != "pointmass-discrete" and panel.tasks != "pointmass-linear"
            expected = ("final_distance", "success", "return") if goal else ("return",)
            assert sorted(tables) == sorted(expected)
            for metric, curves in tables.items():
                again = aggregate_curves(
                    [r / "metrics.csv" for r in runs], metric, config.bin_steps, 200
                )
                assert curves[strategy] == again
    image = matplotlib.image.imread(root / f"{name}.png")
    assert image.ndim == 3 and image.shape[1] > 400
