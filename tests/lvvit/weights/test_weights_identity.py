"""Weights are identified by their tensors: the authors' `.pth.tar` and its converted `.pdparams` are one model."""

from __future__ import annotations

import pytest

from exporters.onnx import export_onnx
from lvvit import create_model
from lvvit.common.provenance import sha256_of
from lvvit.convert import convert_weights
from lvvit.factory import resolve_preset
from lvvit.weights.state_dict import weights_identity
from runtimes.spec import read_model_metadata
from tests.conftest import TINY
from validation import ModelSource
from validation.core.runners import check_same_model
from validation.engines.reference_cache import reference_key
from validation.errors import ModelSourceError

pytest.importorskip("paddle")
RES = 32


@pytest.fixture(scope="module")
def authors_and_converted(tmp_path_factory):
    from tests.tlt_oracle import build_reference, save_authors_checkpoint

    folder = tmp_path_factory.mktemp("identity")
    spec = resolve_preset("lvvit_s", RES, **TINY)
    checkpoint = save_authors_checkpoint(
        build_reference(spec, seed=3), folder / "lvvit_tiny.pth.tar", wrap="state_dict_ema", prefix="module."
    )
    # what `python -m lvvit.convert` runs (its main only parses the flags), with the tiny architecture
    converted = {s: convert_weights(checkpoint, folder / f"lvvit_tiny{s}", spec) for s in (".pdparams", ".safetensors")}
    return spec, checkpoint, converted


def test_a_checkpoint_and_its_conversions_are_the_same_weights(authors_and_converted):
    spec, checkpoint, converted = authors_and_converted
    files = [checkpoint, *converted.values()]
    assert len({sha256_of(f) for f in files}) == 3  # three different files...
    identities = {weights_identity(f) for f in files}
    loaded = {create_model(spec, weights=f).weights_info.tensors_sha256 for f in files}
    assert len(identities) == 1 and identities == loaded  # ...one set of tensors, by either reading
    keys = [reference_key(ModelSource(spec=spec, weights=f)) for f in files]
    assert keys[0] == keys[1] == keys[2]  # one reference cache serves all three


def test_an_export_from_the_checkpoint_is_checked_against_the_converted_file(authors_and_converted, tmp_path):
    spec, checkpoint, converted = authors_and_converted
    onnx = export_onnx(spec, weights=checkpoint, output=tmp_path / "m.onnx", verify=False, log=lambda m: None).path
    metadata = read_model_metadata(onnx)
    assert metadata.weights["tensors_sha256"] == weights_identity(checkpoint)
    assert metadata.weights["sha256"] == sha256_of(checkpoint)  # the file's hash stays, as provenance
    for weights in converted.values():
        check_same_model(ModelSource(spec=spec, weights=weights, onnx=onnx), onnx, metadata)  # accepted
    other = tmp_path / "other.pdparams"
    from lvvit.weights.state_dict import save_state_dict

    save_state_dict(create_model(spec, seed=5), other)
    with pytest.raises(ModelSourceError, match=r"m\.onnx: was exported from lvvit_tiny\.pth\.tar .*their tensors "
                                               r"differ \(tensors_sha256 [0-9a-f]{64} vs [0-9a-f]{64}\)"):  # fmt: skip
        check_same_model(ModelSource(spec=spec, weights=other, onnx=onnx), onnx, metadata)
