"""The report's tables (runs, failures, environment, the fit), as strings ready for a page."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scaling.laws.compute import ScalingFit
from scaling.report.axes import mib
from scaling.report.record import Record


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


def fmt(value: float, spec: str) -> str:
    """``value`` in ``spec``, or "-" when it is missing or not finite."""
    return spec.format(value) if isinstance(value, int | float) and np.isfinite(value) else "-"


def summary_table(rec: Record) -> Table:
    lr_varies = rec.runs["lr"].nunique() > 1
    has_val = bool(np.isfinite(rec.runs["final_val_loss"].astype(float)).any())
    cols = [
        "size",
        "mode",
        "mesh",
        "muP",
        *(["lr"] if lr_varies else []),
        "status",
        "step time (s)",
        "roofline (s)",
        "step ÷ roofline",
        "tokens/s",
        "MFU",
        "peak mem (MiB)",
        "est. mem (MiB)",
        "mem ÷ est.",
        "final loss (nats)",
        *(["val loss (nats)", "val bits/byte"] if has_val else []),
    ]
    multi = rec.runs["source"].nunique() > 1
    if multi:
        cols.insert(0, "record")
    rows = []
    for _, r in rec.runs.iterrows():
        ok = r["status"] == "ok"
        v = (lambda x: x) if ok else (lambda x: math.nan)  # noqa: E731
        row = [
            r["size"],
            r["mode"],
            r["mesh"],
            "on" if r["mup"] else "off",
            *([f"{r['lr']:g}"] if lr_varies else []),
            r["status"],
            fmt(v(r["step_time_s_median"]), "{:.4g}"),
            fmt(v(r["predicted_step_s"]), "{:.3g}"),
            fmt(v(r["step_time_s_median"] / r["predicted_step_s"]), "{:.2f}"),
            fmt(v(r["tokens_per_s"]), "{:,.0f}"),
            fmt(v(r["mfu"] * 100), "{:.1f} %"),
            fmt(v(mib(r["peak_memory_bytes"])), "{:,.1f}"),
            fmt(mib(r["est_memory_bytes"]), "{:,.1f}"),
            fmt(v(r["peak_memory_bytes"] / r["est_memory_bytes"]), "{:.2f}"),
            fmt(v(r["final_loss"]), "{:.4f}"),
            *(
                [fmt(v(r["final_val_loss"]), "{:.4f}"), fmt(v(r["final_val_bpb"]), "{:.3f}")]
                if has_val
                else []
            ),
        ]
        rows.append(([r["source"]] if multi else []) + row)
    return Table(
        "Runs",
        cols,
        rows,
        "Step time: median over the timed steps (after warm-up); "
        "memory per device; ratios are measured ÷ predicted.",
    )


def failed_table(rec: Record) -> Table | None:
    failed = rec.runs[rec.runs["status"] != "ok"]
    if failed.empty:
        return None
    rows = []
    for _, r in failed.iterrows():
        error = " ".join(str(r["error"]).split()) or "(no message)"
        if len(error) > 600:
            error = error[:600] + " …"
        rows.append([r["label"], r["run_id"], r["status"], error])
    return Table("Failed runs", ["run", "run_id", "status", "error"], rows)


_ENVIRONMENT_COLUMNS = {  # run column: page heading
    "source": "record",
    "device_kind": "device",
    "platform": "platform",
    "n_devices": "devices",
    "n_processes": "processes",
    "jax_version": "jax",
    "flax_version": "flax",
    "host_allocator": "host malloc",
    "git_sha": "git",
    "hostname": "host",
    "peak_source": "peak FLOP/s source",
}


# A CPU probe's source names its own measured median ("median 33.0 GFLOP/s of 9"); the value has
# its own column, so runs of one environment group into one row.
_MEASURED_PEAK = re.compile(r"median [0-9.]+ [kMGTP]?FLOP/s of \d+")


def environment_table(rec: Record) -> Table:
    cols = list(_ENVIRONMENT_COLUMNS)
    env = rec.runs.copy()
    env[cols] = env[cols].astype(str)
    env["peak_source"] = env["peak_source"].str.replace(
        _MEASURED_PEAK, "median per run", regex=True
    )
    env["peak"] = pd.to_numeric(env.get("peak_flops_per_device", math.nan), errors="coerce")
    groups = (
        env.groupby(cols, sort=False, dropna=False)
        .agg(
            runs=("run_id", "size"),
            first=("started_at", "min"),
            last=("started_at", "max"),
            peak_min=("peak", "min"),
            peak_max=("peak", "max"),
        )
        .reset_index()
    )
    rows = [
        [
            *(str(r[c]) for c in cols),
            _peak_range(r["peak_min"], r["peak_max"]),
            str(r["runs"]),
            f"{r['first']} … {r['last']}" if r["first"] != r["last"] else str(r["first"]),
        ]
        for _, r in groups.iterrows()
    ]
    names = [*_ENVIRONMENT_COLUMNS.values(), "peak GFLOP/s per device", "runs", "started (UTC)"]
    return Table("Environment", names, rows)


def _peak_range(low: float, high: float) -> str:
    if not math.isfinite(low):
        return "-"
    if math.isclose(low, high, rel_tol=5e-3):
        return f"{low / 1e9:,.1f}"
    return f"{low / 1e9:,.1f} – {high / 1e9:,.1f}"


def fit_table(fit: ScalingFit) -> Table:
    rows = [
        ["E (nats)", f"{fit.E:.5g}", fmt(fit.E_se, "{:.3g}")],
        ["A", f"{fit.A:.5g}", fmt(fit.A_se, "{:.3g}")],
        ["α", f"{fit.alpha:.5g}", fmt(fit.alpha_se, "{:.3g}")],
    ]
    return Table(
        "Scaling-law fit L(C) = E + A·C^(−α)",
        ["parameter", "value", "std. error"],
        rows,
        f"{fit.n_points} points, {fit.method}, RMS residual of log L {fit.rmse_log:.3g}.",
    )


def decode_table(rec: Record) -> Table | None:
    """The decode benchmark's rows (``scaling bench-decode``): measured beside the roofline."""
    if rec.decode is None or rec.decode.empty:
        return None
    rows = []
    for r in rec.decode.sort_values(["size", "mode", "batch", "prompt_len"]).itertuples():
        ok = r.status == "ok"
        ratio = r.decode_tokens_per_s / r.predicted_decode_tokens_per_s if ok else math.nan
        rows.append(
            [r.size, r.mode, r.mesh, str(r.batch), f"{r.prompt_len}+{r.gen_len}", r.dtype,
             r.status, fmt(r.ttft_s * 1e3, "{:.1f}"),
             f"{fmt(r.decode_step_s_median * 1e3, '{:.2f}')} · "
             f"{fmt(r.decode_step_s_p90 * 1e3, '{:.2f}')}",
             fmt(r.decode_tokens_per_s, "{:,.0f}"),
             fmt(r.predicted_decode_tokens_per_s, "{:,.0f}"), fmt(ratio, "{:.2f}"),
             str(r.predicted_bound), fmt(r.kv_cache_bytes_per_device / 1e6, "{:.2f}")]
        )  # fmt: skip
    columns = ["size", "mode", "mesh", "batch", "prompt+gen", "dtype", "status", "TTFT (ms)",
               "ms/token (p50 · p90)", "tokens/s", "roofline tokens/s", "measured ÷ roofline",
               "bound", "KV MB/device"]  # fmt: skip
    env = rec.decode.iloc[0]
    note = (
        f"Device {env.device_kind} ({env.platform}), jax {env.jax_version}, flax "
        f"{env.flax_version}, git {env.git_sha}, host {env.hostname}. {env.hardware_source}."
    )
    return Table("Decode benchmark", columns, rows, note)
