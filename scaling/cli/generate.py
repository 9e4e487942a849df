"""`scaling generate`: continue a prompt with a checkpoint's model (or a preset's at random
init) using the KV-cache decoder; prints the continuations and tokens/s."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scaling.cli.common import err_console, out_console, print_json, split_list, user_errors

Opt = typer.Option


def parse_ids(text: str) -> list[int]:
    """``"1,2,3"`` → ``[1, 2, 3]``; ``ValueError`` naming the bad item."""
    ids = []
    for item in split_list(text):
        try:
            ids.append(int(item))
        except ValueError:
            raise ValueError(f"--prompt-ids: {item!r} is not an integer; give e.g. 1,2,3") from None
    if not ids:
        raise ValueError("--prompt-ids is empty; give e.g. 1,2,3")
    return ids


def _prompt_text(prompt: str | None, prompt_file: str | None) -> str | None:
    if prompt is not None and prompt_file is not None:
        raise ValueError("give one of --prompt, --prompt-file and --prompt-ids")
    if prompt_file is not None:
        return Path(prompt_file).read_text(encoding="utf-8")
    return prompt


def generate(
    checkpoint: Annotated[
        str | None, Opt(help="Checkpoint directory (train --checkpoint-dir).")
    ] = (None),
    size: Annotated[str | None, Opt(help="A preset at random init instead of a checkpoint.")] = (
        None
    ),
    prompt: Annotated[str | None, Opt(help="Prompt text (needs the checkpoint's tokenizer).")] = (
        None
    ),
    prompt_file: Annotated[str | None, Opt(help="Read the prompt text from this file.")] = None,
    prompt_ids: Annotated[str | None, Opt(help="Prompt as token ids, e.g. 1,2,3.")] = None,
    max_new_tokens: Annotated[int, Opt(help="Tokens to generate per row.")] = 32,
    temperature: Annotated[float, Opt(help="0: greedy; else sample at this temperature.")] = 0.0,
    top_k: Annotated[int | None, Opt(help="Sample among the K most likely tokens.")] = None,
    top_p: Annotated[float | None, Opt(help="Sample within probability mass P, in (0, 1].")] = (
        None
    ),
    batch: Annotated[int, Opt(help="Continuations of the prompt, decoded as one batch.")] = 1,
    seed: Annotated[int, Opt(help="Sampling seed (and init seed with --size).")] = 0,
    step: Annotated[int | None, Opt(help="Checkpoint step (default: the latest).")] = None,
    mode: Annotated[str, Opt(help="Sharding: none | dp | fsdp | tp | fsdp_tp.")] = "none",
    mesh: Annotated[str | None, Opt(help="Mesh DxT (default: per mode).")] = None,
    devices: Annotated[int | None, Opt(help="Simulate N CPU devices.")] = None,
    json_: Annotated[bool, Opt("--json", help="Last stdout line: a JSON result.")] = False,
) -> None:
    """Continue a prompt (default: a document start) by --max-new-tokens tokens, greedy or
    sampled (temperature, top-k, top-p), with a KV cache compiled once per shape."""
    from scaling import parallel
    from scaling.config import parse_mesh
    from scaling.decode_run import load, run_generation
    from scaling.decode_run import prompt_ids as to_ids
    from scaling.generate import Sampling

    with user_errors():
        sampling = Sampling(temperature, top_k, top_p)
        if batch < 1 or max_new_tokens < 1:
            raise ValueError(f"--batch and --max-new-tokens must be >= 1, got {batch}, "
                             f"{max_new_tokens}")  # fmt: skip
        text = _prompt_text(prompt, prompt_file)
        if text is not None and prompt_ids is not None:
            raise ValueError("give one of --prompt, --prompt-file and --prompt-ids")
        ids = parse_ids(prompt_ids) if prompt_ids is not None else None
        if devices is not None:
            parallel.set_cpu_devices(devices)
        loaded = load(checkpoint=checkpoint, size=size, step=step, seed=seed, mode=mode,
                      mesh=parse_mesh(mesh) if mesh else None, batch=batch)  # fmt: skip
        result = run_generation(
            loaded,
            to_ids(loaded, text, ids),
            batch=batch,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            seed=seed,
        )
    if json_:
        print_json(result)
        return
    _render(result)


def _render(result: dict) -> None:
    rows = result["texts"] or [" ".join(map(str, row)) for row in result["tokens"]]
    for i, row in enumerate(rows):
        prefix = f"[{i}] " if len(rows) > 1 else ""
        out_console.print(prefix + row, highlight=False, markup=False, soft_wrap=True)
    step = result["decode_step_median_s"]
    decode = result["decode_tokens_per_s"]
    err_console.print(
        f"{result['model']} · {result['source']} · batch {result['batch']}: "
        f"prefill (time to first token) {result['prefill_s'] * 1e3:.1f} ms"
        + (f" · decode {step * 1e3:.2f} ms/token, {decode:,.0f} tokens/s" if step else "")
        + f" · {result['tokens_per_s']:,.0f} tokens/s overall "
        f"(compile {result['compile_s']:.1f} s, not timed)",
        highlight=False,
    )
