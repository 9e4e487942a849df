"""The roofline: everything the estimator predicts for one configuration, and the step time and
MFU ceiling it implies on a hardware profile."""

from __future__ import annotations

from dataclasses import dataclass

from scaling.config import ModelConfig
from scaling.estimate.comm import CommEstimate, comm_bytes_per_device
from scaling.estimate.flops import FlopCounts, elementwise_flops, flop_counts
from scaling.estimate.hardware import HardwareProfile
from scaling.estimate.memory import MemoryEstimate, memory_per_device
from scaling.estimate.mesh import effective_mesh, tensor_split, validate
from scaling.estimate.params import ParamCounts, param_counts


@dataclass(frozen=True)
class Estimate:
    """Everything the estimator predicts for one configuration (see ``estimate``)."""

    cfg: ModelConfig
    mode: str
    mesh: tuple[int, int]  # effective (data, tensor)
    n_devices: int
    batch: int
    seq: int
    hardware: HardwareProfile
    params: ParamCounts
    flops: FlopCounts
    memory: MemoryEstimate
    comm: CommEstimate
    peak_flops_per_device: float  # FLOP/s in the compute dtype (a share of a shared host)
    hardware_flops_per_device: float  # per step
    model_flops_per_device: float  # per step
    compute_s: float
    comm_s: float
    elementwise_flops_per_device: float = 0.0  # per step, XLA's convention, not in compute_s

    @property
    def predicted_step_s(self) -> float:
        """Roofline lower bound: compute and communication fully overlapped."""
        return max(self.compute_s, self.comm_s)

    @property
    def predicted_step_s_upper(self) -> float:
        """Roofline upper bound: no overlap at all."""
        return self.compute_s + self.comm_s

    @property
    def predicted_mfu(self) -> float:
        """MFU ceiling: model FLOPs per device / (lower-bound step time · peak)."""
        denominator = self.predicted_step_s * self.peak_flops_per_device
        return self.model_flops_per_device / denominator if denominator > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        """A flat, JSON-serialisable summary (bytes, FLOPs, seconds, FLOP/s)."""
        return {
            "size": self.cfg.name,
            "family": self.cfg.family,
            "dtype": self.cfg.dtype,
            "remat": self.cfg.remat,
            "mode": self.mode,
            "mesh": list(self.mesh),
            "n_devices": self.n_devices,
            "batch": self.batch,
            "seq": self.seq,
            "tokens_per_step": self.flops.tokens_per_step,
            "n_params": self.params.total,
            "n_params_non_embedding": self.params.non_embedding,
            "n_params_matmul": self.params.matmul,
            "flops_per_token": self.flops.model_per_token,
            "flops_per_step": self.flops.model_per_step,
            "hardware_flops_per_step": self.flops.hardware_per_step,
            "hardware_flops_per_device": self.hardware_flops_per_device,
            "elementwise_flops_per_step": self.flops.elementwise_per_step,
            "elementwise_flops_per_device": self.elementwise_flops_per_device,
            "attention_convention": self.flops.attention_convention,
            "memory_per_device_bytes": self.memory.to_dict(),
            "memory_capacity_bytes": self.memory.capacity_bytes,
            "fits": self.memory.fits,
            "comm_bytes_per_device_per_step": self.comm.total,
            "comm_bytes_by_collective": {
                k: v for k, v in self.comm.to_dict().items() if k != "total"
            },
            "predicted_compute_s": self.compute_s,
            "predicted_comm_s": self.comm_s,
            "predicted_step_s": self.predicted_step_s,
            "predicted_step_s_upper": self.predicted_step_s_upper,
            "predicted_mfu": self.predicted_mfu,
            "peak_flops_per_device": self.peak_flops_per_device,
            "hardware": self.hardware.name,
        }


def estimate(
    cfg: ModelConfig,
    *,
    mode: str,
    mesh: tuple[int, int] | None,
    batch: int,
    seq: int,
    hardware: HardwareProfile,
    causal_halving: bool = False,
) -> Estimate:
    """Parameters, FLOPs, memory, communication and roofline step time of one training step.

    ``batch`` is the global batch in sequences. Compute time = hardware FLOPs per device / peak
    in ``cfg.dtype``; the batch is split over data and, under tp/fsdp_tp, the work over tensor
    (a tensor axis under dp/fsdp repeats the work). Communication time = bytes sent per device /
    ``hardware.interconnect_bandwidth_bytes_per_s``. The step time lies between max(compute,
    comm) (full overlap) and their sum ("How To Scale Your Model", roofline chapter). On a
    shared host (``cpu``) the devices split the one peak. MFU uses model FLOPs in the
    ``causal_halving`` convention, so halving lowers it. The elementwise FLOPs (XLA's
    convention, ``elementwise_flops``) are reported per device but left out of the compute
    time: they run on vector units, not at the matmul peak.
    """
    validate(cfg, mode, mesh, batch, seq)
    m = effective_mesh(mode, mesh)
    n = m[0] * m[1]
    flops = flop_counts(cfg, batch=batch, seq=seq, causal_halving=causal_halving)
    memory = memory_per_device(cfg, mode=mode, mesh=m, batch=batch, seq=seq, hardware=hardware)
    comm = comm_bytes_per_device(cfg, mode=mode, mesh=m, batch=batch, seq=seq)
    peak = hardware.peak_flops(cfg.dtype)
    if hardware.devices_share_host:
        peak /= n
    workers = m[0] * tensor_split(mode, m[1])  # devices that split the work (not replicas)
    hardware_per_device = flops.hardware_per_step / workers
    bandwidth = hardware.interconnect_bandwidth_bytes_per_s
    comm_s = 0.0 if comm.total == 0 else comm.total / bandwidth
    return Estimate(
        cfg=cfg,
        mode=mode,
        mesh=m,
        n_devices=n,
        batch=batch,
        seq=seq,
        hardware=hardware,
        params=param_counts(cfg),
        flops=flops,
        memory=memory,
        comm=comm,
        peak_flops_per_device=peak,
        hardware_flops_per_device=hardware_per_device,
        model_flops_per_device=flops.model_per_step / n,
        compute_s=hardware_per_device / peak,
        comm_s=comm_s,
        elementwise_flops_per_device=elementwise_flops(
            cfg, batch=batch, seq=seq, mode=mode, mesh=m
        ).total,
    )
