"""The CPU's arithmetic floor: how fast a model could possibly run if every multiply-accumulate lane were busy.

peak MAC/s = cores x clock x MACs per core per cycle, where MACs per cycle
come from the microarchitecture, not from the instruction set alone: AMD Zen 4
accepts AVX-512 but executes it on two 256-bit FMA pipes, half the width of
an Intel Xeon's two 512-bit units. `MICROARCHITECTURES` names each kind this
project runs on (from /proc/cpuinfo's vendor, family and model); an unknown
CPU gets the widest reading its flags allow (two units of its widest vector
ISA), so that the floor stays a lower bound.

The clock is the nominal one (the model name's "@ x GHz", or cpuinfo's MHz);
boost clocks are not visible from software, so it is an assumption. A large
SGEMM timed beside the model gives the clock that the CPU must at least have
run at (rate / (cores x fp32 MACs per cycle)); when that exceeds the nominal
clock, the floor is recomputed at the implied clock, so it never claims a
rate the machine has been seen to beat.

Three peaks: fp32 (FMA lanes), bf16 (AVX512-BF16 dot products, or AMX tiles)
and int8 (VNNI dot products, AMX tiles, or without either the
vpmaddubsw/vpmaddwd pair of AVX2 and AVX-512BW); the bench compares each path
with the floor of its own precision.

The CPU is read from /proc/cpuinfo, or from the file that the environment
variable LVVIT_CPUINFO names: the one override, through which the tests read
each CPU kind's stored cpuinfo, and which the report records.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, replace

from lvvit.common.cpuinfo import PROC_CPUINFO, cpuinfo_field
from lvvit.common.cpuinfo import read_cpuinfo as _read_cpuinfo

# AMX-TMUL per core per cycle (Intel's figures for Sapphire Rapids: 1024 bf16 FLOP = 512 bf16 MACs,
# 2048 int8 OP = 1024 int8 MACs).
AMX_BF16_MACS_PER_CYCLE = 512
AMX_INT8_MACS_PER_CYCLE = 1024


def ms_at_rate(macs: int, gmac_per_s: float) -> float:
    """Milliseconds for `macs` multiply-accumulates at `gmac_per_s`."""
    return macs / (gmac_per_s * 1e9) * 1e3


@dataclass(frozen=True)
class Microarchitecture:
    """A core's vector multiply-accumulate resources."""

    name: str
    fma_units: int  # vector FMA pipes per core
    datapath_bits: int  # the width each pipe executes per cycle (Zen 4: 256, even for AVX-512 instructions)
    source: str  # "table" (a known kind) or why the values are assumed


# (vendor, family, models, name, FMA units, datapath bits). Server parts of each kind; Intel's Xeon Silver and
# some Gold 5xxx have one 512-bit unit, which makes the floor here twice too low for them (still a lower bound).
_TABLE: tuple[tuple[str, int, frozenset[int], str, int, int], ...] = (
    ("GenuineIntel", 6, frozenset({0x55}), "Intel Skylake-SP / Cascade Lake", 2, 512),
    ("GenuineIntel", 6, frozenset({0x6A, 0x6C}), "Intel Ice Lake-SP", 2, 512),
    ("GenuineIntel", 6, frozenset({0x8F}), "Intel Sapphire Rapids", 2, 512),
    ("GenuineIntel", 6, frozenset({0xCF}), "Intel Emerald Rapids", 2, 512),
    ("GenuineIntel", 6, frozenset({0xAD, 0xAE}), "Intel Granite Rapids", 2, 512),
    ("AuthenticAMD", 0x17, frozenset(range(0x30, 0x100)), "AMD Zen 2", 2, 256),
    ("AuthenticAMD", 0x19, frozenset(range(0x00, 0x10)) | frozenset(range(0x20, 0x60)), "AMD Zen 3", 2, 256),
    (
        "AuthenticAMD",
        0x19,
        frozenset(range(0x10, 0x20)) | frozenset(range(0x60, 0x80)) | frozenset(range(0xA0, 0xB0)),
        "AMD Zen 4",
        2,
        256,
    ),
    ("AuthenticAMD", 0x1A, frozenset(range(0x00, 0x100)), "AMD Zen 5", 2, 512),
)


def _widest_bits(flags: set[str]) -> int:
    if "avx512f" in flags:
        return 512
    if "avx2" in flags and "fma" in flags:
        return 256
    return 128


def microarchitecture(vendor: str, family: int | None, model: int | None, flags: set[str]) -> Microarchitecture:
    """The table's entry for this CPU, or two units of its widest vector ISA (an upper bound on the peak)."""
    for row_vendor, row_family, models, name, units, bits in _TABLE:
        if vendor == row_vendor and family == row_family and model in models:
            return Microarchitecture(name, units, min(bits, _widest_bits(flags)), "table")
    bits = _widest_bits(flags)
    return Microarchitecture(
        f"unknown ({vendor or 'vendor?'} family {family} model {model})",
        2,
        bits,
        f"not in the table: assumed 2 FMA units of {bits} bits (its widest ISA), an upper bound",
    )


@dataclass(frozen=True)
class CpuFloor:
    cores: int
    clock_ghz: float
    clock_source: str  # where the clock came from, and whether it is an assumption
    microarchitecture: Microarchitecture
    isa: str
    bf16: str | None  # "AMX" or "AVX512-BF16": native bf16 dot products, else None
    int8: str | None  # "AMX", "AVX512-VNNI", "AVX-VNNI", or the vpmaddubsw pair of "AVX-512BW" / "AVX2" / "SSSE3"
    model_name: str
    cpuinfo: str = str(PROC_CPUINFO)  # the file the CPU was read from

    @property
    def fp32_macs_per_cycle(self) -> int:
        return self.microarchitecture.fma_units * self.microarchitecture.datapath_bits // 32

    @property
    def bf16_macs_per_cycle(self) -> int | None:
        if self.bf16 == "AMX":
            return AMX_BF16_MACS_PER_CYCLE
        return 2 * self.fp32_macs_per_cycle if self.bf16 else None  # a bf16 pair per fp32 lane

    @property
    def int8_macs_per_cycle(self) -> int | None:
        if self.int8 == "AMX":
            return AMX_INT8_MACS_PER_CYCLE
        if self.int8 in _PAIRWISE_INT8:
            # vpmaddubsw (u8 x s8 pairs into int16) then vpmaddwd (into int32): two multiply uops where VNNI's
            # vpdpbusd has one, so twice the fp32 rate rather than four times
            return 2 * self.fp32_macs_per_cycle
        return 4 * self.fp32_macs_per_cycle if self.int8 else None  # four int8 products per 32-bit lane

    def peak_gmac_per_s(self, precision: str = "fp32") -> float | None:
        per_cycle = {
            "fp32": self.fp32_macs_per_cycle,
            "bf16": self.bf16_macs_per_cycle,
            "int8": self.int8_macs_per_cycle,
        }[precision]
        return self.cores * self.clock_ghz * per_cycle if per_cycle else None

    @property
    def peak_gfma_per_s(self) -> float:
        """The fp32 peak (GFMA/s)."""
        return self.cores * self.clock_ghz * self.fp32_macs_per_cycle

    def floor_ms(self, macs: int, precision: str = "fp32") -> float | None:
        """Milliseconds for `macs` multiply-accumulates at the peak of `precision` (None: no native path)."""
        peak = self.peak_gmac_per_s(precision)
        return ms_at_rate(macs, peak) if peak else None

    def implied_clock_ghz(self, sgemm_gfma_per_s: float) -> float:
        """The clock the cores must at least have run at to reach a measured fp32 rate."""
        return sgemm_gfma_per_s / (self.cores * self.fp32_macs_per_cycle)

    def at_measured_rate(self, sgemm_gfma_per_s: float) -> CpuFloor:
        """This floor, at the probe's implied clock when that is above the nominal one (boost)."""
        implied = self.implied_clock_ghz(sgemm_gfma_per_s)
        if implied <= self.clock_ghz:
            return self
        return replace(
            self,
            clock_ghz=round(implied, 3),
            clock_source=f"implied by the measured SGEMM rate ({sgemm_gfma_per_s:.0f} GFMA/s), above the "
            f"{self.clock_source} of {self.clock_ghz:g} GHz",
        )

    def working(self, macs: int, precision: str = "fp32") -> str:
        arch = self.microarchitecture
        per_cycle = {
            "fp32": (self.fp32_macs_per_cycle, f"{arch.fma_units} FMA units x {arch.datapath_bits // 32} fp32 lanes"),
            "bf16": (self.bf16_macs_per_cycle, f"{self.bf16} bf16"),
            "int8": (self.int8_macs_per_cycle, f"{self.int8} int8"),
        }[precision]
        if not per_cycle[0]:
            return f"no native {precision} path on this CPU"
        peak = self.peak_gmac_per_s(precision)
        return (
            f"{self.cores} cores x {self.clock_ghz:g} GHz ({self.clock_source}) x {per_cycle[0]} {precision} "
            f"MACs/cycle ({per_cycle[1]}, {arch.name}) = {peak:.1f} GMAC/s; {macs / 1e9:.2f} GMAC / {peak:.1f} GMAC/s "
            f"= {self.floor_ms(macs, precision):.1f} ms"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "fp32_macs_per_cycle": self.fp32_macs_per_cycle,
            "bf16_macs_per_cycle": self.bf16_macs_per_cycle,
            "int8_macs_per_cycle": self.int8_macs_per_cycle,
            "peak_gfma_per_s": self.peak_gfma_per_s,
            "peak_gmac_per_s": {p: self.peak_gmac_per_s(p) for p in ("fp32", "bf16", "int8")},
        }


_PAIRWISE_INT8 = ("AVX-512BW", "AVX2", "SSSE3")


def _int8_path(flags: set[str]) -> str | None:
    """The widest int8 dot-product instructions the flags offer."""
    for flag, name in (
        ("amx_int8", "AMX"),
        ("avx512_vnni", "AVX512-VNNI"),
        ("avx_vnni", "AVX-VNNI"),
        ("avx512bw", "AVX-512BW"),
        ("avx2", "AVX2"),
        ("ssse3", "SSSE3"),
    ):
        if flag in flags:
            return name
    return None


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def detect_cpu(cores: int | None = None) -> CpuFloor:
    """Read the model name, microarchitecture, clock and native precisions of this CPU (Linux)."""
    text, path = _read_cpuinfo()
    model_name = cpuinfo_field(text, "model name") or "unknown"
    ghz_match = re.search(r"@\s*([\d.]+)\s*GHz", model_name)
    mhz = cpuinfo_field(text, "cpu MHz")
    if ghz_match:
        clock, source = float(ghz_match.group(1)), "nominal clock from the model name, boost not counted"
    elif mhz:
        clock, source = round(float(mhz) / 1000, 3), "clock from /proc/cpuinfo's cpu MHz, boost not counted"
    else:
        clock, source = 0.0, "no clock in /proc/cpuinfo"
    flags = set((cpuinfo_field(text, "flags") or "").split())
    family, model = _int(cpuinfo_field(text, "cpu family")), _int(cpuinfo_field(text, "model"))
    arch = microarchitecture(cpuinfo_field(text, "vendor_id") or "", family, model, flags)
    isa = {512: "AVX-512", 256: "AVX2+FMA", 128: "SSE"}[_widest_bits(flags)]
    bf16 = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None
    usable = cores or len(os.sched_getaffinity(0))
    return CpuFloor(usable, clock, source, arch, isa, bf16, _int8_path(flags), model_name, str(path))


class SgemmProbe:
    """One large fp32 MatMul in ONNX Runtime (MLAS): the rate this CPU really sustains, right now.

    The bench runs it inside its timing rounds, so that the measured floor sees the same
    neighbours and clock as the model runs it is compared with.
    """

    def __init__(self, threads: int, size: int = 1536) -> None:
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper

        from runtimes.probe import ort_probe

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
        self._session = ort_probe(model, threads=threads)
        self._session.run(self._a)  # weight prepacking happens on the first run

    def gfma_per_s(self) -> float:
        """GFMA/s of one multiply."""
        import time

        start = time.perf_counter()
        self._session.run(self._a)
        return self.size**3 / (time.perf_counter() - start) / 1e9
