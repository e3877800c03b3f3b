"""`python -m validation ov-layers`: the per-layer execution report shows which matrix layers ran in int8."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY


@pytest.fixture(scope="module")
def int8_files(photo_folder, tmp_path_factory):  # noqa: F811
    from exporters.onnx import FastPath, export_onnx

    folder = tmp_path_factory.mktemp("ov_layers")
    files = {}
    for target in ("vnni", "avx2"):
        fast = FastPath(quantize="int8", calibration=photo_folder, calibration_count=4, int8_target=target)
        files[target] = export_onnx("lvvit_s", resolution=32, output=folder, fast=fast, log=lambda m: None,
                                    verify=False, **TINY).path  # fmt: skip
    return files


def test_openvino_report_shows_the_linear_layers_in_int8_or_in_f32_by_target(int8_files):
    from validation.checks.ov_layers import openvino_layers, summarize

    for target, path in int8_files.items():
        layers = openvino_layers(path, batch=2, threads=1, runs=1)
        convolutions = [layer for layer in layers if layer.node_type == "Convolution"]
        linear = [layer for layer in layers if layer.node_type.startswith("FullyConnected")]
        assert len(convolutions) == 4 and all(layer.precision in ("I8", "U8") for layer in convolutions), target
        # TINY: 2 blocks x (q, k, v, proj, fc1, fc2) + the two heads, however OpenVINO splits or names them
        assert len(linear) >= 2 * 4 + 2
        int8 = {layer.precision in ("I8", "U8") for layer in linear}
        assert int8 == ({True} if target == "vnni" else {False}), [(x.name, x.exec_type) for x in linear]
        summary = summarize(str(path), "openvino", layers)
        float_linear = [f"{x.name} ({x.exec_type})" in summary.float_matrix for x in linear]
        assert set(float_linear) == {target == "avx2"}
        assert summary.total_ms == pytest.approx(sum(layer.ms for layer in layers))


def test_the_cli_profiles_both_runtimes_and_writes_every_layer(int8_files, tmp_path):
    out = tmp_path / "layers.json"
    cmd = [sys.executable, "-m", "validation", "ov-layers", str(int8_files["vnni"]), "--runtime", "openvino",
           "--runtime", "ort", "--batch-size", "2", "--threads", "1", "--repeats", "1", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"### {int8_files['vnni'].name} on openvino" in proc.stdout and "on ort:" in proc.stdout
    report = json.loads(out.read_text())
    assert [s["runtime"] for s in report["summaries"]] == ["openvino", "ort"]
    ort_types = {layer["node_type"] for layer in report["layers"][f"ort:{int8_files['vnni']}"]}
    assert ort_types & {"MatMulIntegerToFloat", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul",
                        "QuantizeLinear", "DequantizeLinear", "MatMul"}  # fmt: skip
    missing = subprocess.run([sys.executable, "-m", "validation", "ov-layers", str(tmp_path / "nope.onnx")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "no such file: " in missing.stderr


def test_the_float_parts_of_an_int8_file_run_in_bf16_only_where_the_cpu_has_it(int8_files):
    """`--openvino-precision bf16`: the linear layers an avx2 file leaves in float run in bf16 kernels, the int8
    convolutions stay int8; on a CPU without native bf16 OpenVINO's refusal is said, not profiled as f32."""
    from lvvit.common.cpuinfo import has_native_bf16
    from runtimes.errors import DeviceUnavailableError
    from validation.checks.ov_layers import profile, render

    if not has_native_bf16():
        with pytest.raises(DeviceUnavailableError, match="precision='bf16'"):
            profile([int8_files["avx2"]], batch=2, threads=1, runs=1, openvino_precision="bf16")
        return
    summaries, layers = profile([int8_files["avx2"]], batch=2, threads=1, runs=1, openvino_precision="bf16")
    assert summaries[0].precision == "bf16" and f"{int8_files['avx2'].name} on openvino at bf16:" in render(summaries)
    found = layers[f"openvino:{int8_files['avx2']}"]
    linear = {x["exec_type"].rsplit("_", 1)[-1].upper() for x in found if x["node_type"].startswith("FullyConnected")}
    convolutions = {x["exec_type"].rsplit("_", 1)[-1].upper() for x in found if x["node_type"] == "Convolution"}
    assert linear == {"BF16"} and convolutions <= {"I8", "U8"}
