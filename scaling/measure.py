"""Measurements that need jax: the matmul calibration that serves as the CPU's "peak".

A CPU has no datasheet peak that XLA reaches, so the roofline and MFU on CPU use the median
throughput of a jitted square matmul measured in the same process kind (FACTS.md: f32 2048²
~140–190 GFLOP/s on the 2-core development machines).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from scaling.hardware import (
    HardwareProfile,
    cached_cpu_peak,
    cpu_profile,
    host_memory_bytes,
    store_cpu_peak,
)


def calibrate_matmul_flops(n: int = 2048, dtype: str = "float32", repeats: int = 10) -> float:
    """Median FLOP/s of a jitted ``(n, n) @ (n, n)`` matmul in ``dtype`` on the default device.

    2·n³ FLOPs per call; compiled and run twice as warm-up, then each of ``repeats`` calls is
    timed to completion with ``jax.block_until_ready``.
    """
    if n <= 0 or repeats <= 0:
        raise ValueError(f"n and repeats must be positive, got n={n}, repeats={repeats}")
    jdtype = jnp.dtype(dtype)
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.float32).astype(jdtype)
    b = jax.random.normal(key_b, (n, n), jnp.float32).astype(jdtype)
    matmul = jax.jit(jnp.matmul)
    for _ in range(2):
        jax.block_until_ready(matmul(a, b))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times)


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
