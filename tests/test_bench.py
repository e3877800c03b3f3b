"""`python -m validation bench` on a tiny model: every path runs, ratios and drift are reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lvvit import get_preset
from lvvit.macs import count_macs
from validation.cpu_floor import detect_cpu, has_native_bf16

from .conftest import ROOT

pytest_plugins = ["tests.runtime_fixtures"]


def test_lvvit_s_is_about_6_5_gmac():
    preset = get_preset("lvvit_s")
    assert count_macs(preset.arch, 224) / 1e9 == pytest.approx(6.55, abs=0.05)


def _cpuinfo(tmp_path, vendor: str, family: int, model: int, name: str, flags: str, mhz: str = "2600.000"):
    info = tmp_path / f"cpuinfo-{family}-{model}"
    info.write_text(
        f"vendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: {name}\n"
        f"cpu MHz\t\t: {mhz}\nflags\t\t: fpu {flags}\n"
    )
    return info


# The three CPU kinds this project runs on, read from their /proc/cpuinfo (family, model and flags as the
# kernel reports them): the floor takes the FMA width from the microarchitecture, not from the ISA alone.
CASCADE_LAKE = ("GenuineIntel", 6, 85, "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz", "avx2 fma avx512f avx512_vnni")
ZEN4 = ("AuthenticAMD", 25, 17, "AMD EPYC", "avx2 fma avx512f avx512_bf16 avx512_vnni")
SAPPHIRE_RAPIDS = (
    "GenuineIntel", 6, 143, "Intel(R) Xeon(R) Platinum 8488C",
    "avx2 fma avx512f avx512_bf16 avx512_vnni amx_bf16 amx_int8 amx_tile",
)  # fmt: skip
MACS = 6_550_000_000


def test_floor_arithmetic_is_shown(tmp_path):
    cpu = detect_cpu(cores=2, cpuinfo=_cpuinfo(tmp_path, *CASCADE_LAKE))
    assert cpu.microarchitecture.name == "Intel Skylake-SP / Cascade Lake" and cpu.clock_ghz == 2.5
    assert cpu.peak_gfma_per_s == 160  # 2 cores x 2.5 GHz x 2 units x 16 lanes
    assert cpu.floor_ms(MACS) == pytest.approx(40.9, abs=0.1)
    working = cpu.working(MACS)
    assert "2 FMA units x 16 fp32 lanes" in working and "= 160.0 GMAC/s" in working and "40.9 ms" in working
    assert "nominal clock from the model name, boost not counted" in working


@pytest.mark.parametrize(
    ("kind", "arch", "fp32", "bf16", "int8"),
    [
        (CASCADE_LAKE, "Intel Skylake-SP / Cascade Lake", 32, None, 128),  # no bf16; VNNI on 2 x 512 bits
        (ZEN4, "AMD Zen 4", 16, 32, 64),  # AVX-512 executed on 2 x 256-bit pipes
        (SAPPHIRE_RAPIDS, "Intel Sapphire Rapids", 32, 512, 1024),  # AMX tiles for bf16 and int8
    ],
)
def test_macs_per_cycle_follow_the_microarchitecture(tmp_path, kind, arch, fp32, bf16, int8):
    cpu = detect_cpu(cores=2, cpuinfo=_cpuinfo(tmp_path, *kind))
    assert cpu.microarchitecture.name == arch and cpu.microarchitecture.source == "table"
    assert (cpu.fp32_macs_per_cycle, cpu.bf16_macs_per_cycle, cpu.int8_macs_per_cycle) == (fp32, bf16, int8)
    if bf16 is None:
        assert cpu.floor_ms(MACS, "bf16") is None and cpu.working(MACS, "bf16") == "no native bf16 path on this CPU"
    else:
        assert cpu.floor_ms(MACS, "bf16") == pytest.approx(cpu.floor_ms(MACS) * fp32 / bf16)
    assert cpu.floor_ms(MACS, "int8") == pytest.approx(cpu.floor_ms(MACS) * fp32 / int8)


def test_an_unknown_cpu_gets_the_widest_reading_and_says_so(tmp_path):
    cpu = detect_cpu(cores=2, cpuinfo=_cpuinfo(tmp_path, "HygonGenuine", 24, 1, "Hygon C86", "avx2 fma"))
    assert cpu.fp32_macs_per_cycle == 16  # 2 units x 8 lanes: an upper bound on the peak, so a lower bound on time
    assert "not in the table: assumed 2 FMA units of 256 bits" in cpu.microarchitecture.source


def test_a_probe_faster_than_the_nominal_clock_raises_the_floors_clock(tmp_path):
    cpu = detect_cpu(cores=2, cpuinfo=_cpuinfo(tmp_path, *ZEN4, mhz="2596.130"))
    assert cpu.peak_gfma_per_s == pytest.approx(83.07, abs=0.01)  # 2 x 2.596 GHz x 16
    assert cpu.at_measured_rate(60.0) is cpu  # below the nominal peak: the nominal clock stands
    boosted = cpu.at_measured_rate(94.0)  # measured on this EPYC: more than the nominal peak
    assert boosted.clock_ghz == pytest.approx(94.0 / 32, abs=1e-3) and boosted.peak_gfma_per_s >= 94.0 - 0.1
    assert boosted.floor_ms(MACS) <= 1e3 * MACS / 94e9 + 0.1  # a real floor: not above what the probe reached
    assert "implied by the measured SGEMM rate (94 GFMA/s)" in boosted.working(MACS)


def test_bf16_detection_reads_the_flags(tmp_path):
    assert has_native_bf16({"avx512_bf16"}) and has_native_bf16({"amx_bf16"}) and not has_native_bf16({"avx2"})
    assert has_native_bf16(set(ZEN4[-1].split())) and not has_native_bf16(set(CASCADE_LAKE[-1].split()))


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-bf16"])
def test_the_bf16_row_runs_only_where_bf16_is_native(monkeypatch, native):
    # Both branches on any CPU: the capability is faked, the row's decision is what is checked.
    import validation.cpu_floor as cpu_floor
    from validation.bench import bench_paths

    monkeypatch.setattr(cpu_floor, "has_native_bf16", lambda flags=None: native)
    specs = {s.name: s for s in bench_paths(threads=2, streams=2, include=None)}
    row = specs["openvino-bf16"]
    assert row.precision == "bf16"
    if native:
        assert row.unavailable is None
    else:
        assert "no native bf16 (avx512_bf16 / amx_bf16)" in row.unavailable


def test_the_on_request_int8_rows_and_their_exports_appear_only_when_listed():
    from validation.bench import bench_paths
    from validation.bench_artifacts import EXTRA_INT8

    default = {s.name for s in bench_paths(threads=2, streams=2, include=None)}
    on_request = {"openvino-int8-ac": "int8_ac", "openvino-int8-ac-whole": "int8_ac_whole",
                  "openvino-int8-unfolded": "int8_unfolded", "openvino-int8-vnni": "int8_vnni"}  # fmt: skip
    assert not default & set(on_request)  # minutes of NNCF only when asked for
    asked = bench_paths(2, 2, include={*on_request, "openvino-int8"})
    assert {s.name: s.artifact for s in asked} == {"openvino-int8": "int8", **on_request}
    assert {s.artifact for s in asked} - {"int8"} == set(EXTRA_INT8)


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
    cpu = report["cpu"]  # the floor's clock: the fastest probe round's, where that beat the nominal clock
    implied = high / (cpu["cores"] * cpu["fp32_macs_per_cycle"])
    assert cpu["clock_ghz"] == pytest.approx(max(implied, report["nominal_clock_ghz"]), abs=2e-3)
    table = (tmp_path / "bench.md").read_text()
    assert "x Paddle Inference" in table and "Arithmetic floors at batch 1" in table
    assert "b1 x floor of its precision" in table
    assert by_name["ort-fp32"]["timings"]["1"]["x_floor"] > 0 and by_name["ort-int8"]["timings"]["1"]["x_floor"] > 0
    assert "timed in the same rounds" in table and "100 ms apart" in table
    again = subprocess.run(
        [sys.executable, "-m", "validation", "report", str(tmp_path / "bench.json"), "--output-dir",
         str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "r" / "bench.md").read_text() == table  # the JSON alone redraws the same page


def test_stream_latency_compares_each_runtime_with_one_stream(tiny, tmp_path, capsys):
    pytest.importorskip("openvino")
    from validation.stream_latency import main

    out = tmp_path / "streams.json"
    assert main([str(tiny.onnx), "--threads", "2", "--repeats", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert list(report["paths"]) == [
        "onnxruntime streams=1", "onnxruntime streams=2", "openvino streams=1", "openvino streams=2"
    ]  # fmt: skip
    assert all(p["batch1"]["median_ms"] > 0 and p["batch8"]["images_per_s"] > 0 for p in report["paths"].values())
    assert "| onnxruntime streams=2 |" in table and "batch 1 vs streams=1" in table


def test_the_bench_names_the_fastest_path_that_meets_the_agreement_gate():
    from validation.bench import PathResult, fastest_meeting_gate

    def path(name, images_per_s, agreement, spread=0.02, skipped=None):
        ms = 8 / images_per_s * 1e3
        timings = {8: {"images_per_s": images_per_s, "median_ms": ms, "p25_ms": ms * (1 - spread),
                       "p75_ms": ms * (1 + spread)}}  # fmt: skip
        return PathResult(name, name, "int8", timings=timings, drift={"top1_agreement": agreement}, skipped=skipped)

    results = [
        path("openvino-f32", 15.0, 1.0),
        path("ort-int8", 27.0, 0.921),  # faster, but below the gate
        path("openvino-int8-ac", 20.0, 0.99),
        path("ort-fp32", 19.5, 1.0, spread=0.05),  # its IQR overlaps openvino-int8-ac's
        path("openvino-int8", 40.0, 1.0, skipped="not run here"),
    ]
    best = fastest_meeting_gate(results, 8, 0.99)
    assert best is not None and (best["path"], best["within_noise"]) == ("openvino-int8-ac", ["ort-fp32"])
    assert best["top1_agreement"] == 0.99 and best["images_per_s"] == 20.0
    assert fastest_meeting_gate(results, 8, 1.01) is None and fastest_meeting_gate(results, 1, 0.9) is None
