"""Inference estimates for KV-cache decoding (``scaling.generate``): KV-cache bytes per device,
prefill FLOPs, and decode as a roofline: each step reads every weight and the whole cache once,
so at small batch it is bound by memory bandwidth, and it turns compute-bound at the batch where
FLOPs ÷ peak catch up with bytes ÷ bandwidth ("How To Scale Your Model", jax-ml/scaling-book,
inference chapter; Pope et al. 2022, "Efficiently Scaling Transformer Inference", section 2).

The counts follow what ``scaling.generate`` executes, not an ideal kernel:
- the cache is preallocated for ``prompt_len + gen_len`` slots and every step attends over all
  of them (masked), so attention FLOPs and KV bytes use the full length S = P + G;
- the prefill computes logits at every prompt position;
- parameters are float32 and read as such (cast to the compute dtype at use); the cache is in
  the compute dtype;
- per device: rows split over ``data``, kv heads (and the tensor-split weights) over
  ``tensor``; under fsdp the weights are gathered before use, so every device still reads a
  full (tensor-split) copy per step.

Units: bytes, FLOPs, seconds. Letters: L layers, h query heads, h_kv kv heads, k head width,
d model width, V vocabulary, N_matmul matmul parameters (``params.param_counts``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from scaling import sharding
from scaling.config import ModelConfig
from scaling.estimate.hardware import HardwareProfile
from scaling.estimate.mesh import DTYPE_BYTES, F32_BYTES, ceil, effective_mesh
from scaling.estimate.params import held_scalars, param_counts
from scaling.roles import Role, parameters


def kv_cache_bytes(cfg: ModelConfig, *, batch: int, max_len: int) -> int:
    """Bytes of the whole cache: keys and values, ``(L, b, h_kv, S, k)`` each, in the compute
    dtype: 2·L·b·h_kv·S·k·c."""
    return 2 * cfg.n_layers * batch * cfg.kv_heads * max_len * cfg.d_head * DTYPE_BYTES[cfg.dtype]


def kv_cache_bytes_per_device(
    cfg: ModelConfig, *, batch: int, max_len: int, mode: str, mesh: tuple[int, int] | None
) -> int:
    """One device's share: rows over ``data``; kv heads over ``tensor`` when it divides them
    (``generate.cache_sharding``), else every tensor device holds all heads."""
    data, tensor = effective_mesh(mode, mesh)
    heads = ceil(cfg.kv_heads / tensor) if cfg.kv_heads % tensor == 0 else cfg.kv_heads
    rows = ceil(batch / data)
    return 2 * cfg.n_layers * rows * heads * max_len * cfg.d_head * DTYPE_BYTES[cfg.dtype]


def attention_flops_per_token(cfg: ModelConfig, keys: int) -> float:
    """Scores q·kᵀ (2·h·k per key) and weights·v (2·h·k per key), every layer: 4·L·h·k·keys."""
    return 4.0 * cfg.n_layers * cfg.n_heads * cfg.d_head * keys


def forward_flops_per_token(cfg: ModelConfig, keys: int) -> float:
    """Matmul FLOPs of one token's forward pass: 2·N_matmul + attention over ``keys`` slots
    (Kaplan et al. 2020, section 2.1: a forward pass costs 2 FLOPs per matmul parameter)."""
    return 2.0 * param_counts(cfg).matmul + attention_flops_per_token(cfg, keys)


def prefill_flops(cfg: ModelConfig, *, batch: int, prompt_len: int, max_len: int) -> float:
    """All devices: every prompt position's forward pass, attending over the S cache slots."""
    return batch * prompt_len * forward_flops_per_token(cfg, max_len)


def weight_bytes_read_per_step(
    cfg: ModelConfig, *, mode: str, mesh: tuple[int, int] | None
) -> float:
    """Parameter bytes one device reads per forward step: every weight it computes with, split
    over ``tensor`` where the mode splits the work; a data split (fsdp) does not reduce it (the
    weights are gathered). An untied token table and a learned position table are gathered
    (b rows), not read whole, so they are left out."""
    _, tensor = effective_mesh(mode, mesh)
    split = sharding.splits_tensor_work(mode)
    read_mode, read_mesh = ("tp", (1, tensor)) if split else ("none", (1, 1))
    gathered = {Role.POSITION} | (set() if cfg.tied_embeddings else {Role.EMBED})
    scalars = sum(
        held_scalars(p, read_mode, read_mesh) for p in parameters(cfg) if p.role not in gathered
    )
    return float(scalars * F32_BYTES)


@dataclass(frozen=True)
class DecodeEstimate:
    """Prefill and decode of ``batch`` prompts of ``prompt_len`` tokens continued by ``gen_len``
    tokens, per device unless the name says ``global``."""

    model: str
    batch: int
    prompt_len: int
    gen_len: int
    mode: str
    mesh: tuple[int, int]
    dtype: str
    hardware: str
    kv_cache_bytes_per_device: int
    weight_bytes_per_step: float  # parameters read per forward step
    prefill_flops_global: float
    prefill_s: float  # roofline: max(FLOPs / peak, bytes / bandwidth)
    decode_flops_per_step: float  # one new token for every row
    decode_bytes_per_step: float  # weights + the whole cache
    decode_step_s: float  # roofline per step (= per-token latency)
    decode_tokens_per_s: float  # batch / decode_step_s, all rows
    decode_bound: str  # "memory" or "compute"
    compute_bound_batch: float | None  # batch where decode turns compute-bound (None: never)
    peak_flops_per_s: float  # per device
    bandwidth_bytes_per_s: float  # per device

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def decode_estimate(
    cfg: ModelConfig,
    hardware: HardwareProfile,
    *,
    batch: int,
    prompt_len: int,
    gen_len: int,
    mode: str = "none",
    mesh: tuple[int, int] | None = None,
) -> DecodeEstimate:
    """The roofline of one generation (see the module doc for what is counted)."""
    if batch < 1 or prompt_len < 1 or gen_len < 1:
        raise ValueError(
            f"batch, prompt length and generated length must be >= 1, got {batch}, "
            f"{prompt_len}, {gen_len}"
        )
    max_len = prompt_len + gen_len
    if max_len > cfg.max_seq_len:
        raise ValueError(
            f"prompt {prompt_len} + generated {gen_len} tokens exceed the context of {cfg.name} "
            f"({cfg.max_seq_len})"
        )
    data, tensor = m = effective_mesh(mode, mesh)
    if batch % data:
        raise ValueError(f"batch {batch} is not divisible by data={data}; use a multiple of it")
    n = data * tensor
    share = n if hardware.devices_share_host else 1
    peak = hardware.peak_flops(cfg.dtype) / share
    bandwidth = hardware.hbm_bandwidth_bytes_per_s / share
    weights = weight_bytes_read_per_step(cfg, mode=mode, mesh=mesh)
    kv = kv_cache_bytes_per_device(cfg, batch=batch, max_len=max_len, mode=mode, mesh=mesh)
    kv_per_row = kv / (batch // data)
    prefill = prefill_flops(cfg, batch=batch, prompt_len=prompt_len, max_len=max_len)
    prefill_s = max(prefill / n / peak, (weights + kv) / bandwidth)
    per_token = forward_flops_per_token(cfg, max_len)
    flops = batch * per_token / n
    moved = weights + kv
    step_s = max(flops / peak, moved / bandwidth)
    # compute time = memory time: b·F/(n·peak) = (W + b/D·kv_row)/bw, solved for b
    slope = per_token / n / peak - kv_per_row / data / bandwidth
    crossover = weights / bandwidth / slope if slope > 0 else None
    return DecodeEstimate(
        model=cfg.name, batch=batch, prompt_len=prompt_len, gen_len=gen_len, mode=mode,
        mesh=m, dtype=cfg.dtype, hardware=hardware.name, kv_cache_bytes_per_device=kv,
        weight_bytes_per_step=weights, prefill_flops_global=prefill, prefill_s=prefill_s,
        decode_flops_per_step=flops, decode_bytes_per_step=moved, decode_step_s=step_s,
        decode_tokens_per_s=batch / step_s,
        decode_bound="compute" if flops / peak >= moved / bandwidth else "memory",
        compute_bound_batch=crossover, peak_flops_per_s=peak, bandwidth_bytes_per_s=bandwidth,
    )  # fmt: skip
