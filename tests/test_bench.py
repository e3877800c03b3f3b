"""`python -m validation bench` on a tiny model: every path runs, ratios and drift are reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lvvit import get_preset
from lvvit.macs import count_macs
from validation.cpu_floor import CpuFloor, detect_cpu, has_native_bf16

from .conftest import ROOT


def test_lvvit_s_is_about_6_5_gmac():
    preset = get_preset("lvvit_s")
    assert count_macs(preset.arch, 224) / 1e9 == pytest.approx(6.55, abs=0.05)


def test_floor_arithmetic_is_shown():
    cpu = CpuFloor(cores=2, clock_ghz=2.5, fma_units=2, fp32_lanes=16, isa="AVX-512", model_name="x")
    assert cpu.peak_gfma_per_s == 160
    assert cpu.floor_ms(6_550_000_000) == pytest.approx(40.9, abs=0.1)
    assert "= 160 GFMA/s" in cpu.working(6_550_000_000) and "40.9 ms" in cpu.working(6_550_000_000)


def test_cpu_detection_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Intel(R) Xeon(R) CPU @ 3.10GHz\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n")
    cpu = detect_cpu(cores=4, cpuinfo=info)
    assert (cpu.clock_ghz, cpu.fp32_lanes, cpu.isa, cpu.cores) == (3.1, 16, "AVX-512", 4)
    assert has_native_bf16({"avx512_bf16"}) and not has_native_bf16({"avx2"})


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--batch-sizes", "1,x", "expected comma-separated positive integers, got '1,x'"),
        ("--batch-sizes", "8,0", "expected comma-separated positive integers, got '8,0'"),
        ("--repeats", "0", "expected a positive integer, got 0"),
        ("--settle-ms", "-5", "expected an integer >= 0, got '-5'"),
    ],
)
def test_bad_bench_options_are_named(capsys, flag, value, message):
    from validation.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "--preset", "lvvit_s", flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_bench_options_parse():
    from validation.cli import build_parser

    args = build_parser().parse_args(["bench", "--preset", "lvvit_s", "--batch-sizes", "1,8", "--settle-ms", "0"])
    assert args.batch_sizes == (1, 8) and args.settle_ms == 0 and args.repeats == 7


def test_fused_kernels_and_their_plain_expansions_agree(capsys):
    from validation.ort_fusions import compare_fusions, main

    timings = compare_fusions(batch=2, tokens=5, dim=16, hidden=32, repeats=2)
    assert [(t.fused, t.plain) for t in timings] == [
        ("SkipLayerNormalization", "Add+Add+LayerNormalization"),
        ("BiasGelu", "Add+Gelu"),
    ]
    assert all(t.max_abs_diff < 1e-5 and t.fused_ms > 0 and t.plain_ms > 0 for t in timings)
    assert main(["--batch", "1", "--tokens", "4", "--dim", "8", "--hidden", "16", "--repeats", "1"]) == 0
    assert "| SkipLayerNormalization [1, 4, 8] |" in capsys.readouterr().out


def test_reused_exports_are_tied_to_the_exporter_sources(tmp_path):
    from validation.bench_artifacts import source_fingerprint

    package = tmp_path / "exporters"
    package.mkdir()
    (package / "fuse.py").write_text("FUSE = True\n")
    before = source_fingerprint(package)
    assert source_fingerprint(package) == before
    (package / "fuse.py").write_text("FUSE = False\n")
    assert source_fingerprint(package) != before  # the bench re-exports instead of timing stale files


@pytest.mark.slow
def test_bench_cli_on_a_tiny_model(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    result = subprocess.run(
        [sys.executable, "-m", "validation", "bench", "--preset", "lvvit_s", "--resolution", "64",
         "--batch-sizes", "1,4", "--repeats", "2", "--warmup", "1", "--settle-ms", "100", "--workdir", str(tmp_path),
         "--paths", "ort-fp32,openvino-f32,ort-int8"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    names = [p["name"] for p in report["paths"]]
    assert names == ["paddle-eager", "paddle-inference", "paddle-inference-streams", "ort-fp32", "openvino-f32",
                     "ort-int8"]  # fmt: skip
    for path in report["paths"]:
        assert path["skipped"] is None
        assert set(path["timings"]) == {"1", "4"}
        assert path["drift"]["images"] == report["images"]["count"] > 0
    by_name = {p["name"]: p for p in report["paths"]}
    assert by_name["ort-fp32"]["drift"]["max_abs"] < 1e-4
    assert by_name["ort-int8"]["precision"] == "int8"
    assert report["settle_ms"] == 100
    low, high = report["measured_sgemm_gfma_per_s_range"]
    assert 0 < low <= report["measured_sgemm_gfma_per_s"] <= high  # one probe per batch-1 round
    assert report["measured_floor_ms_batch1"] > 0 and report["floor_ms_batch1"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert "x Paddle Inference" in table and "Arithmetic floor (fp32, batch 1)" in table
    assert "timed in the same rounds" in table and "100 ms apart" in table
    again = subprocess.run(
        [sys.executable, "-m", "validation", "report", str(tmp_path / "bench.json"), "--output-dir",
         str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "r" / "bench.md").read_text() == table  # the JSON alone redraws the same page
