"""`scaling convert ...`: Hugging Face folders ↔ Orbax checkpoints of the shared model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scaling.cli.common import out_console, print_json, user_errors

app = typer.Typer(help="Import and export Hugging Face weights.", no_args_is_help=True)
Opt = typer.Option
DTYPE_HELP = "Stored parameter dtype: float32 | bfloat16 (runs compute in float32 params)."


def _check_dtype(dtype: str) -> None:
    from scaling.hf_weights import NUMPY_DTYPES

    if dtype not in NUMPY_DTYPES:
        raise ValueError(f"unknown --dtype {dtype!r}; valid: {', '.join(NUMPY_DTYPES)}")


def _summary(verb: str, result) -> str:
    gib = result.peak_rss_bytes / 2**30
    return (
        f"{verb} {result.model.name} ({result.model.family}, {result.n_params:,} parameters) → "
        f"{result.out} in {result.seconds:.1f} s; peak host memory {gib:.2f} GiB"
    )


@app.command("from-hf")
def from_hf(
    hf_dir: Annotated[
        str | None, typer.Argument(help="A Hugging Face folder: config.json + safetensors.")
    ] = None,
    out: Annotated[Path, Opt(help="New checkpoint directory.")] = Path("checkpoints/imported"),
    hf_repo: Annotated[
        str | None, Opt(help="ORG/NAME from the hub cache (needs huggingface_hub).")
    ] = None,
    dtype: Annotated[str, Opt(help=DTYPE_HELP)] = "float32",
    name: Annotated[str | None, Opt(help="Model name (default: the folder's name).")] = None,
    json_: Annotated[bool, Opt("--json", help="Last stdout line: JSON summary.")] = False,
) -> None:
    """Import HF_DIR (gpt2, llama, mistral, gemma) as an Orbax checkpoint for `train --init`."""
    from scaling import convert

    with user_errors():
        _check_dtype(dtype)
        folder = convert.resolve_hf_dir(hf_dir, hf_repo)
        result = convert.from_hf(folder, out, dtype=dtype, name=name)
    if json_:
        print_json(result.to_dict())
    else:
        out_console.print(_summary("imported", result), highlight=False, soft_wrap=True)


@app.command("to-hf")
def to_hf(
    checkpoint: Annotated[Path, typer.Argument(help="A converted or training checkpoint.")],
    out: Annotated[Path, Opt(help="New Hugging Face folder.")] = Path("hf-export"),
    dtype: Annotated[str, Opt(help="Tensor dtype written: float32 | bfloat16.")] = "float32",
    max_shard_gb: Annotated[float, Opt(help="Largest safetensors file (GiB).")] = 5.0,
    json_: Annotated[bool, Opt("--json", help="Last stdout line: JSON summary.")] = False,
) -> None:
    """Write CHECKPOINT as a folder `transformers` loads (config.json + safetensors)."""
    from scaling import convert

    with user_errors():
        _check_dtype(dtype)
        if max_shard_gb <= 0:
            raise ValueError(f"--max-shard-gb must be positive, got {max_shard_gb}")
        result = convert.to_hf(
            checkpoint, out, dtype=dtype, max_shard_bytes=int(max_shard_gb * 2**30)
        )
    if json_:
        print_json(result.to_dict())
    else:
        out_console.print(_summary("exported", result), highlight=False, soft_wrap=True)
