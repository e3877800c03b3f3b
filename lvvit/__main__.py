"""`python -m lvvit` lists the presets with their settings."""

from __future__ import annotations

from lvvit.presets import get_preset, list_presets


def main() -> None:
    header = ("preset", "depth", "dim", "heads", "stem", "img", "crop", "params", "top-1")
    print("{:<13} {:>5} {:>4} {:>5} {:<8} {:>4} {:>5} {:>8} {:>6}".format(*header))
    for name in list_presets():
        p = get_preset(name)
        a = p.arch
        print(
            f"{name:<13} {a.depth:>5} {a.embed_dim:>4} {a.num_heads:>5} {a.stem:<8} {p.resolution:>4} "
            f"{p.preprocess.crop_pct:>5} {p.params_m:>7.2f}M {p.top1:>6}"
        )


if __name__ == "__main__":
    main()
