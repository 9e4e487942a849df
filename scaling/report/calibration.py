"""Calibrated step-time prediction: fit the roofline's efficiency factors on the runs of some
sizes (``scaling.estimate.calibrate``) and show predicted against measured for every ok run,
the held-out ones marked, with the error of each."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from scaling.estimate.calibrate import Calibration, fit, prepared, run_terms
from scaling.report.axes import FigureResult, legend_outside, new_figure
from scaling.report.predicted import identity_line
from scaling.report.record import RUN_ID_COLUMNS, Record
from scaling.report.style import Style
from scaling.report.tables import Table

TARGET_ERROR = 0.25  # the band drawn around y = x (README: held-out CPU runs within 25 %)


def _usable(rec: Record) -> pd.DataFrame:
    runs = rec.ok
    keep = (runs["step_time_s_median"] > 0) & (runs["peak_flops_per_device"] > 0)
    return runs[keep & (runs["settings_json"].astype(str).str.len() > 2)]


def calibrated_predictions(
    rec: Record, calibrate_on: Sequence[str]
) -> tuple[Calibration, pd.DataFrame]:
    """Fit on the configurations whose size is in ``calibrate_on`` and predict every
    configuration; one row per configuration, medians over its repeated runs (repeat a sweep
    into other directories and pass them all)."""
    runs = _usable(rec)
    configs = pd.DataFrame(prepared(r for _, r in runs.iterrows()))
    if configs.empty or not configs["size"].isin(list(calibrate_on)).any():
        sizes = ", ".join(dict.fromkeys(runs["size"])) or "none"
        raise ValueError(
            f"no ok runs of {', '.join(calibrate_on)} to calibrate on; sizes here: {sizes}"
        )
    train = configs[configs["size"].isin(list(calibrate_on))]
    cal = fit(run_terms(r) for _, r in train.iterrows())
    data = configs[[*RUN_ID_COLUMNS, "mesh", "repeats", "step_time_s_median"]].copy()
    data["predicted_s"] = [run_terms(r).predict(cal.efficiency) for _, r in configs.iterrows()]
    data["error"] = data["predicted_s"] / data["step_time_s_median"] - 1
    data["role"] = np.where(data["size"].isin(list(calibrate_on)), "fit", "held out")
    return cal, data


def calibration_results(
    rec: Record, style: Style, calibrate_on: Sequence[str]
) -> tuple[FigureResult, Table]:
    """The figure (measured against calibrated prediction) and the table of errors."""
    cal, data = calibrated_predictions(rec, calibrate_on)
    fig, (ax,) = new_figure(7.5, 5.4)
    for _, r in data.iterrows():
        color = style.run_color(r)
        held = r["role"] == "held out"
        ax.plot(r["predicted_s"], r["step_time_s_median"], linestyle="none",
                marker=style.marker(r["size"]), color=color, markersize=8 if held else 6,
                markerfacecolor=color if held else "white", markeredgecolor=color,
                gid=f"{r['source']}/{r['run_id']}")  # fmt: skip
    lo, hi = identity_line(ax, data, ["predicted_s", "step_time_s_median"])
    span = np.geomspace(lo, hi, 50)
    ax.fill_between(span, span / (1 + TARGET_ERROR), span / (1 - TARGET_ERROR), color="0.9")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal",
           xlabel="calibrated prediction (s/step)", ylabel="measured median step time (s)",
           title="Step time: measured vs calibrated roofline")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    handles = style.legend_handles(_usable(rec), lines=False)
    handles += [
        Line2D([], [], marker="o", linestyle="none", color="0.3", label="held out (filled)"),
        Line2D(
            [],
            [],
            marker="o",
            linestyle="none",
            color="0.3",
            markerfacecolor="white",
            label="fitted on (open)",
        ),  # fmt: skip
    ]
    legend_outside(ax, handles)
    caption = (
        f"Measured median step time (median over each configuration's repeated runs, "
        f"{int(data['repeats'].min())}–{int(data['repeats'].max())}) against the roofline "
        f"calibrated on "
        f"{', '.join(calibrate_on)} ({_factors(cal)}); grey band: ±{TARGET_ERROR:.0%}. "
        f"{_held_out_summary(data)}"
    )
    figure = FigureResult(
        "calibrated_step_time", "Step time vs calibrated roofline", caption, fig, data
    )
    return figure, _table(data, cal)


def _factors(cal: Calibration) -> str:
    e = cal.efficiency
    fitted = ", ".join(cal.fitted)
    return (
        f"η compute {e.compute:.3g}, η HBM {e.hbm:.3g}, η link {e.link:.3g}, overhead "
        f"{e.overhead_s * 1e3:.3g} ms/step; fitted: {fitted}; {cal.n_runs} runs, rms log error "
        f"{cal.rms_log_error:.3f}"
    )


def _held_out_summary(data: pd.DataFrame) -> str:
    held = data[data["role"] == "held out"]
    if held.empty:
        return "No held-out runs."
    worst = held.loc[held["error"].abs().idxmax()]
    return (
        f"Held out: {len(held)} runs, |error| median {held['error'].abs().median():.1%}, worst "
        f"{worst['error']:+.1%} ({worst['size']} {worst['mode']})."
    )


def _table(data: pd.DataFrame, cal: Calibration) -> Table:
    columns = ["size", "mode", "mesh", "role", "measured (s)", "predicted (s)", "error"]
    rows = [
        [
            r["size"],
            r["mode"],
            r["mesh"],
            r["role"],
            f"{r['step_time_s_median']:.4g}",
            f"{r['predicted_s']:.4g}",
            f"{r['error']:+.1%}",
        ]  # fmt: skip
        for _, r in data.sort_values(["role", "size", "mode"]).iterrows()
    ]
    note = f"Calibrated efficiencies: {_factors(cal)}. {_held_out_summary(data)}"
    return Table("Calibrated step-time prediction", columns, rows, note)
