"""One sweep run, in its own process: ``python -m scaling.worker SETTINGS_JSON RESULT_PATH``.

The process dies with the sweep that started it, sets its device count before jax starts,
optionally joins ``jax.distributed``, checks that the run fits in memory (else records
``oom-predicted`` without building anything, unless the payload says ``force``), trains,
measures, and writes a ``RunOutcome`` as JSON to RESULT_PATH (atomically). Each finished step
goes to stdout as one JSON object: the sweep's progress bar, and the steps a run stopped by its
timeout keeps. Failures are classified into the record's ``status`` (oom, diverged, error)
rather than lost.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback

from scaling.launch import die_with_parent
from scaling.records import (
    RunOutcome,
    RunRecord,
    StepRecord,
    base_record,
    outcome_to_json,
    write_json_atomic,
)
from scaling.spec import default_devices

OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


def classify(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or any(m in text for m in OOM_MARKERS):
        return "oom"
    return "error"


def measure_run(
    settings: dict, record: RunRecord, profile_dir: str | None, force: bool = False
) -> RunOutcome:
    """Train and fill in every measured and predicted column of ``record`` (or, without
    ``force``, record ``oom-predicted`` when the memory pre-flight says it cannot fit)."""
    import flax
    import jax

    from scaling import estimate, measure, train
    from scaling.spec import run_config_from_settings

    run_cfg = run_config_from_settings(settings)
    device = measure.local_device()
    record.device_kind, record.platform = device.device_kind, device.platform
    record.jax_version, record.flax_version = jax.__version__, flax.__version__
    record.n_processes = jax.process_count()
    problem = train.memory_problem(run_cfg)
    if problem and not force:
        record.status, record.error = "oom-predicted", problem
        return RunOutcome(record, [])
    peaks = {"peak_tflops": settings.get("peak_tflops"), "hbm_gbps": settings.get("hbm_gbps")}
    probe = measure.probe_for(device) if measure.needs_probe(device, peaks["peak_tflops"]) else None
    result = train.run(run_cfg, on_step=_print_step, profile_dir=profile_dir, probe=probe)
    profile, record.peak_source = measure.device_peak(device, probe, **peaks)
    n = result.n_devices
    record.n_devices, record.mesh = n, f"{result.mesh[0]}x{result.mesh[1]}"
    est = estimate.estimate(
        run_cfg.model,
        mode=run_cfg.mode,
        mesh=result.mesh,
        batch=run_cfg.batch,
        seq=run_cfg.seq,
        hardware=profile,
        loss_chunk=run_cfg.loss_chunk,
    )
    _fill_measured(record, result, device)
    _fill_predicted(record, est, result, n)
    record.xla_flops_per_step_global = xla_global_flops(run_cfg)
    record.xla_comm_bytes = xla_comm_total(run_cfg)
    record.status = "diverged" if result.diverged else "ok"
    if result.diverged:
        record.error = f"non-finite loss at step {result.start_step + len(result.losses) - 1}"
    columns = (result.losses, result.step_times_s, result.lrs, result.grad_norms)
    columns += (result.val_losses, result.data_wait_s)
    steps = [
        StepRecord(
            record.run_id,
            result.start_step + i,
            *values,
            **{name: series[i] for name, series in result.router.items()},
        )
        for i, values in enumerate(zip(*columns, strict=True))
    ]
    return RunOutcome(record, steps)


def _print_step(step: int, metrics: dict) -> None:
    print(json.dumps({"step": step, **metrics}), flush=True)


def _fill_measured(record: RunRecord, result, device) -> None:
    from scaling import measure

    record.n_params = result.n_params
    record.n_params_active = result.n_params_active
    for name, series in result.router.items():  # MoE router statistics at the last step
        setattr(record, name, series[-1])
    record.compile_s = result.compile_s
    timed = result.timed_step_times_s
    record.step_time_s_median = result.step_time_s_median
    record.step_time_s_min, record.step_time_s_max = min(timed), max(timed)
    record.tokens_per_s = result.tokens_per_s
    for name in ("argument", "output", "temp", "alias"):
        setattr(record, f"xla_{name}_bytes", result.xla.get(f"{name}_bytes", math.nan))
    record.peak_memory_bytes, record.peak_memory_source = measure.peak_memory(device, result.xla)
    record.final_loss = result.final_loss
    record.final_val_loss, record.final_val_bpb = result.final_val_loss, result.final_val_bpb
    record.tokens_seen = result.tokens_seen
    record.data_wait_s_median = measure.median_s(
        result.data_wait_s[result.timing_warmup_steps :] or result.data_wait_s
    )
    record.entropy_floor_nats = (
        math.nan if result.entropy_floor_nats is None else result.entropy_floor_nats
    )


def _fill_predicted(record: RunRecord, est, result, n: int) -> None:
    from scaling import measure

    record.peak_flops_per_device = est.peak_flops_per_device
    record.model_flops_per_step = est.flops.model_per_step
    record.hardware_flops_per_step = est.flops.hardware_per_step
    record.attention_convention = est.flops.attention_convention
    step_s, peak = result.step_time_s_median, est.peak_flops_per_device
    record.mfu = measure.utilisation(record.model_flops_per_step, step_s, n, peak)
    record.hfu = measure.utilisation(record.hardware_flops_per_step, step_s, n, peak)
    record.est_memory_bytes = est.memory.total
    record.est_comm_bytes = est.comm.total
    record.predicted_step_s = est.predicted_step_s
    record.predicted_step_s_upper = est.predicted_step_s_upper
    record.predicted_mfu = est.predicted_mfu


def xla_global_flops(run_cfg) -> float:
    """XLA's FLOP count of the whole step (all devices), from an unrolled lowering: a scanned
    layer body would be counted once (scaling.estimate.xla_check). NaN where XLA reports none."""
    from scaling.estimate.xla_check import xla_cross_check

    try:
        check = xla_cross_check(run_cfg, memory=False, per_device_flops=False)
    except Exception:  # a cross-check must never fail the measured run
        traceback.print_exc()
        return math.nan
    value = check.get("xla_flops_global_per_step")
    return math.nan if value is None else float(value)


def xla_comm_total(run_cfg) -> float:
    """Collective bytes per device per step of the compiled step's partitioned HLO
    (scaling.estimate.xla_check.xla_comm_bytes); NaN if the cross-check fails."""
    from scaling.estimate.xla_check import xla_comm_bytes

    try:
        return float(xla_comm_bytes(run_cfg)["total"])
    except Exception:  # a cross-check must never fail the measured run
        traceback.print_exc()
        return math.nan


def main(argv: list[str]) -> int:
    die_with_parent()  # a worker never outlives its sweep
    settings, result_path = json.loads(argv[0]), argv[1]
    run_id = settings.pop("run_id")
    distributed = settings.pop("distributed", None)
    profile_dir = settings.pop("profile_dir", None)
    force = bool(settings.pop("force", False))
    record = base_record(settings, run_id)
    start = time.perf_counter()
    try:
        from scaling import hostmem, parallel

        record.host_allocator = hostmem.apply_host_memory_setting()  # before jax's threads
        parallel.set_cpu_devices(default_devices(settings))
        if distributed:
            parallel.init_distributed(**distributed)
        outcome = measure_run(settings, record, profile_dir, force)
    except Exception as exc:  # the record keeps the failure; the sweep goes on
        record.status = classify(exc)
        first_line = (str(exc).strip().splitlines() or [""])[0]
        record.error = f"{type(exc).__name__}: {first_line[:500]}"
        traceback.print_exc()
        outcome = RunOutcome(record, [])
    outcome.record.wall_s = time.perf_counter() - start
    import jax

    if jax.process_index() == 0:
        write_json_atomic(outcome_to_json(outcome), result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
