"""`python -m validation bench` on a tiny model: every path runs, ratios and drift are reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lvvit import get_preset
from lvvit.common.cpuinfo import has_native_bf16
from lvvit.macs import count_macs
from tests.conftest import CPU_KINDS, CPUINFO_DIR, ROOT
from validation.perf.cpu_floor import detect_cpu


def test_lvvit_s_is_about_6_5_gmac():
    preset = get_preset("lvvit_s")
    assert count_macs(preset.arch, 224) / 1e9 == pytest.approx(6.55, abs=0.05)


MACS = 6_550_000_000

# Per stored cpuinfo: microarchitecture, fp32 / bf16 / int8 MACs per core and cycle, the int8 instructions, and
# whether bf16 is native. Without VNNI, int8 runs through vpmaddubsw + vpmaddwd at twice the fp32 rate.
KINDS = {
    "skylake_sp": ("Intel Skylake-SP / Cascade Lake", 32, None, 64, "AVX-512BW", False),
    "ice_lake": ("Intel Ice Lake-SP", 32, None, 128, "AVX512-VNNI", False),
    "sapphire_rapids": ("Intel Sapphire Rapids", 32, 512, 1024, "AMX", True),
    "zen3": ("AMD Zen 3", 16, None, 32, "AVX2", False),
    "zen4": ("AMD Zen 4", 16, 32, 64, "AVX512-VNNI", True),  # AVX-512 executed on 2 x 256-bit pipes
    "zen5": ("AMD Zen 5", 32, 64, 128, "AVX512-VNNI", True),
}


def test_every_cpu_kind_has_its_expectations():
    assert set(KINDS) == set(CPU_KINDS)


def test_floor_arithmetic_is_shown(monkeypatch):
    monkeypatch.setenv("LVVIT_CPUINFO", str(CPUINFO_DIR / "skylake_sp.txt"))
    cpu = detect_cpu(cores=2)
    assert cpu.microarchitecture.name == "Intel Skylake-SP / Cascade Lake" and cpu.clock_ghz == 3.0
    assert cpu.peak_gfma_per_s == 192  # 2 cores x 3 GHz x 2 units x 16 lanes
    assert cpu.floor_ms(MACS) == pytest.approx(34.1, abs=0.1)
    working = cpu.working(MACS)
    assert "2 FMA units x 16 fp32 lanes" in working and "= 192.0 GMAC/s" in working and "34.1 ms" in working
    assert "nominal clock from the model name, boost not counted" in working
    assert cpu.to_dict()["cpuinfo"].endswith("skylake_sp.txt")  # the report says where the CPU was read from


def test_each_cpu_kinds_floors_follow_its_microarchitecture(cpu_kind):
    arch, fp32, bf16, int8, int8_path, native_bf16 = KINDS[cpu_kind]
    cpu = detect_cpu(cores=2)
    assert cpu.microarchitecture.name == arch and cpu.microarchitecture.source == "table"
    assert (cpu.fp32_macs_per_cycle, cpu.bf16_macs_per_cycle, cpu.int8_macs_per_cycle) == (fp32, bf16, int8)
    assert cpu.int8 == int8_path and has_native_bf16() is native_bf16
    if bf16 is None:
        assert cpu.floor_ms(MACS, "bf16") is None and cpu.working(MACS, "bf16") == "no native bf16 path on this CPU"
    else:
        assert cpu.floor_ms(MACS, "bf16") == pytest.approx(cpu.floor_ms(MACS) * fp32 / bf16)
    # every kind has an int8 floor: VNNI, AMX, or the vpmaddubsw pair
    assert cpu.floor_ms(MACS, "int8") == pytest.approx(cpu.floor_ms(MACS) * fp32 / int8)
    assert f"{int8_path} int8" in cpu.working(MACS, "int8")


def test_an_unknown_cpu_gets_the_widest_reading_and_says_so(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("vendor_id\t: HygonGenuine\ncpu family\t: 24\nmodel\t\t: 1\nmodel name\t: Hygon C86\n"
                    "cpu MHz\t\t: 2600.000\nflags\t\t: fpu ssse3 avx2 fma\n")  # fmt: skip
    monkeypatch.setenv("LVVIT_CPUINFO", str(info))
    cpu = detect_cpu(cores=2)
    assert cpu.fp32_macs_per_cycle == 16  # 2 units x 8 lanes: an upper bound on the peak, so a lower bound on time
    assert "not in the table: assumed 2 FMA units of 256 bits" in cpu.microarchitecture.source


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, r"LVVIT_CPUINFO=.*missing: no such file"), (b"x" * ((16 << 20) + 1), r"more than 16 MiB")],
    ids=["missing", "huge"],
)
def test_a_bad_cpuinfo_override_is_named(tmp_path, monkeypatch, content, message):
    from validation.errors import CpuInfoError

    info = tmp_path / "missing"
    if content is not None:
        info.write_bytes(content)
    monkeypatch.setenv("LVVIT_CPUINFO", str(info))
    with pytest.raises(CpuInfoError, match=message):
        detect_cpu(cores=2)


def test_a_probe_faster_than_the_nominal_clock_raises_the_floors_clock(monkeypatch):
    monkeypatch.setenv("LVVIT_CPUINFO", str(CPUINFO_DIR / "zen4.txt"))
    cpu = detect_cpu(cores=2)
    assert cpu.peak_gfma_per_s == pytest.approx(83.2, abs=0.01)  # 2 x 2.6 GHz x 16
    assert cpu.at_measured_rate(60.0) is cpu  # below the nominal peak: the nominal clock stands
    boosted = cpu.at_measured_rate(94.0)  # measured on an EPYC: more than the nominal peak
    assert boosted.clock_ghz == pytest.approx(94.0 / 32, abs=1e-3) and boosted.peak_gfma_per_s >= 94.0 - 0.1
    assert boosted.floor_ms(MACS) <= 1e3 * MACS / 94e9 + 0.1  # a real floor: not above what the probe reached
    assert "implied by the measured SGEMM rate (94 GFMA/s)" in boosted.working(MACS)


def test_bf16_detection_reads_the_flags():
    assert has_native_bf16({"avx512_bf16"}) and has_native_bf16({"amx_bf16"}) and not has_native_bf16({"avx2"})


def test_the_bf16_rows_run_only_where_bf16_is_native(cpu_kind):
    from validation.perf.bench import bench_paths

    bf16_rows = {"openvino-bf16", "openvino-int8-bf16", "openvino-int8-ac-bf16"}
    specs = {s.name: s for s in bench_paths(threads=2, streams=2, include=bf16_rows)}
    assert set(specs) == bf16_rows and specs["openvino-bf16"].precision == "bf16"
    assert specs["openvino-int8-bf16"].precision == specs["openvino-int8-ac-bf16"].precision == "int8"
    from validation.perf.bench import extra_exports

    # a row this CPU cannot run is reported, and its export (refused here) is not asked for
    assert extra_exports(list(specs.values())) == (("int8_ac_bf16",) if KINDS[cpu_kind][-1] else ())
    for row in specs.values():
        assert row.options["precision"] == "bf16"  # OpenVINO's math for what is not int8
        if KINDS[cpu_kind][-1]:
            assert row.unavailable is None
        else:
            assert "no native bf16 (avx512_bf16 / amx_bf16)" in row.unavailable


def test_the_on_request_int8_rows_and_their_exports_appear_only_when_listed():
    from validation.perf.artifacts import EXTRA_INT8
    from validation.perf.bench import bench_paths

    default = {s.name for s in bench_paths(threads=2, streams=2, include=None)}
    on_request = {"openvino-int8-ac": "int8_ac", "openvino-int8-ac-whole": "int8_ac_whole",
                  "openvino-int8-unfolded": "int8_unfolded", "openvino-int8-vnni": "int8_vnni",
                  "ort-int8-ac": "int8_ort_ac", "openvino-int8-ac-bf16": "int8_ac_bf16"}  # fmt: skip
    assert not default & set(on_request)  # minutes of quantization only when asked for
    asked = bench_paths(2, 2, include={*on_request, "openvino-int8"})
    assert {s.name: s.artifact for s in asked} == {"openvino-int8": "int8", **on_request}
    assert {s.artifact for s in asked} - {"int8"} == set(EXTRA_INT8)
    runtimes = {s.name: s.runtime for s in asked}
    assert runtimes["ort-int8-ac"] == "ort" and runtimes["openvino-int8-ac"] == "openvino"
    assert EXTRA_INT8["int8_ort_ac"]["quantizer"] == "ort"  # ONNX Runtime's file, controlled on ONNX Runtime
    assert EXTRA_INT8["int8_ac_bf16"]["control_precision"] == "bf16"  # measured as its row runs it


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
    from validation.checks.ort_fusions import compare_fusions
    from validation.cli import main

    timings = compare_fusions(batch=2, tokens=5, dim=16, hidden=32, repeats=2)
    assert [(t.fused, t.plain) for t in timings] == [
        ("SkipLayerNormalization", "Add+Add+LayerNormalization"),
        ("BiasGelu", "Add+Gelu"),
    ]
    assert all(t.max_abs_diff < 1e-5 and t.fused_ms > 0 and t.plain_ms > 0 for t in timings)
    argv = ["ort-fusions", "--batch-size", "1", "--tokens", "4", "--dim", "8", "--hidden", "16", "--repeats", "1"]
    assert main(argv) == 0
    assert "| SkipLayerNormalization [1, 4, 8] |" in capsys.readouterr().out


def test_reused_exports_are_tied_to_the_exporter_sources(tmp_path):
    from validation.perf.artifacts import source_fingerprint

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
    export = subprocess.run(
        [sys.executable, "-m", "exporters.onnx", "--preset", "lvvit_s", "--resolution", "64", "--output",
         str(tmp_path / "mine")], capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-2000:]
    (mine,) = (tmp_path / "mine").glob("*.onnx")
    result = subprocess.run(
        [sys.executable, "-m", "validation", "bench", "--preset", "lvvit_s", "--resolution", "64",
         "--batch-sizes", "1,4", "--repeats", "2", "--warmup", "1", "--settle-ms", "100", "--work-dir", str(tmp_path),
         "--paths", "ort-fp32,ort-int8", "--onnx", str(mine)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    names = [p["name"] for p in report["paths"]]
    # the baseline alone is added to the paths asked for; the user's file runs on both ONNX runtimes
    assert names == ["paddle-eager", "paddle-inference", "ort-fp32", "ort-int8", "file-ort", "file-openvino"]
    assert report["baseline"] == "paddle-inference" and report["user_file"]["path"] == str(mine)
    for path in report["paths"]:
        assert path["skipped"] is None
        assert set(path["timings"]) == {"1", "4"}
        assert path["drift"]["images"] == report["images"]["count"] > 0
        assert all(t["iqr_rel"] >= 0 for t in path["timings"].values())
    by_name = {p["name"]: p for p in report["paths"]}
    assert by_name["ort-fp32"]["drift"]["max_abs"] < 1e-4
    assert by_name["file-ort"]["drift"]["max_abs"] < 1e-4 and by_name["file-openvino"]["drift"]["max_abs"] < 1e-4
    assert by_name["file-ort"]["precision"] == "fp32" and mine.name in by_name["file-openvino"]["what"]
    assert by_name["ort-int8"]["precision"] == "int8"
    assert report["cpu"]["int8"] == detect_cpu().int8  # this machine's branch: VNNI, AMX or the vpmaddubsw pair
    assert report["settle_ms"] == 100
    low, high = report["measured_sgemm_gfma_per_s_range"]
    assert 0 < low <= report["measured_sgemm_gfma_per_s"] <= high  # one probe per batch-1 round
    assert report["measured_floor_ms_batch1"] > 0 and report["floor_ms_batch1"] > 0
    cpu = report["cpu"]  # the floor's clock: the fastest probe round's, where that beat the nominal clock
    implied = high / (cpu["cores"] * cpu["fp32_macs_per_cycle"])
    assert cpu["clock_ghz"] == pytest.approx(max(implied, report["nominal_clock_ghz"]), abs=2e-3)
    table = (tmp_path / "bench.md").read_text()
    assert "b1 x paddle-inference" in table and "This run's noise" in table
    assert "Arithmetic floors at batch 1" in table
    assert "b1 x floor of its precision" in table
    assert by_name["ort-fp32"]["timings"]["1"]["x_floor"] > 0 and by_name["ort-int8"]["timings"]["1"]["x_floor"] > 0
    assert "timed in the same rounds" in table and "100 ms apart" in table
    again = subprocess.run(
        [sys.executable, "-m", "validation", "report", str(tmp_path / "bench.json"), "--report-dir",
         str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "r" / "bench.md").read_text() == table  # the JSON alone redraws the same page


def _bench_report(timings: dict[str, tuple[float, float, float]]) -> dict:
    """A bench report's JSON with batch-1 timings (median, p25, p75 in ms) per fp32 path."""
    paths = [
        {"name": name, "what": name, "precision": "fp32", "skipped": None, "drift": {},
         "timings": {"1": {"median_ms": m, "p25_ms": lo, "p75_ms": hi, "images_per_s": 1e3 / m, "x_floor": m / 10,
                           "iqr_rel": (hi - lo) / m, "min_ms": lo, "repeats": 7}}}
        for name, (m, lo, hi) in timings.items()
    ]  # fmt: skip
    cpu = {"model_name": "AMD EPYC", "clock_ghz": 2.6, "cores": 2, "fp32_macs_per_cycle": 16}
    return {
        "preset": "lvvit_s", "resolution": 224, "threads": 2, "streams": 2, "cpu": cpu, "weights": "random",
        "warmup": 1, "repeats": 7, "settle_ms": 300, "images": {"count": 0, "folder": "-"}, "batch_sizes": [1],
        "floor_working_by_precision": {"fp32": "..."}, "nominal_clock_ghz": 2.6,
        "floor_ms_batch1_by_precision": {"fp32": 10.0}, "measured_sgemm_gfma_per_s": 80.0,
        "measured_sgemm_gfma_per_s_range": [70.0, 90.0], "measured_floor_ms_batch1": 80.0, "paths": paths,
        "kind": "bench", "baseline": "paddle-inference", "macs_per_image": 1, "floor_ms_batch1": 10.0,
        "floor_working": "...", "user_file": None,
    }  # fmt: skip


def _page(timings: dict[str, tuple[float, float, float]], cpuinfo: str = "/proc/cpuinfo") -> str:
    """The Markdown page of `_bench_report(timings)`, its CPU read from `cpuinfo`."""
    from validation.reports.bench import bench_blocks
    from validation.reports.document import to_markdown
    from validation.reports.types import BenchReport

    report = _bench_report(timings)
    report["cpu"]["cpuinfo"] = cpuinfo
    return to_markdown(bench_blocks(BenchReport.from_json(report), {})[1], "bench")


def test_the_baseline_is_one_named_path_even_where_another_paddle_configuration_is_faster():
    page = _page({
        "paddle-inference": (100.0, 98.0, 102.0), "paddle-inference-streams": (80.0, 79.0, 81.0),
        "ort-fp32": (50.0, 49.0, 51.0),
    }, cpuinfo="tests/data/cpuinfo/zen4.txt")  # fmt: skip
    assert "CPU: AMD EPYC (read from tests/data/cpuinfo/zen4.txt, named by LVVIT_CPUINFO)" in page
    assert "| ort-fp32 | fp32 | 50.0 (49.0-51.0) | 20.00 | 2.00x |" in page  # over paddle-inference, not the streams
    assert "| paddle-inference-streams | fp32 | 80.0 (79.0-81.0) | 12.50 | 1.25x |" in page


def test_paths_within_the_runs_noise_are_not_ranked():
    close = _page({"paddle-inference": (100.0, 95.0, 105.0), "ort-fp32": (74.1, 72.0, 76.0),
                   "openvino-f32": (73.7, 70.0, 75.0)})  # fmt: skip
    assert "Fastest fp32 paths at batch 1, within this run's noise of each other" in close
    assert "not ranked: openvino-f32 73.7 ms (70.0-75.0), ort-fp32 74.1 ms (72.0-76.0)" in close
    assert "| paddle-inference | fp32 | 100.0 (95.0-105.0) | 10.00 | 1.00x |" in close
    apart = _page({"paddle-inference": (100.0, 99.0, 101.0), "ort-fp32": (97.0, 96.0, 99.5),
                   "openvino-f32": (60.0, 59.0, 61.0)})  # fmt: skip
    assert "Fastest fp32 path at batch 1: openvino-f32, 60.0 ms = 6.00x its floor." in apart
    assert "CPU: AMD EPYC; weights" in apart  # read from /proc/cpuinfo: no note
    assert "| ort-fp32 | fp32 | 97.0 (96.0-99.5) | 10.31 | 1.03x (within noise) |" in apart
    assert "This run's noise: a path's interquartile range spans" in apart


def test_a_user_file_of_another_model_is_refused_before_any_export(tiny, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "validation", "bench", "--preset", "lvvit_s", "--resolution", "64", "--onnx",
         str(tiny.onnx), "--work-dir", str(tmp_path / "work")], capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2 and "tiny.onnx: architecture" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "work").exists()  # refused before the minutes of exports


def test_stream_latency_compares_each_runtime_with_one_stream(tiny, tmp_path, capsys):
    pytest.importorskip("openvino")
    from validation.cli import main

    out = tmp_path / "streams.json"
    assert main(["stream-latency", str(tiny.onnx), "--threads", "2", "--repeats", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert list(report["paths"]) == [
        "ort streams=1", "ort streams=2", "openvino streams=1", "openvino streams=2"
    ]  # fmt: skip
    assert all(p["batch1"]["median_ms"] > 0 and p["batch8"]["images_per_s"] > 0 for p in report["paths"].values())
    assert "| ort streams=2 |" in table and "batch 1 vs streams=1" in table


def test_the_bench_names_the_fastest_path_that_meets_the_agreement_gate():
    from validation.perf.bench import PathResult, fastest_meeting_gate

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
