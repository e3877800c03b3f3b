"""Class names for the model's outputs.

ImageNet-1k names ship with the kit (`data/imagenet_classes.txt`, 1000 lines,
line i = class i, the full WordNet lemma such as "tabby, tabby cat"; generated
from timm's tables by `data/make_imagenet_classes.py`), so nothing downloads.

Which names a predictor uses:
- `labels=` given: a sequence of names or a text file (one per line), which
  must have exactly one name per model output; or "imagenet-1k".
- otherwise the ImageNet names when the model has 1000 outputs and its
  metadata says `labels: imagenet-1k` (or it has no metadata);
- otherwise (e.g. the 10-class tiny test models) generic names `class_<id>`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .errors import ConfigurationError

IMAGENET_1K = "imagenet-1k"
_RESOURCE = "data/imagenet_classes.txt"


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in model output order."""
    text = resources.files(__package__).joinpath(_RESOURCE).read_text(encoding="utf-8")
    names = tuple(text.splitlines())
    if len(names) != 1000:
        raise RuntimeError(f"{_RESOURCE}: expected 1000 class names, found {len(names)}; reinstall the kit")
    return names


class Labels:
    """Names for class ids; `names` is None for the generic `class_<id>` scheme."""

    def __init__(self, names: Sequence[str] | None, source: str) -> None:
        self.names = tuple(names) if names is not None else None
        self.source = source

    def __getitem__(self, class_id: int) -> str:
        return self.names[class_id] if self.names is not None else f"class_{class_id}"

    def __len__(self) -> int:
        return len(self.names) if self.names is not None else 0

    def __repr__(self) -> str:
        return f"Labels({self.source!r})"


def resolve_labels(labels: Sequence[str] | str | Path | None, num_classes: int | None, declared: str | None) -> Labels:
    """The names for a model with `num_classes` outputs whose metadata declares `declared` (None: no metadata)."""
    if labels is None:
        if num_classes == 1000 and declared in (None, IMAGENET_1K):
            return Labels(imagenet_classes(), IMAGENET_1K)
        return Labels(None, "class_<id>")
    if isinstance(labels, str) and labels == IMAGENET_1K:
        names, source = imagenet_classes(), IMAGENET_1K
    elif isinstance(labels, (str, Path)):
        path = Path(labels)
        try:
            names, source = tuple(path.read_text(encoding="utf-8").splitlines()), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"{path}: cannot read the labels file ({exc})") from exc
    else:
        names, source = tuple(str(name) for name in labels), f"{len(labels)} names given"
    if num_classes is not None and len(names) != num_classes:
        raise ConfigurationError(f"labels ({source}) has {len(names)} names but the model has {num_classes} classes")
    return Labels(names, source)
