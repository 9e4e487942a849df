"""Host memory between training steps: whether malloc keeps what XLA:CPU frees.

XLA:CPU allocates each execution's temporaries as one block (1.5 GB for the 125m step, f32,
batch 4 × 256, one device). glibc's malloc serves a block that large from a fresh ``mmap`` and
unmaps it on ``free``, so every step faults the whole block back in, one zeroed 4 KiB page at a
time: ~371,000 minor page faults and 0.7–1.8 s of system CPU per 4.5–6.5 s step on the 2-core
host of reports/cpu-speed. ``SCALING_HOST_MEMORY=keep`` tells this process's glibc malloc to keep
freed memory for reuse (``mallopt``: one arena, mmap and trim thresholds at 2 GiB, the most an
``int`` holds): no faults after the first step, at the price of resident memory, because the one
arena fragments (peak RSS 3.6 → 4.9–5.4 GB at 125m). A preloaded jemalloc with decay switched
off does the same (``host_allocator`` names it). Measured effect: reports/cpu-speed/report.md.

The setting is read from the environment so that sweep workers inherit it; it must be applied
before jax starts its threads (each thread keeps the malloc arena it first used). Never imports
jax.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Mapping

HOST_MEMORY_ENV = "SCALING_HOST_MEMORY"
HOST_MEMORY_CHOICES = ("release", "keep")
PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
# <malloc.h> mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
KEEP_BYTES = 2**31 - 1

_kept = False


def host_memory_setting(env: Mapping[str, str] = os.environ) -> str:
    """``release`` (the allocator's default) or ``keep``; ``ValueError`` naming a bad value."""
    value = env.get(HOST_MEMORY_ENV, "").strip() or "release"
    if value not in HOST_MEMORY_CHOICES:
        raise ValueError(
            f"{HOST_MEMORY_ENV}={value!r} is not a host-memory setting; use one of "
            f"{', '.join(HOST_MEMORY_CHOICES)}"
        )
    return value


def apply_host_memory_setting(env: Mapping[str, str] = os.environ) -> str:
    """Apply ``host_memory_setting`` to this process and return ``host_allocator()``.
    ``keep`` needs glibc's malloc (Linux); elsewhere, or under a preloaded allocator, it
    raises ``ValueError`` saying what this process has."""
    global _kept
    if host_memory_setting(env) == "keep" and not _kept:
        allocator = host_allocator()
        if allocator != "glibc malloc":
            raise ValueError(
                f"{HOST_MEMORY_ENV}=keep tunes glibc's malloc; this process has {allocator}"
            )
        libc = ctypes.CDLL(None)
        keep = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, KEEP_BYTES), (M_TRIM_THRESHOLD, KEEP_BYTES))
        if not all(libc.mallopt(param, value) == 1 for param, value in keep):
            raise ValueError(f"{HOST_MEMORY_ENV}=keep: glibc's mallopt refused the settings")
        _kept = True
    return host_allocator()


def host_allocator(maps: str | None = None) -> str:
    """The malloc serving this process: a preloaded allocator found in its memory map
    (``maps``: text of /proc/self/maps), else glibc's, noting when it keeps freed memory."""
    if maps is None:
        try:
            with open("/proc/self/maps") as f:
                maps = f.read()
        except OSError:
            maps = ""
    for name in PRELOADED_ALLOCATORS:
        if f"/lib{name}" in maps:
            return f"{name} (preloaded)"
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        return "glibc malloc, freed memory kept" if _kept else "glibc malloc"
    return "system malloc"
