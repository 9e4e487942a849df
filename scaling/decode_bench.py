"""``scaling bench-decode``: time KV-cache generation per configuration (size, mode, mesh,
batch, prompt length, generated length, dtype) into the decode record
(``scaling.decode_record``), with the inference roofline (``scaling.estimate.inference``)
beside each measurement.

Timing: the prefill and the decode step are compiled ahead of time (``generate.Decoder``;
compile time recorded, never timed); one untimed warm-up generation; then ``repeats`` timed
generations, each token read back to the host before the next step (so every step's latency
is the whole step, blocked on its result). Prompts are random ids of one length (no padding),
greedy, no stop tokens: every generation runs ``gen_len`` tokens.

The roofline needs the device's peak and memory bandwidth: accelerators use their datasheet
profile (``estimate.hardware``); the CPU uses a matmul peak calibrated in this process
(``measure.cpu_hardware(use_cache=False)``: a cached figure from another hour of a shared host
can be several times off) and a bandwidth measured here (``measure_bandwidth``), since the CPU
profile's own bandwidth is an unmeasured order of magnitude.
"""

from __future__ import annotations

import dataclasses
import datetime
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np

from scaling import parallel
from scaling.decode_record import DecodeRecord, DecodeStep, decode_run_id, decode_status
from scaling.decode_record import write_decode as write_record
from scaling.estimate.hardware import HardwareProfile, custom_profile, match_device_kind
from scaling.estimate.inference import decode_estimate, kv_cache_bytes_per_device
from scaling.generate import Decoder, generate, xla_decode_step_costs
from scaling.model import build_model
from scaling.records import git_sha

BANDWIDTH_BYTES = 256 * 2**20  # larger than the last-level cache of the CPUs measured


def measure_bandwidth(n_bytes: int = BANDWIDTH_BYTES, repeats: int = 7) -> float:
    """Median bytes/s of a jitted sum over an ``n_bytes`` float32 array: every byte read once
    from memory (a STREAM-like read; 'sum' is the read kernel of STREAM's successors)."""
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        total(x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return x.nbytes / statistics.median(times)


def decode_hardware(device, *, hbm_gbps: float | None = None) -> HardwareProfile | None:
    """The profile the roofline uses for ``device`` (None: an accelerator without one)."""
    if device.platform == "cpu":
        from scaling.measure import cpu_hardware

        base = cpu_hardware(use_cache=False)
        gbps = hbm_gbps or measure_bandwidth() / 1e9
        how = "given" if hbm_gbps else "measured (median of a jitted sum over 256 MiB)"
        source = (
            "peak: median FLOP/s of a jitted matmul in this process (scaling.measure); memory "
            f"bandwidth {gbps:.1f} GB/s {how}"
        )
        return dataclasses.replace(
            custom_profile(base, name=base.name, hbm_gbps=gbps, source=source),
            devices_share_host=True,
        )
    profile = match_device_kind(device.device_kind)
    if profile is not None and hbm_gbps:
        return custom_profile(profile, name=profile.name, hbm_gbps=hbm_gbps, source=profile.source)
    return profile


def settings_of(size, mode, mesh, batch, prompt_len, gen_len, dtype, seed, sweep) -> dict:
    return dict(size=size, mode=mode, mesh=mesh, batch=batch, prompt_len=prompt_len,
                gen_len=gen_len, dtype=dtype, seed=seed, sweep=sweep)  # fmt: skip


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _measure(record: DecodeRecord, decoder: Decoder, prompts, repeats: int) -> list[DecodeStep]:
    generate(decoder, prompts, record.gen_len, seed=record.seed)  # warm-up, untimed
    prefill, steps = [], []
    for repeat in range(repeats):
        out = generate(decoder, prompts, record.gen_len, seed=record.seed)
        prefill.append(out.prefill_s)
        steps += [DecodeStep(record.run_id, repeat, i + 1, s) for i, s in enumerate(out.step_s)]
    latencies = [s.latency_s for s in steps]
    record.ttft_s = statistics.median(prefill)
    record.prefill_tokens_per_s = record.batch * record.prompt_len / record.ttft_s
    if latencies:
        record.decode_step_s_median = statistics.median(latencies)
        record.decode_step_s_p90 = _percentile(latencies, 90)
        record.decode_tokens_per_s = record.batch / record.decode_step_s_median
    return steps


def _predict(record: DecodeRecord, cfg, hardware: HardwareProfile | None, mesh) -> None:
    record.est_kv_cache_bytes_per_device = kv_cache_bytes_per_device(
        cfg, batch=record.batch, max_len=record.prompt_len + record.gen_len, mode=record.mode,
        mesh=mesh,
    )  # fmt: skip
    if hardware is None:
        return
    est = decode_estimate(cfg, hardware, batch=record.batch, prompt_len=record.prompt_len,
                          gen_len=record.gen_len, mode=record.mode, mesh=mesh)  # fmt: skip
    record.est_decode_flops_per_step = est.decode_flops_per_step
    record.est_decode_bytes_per_step = est.decode_bytes_per_step
    record.predicted_prefill_s = est.prefill_s
    record.predicted_decode_step_s = est.decode_step_s
    record.predicted_decode_tokens_per_s = est.decode_tokens_per_s
    record.predicted_bound = est.decode_bound
    record.compute_bound_batch = (
        float("nan") if est.compute_bound_batch is None else est.compute_bound_batch
    )
    record.peak_flops_per_device = est.peak_flops_per_s
    record.bandwidth_bytes_per_s = est.bandwidth_bytes_per_s
    record.hardware_source = hardware.source


def bench_one(settings: dict, hardware: HardwareProfile | None, repeats: int):
    """One configuration: ``(DecodeRecord, [DecodeStep])``; a failure is recorded in the row
    (status ``oom`` or ``error``), not raised."""
    from scaling.presets import build_run

    started = time.perf_counter()
    device = jax.devices()[0]
    record = DecodeRecord(
        run_id=decode_run_id(settings), sweep=settings["sweep"], size=settings["size"],
        family="", mode=settings["mode"], mesh="", n_devices=1, batch=settings["batch"],
        prompt_len=settings["prompt_len"], gen_len=settings["gen_len"], dtype=settings["dtype"],
        seed=settings["seed"], repeats=repeats, device_kind=device.device_kind,
        platform=device.platform, jax_version=jax.__version__, flax_version=flax.__version__,
        git_sha=git_sha(), hostname=socket.gethostname(),
        started_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )  # fmt: skip
    steps: list[DecodeStep] = []
    try:
        run = build_run(settings["size"], dtype=settings["dtype"], mode=settings["mode"],
                        mesh=settings["mesh"], batch=settings["batch"])  # fmt: skip
        cfg = run.model
        devices = jax.devices()
        shape = run.mesh or parallel.default_mesh_shape(run.mode, len(devices))
        n = shape[0] * shape[1] if run.mode != "none" else 1
        parallel.validate(run.mode, shape, len(devices) if run.mode != "none" else 1, cfg,
                          run.batch)  # fmt: skip
        record.family, record.mesh, record.n_devices = cfg.family, f"{shape[0]}x{shape[1]}", n
        record.d_model, record.n_layers, record.n_heads = cfg.d_model, cfg.n_layers, cfg.n_heads
        record.kv_heads = cfg.kv_heads
        mesh = parallel.make_mesh(shape, devices[:n]) if run.mode != "none" else None
        _predict(record, cfg, hardware, shape)
        model = build_model(cfg, record.seed)
        record.n_params = sum(x.size for x in jax.tree.leaves(flax.nnx.state(model)))
        max_len = record.prompt_len + record.gen_len
        if run.mode == "none":  # the estimate's per-device figures are one device's here
            xla = xla_decode_step_costs(model, record.batch, max_len)
            record.xla_decode_flops_per_step = xla["flops"]
            record.xla_decode_bytes_per_step = xla["bytes"]
        decoder = Decoder(model, record.batch, record.prompt_len, max_len, mesh=mesh,
                          mode=run.mode)  # fmt: skip
        record.compile_s = decoder.compile_s
        rng = np.random.default_rng(record.seed)
        prompts = rng.integers(0, cfg.vocab_size, (record.batch, record.prompt_len)).tolist()
        steps = _measure(record, decoder, prompts, repeats)
        record.kv_cache_bytes_per_device = _cache_shard_bytes(decoder, prompts)
        record.status = "ok"
    except Exception as exc:  # recorded: one bad configuration must not stop the grid
        text = f"{type(exc).__name__}: {exc}".splitlines()[0]
        record.status = (
            "oom" if "RESOURCE_EXHAUSTED" in text or "out of memory" in text else ("error")
        )
        record.error = text
    record.wall_s = time.perf_counter() - started
    return record, steps


def _cache_shard_bytes(decoder: Decoder, prompts) -> float:
    """Bytes of keys and values one device holds after a prefill (its largest shard)."""
    from scaling.generate import left_pad

    tokens, pad = left_pad(prompts)
    stop = np.full((8,), -1, np.int32)
    with decoder._mesh():
        carry = decoder.prefill(decoder.state, tokens, pad, jax.random.key(0), stop)
    return float(sum(max(s.data.nbytes for s in a.addressable_shards)
                     for a in (carry.cache.k, carry.cache.v)))  # fmt: skip


def _validate(settings: dict) -> None:
    """ValueError (before anything runs) for a configuration a run would refuse."""
    from scaling.presets import get_preset

    cfg = get_preset(settings["size"])
    context = settings["prompt_len"] + settings["gen_len"]
    if context > cfg.max_seq_len:
        raise ValueError(
            f"prompt {settings['prompt_len']} + {settings['gen_len']} generated tokens exceed "
            f"the context of {cfg.name} ({cfg.max_seq_len})"
        )
    mode, n = settings["mode"], len(jax.devices())
    shape = settings["mesh"] or parallel.default_mesh_shape(mode, n)
    parallel.validate(mode, shape, n if mode != "none" else 1, cfg, settings["batch"])


def bench_decode(
    out_dir: str | Path,
    grid: list[dict],
    *,
    repeats: int = 3,
    hbm_gbps: float | None = None,
    resume: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> list[DecodeRecord]:
    """Run every configuration of ``grid`` (``settings_of`` dicts) into ``out_dir``; with
    ``resume`` a configuration already recorded ok is skipped (read back, not rerun)."""
    from scaling.decode_record import load_decode

    for settings in grid:
        _validate(settings)
    hardware = decode_hardware(jax.devices()[0], hbm_gbps=hbm_gbps)
    done = []
    for settings in grid:
        run_id = decode_run_id(settings)
        label = (f"{settings['size']} b{settings['batch']} p{settings['prompt_len']} "
                 f"g{settings['gen_len']} {settings['mode']}")  # fmt: skip
        if resume and decode_status(out_dir, run_id) == "ok":
            progress(f"{label}: recorded ok, skipped")
            row = load_decode(out_dir).query("run_id == @run_id").iloc[0].to_dict()
            done.append(DecodeRecord(**row))
            continue
        record, steps = bench_one(settings, hardware, repeats)
        write_record(out_dir, record, steps)
        progress(f"{label}: {record.status}")
        done.append(record)
    return done
