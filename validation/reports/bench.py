"""The pages of a bench report: the side-by-side table, ratios against Paddle Inference, the arithmetic floors."""

from __future__ import annotations

from validation.reports.blocks import Figures
from validation.reports.document import Block, Bullets, Heading, Paragraph, Table
from validation.reports.types import BenchPathResult, BenchReport, Timing

# The one baseline of every ratio: Paddle Inference (oneDNN), one stream on all the threads. It is in every run
# (streams or not); taking the faster of two Paddle configurations made the baseline switch between runs.
BASELINE = "paddle-inference"


def _baseline(report: BenchReport, batch: int) -> Timing | None:
    """The baseline's timings at `batch`, None where it did not run."""
    found = next((p for p in report.paths if p.name == BASELINE and not p.skipped), None)
    return found.timings.get(batch) if found else None


def within_noise(a: Timing, b: Timing) -> bool:
    """Whether two timings are within the run's own noise: their interquartile ranges overlap."""
    return a.p25_ms <= b.p75_ms and b.p25_ms <= a.p75_ms


def _ratio_cell(result: BenchPathResult, report: BenchReport, batch: int) -> str:
    baseline, timing = _baseline(report, batch), result.timings.get(batch)
    if baseline is None or timing is None:
        return "-"
    ratio = timing.images_per_s / baseline.images_per_s
    noise = result.name != BASELINE and within_noise(timing, baseline)
    return f"{ratio:.2f}x" + (" (within noise)" if noise else "")


def _fastest_note(precision: str, timed: list[BenchPathResult], floor_known: bool) -> str:
    """The fastest path of a precision at batch 1, or the paths the run's noise cannot tell apart."""
    ranked = sorted(timed, key=lambda p: p.timings[1].median_ms)
    best = ranked[0].timings[1]
    tied = [p for p in ranked[1:] if within_noise(p.timings[1], best)]
    if tied:
        shown = ", ".join(
            f"{p.name} {p.timings[1].median_ms:.1f} ms ({p.timings[1].p25_ms:.1f}-{p.timings[1].p75_ms:.1f})"
            for p in [ranked[0], *tied]
        )
        return (
            f"Fastest {precision} paths at batch 1, within this run's noise of each other (their interquartile "
            f"ranges overlap), so not ranked: {shown}."
        )
    note = f"Fastest {precision} path at batch 1: {ranked[0].name}, {best.median_ms:.1f} ms"
    if not floor_known or best.x_floor is None:
        return note + "."
    note += f" = {best.x_floor:.2f}x its floor."
    if best.x_floor < 1:
        note += (
            " It beat the floor: its cores ran faster than in any SGEMM probe round, so this floor's clock is too low."
        )
    return note


def _cpuinfo_note(report: BenchReport) -> str:
    """Where the CPU was read from, when not /proc/cpuinfo (LVVIT_CPUINFO): its floors are that CPU's."""
    source = report.cpu.cpuinfo or "/proc/cpuinfo"  # older reports: /proc/cpuinfo
    return "" if source == "/proc/cpuinfo" else f" (read from {source}, named by LVVIT_CPUINFO)"


def _header(batches: list[int]) -> list[str]:
    header = ["path", "precision"]
    for b in batches:
        header += [f"b{b} median ms (IQR)", f"b{b} img/s", f"b{b} x {BASELINE}"]
    if 1 in batches:
        header.append("b1 x floor of its precision")
    return header + ["max abs vs eager", "mean abs / median top-2 margin", "top-1 agreement"]


def _path_row(p: BenchPathResult, report: BenchReport, batches: list[int]) -> list[str]:
    row = [p.name, p.precision]
    for b in batches:
        t = p.timings.get(b)
        row += [f"{t.median_ms:.1f} ({t.p25_ms:.1f}-{t.p75_ms:.1f})", f"{t.images_per_s:.2f}"] if t else ["-", "-"]
        row.append(_ratio_cell(p, report, b))
    if 1 in batches:
        x_floor = p.timings[1].x_floor if 1 in p.timings else None
        row.append(f"{x_floor:.2f}x" if x_floor else "-")
    d = p.drift
    if not d:
        return row + ["-", "-", "-"]
    # the mean logit error against the typical top-1/top-2 gap: what top-1 flips mean on these weights
    margin = d.reference_median_top2_margin
    relative = f"{d.mean_abs / margin:.3f}" if margin else "-"
    return row + [f"{d.max_abs:.2e}", relative, f"{d.top1_agreement:.1%}"]


def _table(report: BenchReport) -> Table:
    batches = [int(b) for b in report.batch_sizes]
    header = _header(batches)
    rows = [
        [p.name, f"not run: {p.skipped}"] + [""] * (len(header) - 2) if p.skipped else _path_row(p, report, batches)
        for p in report.paths
    ]
    return Table(header, rows)


def _floor_blocks(report: BenchReport) -> list[Block]:
    floors = [f"{p}: {w}." for p, w in report.floor_working_by_precision.items()]
    clock = report.cpu.clock_ghz
    if clock > report.nominal_clock_ghz:
        floors.append(
            f"The SGEMM probe beat the nominal {report.nominal_clock_ghz:g} GHz peak, so the floors use the "
            f"{clock:g} GHz it implies."
        )
    return [Paragraph("Arithmetic floors at batch 1 (each path against the floor of its precision):"), Bullets(floors)]


def _noise_note(report: BenchReport) -> list[str]:
    spreads = sorted((t.p75_ms - t.p25_ms) / t.median_ms for p in report.paths if not p.skipped
                     for t in p.timings.values())  # fmt: skip
    if not spreads:
        return []
    return [
        f"This run's noise: a path's interquartile range spans {spreads[0]:.1%} to {spreads[-1]:.1%} of its "
        f"median (median {spreads[len(spreads) // 2]:.1%}); paths closer than that are not ranked."
    ]


def _sgemm_note(report: BenchReport) -> str:
    sgemm = report.measured_sgemm_gfma_per_s
    low, high = report.measured_sgemm_gfma_per_s_range
    nominal_peak = report.cpu.cores * report.nominal_clock_ghz * (report.cpu.fp32_macs_per_cycle or 0)
    return (
        f"A large SGEMM (1536^3, ONNX Runtime) timed in the same rounds ran at a median "
        f"{sgemm:.0f} GFMA/s ({low:.0f}-{high:.0f}), {sgemm / nominal_peak:.0%} of the fp32 peak at the nominal "
        f"{report.nominal_clock_ghz:g} GHz ({nominal_peak:.1f} GMAC/s): at that rate the model's MACs take "
        f"{report.measured_floor_ms_batch1:.1f} ms."
    )


def _notes(report: BenchReport) -> list[str]:
    notes = []
    for precision in ("fp32", "bf16", "int8"):
        timed = [p for p in report.paths if p.precision == precision and not p.skipped and 1 in p.timings]
        if timed:
            notes.append(_fastest_note(precision, timed, bool(report.floor_ms_batch1_by_precision.get(precision))))
    notes += _noise_note(report)
    if 1 in report.batch_sizes:
        notes.append(_sgemm_note(report))
    margin = next((p.drift.reference_median_top2_margin for p in report.paths if p.drift), None)
    if margin is not None:
        notes.append(f"Median top-1/top-2 logit margin of the reference on these images: {margin:.3g}.")
    for best in report.fastest_meeting_gate:
        noise = f"; within this run's noise of it: {', '.join(best.within_noise)}" if best.within_noise else ""
        notes.append(
            f"Fastest path at batch {best.batch} with top-1 agreement >= {best.gate:.0%}: {best.path} "
            f"({best.images_per_s:.2f} img/s, {best.top1_agreement:.1%}){noise}."
        )
    return notes


def bench_blocks(report: BenchReport, figures: Figures) -> tuple[str, list[Block]]:
    """The side-by-side table, the ratios against Paddle inference, and the arithmetic floors (no figures)."""
    title = f"Benchmark: {report.preset} at {report.resolution}px, {report.threads} threads"
    blocks: list[Block] = [
        Heading(title, 1),
        Paragraph(
            f"Batched runs use {report.streams} streams (the batch split into parallel parts) on every runtime; "
            "a batch smaller than that (batch 1) runs whole on all the threads. "
            f"Ratios are throughput over {BASELINE} (Paddle Inference, oneDNN, one stream on all the threads), the "
            'baseline of every run; "within noise" marks a path whose interquartile range overlaps the baseline\'s.'
        ),
        Paragraph(
            f"CPU: {report.cpu.model_name}{_cpuinfo_note(report)}; weights: {report.weights}; "
            f"{report.warmup} warm-up + {report.repeats} interleaved repeats per path and batch size, "
            f"{report.settle_ms} ms apart; drift on {report.images.count} real images ({report.images.folder})."
        ),
        _table(report),
    ]
    if 1 in report.batch_sizes:
        blocks += _floor_blocks(report)
    return title, blocks + [Paragraph(note) for note in _notes(report)]
