"""``hipi-offline report``: one self-contained HTML page of what a label set teaches.

The page's numbers are checked against the label set they come from, every embedded
image must decode, the coverage classes against a plain reference, and the page is
loaded in headless Chromium (Debian's ``chromium``; .ci/run installs it).
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from disk import snapshot
from typer.testing import CliRunner

pytest.importorskip("matplotlib", reason="matplotlib is in the test extra")
from PIL import Image  # noqa: E402

from cli.main import app  # noqa: E402
from hipi_offline.relabel import RelabelConfig, relabel  # noqa: E402
from hipi_offline.report import ReportConfig, make_report  # noqa: E402
from hipi_offline.report.coverage import (  # noqa: E402
    NOT_AT_ALL,
    WELL,
    CoverageClasses,
    coverage_sentences,
    intervals,
)
from hipi_offline.report.figures import coverage_figure, projection  # noqa: E402
from hipi_offline.store import LabelSet, open_store, write_label_set  # noqa: E402
from hipi_offline.store.labels import PosteriorSpread  # noqa: E402
from hipi_offline.store.synthetic import SyntheticConfig, make_synthetic_store  # noqa: E402

SECTIONS = (
    "Summary",
    "Coverage of the task space",
    "How sure the labels are",
    "Example episodes against their commanded task",
    "hipi against no-partition",
)
IMAGE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic store (commanded speeds in episodes/task) with hipi and no-partition."""
    path = tmp_path_factory.mktemp("report") / "s.h5"
    make_synthetic_store(path, SyntheticConfig(episodes=120, steps=30, seed=5))
    for method in ("hipi", "no-partition"):
        relabel(path, RelabelConfig(tasks="synthetic-velocity", method=method, candidates=64))
    return path


def images(text: str) -> list[Image.Image]:
    found = []
    for data in IMAGE.findall(text):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()  # decodes every pixel; raises on a damaged PNG
        found.append(image)
    return found


def test_report_holds_the_label_sets_numbers_and_decodable_figures(store, tmp_path):
    out = tmp_path / "report.html"
    summary = make_report(store, ReportConfig(out=str(out), compare="no-partition"))
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and 'content="hipi-offline report 1"' in text
    assert "http://" not in text and "https://" not in text  # nothing outside the page
    pictures = images(text)
    assert len(pictures) == summary.figures == 4 == text.count("<img ")
    assert all(p.format == "PNG" and p.width > 300 and p.height > 200 for p in pictures)
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in text
    with open_store(store) as s:
        hipi, other = s.read_labels("hipi"), s.read_labels("no-partition")
    spread = PosteriorSpread.of(hipi.entropy, hipi.coverage)
    assert f"teaches about {spread.coverage_effective_tasks:.1f} of the 64" in text
    assert f"labeled with {spread.effective_tasks:.2f} tasks" in text
    classes = CoverageClasses.of(hipi.coverage)
    for name in ("well", "poorly", "not at all"):
        assert f"Covered {name}: {len(classes.members(name))} of 64" in text
    agree = float(np.mean(hipi.topk_index[:, 0] == other.topk_index[:, 0]))
    assert f"agrees on {agree:.0%} of the episodes" in text


def test_coverage_classes_against_a_reference():
    coverage = np.array([0.5, 0.3, 0.15, 0.04, 0.009, 0.001])
    classes = CoverageClasses.of(coverage)
    ratio = coverage * 6  # K * c_j
    np.testing.assert_allclose(classes.ratio, ratio, rtol=1e-15)
    want = [0 if r >= WELL else 1 if r >= NOT_AT_ALL else 2 for r in ratio]
    assert classes.kind.tolist() == want == [0, 0, 0, 1, 1, 2]
    psi = np.array([0.0, 1.0, 2.0, 5.0, 3.0, 4.0])  # sorted: well 0-2, poorly 3 and 5, none 4
    assert intervals(psi, classes.kind, 0) == [(0.0, 2.0)]
    assert intervals(psi, classes.kind, 1) == [(3.0, 3.0), (5.0, 5.0)]
    assert intervals(psi, classes.kind, 2) == [(4.0, 4.0)]
    lines = coverage_sentences(psi[:, None], coverage, [])
    assert lines[0] == "Covered well: 3 of 6 candidate tasks (50%), ψ in [0, 2]."
    assert lines[1] == "Covered poorly: 2 of 6 candidate tasks (33%), ψ in 3, 5."
    assert lines[2] == "Covered not at all: 1 of 6 candidate tasks (17%), ψ in 4."
    named = coverage_sentences(np.eye(6), coverage, list("abcdef"))
    assert named[2] == "Covered not at all: 1 of 6 candidate tasks (17%): f."
    boxes = coverage_sentences(np.arange(12.0).reshape(6, 2), coverage, [])
    assert boxes[0].endswith("they span the box [0, 4] × [1, 5].")


def label_set(candidates: np.ndarray, names: list[str], seed: int = 0) -> LabelSet:
    rng = np.random.default_rng(seed)
    n, k = 40, len(candidates)
    logits = rng.normal(size=(n, k)) * 3
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    order = np.argsort(-logp, axis=1)[:, :4]
    q = np.exp(logp)
    return LabelSet(
        name="hipi",
        candidates=candidates.astype(np.float32),
        log_z=np.zeros(k),
        topk_index=order,
        topk_logprob=np.take_along_axis(logp, order, axis=1).astype(np.float32),
        entropy=-(q * logp).sum(axis=1).astype(np.float32),
        coverage=q.mean(axis=0),
        attrs={
            "method": "hipi",
            "family": "discrete" if names else "target",
            "task_names": str(names).replace("'", '"'),
            "temperature": 1.0,
        },  # fmt: skip
    )


def test_discrete_tasks_are_bars_with_their_names():
    labels = label_set(np.eye(5), ["a", "b", "c", "d", "e"])
    (ax,) = coverage_figure(labels, ["a", "b", "c", "d", "e"]).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d", "e"]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, labels.coverage, rtol=1e-12)


def test_higher_dimensional_tasks_are_projected_on_their_principal_plane():
    rng = np.random.default_rng(1)
    candidates = rng.normal(size=(50, 3)) * [5.0, 1.0, 0.01]
    points, axes, note = projection(candidates)
    assert axes == ("component 1", "component 2") and "3-D" in note
    # the first component carries the most spread, and distances shrink (a projection)
    assert points[:, 0].var() > points[:, 1].var() > 0
    centered = candidates - candidates.mean(axis=0)
    assert np.linalg.norm(points, axis=1).max() <= np.linalg.norm(centered, axis=1).max() + 1e-9
    np.testing.assert_allclose((points**2).sum(), (centered**2).sum(), rtol=1e-3)  # ~all spread
    labels = label_set(candidates, [])
    (ax, _) = coverage_figure(labels, []).axes  # the plane and its color bar
    assert "principal components" in ax.get_title()
    same, axes2, note2 = projection(candidates[:, :2])
    assert axes2 == ("ψ₁", "ψ₂") and note2 == "" and np.array_equal(same, candidates[:, :2])


def test_a_store_without_commanded_tasks_skips_the_examples(tmp_path):
    from hipi_offline.store import create_store

    source_path, plain = tmp_path / "s.h5", tmp_path / "plain.h5"
    make_synthetic_store(source_path, SyntheticConfig(episodes=40, steps=10))
    with open_store(source_path) as source, create_store(plain, env="synthetic-runner") as target:
        steps = {name[len("steps/") :]: source.read_steps(name) for name in source.step_fields()}
        target.append_episodes(steps, source.lengths.tolist())  # no episodes/task
    write_label_set(plain, label_set(np.linspace(0, 3, 8)[:, None], []))
    out = tmp_path / "r.html"
    summary = make_report(plain, ReportConfig(out=str(out)))
    assert summary.figures == 2 and "Example episodes" not in out.read_text()
    assert len(images(out.read_text())) == 2


def cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["report", *[str(a) for a in args]])
    return result.exit_code, result.output


def test_bad_options_give_one_line_and_change_nothing(store, tmp_path):
    foreign = tmp_path / "mine.html"
    foreign.write_text("my own notes")
    (tmp_path / "a-folder.html").mkdir()
    os.symlink(foreign, tmp_path / "link.html")
    cases = [
        (["--out", foreign], f"error: --out: {foreign} exists; pass --overwrite to replace it"),
        (["--out", foreign, "--overwrite"], "is not a report written by hipi-offline"),
        (["--out", tmp_path / "link.html", "--overwrite"], "exists and is not a regular file"),
        (["--out", tmp_path / "a-folder.html"], "exists and is not a regular file"),
        (["--out", tmp_path / "no" / "r.html"], "does not exist; create it first"),
        (["--out", tmp_path / "r.html", "--labels", "nope"], "has no label set 'nope'"),
        (["--out", tmp_path / "r.html", "--compare", "hipi"], "--compare: is the reported"),
        (["--out", tmp_path / "r.html", "--examples", "-1"], "--examples: must be an integer"),
        (["--out", tmp_path / "r.html", "--labels", "../x"], "error: --labels:"),
    ]
    before = snapshot(tmp_path)
    for args, needle in cases:
        code, output = cli(store, *args)
        lines = [line for line in output.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), output
        assert needle in lines[0], (args, output)
    assert snapshot(tmp_path) == before
    assert foreign.read_text() == "my own notes"


def test_overwrite_replaces_only_a_report(store, tmp_path):
    out = tmp_path / "r.html"
    assert cli(store, "--out", out)[0] == 0
    first = out.read_text()
    code, output = cli(store, "--out", out, "--overwrite", "--labels", "no-partition")
    assert code == 0 and output.startswith(f"wrote {out}")
    assert out.read_text() != first and "label set &#x27;no-partition&#x27;" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no temporaries


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_page_loads_in_headless_chromium(store, tmp_path):
    out = tmp_path / "report.html"
    make_report(store, ReportConfig(out=str(out), compare="no-partition"))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run(
        [*flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert 'data-images-decoded="4/4"' in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, "--window-size=1200,2400", f"--screenshot={shot}", out.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"), np.float64)
    assert pixels.shape == (2400, 1200)
    # text and figures on a white page: many dark pixels, not a blank or an error page
    assert 0.01 < float((pixels < 128).mean()) < 0.5 and pixels.std() > 20
    assert math.isfinite(pixels.mean())
