"""Decode benchmark figures (``scaling bench-decode`` rows): decode tokens/s against batch,
measured beside the inference roofline, and per-token latency against context length."""

from __future__ import annotations

import pandas as pd

from scaling.report.axes import FigureResult, log_axis, new_figure, spans_decades
from scaling.report.record import Record
from scaling.report.style import Style

_KEYS = ["source", "size", "mode", "mesh", "dtype", "prompt_len", "gen_len"]
_DATA_COLUMNS = [
    *_KEYS, "batch", "ttft_s", "decode_step_s_median", "decode_step_s_p90",
    "decode_tokens_per_s", "predicted_decode_tokens_per_s", "predicted_bound",
    "kv_cache_bytes_per_device",
]  # fmt: skip


def _ok(rec: Record) -> pd.DataFrame:
    if rec.decode is None or rec.decode.empty:
        return pd.DataFrame()
    rows = rec.decode[rec.decode["status"] == "ok"].copy()
    for col in ("batch", "decode_tokens_per_s", "predicted_decode_tokens_per_s",
                "decode_step_s_median", "decode_step_s_p90", "prompt_len", "gen_len"):  # fmt: skip
        rows[col] = pd.to_numeric(rows[col], errors="coerce")
    return rows


def fig_decode_throughput(rec: Record, style: Style) -> FigureResult | None:
    """Decode tokens/s (all rows) against batch per configuration: measured (solid, markers)
    and the roofline (dashed)."""
    rows = _ok(rec)
    if rows.empty:
        return None
    fig, axes = new_figure(13, 4.8, ncols=2)
    ax, lat = axes
    for (_source, size, mode, mesh, dtype, p, g), group in rows.groupby(_KEYS, sort=False):
        group = group.sort_values("batch")
        label = f"{size} · {mode} {mesh} · {dtype} · {int(p)}+{int(g)}"
        line = ax.plot(group["batch"], group["decode_tokens_per_s"], "o-", label=label)[0]
        ax.plot(group["batch"], group["predicted_decode_tokens_per_s"], "--",
                color=line.get_color(), alpha=0.7)  # fmt: skip
    log_axis(ax, "x", rows["batch"])
    if spans_decades(pd.concat([rows["decode_tokens_per_s"],
                                rows["predicted_decode_tokens_per_s"]]), 30):  # fmt: skip
        log_axis(ax, "y")
    ax.set(xlabel="batch (rows decoded together)", ylabel="decode tokens/s (all rows)",
           title="Decode throughput: measured (solid) vs roofline (dashed)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    rows["context"] = rows["prompt_len"] + rows["gen_len"]
    for (size, batch), group in rows.groupby(["size", "batch"], sort=False):
        group = group.sort_values("context")
        lat.errorbar(group["context"], group["decode_step_s_median"] * 1e3,
                     yerr=[0 * group["context"],
                           (group["decode_step_s_p90"] - group["decode_step_s_median"]) * 1e3],
                     fmt="o-", capsize=3, label=f"{size} · batch {int(batch)}")  # fmt: skip
    lat.set(xlabel="context (prompt + generated slots)", ylabel="ms per token (median; bar: p90)",
            title="Per-token decode latency vs context length")  # fmt: skip
    lat.grid(alpha=0.3)
    lat.legend(fontsize=7)
    hardware = rows["hardware_source"].dropna().astype(str)
    caption = (
        "Measured: batch ÷ median per-token latency over every timed decode step (compile and "
        "one warm-up generation excluded, each token read back before the next). Roofline "
        "(scaling.estimate.inference): each step reads every weight and the whole "
        "preallocated cache once; latency = max(FLOPs ÷ peak, bytes ÷ bandwidth). "
        + (f"Hardware: {hardware.iloc[0]}." if len(hardware) else "")
    )
    data = rows[_DATA_COLUMNS].assign(
        measured_over_roofline=rows["decode_tokens_per_s"] / rows["predicted_decode_tokens_per_s"]
    )
    return FigureResult("decode", "Decode throughput and latency", caption, fig, data)
