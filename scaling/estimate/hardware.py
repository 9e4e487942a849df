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
import math
import os
import re
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
_NVIDIA_B200 = (
    "NVIDIA HGX B200 datasheet, per GPU: bf16 2.25 PF and TF32 1.1 PF dense (4.5 / 2.2 PF with "
    "sparsity), 180 GB HBM3e, 7.7 TB/s; NVLink 5 1.8 TB/s bidirectional per GPU, 900 GB/s per "
    "direction used here"
)
_NVIDIA_GH200 = (
    "NVIDIA GH200 Grace Hopper Superchip datasheet, the Hopper GPU: bf16 989 TF and TF32 495 TF "
    "dense (1979 / 989 TF with sparsity), 96 GB HBM3 at 4 TB/s (the 144 GB HBM3e part: 4.9 "
    "TB/s); NVLink 900 GB/s bidirectional GPU-to-GPU, 450 GB/s per direction used here"
)
_NVIDIA_L4 = (
    "NVIDIA L4 Tensor Core GPU datasheet: bf16 121 TF and TF32 60 TF dense (242 / 120 TF with "
    "sparsity), 24 GB GDDR6, 300 GB/s; no NVLink: PCIe Gen4 x16 64 GB/s bidirectional, 32 GB/s "
    "per direction used here"
)
_NVIDIA_A10G = (
    "AWS publishes no A10G datasheet; Baseten, 'NVIDIA A10 vs A10G for ML model inference': "
    "tensor bf16 70 TF and TF32 35 TF dense (the A10's are 125 / 62.5 TF), 24 GB GDDR6, "
    "600 GB/s; PCIe Gen4 x16, 32 GB/s per direction used here"
)
_AMD_MI300X = (
    "AMD Instinct MI300X data sheet: bf16 1307 TF dense (2615 TF with sparsity), FP32 matrix "
    "163 TF (used for f32: whether XLA on ROCm runs f32 dots as TF32 is not checked), 192 GB "
    "HBM3, 5.3 TB/s; Infinity Fabric 896 GB/s aggregate peer bandwidth (7 links), 448 GB/s per "
    "direction used here"
)
_SCALING_BOOK = (
    "How To Scale Your Model (jax-ml/scaling-book, tpus.md, current revision) and Cloud TPU docs"
)

HARDWARE: dict[str, HardwareProfile] = {
    p.name: p
    for p in (
        HardwareProfile("h100", 989 * TERA, 495 * TERA, 80 * GB, 3.35e12, 450 * GB, _NVIDIA_H100),
        HardwareProfile("h200", 989 * TERA, 495 * TERA, 141 * GB, 4.8e12, 450 * GB, _NVIDIA_H200),
        HardwareProfile("a100", 312 * TERA, 156 * TERA, 80 * GB, 2.039e12, 300 * GB, _NVIDIA_A100),
        HardwareProfile("b200", 2250 * TERA, 1100 * TERA, 180 * GB, 7.7e12, 900 * GB, _NVIDIA_B200),
        HardwareProfile("gh200", 989 * TERA, 495 * TERA, 96 * GB, 4.0e12, 450 * GB, _NVIDIA_GH200),
        HardwareProfile("l4", 121 * TERA, 60 * TERA, 24 * GB, 3.0e11, 32 * GB, _NVIDIA_L4),
        HardwareProfile("a10g", 70 * TERA, 35 * TERA, 24 * GB, 6.0e11, 32 * GB, _NVIDIA_A10G),
        HardwareProfile("mi300x", 1307 * TERA, 163 * TERA, 192 * GB, 5.3e12, 448 * GB, _AMD_MI300X),
        # TPU f32 peak = bf16 peak: JAX's default precision runs f32 dots as one bf16 pass.
        HardwareProfile(
            "tpu-v4",
            275 * TERA,
            275 * TERA,
            32 * GiB,
            1.2e12,
            9e10,
            f"{_SCALING_BOOK}: v4 275 TF bf16, 32 GiB, 1.2 TB/s; ICI 9e10 B/s (v4 is not in the "
            "current revision's table: its earlier 4.5e10 one-way, ×2 for both ring directions)",
        ),
        HardwareProfile(
            "tpu-v5e",
            197 * TERA,
            197 * TERA,
            16 * GiB,
            8.19e11,
            9e10,
            f"{_SCALING_BOOK}: v5e 197 TF bf16, 16 GiB, 819 GB/s, ICI 9e10 B/s (W_ici; the "
            "earlier revision's bidirectional 1e11 is ~11 % higher)",
        ),
        HardwareProfile(
            "tpu-v5p",
            459 * TERA,
            459 * TERA,
            95 * GiB,
            2.765e12,
            1.8e11,
            f"{_SCALING_BOOK}: v5p 459 TF bf16, 95 GiB, 2.765 TB/s, ICI 1.8e11 B/s (W_ici)",
        ),
        HardwareProfile(
            "tpu-v6e",
            918 * TERA,
            918 * TERA,
            32 * GiB,
            1.64e12,
            1.8e11,
            f"{_SCALING_BOOK}: v6e (Trillium) 918 TF bf16, 32 GiB, 1.64 TB/s, ICI 1.8e11 B/s "
            "(W_ici)",
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


# device_kind patterns (lower case, whole words) → profile; first match wins, so the Grace
# Hopper "gh200" is tested before "h200" and Grace Blackwell "gb200" is never read as "b200".
_KIND_PATTERNS = (
    (r"\bgh200\b", "gh200"),
    (r"\bgb200\b", None),
    (r"\bb200\b", "b200"),
    (r"\bh200\b", "h200"),
    (r"\bh100\b", "h100"),
    (r"\ba100\b", "a100"),
    (r"\ba10g\b", "a10g"),
    (r"\bl4\b", "l4"),
    (r"\bmi300x\b", "mi300x"),
)


def match_device_kind(device_kind: str) -> HardwareProfile | None:
    """Map ``jax.Device.device_kind`` to a profile; ``None`` for cpu and unknown kinds.

    Examples: "NVIDIA H100 80GB HBM3" → h100, "NVIDIA A100-SXM4-80GB" → a100, "NVIDIA GH200
    480GB" → gh200, "NVIDIA B200" → b200, "NVIDIA L4" → l4, "NVIDIA A10G" → a10g, "AMD Instinct
    MI300X" → mi300x, "TPU v4" → tpu-v4, "TPU v5 lite" → tpu-v5e, "TPU v5" / "TPU v5p" →
    tpu-v5p, "TPU v6 lite" → tpu-v6e. H100 PCIe/NVL kinds map to the SXM figures (an
    overestimate of their peak). An unknown kind is never read as a CPU: the caller measures
    or is told its peak (``scaling.measure.device_peak``).
    """
    kind = device_kind.strip().lower()
    if not kind or kind.startswith("cpu"):
        return None
    for pattern, name in _KIND_PATTERNS:
        if re.search(pattern, kind):
            return HARDWARE[name] if name else None
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


def validate_peaks(peak_tflops: float | None, hbm_gbps: float | None) -> None:
    """``--peak-tflops`` / ``--hbm-gbps``: None or a positive finite number."""
    for label, value in (("peak-tflops", peak_tflops), ("hbm-gbps", hbm_gbps)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{label} must be a positive number, got {value}")


def custom_profile(
    base: HardwareProfile | None,
    *,
    name: str,
    peak_tflops: float | None = None,
    hbm_gbps: float | None = None,
    memory_bytes: int | None = None,
    source: str = "",
) -> HardwareProfile:
    """A profile for an accelerator without a datasheet entry, or ``base`` with its peak
    (``peak_tflops``: dense TFLOP/s, used for bf16 and f32 alike) and HBM bandwidth
    (``hbm_gbps``: GB/s) replaced. Unknown figures are infinite bandwidths (their time
    terms drop out) and 0 bytes of memory (capacity unknown, ``fits`` None)."""
    validate_peaks(peak_tflops, hbm_gbps)
    bf16 = base.peak_flops_bf16 if base else math.inf
    f32 = base.peak_flops_f32 if base else math.inf
    if peak_tflops is not None:
        bf16 = f32 = peak_tflops * TERA
    return HardwareProfile(
        name=name,
        peak_flops_bf16=bf16,
        peak_flops_f32=f32,
        memory_bytes=int(
            memory_bytes if memory_bytes is not None else (base.memory_bytes if base else 0)
        ),
        hbm_bandwidth_bytes_per_s=hbm_gbps * GB
        if hbm_gbps
        else (base.hbm_bandwidth_bytes_per_s if base else math.inf),
        interconnect_bandwidth_bytes_per_s=base.interconnect_bandwidth_bytes_per_s
        if base
        else math.inf,
        source=source or (base.source if base else "given on the command line"),
        devices_share_host=base.devices_share_host if base else False,
    )


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
