"""The pages of a bench report: the side-by-side table, ratios against Paddle Inference, the arithmetic floors."""

from __future__ import annotations

from typing import Any

from .document import Block, Bullets, Heading, Paragraph, Table

REFERENCES = ("paddle-inference", "paddle-inference-streams")  # ratios use the faster of the two


def _timings(path: dict[str, Any]) -> dict[int, dict[str, float]]:
    """Timings by batch size (JSON turns the int keys into strings; a re-rendered report reads them back)."""
    return {int(b): t for b, t in path["timings"].items()}


def reference_throughput(paths: list[dict[str, Any]], batch: int) -> tuple[str, float] | None:
    """The faster Paddle Inference configuration at `batch`: (name, images/s)."""
    candidates = [
        (p["name"], _timings(p)[batch]["images_per_s"])
        for p in paths
        if p["name"] in REFERENCES and not p["skipped"] and batch in _timings(p)
    ]
    return max(candidates, key=lambda c: c[1]) if candidates else None


def _ratio(result: dict[str, Any], paths: list[dict[str, Any]], batch: int) -> float | None:
    reference = reference_throughput(paths, batch)
    if reference is None or batch not in _timings(result):
        return None
    return _timings(result)[batch]["images_per_s"] / reference[1]


def bench_blocks(report: dict[str, Any]) -> tuple[str, list[Block]]:
    """The side-by-side table, the ratios against Paddle inference, and the arithmetic floors."""
    paths = report["paths"]
    batches = [int(b) for b in report["batch_sizes"]]
    header = ["path", "precision"]
    for b in batches:
        header += [f"b{b} median ms (IQR)", f"b{b} img/s", f"b{b} x Paddle Inference"]
    if 1 in batches:
        header.append("b1 x floor of its precision")
    header += ["max abs vs eager", "mean abs / median top-2 margin", "top-1 agreement"]
    title = f"Benchmark: {report['preset']} at {report['resolution']}px, {report['threads']} threads"
    blocks: list[Block] = [
        Heading(title, 1),
        Paragraph(
            f"Batched runs use {report['streams']} streams (the batch split into parallel parts) on every runtime; "
            "a batch smaller than that (batch 1) runs whole on all the threads. "
            "Ratios are throughput over the faster Paddle Inference configuration (one stream or the streams)."
        ),
        Paragraph(
            f"CPU: {report['cpu']['model_name']}; weights: {report['weights']}; "
            f"{report['warmup']} warm-up + {report['repeats']} interleaved repeats per path and batch size, "
            f"{report['settle_ms']} ms apart; "
            f"drift on {report['images']['count']} real images ({report['images']['folder']})."
        ),
    ]
    rows = []
    for p in paths:
        if p["skipped"]:
            rows.append([p["name"], f"not run: {p['skipped']}"] + [""] * (len(header) - 2))
            continue
        row = [p["name"], p["precision"]]
        for b in batches:
            t = _timings(p).get(b)
            ratio = _ratio(p, paths, b)
            row += (
                [f"{t['median_ms']:.1f} ({t['p25_ms']:.1f}-{t['p75_ms']:.1f})", f"{t['images_per_s']:.2f}"]
                if t
                else ["-", "-"]
            )
            row.append(f"{ratio:.2f}x" if ratio else "-")
        if 1 in batches:
            x_floor = _timings(p).get(1, {}).get("x_floor")
            row.append(f"{x_floor:.2f}x" if x_floor else "-")
        d = p["drift"]
        if d:  # the mean logit error against the typical top-1/top-2 gap: what top-1 flips mean on these weights
            margin = d["reference_median_top2_margin"]
            relative = f"{d['mean_abs'] / margin:.3f}" if margin else "-"
            row += [f"{d['max_abs']:.2e}", relative, f"{d['top1_agreement']:.1%}"]
        else:
            row += ["-", "-", "-"]
        rows.append(row)
    blocks.append(Table(header, rows))
    if 1 in batches:
        blocks.append(Paragraph("Arithmetic floors at batch 1 (each path against the floor of its precision):"))
        floors = [f"{p}: {w}." for p, w in report["floor_working_by_precision"].items()]
        clock = report["cpu"]["clock_ghz"]
        if clock > report["nominal_clock_ghz"]:
            floors.append(
                f"The SGEMM probe beat the nominal {report['nominal_clock_ghz']:g} GHz peak, so the floors use the "
                f"{clock:g} GHz it implies."
            )
        blocks.append(Bullets(floors))
    notes = []
    for precision in ("fp32", "bf16", "int8"):
        timed = [p for p in paths if p["precision"] == precision and not p["skipped"] and 1 in _timings(p)]
        if not timed or not report["floor_ms_batch1_by_precision"].get(precision):
            continue
        best = min(timed, key=lambda p: _timings(p)[1]["median_ms"])
        latency = _timings(best)[1]["median_ms"]
        x_floor = _timings(best)[1]["x_floor"]
        notes.append(
            f"Fastest {precision} path at batch 1: {best['name']}, {latency:.1f} ms = {x_floor:.2f}x its floor."
            + (
                " It beat the floor: its cores ran faster than in any SGEMM probe round, so this floor's clock is "
                "too low."
                if x_floor < 1
                else ""
            )  # fmt: skip
        )
    if 1 in batches:
        sgemm = report["measured_sgemm_gfma_per_s"]
        low, high = report["measured_sgemm_gfma_per_s_range"]
        nominal_peak = report["cpu"]["cores"] * report["nominal_clock_ghz"] * report["cpu"]["fp32_macs_per_cycle"]
        notes.append(
            f"A large SGEMM (1536^3, ONNX Runtime) timed in the same rounds ran at a median "
            f"{sgemm:.0f} GFMA/s ({low:.0f}-{high:.0f}), {sgemm / nominal_peak:.0%} of the fp32 peak at the nominal "
            f"{report['nominal_clock_ghz']:g} GHz ({nominal_peak:.1f} GMAC/s): at that rate the model's MACs take "
            f"{report['measured_floor_ms_batch1']:.1f} ms."
        )
    margin = next((p["drift"]["reference_median_top2_margin"] for p in paths if p["drift"]), None)
    if margin is not None:
        notes.append(f"Median top-1/top-2 logit margin of the reference on these images: {margin:.3g}.")
    for best in report.get("fastest_meeting_gate", []):  # older reports have none
        noise = f"; within this run's noise of it: {', '.join(best['within_noise'])}" if best["within_noise"] else ""
        notes.append(
            f"Fastest path at batch {best['batch']} with top-1 agreement >= {best['gate']:.0%}: {best['path']} "
            f"({best['images_per_s']:.2f} img/s, {best['top1_agreement']:.1%}){noise}."
        )
    blocks += [Paragraph(note) for note in notes]
    return title, blocks
