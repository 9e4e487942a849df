"""`scaling eval`: a checkpoint's loss, perplexity and bits per byte on prepared data."""

from __future__ import annotations

from typing import Annotated

import typer

from scaling.cli.common import out_console, print_json, user_errors

Opt = typer.Option


def eval_(
    checkpoint: Annotated[str, Opt(help="Checkpoint directory (train --checkpoint-dir).")],
    data: Annotated[str, Opt(help="Prepared directory (`scaling data prepare`).")],
    split: Annotated[str, Opt(help="train | val.")] = "val",
    batches: Annotated[
        int | None, Opt(help="Batches of windows (default: every full batch of the split).")
    ] = None,
    batch: Annotated[int | None, Opt(help="Windows per batch (default: the run's).")] = None,
    step: Annotated[int | None, Opt(help="Checkpoint step (default: the latest).")] = None,
    mode: Annotated[str, Opt(help="Sharding to evaluate under.")] = "none",
    mesh: Annotated[str | None, Opt(help="Mesh DxT.")] = None,
    devices: Annotated[int | None, Opt(help="Simulate N CPU devices.")] = None,
    json_: Annotated[bool, Opt("--json", help="Last stdout line: a JSON result.")] = False,
) -> None:
    """Loss (nats/token), perplexity and bits per byte of CHECKPOINT on a split of DATA, over
    non-overlapping windows of the run's sequence length."""
    from scaling import parallel
    from scaling.config import parse_mesh
    from scaling.eval_run import evaluate_checkpoint

    with user_errors():
        if batches is not None and batches < 1:
            raise ValueError(f"--batches must be >= 1, got {batches}")
        if devices is not None:
            parallel.set_cpu_devices(devices)
        result = evaluate_checkpoint(
            checkpoint,
            data,
            split=split,
            batches=batches,
            batch=batch,
            step=step,
            mode=mode,
            mesh=parse_mesh(mesh) if mesh else None,
        )
    if json_:
        print_json(result)
        return
    bpb = result["bits_per_byte"]
    out_console.print(
        f"{result['model']} step {result['step']} on {result['split']} of {result['data']}: "
        f"loss {result['loss']:.4f} nats/token · perplexity {result['perplexity']:.2f} · "
        + (f"{bpb:.4f} bits/byte · " if bpb == bpb else "")
        + f"{result['tokens']:,} tokens in {result['windows']:,} windows of {result['seq']}"
    )
