"""`python -m validation locate`: a planted fault is found at its block; a clean export has no stage over."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from exporters.onnx import export_onnx
from exporters.onnx.stage_map import Mapped, Unmapped, map_stages, stage_names
from lvvit import resolve_preset
from validation import DriftInputs, ModelSource
from validation.locate import LocateSettings, run_locate

from .conftest import ROOT, TINY

RES = 32
ARCH = {**TINY, "depth": 3}  # three blocks: a fault in the middle one has a clean stage before and after it
ARCH_ARGS = ["--preset", "lvvit_s", "--resolution", str(RES), "--arch", ",".join(f"{k}={v}" for k, v in ARCH.items())]


@pytest.fixture(scope="module")
def clean_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("locate") / "tiny.onnx"
    return export_onnx("lvvit_s", resolution=RES, output=path, log=lambda m: None, **ARCH).path


def _with_weights(source, target, edit) -> None:
    proto = onnx.load(str(source))
    for init in proto.graph.initializer:
        replaced = edit(init.name, numpy_helper.to_array(init))
        if replaced is not None:
            init.CopyFrom(numpy_helper.from_array(replaced.astype(np.float32), init.name))
    onnx.save(proto, str(target))


@pytest.fixture(scope="module")
def faulty_onnx(clean_onnx):
    """The same export with block 1's second MLP layer perturbed (the metadata still names the same weights)."""
    path = clean_onnx.with_name("faulty.onnx")
    rng = np.random.default_rng(0)
    target = "blocks.1.mlp.fc2.weight"
    _with_weights(clean_onnx, path, lambda name, w: w + rng.normal(0, 0.05, w.shape) if name == target else None)
    return path


def _source(onnx_path) -> ModelSource:
    return ModelSource(spec=resolve_preset("lvvit_s", RES, **ARCH), onnx=onnx_path)


def _locate(onnx_path, runtimes=("ort",)) -> dict:
    settings = LocateSettings(runtimes=runtimes, batch_size=4, progress=False)
    return run_locate(_source(onnx_path), DriftInputs(synthetic=6), settings, log=lambda m: None)


def test_every_stage_of_the_exported_graph_is_mapped(clean_onnx):
    found = map_stages(onnx.load(str(clean_onnx)), depth=3)
    assert list(found) == stage_names(3) == ["stem", "blocks.0", "blocks.1", "blocks.2", "norm", "head", "aux_head",
                                             "output"]  # fmt: skip
    assert all(isinstance(m, Mapped) for m in found.values()), found
    assert found["output"].tensor == "logits" and "blocks.1.norm1.weight" in found["blocks.0"].how


def test_untouched_fp32_export_has_no_stage_over_the_threshold(clean_onnx):
    report = _locate(clean_onnx, ("ort", "openvino"))
    assert report["passed"] and report["stages"] == stage_names(3)
    for name in ("ort", "openvino"):
        entry = report["runtimes"][name]
        assert entry["first_over"] is None and entry["gate"] == []
        assert entry["instrumentation"]["trusted"]
        for stage in report["stages"]:
            stats = entry["stages"][stage]
            assert stats["mapped"] and not stats["over"], (name, stage)
            assert stats["max_rel"] < 1e-4 and stats["min_cosine"] > 0.99999


def test_planted_fault_is_named_as_the_first_divergent_stage(faulty_onnx):
    report = _locate(faulty_onnx, ("ort", "openvino"))
    assert not report["passed"]
    for name in ("ort", "openvino"):
        entry = report["runtimes"][name]
        assert entry["first_over"] == "blocks.1", name
        stages = entry["stages"]
        assert not stages["stem"]["over"] and not stages["blocks.0"]["over"]
        assert stages["blocks.0"]["max_rel"] < 1e-4 and stages["blocks.1"]["max_rel"] > 1e-2
        assert entry["gate"][0]["name"] == "blocks.1 max_rel" and not entry["gate"][0]["passed"]


def test_locate_cli_writes_the_report_set_and_exits_1_on_the_fault(faulty_onnx, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "validation", "locate", *ARCH_ARGS, "--onnx", str(faulty_onnx), "--synthetic", "4",
         "--report-dir", str(tmp_path), "--name", "fault", "--no-progress"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "first stage over the threshold: blocks.1" in run.stdout
    assert "FAILED" in run.stderr and "blocks.1 max_rel" in run.stderr
    report = json.loads((tmp_path / "fault.json").read_text())
    assert report["kind"] == "locate" and report["runtimes"]["ort"]["first_over"] == "blocks.1"
    assert report["inputs"]["type"] == "synthetic" and report["inputs"]["images"] == 4
    page = (tmp_path / "fault.md").read_text()
    assert "| blocks.1 |" in page and "FIRST" in page and (tmp_path / "fault_stages.png").stat().st_size > 1000
    assert "<html" in (tmp_path / "fault.html").read_text()
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "validation",
            "report",
            str(tmp_path / "fault.json"),
            "--output-dir",
            str(tmp_path / "again"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "fault.md").read_text() == page


def test_a_stage_the_graph_does_not_hold_is_reported_not_guessed(clean_onnx, tmp_path):
    """Without the final norm's state-dict name the last block and the norm cannot be found: the report says so."""
    renamed = tmp_path / "renamed.onnx"
    proto = onnx.load(str(clean_onnx))
    for init in proto.graph.initializer:
        if init.name == "norm.weight":
            init.name = "anonymous"
    for node in proto.graph.node:
        node.input[:] = ["anonymous" if i == "norm.weight" else i for i in node.input]
    onnx.save(proto, str(renamed))
    found = map_stages(onnx.load(str(renamed)), depth=3)
    assert isinstance(found["blocks.2"], Unmapped) and "norm.weight" in found["blocks.2"].reason
    report = _locate(renamed)
    stages = report["runtimes"]["ort"]["stages"]
    assert not stages["norm"]["mapped"] and "not in the graph" in stages["norm"]["reason"]
    assert stages["blocks.1"]["mapped"] and report["passed"]


def test_a_file_that_is_not_onnx_is_refused_with_its_name(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"\x00not a model at all")
    run = subprocess.run(
        [sys.executable, "-m", "validation", "locate", *ARCH_ARGS, "--onnx", str(bogus), "--report-dir",
         str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2 and "model.onnx" in run.stderr and "Traceback" not in run.stderr


def test_fp16_fused_graph_names_the_stages_it_hides(tmp_path):
    """The fp16 graph keeps ONNX Runtime's SkipLayerNormalization: no residual stream tensor, but the final norm's."""
    from exporters.onnx import FastPath

    fp16 = export_onnx("lvvit_s", resolution=RES, output=tmp_path, fast=FastPath(precision="fp16"),
                       log=lambda m: None, **ARCH).path  # fmt: skip
    report = _locate(fp16)
    stages = report["runtimes"]["ort"]["stages"]
    assert report["export"]["metadata"]["precision"] == "fp16"
    for block in ("blocks.0", "blocks.1", "blocks.2"):
        assert not stages[block]["mapped"] and "fused SkipLayerNormalization" in stages[block]["reason"]
    assert stages["norm"]["mapped"] and "SkipLayerNormalization" in stages["norm"]["how"]
    for stage in ("stem", "norm", "head", "output"):  # half precision: about three significant digits
        assert 1e-6 < stages[stage]["max_rel"] < 2e-2 and stages[stage]["min_cosine"] > 0.9999
