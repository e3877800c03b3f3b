"""What a predictor knows about its model: input, output, batch, classes and the preprocessing to use.

The preprocessing comes from one place, `lvvit`'s definition, configured by
(first match wins): an explicit `preprocess=` config, the model's own kit
metadata, or an explicit `preset=` (and `resolution=`) for a model without
metadata. A model without metadata and without a preset is an error that says
to pass one; a preset that contradicts the metadata is an error too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lvvit.metadata import MetadataError, ModelMetadata
from lvvit.presets import PreprocessConfig, at_resolution, get_preset

from .errors import ConfigurationError, ModelFileError

Dim = int | str | None  # a graph dimension: a size, or a symbolic/unknown one


@dataclass(frozen=True)
class ModelInfo:
    source: str  # the model file (or "eager <preset>")
    input_name: str
    output_name: str
    preprocess: PreprocessConfig
    preprocess_origin: str  # "metadata", "preset lvvit_s", "explicit"
    batch: int | None  # fixed batch size of the graph, None when dynamic
    num_classes: int | None
    metadata: ModelMetadata | None

    @property
    def input_shape(self) -> list[int | str]:
        size = self.preprocess.input_size
        return [self.batch if self.batch is not None else "batch", 3, size, size]


def _static(dim: Dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def choose_preprocess(
    source: str,
    metadata: ModelMetadata | None,
    preset: str | None,
    resolution: int | None,
    preprocess: PreprocessConfig | None,
) -> tuple[PreprocessConfig, str]:
    """(config, where it came from) following the order in the module docstring."""
    if metadata is not None and preset is not None and preset != metadata.preset:
        raise ConfigurationError(
            f"{source}: preset={preset!r} contradicts the model's metadata (preset {metadata.preset!r}); "
            "leave preset out to use the metadata"
        )
    if metadata is not None and resolution is not None and resolution != metadata.resolution:
        raise ConfigurationError(
            f"{source}: resolution={resolution} contradicts the model's metadata ({metadata.resolution}px)"
        )
    if preprocess is not None:
        return preprocess, "explicit"
    if metadata is not None:
        return metadata.preprocess, "metadata"
    if preset is None:
        raise MetadataError(
            f"{source}: has no LV-ViT kit metadata, so its preprocessing is unknown; "
            "pass the preset explicitly, e.g. preset='lvvit_s' (and resolution= if it is not the preset's)"
        )
    return at_resolution(get_preset(preset), resolution).preprocess, f"preset {preset}"


def build_model_info(
    source: str,
    input_name: str,
    input_shape: Sequence[Dim],
    output_name: str,
    output_shape: Sequence[Dim] | None,
    metadata: ModelMetadata | None,
    *,
    preset: str | None = None,
    resolution: int | None = None,
    preprocess: PreprocessConfig | None = None,
) -> ModelInfo:
    """Check the graph's input/output against LV-ViT's and against the chosen preprocessing."""
    dims = list(input_shape)
    if len(dims) != 4 or _static(dims[1]) not in (3, None):
        raise ModelFileError(
            f"{source}: input {input_name!r} has shape {dims}; an LV-ViT model takes [batch, 3, height, width]"
        )
    config, origin = choose_preprocess(source, metadata, preset, resolution, preprocess)
    size = config.input_size
    spatial = [_static(d) for d in dims[2:]]
    if any(s is not None and s != size for s in spatial):
        raise ConfigurationError(
            f"{source}: the model takes {dims[2]}x{dims[3]} images but the preprocessing ({origin}) "
            f"makes {size}x{size}; pass resolution= or a matching preprocess="
        )
    num_classes = _static(output_shape[1]) if output_shape is not None and len(output_shape) == 2 else None
    if metadata is not None:
        if num_classes is not None and num_classes != metadata.num_classes:
            raise ModelFileError(
                f"{source}: output {output_name!r} has {num_classes} classes, its metadata says {metadata.num_classes}"
            )
        num_classes = metadata.num_classes
    return ModelInfo(source, input_name, output_name, config, origin, _static(dims[0]), num_classes, metadata)
