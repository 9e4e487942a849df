"""Helpers shared by the figure families: the figure result, new figures, log axes, legends,
number formats, the entropy floor and non-overlapping point labels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scaling import records
from scaling.report.style import DPI, FLOOR_STYLE


@dataclass
class FigureResult:
    """A figure, the exact data it plots (written as ``<name>.csv``) and its caption."""

    name: str
    title: str
    caption: str
    figure: Figure
    data: pd.DataFrame

    def write(self, directory: Path) -> list[Path]:
        """``<name>.png`` and ``<name>.csv`` in ``directory``, each written atomically."""
        png, csv = directory / f"{self.name}.png", directory / f"{self.name}.csv"
        with records.atomic_path(png) as tmp:
            self.figure.savefig(tmp, dpi=DPI, format="png")
        with records.atomic_path(csv) as tmp:
            self.data.to_csv(tmp, index=False)
        return [png, csv]


def new_figure(
    width: float = 7.5, height: float = 4.6, ncols: int = 1, **kw
) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False, **kw)[0]
    return fig, list(axes)


def log_axis(ax, which: str = "x", values=None) -> None:
    """Log₁₀ scale; minor ticks labelled only at 2 and 5 × 10ⁿ, and only when ``values`` span
    less than two decades (else the labels collide)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    v = np.asarray([] if values is None else values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) and v.max() / v.min() < 100:
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        axis.set_minor_formatter(FuncFormatter(_sci_label))
        axis.set_major_formatter(FuncFormatter(_sci_label))
    else:
        axis.set_minor_formatter(NullFormatter())


def _sci_label(value: float, _pos=None) -> str:
    if value <= 0:
        return ""
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10**exponent
    if -2 <= exponent <= 3:
        return f"{value:g}"
    return rf"${mantissa:.2g}\times10^{{{exponent}}}$"


def spans_decades(values, factor: float = 10.0) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return len(v) > 1 and v.max() / v.min() >= factor


MAX_LEGEND_ROWS = 22  # about what a 4.6-inch-high figure holds at font size 8


def legend_outside(ax, handles=None, **kw) -> None:
    """A legend right of the axes, in columns of at most ``MAX_LEGEND_ROWS`` entries."""
    n_entries = len(handles if handles is not None else ax.get_legend_handles_labels()[0])
    kw = {
        "loc": "upper left",
        "bbox_to_anchor": (1.01, 1.0),
        "fontsize": 8,
        "frameon": False,
        "ncols": max(1, math.ceil(n_entries / MAX_LEGEND_ROWS)),
        **kw,
    }
    if handles is None:
        ax.legend(**kw)
    else:
        ax.legend(handles=handles, **kw)


def si(value: float, unit: str = "") -> str:
    if not np.isfinite(value):
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".strip()


def mib(value: float) -> float:
    return value / 2**20


def floors(runs: pd.DataFrame) -> list[float]:
    """The distinct known entropy floors of ``runs`` (synthetic data only)."""
    values = runs["entropy_floor_nats"].to_numpy(dtype=float)
    return sorted({round(float(f), 6) for f in values if np.isfinite(f)})


def draw_floors(ax, values: list[float]) -> None:
    for i, floor in enumerate(values):
        label = f"entropy floor {floor:.4g} nats (synthetic data)" if i == 0 else None
        ax.axhline(floor, label=label, **FLOOR_STYLE)


def place_labels(ax, xs, ys, texts, obstacles=(), fontsize: float = 7) -> None:
    """Annotate points, each label at the first of a few offsets (right, above, below, left)
    whose box hits neither another point nor a label already placed (approximate boxes in
    points; the axes limits must be set)."""
    fig = ax.figure
    fig.canvas.draw()  # fixes the layout, so the data → display transform is final
    scale = fig.dpi / 72.0
    pts = ax.transData.transform(np.column_stack([xs, ys])) / scale  # in points
    others = [*pts]
    if len(obstacles):
        others += [*(ax.transData.transform(np.asarray(obstacles, dtype=float)) / scale)]
    placed: list[tuple[float, float, float, float]] = []
    for i, text in enumerate(texts):
        w, h = 0.65 * fontsize * len(text) + 2, 1.4 * fontsize + 2  # with a little padding
        px, py = pts[i]
        dx, dy = _free_offset(px, py, w, h, [q for j, q in enumerate(others) if j != i], placed)
        placed.append((px + dx, py + dy, px + dx + w, py + dy + h))
        ax.annotate(
            text,
            (xs[i], ys[i]),
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=fontsize,
            color="0.2",
            ha="left",
            va="bottom",
            arrowprops={
                "arrowstyle": "-",
                "color": "0.55",
                "linewidth": 0.5,
                "shrinkA": 0,
                "shrinkB": 4,
            },
        )


def _free_offset(px, py, w, h, points, placed, radius: float = 5.0) -> tuple[float, float]:
    """The first offset of a w × h label box at (px, py) that clears ``points`` (by ``radius``)
    and the ``placed`` boxes; the first offset if none does."""
    options = [
        (7, -h / 2),
        (-w / 2, 7),
        (-w / 2, -7 - h),
        (-7 - w, -h / 2),
        (7, 5),
        (7, -5 - h),
        (-7 - w, 5),
        (-7 - w, -5 - h),
    ]
    for dx, dy in options:
        box = (px + dx, py + dy, px + dx + w, py + dy + h)
        hits_point = any(
            box[0] - radius < qx < box[2] + radius and box[1] - radius < qy < box[3] + radius
            for qx, qy in points
        )
        hits_label = any(
            box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed
        )
        if not hits_point and not hits_label:
            return dx, dy
    return options[0]
