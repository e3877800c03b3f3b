"""Regenerate `imagenet_classes.txt`: the 1000 ImageNet-1k class names in model output order.

Source: timm (huggingface/pytorch-image-models, Apache-2.0), `timm/data/_info/`:
`imagenet_synsets.txt` lists the 1000 ILSVRC-2012 WordNet ids in the standard
sorted order (index 0 = n01440764, the order of every ImageNet-1k classifier,
LV-ViT included), and `imagenet_synset_to_lemma.txt` maps each id to its
WordNet lemmas ("tench, Tinca tinca"). Each output line is the full lemma
string of one class, line i = class id i. timm is needed only to run this
script, not at run time: the kit ships the generated text file.

    python runtimes/data/make_imagenet_classes.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

OUTPUT = Path(__file__).with_name("imagenet_classes.txt")


def imagenet_class_names() -> list[str]:
    spec = importlib.util.find_spec("timm")  # locates the package without importing it (and its dependencies)
    if spec is None or spec.origin is None:
        raise SystemExit("timm is not installed: pip install 'lvvit-deploy[reference]'")
    info = Path(spec.origin).parent / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemma_lines = (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
    lemmas = dict(line.split("\t", 1) for line in lemma_lines if line)
    if len(synsets) != 1000 or synsets != sorted(synsets):
        raise SystemExit(f"expected the 1000 sorted ImageNet-1k synsets in {info}, got {len(synsets)}")
    return [lemmas[s].strip() for s in synsets]


def main() -> None:
    names = imagenet_class_names()
    OUTPUT.write_text("\n".join(names) + "\n", encoding="utf-8")
    print(f"wrote {len(names)} class names to {OUTPUT}")


if __name__ == "__main__":
    main()
