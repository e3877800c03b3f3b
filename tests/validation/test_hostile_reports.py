"""Hostile limits and failures of the reports and runs: NaN never passes a gate, a report set is replaced as a unit,
a plot that cannot be drawn is named, odd report files are refused, and interrupted runs exit cleanly."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.bounded import run_bounded
from tests.conftest import ROOT
from validation import run_accuracy, write_reports
from validation.core import gate
from validation.core.data import labelled_folder
from validation.datasets import digits
from validation.errors import ToleranceError


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "validation", *args], capture_output=True, text=True, cwd=ROOT, timeout=120, **kwargs
    )


def _older_set(folder, stem: str) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"{stem}.json": "{}", f"{stem}.md": "older", f"{stem}.html": "older", f"{stem}_classes.png": "older"}
    for name, text in files.items():
        (folder / name).write_text(text)
    return files


def _contents(folder) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace") if p.is_file() else "(folder)" for p in folder.iterdir()}


# -- gates ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "-0.5"])
def test_non_finite_or_negative_limits_are_refused(value):
    with pytest.raises(ToleranceError, match=rf"tolerance max_abs: {float(value)!r} is not a finite number >= 0"):
        gate.parse_tolerance([f"max_abs={value}"], gate.DRIFT_LIMITS, gate.DEFAULT_DRIFT_TOLERANCE)
    with pytest.raises(ToleranceError, match="is not a finite number >= 0"):
        gate.check_tolerance({"top1_diff": float(value)}, gate.ACCURACY_LIMITS)


def test_a_nan_or_infinite_value_never_passes_a_gate():
    tolerance = {"max_abs": 1e-3, "min_cosine": 0.99}
    for bad in (math.nan, math.inf, -math.inf):
        checks = gate.check(gate.DRIFT_LIMITS, tolerance, {"max_abs": bad, "min_cosine": bad})
        assert [c["passed"] for c in checks] == [False, False], checks
    assert all(c["passed"] for c in gate.check(gate.DRIFT_LIMITS, tolerance, {"max_abs": 0.0, "min_cosine": 1.0}))


def test_a_nan_tolerance_is_refused_before_the_run(digits_dir, runners):  # noqa: F811
    reference, others = runners
    dataset = labelled_folder(digits_dir, num_classes=10)
    with pytest.raises(ToleranceError, match="tolerance top1_diff: nan is not a finite number >= 0"):
        run_accuracy(reference, others, dataset, {"top1_diff": math.nan}, progress=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tolerance", "max_abs=nan"], "error: tolerance max_abs: nan is not a finite number >= 0"),
        (["--tolerance", "min_cosine=-1"], "error: tolerance min_cosine: -1.0 is not a finite number >= 0"),
        (["--name", "../../x"], "argument --name: expected a file stem without path separators"),
        (["--name", "sub/x"], "argument --name: expected a file stem without path separators"),
        (["--name", ".."], "argument --name: expected a file stem without path separators"),
        (["--resolution", "100000"], "argument --resolution: expected at most 1024, got 100000"),
        (["--workers", "0"], "argument --workers: expected a positive integer, got 0"),
        (["--workers", "100000"], "argument --workers: expected an integer within [1, 64], got 100000"),
    ],
)
def test_bad_report_options_are_refused_before_any_work(args, message, tmp_path):
    reports = tmp_path / "a" / "reports"
    started = time.monotonic()
    run = _cli("drift", "--synthetic", "2", "--preset", "lvvit_s", "--report-dir", str(reports), *args)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and time.monotonic() - started < 60
    assert [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")] == []


# -- report sets ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def five_class_report(digits_dir, runners, tmp_path_factory):  # noqa: F811
    """A real accuracy report on class folders 0..4 of a 10-class model: its per-class plot cannot be drawn."""
    folder = tmp_path_factory.mktemp("five")
    for digit in range(5):
        (folder / str(digit)).mkdir()
        for path in sorted((digits_dir / "train" / str(digit)).iterdir())[:6]:
            shutil.copy(path, folder / str(digit) / path.name)
    reference, others = runners
    return run_accuracy(reference, others, labelled_folder(folder, num_classes=10), batch_size=32, progress=False)


def test_a_plot_that_cannot_be_drawn_is_named_and_the_set_replaces_the_older_one(five_class_report, tmp_path):
    _older_set(tmp_path, "run")
    written = write_reports(five_class_report, tmp_path, "run")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["run.html", "run.json", "run.md", "run_accuracy.png"], names  # the older classes figure went too
    assert sorted(written) == ["html", "json", "markdown", "png:accuracy"]
    markdown = (tmp_path / "run.md").read_text()
    assert "Figure 'Per-class top-1' (classes) could not be drawn: ValueError" in markdown
    assert json.loads((tmp_path / "run.json").read_text())["inputs"]["images_evaluated"] == 30


def test_a_failed_write_leaves_the_older_set_untouched(five_class_report, tmp_path, monkeypatch):
    older = _older_set(tmp_path, "run")
    import validation.reports.write as report

    def broken(*args):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(report, "to_html", broken)
    with pytest.raises(RuntimeError, match="renderer broke"):
        write_reports(five_class_report, tmp_path, "run")
    assert _contents(tmp_path) == older


def test_a_full_disk_leaves_the_older_set_untouched(five_class_report, tmp_path):
    older = _older_set(tmp_path / "reports", "run")
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(five_class_report.to_json()))
    result = run_bounded(
        f"""
        import json, resource, signal
        from validation.reports.write import write_reports
        report = json.loads(open({str(saved)!r}).read())
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # the JSON fits, the figures do not
        write_reports(report, {str(tmp_path / "reports")!r}, "run")
        """,
        timeout_s=60,
    )
    assert result.error_type == "OutputPathError", result.output
    assert f"{tmp_path / 'reports'}: cannot write (File too large); nothing was replaced" in result.message
    assert _contents(tmp_path / "reports") == older


def test_a_report_with_null_limits_renders(five_class_report, tmp_path):
    """NaN never reaches the renderer from a run; a JSON file from elsewhere may hold null (NaN) limits."""
    data = json.loads(json.dumps(five_class_report.to_json()))
    data["tolerance"] = {"top1_diff": None}
    data["runtimes"]["ort"]["gate"][0]["limit"] = None
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    run = _cli("report", str(path))
    assert run.returncode == 0, run.stderr
    assert "| top1_diff | <= - |" in (tmp_path / "edited.md").read_text()


def test_odd_report_files_are_refused_in_bounded_time(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"kind": "accuracy", "inputs": {}}))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.json"
    with huge.open("wb") as file:
        file.truncate(65 << 20)  # sparse: no disk used
    for path, message in (
        (huge, "huge.json: larger than 64 MiB; not a report of this kit"),
        (deep, "deep.json: cannot read the JSON report (RecursionError"),
        (partial, "error: the accuracy report lacks or garbles a field the pages need (KeyError"),
        (fifo, "fifo.json: not a regular file"),
    ):
        started = time.monotonic()
        run = _cli("report", str(path))
        assert run.returncode == 2 and message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr and time.monotonic() - started < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.json", "fifo.json", "huge.json", "partial.json"]


# -- interrupts ------------------------------------------------------------------------------------------------------


def _every_digit(digits_dir, path):
    """A label file of all the digits, held-out and training images, for a run long enough to interrupt."""
    lines = [
        f"train/{image.parent.name}/{image.name} {image.parent.name}" for image in (digits_dir / "train").glob("*/*")
    ]
    path.write_text((digits_dir / "val_list.txt").read_text() + "\n".join(sorted(lines)) + "\n")
    return path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_accuracy_run_exits_cleanly_and_keeps_the_older_reports(
    sig,
    digits_dir,  # noqa: F811
    digits_onnx,  # noqa: F811
    tmp_path,
):
    tmpdir, reports = tmp_path / "tmp", tmp_path / "reports"
    tmpdir.mkdir()
    older = _older_set(reports, "run")
    every = _every_digit(digits_dir, tmp_path / "every_digit.txt")  # 1,797 images: seconds of work, not one
    process = subprocess.Popen(
        [sys.executable, "-m", "validation", "accuracy", "--images", str(digits_dir), "--labels", str(every),
         *digits.cli_model_args(), "--onnx", str(digits_onnx), "--runtime", "ort", "--report-dir", str(reports),
         "--name", "run", "--batch-size", "1", "--workers", "1", "--shard-size", "5000"],
        cwd=ROOT,
        env=dict(os.environ, TMPDIR=str(tmpdir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    seen = b""
    deadline = time.monotonic() + 120
    while b"accuracy:" not in seen and time.monotonic() < deadline:  # the progress bar: images are being read
        chunk = os.read(process.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
    time.sleep(1)  # 4 s of work on a 2-core Zen 5 (450 images, 1.7 s, raced a faster CPU to the end): mid-run
    process.send_signal(sig)
    stdout, rest = process.communicate(timeout=60)
    stderr = (seen + rest).decode(errors="replace")
    assert process.returncode == 128 + sig, stderr
    last = stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert last == (
        f"interrupted by {signal.Signals(sig).name}: no report written (older reports in {reports} are untouched); "
        f"models exported before the interrupt stay in {reports / 'models'}; finished shards stay in "
        f"{reports / 'run.shards'}, for the same command to resume"
    )
    assert "Traceback" not in stderr and "FatalError" not in stderr and b"PASSED" not in stdout
    assert {k: v for k, v in _contents(reports).items() if k != "run.shards"} == older
    assert [p.name for p in (reports / "run.shards").iterdir()] == ["run.json"]  # its one shard was not finished
    assert [p.name for p in tmpdir.rglob("*") if p.name != ".ses"] == []
