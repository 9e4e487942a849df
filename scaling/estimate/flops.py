"""FLOPs of one training step: model FLOPs (6·N_matmul + attention, the figure MFU is defined on),
hardware FLOPs (+ remat recompute) and the elementwise FLOPs XLA's cost analysis adds."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

from scaling.config import ModelConfig
from scaling.estimate.mesh import effective_mesh, tensor_split, validate
from scaling.estimate.params import (
    held_groups,
    held_scalars,
    param_counts,
    readout_held,
    stacked_held,
)
from scaling.roles import BIAS_ROLES, parameters

CONVENTION_FULL = "full"  # attention counted over all t×t score entries (PaLM app. B, nanoGPT)
CONVENTION_CAUSAL = "causal_halved"  # only the causal half (MaxText since July 2025)


@dataclass(frozen=True)
class FlopCounts:
    """Training FLOPs (forward + backward) of one step over all devices.

    ``model_*``: 6·N_matmul per token + attention, in the stated ``attention_convention``; no
    rematerialisation (the figure MFU is defined on). ``hardware_*``: what the devices execute:
    full (unhalved) attention, since the model computes the masked t×t scores, plus remat
    recompute; matmuls only, the work the matmul peak describes. ``elementwise_per_step``:
    the elementwise and reduction FLOPs (norms, softmax, RoPE, activations, loss, optimizer)
    in XLA's counting convention (``elementwise_flops``), one device, scanned layers; XLA's
    ``cost_analysis()`` reports hardware + elementwise.
    """

    model_per_token: float
    model_per_step: float
    hardware_per_token: float
    hardware_per_step: float
    attention_convention: str  # "full" or "causal_halved"
    tokens_per_step: int
    elementwise_per_step: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def attention_flops_per_token(cfg: ModelConfig, seq: int, *, causal_halving: bool) -> float:
    """Attention score and value matmuls, forward + backward, per token (FLOPs).

    Forward per layer per token: q·kᵀ is 2·t·(h·k), weights·v another 2·t·(h·k); the backward
    is twice the forward, so 12·L·t·(h·k) (PaLM, Chowdhery et al. 2022, appendix B, with
    h·k = d_model). Grouped-query attention repeats k/v to all heads, so the cost uses h, not
    h_kv. A sliding window W < t needs only min(W, t) keys per query (MaxText's count for
    local attention, ``calculate_gemma2_tflops_training_per_device``). ``causal_halving``
    counts half of that (MaxText's convention since July 2025; for W ≪ t the exact band is
    W − W²/2t keys, so halving undercounts it, as MaxText does).
    """
    keys = seq if cfg.sliding_window is None else min(cfg.sliding_window, seq)
    full = 12.0 * cfg.n_layers * keys * cfg.n_heads * cfg.d_head
    return full / 2 if causal_halving else full


def flops_per_token(cfg: ModelConfig, seq: int, *, causal_halving: bool) -> float:
    """Model FLOPs per training token: 6·N_matmul + attention (FLOPs).

    N_matmul (``ParamCounts.matmul``) counts the layer matrices and the read-out (untied head,
    or the tied table used as read-out). The embedding lookup is a gather: 0 FLOPs, so the
    token table is not counted again. 6 = 2 (multiply-add) × 3 (forward, and a backward of two
    matmuls: input and weight gradients) — Kaplan et al. 2020, section 2.1.
    """
    return 6.0 * param_counts(cfg).matmul + attention_flops_per_token(
        cfg, seq, causal_halving=causal_halving
    )


def remat_flops_per_token(cfg: ModelConfig, seq: int) -> float:
    """Extra forward FLOPs per token that ``cfg.remat`` recomputes in the backward pass.

    - ``none``: 0.
    - ``full`` (``jax.checkpoint`` on each layer): one more forward of the layers except the
      FFN's output matmul: 2·(N_layer_matmul − L·f·d) + 4·L·t·(h·k). The backward of a layer
      never needs w2's output (it only enters the residual add), so jax's partial evaluation
      drops that matmul from the recomputation (checked on the lowered HLO: the recomputed
      dots are exactly these). The head and embedding are outside the checkpoint, so the
      read-out matmul (2·d·V) is not recomputed either. A mixture of experts recomputes its
      experts' w2 too: their outputs are scaled by the routing weights, whose gradient needs
      them; only a shared expert's w2 is dropped.
    - ``dots`` (``dots_with_no_batch_dims_saveable``): the outputs of the q/k/v/o and FFN
      matmuls (dot_generals without batch dimensions) are saved; the two attention einsums have
      batch dimensions (b, h) and are recomputed, both of them, because the weights·v output
      is the o-projection's input needed for its weight gradient: 4·L·t·(h·k). The experts'
      matmuls (capacity's einsum has the batch dimension e, dropless's ``ragged_dot`` is not a
      dot_general) are recomputed too: 2·k·(2|3)·d·f per layer.
    The recomputed attention is always the full t×t (that is what the model executes). A
    capacity dispatch's padded rows are counted by ``capacity_padding_flops``.
    """
    attention_forward = 4.0 * cfg.n_layers * seq * cfg.n_heads * cfg.d_head
    if cfg.remat == "full":
        layer_matmul = param_counts(cfg).matmul - cfg.d_model * cfg.vocab_size
        w2 = cfg.n_layers * cfg.d_ff * cfg.d_model * (int(cfg.moe_shared_expert) if cfg.moe else 1)
        return 2.0 * (layer_matmul - w2) + attention_forward
    if cfg.remat == "dots":
        return attention_forward + 2.0 * routed_expert_matmul_per_token(cfg)
    return 0.0


def routed_expert_matmul_per_token(cfg: ModelConfig) -> float:
    """Parameters of the routed experts' matrices a token multiplies, all layers:
    L·k·(2|3)·d·f (0 for a dense model)."""
    if not cfg.moe:
        return 0.0
    per_expert = (3 if cfg.ffn_gated else 2) * cfg.d_model * cfg.d_ff
    return float(cfg.n_layers * cfg.experts_per_token * per_expert)


def expert_rows(cfg: ModelConfig, tokens: int) -> tuple[int, int]:
    """(useful, executed) token-expert rows per layer for ``tokens`` tokens in one routing
    group: n·k useful; capacity dispatch executes E·C slots (``scaling.moe.capacity``: C =
    ceil(factor·n·k/E), at most n), dropless the n·k rows (a grouped matmul; XLA's CPU
    backend executes E·n instead, see ``scaling.moe``)."""
    useful = tokens * cfg.experts_per_token
    if cfg.moe_dispatch == "dropless":
        return useful, useful
    slots = max(1, min(tokens, math.ceil(cfg.moe_capacity_factor * useful / cfg.n_experts)))
    return useful, cfg.n_experts * slots


def capacity_padding_flops(cfg: ModelConfig, *, batch: int, seq: int) -> float:
    """Training FLOPs per step the capacity buffers add over the useful expert rows: 6 ×
    (executed − useful rows) × one expert's matrices (2 or 3 of d·f) × layers, 8 × under remat
    full or dots, which recompute every expert matmul (FLOPs; 0 for dense models and dropless
    dispatch). Dropped rows make executed < useful possible."""
    if not cfg.moe:
        return 0.0
    useful, executed = expert_rows(cfg, batch * seq)
    per_expert = (3 if cfg.ffn_gated else 2) * cfg.d_model * cfg.d_ff
    passes = 6.0 if cfg.remat == "none" else 8.0
    return passes * (executed - useful) * per_expert * cfg.n_layers


def hardware_flops_per_token(cfg: ModelConfig, seq: int) -> float:
    """FLOPs per token the hardware executes: 6·N_matmul + full attention + remat recompute.
    The model scores every query against all t keys and masks (no block skipping), so a
    sliding window saves no hardware FLOPs."""
    full = dataclasses.replace(cfg, sliding_window=None)
    return flops_per_token(full, seq, causal_halving=False) + remat_flops_per_token(cfg, seq)


def flop_counts(
    cfg: ModelConfig, *, batch: int, seq: int, causal_halving: bool = False
) -> FlopCounts:
    """Model and hardware FLOPs per token and per step (batch·seq tokens), all devices. MoE
    capacity dispatch: hardware adds the padded slots (``capacity_padding_flops``)."""
    tokens = batch * seq
    model = flops_per_token(cfg, seq, causal_halving=causal_halving)
    padding = capacity_padding_flops(cfg, batch=batch, seq=seq)
    hardware = hardware_flops_per_token(cfg, seq) + padding / tokens
    convention = CONVENTION_CAUSAL if causal_halving else CONVENTION_FULL
    elementwise = _elementwise(cfg, batch=batch, seq=seq, mode="none", mesh=None).total
    return FlopCounts(
        model, model * tokens, hardware, hardware * tokens, convention, tokens, elementwise
    )


def flops_per_step(cfg: ModelConfig, *, batch: int, seq: int, causal_halving: bool) -> float:
    """Model FLOPs per training step of ``batch`` sequences of ``seq`` tokens (FLOPs)."""
    return flops_per_token(cfg, seq, causal_halving=causal_halving) * batch * seq


# Elementwise FLOPs in XLA's convention

# FLOPs that XLA's cost analysis (HloCostAnalysis) counts besides the matmuls: 1 per output
# element of every elementwise op (add, multiply, divide, compare, select, convert, negate...;
# exp, log, rsqrt, tanh, logistic, erf count as transcendentals instead), 1 per reduced element
# (input minus output elements of a reduce), 0 for data movement (gather, transpose, pad...).
# The counts are this model's forward + backward ops in that convention, per component, read
# off its lowered HLO by finite differences (tools/count_elementwise.py; jax 0.10.2, optax
# 0.2.8) and pinned by tests/test_xla_check.py. Units (one device): btd = b·t·d_model, bt = b·t,
# btf = b·t·d_ff, bhtt = b·h·t², btq = b·t·h·k (q's width), btkv = b·t·h_kv·k, tt = t² (the
# mask), btv = b·t·V. Terms of the size of a parameter vector (a bias or gain gradient's
# reduction leaves d instead of b·t·d) are left out: they are 1/(b·t) of the terms kept.
#
# Llama's layer (float32, remat none): two RMSNorms (their own backward, ``ops.rms_norm``) and
# two residual adds; SwiGLU (recomputed in the backward, ``ops.gated``); RoPE on q
# and k (7.5 per element; the 2 and -2 on q / kv are the gradient of repeating k, v to h
# heads); the masked softmax of the scores (scale, mask select, max-shift, sum, divide; its
# backward's row sum is the -3·bht); the causal mask.
LLAMA_LAYER = {"btd": 33, "bt": 16, "btf": 17, "bhtt": 11, "bht": -3, "btq": 9.5, "btkv": 5.5,
               "tt": 1}  # fmt: skip
# Outside the layers: the final norm, the embedding gradient (a scatter-add), log-softmax
# cross-entropy and its gradient on the logits.
LLAMA_OUTSIDE = {"btd": 15, "bt": 27, "btv": 5}
# What each architecture field changes against Llama's layer (per layer) ...
FFN_LAYER = {  # FFN kind → its per-element count (Llama's SwiGLU: 17); plain FFNs one add less
    "swiglu": {},
    "geglu": {"btf": 16},
    "gelu_tanh": {"btf": 12, "btd": -1},
    "gelu": {"btf": -1, "btd": -1},
    "relu": {"btf": -9, "btd": -1},
}
NORM_LAYER = {  # two norms per layer
    ("layer", False): {"btd": 12},
    ("layer", True): {"btd": 16, "bt": 2},
    ("rms_unit_offset", False): {"bt": -2},
}
NO_ROPE_LAYER = {"btq": -7.5, "btkv": -7.5, "bt": -12}  # learned, sinusoidal or no positions
QKV_BIAS_LAYER = {"btq": 2, "btkv": 4, "bt": 1}  # add forward, reduce for the gradient
ATTN_OUT_BIAS_LAYER = {"btd": 2, "bt": 1}
FFN_BIAS_LAYER = {True: {"btd": 2, "btf": 4, "bt": 4}, False: {"btd": 2, "btf": 2, "bt": 2.5}}
SLIDING_WINDOW_LAYER = {"tt": 3}  # the window's compare and and on the mask
ATTN_SOFTCAP_LAYER = {"bhtt": 8}
# ... and outside the layers.
NORM_OUTSIDE = {
    ("layer", False): {"btd": 6},
    ("layer", True): {"btd": 8, "bt": 1},
    ("rms_unit_offset", False): {"bt": -1},
}
POSITIONS_OUTSIDE = {"learned": {"btd": 3, "bt": 6}, "sinusoidal": {"btd": 1, "bt": 3}}
EMBED_SCALE_OUTSIDE = {"btd": 2}
HEAD_BIAS_OUTSIDE = {"btv": 2, "bt": 2}
FINAL_SOFTCAP_OUTSIDE = {"btv": 8}
# Remat: extra per layer, the recomputed forward (Llama's), and each field's change to it
# (the same under full and dots unless a table says otherwise).
LLAMA_REMAT = {
    "full": {"btd": 9, "bt": 14, "btf": 5, "bhtt": 6, "bht": -2, "btq": 3, "btkv": 3, "tt": 1},
    "dots": {"btd": 10, "bt": 14, "btf": 5, "bhtt": 6, "bht": -2, "btq": 4, "btkv": 5, "tt": 1},
}
REMAT_DELTAS: dict[str, dict[str, dict[str, float]]] = {  # component → remat → change
    "ffn:geglu": {"full": {"btf": 4}, "dots": {"btf": 4}},
    "ffn:gelu_tanh": {"full": {"btf": 3}, "dots": {"btf": 3}},
    "ffn:gelu": {"full": {"btf": -1}, "dots": {"btf": -1}},
    "ffn:relu": {"full": {"btf": -4}, "dots": {"btf": -4}},
    "norm:layer": {"full": {"btd": 4}, "dots": {"btd": 4}},
    "norm:layer+bias": {"full": {"btd": 6}, "dots": {"btd": 6}},
    "norm:rms_unit_offset": {"full": {"bt": -2}, "dots": {"bt": -2}},
    "positions": {
        "full": {"btq": -3, "btkv": -3, "bt": -12},
        "dots": {"btq": -3, "btkv": -3, "bt": -12},
    },  # fmt: skip
    "qkv_bias": {"full": {"btq": 1, "btkv": 2}, "dots": {"btq": 1, "btkv": 2}},
    "attn_out_bias": {"full": {"btd": 1}, "dots": {"btd": 1}},
    "ffn_bias:gated": {"full": {"btf": 2}, "dots": {"btf": 4}},
    "ffn_bias:plain": {"full": {"btf": 1}, "dots": {"btf": 2}},
    "sliding_window": {"full": {"tt": 3}, "dots": {"tt": 3}},
    "attn_softcap": {"full": {"bhtt": 2}, "dots": {"bhtt": 2}},
}
# bfloat16 compute adds converts: per layer the residual stream into and out of the float32
# norms, q (for the scores), the scores and weights (recomputed under remat), and with RoPE its
# cos/sin per token (btk = b·t·k); outside, the embedding output, the final norm and the
# logits. Each weight cast counts once forward and once for its gradient, layer matrices and
# biases once more under remat, the read-out matrix 4 times (``_elementwise``).
BF16_LAYER = {"none": {"btd": 10, "bhtt": 2, "btq": 4}, "remat": {"btd": 14, "bhtt": 3, "btq": 4}}
BF16_ROPE = {"none": {"btk": 2}, "remat": {"btk": 4}}
BF16_OUTSIDE = {"btd": 9}
BF16_READOUT_CASTS = 4
# Per parameter and step: global-norm clipping (square, sum), the grad-norm metric (square,
# sum), Adam's moments, bias corrections and update, weight decay, learning rate, apply.
OPTIMIZER_FLOPS_DECAYED = 21  # matrices, token/position tables, untied head
OPTIMIZER_FLOPS_NOT_DECAYED = 19  # norm gains and biases (no weight decay)


def _add(total: dict[str, float], *parts: dict[str, float]) -> dict[str, float]:
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total


def _norm_key(cfg: ModelConfig) -> tuple[str, bool] | None:
    if cfg.norm == "layer":
        return ("layer", cfg.norm_bias)
    return ("rms_unit_offset", False) if cfg.norm_unit_offset else None


def _field_parts(cfg: ModelConfig) -> list[tuple[str, dict[str, float]]]:
    """(component name, per-layer change against Llama) for every field that differs."""
    parts = [(f"ffn:{cfg.ffn}", FFN_LAYER[cfg.ffn])]
    norm = _norm_key(cfg)
    if norm is not None:
        parts.append((f"norm:{norm[0]}{'+bias' if norm[1] else ''}", NORM_LAYER[norm]))
    if cfg.positions != "rope":
        parts.append(("positions", NO_ROPE_LAYER))
    if cfg.qkv_bias:
        parts.append(("qkv_bias", QKV_BIAS_LAYER))
    if cfg.attn_out_bias:
        parts.append(("attn_out_bias", ATTN_OUT_BIAS_LAYER))
    if cfg.ffn_bias:
        gated = "gated" if cfg.ffn_gated else "plain"
        parts.append((f"ffn_bias:{gated}", FFN_BIAS_LAYER[cfg.ffn_gated]))
    if cfg.sliding_window is not None:
        parts.append(("sliding_window", SLIDING_WINDOW_LAYER))
    if cfg.attn_softcap is not None:
        parts.append(("attn_softcap", ATTN_SOFTCAP_LAYER))
    return parts


def layer_coefficients(cfg: ModelConfig) -> dict[str, float]:
    """Elementwise FLOPs per layer per unit (see the tables above) for ``cfg``'s fields, its
    remat and its compute dtype."""
    coeffs = _add(dict(LLAMA_LAYER), *(part for _, part in _field_parts(cfg)))
    if cfg.remat != "none":
        _add(coeffs, LLAMA_REMAT[cfg.remat])
        for name, _ in _field_parts(cfg):
            _add(coeffs, REMAT_DELTAS.get(name, {}).get(cfg.remat, {}))
    if cfg.dtype == "bfloat16":
        kind = "remat" if cfg.remat != "none" else "none"
        _add(coeffs, BF16_LAYER[kind], BF16_ROPE[kind] if cfg.positions == "rope" else {})
    return coeffs


def outside_coefficients(cfg: ModelConfig) -> dict[str, float]:
    """Elementwise FLOPs outside the layers per unit for ``cfg``'s fields and compute dtype."""
    coeffs = dict(LLAMA_OUTSIDE)
    if _norm_key(cfg) is not None:
        _add(coeffs, NORM_OUTSIDE[_norm_key(cfg)])
    _add(coeffs, POSITIONS_OUTSIDE.get(cfg.positions, {}))
    if cfg.embed_scale:
        _add(coeffs, EMBED_SCALE_OUTSIDE)
    if cfg.head_bias:
        _add(coeffs, HEAD_BIAS_OUTSIDE)
    if cfg.final_softcap is not None:
        _add(coeffs, FINAL_SOFTCAP_OUTSIDE)
    if cfg.dtype == "bfloat16":
        _add(coeffs, BF16_OUTSIDE)
    return coeffs


@dataclass(frozen=True)
class ElementwiseFlops:
    """Per-device FLOPs of one step that XLA counts besides the matmuls (see the table above)."""

    layers: float  # norms, residual adds, activations, RoPE, softmax (all layers)
    outside: float  # final norm, embedding gradient, cross-entropy on the logits
    optimizer: float  # clipping, AdamW, grad-norm metric; plus bf16 weight casts
    unrolled_stacking: float  # only in an unrolled lowering, see ``elementwise_flops``

    @property
    def total(self) -> float:
        return self.layers + self.outside + self.optimizer + self.unrolled_stacking

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def elementwise_flops(
    cfg: ModelConfig,
    *,
    batch: int,
    seq: int,
    mode: str = "none",
    mesh: tuple[int, int] | None = None,
    unrolled: bool = False,
) -> ElementwiseFlops:
    """Elementwise and reduction FLOPs per device per step, in XLA's counting convention.

    These run on vector units, not the matmul units ``peak_flops`` describes, so the roofline
    leaves them out; they are what XLA's ``cost_analysis()`` adds to the matmuls (1–3 % at
    small batch, where the ~21 optimizer FLOPs per parameter weigh most). Per layer and outside
    the layers, Llama's counts plus the change each architecture field makes (the tables
    above; the components add up: GPT-2 and Gemma were also measured whole and agree). Per
    device: the batch is split over data; under tp/fsdp_tp the per-head, FFN and vocabulary
    terms are split over tensor while the (b, t, d) norms and residual adds are repeated on
    every tensor shard; the optimizer works on the parameters a device holds
    (``params_per_device``), so dp repeats it on every device. ``unrolled`` adds what only an
    unrolled layer loop lowers to: the gradient of each layer's slice of the stacked
    parameters is padded to the full stack and the L copies summed, (L-1) adds per stacked
    parameter (a scan writes the slices in place). With bf16 compute every weight cast counts
    once forward and once for its gradient (layer matrices once more under remat).
    tests/test_xla_check.py compares the total with XLA's unrolled lowering on CPU for every
    architecture.
    """
    validate(cfg, mode, mesh, batch, seq)
    return _elementwise(cfg, batch=batch, seq=seq, mode=mode, mesh=mesh, unrolled=unrolled)


def _units(cfg: ModelConfig, *, batch: int, seq: int, mesh: tuple[int, int], mode: str):
    data, tensor = mesh
    ts = tensor_split(mode, tensor)
    bl, t = math.ceil(batch / data), seq
    return {
        "btd": bl * t * cfg.d_model,
        "bt": bl * t,
        "btf": bl * t * cfg.d_ff / ts,
        "bhtt": bl * cfg.n_heads * t * t / ts,
        "bht": bl * cfg.n_heads * t / ts,
        "btq": bl * t * cfg.n_heads * cfg.d_head / ts,
        "btkv": bl * t * cfg.kv_heads * cfg.d_head / ts,
        "tt": t * t,
        "t": t,
        "one": 1,
        "btv": bl * t * cfg.vocab_size / ts,
        "bv": bl * cfg.vocab_size / ts,
        "td": t * cfg.d_model,
        "btk": bl * t * cfg.d_head,
    }


def _elementwise(
    cfg: ModelConfig,
    *,
    batch: int,
    seq: int,
    mode: str,
    mesh: tuple[int, int] | None,
    unrolled: bool = False,
) -> ElementwiseFlops:
    m = effective_mesh(mode, mesh)
    u = _units(cfg, batch=batch, seq=seq, mesh=m, mode=mode)
    per_layer = layer_coefficients(cfg)
    outside_coeffs = outside_coefficients(cfg)
    layers = cfg.n_layers * sum(c * u[k] for k, c in per_layer.items())
    outside = sum(c * u[k] for k, c in outside_coeffs.items())
    held = held_groups(cfg, mode=mode, mesh=m)
    optimizer = (
        OPTIMIZER_FLOPS_DECAYED * (held.layer_matrices + held.vocab_tables + held.positions)
        + OPTIMIZER_FLOPS_NOT_DECAYED * held.vectors
    )
    readout = readout_held(cfg, mode=mode, mesh=m)  # tied table or untied head
    if cfg.tied_embeddings:
        optimizer += readout  # the table's two gradients (lookup and read-out) are summed
    if cfg.dtype == "bfloat16":  # weights cast at use: forward and gradient, layers once more
        casts = 3 if cfg.remat != "none" else 2
        biases = sum(held_scalars(p, mode, m) for p in parameters(cfg) if p.role in BIAS_ROLES)
        optimizer += casts * (held.layer_matrices + biases) + BF16_READOUT_CASTS * readout
    stacking = 0.0
    if unrolled:
        stacking = (cfg.n_layers - 1) * stacked_held(cfg, mode=mode, mesh=m)
    return ElementwiseFlops(layers, outside, optimizer, stacking)
