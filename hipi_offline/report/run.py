"""``hipi-offline report``: what a relabeled dataset can teach, as one HTML page.

Checks come first (the store, the label sets, the output file, matplotlib); the page
is then built in memory and written atomically, so a failed run leaves nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hipi_offline.configs import FieldError, check_flag, check_int, named
from hipi_offline.errors import InputError
from hipi_offline.preflight import check_free_space, check_writable
from hipi_offline.store.atomic import atomic_write_bytes
from hipi_offline.store.label_attrs import label_task_names
from hipi_offline.store.labels import LabelSet, PosteriorSpread, check_label_name
from hipi_offline.store.location import Location, is_url, store_location
from hipi_offline.store.store import open_store

if TYPE_CHECKING:
    from hipi_offline.report.page import Section

MAX_EXAMPLES = 12


@dataclass(frozen=True)
class ReportConfig:
    """Options of ``hipi-offline report``."""

    out: str
    """HTML file to write (self-contained: figures are embedded PNGs)."""
    labels: str = "hipi"
    """Label set to report on."""
    compare: str | None = None
    """A second label set of the same store to compare with (e.g. no-partition)."""
    examples: int = 4
    """Episodes whose posterior is drawn against their commanded task (0: none)."""
    overwrite: bool = False
    """Replace an existing report (only a file this command wrote)."""

    def __post_init__(self) -> None:
        if not isinstance(self.out, (str, Path)) or not str(self.out):
            raise FieldError("out", f"expected an HTML file name, got {self.out!r}")
        with named("labels"):
            check_label_name(self.labels)
        if self.compare is not None:
            with named("compare"):
                check_label_name(self.compare)
            if self.compare == self.labels:
                raise FieldError("compare", f"is the reported label set {self.labels!r} itself")
        check_int(self.examples, "examples", 0, MAX_EXAMPLES)
        check_flag(self.overwrite, "overwrite")


@dataclass(frozen=True)
class ReportSummary:
    path: Path
    sections: int
    figures: int

    def lines(self) -> list[str]:
        return [f"wrote {self.path} ({self.sections} sections, {self.figures} figures)"]


def check_output(path: Path, overwrite: bool) -> None:
    """The report's file: its folder exists and is writable; an existing file is
    replaced only with ``overwrite`` and only when this command wrote it."""
    from hipi_offline.report.page import is_report

    if not path.parent.is_dir():
        raise InputError(f"--out: folder {path.parent} does not exist; create it first")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise InputError(f"--out: {path} exists and is not a regular file; choose another name")
    if path.exists():
        if not overwrite:
            raise InputError(f"--out: {path} exists; pass --overwrite to replace it")
        if not is_report(path):
            raise InputError(
                f"--out: {path} is not a report written by hipi-offline; it is left as it is"
            )
    check_writable(path.parent, "--out")


def _matplotlib() -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: the figures only become PNGs
    except ImportError:
        raise InputError(
            "report: needs matplotlib; install it with pip install 'hipi-offline[report]'"
        ) from None


def make_report(store_path: str | Path, config: ReportConfig) -> ReportSummary:
    """Write the report of ``config.labels`` (and ``config.compare``) of a store."""
    _matplotlib()
    out = Path(config.out)
    check_output(out, config.overwrite)
    location = store_location(store_path)
    with open_store(location) as store:
        names = store.label_names()
        for option, name in (("--labels", config.labels), ("--compare", config.compare)):
            if name is not None and name not in names:
                known = ", ".join(names) or "none; run hipi-offline relabel first"
                raise InputError(f"{option}: the store has no label set {name!r} (has: {known})")
        labels = store.read_labels(config.labels)
        other = None if config.compare is None else store.read_labels(config.compare)
        commanded = "episodes/task" in store.episode_fields()
        facts = [
            ("store", str(store_path) if is_url(store_path) else str(Path(store_path))),
            ("environment", str(store.attrs.get("env", "unknown"))),
            ("episodes", f"{store.num_episodes:,}"),
            ("steps", f"{store.num_steps:,}"),
        ]
    sections = build_sections(location, labels, other, config.examples if commanded else 0)
    facts += _label_facts(labels)
    from hipi_offline.report.page import render

    title = f"What {Path(str(store_path)).name} can teach: label set {labels.name!r}"
    text = render(title, facts, sections).encode()
    check_free_space(out.parent, len(text), "--out")
    atomic_write_bytes(out, text)
    return ReportSummary(out, len(sections), sum(len(s.figures) for s in sections))


def _label_facts(labels: LabelSet) -> list[tuple[str, str]]:
    attrs = labels.attrs
    return [
        ("label set", labels.name),
        ("method", str(attrs.get("method", "?"))),
        ("task family", str(attrs.get("family", "?"))),
        (
            "candidate tasks K",
            f"{labels.num_candidates:,} (dimension {labels.candidates.shape[1]})",
        ),
        ("temperature α", str(attrs.get("temperature", "?"))),
        ("stored top-k", str(labels.k)),
        ("made", str(attrs.get("created", "?"))),
    ]


def _dim(labels: LabelSet) -> int:
    return int(np.prod(labels.candidates.shape[1:]))


def build_sections(
    location: Location, labels: LabelSet, other: LabelSet | None, examples: int
) -> list[Section]:
    """The report's sections, figures included (see the module docstring)."""
    from hipi_offline.plots import posterior_heatmap
    from hipi_offline.report.coverage import (
        NOT_AT_ALL,
        WELL,
        CoverageClasses,
        coverage_sentences,
    )
    from hipi_offline.report.figures import coverage_figure, spread_figure
    from hipi_offline.report.page import Section

    names = label_task_names(labels.attrs)
    k = labels.num_candidates
    spread = PosteriorSpread.of(labels.entropy, labels.coverage)
    classes = CoverageClasses.of(labels.coverage)
    well = len(classes.members("well"))
    summary = Section("Summary")
    summary.paragraphs.append(
        f"Over its {labels.num_episodes:,} episodes the data teaches about "
        f"{spread.coverage_effective_tasks:.1f} of the {k:,} candidate tasks in effect "
        f"(exp of the coverage's entropy). Each episode is labeled with "
        f"{spread.effective_tasks:.2f} tasks in effect (mean exp(entropy); 1 is a single "
        f"task, {k:,} is no information)."
    )
    summary.bullets += coverage_sentences(labels.candidates, labels.coverage, names)
    if well == 0:
        summary.bullets.append(
            "No task is covered well: a policy cloned from these labels will be commanded "
            "tasks the data barely shows."
        )
    summary.paragraphs.append(
        f"A candidate is covered well when its share of the posterior mass is at least {WELL} "
        f"of the uniform share 1/K, poorly down to {NOT_AT_ALL} of it, and not at all below."
    )
    coverage = Section("Coverage of the task space")
    coverage.add_figure(
        coverage_figure(labels, names),
        "Coverage c_j = (1/N) Σ_i q(ψ_j | τ_i) of each candidate task ψ_j. The candidates "
        "are draws from the task prior, so uniform coverage (share ratio 1) means the data "
        "matches the prior.",
    )
    spread_section = Section("How sure the labels are")
    spread_section.add_figure(
        spread_figure(labels),
        f"Posterior entropy per episode (mean {spread.mean_entropy:.3f} nats; at most "
        f"log K = {math.log(k):.3f}) and its exponential, the effective number of tasks.",
    )
    sections = [summary, coverage, spread_section]
    if examples:
        shown = list(range(min(examples, labels.num_episodes)))
        section = Section("Example episodes against their commanded task")
        section.add_figure(
            posterior_heatmap(location, labels.name, shown),
            f"q(ψ | τ) of episodes {shown[0]}–{shown[-1]} from the stored top-{labels.k} "
            "(mass outside the top-k shows as zero); the commanded task is marked.",
        )
        sections.append(section)
    if other is not None:
        sections.append(_comparison(labels, other))
    return sections


def _comparison(labels: LabelSet, other: LabelSet) -> Section:
    from hipi_offline.report.figures import comparison_figure, same_candidates
    from hipi_offline.report.page import Section

    section = Section(f"{labels.name} against {other.name}")
    a, b = (
        PosteriorSpread.of(labels.entropy, labels.coverage),
        PosteriorSpread.of(other.entropy, other.coverage),
    )
    section.bullets.append(
        f"Mean entropy {a.mean_entropy:.3f} against {b.mean_entropy:.3f} nats; tasks taught "
        f"in effect {a.coverage_effective_tasks:.1f} against {b.coverage_effective_tasks:.1f}."
    )
    if same_candidates(labels, other) and labels.num_episodes == other.num_episodes:
        agree = float(np.mean(labels.topk_index[:, 0] == other.topk_index[:, 0]))
        tv = 0.5 * float(np.abs(labels.coverage - other.coverage).sum())
        section.bullets.append(
            f"The most probable task agrees on {agree:.0%} of the episodes; the coverages "
            f"differ by a total variation of {tv:.3f}."
        )
    else:
        section.bullets.append(
            "The two label sets score different candidate tasks: only their spreads compare."
        )
    section.add_figure(
        comparison_figure(labels, other),
        f"Left: entropy per episode in {labels.name} and {other.name}. Right (same candidates "
        "only): each candidate's share ratio in both; points off the dashed line are tasks "
        "one label set credits the data with and the other does not.",
    )
    return section
