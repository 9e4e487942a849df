"""Accelerator profiles: peak FLOP/s, memory, HBM and interconnect bandwidth, with sources.

Pure data and arithmetic; never imports jax (the CPU calibration lives in ``scaling.measure``).

Conventions used by every profile (and by ``scaling.estimate``):

- ``peak_flops_bf16``: dense (no sparsity) bf16 matmul FLOP/s per chip.
- ``peak_flops_f32``: FLOP/s of a float32 matmul *at JAX's default precision*. JAX computes f32
  dots with TF32 tensor cores on NVIDIA Ampere/Hopper and with one bf16 pass on TPU
  (docs.jax.dev "Matmul precision": "bfloat16 on TPU, TF32 on recent GPUs"), so the figure is
  the dense TF32 rate on GPUs and the bf16 rate on TPUs. ``precision="highest"`` is slower.
- ``memory_bytes``: the published HBM capacity per chip (GPU datasheets in GB = 1e9 bytes;
  Cloud TPU docs in GiB). JAX on GPU preallocates 75 % of it by default
  (``XLA_PYTHON_CLIENT_MEM_FRACTION``); ``fits`` in the estimator compares with the full figure.
- ``interconnect_bandwidth_bytes_per_s``: bytes per second one chip can *send* along one mesh
  axis (its egress). A collective's time is then bytes sent per device / this figure, which is
  how "How To Scale Your Model" (jax-ml/scaling-book) models AllGather ≈ V/W, AllReduce ≈ 2V/W.
  GPUs: half the NVLink total (NVLink totals are bidirectional). TPUs: the scaling book's
  "bidi per link" figure (tpus.md), i.e. both directions of a wrap-around ring on one axis.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from scaling.records import write_json_atomic

GB = 10**9
GiB = 2**30
TERA = 1e12


@dataclass(frozen=True)
class HardwareProfile:
    """Per-chip peak figures of one accelerator kind (units in the field names)."""

    name: str
    peak_flops_bf16: float  # FLOP/s, dense bf16 matmul
    peak_flops_f32: float  # FLOP/s, f32 matmul at JAX's default precision (see module doc)
    memory_bytes: int  # HBM (or host RAM for cpu)
    hbm_bandwidth_bytes_per_s: float
    interconnect_bandwidth_bytes_per_s: float  # egress per chip along one mesh axis
    source: str
    # True for simulated devices on one host (``cpu``): all devices share the one peak and the
    # one memory, so the estimator divides both by the number of devices.
    devices_share_host: bool = False

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for matmuls in the compute dtype ``"bfloat16"`` or ``"float32"``."""
        if dtype == "bfloat16":
            return self.peak_flops_bf16
        if dtype == "float32":
            return self.peak_flops_f32
        raise ValueError(f"unknown dtype {dtype!r}; valid: bfloat16, float32")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_NVIDIA_H100 = (
    "NVIDIA H100 Tensor Core GPU datasheet (SXM5): bf16 989 TF and TF32 495 TF dense (the "
    "datasheet's 1979/989 TF are with sparsity), 80 GB HBM3, 3.35 TB/s; NVLink 4 900 GB/s "
    "bidirectional per GPU, 450 GB/s per direction used here"
)
_NVIDIA_H200 = (
    "NVIDIA H200 Tensor Core GPU datasheet (SXM): bf16 989 TF and TF32 495 TF dense, 141 GB "
    "HBM3e, 4.8 TB/s; NVLink 4 900 GB/s bidirectional per GPU, 450 GB/s per direction used here"
)
_NVIDIA_A100 = (
    "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): bf16 312 TF and TF32 156 TF dense, 80 GB "
    "HBM2e, 2.04 TB/s (2,039 GB/s); NVLink 3 600 GB/s bidirectional, 300 GB/s per direction"
)
_SCALING_BOOK = "How To Scale Your Model (jax-ml/scaling-book, tpus.md) and Cloud TPU docs"

HARDWARE: dict[str, HardwareProfile] = {
    p.name: p
    for p in (
        HardwareProfile("h100", 989 * TERA, 495 * TERA, 80 * GB, 3.35e12, 450 * GB, _NVIDIA_H100),
        HardwareProfile("h200", 989 * TERA, 495 * TERA, 141 * GB, 4.8e12, 450 * GB, _NVIDIA_H200),
        HardwareProfile("a100", 312 * TERA, 156 * TERA, 80 * GB, 2.039e12, 300 * GB, _NVIDIA_A100),
        # TPU f32 peak = bf16 peak: JAX's default precision runs f32 dots as one bf16 pass.
        HardwareProfile(
            "tpu-v4",
            275 * TERA,
            275 * TERA,
            32 * GiB,
            1.2e12,
            9e10,
            f"{_SCALING_BOOK}: v4 275 TF bf16, 32 GiB, 1.2 TB/s, ICI 4.5e10 B/s/link one-way "
            "(9e10 bidi)",
        ),
        HardwareProfile(
            "tpu-v5e",
            197 * TERA,
            197 * TERA,
            16 * GiB,
            8.19e11,
            1e11,
            f"{_SCALING_BOOK}: v5e 197 TF bf16, 16 GiB, 819 GB/s, ICI 5e10 B/s/link one-way "
            "(1e11 bidi)",
        ),
        HardwareProfile(
            "tpu-v5p",
            459 * TERA,
            459 * TERA,
            95 * GiB,
            2.765e12,
            2e11,
            f"{_SCALING_BOOK}: v5p 459 TF bf16, 95 GiB, 2.765 TB/s, ICI 1e11 B/s/link one-way "
            "(2e11 bidi)",
        ),
        HardwareProfile(
            "tpu-v6e",
            918 * TERA,
            918 * TERA,
            32 * GiB,
            1.64e12,
            2e11,
            f"{_SCALING_BOOK}: v6e (Trillium) 918 TF bf16, 32 GiB, 1.64 TB/s, ICI 1e11 B/s/link "
            "one-way (2e11 bidi)",
        ),
    )
}

CPU_NAME = "cpu"
# Simulated CPU devices exchange data by memory copies; this is an order of magnitude for one
# core's copy bandwidth, not a measurement.
CPU_COPY_BANDWIDTH_BYTES_PER_S = 1e10


def valid_hardware_names() -> tuple[str, ...]:
    return (*HARDWARE, CPU_NAME)


def get_hardware(name: str) -> HardwareProfile:
    """The profile called ``name`` (case-insensitive).

    ``cpu`` has no fixed peak: it is served from the calibration cache
    (``cached_cpu_peak``); when none is cached, use ``scaling.measure.cpu_hardware()``.
    """
    key = name.strip().lower()
    if key in HARDWARE:
        return HARDWARE[key]
    if key == CPU_NAME:
        peak = cached_cpu_peak()
        if peak is None:
            raise ValueError(
                "hardware 'cpu' has no fixed peak and no calibration is cached; run "
                "scaling.measure.cpu_hardware() (a jitted matmul) first"
            )
        return cpu_profile(peak, host_memory_bytes())
    raise ValueError(f"unknown hardware {name!r}; valid: {', '.join(valid_hardware_names())}")


def match_device_kind(device_kind: str) -> HardwareProfile | None:
    """Map ``jax.Device.device_kind`` to a profile; ``None`` for cpu and unknown kinds.

    Examples: "NVIDIA H100 80GB HBM3" → h100, "NVIDIA A100-SXM4-80GB" → a100, "TPU v4" → tpu-v4,
    "TPU v5 lite" → tpu-v5e, "TPU v5" / "TPU v5p" → tpu-v5p, "TPU v6 lite" → tpu-v6e.
    Grace-Hopper "GH200" (H100 compute, other memory) is not matched. H100 PCIe/NVL kinds map to
    the SXM figures (an overestimate of their peak).
    """
    kind = device_kind.strip().lower()
    if not kind or kind.startswith("cpu") or "gh200" in kind:
        return None
    for gpu in ("h200", "h100", "a100"):
        if gpu in kind:
            return HARDWARE[gpu]
    if kind.startswith("tpu"):
        compact = kind.replace(" ", "")
        if compact.startswith("tpuv6") or "trillium" in kind:
            return HARDWARE["tpu-v6e"]
        if compact.startswith("tpuv5lite") or compact.startswith("tpuv5e"):
            return HARDWARE["tpu-v5e"]
        if compact.startswith("tpuv5"):
            return HARDWARE["tpu-v5p"]
        if compact.startswith("tpuv4"):
            return HARDWARE["tpu-v4"]
    return None


def host_memory_bytes() -> int:
    """Physical RAM of this host in bytes (POSIX ``sysconf``; no psutil)."""
    return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))


def cpu_profile(
    peak_flops: float,
    memory_bytes: int,
    *,
    copy_bandwidth_bytes_per_s: float = CPU_COPY_BANDWIDTH_BYTES_PER_S,
) -> HardwareProfile:
    """A profile for this host's CPU from a measured matmul ``peak_flops`` (FLOP/s).

    The same figure serves bf16 and f32 (bf16 matmuls are no faster on the CPUs measured, see
    FACTS.md). Simulated devices share the host (``devices_share_host``), so the estimator
    divides the peak and the memory by the number of devices.
    """
    if not peak_flops > 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    return HardwareProfile(
        name=CPU_NAME,
        peak_flops_bf16=float(peak_flops),
        peak_flops_f32=float(peak_flops),
        memory_bytes=int(memory_bytes),
        hbm_bandwidth_bytes_per_s=copy_bandwidth_bytes_per_s,
        interconnect_bandwidth_bytes_per_s=copy_bandwidth_bytes_per_s,
        source="measured: median FLOP/s of a jitted matmul on this host (scaling.measure); "
        "memory from os.sysconf; bandwidths an unmeasured order of magnitude",
        devices_share_host=True,
    )


def default_cpu_cache_path() -> Path:
    return Path.home() / ".cache" / "scaling" / "cpu_peak.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_cpu_peak(path: str | Path | None = None, *, dtype: str = "float32") -> float | None:
    """The cached calibration (FLOP/s) for this hostname and ``dtype``, or ``None``.

    The cache is JSON ``{hostname: {dtype: {"peak_flops": float, "measured_unix_s": float}}}``.
    An unreadable or malformed cache counts as empty.
    """
    data = _read_cache(Path(path) if path is not None else default_cpu_cache_path())
    entry = data.get(socket.gethostname(), {}).get(dtype)
    if not isinstance(entry, dict):
        return None
    peak = entry.get("peak_flops")
    return float(peak) if isinstance(peak, int | float) and peak > 0 else None


def store_cpu_peak(
    peak_flops: float, path: str | Path | None = None, *, dtype: str = "float32"
) -> Path:
    """Record ``peak_flops`` (FLOP/s) for this hostname and ``dtype``; returns the path.

    Written atomically (temporary file + rename); other hosts' entries are kept.
    """
    if not peak_flops > 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    target = Path(path) if path is not None else default_cpu_cache_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    data = _read_cache(target)
    host = data.setdefault(socket.gethostname(), {})
    if not isinstance(host, dict):
        host = data[socket.gethostname()] = {}
    host[dtype] = {"peak_flops": float(peak_flops), "measured_unix_s": time.time()}
    write_json_atomic(data, target, indent=2)
    return target
