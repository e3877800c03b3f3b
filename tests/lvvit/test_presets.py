from __future__ import annotations

import pytest

from lvvit import ResolutionError, UnknownPresetError, create_model, get_preset, list_presets
from lvvit.factory import resolve_preset

SEVEN = ["lvvit_s", "lvvit_s_384", "lvvit_m", "lvvit_m_384", "lvvit_m_448", "lvvit_l_448", "lvvit_l_512"]


def test_registry_holds_the_seven_presets():
    assert list_presets() == SEVEN


def test_unknown_preset_lists_valid_names():
    with pytest.raises(UnknownPresetError, match=r"unknown preset 'lvvit_xl'.*lvvit_s, lvvit_s_384.*lvvit_l_512"):
        get_preset("lvvit_xl")


@pytest.mark.slow
@pytest.mark.parametrize("name", SEVEN)
def test_parameter_count_equals_authors_table(name):
    model = create_model(name)
    count = sum(int(p.numel()) for p in model.parameters()) / 1e6
    assert round(count, 2) == pytest.approx(get_preset(name).params_m, abs=0.01)


def test_preprocessing_is_kept_apart_from_architecture():
    s, s384, m = get_preset("lvvit_s"), get_preset("lvvit_s_384"), get_preset("lvvit_m")
    assert s.arch == s384.arch
    assert (s.preprocess.crop_pct, s.preprocess.resize_size) == (0.9, 248)
    assert (s384.preprocess.input_size, s384.preprocess.resize_size) == (384, 426)
    assert (m.preprocess.crop_pct, m.preprocess.resize_size) == (1.0, 224)
    assert get_preset("lvvit_l_448").arch.stem == "4_2_128"


def test_resolution_must_be_a_multiple_of_the_patch():
    assert resolve_preset("lvvit_s", 288).preprocess.input_size == 288
    with pytest.raises(ResolutionError, match=r"resolution 300 is not a positive multiple of the patch size 16"):
        resolve_preset("lvvit_s", 300)


def test_unknown_architecture_override_is_rejected():
    with pytest.raises(TypeError, match="unknown architecture overrides"):
        resolve_preset("lvvit_s", depht=2)
