"""Plots of hipi_offline.plots on tiny synthetic inputs: the axes show exactly the data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is in the test extra")
matplotlib.use("Agg")

from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from hipi_offline import plots  # noqa: E402
from hipi_offline.store import LabelSet, create_store, write_label_set  # noqa: E402

RATE = "success_rate"
FIG7A = {
    "fig7a": {
        "cheetah": {
            "task-agnostic": {"mean": -40.0, "stderr": 2.0, "per_seed": [-42.0, -38.0]},
            "hipi": {"mean": -10.0, "stderr": 1.0, "per_seed": [-11.0, -9.0], "metric": "return"},
            "random": {"mean": -30.0, "stderr": None, "per_seed": [-30.0], "metric": "return"},
        },
        "desk": {
            "hipi": {"mean": 0.75, "stderr": 0.05, "per_seed": [0.7, 0.8], "metric": RATE},
            "original": {"mean": 0.5, "stderr": 0.1, "per_seed": [0.4, 0.6], "metric": RATE},
        },
    }
}


def tick_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_figures_stay_out_of_pyplot() -> None:
    plt.close("all")
    plots.fig7a_bars(FIG7A)
    assert plt.get_fignums() == []


@pytest.mark.parametrize("entry", [FIG7A, FIG7A["fig7a"]], ids=["results", "fig7a-entry"])
def test_fig7a_bars_show_every_method_of_every_env(entry) -> None:
    fig = plots.fig7a_bars(entry)
    cheetah, desk = fig.axes
    assert cheetah.get_title() == "cheetah" and desk.get_title() == "desk"
    # canonical method order: hipi, ..., random, ..., task-agnostic
    assert tick_texts(cheetah) == ["hipi", "random", "task-agnostic"]
    assert tick_texts(desk) == ["hipi", "original"]
    assert [b.get_height() for b in bars(cheetah)] == [-10.0, -30.0, -40.0]
    assert [b.get_height() for b in bars(desk)] == [0.75, 0.5]
    assert cheetah.get_ylabel() == "task return"
    assert desk.get_ylabel() == "success rate"
    assert -0.1 < desk.get_ylim()[0] < 0.0 and 1.0 < desk.get_ylim()[1] <= 1.1
    # error bars span mean ± stderr (none drawn for an undefined stderr)
    (container,) = [c for c in cheetah.containers if isinstance(c, BarContainer)]
    segments = container.errorbar.lines[2][0].get_segments()
    assert [(seg[0][1], seg[1][1]) if len(seg) else None for seg in segments] == [
        (-11.0, -9.0),
        None,
        (-42.0, -38.0),
    ]
    # each seed is a dot on its method's bar, drawn above the bars and error bars
    dots = [line for line in cheetah.lines if line.get_marker() == "o"]
    assert [list(d.get_ydata()) for d in dots] == [[-11.0, -9.0], [-30.0], [-42.0, -38.0]]
    for x, dot in enumerate(dots):
        assert all(abs(v - x) < 0.4 for v in dot.get_xdata())
        assert dot.get_zorder() > max(b.get_zorder() for b in bars(cheetah))
        assert dot.get_markersize() >= 4
    # the means are written on the bars; the caption explains the error bars
    assert [t.get_text() for t in cheetah.texts] == ["-10.00", "-30.00", "-40.00"]
    caption = entry_caption(cheetah.figure)
    assert "standard error" in caption and "seeds" in caption


def entry_caption(fig) -> str:
    return fig.get_supxlabel()


def test_fig7a_panel_of_zeros_still_shows_its_values() -> None:
    zeros = {
        "desk": {
            m: {"mean": 0.0, "stderr": 0.0, "per_seed": [0.0, 0.0], "metric": RATE}
            for m in ("hipi", "random", "task-agnostic")
        }
    }
    (desk,) = plots.fig7a_bars(zeros).axes
    assert [t.get_text() for t in desk.texts] == ["0.00", "0.00", "0.00"]
    assert all(t.get_visible() for t in desk.texts)
    dots = [line for line in desk.lines if line.get_marker() == "o"]
    assert len(dots) == 3 and all(list(d.get_ydata()) == [0.0, 0.0] for d in dots)
    low, high = desk.get_ylim()
    assert low < 0.0 < high  # the zero line and the whole dots sit inside the axes


def test_fig7a_bars_color_a_method_alike_in_every_env() -> None:
    cheetah, desk = plots.fig7a_bars(FIG7A).axes
    assert bars(cheetah)[0].get_facecolor() == bars(desk)[0].get_facecolor()  # hipi
    assert bars(cheetah)[0].get_facecolor() != bars(cheetah)[1].get_facecolor()


def test_fig7a_bars_need_an_env() -> None:
    with pytest.raises(ValueError, match="no environments"):
        plots.fig7a_bars({"fig7a": {}})


def test_fig7b_lines_plot_mean_against_bias() -> None:
    results = {
        "fig7b": {
            "bias": [0.0, 1.0, 4.0],
            "box": {"low": [0.0], "high": [1.0]},
            "no-partition": {
                "mean": [5.0, 3.0, 1.0],
                "stderr": [0.5, 0.5, None],
                "per_seed": [[5.0], [3.0], [1.0]],
                "label_tv": [0.0, 0.2, 0.5],
            },
            "hipi": {"mean": [5.0, 5.0, 5.0], "stderr": [0.2, 0.2, 0.2], "label_tv": [0, 0, 0]},
        }
    }
    fig = plots.fig7b_lines(results)
    ax, shift = fig.axes[:2]
    assert [line.get_label() for line in ax.lines] == ["hipi", "no-partition"]
    assert list(ax.lines[0].get_xdata()) == [0.0, 1.0, 4.0]
    assert list(ax.lines[1].get_ydata()) == [5.0, 3.0, 1.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["hipi", "no-partition"]
    assert ax.get_xlabel() == "reward bias b on ψ ∈ [0, 1]"
    assert len(ax.collections) == 2  # one ± stderr band per method
    assert [list(line.get_ydata()) for line in shift.lines] == [[0, 0, 0], [0.0, 0.2, 0.5]]
    # without label shifts (or a box): one panel
    del results["fig7b"]["box"]
    for method in ("hipi", "no-partition"):
        del results["fig7b"][method]["label_tv"]
    (ax,) = plots.fig7b_lines(results["fig7b"]).axes
    assert ax.get_xlabel() == "reward bias b"


def _store(path: Path, tasks: np.ndarray, labels: LabelSet) -> Path:
    n = len(tasks)
    with create_store(path, env="tiny") as store:
        store.append_episodes(
            {"observations": np.zeros((2 * n, 1), "f4"), "actions": np.zeros((2 * n, 1), "f4")},
            [2] * n,
            {"task": tasks},
        )
    write_label_set(path, labels)
    return path


def _labels(candidates: np.ndarray, probs: np.ndarray, attrs: dict) -> LabelSet:
    """A label set whose top-k (k = K) holds exactly ``probs`` [N, K]."""
    order = np.argsort(-probs, axis=1, kind="stable")
    with np.errstate(divide="ignore"):
        logp = np.log(np.take_along_axis(probs, order, axis=1))
    n, k = probs.shape
    return LabelSet(
        name="hipi",
        candidates=candidates.astype(np.float32),
        log_z=np.zeros(k),
        topk_index=order.astype(np.int64),
        topk_logprob=logp.astype(np.float32),
        entropy=np.zeros(n, np.float32),
        coverage=probs.mean(axis=0),
        attrs={"method": "hipi", **attrs},
    )


def test_posterior_density_for_one_dimensional_tasks(tmp_path: Path) -> None:
    psi = np.linspace(0.0, 3.0, 31)[:, None]
    probs = np.zeros((3, 31))
    probs[0, 5] = 1.0  # psi = 0.5
    probs[1, 24:27] = [0.25, 0.5, 0.25]  # around psi = 2.5
    probs[2] = 1.0 / 31
    tasks = np.array([[0.5], [2.5], [1.5]], np.float32)
    path = _store(tmp_path / "c.h5", tasks, _labels(psi, probs, {"family": "target"}))
    fig = plots.posterior_heatmap(path, "hipi", [0, 1, 2])
    (ax,) = fig.axes
    densities = [line for line in ax.lines if line.get_label().startswith("episode")]
    assert [d.get_label() for d in densities] == ["episode 0", "episode 1", "episode 2"]
    for line in densities:  # each is a density: it integrates to one
        x, y = line.get_xdata(), line.get_ydata()
        assert float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x))) == pytest.approx(1.0, abs=0.01)
    peaks = [d.get_xdata()[np.argmax(d.get_ydata())] for d in densities[:2]]
    assert peaks == pytest.approx([0.5, 2.5], abs=0.05)
    commanded = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"]
    assert commanded == pytest.approx([0.5, 2.5, 1.5])
    assert "q(ψ | τ)" in ax.get_ylabel()


def test_posterior_heatmap_over_discrete_task_names(tmp_path: Path) -> None:
    names = ["open", "close", "light"]
    probs = np.array([[0.7, 0.2, 0.1], [0.0, 0.1, 0.9]])
    attrs = {"family": "discrete", "task_names": json.dumps(names)}
    path = _store(tmp_path / "d.zarr", np.array([0, 2]), _labels(np.eye(3), probs, attrs))
    fig = plots.posterior_heatmap(path, "hipi", [1, 0])
    ax = fig.axes[0]
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    assert np.asarray(image.get_array()) == pytest.approx(probs[[1, 0]], abs=1e-6)
    assert tick_texts(ax) == names
    assert [t.get_text() for t in ax.get_yticklabels()] == ["episode 1", "episode 0"]
    boxes = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert [(b.get_x() + 0.5, b.get_y() + 0.5) for b in boxes] == [(2.0, 0.0), (0.0, 1.0)]


def test_posterior_heatmap_over_vector_tasks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(6, 3))
    probs = rng.dirichlet(np.ones(6), size=2)
    path = _store(tmp_path / "v.h5", candidates[[4, 1]] + 1e-3, _labels(candidates, probs, {}))
    ax = plots.posterior_heatmap(path, "hipi", [0, 1]).axes[0]
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    shown = np.asarray(image.get_array())
    assert shown.shape == (2, 6)
    assert shown.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert sorted(shown[0]) == pytest.approx(sorted(probs[0]), abs=1e-6)
    assert len([p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]) == 2


def test_posterior_heatmap_rejects_unknown_episodes(tmp_path: Path) -> None:
    probs = np.array([[1.0, 0.0]])
    path = _store(tmp_path / "c.h5", np.zeros((1, 1), "f4"), _labels(np.eye(2)[:, :1], probs, {}))
    with pytest.raises(ValueError, match=r"episodes \[3\]"):
        plots.posterior_heatmap(path, "hipi", [3])


def _run(folder: Path, rows: list[tuple[int, float]]) -> Path:
    folder.mkdir(parents=True)
    text = "step,loss,lr,samples_per_s,grad_norm\n"
    text += "".join(f"{s},{loss},0.001,100.0,1.0\n" for s, loss in rows)
    (folder / "metrics.csv").write_text(text)
    return folder


def test_learning_curves_plot_loss_per_run(tmp_path: Path) -> None:
    a = _run(tmp_path / "hipi-seed0", [(10, 3.0), (20, 1.5), (30, 0.5)])
    b = _run(tmp_path / "hipi-seed1", [(10, 2.0), (20, -1.0)])
    c = _run(tmp_path / "task-agnostic-seed0", [(10, 4.0)])
    (ax,) = plots.learning_curves([a, b, c]).axes
    assert [line.get_label() for line in ax.lines] == [
        "hipi-seed0",
        "hipi-seed1",
        "task-agnostic-seed0",
    ]
    assert list(ax.lines[0].get_xdata()) == [10, 20, 30]
    assert list(ax.lines[1].get_ydata()) == [2.0, -1.0]
    assert ax.lines[0].get_color() == ax.lines[1].get_color() != ax.lines[2].get_color()
    assert ax.lines[0].get_linestyle() != ax.lines[1].get_linestyle()
    assert ax.get_ylabel() == "loss"  # no config.json: which loss is unknown
    # overlapping lines stay distinguishable: each run has its own marker
    assert len({line.get_marker() for line in ax.lines}) == 3
    (ax,) = plots.learning_curves({"mine": a}, metric="lr").axes
    assert ax.lines[0].get_label() == "mine"
    assert list(ax.lines[0].get_ydata()) == [0.001] * 3


@pytest.mark.parametrize(
    ("head", "label"),
    [("gaussian", "NLL of the data actions"), ("deterministic", "MSE of the standardized")],
)
def test_learning_curves_name_the_loss_of_the_runs_head(tmp_path: Path, head, label) -> None:
    runs = [_run(tmp_path / f"hipi-seed{s}", [(10, 1.0), (20, 0.5)]) for s in range(2)]
    for run in runs:
        (run / "config.json").write_text(json.dumps({"network": {"head": head}}))
    (ax,) = plots.learning_curves(runs).axes
    assert label in ax.get_ylabel() and ax.get_ylabel().startswith("loss")
    other = _run(tmp_path / "other-seed0", [(10, 1.0)])
    (other / "config.json").write_text(json.dumps({"network": {"head": "elsewise"}}))
    (ax,) = plots.learning_curves([*runs, other]).axes
    assert ax.get_ylabel() == "loss"  # heads differ: no single loss to name


def test_frames_figure_shows_each_strip_under_its_title() -> None:
    rng = np.random.default_rng(0)
    strips = [rng.integers(0, 256, size=(8, 24, 3), dtype=np.uint8) for _ in range(2)]
    fig = plots.frames_figure(strips, ["ψ = 0.5", "ψ = 2.5"])
    assert [ax.get_title() for ax in fig.axes] == ["ψ = 0.5", "ψ = 2.5"]
    for ax, strip in zip(fig.axes, strips, strict=True):
        (image,) = ax.get_images()
        assert np.array_equal(np.asarray(image.get_array()), strip)
    assert fig.get_figwidth() >= 14  # six frames of about 2.5 inches each
    with pytest.raises(ValueError, match="2 frame strips but 1 titles"):
        plots.frames_figure(strips, ["one"])


def test_posterior_marks_nothing_it_cannot_place(tmp_path: Path) -> None:
    """A stored task of another dimension (here 1-D, candidates 2-D) is not marked."""
    candidates = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    probs = np.array([[0.5, 0.25, 0.25]])
    path = _store(tmp_path / "m.h5", np.array([[0.3]], "f4"), _labels(candidates, probs, {}))
    ax = plots.posterior_heatmap(path, "hipi", [0]).axes[0]
    assert not [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
    with create_store(tmp_path / "u.h5") as store:  # no episodes/task at all
        store.append_episodes({"observations": np.zeros((2, 1)), "actions": np.zeros((2, 1))}, [2])
    write_label_set(
        tmp_path / "u.h5", _labels(np.array([[0.0], [1.0]]), np.array([[0.4, 0.6]]), {})
    )
    (ax,) = plots.posterior_heatmap(tmp_path / "u.h5", "hipi", [0]).axes
    assert [line.get_linestyle() for line in ax.lines] == ["-"]
