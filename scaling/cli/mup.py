"""`scaling mup ...`: muP validation tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from scaling.cli.common import out_console, print_json, split_list, user_errors

app = typer.Typer(
    help="muP: coord check (LR transfer runs through `scaling sweep`).", no_args_is_help=True
)
Opt = typer.Option


@app.command("coord-check")
def coord_check(
    widths: Annotated[str, Opt(help="Comma list of d_model values.")] = "64,128,256,512,1024",
    steps: Annotated[int, Opt(help="Adam steps per width.")] = 5,
    lr: Annotated[float, Opt(help="Learning rate (same for every width).")] = 1e-2,
    n_layers: Annotated[int, Opt(help="Layers of the probe model.")] = 2,
    seed: Annotated[int, Opt(help="Seed for init and data.")] = 0,
    out: Annotated[Path, Opt(help="Directory for coord_check.parquet and the plot.")] = Path(
        "runs/coord-check"
    ),
    json_: Annotated[bool, Opt("--json", help="Last stdout line: JSON rows.")] = False,
) -> None:
    """Activation RMS vs width under SP and muP: flat under muP, growing under SP."""
    from scaling.records import write_coord_check

    with user_errors():
        width_list = [_positive_int(w) for w in split_list(widths)]
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        from scaling.coord_check import coord_check as run_coord_check

        rows = run_coord_check(width_list, steps=steps, lr=lr, n_layers=n_layers, seed=seed)
    path = write_coord_check(out, rows)
    figure = _plot(out)
    if json_:
        print_json(rows)
        return
    out_console.print(logits_table(rows, steps))
    out_console.print(f"wrote {path}" + (f" and {figure}" if figure else ""))


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"bad width {text!r}; expected positive integers, e.g. 64,128,256")
    return int(text)


def _plot(out: Path):
    from scaling.report import coord_check_figure

    return coord_check_figure(out)


def logits_table(rows: list[dict], step: int) -> Table:
    table = Table(title=f"coord check: logits RMS after {step} steps (÷ the smallest width)")
    widths = sorted({r["width"] for r in rows})
    table.add_column("parametrization")
    for w in widths:
        table.add_column(str(w), justify="right")
    for mup in (False, True):
        values = {
            r["width"]: r["rms"]
            for r in rows
            if r["mup"] == mup and r["step"] == step and r["site"] == "logits"
        }
        if values:
            base = values[widths[0]]
            table.add_row(
                "muP" if mup else "SP",
                *[f"{values[w]:.3g} ({values[w] / base:.2f}×)" for w in widths],
            )
    return table
