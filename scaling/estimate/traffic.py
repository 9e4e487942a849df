"""HBM traffic per device per training step: the bytes the memory-bound part of a step moves
between a device's memory and its cores. Read by the roofline (``roofline.estimate``) with the
profile's ``hbm_bandwidth_bytes_per_s``.

What counts (bytes per device; the sizes are those of ``memory.activation_terms`` and
``params.held_groups``, so sharding and dtypes follow the same rules):

- activations: every tensor the backward needs is written once in the forward and read once
  in the backward: 2 × the bytes remat ``none`` saves (``activation_terms``). Under remat the
  layers' internals are still written and read once (by the recompute instead of the saving
  forward), and the saved layer inputs add 2·L·b·t·d·c.
- attention scores beyond the saved ones (the model's attention is unfused, b·h·t² elements
  per layer): the forward writes the raw float32 scores and reads them twice (row max, exp):
  12 bytes; the backward writes and reads the weights' gradient (c) and the scores' gradient
  (float32): 2·c + 8. Remat recomputes the forward's 12.
- parameters and optimizer, per held parameter: the float32 gradient written in the backward
  (4), AdamW reading parameter, gradient and both moments (16) and writing parameter and
  moments (12); with bf16 compute the gradient is produced in bf16 first (written and read,
  2·c) and each used weight is cast once (read 4, write c).

Matmul operands are not in this total: each matmul is its own roofline (``matmuls``): it
takes max(FLOPs / peak, bytes / bandwidth), so a large one is compute-bound and its operands
stream under its FLOPs, while a small one (narrow models, CPU hosts) waits on memory.
Collective buffers belong to the communication term.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

from scaling.config import ModelConfig
from scaling.estimate.memory import activation_terms
from scaling.estimate.mesh import DTYPE_BYTES, F32_BYTES, effective_mesh, tensor_split, validate
from scaling.estimate.params import held_groups, params_per_device

GRAD_WRITE = F32_BYTES  # float32 gradient written once
ADAMW_BYTES = 4 * F32_BYTES + 3 * F32_BYTES  # read p, g, m, v; write p, m, v
SCORE_FORWARD = 3 * F32_BYTES  # raw scores written, read for the row max and for exp
SCORE_BACKWARD_F32 = 2 * F32_BYTES  # the scores' gradient written and read


@dataclass(frozen=True)
class Matmul:
    """``count`` executions per device per step of an (m, k) @ (k, n) product whose operands
    and result move once each, ``bytes_per_element`` wide."""

    name: str
    count: float
    m: int
    k: int
    n: int
    bytes_per_element: int

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n * self.count

    @property
    def bytes(self) -> float:
        return (
            self.bytes_per_element
            * (self.m * self.k + self.k * self.n + self.m * self.n)
            * self.count
        )


def matmuls(
    cfg: ModelConfig, *, mode: str, mesh: tuple[int, int] | None, batch: int, seq: int
) -> tuple[Matmul, ...]:
    """Every matmul one device executes in a training step, grouped by shape.

    Forward, and in the backward the input and weight gradients (3 products of the same
    FLOPs and sizes); remat ``full`` recomputes every layer product but w2's, ``dots`` the two
    attention einsums (see ``flops.remat_flops_per_token``). Rows of the projections: b·t (the
    batch split over data); heads, FFN width and vocabulary split over tensor where the mode
    splits them. The FLOPs sum to ``Estimate.hardware_flops_per_device``."""
    validate(cfg, mode, mesh, batch, seq)
    m = effective_mesh(mode, mesh)
    ts = tensor_split(mode, m[1])
    c = DTYPE_BYTES[cfg.dtype]
    rows, t, d, k = math.ceil(batch / m[0]) * seq, seq, cfg.d_model, cfg.d_head
    heads, kv = math.ceil(cfg.n_heads / ts), math.ceil(cfg.kv_heads / ts)
    ffn = math.ceil(cfg.d_ff / ts)
    full, dots = cfg.remat == "full", cfg.remat == "dots"
    layer = 3 * cfg.n_layers + (cfg.n_layers if full else 0)
    projections = [("q", d, heads * k), ("k", d, kv * k), ("v", d, kv * k), ("o", heads * k, d),
                   ("ffn in", d, ffn)]  # fmt: skip
    if cfg.ffn_gated:  # SwiGLU, GeGLU: a gate matrix beside the input matrix
        projections.append(("ffn gate", d, ffn))
    out = [Matmul(name, layer, rows, k_in, n_out, c) for name, k_in, n_out in projections]
    out.append(Matmul("ffn out", 3 * cfg.n_layers, rows, ffn, d, c))
    per_head = cfg.n_layers * math.ceil(batch / m[0]) * heads * (3 + (1 if full or dots else 0))
    out += [Matmul("attention q·kᵀ", per_head, t, k, t, c),
            Matmul("attention weights·v", per_head, t, t, k, c)]  # fmt: skip
    out.append(Matmul("read-out", 3, rows, d, math.ceil(cfg.vocab_size / ts), c))
    return tuple(out)


@dataclass(frozen=True)
class TrafficEstimate:
    """HBM bytes per device per step, by what moves them (see the module docstring)."""

    activations: float
    attention_scores: float
    parameters: float  # gradients, AdamW, bf16 casts

    @property
    def total(self) -> float:
        return self.activations + self.attention_scores + self.parameters

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def hbm_traffic_per_device(
    cfg: ModelConfig, *, mode: str, mesh: tuple[int, int] | None, batch: int, seq: int
) -> TrafficEstimate:
    """Bytes one device moves to and from its memory in one training step (memory-bound
    work only; see the module docstring for what is counted and why)."""
    validate(cfg, mode, mesh, batch, seq)
    m = effective_mesh(mode, mesh)
    c = DTYPE_BYTES[cfg.dtype]
    b = math.ceil(batch / m[0])
    no_remat = dataclasses.replace(cfg, remat="none")
    saved = sum(
        t.bytes for t in activation_terms(no_remat, mode=mode, mesh=m, batch=batch, seq=seq)
    )
    activations = 2.0 * saved
    if cfg.remat != "none":
        activations += 2.0 * cfg.n_layers * b * seq * cfg.d_model * c
    heads = math.ceil(cfg.n_heads / tensor_split(mode, m[1]))
    scores = cfg.n_layers * b * heads * seq * seq
    per_score = SCORE_FORWARD + 2 * c + SCORE_BACKWARD_F32
    if cfg.remat != "none":
        per_score += SCORE_FORWARD
    held = params_per_device(cfg, mode=mode, mesh=m)
    parameters = held * (GRAD_WRITE + ADAMW_BYTES)
    if c != F32_BYTES:
        used = held_groups(cfg, mode=mode, mesh=(1, m[1])).total  # gathered over data
        parameters += held * 2 * c + used * (F32_BYTES + c)
    return TrafficEstimate(activations, scores * per_score, parameters)
