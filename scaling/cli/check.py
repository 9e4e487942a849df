"""`scaling check`: compare a sweep record against a baseline; exit 1 on a regression."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from scaling.check import DEFAULT_METRIC, DEFAULT_TOLERANCE
from scaling.cli.common import err_console, out_console, print_json, user_errors

Opt = typer.Option
STYLE = {"ok": "green", "REGRESSED": "bold red", "FAILED": "bold red", "improved": "cyan"}


def check(
    baseline: Annotated[
        Path, Opt(help="Baseline: a parquet file of run rows, or a sweep record directory.")
    ],
    current: Annotated[
        list[Path],
        Opt(
            help="Current sweep record directory (repeat it for the per-config median of "
            "repeated sweeps)."
        ),
    ],
    tolerance: Annotated[
        float, Opt(help="Allowed relative change before a run counts as regressed (or improved).")
    ] = DEFAULT_TOLERANCE,
    metric: Annotated[
        str, Opt(help="mfu | tokens_per_s | step_time_s_median (lower is better).")
    ] = DEFAULT_METRIC,
    rerun: Annotated[
        bool,
        Opt(
            help="Re-measure a regressed run once before failing (with --relative: every run, "
            "side by side, up to twice more; the median decides)."
        ),
    ] = True,
    relative: Annotated[
        bool,
        Opt(
            help="Divide each ratio by the median ratio of all matched runs (the machine "
            "factor) before the verdict: for a machine other than the baseline's."
        ),
    ] = False,
    json_: Annotated[bool, Opt("--json", help="Print the verdicts as JSON.")] = False,
    update_baseline: Annotated[
        bool, Opt(help="Write the current ok runs to --baseline (atomically) and exit 0.")
    ] = False,
) -> None:
    """Compare throughput of --current against --baseline, run by run (matched by config).

    Exit 0: every matched run within tolerance; 1: a run regressed or failed; 2: bad input."""
    from scaling import check as lib
    from scaling.sweep import remeasure

    if update_baseline:
        with user_errors():
            n = lib.update_baseline(baseline, *current)
        if json_:
            print_json({"baseline": str(baseline), "runs": n})
        else:
            sources = ", ".join(map(str, current))
            out_console.print(f"baseline {baseline}: {n} ok run(s) from {sources}")
        return

    def on_remeasure(row) -> None:
        if json_:
            return
        if row.verdict == "FAILED":
            what = "failed, re-measuring"
        elif row.verdict == "REGRESSED":
            what = f"regressed ({row.ratio:.2f}×), re-measuring"
        else:  # relative mode measures the whole grid again, side by side
            what = "re-measuring side by side"
        err_console.print(f"[yellow]{row.label}: {what}…[/]")

    with user_errors():
        result = lib.check(
            baseline,
            current,
            metric=metric,
            tolerance=tolerance,
            remeasure=remeasure if rerun else None,
            on_remeasure=on_remeasure,
            relative=relative,
        )
    if json_:
        print_json(result.to_dict())
    else:
        render(result, baseline)
    raise typer.Exit(result.exit_code)


def _fmt(metric: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if metric == "mfu":
        return f"{value:.2%}"
    if metric == "tokens_per_s":
        return f"{value:,.0f}"
    return f"{value * 1e3:.2f} ms"


def render(result, baseline: Path) -> None:
    metric = result.metric
    sense = "higher" if result.higher_is_better else "lower"
    table = Table(
        title=f"{metric} vs baseline ({sense} is better, tolerance ±{result.tolerance:.0%})"
    )
    ratio = "ratio" if result.machine_factor is None else "ratio ÷ machine"
    for col in ("config", "baseline", "current", ratio, "verdict", "note"):
        table.add_column(
            col,
            justify="left" if col in ("config", "verdict", "note") else "right",
            no_wrap=col != "note",
        )
    for r in result.rows:
        note = r.note
        if r.remeasured and r.first_current is not None:
            note = f"re-measured (first {_fmt(metric, r.first_current)})" + (
                f"; {note}" if note else ""
            )
        elif r.remeasured:
            note = f"re-measured; {note}" if note else "re-measured"
        style = STYLE.get(r.verdict, "yellow")
        table.add_row(
            r.label,
            _fmt(metric, r.baseline),
            _fmt(metric, r.current),
            "-" if r.ratio is None else f"{r.ratio:.3f}",
            f"[{style}]{r.verdict}[/]",
            note,
        )
    out_console.print(table)
    for note in result.notes:
        out_console.print(f"[yellow]note:[/] {note}")
    counts = {
        v: len(result.with_verdict(v))
        for v in (
            "ok",
            "REGRESSED",
            "FAILED",
            "improved",
            "missing in current",
            "missing in baseline",
        )
    }
    out_console.print(", ".join(f"{n} {v}" for v, n in counts.items() if n))
    if counts["improved"]:
        out_console.print(
            f"[cyan]{counts['improved']} run(s) improved beyond tolerance; if "
            "that is expected, refresh the baseline: scaling check --baseline "
            f"{baseline} --current DIR --update-baseline[/]"
        )
    if not result.passed:
        out_console.print("[bold red]throughput regression[/]")
