"""Against a baseline record: tokens/s and MFU ratios per configuration both records hold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from scaling import records
from scaling.report.axes import FigureResult, legend_outside, new_figure
from scaling.report.record import Record, describe, varying
from scaling.report.style import Style
from scaling.report.tables import Table, fmt

_COMPARED = ["tokens_per_s", "mfu"]


def _configs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run, its ``records.CONFIG_KEYS`` (what ``scaling check`` matches on too) and
    ``config``, their values joined by "|"."""
    configs = pd.DataFrame(
        [records.config_of(r) for _, r in runs.iterrows()],
        index=runs.index,
        columns=list(records.CONFIG_KEYS),
    )
    keys = [records.config_key(r) for _, r in runs.iterrows()]
    return configs.assign(config=["|".join(map(str, k)) for k in keys])


def _per_config(rec: Record) -> pd.DataFrame:
    ok = _configs(rec.ok).join(rec.ok[[*_COMPARED, "run_id"]])
    return ok.groupby("config", sort=False).agg(
        **{c: (c, "first") for c in records.CONFIG_KEYS},
        **{v: (v, "median") for v in _COMPARED},
        n_runs=("run_id", "size"),
    )


def baseline_table(current: Record, baseline: Record) -> pd.DataFrame:
    """Median tokens/s and MFU of the ok runs of each configuration in both records."""
    cur, base = _per_config(current), _per_config(baseline)
    base = base[_COMPARED + ["n_runs"]].rename(columns=lambda c: f"{c}_baseline")
    both = cur.rename(columns={c: f"{c}_current" for c in _COMPARED + ["n_runs"]}).join(
        base, how="inner"
    )
    for c in _COMPARED:
        both[f"{c}_ratio"] = both[f"{c}_current"] / both[f"{c}_baseline"]
    return both.reset_index()


def _config_label(row, varying_columns: Sequence[str]) -> str:
    return " ".join([row["size"], row["mode"], *describe(row, varying_columns)])


def fig_baseline(current: Record, baseline: Record, style: Style) -> FigureResult | None:
    table = baseline_table(current, baseline)
    if table.empty:
        return None
    identity = [k for k in records.CONFIG_KEYS if k not in ("size", "mode")]
    differing = varying(table, identity, within=("size", "mode"))
    table["label"] = [_config_label(r, differing) for _, r in table.iterrows()]
    fig, axes = new_figure(max(8, 1.0 * len(table) + 4), 4.8, ncols=2)
    for ax, col, name in zip(axes, ("tokens_per_s", "mfu"), ("tokens/s", "MFU"), strict=True):
        x = np.arange(len(table))
        values = table[f"{col}_ratio"].to_numpy(dtype=float)
        bars = ax.bar(
            x,
            np.nan_to_num(values),
            color=[style.run_color(r) for _, r in table.iterrows()],
            edgecolor="white",
        )
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="= baseline")
        ax.set_xticks(x, table["label"], rotation=30, ha="right", fontsize=8)
        ax.set(ylabel=f"{name}: current ÷ baseline", title=f"{name} vs baseline")
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    handles = style.legend_handles(table, sizes=False)
    handles.append(Line2D([], [], color="black", linestyle="--", label="ratio 1 (= baseline)"))
    legend_outside(axes[1], handles)
    caption = (
        "Throughput (tokens/s) and MFU of this record ÷ the baseline's, per "
        "configuration (matched on the keys scaling check uses: "
        f"{', '.join(records.CONFIG_KEYS)}; median over ok runs). Above 1: faster than the "
        "baseline."
    )
    return FigureResult("baseline_ratio", "Against the baseline", caption, fig, table)


def ratio_table(figure: FigureResult, baseline_name) -> Table:
    """The page table of the baseline figure's data."""
    return Table(
        f"Against the baseline ({baseline_name})",
        ["configuration", "tokens/s", "baseline tokens/s", "ratio", "MFU", "baseline MFU", "ratio"],
        [
            [
                r["label"],
                fmt(r["tokens_per_s_current"], "{:,.0f}"),
                fmt(r["tokens_per_s_baseline"], "{:,.0f}"),
                fmt(r["tokens_per_s_ratio"], "{:.3f}"),
                fmt(r["mfu_current"] * 100, "{:.1f} %"),
                fmt(r["mfu_baseline"] * 100, "{:.1f} %"),
                fmt(r["mfu_ratio"], "{:.3f}"),
            ]
            for _, r in figure.data.iterrows()
        ],
    )


def unmatched_table(current: Record, baseline: Record) -> Table | None:
    cur, base = set(_configs(current.ok)["config"]), set(_configs(baseline.ok)["config"])
    rows = [["current only", k.replace("|", " ")] for k in sorted(cur - base)]
    rows += [["baseline only", k.replace("|", " ")] for k in sorted(base - cur)]
    if not rows:
        return None
    return Table("Configurations without a match", ["in", " ".join(records.CONFIG_KEYS)], rows)
