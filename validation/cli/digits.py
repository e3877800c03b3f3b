"""`python -m validation digits --out DIR` (or `digits train`): scikit-learn's digits as an image folder, and the
tiny LV-ViT trained on them (`validation.datasets.digits`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    from validation.datasets.digits import EPOCHS, TRAIN_SEED, WEIGHTS

    parser = subparsers.add_parser(
        "digits",
        help="scikit-learn's handwritten digits as an ImageNet-layout folder (and the tiny model trained on them)",
        description="scikit-learn's handwritten digits as an ImageNet-layout image folder, and the tiny LV-ViT "
        "trained on them (see validation.datasets.digits).",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the image folders here")
    sub = parser.add_subparsers(dest="digits_command", metavar="{train}")
    trainer = sub.add_parser("train", help="retrain the tiny model and write its weights")
    trainer.add_argument("--output", type=Path, default=WEIGHTS, help=f"weights file (default {WEIGHTS})")
    trainer.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs (default {EPOCHS})")
    trainer.add_argument("--seed", type=int, default=TRAIN_SEED, help=f"seed (default {TRAIN_SEED})")
    parser.set_defaults(func=main)


def main(args: Any) -> int:
    from validation.errors import DatasetError

    if args.digits_command == "train":
        return train(args.output, args.epochs, args.seed)
    if args.out is None:
        raise DatasetError("give --out DIR (write the images) or the train command")
    return write(args.out)


def train(output: Path, epochs: int, seed: int) -> int:
    from validation.datasets import digits

    digits.train(output, epochs, seed)
    return 0


def write(out: Path) -> int:
    from validation.datasets.digits import cli_model_args, write_folder

    folder = write_folder(out)
    command = ["python", "-m", "validation", "accuracy", "--images", str(folder.root), *cli_model_args()]
    print("evaluate with:\n  " + " ".join([*command, "--runtime", "ort"]))
    return 0
