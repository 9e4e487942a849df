"""The scaling-law figure: final loss of each ok run against its training compute, with the fit
of ``scaling.laws.compute`` through the lowest loss at each compute."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling.laws.compute import ScalingFit, fit_scaling_law
from scaling.report.axes import (
    FigureResult,
    draw_floors,
    floors,
    legend_outside,
    log_axis,
    new_figure,
    spans_decades,
)
from scaling.report.record import Record
from scaling.report.style import Style

_POINT_COLUMNS = [
    "series",
    "label",
    "size",
    "mode",
    "steps",
    "model_flops_per_step",
    "compute_flops",
    "final_loss",
]


def _compute_points(rec: Record) -> pd.DataFrame:
    runs = rec.ok.assign(
        compute_flops=rec.ok["steps"].astype(float) * rec.ok["model_flops_per_step"]
    )
    runs = runs[
        np.isfinite(runs["compute_flops"])
        & (runs["compute_flops"] > 0)
        & np.isfinite(runs["final_loss"])
        & (runs["final_loss"] > 0)
    ]
    return runs


def _frontier(runs: pd.DataFrame) -> pd.DataFrame:
    """The run of lowest final loss at each distinct compute, by compute."""
    if runs.empty:
        return runs.assign(_c=[])
    key = runs["compute_flops"].map(lambda c: float(f"{c:.10g}"))
    idx = runs.assign(_c=key).groupby("_c")["final_loss"].idxmin()
    return runs.loc[idx.to_numpy()].sort_values("compute_flops")


def scaling_fit_of(rec: Record) -> tuple[ScalingFit | None, str]:
    """The fit over the best (lowest) final loss at each distinct compute, and a note."""
    frontier = _frontier(_compute_points(rec))
    n = len(frontier)
    if n < 3:
        return None, (
            f"Scaling-law fit skipped: {n} distinct compute point(s) among the ok "
            "runs; E + A·C^-α needs ≥ 3 (≥ 4 for a meaningful fit)."
        )
    fit = fit_scaling_law(frontier["compute_flops"], frontier["final_loss"])
    note = ""
    if frontier["final_loss"].min() * 1e-6 >= fit.E:
        note = (
            "The fitted E sits at its lower bound 0: these points do not constrain the "
            "loss floor (too few, too noisy, or not on one E + A·C^-α curve)."
        )
    if n == 3:
        note += (" " if note else "") + (
            "Scaling-law fit through exactly 3 compute points: it interpolates them, and its "
            "parameters have no standard errors; ≥ 4 points are needed for a meaningful fit."
        )
    return fit, note


def plus_minus(value: float, se: float, fmt: str = "{:.4g}") -> str:
    return fmt.format(value) + (f" ± {fmt.format(se)}" if np.isfinite(se) else "")


def _plot_points(ax, runs: pd.DataFrame, frontier: pd.DataFrame, style: Style, fitted: bool):
    wide = Style.emphasis(runs)
    for i, r in runs.iterrows():  # earlier runs drawn larger: coinciding runs stay visible
        color = style.run_color(r)
        ax.plot(
            r["compute_flops"],
            r["final_loss"],
            linestyle="none",
            marker=style.marker(r["size"]),
            color=color,
            markersize=5 + 5 * wide[i],
            markerfacecolor=style.face(r["mup"]),
            **style.edge(color, r["mup"]),
        )
    ax.plot(
        frontier["compute_flops"],
        frontier["final_loss"],
        linestyle="none",
        marker="o",
        markersize=14,
        markerfacecolor="none",
        markeredgecolor="black",
        label="lowest loss per compute" + (" (fitted)" if fitted else ""),
    )


def _plot_fit(ax, fit: ScalingFit, frontier: pd.DataFrame) -> pd.DataFrame:
    """The fitted curve, its E and a box of the parameters; the curve's points."""
    c_lo, c_hi = frontier["compute_flops"].min(), frontier["compute_flops"].max()
    grid = np.geomspace(c_lo / 2, c_hi * 4, 200)
    ax.plot(
        grid,
        fit.predict(grid),
        color="crimson",
        linewidth=1.8,
        label=f"fit E + A·C^(−α), α = {plus_minus(fit.alpha, fit.alpha_se, '{:.3g}')}",
    )
    ax.axhline(
        fit.E,
        color="crimson",
        linestyle=":",
        linewidth=1.2,
        label=f"fitted E = {plus_minus(fit.E, fit.E_se, '{:.3g}')} nats",
    )
    text = (
        f"E = {plus_minus(fit.E, fit.E_se)}\nA = {plus_minus(fit.A, fit.A_se)}\n"
        f"α = {plus_minus(fit.alpha, fit.alpha_se)}\n{fit.n_points} points"
    )
    ax.text(
        0.02,
        0.03,
        text,
        transform=ax.transAxes,
        fontsize=8,
        va="bottom",
        bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9},
    )
    return pd.DataFrame(
        {"series": "fit curve", "compute_flops": grid, "final_loss": fit.predict(grid)}
    )


def _no_fit_text(ax) -> None:
    ax.text(
        0.5,
        0.5,
        "too few compute points for a fit\n(needs ≥ 3, ≥ 4 to be meaningful)",
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=10,
        color="0.4",
    )


def _caption(fit: ScalingFit | None, floor_values: list[float], note: str) -> str:
    caption = (
        "Final training loss of each ok run against its training compute C (total "
        "model FLOPs). Circled: the lowest loss at each distinct C, the points fitted."
    )
    if fit is not None:
        caption += (
            f" Fit of L(C) = E + A·C^(−α) by least squares on log L "
            f"({fit.method}), ± one standard error from the covariance: E = "
            f"{plus_minus(fit.E, fit.E_se)} nats, A = {plus_minus(fit.A, fit.A_se)}, α = "
            f"{plus_minus(fit.alpha, fit.alpha_se)}."
        )
    if floor_values:
        caption += (
            f" Dashed: the known entropy floor {floor_values[0]:.4g} nats, to compare with E."
        )
    if note:
        caption += " " + note
    return caption


def fig_scaling_law(rec: Record, style: Style) -> FigureResult | None:
    runs = _compute_points(rec)
    frontier = _frontier(runs)
    if len(frontier) < 2:
        return None
    fit, note = scaling_fit_of(rec)
    fig, (ax,) = new_figure(9, 5)
    _plot_points(ax, runs, frontier, style, fitted=fit is not None)
    rows = [
        runs.assign(series="run")[_POINT_COLUMNS],
        frontier.assign(series="fit input")[_POINT_COLUMNS],
    ]
    if fit is not None:
        rows.append(_plot_fit(ax, fit, frontier))
    else:
        _no_fit_text(ax)
    floor_values = floors(rec.ok)
    draw_floors(ax, floor_values)
    if spans_decades(runs["compute_flops"], 5):
        log_axis(ax, "x", runs["compute_flops"])
    ax.set(
        xlabel="training compute C = steps × model FLOPs per step (FLOPs)",
        ylabel="final training loss (nats/token)",
        title="Scaling law: final loss vs compute",
    )
    ax.grid(alpha=0.3, which="both")
    handles, _ = ax.get_legend_handles_labels()
    legend_outside(
        ax,
        handles + style.legend_handles(runs, lines=False, mup=bool(runs["mup"].any())),
    )
    caption = _caption(fit, floor_values, note)
    return FigureResult(
        "scaling_law", "Scaling law", caption, fig, pd.concat(rows, ignore_index=True)
    )
