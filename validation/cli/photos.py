"""`python -m validation photos DIR`: scikit-image's photographs and crops in a folder (`validation.datasets`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    from validation.cli.options import at_most
    from validation.datasets import photos

    parser = subparsers.add_parser(
        "photos",
        help="scikit-image's photographs and crops as an image folder, to calibrate int8 or run drift on",
        description=photos.__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("folder", type=Path, help="where to write the JPEG files")
    parser.add_argument(
        "--variants", type=at_most(64), default=1, help="images per photo: the photo plus crops, 1..64 (default 1)"
    )
    parser.set_defaults(func=main)


def main(args: Any) -> int:
    return run(args.folder, args.variants)


def run(folder: Path, variants: int = 1) -> int:
    from validation.datasets.photos import write_sample_photos

    paths = write_sample_photos(folder, variants)  # PhotosUnavailableError is an LvvitError: exit 2, with the fix
    print(f"wrote {len(paths)} images to {folder}")
    return 0
