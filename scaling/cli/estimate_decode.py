"""`scaling estimate --task decode`: the inference roofline (``scaling.estimate.inference``)
per size: KV cache per device, prefill FLOPs and time, decode per-token latency and tokens/s,
the bound and the batch where decode turns compute-bound."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from scaling.config import RunConfig


def decode_rows(runs: list[RunConfig], hardware, *, prompt_len: int, gen_len: int) -> list[dict]:
    from scaling.estimate.inference import decode_estimate

    rows = []
    for run in runs:
        est = decode_estimate(run.model, hardware, batch=run.batch, prompt_len=prompt_len,
                              gen_len=gen_len, mode=run.mode, mesh=run.mesh)  # fmt: skip
        rows.append({"size": run.model.name, **est.to_dict(), "hardware_source": hardware.source})
    return rows


def _rows(si, seconds) -> list[tuple[str, Any]]:
    crossover = "compute_bound_batch"
    return [
        ("batch · prompt + generated",
         lambda r: f"{r['batch']} · {r['prompt_len']} + {r['gen_len']}"),
        ("KV cache / device", lambda r: si(r["kv_cache_bytes_per_device"], "B")),
        ("weights read / step / device", lambda r: si(r["weight_bytes_per_step"], "B")),
        ("prefill FLOPs (all devices)", lambda r: si(r["prefill_flops_global"], "FLOP")),
        ("prefill time (time to first token)", lambda r: seconds(r["prefill_s"])),
        ("decode FLOPs / step / device", lambda r: si(r["decode_flops_per_step"], "FLOP")),
        ("decode bytes / step / device", lambda r: si(r["decode_bytes_per_step"], "B")),
        ("decode latency / token", lambda r: seconds(r["decode_step_s"])),
        ("decode tokens/s (all rows)", lambda r: f"{r['decode_tokens_per_s']:,.0f}"),
        ("bound", lambda r: r["decode_bound"]),
        ("compute-bound from batch",
         lambda r: "never (KV reads grow with batch)" if r[crossover] is None
         else f"{r[crossover]:,.1f}"),
    ]  # fmt: skip


def render_decode(rows: list[dict], *, si, seconds) -> Table:
    """The table; ``si`` and ``seconds`` format numbers as `scaling estimate` does."""
    first = rows[0]
    mesh = "x".join(str(a) for a in first["mesh"])
    table = Table(
        title=f"Decode estimate · mode {first['mode']} · mesh {mesh} · {first['dtype']} · "
        f"{first['hardware']}"
    )
    table.add_column("per generation", justify="left")
    for row in rows:
        table.add_column(row["size"], justify="right")
    for label, cell in _rows(si, seconds):
        table.add_row(label, *(cell(row) for row in rows))
    table.caption = (
        "Roofline: each decode step reads every weight (float32) and the whole preallocated "
        "cache (prompt + generated slots) once; latency = max(FLOPs / peak, bytes / bandwidth). "
        f"Peak {si(first['peak_flops_per_s'])}FLOP/s, bandwidth "
        f"{si(first['bandwidth_bytes_per_s'])}B/s per device; source: {first['hardware_source']}."
    )
    return table
