"""Which int8 kernels the CPU has, and so which layers of an NNCF int8 file pay in int8 on OpenVINO.

Measured with `python -m validation ov-layers` on an AMD EPYC Zen 3 (AVX2, no VNNI), OpenVINO 2026.4, lvvit_s at
batch 8: OpenVINO runs every int8 linear layer with oneDNN's `jit_gemm_i8` kernel, which is no faster than the
`gemm_mlas_f32` kernel it uses for the same layer in f32 (a [1576, 384] x [384, 1152] layer: 0.92x; ONNX Runtime's
MLAS int8 kernel does the same layer 1.99x faster than its f32 on the same CPU). Its int8 convolutions
(`jit_avx2_I8`) are 2-3x faster than f32. Without VNNI the int8 linear layers cost their (de)quantization and
reorders on top, and the int8 file ran no faster than OpenVINO f32. With VNNI (AVX512-VNNI, AVX-VNNI, AMX)
OpenVINO's brgemm int8 kernels run the linear layers at several times f32.

So the `nncf` quantizer takes a target: `vnni` quantizes every linear layer and convolution; `avx2` quantizes the
convolutions (and the input they read) only, and keeps the linear layers in f32; `auto` is the CPU at hand.
"""

from __future__ import annotations

from lvvit.common.cpuinfo import cpu_flags, cpuinfo_path, has_native_bf16

INT8_TARGETS = ("auto", "vnni", "avx2")
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # /proc/cpuinfo's names of int8 dot-product instructions


def cpu_int8_target() -> str | None:
    """'vnni' when the CPU at hand (`lvvit.common.cpuinfo`: /proc/cpuinfo, or the file LVVIT_CPUINFO names) has an int8
    dot-product instruction, 'avx2' when it has none, None when its cpuinfo lists no flags."""
    flags = cpu_flags()
    if not flags:
        return None
    return "vnni" if VNNI_FLAGS & flags else "avx2"


def resolve_int8_target(target: str) -> tuple[str, str]:
    """(the target, why): `auto` becomes the CPU at hand's; a CPU whose flags cannot be read counts as without VNNI,
    and the reason says so."""
    if target != "auto":
        return target, f"--int8-target {target}"
    found = cpu_int8_target()
    if found is None:
        return "avx2", f"--int8-target auto: no CPU flags in {cpuinfo_path()}, so VNNI is unknown; taken as absent"
    if found == "vnni":  # name the flags this CPU has, not every flag that would have counted
        return found, f"--int8-target auto: this CPU has VNNI ({', '.join(sorted(VNNI_FLAGS & cpu_flags()))})"
    return found, f"--int8-target auto: this CPU has no VNNI (none of {', '.join(sorted(VNNI_FLAGS))})"


def bf16_float_parts_hint(quantizer: str, control_precision: str = "f32") -> str | None:
    """On a CPU with native bf16, how to run what an NNCF int8 file leaves in float (attention products, softmax,
    norms, the stages accuracy control kept) at bf16 on OpenVINO; None elsewhere, or when the file was already
    controlled at bf16. Measured on lvvit_s, Zen 5: 3.57x Paddle Inference against 3.37x
    (docs/results/zen5-2026-12-04-int8.md)."""
    if quantizer != "nncf" or control_precision == "bf16" or not has_native_bf16():
        return None
    return (
        "this CPU has native bf16: OpenVINO can run what this int8 file leaves in float (attention products, "
        "softmax, norms) in bf16, faster: OpenVinoPredictor(path, precision='bf16') or --openvino-precision bf16. "
        "Its agreement is then not this export's: measure it (python -m validation drift ... --runtime openvino "
        "--openvino-precision bf16), or export with --accuracy-control --control-runtime openvino "
        "--control-precision bf16"
    )


def slower_than_f32_warning(quantizer: str, target: str) -> str | None:
    """The warning for an int8 file whose runtime is slower than its own f32 path on this CPU, or None.

    ONNX Runtime's int8 (the `ort` quantizer) is about twice its f32 on AVX2 alone. OpenVINO's int8 linear layers
    (`nncf`, target `vnni`) need VNNI to beat its f32.
    """
    if quantizer != "nncf" or target != "vnni" or cpu_int8_target() != "avx2":
        return None
    return (
        "WARNING: this CPU has no VNNI: OpenVINO runs int8 linear layers no faster than f32 here (oneDNN's "
        "jit_gemm_i8 against MLAS's f32 GEMM), so this int8 file will run slower than OpenVINO f32 on it. On this "
        "CPU, export with --int8-target avx2 for OpenVINO, or --quantizer ort for ONNX Runtime (about 2x its f32)"
    )
