from __future__ import annotations

import pytest

from lvvit.common.sampling import evenly_spaced


def test_evenly_spaced_covers_the_whole_list_in_order():
    assert evenly_spaced(range(10), 5) == [0, 2, 4, 6, 8]
    assert evenly_spaced(list("abcdefg"), 3) == ["a", "c", "e"]
    assert evenly_spaced([1, 2], 5) == [1, 2]
    picked = evenly_spaced(range(50_000), 256)
    gaps = {b - a for a, b in zip(picked, [*picked[1:], 50_000], strict=True)}  # the last gap: to the end
    assert picked[0] == 0 and gaps == {195, 196}  # 50,000 / 256 = 195.3: the gaps differ by one at most


def test_evenly_spaced_refuses_no_items():
    with pytest.raises(ValueError, match="at least 1"):
        evenly_spaced([1, 2, 3], 0)
