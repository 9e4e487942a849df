"""FLOPs of one training step: model FLOPs (6·N_matmul + attention, the figure MFU is defined on),
hardware FLOPs (+ remat recompute) and the elementwise FLOPs XLA's cost analysis adds."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scaling.config import ModelConfig
from scaling.estimate.mesh import effective_mesh, tensor_split, validate
from scaling.estimate.params import held_groups, param_counts, readout_held

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
    h_kv. ``causal_halving`` counts only the causal half (MaxText's convention since July 2025).
    """
    full = 12.0 * cfg.n_layers * seq * cfg.n_heads * cfg.d_head
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
      read-out matmul (2·d·V) is not recomputed either.
    - ``dots`` (``dots_with_no_batch_dims_saveable``): the outputs of the q/k/v/o and FFN
      matmuls (dot_generals without batch dimensions) are saved; the two attention einsums have
      batch dimensions (b, h) and are recomputed, both of them, because the weights·v output
      is the o-projection's input needed for its weight gradient: 4·L·t·(h·k).
    The recomputed attention is always the full t×t (that is what the model executes).
    """
    attention_forward = 4.0 * cfg.n_layers * seq * cfg.n_heads * cfg.d_head
    if cfg.remat == "full":
        layer_matmul = param_counts(cfg).matmul - cfg.d_model * cfg.vocab_size
        w2 = cfg.n_layers * cfg.d_ff * cfg.d_model
        return 2.0 * (layer_matmul - w2) + attention_forward
    if cfg.remat == "dots":
        return attention_forward
    return 0.0


def hardware_flops_per_token(cfg: ModelConfig, seq: int) -> float:
    """FLOPs per token the hardware executes: 6·N_matmul + full attention + remat recompute."""
    return flops_per_token(cfg, seq, causal_halving=False) + remat_flops_per_token(cfg, seq)


def flop_counts(
    cfg: ModelConfig, *, batch: int, seq: int, causal_halving: bool = False
) -> FlopCounts:
    """Model and hardware FLOPs per token and per step (batch·seq tokens), all devices."""
    tokens = batch * seq
    model = flops_per_token(cfg, seq, causal_halving=causal_halving)
    hardware = hardware_flops_per_token(cfg, seq)
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
# exp, log, rsqrt, tanh, logistic count as transcendentals instead), 1 per reduced element
# (input minus output elements of a reduce), 0 for data movement (gather, transpose, pad...).
# The per-element counts below are this model's forward + backward ops in that convention,
# read off its lowered HLO (jax 0.10.2, optax 0.2.8) and pinned by tests/test_xla_check.py.
# Units: btd = b·t·d_model, bt = b·t, btf = b·t·d_ff, bhtt = b·h·t², rope = b·t·(h + h_kv)·k
# (the q and k elements RoPE rotates), tt = t² (the causal mask), btv = b·t·V.
_ELEMENTWISE_LAYER = {  # per layer, float32, remat none
    # two RMSNorms (f32 mean-square, scale, gain) and two residual adds; SwiGLU (silu = x·σ(x)
    # and the gate product); RoPE on q and k; softmax (scale, mask select, max-shift, sum,
    # divide) of the t×t scores
    "llama": {"btd": 35, "bt": 24, "btf": 13, "bhtt": 14, "rope": 7.5, "tt": 2},
    # two LayerNorms (mean, centring, variance, scale, gain, bias); GELU (tanh form); softmax
    "gpt2": {"btd": 48, "bt": 16, "btf": 22, "bhtt": 14, "rope": 0.0, "tt": 2},
}
_ELEMENTWISE_REMAT = {  # extra per layer: the recomputed forward
    ("llama", "full"): {"btd": 9, "bt": 16, "btf": 5, "bhtt": 6, "rope": 3, "tt": 2},
    ("llama", "dots"): {"btd": 14, "bt": 16, "btf": 7, "bhtt": 6, "rope": 3, "tt": 2},
    ("gpt2", "full"): {"btd": 15, "bt": 6, "btf": 8, "bhtt": 6, "rope": 0, "tt": 2},
    ("gpt2", "dots"): {"btd": 20, "bt": 6, "btf": 9, "bhtt": 6, "rope": 0, "tt": 2},
}
# bfloat16 compute adds converts: per layer the residual stream into/out of the f32 norms and
# the scores/weights casts (recomputed under remat), the RoPE cos/sin tables (t·k), every cast
# weight (see ``elementwise_flops``); outside, the final norm and the f32 logits.
_BF16_LAYER = {
    "none": {"btd": 8, "bhtt": 4, "rope_tables": 4},
    "remat": {"btd": 12, "bhtt": 6, "rope_tables": 8},
}
# Outside the layers: the final norm, the embedding gradient (a scatter-add: 1 per btd, one
# more for gpt2's position table), log-softmax cross-entropy and its gradient on the logits.
_ELEMENTWISE_OUTSIDE = {
    "llama": {"btd": 16, "bt": 32, "btv": 5},
    "gpt2": {"btd": 26, "bt": 40, "btv": 5},
}
# Per parameter and step: global-norm clipping (square, sum), the grad-norm metric (square,
# sum), Adam's moments, bias corrections and update, weight decay, learning rate, apply.
OPTIMIZER_FLOPS_DECAYED = 21  # matrices, token/position tables, untied head
OPTIMIZER_FLOPS_NOT_DECAYED = 19  # norm gains and biases (no weight decay)


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
    small batch, where the ~21 optimizer FLOPs per parameter weigh most). Per device: the batch
    is split over data; under tp/fsdp_tp the per-head, FFN and vocabulary terms are split over
    tensor while the (b, t, d) norms and residual adds are repeated on every tensor shard; the
    optimizer works on the parameters a device holds (``params_per_device``), so dp repeats it
    on every device. ``unrolled`` adds what only an unrolled layer loop lowers to: the gradient
    of each layer's slice of the stacked parameters is padded to the full stack and the L
    copies summed, (L-1) adds per stacked parameter (a scan writes the slices in place).
    With bf16 compute every weight cast counts once forward and once for its gradient (layer
    matrices once more under remat). Against XLA's unrolled lowering on CPU this agrees to
    better than 0.01 % of the whole step for llama and gpt2, f32 and bf16, remat none, full
    and dots, grouped-query, tied and untied; it ignores a few O(b·h·t) reduction terms.
    """
    validate(cfg, mode, mesh, batch, seq)
    return _elementwise(cfg, batch=batch, seq=seq, mode=mode, mesh=mesh, unrolled=unrolled)


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
    data, tensor = m
    ts = tensor_split(mode, tensor)
    bl = math.ceil(batch / data)
    t, L = seq, cfg.n_layers
    rope = cfg.positions == "rope"
    remat = cfg.remat != "none"
    units = {
        "btd": bl * t * cfg.d_model,
        "bt": bl * t,
        "btf": bl * t * cfg.d_ff / ts,
        "bhtt": bl * cfg.n_heads * t * t / ts,
        "rope": bl * t * (cfg.n_heads + cfg.kv_heads) * cfg.d_head / ts,
        "tt": t * t,
        "btv": bl * t * cfg.vocab_size / ts,
        "rope_tables": t * cfg.d_head if rope else 0,
    }
    per_layer = dict(_ELEMENTWISE_LAYER[cfg.family])
    if remat:
        for key, value in _ELEMENTWISE_REMAT[(cfg.family, cfg.remat)].items():
            per_layer[key] += value
    outside = dict(_ELEMENTWISE_OUTSIDE[cfg.family])
    bf16 = cfg.dtype == "bfloat16"
    if bf16:
        for key, value in _BF16_LAYER["remat" if remat else "none"].items():
            per_layer[key] = per_layer.get(key, 0) + value
        outside["btd"] += 6
        outside["btv"] += 2
    layers = L * sum(coeff * units[key] for key, coeff in per_layer.items())
    # grouped-query attention: the backward of repeating k and v to h heads sums the copies
    layers += L * 2 * bl * t * (cfg.n_heads - cfg.kv_heads) * cfg.d_head / ts
    out = sum(coeff * units[key] for key, coeff in outside.items())

    held = held_groups(cfg, mode=mode, mesh=m)
    optimizer = (
        OPTIMIZER_FLOPS_DECAYED * (held.layer_matrices + held.vocab_tables + held.positions)
        + OPTIMIZER_FLOPS_NOT_DECAYED * held.vectors
    )
    readout = readout_held(cfg, mode=mode, mesh=m)  # tied table or untied head
    if cfg.tied_embeddings:
        optimizer += readout  # the table's two gradients (lookup and read-out) are summed
    if bf16:  # weights cast at use: forward and gradient, layers once more under remat
        optimizer += (3 if remat else 2) * held.layer_matrices + 2 * readout
    stacking = 0.0
    if unrolled:
        layer_vectors = L * 2 * (cfg.d_model if cfg.norm == "rms" else 2 * cfg.d_model)
        stacking = (L - 1) * (held.layer_matrices + layer_vectors)
    return ElementwiseFlops(layers, out, optimizer, stacking)
