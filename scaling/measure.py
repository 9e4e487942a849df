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
import numpy as np

from scaling.hardware import (
    HardwareProfile,
    cached_cpu_peak,
    cpu_profile,
    host_memory_bytes,
    store_cpu_peak,
)


class MatmulProbe:
    """Times one jitted ``(n, n) @ (n, n)`` matmul in ``dtype`` on demand (2·n³ FLOPs a call).

    Sampling it right next to each timed training step, rather than once before them, lets the
    CPU "peak" follow the load the steps themselves saw (other processes on a shared host).
    """

    def __init__(self, n: int = 2048, dtype: str = "float32"):
        if n <= 0:
            raise ValueError(f"n must be positive, got n={n}")
        self.n = n
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
        """FLOP/s of one call, timed to completion with ``jax.block_until_ready``.

        One untimed call goes first: right after a training step the first matmul runs at a
        third of the rate of the next ones (measured after 125m fsdp_tp steps: ~70 then ~200
        GFLOP/s), which would under-read the peak and over-read MFU."""
        self._call()
        start = time.perf_counter()
        self._call()
        flops = 2.0 * self.n**3 / (time.perf_counter() - start)
        self.samples.append(flops)
        return flops

    def _call(self) -> jax.Array:
        with jax.set_mesh(self._mesh):
            return jax.block_until_ready(self._matmul(self._a, self._b))

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


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
