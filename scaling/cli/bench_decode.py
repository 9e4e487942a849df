"""`scaling bench-decode`: time KV-cache generation over a grid (sizes × batches × prompt
lengths) into DIR/decode (``scaling.decode_record``), with the roofline beside each row."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from scaling.cli.common import err_console, out_console, print_json, split_list, user_errors

Opt = typer.Option


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in split_list(text)]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{name} must be positive integers, got {text!r}")
    return values


def bench_decode(
    out: Annotated[str, Opt(help="Record directory (rows go to OUT/decode).")],
    sizes: Annotated[str, Opt(help="Comma-separated presets.")] = "tiny",
    batches: Annotated[str, Opt(help="Comma-separated batch sizes.")] = "1,8",
    prompt_lens: Annotated[str, Opt(help="Comma-separated prompt lengths (tokens).")] = "32",
    gen_len: Annotated[int, Opt(help="Generated tokens per row.")] = 32,
    dtype: Annotated[str, Opt(help="Compute dtype: float32 | bfloat16.")] = "float32",
    mode: Annotated[str, Opt(help="Sharding: none | dp | fsdp | tp | fsdp_tp.")] = "none",
    mesh: Annotated[str | None, Opt(help="Mesh DxT (default: per mode).")] = None,
    devices: Annotated[int | None, Opt(help="Simulate N CPU devices.")] = None,
    repeats: Annotated[int, Opt(help="Timed generations per configuration.")] = 3,
    seed: Annotated[int, Opt(help="Init and prompt seed.")] = 0,
    hbm_gbps: Annotated[
        float | None, Opt(help="Memory bandwidth GB/s for the roofline (default: measured).")
    ] = None,
    sweep_name: Annotated[str, Opt("--name", help="Name recorded with each row.")] = "decode",
    resume: Annotated[bool, Opt("--resume/--no-resume", help="Skip rows recorded ok.")] = True,
    json_: Annotated[bool, Opt("--json", help="Last stdout line: a JSON list of rows.")] = False,
) -> None:
    """Time to first token, prefill tokens/s, per-token decode latency (median, p90), decode
    tokens/s and KV-cache bytes per device, per configuration, beside the inference roofline."""
    run_decode_grid(
        out, sizes, [mode], batches, prompt_lens, gen_len, dtype=dtype, mesh=mesh,
        devices=devices, repeats=repeats, seed=seed, hbm_gbps=hbm_gbps, name=sweep_name,
        resume=resume, json_=json_,
    )  # fmt: skip


def run_decode_grid(
    out: str,
    sizes: str,
    modes: list[str],
    batches: str,
    prompt_lens: str,
    gen_len: int,
    *,
    dtype: str = "float32",
    mesh: str | None = None,
    devices: int | None = None,
    repeats: int = 3,
    seed: int = 0,
    hbm_gbps: float | None = None,
    name: str = "decode",
    resume: bool = True,
    json_: bool = False,
) -> None:
    """Validate the grid (sizes × modes × prompt lengths × batches), time it into OUT/decode
    and render it: ``bench-decode`` and ``sweep --task decode`` both end here."""
    from scaling.config import DTYPES
    from scaling.presets import get_preset

    with user_errors():
        grid_sizes = split_list(sizes)
        for size in grid_sizes:
            get_preset(size)
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
        if repeats < 1 or gen_len < 1:
            raise ValueError(f"--repeats and --gen-len must be >= 1, got {repeats}, {gen_len}")
        from scaling.config import parse_mesh

        shape = parse_mesh(mesh) if mesh else None
        grid = [
            dict(size=s, mode=m, mesh=shape, batch=b, prompt_len=p, gen_len=gen_len,
                 dtype=dtype, seed=seed, sweep=name)
            for s in grid_sizes
            for m in modes
            for p in _ints(prompt_lens, "--prompt-lens")
            for b in _ints(batches, "--batches")
        ]  # fmt: skip
        if devices is not None:
            from scaling import parallel

            parallel.set_cpu_devices(devices)
        from scaling.decode_bench import bench_decode as run

        rows = run(out, grid, repeats=repeats, hbm_gbps=hbm_gbps, resume=resume,
                   progress=lambda m: err_console.print(m, highlight=False))  # fmt: skip
    import dataclasses

    dicts = [dataclasses.asdict(r) for r in rows]
    if json_:
        print_json(dicts)
        return
    out_console.print(render(dicts))


def render(rows: list[dict]) -> Table:
    table = Table(title="Decode benchmark (measured · roofline)")
    for column in ("size", "batch", "prompt+gen", "status", "TTFT", "ms/token (p50 · p90)",
                   "tokens/s", "roofline tokens/s", "measured/roofline", "KV/device"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in rows:
        ratio = r["decode_tokens_per_s"] / r["predicted_decode_tokens_per_s"]
        table.add_row(
            r["size"], str(r["batch"]), f"{r['prompt_len']}+{r['gen_len']}", r["status"],
            f"{r['ttft_s'] * 1e3:.1f} ms",
            f"{r['decode_step_s_median'] * 1e3:.2f} · {r['decode_step_s_p90'] * 1e3:.2f}",
            f"{r['decode_tokens_per_s']:,.0f}", f"{r['predicted_decode_tokens_per_s']:,.0f}",
            f"{ratio:.2f}", f"{r['kv_cache_bytes_per_device'] / 1e6:.2f} MB",
        )  # fmt: skip
    return table
