"""`scaling fit`: scaling laws of a sweep record (``scaling.laws.study``), printed per group."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from scaling.cli.common import out_console, print_json, split_list, user_errors

Opt = typer.Option


def parse_budgets(text: str | None) -> tuple[float, ...]:
    budgets = []
    for part in split_list(text or ""):
        try:
            budgets.append(float(part))
        except ValueError:
            raise ValueError(f"bad --budget {part!r}; give FLOPs, e.g. 1e21 or 1e21,1e23") from None
    return tuple(budgets)


def fit(
    dirs: Annotated[list[Path], typer.Argument(help="Sweep record directories.")],
    law: Annotated[
        str, Opt(help="chinchilla: E + A/N^α + B/D^β | kaplan | loss-vs-compute: E + A·C^-α.")
    ] = "chinchilla",
    loss: Annotated[str, Opt(help="Final loss to fit: val | train.")] = "val",
    holdout: Annotated[
        str, Opt(help="Leave out and predict: none | largest (size) | K (largest-compute runs).")
    ] = "none",
    bootstrap: Annotated[int, Opt(help="Bootstrap resamples of the runs (0: no intervals).")] = 200,
    budget: Annotated[
        str | None, Opt(help="Compute budgets (FLOPs) to allocate, e.g. 1e21,1e23.")
    ] = None,
    seed: Annotated[int, Opt(help="Seed of the bootstrap.")] = 0,
    json_: Annotated[bool, Opt("--json", help="Last stdout line: JSON list of groups.")] = False,
) -> None:
    """Fit scaling laws to the final losses of a sweep's ok runs: approach 1 (lowest loss over
    training), approach 2 (IsoFLOP parabolas), the chosen law (approach 3 or L(C)), held-out
    prediction and compute-optimal N*, D* for each --budget, with bootstrap intervals. Runs are
    grouped by parametrization and architecture; groups are never mixed."""
    from scaling import records
    from scaling.laws.study import StudyOptions, study_record

    with user_errors():
        opts = StudyOptions(
            law=law,
            loss=loss,
            holdout=holdout,
            resamples=bootstrap,
            budgets=parse_budgets(budget),
            seed=seed,
        )
        runs = records.load_runs(*dirs)
        studies = study_record(runs, records.load_steps(*dirs), opts)
    if json_:
        print_json([s.to_dict() for s in studies])
        return
    for study in studies:
        render(study)


def _num(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.4g}"


def render(study) -> None:
    """One group: the law's parameters, approaches 1 and 2, held-out runs, allocations."""
    out_console.print(f"\n[bold]{study.label}[/] ({study.n_runs} runs)", highlight=False)
    table = Table(title=f"{study.law} law", title_justify="left")
    for col in ("parameter", "value", "95 % interval"):
        table.add_column(col, justify="right")
    if study.parametric is not None:
        for name, iv in study.parametric.params.items():
            table.add_row(name, _num(iv.value), f"[{_num(iv.lo)}, {_num(iv.hi)}]")
    if study.compute is not None:
        c = study.compute
        for name, v, se in (("E", c.E, c.E_se), ("A", c.A, c.A_se), ("alpha", c.alpha, c.alpha_se)):
            table.add_row(name, _num(v), f"± {_num(se)} (s.e.)")
    if table.rows:
        out_console.print(table)
    if math.isfinite(study.entropy_floor):
        out_console.print(f"known entropy floor: {study.entropy_floor:.4g} nats (compare E)")
    for name, fit in (
        ("approach 1 (envelope)", study.envelope),
        ("approach 2 (IsoFLOP)", study.isoflop),
    ):
        if fit is not None:
            out_console.print(
                f"{name}: N_opt ∝ C^a, a = {fit.a.text()}; D_opt ∝ C^b, b = {fit.b.text()}",
                highlight=False,
            )
    _render_heldout(study)
    _render_allocations(study)
    for note in study.notes:
        out_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)


def _render_heldout(study) -> None:
    if not study.heldout:
        return
    table = Table(title="held out: fitted on the rest, predicted", title_justify="left")
    for col in ("run", "size", "N", "D", "measured", "predicted", "error"):
        table.add_column(col, justify="right")
    for h in study.heldout:
        table.add_row(
            h.run_id[:10],
            h.size,
            _num(h.N),
            _num(h.D),
            f"{h.measured:.4f}",
            h.predicted.text("{:.4f}"),
            f"{h.error:+.2%}",
        )
    out_console.print(table)
    out_console.print(f"mean |error| {study.heldout_error:.2%}")


def _render_allocations(study) -> None:
    rows = []
    if study.parametric is not None:
        for a in study.parametric.allocations:
            rows.append((f"{study.law} (C = 6ND)", a.budget, a.n_opt, a.d_opt, a.loss.text()))
    if study.isoflop is not None:
        for budget, n, d in study.isoflop.allocations:
            rows.append(("IsoFLOP power laws", budget, n, d, "-"))
    if not rows:
        return
    table = Table(title="compute-optimal allocation", title_justify="left")
    for col in ("from", "budget (FLOPs)", "N*", "D*", "D*/N*", "loss"):
        table.add_column(col, justify="right")
    for source, budget, n, d, loss_text in rows:
        table.add_row(
            source, f"{budget:.3g}", n.text(), d.text(), f"{d.value / n.value:.3g}", loss_text
        )
    out_console.print(table)
