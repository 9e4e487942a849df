"""Measured against predicted, one point per run on log-log axes with y = x: step time against
the roofline, peak memory against the analytic estimate."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from scaling.report.axes import (
    FigureResult,
    legend_outside,
    log_axis,
    mib,
    new_figure,
    place_labels,
)
from scaling.report.record import RUN_ID_COLUMNS, Record
from scaling.report.style import Style

MAX_LABELLED_POINTS = 16  # more points than this: no ratio labels (they would pile up)


def _versus(
    ax,
    data: pd.DataFrame,
    runs: pd.DataFrame,
    x: str,
    y: str,
    style: Style,
    xerr_hi: str | None = None,
) -> None:
    """One point per row of ``data`` at (x, y), coloured by its run (the row of ``runs`` with
    the same index), a bar from x to ``xerr_hi``, y = x, and ratio labels if few."""
    for i, r in data.iterrows():
        color = style.run_color(runs.loc[i])
        if xerr_hi is not None and np.isfinite(r[xerr_hi]) and r[xerr_hi] > r[x]:
            ax.plot(
                [r[x], r[xerr_hi]],
                [r[y], r[y]],
                color=color,
                linewidth=1,
                marker="|",
                markersize=6,
            )
        ax.plot(
            r[x],
            r[y],
            linestyle="none",
            marker=style.marker(r["size"]),
            color=color,
            markerfacecolor=style.face(r["mup"]),
            markersize=7,
            gid=f"{r['source']}/{r['run_id']}",
            **style.edge(color, r["mup"]),
        )
    lo, hi = _identity_line(ax, data, [x, y] + ([xerr_hi] if xerr_hi else []))
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3, which="both")
    if len(data) <= MAX_LABELLED_POINTS:
        place_labels(
            ax,
            data[x].to_numpy(float),
            data[y].to_numpy(float),
            [f"×{v:.2f}" for v in data["ratio"]],
            _range_bar_points(data, x, y, xerr_hi),
        )
    handles = style.legend_handles(runs, lines=False, mup=bool(data["mup"].any()))
    handles.append(Line2D([], [], color="0.5", linestyle="--", label="y = x (prediction exact)"))
    legend_outside(ax, handles)


def _identity_line(ax, data: pd.DataFrame, columns: list[str]) -> tuple[float, float]:
    """Draw y = x over the span of ``columns`` (with a margin) on log axes; the span."""
    values = np.concatenate([data[c].to_numpy(float) for c in columns])
    values = values[np.isfinite(values) & (values > 0)]
    lo, hi = values.min() / 1.6, values.max() * 1.6
    ax.plot([lo, hi], [lo, hi], color="0.5", linewidth=1, linestyle="--", label="y = x")
    log_axis(ax, "x", [lo, hi])
    log_axis(ax, "y", [lo, hi])
    return lo, hi


def _range_bar_points(data: pd.DataFrame, x: str, y: str, xerr_hi: str | None) -> list:
    """A few points along each range bar, for the labels to keep clear of."""
    points = []
    if xerr_hi is not None:
        for _, r in data.iterrows():
            if np.isfinite(r[xerr_hi]) and r[xerr_hi] > r[x]:
                points += [(v, r[y]) for v in np.geomspace(r[x], r[xerr_hi], 6)]
    return points


def fig_step_time_vs_roofline(rec: Record, style: Style) -> FigureResult | None:
    runs = rec.ok
    runs = runs[(runs["predicted_step_s"] > 0) & (runs["step_time_s_median"] > 0)]
    if runs.empty:
        return None
    data = runs[
        [
            *RUN_ID_COLUMNS,
            "predicted_step_s",
            "predicted_step_s_upper",
            "step_time_s_median",
        ]
    ].copy()
    data["ratio"] = data["step_time_s_median"] / data["predicted_step_s"]
    fig, (ax,) = new_figure(7.5, 5.4)
    _versus(
        ax, data, runs, "predicted_step_s", "step_time_s_median", style, "predicted_step_s_upper"
    )
    ax.set(
        xlabel="roofline prediction (s/step)",
        ylabel="measured median step time (s)",
        title="Step time: measured vs roofline",
    )
    caption = (
        "Measured median step time against the roofline prediction (s per step, log-log)."
        " The marker sits at the lower bound (max of compute and memory time); the bar "
        "extends to the upper bound (compute + communication). Labels: measured ÷ "
        "predicted lower bound; points above y = x are slower than predicted."
    )
    return FigureResult("step_time_vs_roofline", "Step time vs roofline", caption, fig, data)


def fig_memory_vs_estimate(rec: Record, style: Style) -> FigureResult | None:
    runs = rec.ok
    runs = runs[(runs["est_memory_bytes"] > 0) & (runs["peak_memory_bytes"] > 0)]
    if runs.empty:
        return None
    data = runs[
        [
            *RUN_ID_COLUMNS,
            "est_memory_bytes",
            "peak_memory_bytes",
            "peak_memory_source",
        ]
    ].copy()
    data["est_memory_mib"] = mib(data["est_memory_bytes"])
    data["peak_memory_mib"] = mib(data["peak_memory_bytes"])
    data["ratio"] = data["peak_memory_bytes"] / data["est_memory_bytes"]
    fig, (ax,) = new_figure(7.5, 5.4)
    _versus(ax, data, runs, "est_memory_mib", "peak_memory_mib", style)
    ax.set(
        xlabel="analytic estimate (MiB per device)",
        ylabel="measured peak (MiB per device)",
        title="Peak memory: measured vs estimate",
    )
    sources = ", ".join(s for s in dict.fromkeys(data["peak_memory_source"]) if s) or "unknown"
    caption = (
        f"Peak memory per device (MiB = 2²⁰ bytes, log-log): measured ({sources}) "
        "against the analytic estimate. Labels: measured ÷ estimated."
    )
    return FigureResult("memory_vs_estimate", "Memory vs estimate", caption, fig, data)
