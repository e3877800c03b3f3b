"""`exporters.onnx`: the library function and the CLI, on tiny models (the real presets are in the slow tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from exporters.errors import ConversionError, VerificationError
from exporters.onnx import export_onnx, export_paddle_inference
from exporters.onnx.preflight import MEMORY_KEY
from lvvit import ResolutionError, UnknownPresetError, WeightsMismatchError, create_model
from lvvit.common.atomic import OutputPathError
from lvvit.metadata import ModelMetadata
from lvvit.synthetic import synthetic_batch
from tests.conftest import ROOT, TINY

RES = 64
QUIET = {"log": lambda message: None}


def _export(path, **kwargs):
    return export_onnx("lvvit_s", resolution=RES, output=path, **{**TINY, **QUIET, **kwargs})


def _run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exporters.onnx", *args], capture_output=True, text=True, cwd=ROOT, **kwargs
    )


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    return _export(path)


def test_metadata_round_trips_and_describes_everything(tiny_onnx):
    model = onnx.load(str(tiny_onnx.path))
    props = {p.key: p.value for p in model.metadata_props}
    parsed = ModelMetadata.from_props(props, str(tiny_onnx.path))
    assert parsed == tiny_onnx.metadata
    assert parsed.preset == "lvvit_s" and parsed.resolution == RES and parsed.batch is None and parsed.opset == 17
    assert parsed.preprocess.resize_size == 71 and parsed.preprocess.crop_pct == 0.9
    assert parsed.weights["source"] == "random-init" and parsed.weights["seed"] == 0
    for package in ("paddlepaddle", "paddle2onnx", "onnx"):
        assert parsed.versions[package][0].isdigit()
    assert "0.5 * max over patch tokens" in props["lvvit.output"]
    assert model.opset_import[0].version == 17
    assert [n.op_type for n in model.graph.node].count("LayerNormalization") == 2 * TINY["depth"] + 1


def test_verification_ran_at_batch_one_and_more(tiny_onnx):
    assert [c.batch for c in tiny_onnx.checks] == [1, 3]
    for check in tiny_onnx.checks:
        assert check.max_abs <= 1e-4 and check.top1_agreement == 1.0


def test_dynamic_batch_runs_at_1_3_and_8(tiny_onnx):
    session = ort.InferenceSession(str(tiny_onnx.path), providers=["CPUExecutionProvider"])
    model = create_model("lvvit_s", resolution=RES, **TINY)
    import paddle

    for batch in (1, 3, 8):
        x = synthetic_batch(batch, model.preset.preprocess, seed=batch)
        got = session.run(["logits"], {"image": x})[0]
        np.testing.assert_allclose(got, model(paddle.to_tensor(x)).numpy(), atol=1e-4)


def test_fixed_batch_rejects_other_sizes(tmp_path):
    result = _export(tmp_path / "fixed.onnx", batch=2)
    assert [c.batch for c in result.checks] == [2]
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, RES, RES]
    x = np.zeros((3, 3, RES, RES), np.float32)
    with pytest.raises(Exception, match=r"(?s)invalid dimensions.*image.*Got: 3.*Expected: 2"):
        session.run(None, {"image": x})


def _without_memory_record(path) -> bytes:
    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != MEMORY_KEY]
    assert len(kept) == len(proto.metadata_props) - 1  # the run's measured memory, the one part that varies
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    return proto.SerializeToString()


def test_two_exports_give_identical_models(tiny_onnx, tmp_path):
    again = _export(tmp_path / "again.onnx", verify=False)
    assert _without_memory_record(again.path) == _without_memory_record(tiny_onnx.path)


def test_the_file_records_the_exports_peak_memory(tiny_onnx):
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx.path)).metadata_props}
    record = json.loads(props[MEMORY_KEY])
    assert record == tiny_onnx.memory
    assert set(record["phases"]) >= {"build", "reference", "program", "convert", "verify"}
    assert set(record["seconds"]) == set(record["phases"]) - {"end"} and all(s >= 0 for s in record["seconds"].values())
    # the tree's peak is at least this process's RSS once Paddle and ONNX Runtime were loaded
    assert 200 * 2**20 < record["peak_tree_rss"] == max(record["phases"].values())
    assert record["weight_bytes"] == 4 * sum(int(np.prod(v.shape)) for v in create_model(
        "lvvit_s", resolution=RES, **TINY).state_dict().values())  # fmt: skip


def test_weights_provenance_is_recorded(tmp_path):
    from lvvit.weights.state_dict import save_state_dict

    weights = save_state_dict(create_model("lvvit_s", resolution=RES, seed=9, **TINY), tmp_path / "w.safetensors")
    result = _export(tmp_path / "weighted.onnx", weights=weights)
    assert result.metadata.weights["file_name"] == "w.safetensors"
    assert len(result.metadata.weights["sha256"]) == 64


def test_failed_verification_leaves_the_older_file_untouched(tiny_onnx, tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"an older good export")
    import exporters.onnx.verify as verify

    real = verify.compare

    def drifting(*args):
        check = real(*args)
        return type(check)(check.batch, 0.5, 0.1, 0.5, 0)

    monkeypatch.setattr(verify, "compare", drifting)
    with pytest.raises(
        VerificationError,
        match=r"model\.onnx.*\n  batch 1 \(synthetic\): max abs 0\.5, mean abs 0\.1, top-1 agreement 50",
    ):
        _export(target)
    assert target.read_bytes() == b"an older good export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_empty_conversion_is_detected(tmp_path, monkeypatch):
    import exporters.onnx.convert as convert

    monkeypatch.setattr(convert, "_convert_in_child", lambda *args: (0, "converter log"))  # exit 0, no model
    with pytest.raises(ConversionError, match="empty model .* while reporting success"):
        _export(tmp_path / "empty.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_installs_nothing(tmp_path, monkeypatch):
    launched = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):
        def __init__(self, args, *rest, **kwargs):
            launched.append(args)
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    monkeypatch.delenv("POLYGRAPHY_AUTOINSTALL_DEPS", raising=False)
    _export(tmp_path / "m.onnx")
    assert not [cmd for cmd in launched if "pip" in str(cmd)]
    assert "POLYGRAPHY_AUTOINSTALL_DEPS" not in os.environ
    from polygraphy import config

    assert config.AUTOINSTALL_DEPS is False


def test_clear_errors_before_anything_is_written(tmp_path):
    with pytest.raises(UnknownPresetError, match="valid presets: lvvit_s"):
        export_onnx("lvvit_xs", output=tmp_path, **QUIET)
    with pytest.raises(ResolutionError, match="resolution 100 is not a positive multiple of the patch size 16"):
        export_onnx("lvvit_s", resolution=100, output=tmp_path, **QUIET)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match=r"a_file/sub/m\.onnx: cannot write here"):
        _export(blocker / "sub" / "m.onnx")
    from lvvit.weights.state_dict import save_state_dict

    weights = save_state_dict(create_model("lvvit_s", resolution=RES, **TINY), tmp_path / "tiny.pdparams")
    with pytest.raises(WeightsMismatchError, match=r"tiny\.pdparams: the weights do not fit"):
        export_onnx("lvvit_s", weights=weights, output=tmp_path / "s.onnx", **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "tiny.pdparams"]


def test_paddle_inference_artifact(tmp_path):
    result = export_paddle_inference("lvvit_s", resolution=RES, output=tmp_path, **TINY, **QUIET)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["lvvit_s_64.json", "lvvit_s_64.lvvit.json", "lvvit_s_64.pdiparams"]
    assert result.metadata.graph == "paddle-inference"


def test_cli_help_documents_every_flag():
    result = _run_cli("--help")
    assert result.returncode == 0
    for flag in (
        "--preset",
        "--weights",
        "--resolution",
        "--batch",
        "--opset",
        "--output",
        "--no-verify",
        "--list-presets",
        "--format",
        "--atol",
        "--seed",
        "--checkpoint-key",
    ):
        assert flag in result.stdout


def test_cli_lists_presets_and_reports_errors():
    listed = _run_cli("--list-presets")
    assert listed.returncode == 0 and "lvvit_l_512" in listed.stdout and "150.66M" in listed.stdout
    missing = _run_cli()
    assert missing.returncode == 2 and "--preset is required" in missing.stderr
    unknown = _run_cli("--preset", "lvvit_xl")
    assert unknown.returncode == 2 and "unknown preset 'lvvit_xl'" in unknown.stderr
    odd = _run_cli("--preset", "lvvit_s", "--resolution", "300")
    assert odd.returncode == 2 and "not a positive multiple of the patch size 16" in odd.stderr
    bad_batch = _run_cli("--preset", "lvvit_s", "--batch", "0")
    assert bad_batch.returncode == 2 and "batch size must be at least 1" in bad_batch.stderr


def test_killed_export_leaves_no_file_at_the_target(tmp_path):
    target = tmp_path / "lvvit_s.onnx"
    target.write_bytes(b"older")
    process = subprocess.Popen(
        [sys.executable, "-m", "exporters.onnx", "--preset", "lvvit_s", "--output", str(target)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Kill it once it is converting, i.e. after the model is built.
    deadline = time.monotonic() + 120
    for line in process.stderr:
        if "[2/3]" in line or time.monotonic() > deadline:
            break
    time.sleep(2)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert target.read_bytes() == b"older"


def test_verification_runs_where_accuracy_control_measured(tiny_onnx):
    """`--control-runtime openvino` chooses the stages on OpenVINO: the gate judges the file there, and says so."""
    pytest.importorskip("openvino")
    from exporters.onnx.verify import Reference, Tolerance, verify_export

    x = synthetic_batch(3, create_model("lvvit_s", resolution=RES, **TINY).preset.preprocess)
    session = ort.InferenceSession(str(tiny_onnx.path), providers=["CPUExecutionProvider"])
    reference = Reference(x, session.run(None, {"image": x})[0])
    checks = verify_export(tiny_onnx.path, [reference], Tolerance(atol=1e-4), runtime="openvino")
    assert checks[0].top1_agreement == 1.0 and checks[0].max_abs < 1e-4  # OpenVINO f32 ran it
    shifted = Reference(x, reference.logits + np.eye(reference.logits.shape[1], dtype=np.float32)[[0, 1, 2]] * 0.5)
    with pytest.raises(VerificationError, match=r"tiny\.onnx: OpenVINO disagrees with Paddle beyond max abs"):
        verify_export(tiny_onnx.path, [shifted], Tolerance(atol=1e-4), runtime="openvino")
