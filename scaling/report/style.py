"""The one style of all figures, derived from the runs a report shows.

Marker and line style encode the size: the known presets keep theirs (by their place in
``PRESETS``), other sizes take the next ones, both cycling, so any number of sizes has a look.
Colour encodes the mode (the known modes keep theirs, others cycle through a palette), except
in a report of a single mode: there colour encodes the first of ``COLOR_AXES`` that varies,
on a colormap ramp for ordered values. Width comes first where it varies within a size (as in a
width sweep of one preset, which marker and line style cannot tell apart), then learning rate
(encoded nowhere else), then size, then parametrization (muP already has open markers).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from scaling import presets
from scaling.report.record import mode_rank

DPI = 130
MODE_COLORS: dict[str, str] = {
    "none": "#6e6e6e",  # grey
    "dp": "#1f77b4",  # blue
    "fsdp": "#2ca02c",  # green
    "tp": "#ff7f0e",  # orange
    "fsdp_tp": "#9467bd",  # purple
}
# Colours of further modes, in order of appearance, then the rest of tab20, cycling.
_EXTRA_COLORS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728")
_MODE_PALETTE = _EXTRA_COLORS + tuple(
    c
    for c in dict.fromkeys(to_hex(rgb) for rgb in colormaps["tab20"].colors)
    if c not in MODE_COLORS.values() and c not in _EXTRA_COLORS
)
# The n-th preset takes the n-th marker and line style; sizes that are no preset continue the
# sequence after the last preset.
MARKERS = ("o", "s", "^", "D", "v", "<", ">", "p", "P", "X", "h", "d", "H", "8", "1", "2", "3", "4")
LINESTYLES: tuple[object, ...] = (
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
)
# What colour encodes in a single-mode report: the first of these that varies.
COLOR_AXES = ("d_model", "lr", "size", "mup")
_COLOR_MEANING = {
    "mode": "mode",
    "size": "size",
    "d_model": "width (d_model)",
    "lr": "learning rate",
    "mup": "parametrization (SP/muP)",
}
# colormap and how far along it to go (plasma's last tenth is too pale on white)
_RAMPS = {"size": ("viridis", 0.9), "d_model": ("viridis", 0.9), "lr": ("plasma", 0.8)}
_MUP_COLORS = {False: "#1f77b4", True: "#d62728"}
VARIANT_HATCHES = ("", "//", "..", "xx", "\\\\", "oo", "--", "++")
FLOOR_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2}  # entropy floor


def ramp(values: Iterable, cmap: str, top: float = 0.9) -> dict:
    """Colours from the start of ``cmap`` up to ``top`` for ``values`` in the given order."""
    values = list(values)
    n = max(len(values) - 1, 1)
    return {v: colormaps[cmap](top * i / n) for i, v in enumerate(values)}


def _size_slots(sizes: list[str]) -> dict[str, int]:
    """Each size's place in the marker and line-style sequences."""
    known = list(presets.PRESETS)
    others = (s for s in sizes if s not in presets.PRESETS)
    slots = {s: known.index(s) for s in sizes if s in presets.PRESETS}
    slots.update({s: len(known) + k for k, s in enumerate(others)})
    return slots


@dataclass
class Style:
    """Colours, markers and line styles of one report. Built once from every run it shows, so
    that a run looks the same in all its figures."""

    modes: list[str]
    sizes: list[str]
    color_by: str = "mode"  # "mode" or one of COLOR_AXES
    _mode_colors: dict[str, str] = field(default_factory=dict)
    _axis_colors: dict = field(default_factory=dict)
    _markers: dict[str, str] = field(default_factory=dict)
    _linestyles: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(
        cls, modes: Iterable[str], sizes: Iterable[str], runs: pd.DataFrame | None = None
    ) -> Style:
        """The style of ``modes`` and ``sizes`` (sizes in ladder order); given the ``runs``
        and a single mode, colour encodes the first of ``COLOR_AXES`` that varies in them."""
        modes = sorted(set(modes), key=mode_rank)
        sizes = list(dict.fromkeys(sizes))
        style = cls(modes, sizes)
        palette = itertools.cycle(_MODE_PALETTE)
        for m in modes:
            style._mode_colors[m] = MODE_COLORS.get(m) or next(palette)
        for size, slot in _size_slots(sizes).items():
            style._markers[size] = MARKERS[slot % len(MARKERS)]
            style._linestyles[size] = LINESTYLES[slot % len(LINESTYLES)]
        if runs is not None and len(modes) == 1:
            style._color_by_axis(runs)
        return style

    def _color_by_axis(self, runs: pd.DataFrame) -> None:
        for axis in COLOR_AXES:
            values = _axis_values(runs, axis)
            if _varies(runs, axis, values):
                break
        else:
            return
        self.color_by = axis
        if axis == "mup":
            self._axis_colors = {v: _MUP_COLORS[bool(v)] for v in values}
        else:
            ordered = self.sizes if axis == "size" else sorted(values)
            self._axis_colors = ramp([v for v in ordered if v in values], *_RAMPS[axis])

    @property
    def color_meaning(self) -> str:
        """What colour encodes, for captions."""
        return _COLOR_MEANING[self.color_by]

    def color(self, mode: str) -> str:
        """The colour of a mode (modes not in the report: black)."""
        return self._mode_colors.get(mode, "black")

    def run_color(self, run: Mapping):
        """The colour of a run (a row with ``mode`` and the column colour encodes; a row
        without that column takes its mode's colour)."""
        if self.color_by != "mode" and self.color_by in run:
            return self._axis_colors.get(_axis_value(run[self.color_by], self.color_by), "black")
        return self.color(run["mode"])

    def marker(self, size: str) -> str:
        return self._markers.get(size, "o")

    def linestyle(self, size: str) -> object:
        return self._linestyles.get(size, "-")

    def legend_handles(
        self, shown: pd.DataFrame, sizes: bool = True, lines: bool = True, mup: bool = False
    ) -> list:
        """Colour swatches for what colour encodes among the ``shown`` rows, then grey
        markers (and lines) for their sizes (coloured, when colour encodes the size)."""
        by_axis = self.color_by != "mode" and self.color_by in shown.columns
        size_colored = by_axis and self.color_by == "size" and sizes
        handles: list = []
        if not by_axis:
            present = set(shown["mode"])
            handles += [
                Patch(color=self.color(m), label=f"mode {m}") for m in self.modes if m in present
            ]
        elif not size_colored:
            present = {_axis_value(v, self.color_by) for v in shown[self.color_by]}
            handles += [
                Patch(color=color, label=_axis_label(self.color_by, v))
                for v, color in self._axis_colors.items()
                if v in present
            ]
        if sizes:
            present = set(shown["size"])
            handles += [
                Line2D(
                    [],
                    [],
                    color=self._axis_colors[s] if size_colored else "0.35",
                    marker=self.marker(s),
                    linestyle=self.linestyle(s) if lines else "none",
                    label=f"size {s}",
                )
                for s in self.sizes
                if s in present
            ]
        if mup:
            handles.append(_open_marker_handle())
        return handles

    @staticmethod
    def face(mup: bool) -> str | None:
        """Marker face: filled for SP, open (white) for muP runs."""
        return "white" if mup else None

    @staticmethod
    def edge(color, mup: bool) -> dict:
        """Marker edge of scatter points: thin black, or for muP's open markers the point's
        colour, thicker."""
        if mup:
            return {"markeredgecolor": color, "markeredgewidth": 1.6}
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


def _axis_value(value, axis: str):
    """A value of a colour axis as the style keys it (sizes as text, muP as bool, numbers as
    float; None for an unknown width or learning rate)."""
    if axis == "size":
        return str(value)
    if axis == "mup":
        return bool(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _axis_label(axis: str, value) -> str:
    if axis == "mup":
        return "muP" if value else "SP"
    if axis == "lr":
        return f"lr {value:.3g}"
    return f"{axis} {value:g}" if axis == "d_model" else f"{axis} {value}"


def _varies(runs: pd.DataFrame, axis: str, values: set) -> bool:
    """Whether colour should encode ``axis``: more than one value, and for the width more than
    one within some size (else the size's marker already tells the widths apart)."""
    if len(values) < 2:
        return False
    if axis != "d_model":
        return True
    widths = runs["d_model"].map(lambda v: _axis_value(v, axis))
    return bool((widths.groupby(runs["size"].astype(str)).nunique() > 1).any())


def _axis_values(runs: pd.DataFrame, axis: str) -> set:
    if axis not in runs.columns:
        return set()
    values = {_axis_value(v, axis) for v in runs[axis]}
    return values - {None}


def _open_marker_handle() -> Line2D:
    return Line2D(
        [],
        [],
        color="0.35",
        marker="o",
        markerfacecolor="white",
        linestyle="none",
        label="open marker: muP",
    )
