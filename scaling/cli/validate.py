"""`scaling validate`: the shared model against Hugging Face `transformers`, layer by layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from scaling.cli.common import out_console, print_json, user_errors

Opt = typer.Option


def validate(
    hf_dir: Annotated[
        str | None, typer.Argument(help="A Hugging Face folder: config.json + safetensors.")
    ] = None,
    hf_repo: Annotated[
        str | None, Opt(help="ORG/NAME from the hub cache (needs huggingface_hub).")
    ] = None,
    checkpoint: Annotated[
        Path | None, Opt(help="Compare these weights (a converted checkpoint) instead.")
    ] = None,
    batch: Annotated[int, Opt(help="Sequences of random tokens.")] = 2,
    seq: Annotated[int, Opt(help="Tokens per sequence.")] = 32,
    seed: Annotated[int, Opt(help="Seed of the random tokens.")] = 0,
    json_: Annotated[bool, Opt("--json", help="Last stdout line: JSON report.")] = False,
) -> None:
    """Run HF_DIR in transformers and in the shared model on the same tokens (float32); print
    per-layer and logits differences. Exit 0 when the logits agree within 1e-4 of their
    scale, 1 when not, 2 on bad input or without torch/transformers."""
    from scaling import convert
    from scaling.validate import compare_with_hf

    with user_errors():
        folder = convert.resolve_hf_dir(hf_dir, hf_repo)
        report = compare_with_hf(folder, checkpoint=checkpoint, batch=batch, seq=seq, seed=seed)
    if json_:
        print_json(report.to_dict())
    else:
        out_console.print(render(report))
    raise typer.Exit(0 if report.passed else 1)


def render(report) -> Table:
    cfg = report.model
    verdict = "[green]parity[/]" if report.passed else "[bold red]MISMATCH[/]"
    table = Table(
        title=f"{cfg.name} ({cfg.family}) vs transformers · batch {report.batch} × seq "
        f"{report.seq} · float32 · {verdict}"
    )
    for col in ("output", "max |Δ|", "max |reference|", "relative"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for row in report.rows:
        table.add_row(
            row.name,
            f"{row.max_abs_diff:.3g}",
            f"{row.reference_scale:.3g}",
            f"{row.relative:.2e}",
        )
    table.caption = f"tolerance: logits within {report.tolerance:g} × max |reference logits|"
    return table
