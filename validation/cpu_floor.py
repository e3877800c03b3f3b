"""The CPU's fp32 arithmetic floor: how fast a model could possibly run if every FMA lane were busy.

peak FMA/s = cores x clock x FMA units per core x fp32 lanes per FMA instruction.
Lanes come from the instruction set (AVX-512: 16, AVX2/FMA: 8); the clock is
the nominal one in the CPU's model name (or /proc/cpuinfo's MHz); FMA units per
core are not visible from software, so the value is an assumption shown with
the result (2 on Xeon Scalable Gold/Platinum and most server cores since
Skylake). A measured large SGEMM rate is reported beside it as a reality check.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path


def ms_at_rate(macs: int, gfma_per_s: float) -> float:
    """Milliseconds for `macs` multiply-accumulates at `gfma_per_s`."""
    return macs / (gfma_per_s * 1e9) * 1e3


@dataclass(frozen=True)
class CpuFloor:
    cores: int
    clock_ghz: float
    fma_units: int
    fp32_lanes: int
    isa: str
    model_name: str

    @property
    def peak_gfma_per_s(self) -> float:
        return self.cores * self.clock_ghz * self.fma_units * self.fp32_lanes

    def floor_ms(self, macs: int) -> float:
        """Milliseconds for `macs` multiply-accumulates at peak."""
        return ms_at_rate(macs, self.peak_gfma_per_s)

    def working(self, macs: int) -> str:
        return (
            f"{self.cores} cores x {self.clock_ghz:g} GHz x {self.fma_units} FMA units x {self.fp32_lanes} fp32 lanes "
            f"({self.isa}) = {self.peak_gfma_per_s:g} GFMA/s; {macs / 1e9:.2f} GMAC / {self.peak_gfma_per_s:g} GFMA/s "
            f"= {self.floor_ms(macs):.1f} ms"
        )

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "peak_gfma_per_s": self.peak_gfma_per_s}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    text = Path(cpuinfo).read_text() if Path(cpuinfo).exists() else ""
    match = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return set(match.group(1).split()) if match else set()


def has_native_bf16(flags: set[str] | None = None) -> bool:
    """AVX512-BF16 or AMX-BF16: without them OpenVINO emulates bf16, slower than f32."""
    return bool({"avx512_bf16", "amx_bf16"} & (cpu_flags() if flags is None else flags))


def detect_cpu(cores: int | None = None, fma_units: int = 2, cpuinfo: str | Path = "/proc/cpuinfo") -> CpuFloor:
    """Read the model name, clock and vector width of this CPU (Linux)."""
    text = Path(cpuinfo).read_text() if Path(cpuinfo).exists() else ""
    name_match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    model_name = name_match.group(1).strip() if name_match else "unknown"
    ghz_match = re.search(r"@\s*([\d.]+)\s*GHz", model_name)
    if ghz_match:
        clock = float(ghz_match.group(1))
    else:
        mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.M)
        clock = float(mhz.group(1)) / 1000 if mhz else 0.0
    flags = cpu_flags(cpuinfo)
    if "avx512f" in flags:
        isa, lanes = "AVX-512", 16
    elif "avx2" in flags and "fma" in flags:
        isa, lanes = "AVX2+FMA", 8
    else:
        isa, lanes = "SSE", 4
    usable = cores or len(os.sched_getaffinity(0))
    return CpuFloor(usable, clock, fma_units, lanes, isa, model_name)


class SgemmProbe:
    """One large fp32 MatMul in ONNX Runtime (MLAS): the rate this CPU really sustains, right now.

    The bench runs it inside its timing rounds, so that the measured floor sees the same
    neighbours and clock as the model runs it is compared with.
    """

    def __init__(self, threads: int, size: int = 1536) -> None:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        self.size = size
        self._a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])],
            "sgemm",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
            [numpy_helper.from_array(b, "b")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._session.run(None, {"a": self._a})  # weight prepacking happens on the first run

    def gfma_per_s(self) -> float:
        """GFMA/s of one multiply."""
        import time

        start = time.perf_counter()
        self._session.run(None, {"a": self._a})
        return self.size**3 / (time.perf_counter() - start) / 1e9
