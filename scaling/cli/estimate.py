"""`scaling estimate`: parameters, FLOPs, memory, communication and roofline step time per
size, from the closed-form estimator; ``--compile`` adds XLA's own counts of the real sharded
train step (``scaling.estimate.xla_check``). jax is imported only for ``--compile`` (or a CPU
calibration that is not cached yet)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from scaling.cli.common import (
    KERNEL_HELP,
    err_console,
    out_console,
    print_json,
    split_list,
    user_errors,
)
from scaling.config import RunConfig, parse_mesh
from scaling.estimate.xla_check import report
from scaling.presets import GPT3_CONTEXT, build_run, get_preset

Opt = typer.Option
DEFAULT_SIZES = "125m,350m,760m,1.3b"


def estimate(
    sizes: Annotated[str, Opt(help="Comma-separated presets (see `scaling presets`).")] = (
        DEFAULT_SIZES
    ),
    mode: Annotated[str, Opt(help="Sharding: none|dp|fsdp|tp|fsdp_tp, MoE ep|fsdp_ep.")] = "none",
    mesh: Annotated[str | None, Opt(help="Mesh DxT, e.g. 4x2 (needed unless mode none).")] = None,
    batch: Annotated[int, Opt(help="Global batch (sequences).")] = 8,
    seq: Annotated[int | None, Opt(help="Sequence length (default: min(2048, context)).")] = None,
    dtype: Annotated[str | None, Opt(help="Compute dtype: float32 | bfloat16.")] = None,
    remat: Annotated[str | None, Opt(help="Rematerialisation: none | full | dots.")] = None,
    attention: Annotated[str | None, Opt(help=KERNEL_HELP["attention"])] = None,
    loss_chunk: Annotated[int, Opt(help=KERNEL_HELP["loss_chunk"])] = 0,
    hardware: Annotated[
        str, Opt(help="h100 h200 a100 b200 gh200 l4 a10g mi300x tpu-v4/v5e/v5p/v6e cpu.")
    ] = "h100",
    peak_tflops: Annotated[
        float | None, Opt(help="Replace the profile's peak: dense TFLOP/s per device.")
    ] = None,
    hbm_gbps: Annotated[float | None, Opt(help="Replace the profile's HBM GB/s.")] = None,
    hf_config: Annotated[
        str | None,
        Opt(
            "--model",
            "--hf-config",
            help="Comma list of Hugging Face config.json paths (replaces --sizes).",
        ),
    ] = None,
    causal_halving: Annotated[
        bool,
        Opt(
            "--causal-halving/--no-causal-halving",
            help="Count only the causal half of attention in model FLOPs and MFU.",
        ),
    ] = False,  # fmt: skip
    compile_: Annotated[
        bool, Opt("--compile", help="Also lower/compile the real step and compare with XLA.")
    ] = False,
    devices: Annotated[
        int | None, Opt(help="Simulate N CPU devices for --compile (default: D·T of --mesh).")
    ] = None,
    calibrate: Annotated[
        str | None,
        Opt(
            help="A sweep record DIR: fit the roofline's efficiencies to its ok runs and "
            "predict with them."
        ),
    ] = None,  # fmt: skip
    json_: Annotated[bool, Opt("--json", help="Last stdout line: a JSON list, one per size.")] = (
        False
    ),
    task: Annotated[str, Opt(help="train (a training step) | decode (KV-cache inference).")] = (
        "train"
    ),
    prompt_len: Annotated[int, Opt(help="--task decode: prompt tokens per row.")] = 128,
    gen_len: Annotated[int, Opt(help="--task decode: generated tokens per row.")] = 128,
) -> None:
    """Estimate memory, FLOPs, communication and step time for model sizes on a mesh
    (``--task decode``: the inference roofline of KV-cache generation)."""
    if task == "decode":
        _estimate_decode(sizes, hf_config, mode, mesh, batch, dtype, hardware, peak_tflops,
                         hbm_gbps, prompt_len, gen_len, json_)  # fmt: skip
        return
    with user_errors():
        if task != "train":
            raise ValueError(f"unknown task {task!r}; valid: train, decode")
        runs = build_runs(sizes, hf_config, mode=mode, mesh=mesh, batch=batch, seq=seq,
                          dtype=dtype, remat=remat, attention=attention,
                          loss_chunk=loss_chunk)  # fmt: skip
        if compile_ and (devices is not None or mode != "none"):
            simulate_devices(devices, runs[0].mesh)
        profile = resolve_hardware(hardware, peak_tflops=peak_tflops, hbm_gbps=hbm_gbps)
        if compile_ and not json_:
            err_console.print(f"lowering and compiling {len(runs)} step(s) for XLA's counts…")
        calibration = calibrated(calibrate) if calibrate else None
        rows = report(
            runs, hardware=profile, causal_halving=causal_halving, compile=compile_,
            efficiency=calibration.efficiency if calibration else None,
        )  # fmt: skip
        if calibration is not None:
            for row in rows:
                row["calibration"] = {**calibration.to_dict(), "record": calibrate}
    if json_:
        print_json(rows)
    else:
        out_console.print(render(rows, compiled=compile_))
        if compile_ and any(r.model.moe and r.model.moe_dispatch == "dropless" for r in runs):
            import jax

            if jax.default_backend() == "cpu":
                err_console.print(DROPLESS_ON_CPU)


DROPLESS_ON_CPU = (
    "note: dropless MoE dispatch uses jax.lax.ragged_dot, which XLA's CPU backend runs as a "
    "masked matmul over every expert: XLA's FLOPs read about E/k× the experts' useful work "
    "and its temporaries exceed the estimate; accelerators run a grouped matmul (see "
    "scaling/moe.py)."
)


def _estimate_decode(sizes, hf_config, mode, mesh, batch, dtype, hardware, peak_tflops,
                     hbm_gbps, prompt_len, gen_len, json_) -> None:  # fmt: skip
    from scaling.cli.estimate_decode import decode_rows, render_decode

    with user_errors():
        runs = build_runs(sizes, hf_config, mode=mode, mesh=mesh, batch=batch, seq=1,
                          dtype=dtype, remat=None)  # fmt: skip
        profile = resolve_hardware(hardware, peak_tflops=peak_tflops, hbm_gbps=hbm_gbps)
        rows = decode_rows(runs, profile, prompt_len=prompt_len, gen_len=gen_len)
    if json_:
        print_json(rows)
    else:
        out_console.print(render_decode(rows, si=si, seconds=seconds))


def build_runs(
    sizes: str,
    hf_config: str | None,
    *,
    mode: str,
    mesh: str | None,
    batch: int,
    seq: int | None,
    dtype: str | None,
    remat: str | None,
    attention: str | None = None,
    loss_chunk: int = 0,
) -> list[RunConfig]:
    """One RunConfig per size (or the Hugging Face model); ValueError for bad input."""
    shape = parse_mesh(mesh) if mesh is not None else None
    if mode != "none" and shape is None:
        raise ValueError(f"mode {mode} needs --mesh DxT (e.g. --mesh 4x2)")
    if mode == "none" and shape not in (None, (1, 1)):
        raise ValueError(
            f"mesh {mesh} needs a sharded --mode (dp, fsdp, tp, fsdp_tp); mode none is one device"
        )
    fields = dict(mode=mode, mesh=shape, batch=batch, loss_chunk=loss_chunk)
    if hf_config is not None:
        from scaling.estimate.hf_config import model_config_from_hf

        chosen = (("dtype", dtype), ("remat", remat), ("attention", attention))
        overrides = {k: v for k, v in chosen if v is not None}
        configs = [model_config_from_hf(path, **overrides) for path in split_list(hf_config)]
        return [
            RunConfig(model=cfg, seq=seq or min(GPT3_CONTEXT, cfg.max_seq_len), **fields)
            for cfg in configs
        ]
    names = split_list(sizes)
    if not names:
        raise ValueError("no sizes given; e.g. --sizes 125m,350m")
    contexts = {name: min(GPT3_CONTEXT, get_preset(name).max_seq_len) for name in names}
    return [
        build_run(name, dtype=dtype, remat=remat, attention=attention,
                  seq=contexts[name] if seq is None else seq, **fields)
        for name in names
    ]  # fmt: skip


def resolve_hardware(name: str, *, peak_tflops: float | None = None, hbm_gbps: float | None = None):
    """A hardware profile; ``cpu`` is calibrated (a jitted matmul) when no cache exists and no
    peak is given. ``peak_tflops``/``hbm_gbps`` replace the profile's figures (an accelerator
    without a profile: its closest profile for memory and links, and its own peak)."""
    from scaling.estimate.hardware import CPU_NAME, cached_cpu_peak, custom_profile, get_hardware

    key = name.strip().lower()
    if key == CPU_NAME and cached_cpu_peak() is None and peak_tflops is None:
        from scaling.measure import cpu_hardware

        profile = cpu_hardware()
    elif key == CPU_NAME and peak_tflops is not None:
        from scaling.estimate.hardware import cpu_profile, host_memory_bytes

        profile = cpu_profile(peak_tflops * 1e12, host_memory_bytes())
    else:
        profile = get_hardware(name)
    if peak_tflops is None and hbm_gbps is None:
        return profile
    given = ", ".join(
        f"{label} {value:g}"
        for label, value in (("--peak-tflops", peak_tflops), ("--hbm-gbps", hbm_gbps))
        if value is not None
    )
    source = f"{profile.name} with {given} given; {profile.source}"
    return custom_profile(
        profile, name=profile.name, peak_tflops=peak_tflops, hbm_gbps=hbm_gbps, source=source
    )


def calibrated(directories: str):
    """The efficiencies fitted to the ok runs of sweep records (``estimate.calibrate``)."""
    from scaling.estimate.calibrate import calibrate_rows
    from scaling.records import load_runs

    runs = load_runs(*split_list(directories))
    return calibrate_rows(r for _, r in runs[runs["status"] == "ok"].iterrows())


def simulate_devices(devices: int | None, mesh: tuple[int, int] | None) -> None:
    from scaling import parallel  # imports jax, but does not start it

    n = devices if devices is not None else (mesh[0] * mesh[1] if mesh else 1)
    if n <= 0:
        raise ValueError(f"--devices must be positive, got {n}")
    parallel.set_cpu_devices(n)


# ----------------------------------------------------------------------------- rendering

_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def si(value: float | None, unit: str = "", digits: int = 3) -> str:
    """``1.23e15`` → ``1.23 P{unit}``; decimal prefixes (GB = 10⁹ bytes)."""
    if value is None:
        return "–"
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {prefix}{unit}"
    return f"{value:.{digits}g} {unit}".rstrip()


def seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.3g} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fits(row: dict[str, Any]) -> str:
    if row["fits"] is None:
        return "–"
    return "[green]fits[/]" if row["fits"] else "[bold red]does NOT fit[/]"


def _memory_total(row: dict[str, Any]) -> str:
    total, capacity = row["memory_per_device_bytes"]["total"], row["memory_capacity_bytes"]
    if not capacity:
        return si(total, "B")
    pct = 100 * total / capacity
    share = "<1 %" if pct < 1 else f"{pct:.0f} %"
    return f"{si(total, 'B')} / {si(capacity, 'B')} ({share})"


def _rows(compiled: bool) -> list[tuple[str, Any]]:
    mem = "memory_per_device_bytes"
    rows: list[tuple[str, Any]] = [
        ("parameters", lambda r: si(r["n_params"], digits=4)),
        ("non-embedding parameters", lambda r: si(r["n_params_non_embedding"], digits=4)),
        ("seq · batch (tokens / step)",
         lambda r: f"{r['seq']} · {r['batch']} ({r['tokens_per_step']:,})"),
        ("model FLOPs / token", lambda r: si(r["flops_per_token"], "FLOP")),
        ("model FLOPs / step", lambda r: si(r["flops_per_step"], "FLOP")),
        ("hardware FLOPs / step / device", lambda r: si(r["hardware_flops_per_device"], "FLOP")),
        ("memory / device: params", lambda r: si(r[mem]["params"], "B")),
        ("  gradients", lambda r: si(r[mem]["grads"], "B")),
        ("  optimizer (AdamW m, v)", lambda r: si(r[mem]["optimizer"], "B")),
        ("  activations", lambda r: si(r[mem]["activations"], "B")),
        ("  total / capacity", _memory_total),
        ("fits in memory?", _fits),
        ("comm bytes / device / step", lambda r: si(r["comm_bytes_per_device_per_step"], "B")),
        ("HBM bytes / device / step", lambda r: si(r["hbm_bytes_per_device_per_step"], "B")),
        ("time: compute", lambda r: seconds(r["predicted_compute_s"])),
        ("  memory (HBM)", lambda r: seconds(r["predicted_memory_s"])),
        ("  communication", lambda r: seconds(r["predicted_comm_s"])),
        ("step time (overlap – none)",
         lambda r: f"{seconds(r['predicted_step_s'])} – {seconds(r['predicted_step_s_upper'])}"),
        ("binding term", lambda r: r["predicted_binding"]),
        ("predicted MFU ceiling", lambda r: f"{100 * r['predicted_mfu']:.1f} %"),
    ]  # fmt: skip
    if compiled:
        rows += [
            ("XLA FLOPs / step / device",
             lambda r: si(r.get("xla_flops_per_step_per_device"), "FLOP")),
            ("  XLA / analytic (incl. elementwise)", lambda r: ratio(r.get("xla_flops_ratio"))),
            ("  XLA / analytic matmuls only", lambda r: ratio(r.get("xla_flops_matmul_ratio"))),
            ("  method", lambda r: r.get("xla_flops_method", "–")),
            ("XLA memory: argument + temp",
             lambda r: si(_xla_memory(r), "B") if r.get("xla_memory") else "–"),
            ("  XLA / analytic memory", lambda r: ratio(r.get("xla_memory_ratio"))),
            ("XLA comm bytes / device / step",
             lambda r: si(r.get("xla_comm_bytes_per_device_per_step"), "B")),
            ("  XLA / analytic comm", lambda r: ratio(r.get("xla_comm_ratio"))),
        ]  # fmt: skip
    return rows


def _xla_memory(row: dict[str, Any]) -> float:
    return row["xla_memory"]["argument"] + row["xla_memory"]["temp"]


def efficiency_note(row: dict[str, Any]) -> str:
    eff = row.get("efficiency") or {}
    if not eff or all(eff.get(k) == 1.0 for k in ("compute", "hbm", "link")):
        return "; datasheet roofline (efficiencies 1)"
    return (
        f"; calibrated efficiencies: compute {eff['compute']:.3g}, HBM {eff['hbm']:.3g}, "
        f"link {eff['link']:.3g}, overhead {seconds(eff.get('overhead_s', 0.0))} per step"
    )


def render(rows: list[dict[str, Any]], *, compiled: bool = False) -> Table:
    """Metrics down, one column per size; the conventions and peak figure in the caption."""
    first = rows[0]
    mesh = "x".join(str(a) for a in first["mesh"])
    table = Table(
        title=(
            f"Training-step estimate · mode {first['mode']} · mesh {mesh} "
            f"({first['n_devices']} device{'s' if first['n_devices'] != 1 else ''}) · "
            f"{first['dtype']} · remat {first['remat']} · {first['hardware']}"
        )
    )
    table.add_column("per step", justify="left")
    for row in rows:
        table.add_column(row["size"], justify="right")
    for label, cell in _rows(compiled):
        table.add_row(label, *(cell(row) for row in rows))
    convention = (
        "causal half only (MaxText since July 2025)"
        if first["attention_convention"] == "causal_halved"
        else "full t×t (PaLM appendix B, nanoGPT)"
    )
    table.caption = (
        f"Model FLOPs = 6·N_matmul + attention, attention counted {convention}; hardware FLOPs "
        f"add remat recompute and always the full t×t. Peak {si(first['peak_flops_per_device'])}"
        f"FLOP/s per device ({first['dtype']}); source: {first['peak_source']}. Memory in "
        "decimal units (GB = 10⁹ bytes); capacity is the device's full memory. Step time: "
        "compute + memory (HBM traffic of the memory-bound work) on the device, communication "
        "fully overlapped with it – not overlapped; MFU at the overlapped figure. "
        f"HBM {si(first['hbm_bandwidth_bytes_per_s'])}B/s, links "
        f"{si(first['interconnect_bandwidth_bytes_per_s'])}B/s per device"
        f"{efficiency_note(first)}."
    )
    return table
