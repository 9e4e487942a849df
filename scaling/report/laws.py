"""Scaling-law figures and table from ``scaling.laws.study``: IsoFLOP curves with their minima,
N_opt and D_opt against compute with fitted power laws and intervals, the fitted L(N, D) with
the runs, and held-out runs' predicted against measured loss. The fits are computed once per
report (cached on the record) and only for records that vary both N and D."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize

from scaling.laws.study import GroupStudy, StudyOptions, study_record
from scaling.report.axes import FigureResult, legend_outside, log_axis, new_figure
from scaling.report.record import Record
from scaling.report.style import Style
from scaling.report.tables import Table, fmt

REPORT_RESAMPLES = 200
MAX_PANELS = 3


def _loss_kind(rec: Record) -> str:
    return "val" if np.isfinite(rec.ok["final_val_loss"].astype(float)).any() else "train"


def law_studies(rec: Record) -> tuple[list[GroupStudy], list[GroupStudy]]:
    """(every group's fits on all runs, and with the largest size held out), computed once per
    record; empty when no group of ok runs has ≥ 3 sizes and ≥ 3 token counts."""
    if "laws" not in rec.cache:
        ok = rec.ok
        varied = ok["n_params"].nunique() >= 3 and ok["tokens_seen"].nunique() >= 3
        full, held = [], []
        if varied:
            base = StudyOptions(loss=_loss_kind(rec), resamples=REPORT_RESAMPLES)
            try:
                full = study_record(rec.runs, rec.steps, base)
                held_opts = StudyOptions(
                    loss=base.loss, resamples=REPORT_RESAMPLES, holdout="largest"
                )
                held = study_record(rec.runs, rec.steps, held_opts)
            except ValueError:
                full, held = [], []
        rec.cache["laws"] = (full, held)
    return rec.cache["laws"]


def _panels(studies: list[GroupStudy], attribute: str) -> list[GroupStudy]:
    return [s for s in studies if getattr(s, attribute) is not None][:MAX_PANELS]


def fig_isoflop(rec: Record, style: Style) -> FigureResult | None:
    studies = _panels(law_studies(rec)[0], "isoflop")
    if not studies:
        return None
    fig, axes = new_figure(6.5 * len(studies), 4.6, ncols=len(studies))
    rows = []
    for ax, study in zip(axes, studies, strict=True):
        rows += _draw_isoflop(ax, study)
    data = pd.DataFrame(rows)
    caption = (
        "Approach 2 (Hoffmann et al. 2022, §3.2): final "
        f"{'validation' if _loss_kind(rec) == 'val' else 'training'} loss of runs on one compute "
        "budget C (colour) against their parameters N, a parabola in ln N per budget and its "
        "minimum (star; hollow when outside the sampled sizes, then left out of the power laws). "
        + " ".join(
            f"{s.label}: N_opt ∝ C^a, a = {s.isoflop.a.text('{:.3g}')}; "
            f"D_opt ∝ C^b, b = {s.isoflop.b.text('{:.3g}')} (95 % bootstrap intervals)."
            for s in studies
        )
    )
    return FigureResult("isoflop", "IsoFLOP profiles", caption, fig, data)


def _draw_isoflop(ax, study: GroupStudy) -> list[dict]:
    rows = []
    profiles = study.isoflop.profiles
    norm = LogNorm(min(p.compute for p in profiles), max(p.compute for p in profiles) * 1.001)
    cmap = colormaps["viridis"]
    for p in profiles:
        color = cmap(0.9 * norm(p.compute))
        x = np.linspace(p.in_n.x_lo - 0.2, p.in_n.x_hi + 0.2, 100)
        ax.plot(np.exp(x), p.in_n(x), color=color, linewidth=1.4, label=f"C = {p.compute:.3g}")
        rows += [
            {
                "series": "parabola",
                "budget": p.compute,
                "N": float(np.exp(v)),
                "loss": float(p.in_n(v)),
            }
            for v in x[::10]
        ]
        if p.in_n.convex:
            ax.plot(
                p.n_opt, p.loss_opt, marker="*", markersize=13, color=color, linestyle="none",
                markerfacecolor=color if p.usable else "none",
            )  # fmt: skip
            rows.append(
                {"series": "minimum", "budget": p.compute, "N": p.n_opt, "loss": p.loss_opt}
            )
    ax.set(xlabel="parameters N", ylabel="final loss (nats/token)", title=study.label)
    log_axis(ax, "x")
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
    return rows


def fig_optimal_scaling(rec: Record, style: Style) -> FigureResult | None:
    studies = _panels(law_studies(rec)[0], "isoflop")
    if not studies:
        return None
    study = studies[0]
    fig, axes = new_figure(12, 4.6, ncols=2)
    used = study.isoflop.laws.used
    c_lo, c_hi = min(p.compute for p in used), max(p.compute for p in used)
    grid = np.geomspace(c_lo / 3, c_hi * 30, 40)
    bands = _isoflop_bands(rec, study, grid)
    rows = []
    for ax, which in zip(axes, ("N", "D"), strict=True):
        rows += _draw_optimal(ax, study, which, grid, bands)
    caption = (
        f"{study.label}: compute-optimal parameters N_opt and tokens D_opt against compute C. "
        "Stars: the IsoFLOP minima (approach 2) with the power law through them and its 95 % "
        "bootstrap band (runs resampled within each budget); dots: the lowest-loss run along "
        "training (approach 1, one learning-rate schedule per run); dashed: the parametric law's "
        "allocation along C = 6·N·D (approach 3). Extrapolated beyond the largest budget."
    )
    return FigureResult(
        "optimal_scaling", "N_opt and D_opt vs compute", caption, fig, pd.DataFrame(rows)
    )


def _isoflop_bands(rec: Record, study: GroupStudy, grid: np.ndarray):
    """The IsoFLOP power laws with bootstrap intervals at every compute of ``grid``."""
    from scaling.laws.isoflop import fit_isoflop
    from scaling.laws.study import fit_points

    points = fit_points(rec.runs, _loss_kind(rec))
    points = points[points["group"] == study.label]
    args = (points[c].to_numpy() for c in ("N", "D", "C", "loss"))
    return fit_isoflop(*args, budgets=tuple(grid), resamples=REPORT_RESAMPLES).allocations


def _draw_optimal(ax, study: GroupStudy, which: str, grid, bands) -> list[dict]:
    k = 1 if which == "N" else 2
    value = np.array([b[k].value for b in bands])
    lo, hi = np.array([b[k].lo for b in bands]), np.array([b[k].hi for b in bands])
    ax.plot(grid, value, color="crimson", label="IsoFLOP power law (approach 2)")
    if np.isfinite(lo).all():
        ax.fill_between(grid, lo, hi, color="crimson", alpha=0.15, label="95 % bootstrap band")
    used = study.isoflop.laws.used
    vertices = [p.n_opt if which == "N" else p.d_opt for p in used]
    ax.plot(
        [p.compute for p in used],
        vertices,
        "*",
        color="crimson",
        markersize=12,
        label="IsoFLOP minima",
    )
    rows = [
        {"series": f"{which}_opt power law", "C": c, "value": v, "lo": a, "hi": b}
        for c, v, a, b in zip(grid, value, lo, hi, strict=True)
    ]
    if study.envelope is not None:
        env = study.envelope.envelope
        y = (env.n_opt if which == "N" else env.d_opt)[env.interior]
        ax.plot(
            env.compute[env.interior],
            y,
            ".",
            color="0.4",
            markersize=4,
            label="lowest loss along training (approach 1)",
        )
    if study.parametric is not None:
        law = study.parametric.fit.law
        y = law.optimal(grid)[0 if which == "N" else 1]
        ax.plot(grid, y, "--", color="tab:blue", label=f"{law.law} law along C = 6ND (approach 3)")
        rows += [
            {"series": f"{which}_opt parametric", "C": c, "value": float(v)}
            for c, v in zip(grid, y, strict=True)
        ]
    ax.set(
        xlabel="compute C (FLOPs)", ylabel="parameters N_opt" if which == "N" else "tokens D_opt"
    )
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return rows


def fig_loss_contours(rec: Record, style: Style) -> FigureResult | None:
    studies = _panels(law_studies(rec)[0], "parametric")
    if not studies:
        return None
    from scaling.laws.study import fit_points

    points = fit_points(rec.runs, _loss_kind(rec))
    fig, axes = new_figure(6.5 * len(studies), 4.8, ncols=len(studies))
    rows = []
    for ax, study in zip(axes, studies, strict=True):
        runs = points[points["group"] == study.label]
        rows += _draw_contours(ax, study, runs)
    params = "; ".join(
        f"{s.label}: "
        + ", ".join(f"{k} = {v.text('{:.3g}')}" for k, v in s.parametric.params.items())
        for s in studies
    )
    caption = (
        "Approach 3: the fitted L(N, D) (filled contours, nats/token) with the runs at their "
        "(N, D) coloured by measured loss on the same scale (a run that blends into its "
        "background lies on the law), and the compute-optimal path "
        f"(dashed) along C = 6·N·D. Huber loss on log-loss, L-BFGS from a grid. {params} "
        "(95 % bootstrap intervals)."
    )
    return FigureResult("loss_contours", "Fitted L(N, D)", caption, fig, pd.DataFrame(rows))


def _draw_contours(ax, study: GroupStudy, runs: pd.DataFrame) -> list[dict]:
    law = study.parametric.fit.law
    n = np.geomspace(runs["N"].min() / 2, runs["N"].max() * 2, 120)
    d = np.geomspace(runs["D"].min() / 2, runs["D"].max() * 2, 120)
    nn, dd = np.meshgrid(n, d)
    surface = law.loss(nn, dd)
    norm = Normalize(min(surface.min(), runs["loss"].min()), np.quantile(surface, 0.95))
    filled = ax.contourf(nn, dd, surface, levels=14, cmap="viridis", norm=norm)
    ax.figure.colorbar(filled, ax=ax, label="loss (nats/token)")
    ax.scatter(
        runs["N"],
        runs["D"],
        c=runs["loss"],
        cmap="viridis",
        norm=norm,
        edgecolors="black",
        s=45,
        zorder=3,
    )
    c_range = np.geomspace(6 * n[0] * d[0], 6 * n[-1] * d[-1], 60)
    n_opt, d_opt, _ = law.optimal(c_range)
    inside = (n_opt >= n[0]) & (n_opt <= n[-1]) & (d_opt >= d[0]) & (d_opt <= d[-1])
    ax.plot(
        n_opt[inside], d_opt[inside], "--", color="white", linewidth=1.6, label="compute-optimal"
    )
    ax.set(xlabel="parameters N", ylabel="tokens D", title=study.label)
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.legend(fontsize=7, loc="lower right")
    return [
        {"series": "run", "N": r.N, "D": r.D, "loss": r.loss, "fitted": float(law.loss(r.N, r.D))}
        for r in runs.itertuples()
    ]


def fig_heldout(rec: Record, style: Style) -> FigureResult | None:
    studies = [s for s in law_studies(rec)[1] if s.heldout][:MAX_PANELS]
    if not studies:
        return None
    fig, (ax,) = new_figure(7.5, 4.8)
    rows = _fitted_runs(ax, rec, studies)
    for i, study in enumerate(studies):
        measured = np.array([h.measured for h in study.heldout])
        predicted = np.array([h.predicted.value for h in study.heldout])
        lo = np.array([h.predicted.lo for h in study.heldout])
        hi = np.array([h.predicted.hi for h in study.heldout])
        err = np.vstack([predicted - lo, hi - predicted]) if np.isfinite(lo).all() else None
        ax.errorbar(
            measured,
            predicted,
            yerr=err,
            fmt="os^D"[i % 4],
            capsize=3,
            label=f"held out, {study.label}: mean |error| {study.heldout_error:.2%}",
        )
        rows += [
            {
                "series": "held out",
                "group": study.label,
                **h.to_dict(),
                "predicted": h.predicted.value,
                "lo": h.predicted.lo,
                "hi": h.predicted.hi,
            }
            for h in study.heldout
        ]
    values = [r["measured"] for r in rows] + [r["predicted"] for r in rows]
    span = np.array([min(values), max(values)])
    pad = 0.02 * max(span[1] - span[0], 0.05 * span[1])
    ax.plot(span + [-pad, pad], span + [-pad, pad], color="0.5", linestyle=":", label="y = x")
    ax.set(xlabel="measured final loss (nats/token)", ylabel="predicted (fitted without it)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    caption = (
        "Held-out extrapolation (OLMo's model ladder): the chinchilla law fitted on every run "
        "but those of the largest model size (grey: the fitted runs, against the law) predicts "
        "theirs; bars are 95 % bootstrap intervals of the prediction (the fit's uncertainty, "
        "not the measurement's). "
        + " ".join(
            f"{s.label}: mean |error| {s.heldout_error:.2%} over {len(s.heldout)} runs."
            for s in studies
        )
    )
    return FigureResult("heldout", "Held-out prediction", caption, fig, pd.DataFrame(rows))


def _fitted_runs(ax, rec: Record, studies: list[GroupStudy]) -> list[dict]:
    """The runs each law was fitted on, law against measurement, in grey."""
    from scaling.laws.study import fit_points

    points = fit_points(rec.runs, _loss_kind(rec))
    rows = []
    for study in studies:
        held = {h.run_id for h in study.heldout}
        fitted = points[(points["group"] == study.label) & ~points["run_id"].isin(held)]
        law = study.parametric.fit.law
        rows += [
            {"series": "fitted", "group": study.label, "run_id": r.run_id, "measured": r.loss,
             "predicted": float(law.loss(r.N, r.D))}
            for r in fitted.itertuples()
        ]  # fmt: skip
    fitted = [r for r in rows if r["series"] == "fitted"]
    ax.plot(
        [r["measured"] for r in fitted], [r["predicted"] for r in fitted], "o", color="0.75",
        markersize=4, label="fitted runs",
    )  # fmt: skip
    return rows


def laws_table(rec: Record) -> Table | None:
    """Per group: the exponents of every approach with intervals, E against the entropy floor,
    the held-out error."""
    full, held = law_studies(rec)
    if not full:
        return None
    errors = {s.label: s.heldout_error for s in held}
    rows = []
    for s in full:
        law = s.parametric.params if s.parametric else {}
        rows.append([
            s.label, str(s.n_runs),
            s.envelope.a.text("{:.3g}") if s.envelope else "-",
            s.isoflop.a.text("{:.3g}") if s.isoflop else "-",
            law["a"].text("{:.3g}") if law else "-",
            law["E"].text("{:.4g}") if law else "-",
            fmt(s.entropy_floor, "{:.4g}"),
            fmt(errors.get(s.label, float("nan")) * 100, "{:.2f} %"),
        ])  # fmt: skip
    return Table(
        "Scaling laws (N_opt ∝ C^a; 95 % bootstrap intervals)",
        [
            "group",
            "runs",
            "a (approach 1)",
            "a (approach 2)",
            "a (approach 3)",
            "E (nats)",
            "entropy floor",
            "held-out |error|",
        ],
        rows,
        "Approach 3 is the chinchilla law L = E + A/N^α + B/D^β; its a = β/(α+β). Held-out: "
        "fitted without the largest size's runs, mean |predicted − measured| / measured.",
    )
