"""Checks made before a run starts, so that it fails in a second with one line instead of after
minutes of training (or by the kernel's OOM killer): will it fit in memory? Never imports jax
(device objects are passed in).
"""

from __future__ import annotations

from pathlib import Path

from scaling.config import RunConfig
from scaling.estimate.hardware import host_memory_bytes as physical_memory_bytes
from scaling.estimate.hardware import match_device_kind
from scaling.estimate.memory import memory_per_device

_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def host_memory_bytes() -> int:
    """RAM this process may use: the host's physical memory, or the container's (cgroup)
    limit when that is lower."""
    limits = [physical_memory_bytes()]
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return min(limits)


def device_memory_bytes(device) -> int | None:
    """Memory of one accelerator (``memory_stats()['bytes_limit']``, else its hardware
    profile); None for a CPU device or an unknown accelerator."""
    if device.platform == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
    except Exception:  # some backends do not implement memory_stats
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    profile = match_device_kind(getattr(device, "device_kind", ""))
    return profile.memory_bytes if profile is not None else None


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def memory_problem(
    run: RunConfig,
    mesh: tuple[int, int],
    *,
    n_local_devices: int,
    platform: str,
    device_bytes: int | None,
) -> str | None:
    """Why the estimator (``scaling.estimate.memory_per_device``: parameters, gradients, AdamW
    moments and saved activations) predicts that ``run`` does not fit, or None.

    On CPU the ``n_local_devices`` simulated devices of this process share the host's RAM;
    on an accelerator each device has ``device_bytes`` (None: unknown, not checked). Only a
    configuration whose estimate exceeds the whole capacity is refused: XLA's temporaries
    are not in the estimate, so a run that passes may still run out of memory."""
    est = memory_per_device(
        run.model,
        mode=run.mode,
        mesh=None if run.mode == "none" else mesh,
        batch=run.batch,
        seq=run.seq,
        loss_chunk=run.loss_chunk,
    )
    if platform == "cpu":
        capacity, need = host_memory_bytes(), est.total * n_local_devices
        where = f"this host has {_gb(capacity)} of RAM"
        if n_local_devices > 1:
            where += f" for {n_local_devices} simulated devices"
    elif device_bytes is None:
        return None
    else:
        capacity, need = device_bytes, est.total
        where = f"a {platform} device has {_gb(capacity)}"
    if need <= capacity:
        return None
    return (
        f"{run.model.name} {run.mode} {mesh[0]}x{mesh[1]}, batch {run.batch}×{run.seq}: the "
        f"memory estimate is {_gb(need)} but {where}; use a smaller batch, sequence or model, "
        "or more devices (--force runs it anyway)"
    )
