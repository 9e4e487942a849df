"""`scaling presets`: the model presets (CPU ladder, GPT-3 ladder, published architectures) as a
table or JSON."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from scaling.cli.common import out_console, print_json
from scaling.config import ModelConfig
from scaling.estimate import param_counts
from scaling.presets import PRESETS


def architecture(cfg: ModelConfig) -> str:
    """A short summary of the architecture fields, e.g. ``rms · rope · swiglu · gqa 32/8``."""
    norm = {"rms": "rms", "layer": "ln"}[cfg.norm] + ("+b" if cfg.norm_bias else "")
    norm += "(1+w)" if cfg.norm_unit_offset else ""
    parts = [norm, cfg.positions, cfg.ffn]
    if cfg.kv_heads != cfg.n_heads:
        parts.append(f"{'mqa' if cfg.kv_heads == 1 else 'gqa'} {cfg.n_heads}/{cfg.kv_heads}")
    if cfg.qkv_bias or cfg.attn_out_bias or cfg.ffn_bias:
        parts.append("biases")
    if cfg.sliding_window is not None:
        parts.append(f"window {cfg.sliding_window}")
    if cfg.embed_scale:
        parts.append("×√d")
    return " · ".join(parts)


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
                "n_kv_heads": cfg.kv_heads,
                "d_head": cfg.d_head,
                "d_ff": cfg.d_ff,
                "vocab_size": cfg.vocab_size,
                "max_seq_len": cfg.max_seq_len,
                "tied_embeddings": cfg.tied_embeddings,
                "norm": cfg.norm,
                "positions": cfg.positions,
                "ffn": cfg.ffn,
                "sliding_window": cfg.sliding_window,
                "architecture": architecture(cfg),
                "n_params": counts.total,
                "n_params_non_embedding": counts.non_embedding,
            }
        )
    return rows


def human_count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def presets(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the model presets: CPU ladder, GPT-3 ladder, and published architectures (GPT-2,
    Llama, OpenLLaMA, Mistral, Gemma) with Hugging Face's exact parameter counts."""
    rows = preset_rows()
    if json_:
        print_json(rows)
        return
    table = Table(
        title="Model presets (GPT-3 ladder: Brown et al. 2020, table 2.1; published "
        "architectures as their Hugging Face config.json)"
    )
    columns = ("name", "family", "layers", "d_model", "heads", "d_ff", "vocab", "context",
               "architecture", "params", "non-embedding")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("name", "architecture") else "right")
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
            r["architecture"],
            human_count(r["n_params"]),
            human_count(r["n_params_non_embedding"]),
        )
    out_console.print(table)
