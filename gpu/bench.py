"""LV-ViT throughput on one GPU: ONNX Runtime CUDA (fp16 and fp32 exports) against the authors' PyTorch model.

Runs on the lent GPU machine (no Paddle there) from the folder `gpu/stage.py` wrote, in one process, on one
GPU, with the same inputs for every path:

- `ort fp16 (I/O binding)`: the `--precision fp16` export, its input and output bound to buffers already on
  the GPU, so only the model runs (as the PyTorch paths, whose input is a CUDA tensor);
- `ort fp32 (I/O binding)`: the portable fp32 export, bound the same way, TF32 off (the kit's default);
- `ort fp16, OrtPredictor.logits`: the kit's own call from a numpy batch (copies to and from the GPU and the
  input checks included): what an application gets;
- `torch eager fp32` (TF32 off), `torch eager AMP` (autocast fp16; bf16 on the CPU) and, for
  `--compile-batch-sizes`, `torch.compile AMP`: `tlt`'s LV_ViT with the same architecture and random weights.

Every timed round is `--round-s` long or more, after `--warmup` calls (the first call of a shape picks cuDNN's
algorithms); ms per batch is the median of `--repeats` rounds. Ratios are over PyTorch eager AMP at the same
batch. The share of the GPU's fp16 dense peak uses the model's MACs (`lvvit.macs.count_macs`, 2 FLOPs each)
and the datasheet table below. Rows that would start after `--budget-s` are reported as not run.

    python gpu/bench.py --stage DIR [--device cuda|cpu] [--batch-sizes 1,32,128,256] [--out DIR]

`--device cpu --model tiny --batch-sizes 1,2` is the smoke run of every path for machines without a GPU.
Writes `bench.json` and `bench.md` to `--out` (default `$OUT`, else build/gpu-bench) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from lvvit.macs import count_macs  # noqa: E402
from lvvit.presets import ArchConfig, at_resolution, get_preset  # noqa: E402
from runtimes import OrtPredictor  # noqa: E402

# Dense (no sparsity) fp16 Tensor Core peaks in TFLOP/s, from NVIDIA's H100 and H200 datasheets (the sparse
# figure halved), keyed by what the device name contains; checked in this order.
FP16_DENSE_PEAK_TFLOPS = (
    ("H200 NVL", 835.5),
    ("H200", 989.5),  # SXM
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5),
    ("H100", 989.5),  # SXM ("NVIDIA H100 80GB HBM3")
)
GOAL = {"batch": 128, "path": "ort fp16 (I/O binding)", "over": "torch eager AMP", "ratio": 1.3}


@dataclass
class Row:
    path: str
    batch: int
    precision: str
    ms_per_batch: float | None = None
    ms_min: float | None = None
    images_per_s: float | None = None
    calls_per_round: int = 0
    note: str = ""
    ratio: float | None = None  # over torch eager AMP at this batch
    extra: dict[str, Any] = field(default_factory=dict)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-sizes takes comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--batch-sizes must be positive integers, got {text!r}")
    return sizes


def device_name(device: str) -> str:
    if device == "cpu":
        return platform.processor() or platform.machine()
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # no torch: ask the driver
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]


def fp16_dense_peak(name: str) -> float | None:
    return next((peak for key, peak in FP16_DENSE_PEAK_TFLOPS if key in name), None)


def time_calls(step: Callable[[], Any], sync: Callable[[], None], warmup: int, repeats: int, round_s: float):
    """(median ms per call, min ms per call, calls per round) over `repeats` rounds of at least `round_s`."""
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    step()
    sync()
    once = time.perf_counter() - start
    calls = max(1, math.ceil(round_s / max(once, 1e-6)))
    per_call = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        sync()
        per_call.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(per_call), min(per_call), calls


def ort_bound_step(predictor: OrtPredictor, batch: np.ndarray, device: str) -> Callable[[], Any]:
    """One run of the session with its input and output in buffers on `device`, bound once."""
    import onnxruntime as ort

    ort_device = "cuda" if device == "cuda" else "cpu"
    session, info = predictor.session, predictor.info
    x = ort.OrtValue.ortvalue_from_numpy(batch, ort_device, 0)
    y = ort.OrtValue.ortvalue_from_shape_and_type([len(batch), info.num_classes], np.float32, ort_device, 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input(info.input_name, x)
    binding.bind_ortvalue_output(info.output_name, y)
    return lambda: session.run_with_iobinding(binding)  # returns once the GPU finished (ORT syncs its stream)


def torch_model(manifest_model: dict, stage: Path, device: str):
    """tlt's LV_ViT with the staged model's architecture, its own random initialisation (only the speed is
    measured), in eval mode."""
    import torch

    from lvvit.authors import authors_model
    from runtimes.onnx_file import kit_metadata, read_onnx_file

    path, props = read_onnx_file(stage / manifest_model["fp32"])
    meta = kit_metadata(props, path)
    preset = at_resolution(replace(get_preset(meta.preset), arch=ArchConfig(**meta.arch)), meta.resolution)
    torch.manual_seed(0)
    return authors_model(preset).eval().to(device), meta


def torch_settings(device: str) -> tuple[Callable[[], Any], Any]:
    """(the call that waits for the device, the autocast dtype); TF32 off on CUDA."""
    import torch

    if device != "cuda":
        return (lambda: None), torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, as the ORT fp32 session (use_tf32=0)
    torch.backends.cudnn.allow_tf32 = False
    return torch.cuda.synchronize, torch.float16


def eager_step(net: Any, x: Any, device: str, amp_dtype: Any, amp: bool) -> Callable[[], Any]:
    """One forward pass of the PyTorch model, in autocast when `amp`."""
    import torch

    def step():
        with torch.inference_mode(), torch.autocast(device, dtype=amp_dtype, enabled=amp):
            return net(x)

    return step


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    manifest = json.loads((args.stage / "manifest.json").read_text())
    staged = manifest["models"][args.model]
    model, meta = torch_model(staged, args.stage, args.device)
    name = device_name(args.device)
    sync, amp_dtype = torch_settings(args.device)
    rng = np.random.default_rng(0)
    size = meta.resolution
    rows: list[Row] = []
    skipped_budget = []

    def measure(path: str, batch: int, precision: str, make_step: Callable[[], Callable[[], Any]], **extra) -> None:
        if time.perf_counter() - started > args.budget_s:
            skipped_budget.append((path, batch))
            rows.append(Row(path, batch, precision, note=f"not run: past the {args.budget_s:.0f} s budget"))
            return
        try:
            setup = time.perf_counter()
            step = make_step()
            extra = {**extra, "setup_s": round(time.perf_counter() - setup, 2)}
            med, low, calls = time_calls(step, sync, args.warmup, args.repeats, args.round_s)
        except Exception as exc:  # a path that fails is a result to report, not a reason to lose the others
            rows.append(Row(path, batch, precision, note=f"failed: {type(exc).__name__}: {exc}"[:300]))
            return
        rows.append(Row(path, batch, precision, med, low, batch / med * 1e3, calls, extra=extra))
        print(f"  {path:34s} batch {batch:4d}: {med:9.3f} ms  {batch / med * 1e3:10.1f} img/s", flush=True)

    amp_name = str(amp_dtype).replace("torch.", "")

    def eager(x, amp: bool, net=model) -> Callable[[], Any]:
        return eager_step(net, x, args.device, amp_dtype, amp)

    def bench_batch(batch_size: int) -> None:
        batch = rng.standard_normal((batch_size, 3, size, size), dtype=np.float32)
        x = torch.from_numpy(batch).to(args.device)
        measure("ort fp16 (I/O binding)", batch_size, "fp16", lambda: ort_bound_step(ort_fp16, batch, args.device))
        measure("ort fp32 (I/O binding)", batch_size, "fp32", lambda: ort_bound_step(ort_fp32, batch, args.device))
        with OrtPredictor(args.stage / staged["fp16"], device=args.device, batch_size=batch_size) as kit:
            measure("ort fp16, OrtPredictor.logits", batch_size, "fp16", lambda: lambda: kit.logits(batch))
        measure("torch eager fp32", batch_size, "fp32", lambda: eager(x, False))
        measure("torch eager AMP", batch_size, amp_name, lambda: eager(x, True))
        if batch_size in args.compile_batch_sizes:
            measure("torch.compile AMP", batch_size, amp_name, lambda: eager(x, True, torch.compile(model)))

    ort_fp16 = OrtPredictor(args.stage / staged["fp16"], device=args.device)
    ort_fp32 = OrtPredictor(args.stage / staged["fp32"], device=args.device)
    for batch_size in args.batch_sizes:
        bench_batch(batch_size)
    ort_settings = {"ort_providers_fp16": ort_fp16.providers,
                    "ort_provider_options_fp32": ort_fp32.describe()["provider_options"]}  # fmt: skip
    ort_fp16.close()
    ort_fp32.close()
    return _record(args, manifest, meta, name, rows, ort_settings) | {
        "not_run_for_budget": skipped_budget,
        "wall_s": round(time.perf_counter() - started, 1),
        "rows": [asdict(r) for r in rows],
    }


def _record(
    args: argparse.Namespace, manifest: dict, meta: Any, name: str, rows: list[Row], ort_settings: dict
) -> dict[str, Any]:
    """The result around the rows: ratios over torch eager AMP, the best row against the fp16 peak, the goal,
    the settings and versions."""
    import onnxruntime as ort
    import torch

    size = meta.resolution
    amp = {r.batch: r.images_per_s for r in rows if r.path == "torch eager AMP" and r.images_per_s}
    for r in rows:
        if r.images_per_s and r.batch in amp:
            r.ratio = r.images_per_s / amp[r.batch]
    flops_per_image = 2 * count_macs(ArchConfig(**meta.arch), size)
    peak = fp16_dense_peak(name) if args.device == "cuda" else None
    best = max((r for r in rows if r.images_per_s), key=lambda r: r.images_per_s, default=None)
    goal_rows = {r.path: r for r in rows if r.batch == GOAL["batch"] and r.images_per_s}
    goal_ratio = (
        goal_rows[GOAL["path"]].images_per_s / goal_rows[GOAL["over"]].images_per_s
        if GOAL["path"] in goal_rows and GOAL["over"] in goal_rows
        else None
    )
    return {
        "device": args.device,
        "device_name": name,
        "model": args.model,
        "preset": meta.preset,
        "arch": meta.arch,
        "resolution": size,
        "weights": manifest["weights"],
        "flops_per_image": flops_per_image,
        "fp16_dense_peak_tflops": peak,
        "best": {
            "path": best.path,
            "batch": best.batch,
            "images_per_s": best.images_per_s,
            "tflops": best.images_per_s * flops_per_image / 1e12,
            "share_of_fp16_dense_peak": best.images_per_s * flops_per_image / 1e12 / peak if peak else None,
        }
        if best
        else None,
        "goal": {**GOAL, "measured": goal_ratio, "met": goal_ratio >= GOAL["ratio"] if goal_ratio else None},
        "settings": {
            "batch_sizes": args.batch_sizes,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "round_s": args.round_s,
            "compile_batch_sizes": args.compile_batch_sizes,
            "torch_tf32": False,
            **ort_settings,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "onnxruntime": ort.__version__,
            "onnxruntime_from": ort.__file__,
            "numpy": np.__version__,
        },
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']} ({result['preset']} layout, embed_dim {result['arch']['embed_dim']}, depth "
        f"{result['arch']['depth']}) at {result['resolution']} px on {result['device_name']} ({result['device']}), "
        f"{result['weights']}; ms per batch = median of {result['settings']['repeats']} rounds; "
        "ratio = images/s over torch eager AMP at the same batch.",
        "",
        "| path | precision | batch | ms / batch | images/s | x torch eager AMP |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r["images_per_s"] is None:
            lines.append(f"| {r['path']} | {r['precision']} | {r['batch']} | {r['note']} | | |")
            continue
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        lines.append(
            f"| {r['path']} | {r['precision']} | {r['batch']} | {r['ms_per_batch']:.3f} | "
            f"{r['images_per_s']:.1f} | {ratio} |"
        )
    best, goal = result["best"], result["goal"]
    if best:
        share = best["share_of_fp16_dense_peak"]
        peak = result["fp16_dense_peak_tflops"]
        lines += [
            "",
            f"Best: {best['path']} at batch {best['batch']}, {best['images_per_s']:.1f} images/s = "
            f"{best['tflops']:.1f} TFLOP/s ({result['flops_per_image'] / 1e9:.2f} GFLOP per image)"
            + (f", {share:.1%} of the {peak} TFLOP/s fp16 dense peak." if share else " (no fp16 peak known here)."),
        ]
    measured = f"{goal['measured']:.2f}x" if goal["measured"] else "not measured"
    lines.append(
        f"Goal: {goal['path']} >= {goal['ratio']}x {goal['over']} at batch {goal['batch']}: {measured}"
        + ("" if goal["met"] is None else (" (met)" if goal["met"] else " (NOT met)"))
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python gpu/bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", type=Path, default=Path(os.environ.get("LVVIT_GPU_STAGE", ".gpu/payload")),
                        help="the folder gpu/stage.py wrote (default $LVVIT_GPU_STAGE, else .gpu/payload)")  # fmt: skip
    parser.add_argument("--model", default="lvvit_s", help="which staged model: lvvit_s (default) or tiny")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default); cpu: smoke run")
    parser.add_argument("--batch-sizes", type=parse_sizes, default=[1, 32, 128, 256], help="default 1,32,128,256")
    parser.add_argument(
        "--compile-batch-sizes", type=parse_sizes, default=[128], help="also torch.compile at these (default 128)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before each row (default 3)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per row (default 5)")
    parser.add_argument("--round-s", type=float, default=0.3, help="minimum length of a timed round (default 0.3 s)")
    parser.add_argument("--budget-s", type=float, default=240, help="later rows are not run (default 240)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "build/gpu-bench"),
                        help="where bench.json and bench.md go (default $OUT, else build/gpu-bench)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.repeats < 1 or args.round_s <= 0:
        parser.error("--warmup and --repeats must be at least 1 and --round-s positive")
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (args.out / "bench.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
