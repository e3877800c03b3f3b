"""`python -m validation locate`: a planted fault is found at its block; a clean export has no stage over."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from exporters.onnx import FastPath, export_onnx
from exporters.onnx.stage_map import Mapped, Unmapped, map_stages, stage_names
from lvvit import resolve_preset
from tests.conftest import ROOT, TINY
from validation import DriftInputs, ModelSource
from validation.reports.locate import summary_line
from validation.run.locate import LocateSettings, run_locate

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
    typed = _locate(clean_onnx, ("ort", "openvino"))
    report = typed.to_json()
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
    typed = _locate(faulty_onnx, ("ort", "openvino"))
    report = typed.to_json()
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
            "--report-dir",
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
    typed = _locate(renamed)
    report = typed.to_json()
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
    typed = _locate(fp16)
    report = typed.to_json()
    stages = report["runtimes"]["ort"]["stages"]
    assert report["export"]["metadata"]["precision"] == "fp16"
    for block in ("blocks.0", "blocks.1", "blocks.2"):
        assert not stages[block]["mapped"] and "fused SkipLayerNormalization" in stages[block]["reason"]
    assert stages["norm"]["mapped"] and "SkipLayerNormalization" in stages["norm"]["how"]
    for stage in ("stem", "norm", "head", "output"):  # half precision: about three significant digits
        assert 1e-6 < stages[stage]["max_rel"] < 2e-2 and stages[stage]["min_cosine"] > 0.9999


@pytest.mark.parametrize(
    ("weight", "scale", "block"),
    [("blocks.1.mlp.fc2.weight", 1.02, "blocks.1"), ("blocks.0.attn.proj.weight", 1.01, "blocks.0")],
)
def test_a_mild_fault_is_named_at_its_block_though_a_later_norm_crosses_the_threshold(
    clean_onnx, tmp_path, weight, scale, block
):
    """One weight scaled by 1-2%: the error jumps at its block but stays under 1e-3; the final LayerNorm carries it
    over the threshold, where the threshold alone would blame the norm."""
    mild = tmp_path / "mild.onnx"
    _with_weights(clean_onnx, mild, lambda name, w: w * scale if name == weight else None)
    typed = _locate(mild, ("ort", "openvino"))
    report = typed.to_json()
    assert not report["passed"] and report["tolerance"] == {"max_rel": 1e-3}
    order = report["stages"]
    for name in ("ort", "openvino"):
        entry = report["runtimes"][name]
        stages = entry["stages"]
        assert entry["first_jump"] == block, (name, entry["first_jump"])
        assert stages[block]["max_rel"] < 1e-3 and stages[block]["growth"] > 30
        assert order.index(entry["first_over"]) > order.index(block)  # the threshold alone blames a later stage
        assert [s for s in order if stages[s]["jump"]] == [block] and entry["doubtful"] == []
        line = summary_line(typed, name)
        assert line.startswith(f"first divergent stage: {block}")
        assert f"first stage over the threshold: {entry['first_over']}" in line


def _swap_names(source, target, a: str, b: str) -> None:
    """Rename `a` to `b` and `b` to `a` everywhere: the graph computes the same, its names now lie."""
    proto = onnx.load(str(source))
    swap = {a: b, b: a}
    for init in proto.graph.initializer:
        init.name = swap.get(init.name, init.name)
    for node in proto.graph.node:
        node.input[:] = [swap.get(i, i) for i in node.input]
    onnx.save(proto, str(target))


def test_swapped_initializer_names_make_a_doubtful_mapping_not_a_blamed_block(clean_onnx, tmp_path):
    import onnxruntime as ort

    swapped = tmp_path / "swapped.onnx"
    _swap_names(clean_onnx, swapped, "blocks.1.norm1.weight", "blocks.2.norm1.weight")
    x = np.random.default_rng(0).standard_normal((2, 3, RES, RES)).astype(np.float32)
    same = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
            for p in (clean_onnx, swapped)]  # fmt: skip
    np.testing.assert_array_equal(*same)  # drift cannot see it
    typed = _locate(swapped)
    report = typed.to_json()
    entry = report["runtimes"]["ort"]
    assert entry["first_over"] is None and entry["first_jump"] is None and report["passed"]
    assert entry["doubtful"] == ["blocks.0", "blocks.1"]
    assert "matches Paddle's blocks.1" in entry["stages"]["blocks.0"]["doubtful"]
    assert "look swapped" in entry["stages"]["blocks.1"]["doubtful"]
    assert not entry["stages"]["blocks.2"]["doubtful"]
    assert "doubtful mapping, not blamed: blocks.0, blocks.1" in summary_line(typed, "ort")


def test_a_weight_of_another_shape_makes_the_mapping_doubtful():
    from validation.run.locate import _doubt

    where = Mapped("t", "input of blocks.1.norm1.weight", "blocks.1.norm1.weight", (32,))
    closest = {"blocks.0": ("blocks.0", 1e-7, 1e-7)}
    reason = _doubt("blocks.0", where, closest, {"blocks.1.norm1.weight": (64,)})
    assert reason == "the graph's blocks.1.norm1.weight has shape [32], Paddle's [64]"
    assert _doubt("blocks.0", where, closest, {"blocks.1.norm1.weight": (32,)}) is None


@pytest.fixture(scope="module")
def int8_onnx(clean_onnx, tmp_path_factory):
    pytest.importorskip("nncf")
    pytest.importorskip("skimage")
    from validation.datasets.photos import write_sample_photos

    photos = tmp_path_factory.mktemp("photos")
    write_sample_photos(photos, variants=1)
    fast = FastPath(quantize="int8", calibration=photos, calibration_count=4, min_int8_agreement=0.0)
    return export_onnx("lvvit_s", resolution=RES, output=clean_onnx.parent, fast=fast, log=lambda m: None, **ARCH).path


def test_every_runtime_calls_an_int8_file_int8(int8_onnx, clean_onnx):
    pytest.importorskip("openvino")
    from runtimes import OpenVinoPredictor, OrtPredictor

    for path, precision in ((int8_onnx, "int8"), (clean_onnx, "fp32")):
        with OpenVinoPredictor(path) as ov, OrtPredictor(path) as ort:
            assert ov.describe()["precision"] == ort.describe()["precision"] == precision, path
            assert ov.describe()["inference_precision_hint"] == "fp32"  # what OpenVINO was asked for its float parts


def test_locate_judges_an_int8_file_by_the_int8_limits(int8_onnx):
    from validation.run.locate import STAGE_TOLERANCE_BY_PRECISION

    pytest.importorskip("openvino")
    typed = _locate(int8_onnx, ("ort", "openvino"))
    report = typed.to_json()
    entry = report["runtimes"]["ort"]
    assert report["export"]["precision"] == "int8" and entry["describe"]["precision"] == "int8"
    assert report["tolerance"] == STAGE_TOLERANCE_BY_PRECISION["int8"] and report["tolerance_source"] == "int8 default"
    assert not entry["stages"]["stem"]["over"] and entry["first_over"] is None
    assert entry["stages"]["stem"]["max_rel"] > 1e-3  # int8 did move it, by more than the fp32 limit
    assert entry["first_jump"] is None  # int8's rounding is no fault
    # OpenVINO reads the stem from a compile of its own: with it exposed beside the blocks, its int8 blocks broke
    ov = report["runtimes"]["openvino"]
    assert ov["describe"]["precision"] == "int8" and ov["instrumentation"]["trusted"]
    assert all(ov["stages"][s]["min_cosine"] > 0.9 for s in ("stem", "blocks.0", "blocks.1", "blocks.2", "norm"))


def _drift(onnx_path, report_dir, *runtimes: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "validation", "drift", *ARCH_ARGS, "--onnx", str(onnx_path), "--synthetic", "4",
         *(a for r in runtimes for a in ("--runtime", r)), "--report-dir", str(report_dir), "--no-progress"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip


def test_fp32_then_int8_drift_in_one_folder_keep_apart_and_int8_is_judged_as_int8(clean_onnx, int8_onnx, tmp_path):
    pytest.importorskip("openvino")
    from lvvit.common.gate import default_drift_tolerance

    first = _drift(clean_onnx, tmp_path, "ort")
    assert first.returncode == 0, first.stderr
    second = _drift(int8_onnx, tmp_path, "ort", "openvino")
    assert second.returncode in (0, 1), second.stderr  # the int8 gate's verdict, not a clash of names
    assert json.loads((tmp_path / f"drift_lvvit_s_{RES}.json").read_text())["passed"]
    report = json.loads((tmp_path / f"drift_lvvit_s_{RES}_int8.json").read_text())
    for name in ("ort", "openvino"):
        entry = report["runtimes"][name]
        assert entry["describe"]["precision"] == "int8" and entry["tolerance"] == default_drift_tolerance("int8")
    # another fp32 file of the same model takes the same default name: the refusal says how to keep both
    other = tmp_path / "other.onnx"
    _with_weights(clean_onnx, other, lambda name, w: w * 1.5 if name == "head.weight" else None)
    third = _drift(other, tmp_path, "ort")
    assert third.returncode == 2 and "give this run another --name" in third.stderr, third.stderr


def test_default_report_names_take_only_name_characters_from_a_files_metadata(clean_onnx, tmp_path):
    from validation.cli.options import export_tags

    proto = onnx.load(str(clean_onnx))
    for prop in proto.metadata_props:
        if prop.key == "lvvit.graph":
            prop.value = "../../evil graph"  # the metadata may come from a stranger
    odd = tmp_path / "odd.onnx"
    onnx.save(proto, str(odd))
    assert export_tags(None) == [] and export_tags(clean_onnx) == []  # the kit's own fp32 export: the plain name
    assert export_tags(odd) == ["..-..-evil-graph"]
