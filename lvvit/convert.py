"""Convert LV-ViT weights between formats: `python -m lvvit.convert SRC DST --preset NAME`.

Reads `.pdparams`, `.safetensors` or the authors' `.pth.tar` (no PyTorch needed),
checks that every weight fits the preset, and writes Paddle-layout `.pdparams`
or `.safetensors`. Nothing is written unless the whole file fits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lvvit.errors import LvvitError
from lvvit.presets import list_presets


def convert_weights(
    src: str | Path,
    dst: str | Path,
    preset: str,
    resolution: int | None = None,
    checkpoint_key: str | None = None,
) -> Path:
    """Load `src` into `preset` (resampling pos_embed for `resolution`) and save it as `dst`."""
    from lvvit.factory import create_model
    from lvvit.weights.state_dict import save_state_dict

    model = create_model(preset, weights=src, resolution=resolution, checkpoint_key=checkpoint_key)
    return save_state_dict(model, dst)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lvvit.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="weights to read: .pdparams, .safetensors, .pth/.pth.tar/.pt")
    parser.add_argument("dst", type=Path, help="file to write: .pdparams or .safetensors (Paddle layout)")
    parser.add_argument(
        "--preset",
        required=True,
        choices=list_presets(),
        metavar="NAME",
        help=f"architecture the weights belong to: {', '.join(list_presets())}",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="input size to convert for (multiple of 16); resamples pos_embed (default: the preset's)",
    )
    parser.add_argument(
        "--checkpoint-key",
        default=None,
        help="entry of a wrapped checkpoint to read (default: state_dict, model, state_dict_ema)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = convert_weights(args.src, args.dst, args.preset, args.resolution, args.checkpoint_key)
    except LvvitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
