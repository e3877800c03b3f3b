"""Shared by the scale tests: the tiny digits model exported to ONNX, an ImageNet-layout folder of digits."""

from __future__ import annotations

from pathlib import Path

from exporters.onnx import export_onnx
from runtimes import PredictorSpec
from validation import ModelSource, RuntimeOptions
from validation.core.runners import runner_specs
from validation.datasets import digits

TIMING = {"seconds", "images_per_second", "describe", "gate"}


def write_digits_subset(folder, count: int, name: str = "digit_{:04d}.png"):
    """An ImageNet-layout folder (`val/` + `val_list.txt`) of the first `count` digits, files named `name`."""
    images, labels = digits.load_digits()
    (folder / "val").mkdir(parents=True)
    lines = []
    for i in range(count):
        digits.digit_image(images[i]).save(folder / "val" / name.format(i))
        lines.append(f"val/{name.format(i)} {labels[i]}")
    (folder / "val_list.txt").write_text("\n".join(lines) + "\n")
    return folder


def make_digits_model(folder: Path) -> tuple[Path, Path, dict[str, PredictorSpec]]:
    """(the .onnx, a folder of 45 digits with val_list.txt, the specs of paddle and ort)."""
    onnx = export_onnx(
        digits.digits_spec(), weights=digits.WEIGHTS, output=folder / "model" / "digits.onnx", log=lambda message: None
    )
    data = write_digits_subset(folder / "data", 45)
    source = ModelSource(spec=digits.digits_spec(), weights=digits.WEIGHTS, onnx=onnx.path)
    specs = runner_specs(["ort"], source, RuntimeOptions(batch_size=8, threads=1), lambda m: None)
    return onnx.path, data, specs


def numbers(entry: dict) -> dict:
    """A report entry without what differs between two runs of the same inputs (timings, descriptions)."""
    return {k: v for k, v in entry.items() if k not in TIMING}
