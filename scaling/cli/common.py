"""Shared CLI plumbing: one-line errors with exit code 2, JSON output, stderr console."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator

import typer
from rich.console import Console

err_console = Console(stderr=True)
out_console = Console()


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on one line of stderr; the caller raises the returned Exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's ValueErrors (bad input) into one line and exit code 2."""
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, default=_jsonable) + "\n")
    sys.stdout.flush()


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


PEAK_HELP = {
    "peak_tflops": "Peak dense TFLOP/s per device for an accelerator without a profile "
    "(default: a bf16 matmul probe).",
    "hbm_gbps": "HBM bandwidth per device, GB/s (replaces the profile's).",
}
MUP_HELP = {
    "base_width": "muP base width: the d_model the hyperparameters were tuned at (128).",
    "base_head_dim": "muP base head width (default: the model's d_head).",
    "alpha_in": "muP α_in: embedding output multiplier (1).",
    "alpha_out": "muP α_out: logits × α_out / m (1).",
    "alpha_attn": "muP α_attn: attention logits × α_attn·√d_head_base / d_head (1).",
    "zero_readout": "muP: zero-initialise the untied head.",
}


def mup_knobs(
    base_width: int | None,
    base_head_dim: int | None,
    alpha_in: float | None,
    alpha_out: float | None,
    alpha_attn: float | None,
    zero_readout: bool | None,
) -> dict[str, object]:
    """The muP options of `train`/`sweep` as ``config.MUP_KNOBS`` values (only those given)."""
    values = (base_width, base_head_dim, alpha_in, alpha_out, alpha_attn, zero_readout)
    from scaling.config import MUP_KNOBS

    return {k: v for k, v in zip(MUP_KNOBS, values, strict=True) if v is not None}


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
