"""muP figures: learning-rate transfer (final loss against log₂ LR, a curve per width) and the
coordinate check (activation RMS against width, a line per step)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scaling import records
from scaling.report.axes import FigureResult, new_figure
from scaling.report.record import Record
from scaling.report.style import Style, ramp

MAX_COORD_STEPS = 8  # more recorded steps than this: 8 spread over them


def _lr_study(rec: Record) -> pd.DataFrame | None:
    """Mean final loss per (parametrization, width, LR) of the records that hold muP runs or
    an LR sweep, with each swept curve's best LR marked; None if there are none."""
    runs = rec.ok
    runs = runs[(runs["lr"] > 0) & np.isfinite(runs["final_loss"])]
    if runs.empty:
        return None
    width = runs["d_model"].where(runs["d_model"] > 0)
    if width.isna().any():
        return None
    runs = runs.assign(width=width.astype(int))
    # a plain size ladder has nothing to show
    lr_sweep = (
        runs.groupby(["source", "mup", "width"])["lr"].nunique().gt(1).groupby("source").any()
    )
    sources = set(lr_sweep[lr_sweep].index) | set(runs.loc[runs["mup"], "source"])
    runs = runs[runs["source"].isin(sources)]
    if runs.empty:
        return None
    data = (
        runs.groupby(["mup", "width", "lr"])
        .agg(final_loss=("final_loss", "mean"), n_runs=("run_id", "size"))
        .reset_index()
    )
    data["log2_lr"] = np.log2(data["lr"])
    data["is_optimum"] = False
    swept = data.groupby(["mup", "width"])["lr"].transform("nunique") > 1
    best = data[swept].groupby(["mup", "width"])["final_loss"].idxmin()
    data.loc[best.to_numpy(), "is_optimum"] = True
    return data


def _draw_lr_panel(ax, part: pd.DataFrame, mup: bool, colors: dict) -> None:
    for w, curve in part.groupby("width"):
        ax.plot(
            curve["log2_lr"],
            curve["final_loss"],
            marker="o",
            color=colors[w],
            label=f"d_model {w}",
            gid=f"{'mup' if mup else 'sp'}/{w}",
        )
        opt = curve[curve["is_optimum"]]
        ax.plot(
            opt["log2_lr"],
            opt["final_loss"],
            marker="*",
            markersize=16,
            linestyle="none",
            color=colors[w],
            markeredgecolor="black",
        )
    if part.empty:
        ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", color="0.5")
    elif not part["is_optimum"].any():
        ax.text(
            0.5,
            0.5,
            "one learning rate per width:\nno optimum to mark (sweep the LR)",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    panel_title = "muP" if mup else "SP (standard parametrization)"
    ax.set(title=panel_title, xlabel="log₂ peak learning rate")
    ax.grid(alpha=0.3)
    if not part.empty:
        legend_title = "width (★ = best LR)" if part["is_optimum"].any() else "width"
        ax.legend(fontsize=8, title=legend_title, title_fontsize=8)


def fig_mup_lr(rec: Record, style: Style) -> FigureResult | None:
    data = _lr_study(rec)
    if data is None:
        return None
    colors = ramp(sorted(data["width"].unique()), "viridis")
    fig, axes = new_figure(12, 4.8, ncols=2, sharey=True)
    for ax, mup in zip(axes, (False, True), strict=True):
        _draw_lr_panel(ax, data[data["mup"] == mup], mup, colors)
    axes[0].set_ylabel("final training loss (nats/token)")
    skipped = int((rec.runs["status"] != "ok").sum())
    caption = (
        "Final loss against log₂ of the peak learning rate, one curve per width "
        "(d_model), SP left and muP right; ★ marks each curve's best LR (mean over runs "
        "sharing width and LR). Under muP the optimum should stay put as width grows."
    )
    if not data["is_optimum"].any():
        caption += " This record has one LR per width, so no optimum can be located."
    if skipped:
        caption += f" {skipped} run(s) that did not finish ok are left out."
    return FigureResult("mup_lr", "muP learning-rate transfer", caption, fig, data)


def _coord_sites(sites: Iterable[str]) -> list[str]:
    """The sites in network order; of more than 4, the embedding, first and last block and
    the logits."""

    def rank(site: str):
        if site == "embed":
            return (0, 0, site)
        if site.startswith("block_") and site[6:].isdigit():
            return (1, int(site[6:]), site)
        if site == "logits":
            return (3, 0, site)
        return (2, 0, site)

    ordered = sorted(set(sites), key=rank)
    if len(ordered) <= 4:
        return ordered
    blocks = [s for s in ordered if rank(s)[0] == 1]
    keep = {"embed", "logits"} | ({blocks[0], blocks[-1]} if blocks else set())
    return [s for s in ordered if s in keep] or ordered[:4]


def fig_coord_check(rec: Record, style: Style | None = None) -> FigureResult | None:
    if rec.coord is None or rec.coord.empty:
        return None
    return coord_check_result(rec.coord)


def coord_check_figure(directory: str | Path) -> Path | None:
    """Draw ``directory/coord_check.parquet`` (as ``scaling mup coord-check`` writes it) into
    ``coord_check.png`` + ``coord_check.csv`` beside it; the PNG's path, or None if empty."""
    directory = Path(directory)
    coord = pd.read_parquet(directory / records.COORD_CHECK_FILE)
    result = coord_check_result(coord)
    if result is None:
        return None
    png, _ = result.write(directory)
    return png


def _coord_data(coord: pd.DataFrame, sites: list[str]) -> tuple[pd.DataFrame, list]:
    """Mean RMS per site, parametrization, step and width, at most ``MAX_COORD_STEPS`` steps;
    the steps kept."""
    steps = sorted(coord["step"].unique())
    if len(steps) > MAX_COORD_STEPS:
        spread = np.linspace(0, len(steps) - 1, MAX_COORD_STEPS)
        steps = [steps[int(round(i))] for i in spread]
    coord = coord[coord["site"].isin(sites) & coord["step"].isin(steps)]
    data = coord.groupby(["site", "mup", "step", "width"])["rms"].mean().reset_index()
    data = data.assign(_s=data["site"].map({s: i for i, s in enumerate(sites)}))
    return data.sort_values(["_s", "mup", "step", "width"]).drop(columns="_s"), steps


def coord_check_result(coord: pd.DataFrame) -> FigureResult | None:
    """The coord-check figure of a table with columns mup, width, step, site, rms."""
    coord = coord.assign(mup=coord["mup"].astype(bool))
    coord = coord[np.isfinite(coord["rms"].astype(float)) & (coord["rms"] > 0)]
    if coord.empty:
        return None
    all_sites = coord["site"].nunique()
    sites = _coord_sites(coord["site"])
    data, steps = _coord_data(coord, sites)
    step_color = ramp(steps, "plasma", top=0.85)
    fig = Figure(figsize=(11, 2.9 * len(sites) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(sites), 2, squeeze=False, sharey="row")
    for i, site in enumerate(sites):
        for j, mup in enumerate((False, True)):
            part = data[(data["site"] == site) & (data["mup"] == mup)]
            _draw_coord_panel(grid[i][j], part, site, mup, step_color)
            if i == len(sites) - 1:
                grid[i][j].set_xlabel("width (d_model, log₂)")
            if j == 0:
                grid[i][j].set_ylabel("activation RMS")
    grid[0][1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    caption = (
        "Coordinate check: RMS of the activations at each site against width, one line "
        "per training step, SP left and muP right. Under muP the lines stay flat as width "
        "grows; under SP they drift."
    )
    if len(sites) < all_sites:
        caption += " Sites shown: " + ", ".join(sites) + "."
    return FigureResult("coord_check", "muP coordinate check", caption, fig, data)


def _draw_coord_panel(ax, part: pd.DataFrame, site: str, mup: bool, step_color: dict) -> None:
    for step, line in part.groupby("step"):
        ax.plot(
            line["width"],
            line["rms"],
            marker="o",
            color=step_color[step],
            label=f"step {step}",
            gid=f"{site}/{'mup' if mup else 'sp'}/{step}",
        )
    if part.empty:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="0.5")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"{'muP' if mup else 'SP'}: {site}", fontsize=10)
