"""``build_report``: load the records, draw every figure of the registry that has data, write
PNG + CSV per figure and the html/md pages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from scaling import records
from scaling.report.axes import FigureResult
from scaling.report.baseline import fig_baseline, ratio_table, unmatched_table
from scaling.report.calibration import calibration_results
from scaling.report.decode import fig_decode_throughput
from scaling.report.laws import (
    fig_heldout,
    fig_isoflop,
    fig_loss_contours,
    fig_optimal_scaling,
    laws_table,
)
from scaling.report.loss import fig_loss_vs_compute, fig_loss_vs_step, fig_val_loss
from scaling.report.mup import fig_coord_check, fig_mup_lr, transfer_table
from scaling.report.pages import Report, render_html, render_markdown
from scaling.report.performance import fig_compile_time, fig_throughput
from scaling.report.predicted import fig_memory_vs_estimate, fig_step_time_vs_roofline
from scaling.report.profile import fig_step_breakdown
from scaling.report.record import Record, load_record, size_order
from scaling.report.scaling_law import fig_scaling_law, scaling_fit_of
from scaling.report.style import Style
from scaling.report.tables import (
    Table,
    decode_table,
    environment_table,
    failed_table,
    fit_table,
    summary_table,
)

FORMATS = ("html", "md")

# The figures of a report, in page order: each takes the record and the style and returns a
# FigureResult, or None when the record lacks its data.
FIGURES = (
    fig_loss_vs_step,
    fig_val_loss,
    fig_loss_vs_compute,
    fig_throughput,
    fig_step_time_vs_roofline,
    fig_memory_vs_estimate,
    fig_compile_time,
    fig_decode_throughput,
    fig_step_breakdown,
    fig_scaling_law,
    fig_isoflop,
    fig_optimal_scaling,
    fig_loss_contours,
    fig_heldout,
    fig_mup_lr,
    fig_coord_check,
)


def default_out(first_dir: str | Path) -> Path:
    return Path("reports") / (Path(first_dir).resolve().name or "report")


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
    parts = [p for p in parts if p]
    bad = [p for p in parts if p not in FORMATS]
    if bad or not parts:
        raise ValueError(f"bad --format {','.join(bad) or text!r}; valid: {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(parts))


def build_report(
    dirs: Sequence[str | Path],
    out: str | Path | None = None,
    formats: Sequence[str] = FORMATS,
    baseline: str | Path | None = None,
    calibrate_on: Sequence[str] | None = None,
) -> Report:
    """Load the records, draw every figure they have data for, write PNG + CSV per figure and
    the html/md pages. Raises ValueError on a missing, empty or foreign folder."""
    formats = parse_formats(formats)
    rec = load_record(*dirs)
    base = load_record(baseline) if baseline is not None else None
    out = Path(out) if out is not None else default_out(dirs[0])
    all_runs = rec.runs if base is None else pd.concat([rec.runs, base.runs])
    style = Style.of(all_runs["mode"], size_order(all_runs), all_runs)
    notes = list(rec.notes)
    figures = [f for f in (fn(rec, style) for fn in FIGURES) if f is not None]
    training = not rec.runs.empty  # else a decode-only record (scaling bench-decode)
    fit, fit_note = scaling_fit_of(rec) if training else (None, "")
    if fit_note:
        notes.append(fit_note)
    tables = [summary_table(rec)] if training else []
    if fit is not None:
        tables.append(fit_table(fit))
    laws = laws_table(rec)
    if laws is not None:
        tables.append(laws)
    transfer = transfer_table(rec)
    if transfer is not None:
        tables.append(transfer)
    if base is not None:
        baseline_figures, baseline_tables, baseline_notes = _against_baseline(
            rec, base, baseline, style
        )
        figures += baseline_figures
        tables += baseline_tables
        notes += baseline_notes
    if calibrate_on:
        figure, table = calibration_results(rec, style, calibrate_on)
        figures.append(figure)
        tables.append(table)
    decode = decode_table(rec)
    if decode is not None:
        tables.append(decode)
    failed = failed_table(rec)
    if failed is not None:
        tables.append(failed)
    if training:
        tables.append(environment_table(rec))
    if not any(f.name == "mup_lr" for f in figures) and rec.runs["mup"].any():
        notes.append("muP runs are recorded but lack d_model or final losses; no LR figure.")
    report = Report(out, figures, tables, notes, _write_figures(figures, out), rec, fit)
    _write_pages(report, formats, "Sweep report: " + ", ".join(str(d) for d in dirs), baseline)
    return report


def _against_baseline(
    rec: Record, base: Record, baseline, style: Style
) -> tuple[list[FigureResult], list[Table], list[str]]:
    """The baseline figure and its tables, or a note that nothing matches."""
    figures, tables, notes = [], [], list(base.notes)
    figure = fig_baseline(rec, base, style)
    if figure is None:
        notes.append(f"Baseline {baseline}: no configuration matches this record's ok runs.")
    else:
        figures.append(figure)
        tables.append(ratio_table(figure, baseline))
    unmatched = unmatched_table(rec, base)
    if unmatched is not None:
        tables.append(unmatched)
    return figures, tables, notes


def _write_figures(figures, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [path for f in figures for path in f.write(out)]


_PAGES = {"html": ("index.html", render_html), "md": ("report.md", render_markdown)}


def _write_pages(report: Report, formats, title: str, baseline) -> None:
    for page_format in FORMATS:
        if page_format not in formats:
            continue
        name, render = _PAGES[page_format]
        path = report.out / name
        # records.write_text_atomic would use the locale's encoding; the pages are UTF-8
        with records.atomic_path(path) as tmp:
            tmp.write_text(render(report, title, base_dir=baseline), encoding="utf-8")
        report.files.append(path)
