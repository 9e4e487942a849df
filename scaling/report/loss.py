"""Loss curves: training loss per step and against cumulative compute, one line per run."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scaling.report.axes import (
    FigureResult,
    draw_floors,
    floors,
    legend_outside,
    log_axis,
    new_figure,
    spans_decades,
)
from scaling.report.record import RUN_ID_COLUMNS, Record
from scaling.report.style import Style

MAX_RUN_LEGEND = 14  # more runs than this: a legend of modes and sizes instead of one per run


def step_table(rec: Record) -> pd.DataFrame:
    """The finite-loss steps of every run, with the run's identity, in run order."""
    cols = [*RUN_ID_COLUMNS, "d_model", "lr", "status", "model_flops_per_step"]
    # the run's peak LR (which colour may encode) replaces the step's scheduled LR
    steps = rec.steps.drop(columns="lr", errors="ignore")
    steps = steps.merge(rec.runs[cols], on=["source", "run_id"], how="inner")
    steps = steps[np.isfinite(steps["loss"].astype(float))]
    order = {
        rid: i for i, rid in enumerate(zip(rec.runs["source"], rec.runs["run_id"], strict=True))
    }
    steps = steps.assign(_o=[order[k] for k in zip(steps["source"], steps["run_id"], strict=True)])
    return steps.sort_values(["_o", "step"]).drop(columns="_o").reset_index(drop=True)


def _runs_legend(ax, steps: pd.DataFrame, style: Style) -> str:
    """A legend entry per run when there are few, else per colour and size; caption text."""
    n_runs = steps.groupby(["source", "run_id"]).ngroups
    if n_runs <= MAX_RUN_LEGEND:
        legend_outside(ax)
        return ""
    floor = [h for h in ax.get_lines() if h.get_label().startswith("entropy floor")][:1]
    legend_outside(ax, floor + style.legend_handles(steps, mup=bool(steps["mup"].any())))
    return f" {n_runs} runs: the CSV names each line (run_id, label)."


def _plot_runs(ax, steps: pd.DataFrame, x: str, style: Style) -> None:
    runs = steps.drop_duplicates(["source", "run_id"])
    wide_of = dict(
        zip(zip(runs["source"], runs["run_id"], strict=True), Style.emphasis(runs), strict=True)
    )
    for (source, run_id), run in steps.groupby(["source", "run_id"], sort=False):
        r = run.iloc[0]
        label = r["label"] + ("" if r["status"] == "ok" else f" ({r['status']})")
        wide = wide_of[(source, run_id)]
        ax.plot(
            run[x],
            run["loss"],
            color=style.run_color(r),
            linestyle=style.linestyle(r["size"]),
            marker=style.marker(r["size"]),
            markerfacecolor=style.face(r["mup"]),
            markevery=max(1, len(run) // 8),
            markersize=4 + 4 * wide,
            linewidth=1.3 + 2.2 * wide,
            alpha=0.9,
            label=label,
            gid=f"{r['source']}/{r['run_id']}",
        )


def _loss_figure(rec: Record, steps: pd.DataFrame, x: str, style: Style):
    """A figure of each run's loss against ``x`` over the record's entropy floors; the figure,
    its axes and the floors."""
    fig, (ax,) = new_figure(9, 4.8)
    _plot_runs(ax, steps, x, style)
    floor_values = floors(rec.runs)
    draw_floors(ax, floor_values)
    return fig, ax, floor_values


def fig_loss_vs_step(rec: Record, style: Style) -> FigureResult | None:
    steps = step_table(rec)
    if steps.empty:
        return None
    fig, ax, floor_values = _loss_figure(rec, steps, "step", style)
    ax.set(
        xlabel="optimizer step", ylabel="training loss (nats/token)", title="Training loss per step"
    )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    caption = (
        f"Training loss of every run against optimizer step (colour: {style.color_meaning}; "
        "marker and line style: size; runs drawn narrower on top of wider ones, so that "
        "identical curves of different modes stay visible)." + _runs_legend(ax, steps, style)
    )
    if floor_values:
        caption += (
            " Dashed: the entropy rate of the synthetic data, the best loss any model can reach."
        )
    data = steps[["source", "run_id", "label", "size", "mode", "step", "loss"]]
    return FigureResult("loss_vs_step", "Loss vs step", caption, fig, data)


def fig_loss_vs_compute(rec: Record, style: Style) -> FigureResult | None:
    steps = step_table(rec)
    steps = steps.assign(
        cumulative_model_flops=steps["step"].astype(float) * steps["model_flops_per_step"]
    )
    steps = steps[np.isfinite(steps["cumulative_model_flops"])]
    log_x = spans_decades(steps["cumulative_model_flops"])
    if log_x:
        steps = steps[steps["cumulative_model_flops"] > 0]
    if steps.empty:
        return None
    fig, ax, floor_values = _loss_figure(rec, steps, "cumulative_model_flops", style)
    if log_x:
        log_axis(ax, "x", steps["cumulative_model_flops"])
    ax.set(
        xlabel="cumulative model FLOPs (step × model FLOPs per step)",
        ylabel="training loss (nats/token)",
        title="Training loss vs compute",
    )
    ax.grid(alpha=0.3, which="both" if log_x else "major")
    caption = (
        "Training loss against the model FLOPs spent before the step (analytic "
        "model FLOPs per step × step index)." + _runs_legend(ax, steps, style)
    )
    if log_x:
        caption += " Log x axis; step 0 (no compute yet) is left out."
    if floor_values:
        caption += " Dashed: the entropy floor of the synthetic data."
    data = steps[
        [
            "source",
            "run_id",
            "label",
            "size",
            "mode",
            "step",
            "model_flops_per_step",
            "cumulative_model_flops",
            "loss",
        ]
    ]
    return FigureResult("loss_vs_compute", "Loss vs compute", caption, fig, data)


def val_table(rec: Record) -> pd.DataFrame:
    """The steps of the runs that measured validation loss, long form: one row per (run, step,
    split) with ``split`` train (every step) or val (the evaluated steps)."""
    if "val_loss" not in rec.steps.columns:
        return pd.DataFrame()
    steps = step_table(rec).assign(val_loss=lambda s: pd.to_numeric(s["val_loss"], errors="coerce"))
    measured = steps.groupby(["source", "run_id"])["val_loss"].transform(
        lambda v: np.isfinite(v).any()
    )
    steps = steps[measured.astype(bool)]
    keep = ["source", "run_id", "label", "size", "mode", "step"]
    train = steps[keep].assign(split="train", loss=steps["loss"])
    val = steps[np.isfinite(steps["val_loss"])]
    val = val[keep].assign(split="val", loss=val["val_loss"])
    return pd.concat([train, val], ignore_index=True)


def fig_val_loss(rec: Record, style: Style) -> FigureResult | None:
    """Training loss (thin line) and validation loss (markers on a thick line) per run."""
    data = val_table(rec)
    if data.empty:
        return None
    runs = rec.runs.set_index(["source", "run_id"])
    fig, (ax,) = new_figure(9, 4.8)
    for (source, run_id), run in data.groupby(["source", "run_id"], sort=False):
        r = runs.loc[(source, run_id)]
        color = style.run_color(r)
        train, val = run[run["split"] == "train"], run[run["split"] == "val"]
        ax.plot(train["step"], train["loss"], color=color, linewidth=1.0, alpha=0.45)
        ax.plot(
            val["step"],
            val["loss"],
            color=color,
            linewidth=2.0,
            marker=style.marker(r["size"]),
            markerfacecolor=style.face(r["mup"]),
            label=f"{r['label']} (val)",
            gid=f"{source}/{run_id}",
        )
    ax.set(
        xlabel="optimizer step", ylabel="loss (nats/token)", title="Training and validation loss"
    )
    ax.grid(alpha=0.3)
    legend_outside(ax)
    caption = (
        "Validation loss (markers, thick line) on the data's fixed validation windows, the "
        "same windows for every run, beside the training loss of each step (thin line, same "
        f"colour; colour: {style.color_meaning}). The training loss is one batch per step, "
        "the validation loss the mean over the evaluation batches."
    )
    return FigureResult("val_loss", "Training and validation loss", caption, fig, data)
