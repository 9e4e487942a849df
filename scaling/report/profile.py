"""Step time by the model's named scopes, from the profile summaries a profiled sweep stores
beside its record (``DIR/profiles/<run_id>/summary.json``, ``scaling.profile``): one stacked
bar per profiled ok run, a segment per scope, and the measured median step as a tick."""

from __future__ import annotations

import json

import pandas as pd

from scaling.profile import SCOPES, SUMMARY_FILE
from scaling.report.axes import FigureResult, legend_outside, new_figure
from scaling.report.record import Record
from scaling.report.style import Style

SCOPE_ORDER = (*SCOPES, "collectives", "other")
SCOPE_COLORS = dict(zip(SCOPE_ORDER, (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bbbbbb",
), strict=True))  # fmt: skip


def profile_table(rec: Record) -> pd.DataFrame:
    """One row per (profiled ok run, scope): ms per step, and the run's median step in ms."""
    rows = []
    ok = rec.ok.set_index("run_id")
    for directory in rec.dirs:
        for path in sorted((directory / "profiles").glob(f"*/{SUMMARY_FILE}")):
            run_id = path.parent.name
            if run_id not in ok.index:
                continue
            summary = json.loads(path.read_text())
            run = ok.loc[run_id]
            label = f"{run['size']} {run['mode']} {run['mesh']}"
            for scope, seconds in summary["scopes_s"].items():
                rows.append({"run_id": run_id, "run": label, "scope": scope,
                             "ms_per_step": seconds * 1e3,
                             "step_ms": summary["step_time_s"] * 1e3})  # fmt: skip
    return pd.DataFrame(rows, columns=["run_id", "run", "scope", "ms_per_step", "step_ms"])


def fig_step_breakdown(rec: Record, style: Style) -> FigureResult | None:
    data = profile_table(rec)
    if data.empty:
        return None
    runs = list(dict.fromkeys(data["run"]))
    fig, (ax,) = new_figure(height=1.2 + 0.45 * len(runs))
    left = dict.fromkeys(runs, 0.0)
    for scope in [s for s in SCOPE_ORDER if s in set(data["scope"])]:
        part = data[data["scope"] == scope].set_index("run")["ms_per_step"]
        widths = [float(part.get(r, 0.0)) for r in runs]
        ax.barh(runs, widths, left=[left[r] for r in runs], color=SCOPE_COLORS[scope],
                label=scope, edgecolor="white", linewidth=0.5)  # fmt: skip
        for r, w in zip(runs, widths, strict=True):
            left[r] += w
    steps = data.drop_duplicates("run").set_index("run")["step_ms"]
    ax.scatter([steps[r] for r in runs], runs, marker="|", s=300, color="black",
               label="mean profiled step (measured)", zorder=3)  # fmt: skip
    ax.set_xlabel("ms per step (self time of the step's operations)")
    ax.invert_yaxis()
    legend_outside(ax, ax.get_legend_handles_labels()[0])
    caption = (
        "Self time per step of the step's operations by innermost named scope, from each "
        "profiled run's trace (scaling.profile); the black tick is the mean profiled step. "
        "'other' holds operations without a scope (copies, loop bookkeeping)."
    )
    return FigureResult("step_breakdown", "Step time by scope (profiled runs)", caption, fig,
                        data)  # fmt: skip
