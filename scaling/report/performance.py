"""Performance bars: MFU and throughput, compile time; one group per size, a bar per mode."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from scaling.report.axes import (
    FigureResult,
    legend_outside,
    log_axis,
    new_figure,
    si,
    spans_decades,
)
from scaling.report.record import Record
from scaling.report.style import VARIANT_HATCHES, Style


def bar_table(rec: Record, values: Sequence[str], runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Median of ``values`` over the ok runs of each size × mode × variant, in plot order."""
    runs = rec.ok if runs is None else runs
    runs = runs[np.isfinite(runs[list(values)].to_numpy(dtype=float)).any(axis=1)]
    if runs.empty:
        return pd.DataFrame(columns=["size", "mode", "variant", "n_runs", *values])
    table = (
        runs.groupby(["size", "mode", "variant"], sort=False)
        .agg(n_runs=("run_id", "size"), **{v: (v, "median") for v in values})
        .reset_index()
    )
    return table  # runs are already sorted: groupby(sort=False) keeps size, mode order


def grouped_bars(
    ax, table: pd.DataFrame, value: str, style: Style, fmt: str, scale: float = 1.0
) -> list:
    """One group per size, one bar per mode (× variant) inside it; returns the bar patches in
    the row order of ``table`` (rows with a NaN value get no bar)."""
    table = table[np.isfinite(table[value].astype(float))]
    sizes = list(dict.fromkeys(table["size"]))
    variants = list(dict.fromkeys(table["variant"]))
    hatch = {v: VARIANT_HATCHES[i % len(VARIANT_HATCHES)] for i, v in enumerate(variants)}
    widest = table.groupby("size").size().max()
    width = 0.8 / widest
    patches = []
    many = widest > 4
    for g, size in enumerate(sizes):
        group = table[table["size"] == size]
        for j, (_, row) in enumerate(group.iterrows()):
            x = g + (j - (len(group) - 1) / 2) * width
            bars = ax.bar(
                x,
                row[value] * scale,
                width * 0.95,
                color=style.run_color(row),
                hatch=hatch[row["variant"]],
                edgecolor="white",
                linewidth=0.5,
            )
            ax.bar_label(
                bars,
                labels=[fmt.format(row[value] * scale)],
                fontsize=7,
                rotation=90 if many else 0,
                padding=2,
            )
            patches.append(bars.patches[0])
    ax.set_xticks(range(len(sizes)), sizes)
    ax.set_xlabel("model size")
    ax.margins(y=0.15)
    handles = style.legend_handles(table, sizes=False)
    if len(variants) > 1:
        handles += [
            Patch(facecolor="0.85", edgecolor="0.3", hatch=hatch[v], label=v or "-")
            for v in variants
        ]
    legend_outside(ax, handles)
    return patches


def _peak_caption(runs: pd.DataFrame) -> str:
    sources = [s for s in dict.fromkeys(runs["peak_source"]) if s]
    peaks = runs["peak_flops_per_device"].to_numpy(dtype=float)
    peaks = peaks[np.isfinite(peaks)]
    if len(sources) > 2:  # e.g. a CPU calibration per run: name one, count the rest
        sources = [
            f"{sources[0]} (and {len(sources) - 1} more, one per run: see the Environment table)"
        ]
    text = "Peak FLOP/s per device: " + ("; ".join(sources) if sources else "not recorded")
    if len(peaks):
        lo, hi = peaks.min(), peaks.max()
        text += (
            f" ({si(lo, 'FLOP/s')})"
            if np.isclose(lo, hi, rtol=1e-3)
            else f" ({si(lo, 'FLOP/s')} – {si(hi, 'FLOP/s')} across runs)"
        )
    return text + "."


def fig_throughput(rec: Record, style: Style) -> FigureResult | None:
    table = bar_table(rec, ["mfu", "tokens_per_s"])
    if table.empty:
        return None
    fig, axes = new_figure(13, 4.8, ncols=2)
    grouped_bars(axes[0], table, "mfu", style, "{:.1f}", scale=100)
    axes[0].set(ylabel="MFU (% of peak)", title="Model FLOPs utilisation")
    grouped_bars(axes[1], table, "tokens_per_s", style, "{:,.0f}")
    if spans_decades(table["tokens_per_s"], 30):
        log_axis(axes[1], "y", table["tokens_per_s"])
    axes[1].set(ylabel="tokens/s (whole mesh)", title="Throughput")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    caption = (
        "MFU = model FLOPs per step ÷ (median step time × devices × peak FLOP/s per "
        "device); tokens/s over the whole mesh, from the median step time. Bars: "
        "median over the ok runs of each size × mode"
        + (" × variant (hatch)" if table["variant"].nunique() > 1 else "")
        + ". "
        + _peak_caption(rec.ok)
    )
    data = table.assign(mfu_percent=table["mfu"] * 100)
    return FigureResult("throughput", "MFU and throughput", caption, fig, data)


def fig_compile_time(rec: Record, style: Style) -> FigureResult | None:
    table = bar_table(rec, ["compile_s"])
    if table.empty:
        return None
    fig, (ax,) = new_figure(8, 4.6)
    grouped_bars(ax, table, "compile_s", style, "{:.2f}")
    if spans_decades(table["compile_s"], 30):
        log_axis(ax, "y", table["compile_s"])
    ax.set(ylabel="compile time (s)", title="Compile time of the train step")
    ax.grid(axis="y", alpha=0.3)
    caption = (
        "Time to lower and compile the jitted train step (s), median over the ok runs "
        "of each size × mode."
    )
    return FigureResult("compile_time", "Compile time", caption, fig, table)
