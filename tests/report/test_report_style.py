"""The style: fixed colours, markers and line styles for the known modes and presets."""

from __future__ import annotations

import pandas as pd

from scaling import report as rp


def test_style_maps_are_fixed_per_mode_and_size():
    style = rp.Style.of(["fsdp_tp", "dp", "custom"], ["10m", "tiny", "weird"])
    assert style.modes == ["dp", "fsdp_tp", "custom"]
    assert style.color("dp") == rp.MODE_COLORS["dp"] and style.marker("10m") == "s"
    assert style.color("custom") not in rp.MODE_COLORS.values()
    assert style.marker("weird") not in rp.SIZE_MARKERS.values()
    runs = pd.DataFrame(
        {"size": ["tiny", "tiny", "10m", "tiny"], "mup": [False, False, False, True]}
    )
    assert list(rp.Style.emphasis(runs)) == [1.0, 0.0, 1.0, 1.0]  # first drawn widest
