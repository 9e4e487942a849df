"""Everything that turns a run into measured figures: the timed loop stages, the CPU peak probe
and its schedule, XLA's cost and memory figures (one normaliser), the peak a device is measured
against, MFU/HFU and peak memory.

Timing rules (nanoGPT's ``bench.py`` separates the same stages): compilation is timed on its
own (``compile_s``); the first ``timing_warmup_steps`` steps are burn-in and excluded from the
statistics; every step is timed to completion (``jax.block_until_ready``) and recorded; the
statistic is the median of the measured steps.

Windowed timing (``RunConfig.sync_every`` = W > 1): the host dispatches W steps without waiting
(the device runs step i while the host dispatches step i+1 and places its batch) and blocks once,
at the window's end. The window's wall time, from the dispatch of its first step to the
completion of its last, divided by its step count is recorded as each of its steps' time: **per-step
times are window means in this mode**. Windows end early at the end of burn-in and at steps due
an evaluation or a checkpoint, so those, the probe and the profiler's start all fall between
windows, outside any timed one. With ``RunConfig.steps_per_call`` = K > 1 a window holds at
least K steps and runs them in calls of up to K steps each (one compiled device loop); its
per-step times are window means in the same way.

A CPU has no datasheet peak that XLA reaches, so on CPU the peak is a jitted 2048² matmul timed
in the same process right after measured steps (``MatmulProbe``, FACTS.md: f32 2048² ~140–290
GFLOP/s on the 2-core development machines), so MFU follows the load the steps saw.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scaling.estimate.hardware import (
    HardwareProfile,
    cached_cpu_peak,
    cpu_profile,
    custom_profile,
    host_memory_bytes,
    match_device_kind,
    store_cpu_peak,
)

PROBE_SAMPLES = 8  # at most this many probe samples per run (~0.2 s each on CPU)
MIN_PROBE_SAMPLES = 3  # runs with fewer measured steps take the rest after the last step
PROBE_CALLS = 3  # timed calls per probe sample; the sample is the fastest (~0.1 s each on CPU)


class MatmulProbe:
    """Times one jitted ``(n, n) @ (n, n)`` matmul in ``dtype`` on demand (2·n³ FLOPs a call).

    Sampling it right next to the timed training steps, rather than once before them, lets the
    CPU "peak" follow the load the steps themselves saw (other processes on a shared host).
    """

    def __init__(self, n: int = 2048, dtype: str = "float32"):
        if n <= 0:
            raise ValueError(f"n must be positive, got n={n}")
        self.n, self.dtype = n, dtype
        key_a, key_b = jax.random.split(jax.random.key(0))
        jdtype = jnp.dtype(dtype)
        self._a = jax.random.normal(key_a, (n, n), jnp.float32).astype(jdtype)
        self._b = jax.random.normal(key_b, (n, n), jnp.float32).astype(jdtype)
        # A one-device mesh of its own: under the training loop's mesh (``jax.set_mesh``) a
        # plain jit would replicate the matmul over every device of that mesh (4 devices: 4×
        # the work, a quarter of the apparent FLOP/s).
        self._mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:1]), ("probe",))
        self._matmul = jax.jit(jnp.matmul)
        for _ in range(2):  # compile, then one warm call
            self._call()
        self.samples: list[float] = []

    def sample(self) -> float:
        """FLOP/s of the fastest of ``PROBE_CALLS`` calls, each timed to completion with
        ``jax.block_until_ready``: the peak is the best rate the matmul reaches, and a call
        slowed by something else on the host (a burst of another process, or this one freeing
        a step's temporaries) would under-read it and over-read MFU (with one timed call per
        sample, the probe's median read 102-194 GFLOP/s from one 125m run to the next on a
        2-core host, and two runs MFU 1.05 and 1.41).

        One untimed call goes first: right after a training step the first matmul runs at a
        third of the rate of the next ones (measured after 125m fsdp_tp steps: ~70 then ~200
        GFLOP/s)."""
        self._call()
        fastest = math.inf
        for _ in range(PROBE_CALLS):
            start = time.perf_counter()
            self._call()
            fastest = min(fastest, time.perf_counter() - start)
        flops = 2.0 * self.n**3 / fastest
        self.samples.append(flops)
        return flops

    def _call(self) -> jax.Array:
        with jax.set_mesh(self._mesh):
            return jax.block_until_ready(self._matmul(self._a, self._b))

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def probe_schedule(measured_steps: int, samples: int = PROBE_SAMPLES) -> set[int]:
    """Indices of the measured steps (0-based) after which the probe is sampled: at most
    ``samples`` of them, spread evenly over the measured steps, the first one included."""
    if measured_steps <= 0:
        return set()
    count = min(samples, measured_steps)
    return {i * measured_steps // count for i in range(count)}


@dataclass
class StepClock:
    """The stages of a measured training loop: ``timing_warmup_steps`` burn-in steps, then
    measured steps, timed in windows. ``begin`` opens a window (starting the profiler at the
    first measured step); ``end`` blocks until the window's outputs are ready and records its
    wall time divided by its ``n`` steps as each step's time (a window of one step: that step's
    own time); ``after_window`` samples the probe when the window held a step of its schedule
    (outside any timed window). ``time`` is a window of one step. ``finish`` stops the profiler
    and tops the probe up to ``MIN_PROBE_SAMPLES`` after the last step."""

    timing_warmup_steps: int
    measured_steps: int
    probe: MatmulProbe | None = None
    profile_dir: str | None = None
    step_times_s: list[float] = field(default_factory=list)
    _profiling: bool = False
    _window_start: float = math.nan

    def __post_init__(self) -> None:
        self._schedule = probe_schedule(self.measured_steps)

    def time(self, fn: Callable, *args) -> Any:
        self.begin()
        return self.end(fn(*args), 1)

    def begin(self) -> None:
        if self.profile_dir and not self._profiling and self._measured_index() >= 0:
            jax.profiler.start_trace(self.profile_dir)
            self._profiling = True
        self._window_start = time.perf_counter()

    def end(self, outputs: Any, n: int) -> Any:
        """Block on ``outputs`` (everything the window's ``n`` steps produced), record ``n``
        equal step times; returns ``outputs``."""
        outputs = jax.block_until_ready(outputs)
        mean = (time.perf_counter() - self._window_start) / n
        self.step_times_s.extend([mean] * n)
        return outputs

    def after_step(self) -> None:
        self.after_window(1)

    def after_window(self, n: int) -> None:
        """Sample the probe once if one of the window's last ``n`` steps is on its schedule."""
        last = self._measured_index()  # one past the window's last measured index
        if self.probe is not None and self._schedule.intersection(range(last - n, last)):
            self.probe.sample()

    def steps_to_burn_in_end(self) -> int:
        """Steps left before the burn-in ends (0 once it has): a window must end there, so
        that no window mixes burn-in and measured steps."""
        return max(-self._measured_index(), 0)

    def finish(self) -> None:
        if self._profiling:
            jax.profiler.stop_trace()
            self._profiling = False
        while self.probe is not None and len(self.probe.samples) < MIN_PROBE_SAMPLES:
            self.probe.sample()

    def _measured_index(self) -> int:
        """Index of the next step among the measured ones (negative during burn-in)."""
        return len(self.step_times_s) - self.timing_warmup_steps

    @property
    def measured_times_s(self) -> list[float]:
        """The measured steps' times; all steps when the run was shorter than its burn-in."""
        return self.step_times_s[self.timing_warmup_steps :] or self.step_times_s


def median_s(times: list[float]) -> float:
    return statistics.median(times) if times else math.nan


# ----------------------------------------------------------------------------- XLA's figures


def cost_figures(stage) -> dict[str, float]:
    """XLA's ``cost_analysis()`` of a lowered or compiled step as ``{"flops", "transcendentals",
    "bytes_accessed"}`` (those it reports). A scanned layer body is counted once, and GPU
    custom calls report -1 (dropped here): see ``scaling.estimate.xla_check``."""
    cost = stage.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: a one-element list
        cost = cost[0] if cost else {}
    out = {}
    for key, name in (
        ("flops", "flops"),
        ("transcendentals", "transcendentals"),
        ("bytes accessed", "bytes_accessed"),
    ):
        value = (cost or {}).get(key)
        if value is not None and value >= 0:
            out[name] = float(value)
    return out


def memory_figures(compiled) -> dict[str, float]:
    """``memory_analysis()`` of a compiled step, per device: ``argument_bytes``,
    ``output_bytes``, ``temp_bytes``, ``alias_bytes``; {} where the backend reports none."""
    memory = compiled.memory_analysis()
    if memory is None:
        return {}
    return {
        f"{name}_bytes": float(getattr(memory, f"{name}_size_in_bytes", 0))
        for name in ("argument", "output", "temp", "alias")
    }


PARTITIONED_PASS = "spmd-partitioning"  # the HLO pass whose output holds every collective


def partitioned_hlo(lowered) -> str:
    """The HLO text of ``lowered`` right after XLA's SPMD partitioner, from a compile that dumps
    that one pass into a temporary directory (deleted afterwards), or the final HLO where no
    partitioner runs (one device). Read by ``scaling.estimate.hlo_comm``: the final CPU HLO has
    bf16 collectives rewritten to f32, the partitioned one keeps the dtype moved. The compile
    skips LLVM's expensive optimisations: only its HLO matters, never its speed. Seconds on
    small models, like any compile; not part of a run's timed stages."""
    import glob
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="scaling-hlo-") as tmp:
        options = {
            "xla_dump_to": tmp,
            "xla_dump_hlo_pass_re": f"^{PARTITIONED_PASS}$",
            "xla_dump_disable_metadata": True,
            "xla_backend_optimization_level": 0,
            "xla_llvm_disable_expensive_passes": True,
        }
        compiled = lowered.compile(compiler_options=options)
        dumps = sorted(glob.glob(os.path.join(tmp, f"*after_{PARTITIONED_PASS}.*.txt")))
        if dumps:
            with open(dumps[-1]) as f:
                return f.read()
    return compiled.as_text()


# ----------------------------------------------------------------------------- peaks, MFU, memory


def local_device():
    """This process's first device: the one whose kind decides the peak."""
    return jax.local_devices()[0]


CPU_PROBE = (2048, "float32")  # FACTS.md: bf16 is no faster on these CPUs
ACCELERATOR_PROBE = (8192, "bfloat16")  # 1.1 TFLOP a call: long enough to time on a GPU


def probe_for(device) -> MatmulProbe:
    """The matmul probe that measures ``device``'s peak: f32 2048² on a CPU host, bf16 8192²
    on an accelerator without a datasheet profile."""
    n, dtype = CPU_PROBE if device.platform == "cpu" else ACCELERATOR_PROBE
    return MatmulProbe(n, dtype)


def device_memory_bytes(device) -> int:
    """The allocator's limit on ``device`` (``memory_stats()["bytes_limit"]``), 0 if unknown."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int((stats or {}).get("bytes_limit", 0))


def device_peak(
    device,
    probe: MatmulProbe | None,
    *,
    peak_tflops: float | None = None,
    hbm_gbps: float | None = None,
) -> tuple[HardwareProfile, str]:
    """The profile a device is measured against and where its peak comes from, in this order:
    ``peak_tflops`` given (``--peak-tflops``); the datasheet of a known kind; on a CPU host,
    this process's probe shared by the simulated devices; on any other accelerator, the bf16
    probe of this one device, per device (never divided by the device count, never a CPU).
    ``hbm_gbps`` (``--hbm-gbps``) replaces the HBM bandwidth wherever it is given."""
    known = match_device_kind(device.device_kind)
    name = known.name if known else device.device_kind.strip().lower().replace(" ", "-")
    if peak_tflops is not None:
        source = f"{device.device_kind}: given --peak-tflops {peak_tflops:g} (per device)"
        memory = None if known else device_memory_bytes(device)
        profile = custom_profile(known, name=name, peak_tflops=peak_tflops, hbm_gbps=hbm_gbps,
                                 memory_bytes=memory, source=source)  # fmt: skip
        return profile, source
    if known is not None:
        if hbm_gbps is not None:
            known = custom_profile(known, name=name, hbm_gbps=hbm_gbps)
        return known, f"{known.name}: {known.source}"
    if probe is None or not probe.samples:
        raise ValueError(f"no peak for device kind {device.device_kind!r} and no probe samples")
    median = f"median {probe.median / 1e9:.1f} GFLOP/s of {len(probe.samples)}"
    if device.platform == "cpu":
        source = (
            f"cpu matmul probe ({probe.n}² {probe.dtype}) sampled after measured steps, same "
            f"process: {median}, shared by the devices"
        )
        return cpu_profile(probe.median, host_memory_bytes()), source
    source = (
        f"{device.device_kind}: no datasheet profile; {probe.dtype} matmul probe ({probe.n}²) on "
        f"this device after measured steps: {median}, per device (not divided by the device "
        "count); HBM "
        + (f"{hbm_gbps:g} GB/s given" if hbm_gbps else "bandwidth unknown (memory term left out)")
    )
    profile = custom_profile(None, name=name, peak_tflops=probe.median / 1e12, hbm_gbps=hbm_gbps,
                             memory_bytes=device_memory_bytes(device), source=source)  # fmt: skip
    return profile, source


def needs_probe(device, peak_tflops: float | None = None) -> bool:
    """Whether this device's peak must be measured (none given, no datasheet profile)."""
    return peak_tflops is None and match_device_kind(device.device_kind) is None


def run_mfu(run_cfg, result, device, probe, **peaks) -> dict[str, Any]:
    """MFU of a finished ``train.run`` result against ``device_peak(device, probe, **peaks)``:
    ``{"mfu", "peak_flops_per_device", "peak_source"}``."""
    from scaling.estimate import estimate

    profile, source = device_peak(device, probe, **peaks)
    est = estimate(run_cfg.model, mode=run_cfg.mode, mesh=result.mesh, batch=run_cfg.batch,
                   seq=run_cfg.seq, hardware=profile)  # fmt: skip
    step_s, n = result.step_time_s_median, result.n_devices
    mfu = utilisation(est.flops.model_per_step, step_s, n, est.peak_flops_per_device)
    return {"mfu": mfu, "peak_flops_per_device": est.peak_flops_per_device, "peak_source": source}


def utilisation(flops_per_step: float, step_s: float, n_devices: int, peak: float) -> float:
    """FLOPs per step ÷ (step time · devices · peak per device): MFU for model FLOPs, HFU for
    hardware FLOPs (dimensionless)."""
    denominator = step_s * n_devices * peak
    return flops_per_step / denominator if denominator > 0 else math.nan


def peak_memory(device, xla: dict[str, float]) -> tuple[float, str]:
    """Peak bytes per device and their source: the allocator's ``peak_bytes_in_use`` where the
    backend reports it (GPU/TPU), else XLA's memory analysis of the step (argument + output +
    temp − alias)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return float(stats["peak_bytes_in_use"]), "memory_stats"
    if xla:
        total = (
            xla.get("argument_bytes", 0)
            + xla.get("output_bytes", 0)
            + xla.get("temp_bytes", 0)
            - xla.get("alias_bytes", 0)
        )
        return total, "xla_memory_analysis"
    return math.nan, ""


def calibrate_matmul_flops(n: int = 2048, dtype: str = "float32", repeats: int = 10) -> float:
    """Median FLOP/s of ``repeats`` timed calls of a jitted ``(n, n)`` matmul (after warm-up)."""
    if repeats <= 0:
        raise ValueError(f"repeats must be positive, got repeats={repeats}")
    probe = MatmulProbe(n, dtype)
    for _ in range(repeats):
        probe.sample()
    return probe.median


def cpu_hardware(
    use_cache: bool = True, *, n: int = 2048, dtype: str = "float32", cache_path=None
) -> HardwareProfile:
    """This host's CPU profile: calibrated peak (cached per hostname) and physical memory.

    With ``use_cache`` a cached calibration is reused, and a fresh one is stored; without it
    the calibration always runs and the cache is left untouched.
    """
    peak = cached_cpu_peak(cache_path, dtype=dtype) if use_cache else None
    if peak is None:
        peak = calibrate_matmul_flops(n=n, dtype=dtype)
        if use_cache:
            store_cpu_peak(peak, cache_path, dtype=dtype)
    return cpu_profile(peak, host_memory_bytes())
