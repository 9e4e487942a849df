"""`scaling presets`: the model ladder as a table or JSON."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from scaling.cli.common import out_console, print_json
from scaling.estimate import param_counts
from scaling.presets import PRESETS


def preset_rows() -> list[dict]:
    rows = []
    for cfg in PRESETS.values():
        counts = param_counts(cfg)
        rows.append(
            {
                "name": cfg.name,
                "family": cfg.family,
                "n_layers": cfg.n_layers,
                "d_model": cfg.d_model,
                "n_heads": cfg.n_heads,
                "d_head": cfg.d_head,
                "d_ff": cfg.d_ff,
                "vocab_size": cfg.vocab_size,
                "max_seq_len": cfg.max_seq_len,
                "tied_embeddings": cfg.tied_embeddings,
                "n_params": counts.total,
                "n_params_non_embedding": counts.non_embedding,
            }
        )
    return rows


def human_count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def presets(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the model presets (CPU ladder and the GPT-3 ladder)."""
    rows = preset_rows()
    if json_:
        print_json(rows)
        return
    table = Table(title="Model presets (GPT-3 ladder: Brown et al. 2020, table 2.1)")
    for col in (
        "name",
        "family",
        "layers",
        "d_model",
        "heads",
        "d_ff",
        "vocab",
        "context",
        "params",
        "non-embedding",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["name"],
            r["family"],
            str(r["n_layers"]),
            str(r["d_model"]),
            str(r["n_heads"]),
            str(r["d_ff"]),
            str(r["vocab_size"]),
            str(r["max_seq_len"]),
            human_count(r["n_params"]),
            human_count(r["n_params_non_embedding"]),
        )
    out_console.print(table)
