"""The one style of all figures: colour per mode, marker and linestyle per size."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from scaling.presets import PRESETS
from scaling.report.record import mode_rank

DPI = 130
MODE_COLORS: dict[str, str] = {
    "none": "#6e6e6e",  # grey
    "dp": "#1f77b4",  # blue
    "fsdp": "#2ca02c",  # green
    "tp": "#ff7f0e",  # orange
    "fsdp_tp": "#9467bd",  # purple
}
_EXTRA_COLORS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728")
SIZE_MARKERS: dict[str, str] = dict(zip(PRESETS, "os^Dv<>pPXh", strict=True))
SIZE_LINESTYLES: dict[str, object] = dict(
    zip(
        PRESETS,
        [
            "-",
            "-.",
            ":",
            (0, (6, 1.5)),
            (0, (1, 1)),
            (0, (5, 1, 1, 1, 1, 1)),
            (0, (9, 2, 2, 2)),
            (0, (2, 2)),
            (0, (4, 1, 1, 1)),
            (0, (7, 1, 1, 1, 1, 1, 1, 1)),
            (0, (3, 3)),
        ],
        strict=True,
    )
)
_EXTRA_MARKERS = ("d", "H", "8", "1", "2", "3", "4")
VARIANT_HATCHES = ("", "//", "..", "xx", "\\\\", "oo", "--", "++")
FLOOR_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2}  # entropy floor


@dataclass
class Style:
    """Colour per mode, marker and linestyle per size: fixed for the known modes and presets,
    assigned in order for anything else. Built once per report from every run it shows."""

    modes: list[str]
    sizes: list[str]
    _colors: dict[str, str] = field(default_factory=dict)
    _markers: dict[str, str] = field(default_factory=dict)
    _linestyles: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, modes: Iterable[str], sizes: Iterable[str]) -> Style:
        modes = sorted(set(modes), key=mode_rank)
        sizes = list(dict.fromkeys(sizes))
        style = cls(modes, sizes)
        extra = iter(_EXTRA_COLORS * 4)
        for m in modes:
            style._colors[m] = MODE_COLORS.get(m) or next(extra)
        free_markers = iter(_EXTRA_MARKERS * 4)
        free_styles = iter(list(SIZE_LINESTYLES.values()) * 4)
        for s in sizes:
            style._markers[s] = SIZE_MARKERS.get(s) or next(free_markers)
            style._linestyles[s] = SIZE_LINESTYLES.get(s) or next(free_styles)
        return style

    def color(self, mode: str) -> str:
        return self._colors.get(mode, "black")

    def marker(self, size: str) -> str:
        return self._markers.get(size, "o")

    def linestyle(self, size: str) -> object:
        return self._linestyles.get(size, "-")

    def legend_handles(
        self, modes: Iterable[str], sizes: Iterable[str], lines: bool = True, mup: bool = False
    ) -> list:
        """Colour swatches for the modes, then grey markers (and lines) for the sizes."""
        modes, sizes = set(modes), set(sizes)
        handles: list = [
            Patch(color=self.color(m), label=f"mode {m}") for m in self.modes if m in modes
        ]
        handles += [
            Line2D(
                [],
                [],
                color="0.35",
                marker=self.marker(s),
                linestyle=self.linestyle(s) if lines else "none",
                label=f"size {s}",
            )
            for s in self.sizes
            if s in sizes
        ]
        if mup:
            handles.append(
                Line2D(
                    [],
                    [],
                    color="0.35",
                    marker="o",
                    markerfacecolor="white",
                    linestyle="none",
                    label="open marker: muP",
                )
            )
        return handles

    @staticmethod
    def face(mup: bool) -> str | None:
        """Marker face: filled for SP, open (white) for muP runs."""
        return "white" if mup else None

    def edge(self, mode: str, mup: bool) -> dict:
        """Marker edge of scatter points: thin black, or for muP's open markers the mode's
        colour, thicker."""
        if mup:
            return {"markeredgecolor": self.color(mode), "markeredgewidth": 1.6}
        return {"markeredgecolor": "black", "markeredgewidth": 0.5}

    @staticmethod
    def emphasis(runs: pd.DataFrame) -> pd.Series:
        """Per run, 1.0 down to 0.0 in drawing order among the runs that share size and
        parametrization (so share marker and line style): drawn wider first, so that identical
        curves (same math, another sharding) stay visible. Groups of more than 4: all 0.3."""
        keys = runs["size"].astype(str) + "|" + runs["mup"].astype(str)
        rank = keys.groupby(keys).cumcount()
        count = keys.map(keys.value_counts())
        wide = 1.0 - rank / (count - 1).clip(lower=1)
        return wide.where(count <= 4, 0.3)
