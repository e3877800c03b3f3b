"""Typed reports: the round trip of each kind, the verdict, old reports re-rendered, and the figure registry."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from validation.reports import kinds
from validation.reports.types import REPORT_VERSION, AccuracyReport, BenchReport, DriftReport, LocateReport
from validation.reports.write import render

OLD = ROOT / "tests" / "data" / "reports"  # written by the kit before reports were typed (no version)
SAMPLES = {
    "drift": (DriftReport, "drift_lvvit_s_224"),
    "accuracy": (AccuracyReport, "accuracy_digits"),
    "locate": (LocateReport, "locate_lvvit_s_fp32"),
    "bench": (BenchReport, "bench_lvvit_s_64"),
}


def _load(kind: str):
    cls, stem = SAMPLES[kind]
    return cls.from_json(json.loads((OLD / f"{stem}.json").read_text()))


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_each_kind_survives_the_round_trip(kind):
    cls, _ = SAMPLES[kind]
    report = _load(kind)
    assert report.version == 1 and bool(report)  # an old report: no version field; its runtimes passed
    assert cls.from_json(report.to_json()) == report
    current = dataclasses.replace(report, version=REPORT_VERSION)
    again = cls.from_json(json.loads(json.dumps(current.to_json())))  # through JSON text
    assert again == current and again.to_json()["version"] == REPORT_VERSION
    assert kinds.from_json(current.to_json()) == current  # the registry reads it by its kind


def _first_check_failed(report: DriftReport) -> DriftReport:
    name, entry = next(iter(report.runtimes.items()))
    failed = [dataclasses.replace(entry.gate[0], passed=False), *entry.gate[1:]]
    return dataclasses.replace(report, runtimes={**report.runtimes, name: dataclasses.replace(entry, gate=failed)})


def test_the_verdict_fails_on_a_failed_check_and_on_a_nan():
    report = _load("drift")
    assert report and report.to_json()["passed"] is True
    failed = _first_check_failed(report)
    assert not failed and failed.to_json()["passed"] is False and failed.failures()
    name = next(iter(report.runtimes))
    entry = report.runtimes[name]
    stats = dataclasses.replace(report.stats(name), mean_kl=math.nan)  # a number no limit reads
    nan = dataclasses.replace(report, runtimes={name: dataclasses.replace(entry, outputs={report.output: stats})})
    assert not nan and "mean_kl not a number" in nan.failures()[0]
    gated = dataclasses.replace(entry.gate[0], value=math.nan)  # marked passed, but its value is NaN
    nan_check = dataclasses.replace(report, runtimes={name: dataclasses.replace(entry, gate=[gated])})
    assert not nan_check


def test_the_verdict_of_each_kind_reads_its_numbers():
    accuracy = _load("accuracy")
    name, entry = next(iter(accuracy.runtimes.items()))
    assert not dataclasses.replace(accuracy, runtimes={name: dataclasses.replace(entry, top1=None)})
    bench = _load("bench")
    path = bench.paths[-1]
    broken = dataclasses.replace(path, drift=dataclasses.replace(path.drift, max_abs=math.nan))
    assert bench and not dataclasses.replace(bench, paths=[*bench.paths[:-1], broken])


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_an_old_report_of_each_kind_re_renders(kind, tmp_path):
    _, stem = SAMPLES[kind]
    shutil.copy(OLD / f"{stem}.json", tmp_path / f"{stem}.json")
    run = subprocess.run([sys.executable, "-m", "validation", "report", str(tmp_path / f"{stem}.json"),
                          "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stderr
    rewritten = json.loads((tmp_path / "out" / f"{stem}.json").read_text())
    assert rewritten["version"] == REPORT_VERSION and rewritten["kind"] == kind  # the old file in this format
    assert kinds.from_json(rewritten) == dataclasses.replace(_load(kind), version=REPORT_VERSION)
    assert (tmp_path / "out" / f"{stem}.md").read_text().startswith("# ")
    assert "<!DOCTYPE html>" in (tmp_path / "out" / f"{stem}.html").read_text()
    figures = {f.name for f in kinds.KINDS[kind].figures}
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {f"{stem}_{name}.png" for name in figures}


def test_every_figure_is_registered_and_stale_ones_of_every_kind_are_cleaned(tmp_path):
    assert "stages" in kinds.FIGURES and {f.name for f in kinds.KINDS["locate"].figures} == {"stages"}
    for name in ("errors", "runtimes", "accuracy", "classes"):
        assert name in kinds.FIGURES
    (tmp_path / "run_stages.png").write_bytes(b"an older locate set's figure")
    (tmp_path / "run_errors.png").write_bytes(b"an older drift set's figure")
    written = render(_load("bench"), tmp_path, "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.html", "run.md"] and "markdown" in written


def test_a_failing_plot_is_named_in_the_page_and_never_breaks_the_report(tmp_path, monkeypatch):
    from validation.reports import plots

    def broken(report):
        raise RuntimeError("the plot broke")

    monkeypatch.setattr(plots, "stage_growth", broken)
    (tmp_path / "run_stages.png").write_bytes(b"stale")
    written = render(_load("locate"), tmp_path, "run")
    page = written["markdown"].read_text()
    assert "Figure 'Relative error per stage along the network' (stages) could not be drawn: RuntimeError" in page
    assert not (tmp_path / "run_stages.png").exists() and "png:stages" not in written


def test_a_report_of_an_unknown_kind_or_a_garbled_field_is_refused(tmp_path):
    from validation.errors import ValidationError

    data = json.loads((OLD / "accuracy_digits.json").read_text())
    with pytest.raises(ValidationError, match="not a validation report"):
        render({**data, "kind": "nope"}, tmp_path, "x")
    with pytest.raises(ValidationError, match="the accuracy report lacks or garbles a field"):
        render({**data, "num_classes": None, "reference": "?"}, tmp_path, "x")
