"""The roofline: everything the estimator predicts for one configuration, and the step time and
MFU ceiling it implies on a hardware profile.

Overlap model (per device, one step):

- compute: hardware matmul FLOPs / (peak · η_compute). Each matmul is its own roofline
  (``traffic.matmuls``): max(FLOPs / peak, operand and result bytes / HBM bandwidth); at
  training batch sizes on accelerators they are compute-bound and their operands stream under
  their FLOPs, while narrow ones (small models, CPU hosts) wait on memory: that wait is
  ``matmul_memory_s``, counted with the memory term.
- memory: HBM bytes of the memory-bound work (``traffic``: activations written and re-read,
  unfused attention scores, gradients, AdamW, casts) / (HBM bandwidth · η_hbm). These
  kernels run between the matmuls, not under them, so the device time is compute + memory.
- communication: collective bytes sent / (link bandwidth · η_link). XLA issues collectives
  asynchronously, so at best they hide under the device time: the predicted step is
  max(compute + memory, communication), the upper bound their sum ("How To Scale Your
  Model", roofline chapter: max for full overlap, sum for none). Simulated devices on one host
  (``devices_share_host``) copy with the same cores that compute, so there nothing overlaps
  and the predicted step is the sum.
- binding term: ``communication`` when it exceeds the device time, else the larger of
  ``compute`` and ``memory``.

η (``Efficiency``) are 1 for the datasheet roofline (an upper bound on speed); ``scaling
estimate --calibrate DIR`` fits them to measured runs (``calibrate``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from scaling.config import ModelConfig
from scaling.estimate.comm import CommEstimate, comm_bytes_per_device
from scaling.estimate.flops import FlopCounts, elementwise_flops, flop_counts
from scaling.estimate.hardware import HardwareProfile
from scaling.estimate.memory import MemoryEstimate, memory_per_device
from scaling.estimate.mesh import effective_mesh, tensor_split, validate
from scaling.estimate.params import ParamCounts, param_counts
from scaling.estimate.traffic import TrafficEstimate, hbm_traffic_per_device, matmuls


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of a profile's peaks (dimensionless); 1 is the datasheet roofline.
    ``overhead_s``: a fixed cost per step (dispatch, host work), seconds."""

    compute: float = 1.0
    hbm: float = 1.0
    link: float = 1.0
    overhead_s: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


DATASHEET = Efficiency()


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
    traffic: TrafficEstimate | None = None  # HBM bytes per device per step
    memory_s: float = 0.0  # HBM traffic time of the memory-bound (non-matmul) work
    matmul_memory_s: float = 0.0  # time memory-bound matmuls wait beyond their FLOPs
    efficiency: Efficiency = DATASHEET

    @property
    def device_s(self) -> float:
        """Time on the device's own cores and memory: compute + memory-bound work + overhead."""
        return self.compute_s + self.memory_time_s + self.efficiency.overhead_s

    @property
    def memory_time_s(self) -> float:
        """All time the device waits on its memory: memory-bound work and matmuls."""
        return self.memory_s + self.matmul_memory_s

    @property
    def predicted_step_s(self) -> float:
        """Communication overlapped with the device's work (the module's overlap model); on a
        shared host nothing overlaps."""
        if self.hardware.devices_share_host:
            return self.device_s + self.comm_s
        return max(self.device_s, self.comm_s)

    @property
    def predicted_step_s_upper(self) -> float:
        """No overlap of communication at all."""
        return self.device_s + self.comm_s

    @property
    def binding(self) -> str:
        """The term the predicted step waits on: compute, memory or communication."""
        if self.comm_s > self.compute_s + self.memory_time_s:
            return "communication"
        return "compute" if self.compute_s >= self.memory_time_s else "memory"

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
            "n_params_active": self.params.active,
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
            "hbm_bytes_per_device_per_step": self.traffic.total if self.traffic else 0.0,
            "hbm_bytes_by_kind": self.traffic.to_dict() if self.traffic else {},
            "predicted_compute_s": self.compute_s,
            "predicted_memory_s": self.memory_time_s,
            "predicted_matmul_memory_s": self.matmul_memory_s,
            "predicted_comm_s": self.comm_s,
            "predicted_binding": self.binding,
            "efficiency": self.efficiency.to_dict(),
            "predicted_step_s": self.predicted_step_s,
            "predicted_step_s_upper": self.predicted_step_s_upper,
            "predicted_mfu": self.predicted_mfu,
            "peak_flops_per_device": self.peak_flops_per_device,
            "hbm_bandwidth_bytes_per_s": self.hardware.hbm_bandwidth_bytes_per_s,
            "interconnect_bandwidth_bytes_per_s": self.hardware.interconnect_bandwidth_bytes_per_s,
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
    efficiency: Efficiency = DATASHEET,
    loss_chunk: int = 0,
) -> Estimate:
    """Parameters, FLOPs, memory, communication and roofline step time of one training step.

    ``batch`` is the global batch in sequences. Compute time = hardware FLOPs per device / peak
    in ``cfg.dtype``; the batch is split over data and, under tp/fsdp_tp, the work over tensor
    (a tensor axis under dp/fsdp repeats the work). Memory time = HBM bytes per device
    (``traffic``) / ``hardware.hbm_bandwidth_bytes_per_s``. Communication time = bytes sent per
    device / ``hardware.interconnect_bandwidth_bytes_per_s``. Each divided by its ``efficiency``
    factor; combined per the module's overlap model. On a shared host (``cpu``) the devices
    split the one peak and the one memory bandwidth. MFU uses model FLOPs in the
    ``causal_halving`` convention, so halving lowers it. The elementwise FLOPs (XLA's
    convention, ``elementwise_flops``) are reported per device but left out of the compute
    time: they run on vector units, not at the matmul peak. ``loss_chunk``: the chunked
    loss's memory (``memory.activation_terms``); its read-out recompute is not in the FLOPs.
    """
    validate(cfg, mode, mesh, batch, seq)
    m = effective_mesh(mode, mesh)
    n = m[0] * m[1]
    flops = flop_counts(cfg, batch=batch, seq=seq, causal_halving=causal_halving)
    memory = memory_per_device(
        cfg, mode=mode, mesh=m, batch=batch, seq=seq, hardware=hardware, loss_chunk=loss_chunk
    )
    comm = comm_bytes_per_device(cfg, mode=mode, mesh=m, batch=batch, seq=seq)
    peak, hbm = hardware.peak_flops(cfg.dtype), hardware.hbm_bandwidth_bytes_per_s
    if hardware.devices_share_host:
        peak, hbm = peak / n, hbm / n
    workers = m[0] * tensor_split(mode, m[1])  # devices that split the work (not replicas)
    hardware_per_device = flops.hardware_per_step / workers
    traffic = hbm_traffic_per_device(cfg, mode=mode, mesh=m, batch=batch, seq=seq)
    flop_rate, byte_rate = peak * efficiency.compute, hbm * efficiency.hbm
    products = matmuls(cfg, mode=mode, mesh=m, batch=batch, seq=seq)
    matmul_wait = sum(max(0.0, p.bytes / byte_rate - p.flops / flop_rate) for p in products)
    link = hardware.interconnect_bandwidth_bytes_per_s * efficiency.link
    comm_s = 0.0 if comm.total == 0 else comm.total / link
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
        compute_s=hardware_per_device / flop_rate,
        comm_s=comm_s,
        traffic=traffic,
        memory_s=traffic.total / byte_rate,
        matmul_memory_s=matmul_wait,
        efficiency=efficiency,
        elementwise_flops_per_device=elementwise_flops(
            cfg, batch=batch, seq=seq, mode=mode, mesh=m
        ).total,
    )
