"""`validation` without a model: label files, folders, odd images, the bounded stream, metrics, gates, reports."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from lvvit.common.gate import check_gate
from lvvit.common.metrics import accuracy_summary, drift_stats, topk
from lvvit.presets import PreprocessConfig
from tests.conftest import ROOT
from validation.cli.options import parse_arch
from validation.core import gate
from validation.core.data import Sample, image_folder, labelled_folder, parse_label_file, stream_batches
from validation.errors import DatasetError, GateFailure, LabelFileError, ToleranceError

CONFIG = PreprocessConfig(input_size=32, crop_pct=0.9)


def _digit_like(seed: int = 0, size: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def write_odd_images(folder) -> dict[str, str]:
    """Three unreadable files and four odd-but-valid ones; returns file name -> what it is."""
    folder.mkdir(parents=True, exist_ok=True)
    base = _digit_like(1)
    (folder / "zero_bytes.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    base.save(buffer, format="JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "text.jpg").write_text("this is not a JPEG, it is a text file with the wrong name\n")
    base.convert("L").save(folder / "gray.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    base.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257).save(folder / "deep16.png")
    assert Image.open(folder / "deep16.png").mode.startswith("I;16")
    return {
        "zero_bytes.jpg": "unreadable",
        "truncated.jpg": "unreadable",
        "text.jpg": "unreadable",
        "gray.png": "ok",
        "rgba.png": "ok",
        "cmyk.jpg": "ok",
        "deep16.png": "ok",
    }


# -- label files and folders ---------------------------------------------------------------------------------------


def test_label_file_names_every_bad_line(tmp_path):
    _digit_like().save(tmp_path / "a.png")
    _digit_like().save(tmp_path / "b.png")
    (tmp_path / "val_list.txt").write_text(
        "a.png 1\n\nb.png\nmissing.png 2\nb.png x\nb.png -3\nb.png 12\na.png 4\nb.png 0\n"
    )
    with pytest.raises(LabelFileError) as caught:
        labelled_folder(tmp_path, num_classes=10)
    message = str(caught.value)
    assert "6 bad line(s)" in message
    assert "line 3: 'b.png': expected '<relative/path> <label>'" in message
    assert "line 4: 'missing.png 2': no such file" in message
    assert "line 5: 'b.png x': label 'x' is not a class id (decimal digits)" in message
    assert "line 6: 'b.png -3': label '-3' is not a class id (decimal digits)" in message
    assert "line 7: 'b.png 12': label 12 is not a class id" in message
    assert "line 8: 'a.png 4': duplicate of line 1" in message
    assert "--skip-bad-lines" in message
    dataset = labelled_folder(tmp_path, num_classes=10, skip_bad_lines=True)
    assert [(s.name, s.label) for s in dataset.samples] == [("a.png", 1), ("b.png", 0)]
    assert [b.line for b in dataset.bad_lines] == [3, 4, 5, 6, 7, 8]


def test_label_file_paths_are_relative_to_the_data_folder_and_may_hold_spaces(tmp_path):
    (tmp_path / "val").mkdir()
    _digit_like().save(tmp_path / "val" / "my image.png")
    (tmp_path / "list.txt").write_text("val/my image.png 7\n")
    samples, bad = parse_label_file(tmp_path / "list.txt")  # no root: the label file's folder
    assert bad == [] and samples[0].label == 7 and samples[0].path == tmp_path / "val" / "my image.png"
    samples, _ = parse_label_file(tmp_path / "list.txt", root=tmp_path)
    assert samples[0].path == tmp_path / "val" / "my image.png"


def test_empty_or_unlabelled_folders_fail_with_what_was_expected(tmp_path):
    with pytest.raises(DatasetError, match="neither a val_list.txt .* nor one sub-folder per class"):
        labelled_folder(tmp_path)
    with pytest.raises(DatasetError, match="no such data folder"):
        labelled_folder(tmp_path / "nope")
    (tmp_path / "val_list.txt").write_text("\n\n")
    with pytest.raises(LabelFileError, match="lists no images"):
        labelled_folder(tmp_path)
    with pytest.raises(DatasetError, match="holds no image files"):
        image_folder(tmp_path)


def test_class_folders_are_numbered_in_sorted_order_and_non_images_listed(tmp_path):
    for name in ("cat", "ant", "bee"):
        (tmp_path / name).mkdir()
        _digit_like().save(tmp_path / name / f"{name}.png")
    (tmp_path / "bee" / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("about these images")
    dataset = labelled_folder(tmp_path)
    assert dataset.kind == "class-folders" and dataset.classes == ["ant", "bee", "cat"]
    assert [(s.name, s.label) for s in dataset.samples] == [("ant/ant.png", 0), ("bee/bee.png", 1), ("cat/cat.png", 2)]
    assert [(s.name, s.reason) for s in dataset.skipped] == [
        ("README", "not inside a class folder"),
        ("bee/notes.txt", "not an image file name (suffix)"),
    ]
    with pytest.raises(DatasetError, match="3 class folders but the model has 2 classes"):
        labelled_folder(tmp_path, num_classes=2)
    assert len(dataset.limited(2).samples) == 2
    with pytest.raises(DatasetError, match="--limit must be a positive"):
        dataset.limited(0)


def test_limit_keeps_every_class_of_a_folder_sorted_by_class(tmp_path):
    """`--limit N` on class folders: its first N images would be the first class, and the accuracy report would
    stand for one class."""
    for name in ("ant", "bee", "cat"):
        (tmp_path / name).mkdir()
        for i in range(5):
            _digit_like().save(tmp_path / name / f"{i}.png")
    dataset = labelled_folder(tmp_path)
    assert [s.name for s in dataset.limited(3).samples] == ["ant/0.png", "bee/0.png", "cat/0.png"]
    assert sorted({s.label for s in dataset.limited(6).samples}) == [0, 1, 2]
    assert dataset.limited(99).samples == dataset.samples


# -- the stream ----------------------------------------------------------------------------------------------------


def test_odd_images_are_listed_and_the_rest_is_kept(tmp_path):
    kinds = write_odd_images(tmp_path / "odd")
    (tmp_path / "odd" / "README.md").write_text("a non-image file")
    dataset = image_folder(tmp_path / "odd")
    assert [s.name for s in dataset.skipped] == ["README.md"]
    batches = list(stream_batches(dataset.samples, CONFIG, batch_size=3, workers=2, progress=False))
    kept = [s.name for b in batches for s in b.samples]
    failed = {f.name: f.reason for b in batches for f in b.failures}
    assert sorted(kept) == sorted(k for k, v in kinds.items() if v == "ok")
    assert set(failed) == {k for k, v in kinds.items() if v == "unreadable"}
    assert "not an image" in failed["text.jpg"] and "not an image" in failed["zero_bytes.jpg"]
    assert "truncated" in failed["truncated.jpg"]
    for batch in batches:
        assert batch.inputs.shape == (len(batch.samples), 3, 32, 32) and batch.inputs.dtype == np.float32
        assert np.isfinite(batch.inputs).all()


def test_stream_keeps_order_and_reads_a_bounded_number_ahead(tmp_path, monkeypatch):
    """A 5,000-image run never holds more than (prefetch + 1) batches of decoded images."""
    import validation.core.data as data

    lock = threading.Lock()
    started = [0]

    def counting_load(sample, config):
        with lock:
            started[0] += 1
        return np.full((3, 32, 32), sample.label, dtype=np.float32)

    monkeypatch.setattr(data, "_load", counting_load)
    samples = [Sample(tmp_path / f"{i}.png", f"{i}.png", i) for i in range(5000)]
    batch_size, prefetch = 64, 2
    consumed = 0
    for batch in stream_batches(samples, CONFIG, batch_size, workers=4, prefetch=prefetch, progress=False):
        assert started[0] - consumed <= (prefetch + 1) * batch_size
        assert batch.labels.tolist() == list(range(consumed, consumed + len(batch.samples)))
        assert (batch.inputs[:, 0, 0, 0] == batch.labels).all()
        consumed += len(batch.samples)
    assert consumed == 5000


# -- metrics -------------------------------------------------------------------------------------------------------


def test_drift_stats_of_identical_and_perturbed_logits():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 3, (20, 10)).astype(np.float32)
    same = drift_stats(ref, ref.copy())
    assert same.max_abs == 0 and same.min_cosine == pytest.approx(1.0) and same.top1_agreement == 1.0
    assert same.max_kl == 0 and same.top5_overlap == 1.0 and same.histogram["zero"] == 200
    noisy = ref + rng.normal(0, 1e-3, ref.shape).astype(np.float32)
    stats = drift_stats(ref, noisy)
    diff = np.abs(noisy.astype(np.float64) - ref)
    assert stats.max_abs == pytest.approx(diff.max()) and stats.mean_abs == pytest.approx(diff.mean())
    assert stats.p99_abs == pytest.approx(np.percentile(diff.max(axis=1), 99))  # over images: shards merge exactly
    assert 0 < stats.mean_kl <= stats.max_kl < 1e-5 and stats.min_cosine > 0.99999
    assert sum(stats.histogram["counts"]) + stats.histogram["zero"] == 200
    assert stats.worst[0]["max_abs"] == pytest.approx(diff.max(axis=1).max())


def test_top1_flips_are_told_apart_from_near_ties():
    ref = np.array([[5.0, 4.9999, 0.0], [5.0, 1.0, 0.0]])
    tie = np.array([[4.9999, 5.0, 0.0], [5.0, 1.0, 0.0]])  # a flip within the error: near-tie
    flip = np.array([[5.0, 4.9999, 0.0], [1.0, 5.0, 0.0]])  # a real flip
    excused = drift_stats(ref, tie, tie_rel=1e-3)  # allowed error 5e-3 on image 0: its 1e-4 margin is a tie
    assert excused.near_ties == 1 and excused.top1_disagreements == 1 and excused.top1_agreement == 0.5
    assert drift_stats(ref, tie).near_ties == 0  # no tolerance given: nothing is excused
    assert drift_stats(ref, tie, tie_abs=1e-5).near_ties == 0
    real = drift_stats(ref, flip, tie_rel=1e-3)
    assert real.top1_disagreements == 1 and real.near_ties == 0 and real.top1_agreement == 0.5
    assert gate.DRIFT_LIMITS["top1_agreement"].value_of(excused.to_dict()) == 1.0
    assert gate.DRIFT_LIMITS["top1_agreement"].value_of(real.to_dict()) == 0.5


def test_accuracy_summary():
    labels = np.array([0, 1, 2, 3, 1, 1])
    ref = topk(np.eye(4)[[0, 1, 2, 3, 0, 1]] * 5.0, 5)
    other = topk(np.eye(4)[[0, 1, 2, 3, 1, 1]] * 5.0, 5)
    summary = accuracy_summary(other, labels, 4, seconds=0.3, reference_top5=ref)
    assert accuracy_summary(ref, labels, 4)["top1"] == pytest.approx(500 / 6)
    assert summary["top1"] == 100.0 and summary["top1_diff"] == pytest.approx(100 / 6)
    assert summary["agreement"] == pytest.approx(500 / 6) and summary["disagreements"] == 1
    assert summary["per_class_top1"] == [100.0, 100.0, 100.0, 100.0]
    assert summary["images_per_second"] == pytest.approx(20.0)
    assert topk(np.array([[1.0, 3.0, 2.0]]), 5).tolist() == [[1, 2, 0]]


# -- gates and options ---------------------------------------------------------------------------------------------


def test_tolerance_parsing():
    parsed = gate.parse_tolerance(["max_abs=1e-4", "min_cosine=none"], gate.DRIFT_LIMITS, {"min_cosine": 0.9})
    assert parsed == {"max_abs": 1e-4}
    with pytest.raises(ToleranceError, match="unknown tolerance 'max_abss'; valid: max_abs, p99_abs"):
        gate.parse_tolerance(["max_abss=1"], gate.DRIFT_LIMITS, {})
    with pytest.raises(ToleranceError, match="'abc' is not a number"):
        gate.parse_tolerance(["max_abs=abc"], gate.DRIFT_LIMITS, {})
    with pytest.raises(ToleranceError, match="expected NAME=VALUE"):
        gate.parse_tolerance(["max_abs"], gate.DRIFT_LIMITS, {})


def test_gate_failure_carries_the_numbers():
    stats = {"top1_diff": -0.4, "agreement": 99.1}
    checks = [c.to_dict() for c in check_gate(gate.ACCURACY_LIMITS, gate.DEFAULT_ACCURACY_TOLERANCE, stats)]
    assert [c["passed"] for c in checks] == [False, False]
    with pytest.raises(GateFailure, match=r"ort: top1_diff = 0.4 \(limit <= 0.2\); agreement = 99.1 \(limit >= 99.5\)"):
        gate.raise_if_failed(_accuracy_report_with(checks))


def _accuracy_report_with(checks):
    """The accuracy report kept in tests/data/reports, its runtime's gate checks replaced by `checks`."""
    from validation.reports.types import AccuracyReport

    data = json.loads((ROOT / "tests" / "data" / "reports" / "accuracy_digits.json").read_text())
    data["runtimes"]["ort"]["gate"] = checks
    return AccuracyReport.from_json(data)


def test_arch_overrides_are_typed():
    assert parse_arch(["embed_dim=32,depth=2", "mlp_ratio=3.5", "qkv_bias=true", "stem=4_2"]) == {
        "embed_dim": 32,
        "depth": 2,
        "mlp_ratio": 3.5,
        "qkv_bias": True,
        "stem": "4_2",
    }


def test_cli_help_and_usage_errors():
    run = subprocess.run([sys.executable, "-m", "validation", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0 and all(c in run.stdout for c in ("drift", "accuracy", "report"))
    run = subprocess.run(
        [sys.executable, "-m", "validation", "report", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 2 and "cannot read the JSON report" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "validation", "accuracy", "--images", str(ROOT), "--preset", "lvvit_s"]
        + ["--arch", "depth=x2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 2 and "--arch depth='x2': expected int, like 16" in run.stderr


def test_report_command_refuses_other_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"kind": "recipe"}))
    run = subprocess.run(
        [sys.executable, "-m", "validation", "report", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == 2 and "not a validation report (kind 'recipe'" in run.stderr
