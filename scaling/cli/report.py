"""`scaling report`: figures and html/md pages from one or more sweep records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scaling.cli.common import err_console, out_console, split_list, user_errors

Opt = typer.Option


def report(
    dirs: Annotated[
        list[Path], typer.Argument(help="Sweep record directories (each with runs/ and steps/).")
    ],
    out: Annotated[
        Path | None, Opt(help="Output folder (default: reports/<first DIR's name>).")
    ] = None,
    format_: Annotated[str, Opt("--format", help="Pages to write: html, md or html,md.")] = (
        "html,md"
    ),
    baseline: Annotated[
        Path | None,
        Opt(help="A baseline record: tokens/s and MFU ratios per matched configuration."),
    ] = None,
    calibrate_on: Annotated[
        str | None,
        Opt(
            help="Sizes to calibrate the roofline on (e.g. tiny,10m,30m); the others are "
            "predicted as held-out runs."
        ),
    ] = None,  # fmt: skip
) -> None:
    """Render figures (PNG + the CSV of each figure's data) and index.html / report.md from
    stored sweep records; reads only the parquet, never re-runs anything."""
    from scaling.report import build_report

    with user_errors():
        sizes = split_list(calibrate_on) if calibrate_on else None
        result = build_report(dirs, out=out, formats=format_, baseline=baseline, calibrate_on=sizes)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    pages = [p for p in result.files if p.suffix in (".html", ".md")]
    out_console.print(
        f"{len(result.figures)} figures ({', '.join(f.name for f in result.figures)})"
        f" → {result.out}/",
        highlight=False,
        soft_wrap=True,
    )
    for page in pages:
        out_console.print(f"  {page}", highlight=False, soft_wrap=True)
