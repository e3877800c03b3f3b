"""int8 for the CPU at hand: which layers an NNCF file quantizes, and the warning when its runtime is slower than f32.

Every branch runs on every CPU: the CPU is read from stored /proc/cpuinfo files of each kind (tests/data/cpuinfo;
`zen3.txt` is the AMD EPYC Zen 3 the AVX2 measurements were taken on), through LVVIT_CPUINFO, the kit's one override.
"""

from __future__ import annotations

import onnx
import pytest

from exporters.onnx.int8_target import cpu_int8_target, resolve_int8_target, slower_than_f32_warning
from lvvit.common.cpuinfo import cpu_flags
from tests.conftest import CPUINFO_DIR

KINDS = {
    "skylake_sp": "avx2",  # AVX-512 without VNNI: OpenVINO's int8 GEMM has no dot-product instruction either
    "zen3": "avx2",
    "cascade_lake": "vnni",
    "ice_lake": "vnni",
    "sapphire_rapids": "vnni",
    "alder_lake": "vnni",  # AVX-VNNI, no AVX-512
    "zen4": "vnni",
    "zen5": "vnni",
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_cpu_kind_gets_its_int8_target_and_the_warning_only_without_vnni(kind, monkeypatch):
    monkeypatch.setenv("LVVIT_CPUINFO", str(CPUINFO_DIR / f"{kind}.txt"))
    assert cpu_int8_target() == KINDS[kind]
    target, why = resolve_int8_target("auto")
    has = "has" if target == "vnni" else "has no"
    assert target == KINDS[kind] and why.startswith(f"--int8-target auto: this CPU {has} VNNI")
    if target == "vnni":  # the reason names the flags this CPU has, and only those
        named = set(why.split("(")[1].rstrip(")").split(", "))
        assert named and named <= cpu_flags()  # the stored file's, through LVVIT_CPUINFO
    warning = slower_than_f32_warning("nncf", "vnni")  # every linear layer in int8, for OpenVINO
    if KINDS[kind] == "avx2":
        assert warning is not None and "no VNNI: OpenVINO runs int8 linear layers no faster than f32 here" in warning
        assert "--int8-target avx2" in warning and "--quantizer ort" in warning
    else:
        assert warning is None
    assert slower_than_f32_warning("nncf", "avx2") is None  # the linear layers stay f32: nothing slower
    assert slower_than_f32_warning("ort", "vnni") is None  # ONNX Runtime's int8 is ~2x its f32 on AVX2
    from exporters.onnx.int8_target import bf16_float_parts_hint
    from lvvit.common.cpuinfo import has_native_bf16

    assert (bf16_float_parts_hint("nncf") is not None) == has_native_bf16()  # stored: zen4, zen5, sapphire_rapids
    assert bf16_float_parts_hint("ort") is None and bf16_float_parts_hint("nncf", "bf16") is None


def test_an_unreadable_cpuinfo_is_said_not_guessed(tmp_path, monkeypatch):
    from lvvit.errors import CpuInfoError

    monkeypatch.setenv("LVVIT_CPUINFO", str(tmp_path / "missing"))
    with pytest.raises(CpuInfoError, match="LVVIT_CPUINFO=.*missing: no such file"):
        resolve_int8_target("auto")
    (tmp_path / "empty").write_text("processor : 0\n")
    monkeypatch.setenv("LVVIT_CPUINFO", str(tmp_path / "empty"))
    target, why = resolve_int8_target("auto")
    assert target == "avx2" and "VNNI is unknown; taken as absent" in why
    assert resolve_int8_target("vnni") == ("vnni", "--int8-target vnni")


def test_int8_target_is_checked():
    from exporters.errors import ExportError
    from exporters.onnx import FastPath

    with pytest.raises(ExportError, match="--int8-target must be one of auto, vnni, avx2, got 'sse'"):
        FastPath(quantize="int8", calibration=".", int8_target="sse")
    with pytest.raises(ExportError, match="--int8-target applies to --quantize int8"):
        FastPath(int8_target="avx2")
    assert FastPath(quantize="int8", calibration=".", quantizer="ort", int8_target="avx2").tag == "_int8_ortq_avx2"
    assert FastPath(quantize="int8", calibration=".", int8_target="avx2").tag == "_int8_avx2"
    assert FastPath(quantize="int8", calibration=".").tag == "_int8"


def _int8_matrix_nodes(path) -> tuple[set[str], set[str]]:
    """(op types of the nodes whose weight is dequantized int8, op types whose weight is a float initializer)."""
    proto = onnx.load(str(path))
    weights = {i.name for i in proto.graph.initializer}
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    nodes = [n for n in proto.graph.node if n.op_type in ("Conv", "MatMul") and len(n.input) > 1]
    return ({n.op_type for n in nodes if n.input[1] in dequantized},
            {n.op_type for n in nodes if n.input[1] in weights})  # fmt: skip


@pytest.mark.parametrize("stored, target", [("zen3", "avx2"), ("zen4", "vnni")])
def test_the_export_quantizes_for_the_cpu_at_hand_and_warns_on_the_slower_branch(
    photo_folder,  # noqa: F811
    tmp_path,
    monkeypatch,
    stored,
    target,
):
    from exporters.onnx import FastPath, export_onnx
    from tests.conftest import TINY

    monkeypatch.setenv("LVVIT_CPUINFO", str(CPUINFO_DIR / f"{stored}.txt"))
    messages: list[str] = []
    fast = FastPath(quantize="int8", calibration=photo_folder, calibration_count=4, min_int8_agreement=0.0)
    result = export_onnx("lvvit_s", resolution=32, output=tmp_path / "auto/", fast=fast, log=messages.append, **TINY)
    quantized, in_float = _int8_matrix_nodes(result.path)
    line = next(m for m in messages if "int8 for " in m)
    if target == "avx2":
        assert "int8 for avx2: the convolutions only (linear layers in f32) (--int8-target auto: this CPU has" in line
        assert quantized == {"Conv"} and in_float == {"MatMul"}
    else:
        assert "int8 for vnni: every linear layer (--int8-target auto: this CPU has VNNI" in line
        assert quantized == {"Conv", "MatMul"} and not in_float
    assert f"int8 (nncf) for {target}" in onnx.load(str(result.path)).graph.doc_string
    assert not any("WARNING: this CPU has no VNNI" in m for m in messages)  # auto never picks the slower scheme
    hint = [m for m in messages if "this CPU has native bf16: OpenVINO can run what this int8 file leaves" in m]
    assert len(hint) == (1 if stored == "zen4" else 0)  # Zen 4 has avx512_bf16, Zen 3 not
    if target == "avx2":  # asked for every linear layer in int8 on a CPU without VNNI: the export says so
        messages.clear()
        vnni = FastPath(quantize="int8", calibration=photo_folder, calibration_count=4, min_int8_agreement=0.0,
                        int8_target="vnni")  # fmt: skip
        result = export_onnx("lvvit_s", resolution=32, output=tmp_path / "v/", fast=vnni, log=messages.append, **TINY)
        assert result.path.name == "lvvit_s_32_int8_vnni.onnx"
        assert any("WARNING: this CPU has no VNNI: OpenVINO runs int8 linear layers no faster than f32" in m
                   for m in messages)  # fmt: skip
