"""The one registry of report kinds: each names its typed class, its pages function and its figures.

`python -m validation report FILE.json` reads the file's `kind` here; the pages of every kind are drawn through
`pages`, which draws each registered figure behind the guard (a figure that fails becomes a paragraph saying
why, never a failed report) and hands the figures to the pages function by name. `FIGURES` is every figure
name of every kind, so that rewriting a report set removes an older set's figures whatever its kind.

Adding a kind: its record class in `validation.reports.types`, its pages function, and one row in `KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from validation.errors import ValidationError
from validation.reports import plots
from validation.reports.bench import bench_blocks
from validation.reports.blocks import Figures, accuracy_blocks, drift_blocks
from validation.reports.document import Block, Figure, Paragraph
from validation.reports.locate import locate_blocks
from validation.reports.types import AccuracyReport, BenchReport, DriftReport, LocateReport, Report

MAX_PLOTTED_RUNTIMES = 12  # a figure costs ~0.1 s per runtime drawn; a run compares a handful


@dataclass(frozen=True)
class FigureKind:
    name: str  # file-name part: `<stem>_<name>.png`
    caption: str
    draw: str  # the function of `validation.reports.plots` that draws it (looked up when drawn)


@dataclass(frozen=True)
class ReportKind:
    name: str
    cls: type[Report]
    pages: Callable[[Any, Figures], tuple[str, list[Block]]]
    figures: tuple[FigureKind, ...] = ()


KINDS: dict[str, ReportKind] = {
    kind.name: kind
    for kind in (
        ReportKind("drift", DriftReport, drift_blocks, (
            FigureKind("errors", "Distribution of the absolute logit error against native Paddle", "error_histogram"),
            FigureKind("runtimes", "Absolute and relative error per runtime", "drift_by_runtime"),
        )),
        ReportKind("accuracy", AccuracyReport, accuracy_blocks, (
            FigureKind("accuracy", "Accuracy and throughput per runtime", "accuracy_by_runtime"),
            FigureKind("classes", "Per-class top-1", "accuracy_per_class"),
        )),
        ReportKind("locate", LocateReport, locate_blocks, (
            FigureKind("stages", "Relative error per stage along the network", "stage_growth"),
        )),
        ReportKind("bench", BenchReport, bench_blocks),
    )
}  # fmt: skip
FIGURES = tuple(dict.fromkeys(f.name for kind in KINDS.values() for f in kind.figures))  # `<stem>_<name>.png`


def kind_of(report: Report) -> ReportKind:
    for kind in KINDS.values():
        if isinstance(report, kind.cls):
            return kind
    raise ValidationError(f"not a report of this kit: {type(report).__name__}")


def figure(spec: FigureKind, report: Report) -> Block:
    """The figure, or a paragraph naming it and why it could not be drawn: a plot never costs the report.

    A report with many runtimes has the first `MAX_PLOTTED_RUNTIMES` drawn (the tables list all), so that
    rendering it takes bounded time.
    """
    caption = spec.caption
    runtimes = getattr(report, "runtimes", None)
    if isinstance(runtimes, dict) and len(runtimes) > MAX_PLOTTED_RUNTIMES:
        report = report.first_runtimes(MAX_PLOTTED_RUNTIMES)
        caption += f" (the first {MAX_PLOTTED_RUNTIMES} of {len(runtimes)} runtimes; the tables list every one)"
    try:
        return Figure(spec.name, caption, getattr(plots, spec.draw)(report))
    except Exception as exc:  # matplotlib and numpy raise many types on odd data; the numbers are in the tables
        return Paragraph(f"Figure '{caption}' ({spec.name}) could not be drawn: {type(exc).__name__}: {exc}")


_GARBLED = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)  # from a report from elsewhere


def _garbled(kind: str, exc: Exception) -> ValidationError:
    return ValidationError(f"the {kind} report lacks or garbles a field the pages need ({type(exc).__name__}: "
                           f"{str(exc)[:200]})")  # fmt: skip


def from_json(data: Mapping[str, Any]) -> Report:
    """The typed report of a JSON object, by its `kind`."""
    kind = data.get("kind")
    if kind not in KINDS:
        raise ValidationError(f"not a validation report (kind {kind!r}; expected one of {', '.join(KINDS)})")
    try:
        return KINDS[kind].cls.from_json(data)
    except _GARBLED as exc:
        raise _garbled(kind, exc) from exc


def pages(report: Report) -> tuple[str, list[Block]]:
    """The title and blocks of the report's pages, its figures drawn behind the guard."""
    kind = kind_of(report)
    drawn = {spec.name: figure(spec, report) for spec in kind.figures}
    try:
        return kind.pages(report, drawn)
    except _GARBLED as exc:
        raise _garbled(kind.name, exc) from exc
