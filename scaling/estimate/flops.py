"""FLOPs of one training step: model FLOPs (6·N_matmul + attention, the figure MFU is defined on),
hardware FLOPs (+ remat recompute) and the elementwise FLOPs XLA's cost analysis adds."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

from scaling.config import ModelConfig
from scaling.estimate.mesh import effective_mesh, tensor_split, validate
from scaling.estimate.params import held_groups, param_counts, readout_held, stacked_held

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
    """FLOPs per token the hardware executes: 6·N_matmul + full attention + remat recompute.
    The model scores every query against all t keys and masks (no block skipping), so a
    sliding window saves no hardware FLOPs."""
    full = dataclasses.replace(cfg, sliding_window=None)
    return flops_per_token(full, seq, causal_halving=False) + remat_flops_per_token(cfg, seq)


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

# Placeholder tables while fitting (filled from tools/fit_elementwise.py)
LAYER_COMPONENTS: dict = {}
OUTSIDE_COMPONENTS: dict = {}
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
    """Elementwise and reduction FLOPs per device per step, in XLA's counting convention."""
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
        optimizer += (3 if cfg.remat != "none" else 2) * held.layer_matrices + 2 * readout
    stacking = 0.0
    if unrolled:
        stacking = (cfg.n_layers - 1) * stacked_held(cfg, mode=mode, mesh=m)
    return ElementwiseFlops(layers, outside, optimizer, stacking)


def layer_coefficients(cfg: ModelConfig) -> dict[str, float]:
    return {}


def outside_coefficients(cfg: ModelConfig) -> dict[str, float]:
    return {}
