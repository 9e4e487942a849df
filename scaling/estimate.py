"""Closed-form estimates for the shared model: parameters, FLOPs, memory, communication,
roofline step time. Pure arithmetic on a ModelConfig; never imports jax.

Letters: L layers, d d_model, h heads, k d_head (h·k = attention width), f d_ff, V vocabulary,
b batch (sequences), t/s sequence length, c bytes of the compute dtype (2 bf16, 4 f32).
Mesh is (data, tensor); which parameter is split over which axis follows
``scaling.parallel.SPEC_TABLE``. Every byte figure is per device unless its name says otherwise.

What the model computes (scaling/model.py), which every count here follows:
- parameters are float32 and cast to the compute dtype at use; no biases except LayerNorm's;
- attention is unfused: the b·h·t·t scores are materialised in float32, masked to causal, and
  the softmax weights are cast back to the compute dtype (no flash attention, no dropout);
- the logits are float32; the embedding lookup is a gather (0 FLOPs);
- remat wraps each layer (the scanned body), never the embedding or the head.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from scaling.config import MODES, ModelConfig
from scaling.hardware import HardwareProfile

F32_BYTES = 4
PARAM_BYTES = F32_BYTES  # parameters are always float32 (cast to the compute dtype at use)
GRAD_BYTES = F32_BYTES  # gradients of float32 parameters are float32
OPTIMIZER_BYTES = 2 * F32_BYTES  # AdamW: two float32 moments per parameter (optax.adamw)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}

CONVENTION_FULL = "full"  # attention counted over all t×t score entries (PaLM app. B, nanoGPT)
CONVENTION_CAUSAL = "causal_halved"  # only the causal half (MaxText since July 2025)

TP_MODES = ("tp", "fsdp_tp")
FSDP_MODES = ("fsdp", "fsdp_tp")


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts (number of scalars) of one model."""

    total: int
    embedding: int  # token table (+ learned positions for gpt2); the tied head is not extra
    head: int  # untied read-out matrix, 0 when tied
    per_layer: int
    matmul: int  # parameters that take part in a matmul per token (layers + head/tied table)

    @property
    def non_embedding(self) -> int:
        """Total minus the embedding tables (the untied head counts as non-embedding)."""
        return self.total - self.embedding


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Count parameters exactly as ``scaling.model.TransformerLM`` creates them.

    Per layer: q and o are d·(h·k), k and v are d·(h_kv·k); FFN 3·d·f (SwiGLU) or 2·d·f (GELU);
    two norms of d (RMSNorm) or 2d (LayerNorm with bias). No biases elsewhere.
    """
    d, v = cfg.d_model, cfg.vocab_size
    q_width, kv_width = cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head
    attention = 2 * d * q_width + 2 * d * kv_width
    ffn = (3 if cfg.family == "llama" else 2) * d * cfg.d_ff
    norm = d if cfg.family == "llama" else 2 * d
    per_layer = attention + ffn + 2 * norm
    embedding = v * d + (cfg.max_seq_len * d if cfg.family == "gpt2" else 0)
    head = 0 if cfg.tied_embeddings else d * v
    total = embedding + cfg.n_layers * per_layer + norm + head
    matmul = cfg.n_layers * (attention + ffn) + d * v
    return ParamCounts(total, embedding, head, per_layer, matmul)


@dataclass(frozen=True)
class _ParamGroups:
    """Parameters grouped by how ``scaling.parallel.SPEC_TABLE`` splits them (scalars)."""

    layer_matrices: int  # q, k, v, o and FFN matrices of all layers
    vocab_tables: int  # token table (V, d) and the untied head (d, V)
    positions: int  # gpt2's learned position table (T, d); 0 for llama
    vectors: int  # norm gains (and LayerNorm biases), every layer plus the final norm


def _param_groups(cfg: ModelConfig) -> _ParamGroups:
    p = param_counts(cfg)
    layer_matrices = p.matmul - cfg.d_model * cfg.vocab_size
    positions = cfg.max_seq_len * cfg.d_model if cfg.family == "gpt2" else 0
    vocab_tables = p.embedding - positions + p.head
    vectors = p.total - layer_matrices - vocab_tables - positions
    return _ParamGroups(layer_matrices, vocab_tables, positions, vectors)


# ----------------------------------------------------------------------------- mesh rules


def _validate(cfg: ModelConfig, mode: str, mesh: tuple[int, int] | None, batch: int, seq: int):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if mesh is not None and (len(mesh) != 2 or any(int(a) <= 0 for a in mesh)):
        raise ValueError(f"bad mesh {mesh!r}; expected (data, tensor) with positive integers")
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    if seq <= 0 or seq > cfg.max_seq_len:
        raise ValueError(
            f"seq={seq} is out of range; valid: 1..{cfg.max_seq_len} (the context of {cfg.name})"
        )


def effective_mesh(mode: str, mesh: tuple[int, int] | None) -> tuple[int, int]:
    """(data, tensor) the estimate uses: ``none`` is one device whatever the mesh; a missing
    mesh means (1, 1). ``scaling.parallel.validate`` rejects the following for runs, but the
    estimator accepts them for what-ifs: under ``dp``/``fsdp`` a tensor axis > 1 only holds
    replicas (they repeat the same work); under ``tp`` a data axis > 1 splits the batch and
    all-reduces the gradients."""
    if mode == "none" or mesh is None:
        return (1, 1)
    return (int(mesh[0]), int(mesh[1]))


def n_devices(mode: str, mesh: tuple[int, int] | None) -> int:
    data, tensor = effective_mesh(mode, mesh)
    return data * tensor


def _tensor_split(mode: str, tensor: int) -> int:
    """How many ways the per-head / FFN-hidden / vocabulary dimensions are split."""
    return tensor if mode in TP_MODES else 1


def _param_divisors(mode: str, mesh: tuple[int, int]) -> _ParamGroups:
    """How many ways each parameter group is split, per ``scaling.parallel.SPEC_TABLE``.

    none/dp: everything replicated. fsdp: matrices, token table, head and position table split
    over data. tp: matrices, token table (on V) and head (on V) split over tensor; the position
    table replicated. fsdp_tp: matrices, token table and head over data·tensor, the position
    table over data. Norms are replicated in every mode.
    """
    data, tensor = mesh
    if mode in ("none", "dp"):
        return _ParamGroups(1, 1, 1, 1)
    if mode == "fsdp":
        return _ParamGroups(data, data, data, 1)
    if mode == "tp":
        return _ParamGroups(tensor, tensor, 1, 1)
    return _ParamGroups(data * tensor, data * tensor, data, 1)  # fsdp_tp


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)


def params_per_device(cfg: ModelConfig, *, mode: str, mesh: tuple[int, int] | None) -> int:
    """Number of parameter scalars one device holds (largest shard, rounded up)."""
    m = effective_mesh(mode, mesh)
    g, div = _param_groups(cfg), _param_divisors(mode, m)
    return sum(
        _ceil(getattr(g, name) / getattr(div, name))
        for name in ("layer_matrices", "vocab_tables", "positions", "vectors")
    )


# ----------------------------------------------------------------------------- FLOPs


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


# ----------------------------------------------------------------------------- XLA's count

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
    _validate(cfg, mode, mesh, batch, seq)
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
    ts = _tensor_split(mode, tensor)
    bl = math.ceil(batch / data)
    t, L = seq, cfg.n_layers
    llama = cfg.family == "llama"
    remat = cfg.remat != "none"
    units = {
        "btd": bl * t * cfg.d_model,
        "bt": bl * t,
        "btf": bl * t * cfg.d_ff / ts,
        "bhtt": bl * cfg.n_heads * t * t / ts,
        "rope": bl * t * (cfg.n_heads + cfg.kv_heads) * cfg.d_head / ts,
        "tt": t * t,
        "btv": bl * t * cfg.vocab_size / ts,
        "rope_tables": t * cfg.d_head if llama else 0,
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

    g, div = _param_groups(cfg), _param_divisors(mode, m)
    held = {name: getattr(g, name) / getattr(div, name) for name in asdict(g)}
    optimizer = (
        OPTIMIZER_FLOPS_DECAYED
        * (held["layer_matrices"] + held["vocab_tables"] + held["positions"])
        + OPTIMIZER_FLOPS_NOT_DECAYED * held["vectors"]
    )
    readout = cfg.d_model * cfg.vocab_size / div.vocab_tables  # tied table or untied head
    if cfg.tied_embeddings:
        optimizer += readout  # the table's two gradients (lookup and read-out) are summed
    if bf16:  # weights cast at use: forward and gradient, layers once more under remat
        optimizer += (3 if remat else 2) * held["layer_matrices"] + 2 * readout
    stacking = 0.0
    if unrolled:
        layer_vectors = L * 2 * (cfg.d_model if llama else 2 * cfg.d_model)
        stacking = (L - 1) * (held["layer_matrices"] + layer_vectors)
    return ElementwiseFlops(layers, out, optimizer, stacking)


# ----------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class ActivationTerm:
    """One group of saved activations on one device: what, its dtype, its bytes."""

    name: str
    dtype: str
    bytes: int


def korthikanti_activation_bytes_per_layer(
    seq: int, batch: int, d_model: int, n_heads: int
) -> float:
    """Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
    Models", eq. 1): 34·s·b·h + 5·a·s²·b bytes per layer, for 16-bit activations, a GELU MLP of
    4h, dropout, no recompute, no sequence/tensor parallelism. A reference only: the estimator
    counts what jax saves for this model instead (see ``activation_terms``)."""
    return 34.0 * seq * batch * d_model + 5.0 * n_heads * seq * seq * batch


def activation_terms(
    cfg: ModelConfig, *, mode: str, mesh: tuple[int, int] | None, batch: int, seq: int
) -> tuple[ActivationTerm, ...]:
    """Activations kept alive for the backward pass, per device, grouped with their dtypes.

    Remat ``none`` follows what jax saves for this model's backward
    (``jax.ad_checkpoint.print_saved_residuals`` on the loss), which the scanned step
    materialises as stacked (L, ...) arrays. Per layer:

    - the residual stream into the two norms, in float32 (the norms compute in float32 and
      keep the cast input), and their normalised x·rsqrt(·), float32: 4·4·btd bytes
    - the two norm outputs (the q/k/v and FFN matmul inputs): 2·c·btd
    - q and k after RoPE, v, all repeated to h heads, and the attention output: 4·c·bt(h·k)
    - exp of the masked scores (float32) 4·b·h·t² and the softmax weights c·b·h·t²
    - FFN: 6·c·btf. SwiGLU keeps w1's output, σ of it, two silu products, w3's output and the
      gate product; the tanh-GELU keeps its input and five intermediates.
    - row statistics: rsqrt and mean of the norms (4·bt), softmax sum and its square (2·bht),
      float32.

    Korthikanti et al. 2022 (34·s·b·h + 5·a·s²·b bytes for 16-bit activations, assuming
    fused elementwise chains) counts ~17 c-sized (b, t, d) tensors per layer; unfused jax keeps
    more (SwiGLU's 6·btf alone is 16·c·btd at f = 8/3·d), so that formula underestimates
    this model (``korthikanti_activation_bytes_per_layer`` is kept as the reference). The
    scanned step also hoists the causal mask and its fill value, loop invariants, out of the
    layer loop: b·h·t² bytes (bool) + 4·b·h·t² (float32), once.

    ``full`` keeps each layer's input c·btd and, during the backward, one layer's
    recomputation; ``dots`` keeps each layer's input and the matmul outputs the backward
    needs (q, k, v, o, and w1/w3 or w1: dot_generals without batch dims; w2's output is not
    needed) and recomputes the attention einsums and the elementwise chains. For the
    recomputed layer XLA fuses the elementwise chains into their consumers, so only the
    matmul outputs are counted: the norm outputs and mid residual (3·btd), q/k/v and the
    attention output (4·bt·hk), the FFN matmul outputs (3·btf SwiGLU, 2·btf GELU, ``full``;
    one btf ``dots``), scores float32 and weights. Outside the layers (every remat): the
    final norm's float32 input and normalised x and its output, exp of the float32 logits for
    the log-softmax and the logits gradient. With bf16 compute the bf16 copies of the
    read-out matrix, and under remat ``none`` of the layer weights, are saved too.

    Sharding: the batch is split over data; under tp/fsdp_tp the per-head, FFN-hidden and
    vocabulary (logits, head split on V) activations are split over tensor, the (b, t, d)
    residual-stream ones are not. Gradient temporaries of the backward (a layer's score
    gradients, ~3 % of XLA's temp at seq 256), XLA workspace and fragmentation are not
    counted; tests/test_xla_check.py compares the total with XLA's ``memory_analysis``.
    """
    _validate(cfg, mode, mesh, batch, seq)
    m = effective_mesh(mode, mesh)
    data, tensor = m
    ts = _tensor_split(mode, tensor)
    c = DTYPE_BYTES[cfg.dtype]
    cd = cfg.dtype
    f32 = "float32"
    L, t = cfg.n_layers, seq
    bl = math.ceil(batch / data)
    llama = cfg.family == "llama"

    resid = bl * t * cfg.d_model  # (b, t, d): not split by tensor
    rows = bl * t  # (b, t, 1) statistics
    heads = bl * t * _ceil(cfg.n_heads * cfg.d_head / ts)  # (b, h, t, k)
    kv = bl * t * _ceil(cfg.kv_heads * cfg.d_head / ts)  # (b, h_kv, t, k) before the repeat
    ffn = bl * t * _ceil(cfg.d_ff / ts)  # (b, t, f)
    scores = bl * _ceil(cfg.n_heads / ts) * t * t  # (b, h, t, t)
    score_rows = bl * _ceil(cfg.n_heads / ts) * t  # (b, h, t, 1)
    logits = bl * t * _ceil(cfg.vocab_size / ts)  # (b, t, V)
    ffn_name = "w1 out, σ, silu, w3 out, products" if llama else "GELU input and intermediates"

    terms: list[ActivationTerm] = []

    def add(name: str, dtype: str, n_bytes: float) -> None:
        terms.append(ActivationTerm(name, dtype, int(n_bytes)))

    if cfg.remat == "none":
        add("residual stream into the norms, float32 (L·2·btd)", f32, L * 2 * resid * F32_BYTES)
        add("normalised x of the norms, float32 (L·2·btd)", f32, L * 2 * resid * F32_BYTES)
        add("norm outputs = matmul inputs (L·2·btd)", cd, L * 2 * resid * c)
        add(
            "q, k (RoPE), v repeated to h heads; attention output (L·4·bt·hk)",
            cd,
            L * 4 * heads * c,
        )
        add("exp of the attention scores (L·b·h·t²)", f32, L * scores * F32_BYTES)
        add("softmax weights of the scores (L·b·h·t²)", cd, L * scores * c)
        add(f"FFN: {ffn_name} (L·6·btf)", cd, L * 6 * ffn * c)
        add("norm and softmax row statistics (L·(4·bt + 2·bht))", f32,
            L * (4 * rows + 2 * score_rows) * F32_BYTES)  # fmt: skip
        if cfg.scan_layers:
            add("causal mask of the scores, hoisted out of the scan (b·h·t²)", "bool", scores)
            add("mask fill of the scores, hoisted out of the scan (b·h·t²)", f32,
                scores * F32_BYTES)  # fmt: skip
        if c != F32_BYTES:
            held = _param_groups(cfg).layer_matrices / _param_divisors(mode, m).layer_matrices
            add("layer weights cast to the compute dtype", cd, _ceil(held) * c)
    else:
        add("layer inputs (L·btd)", cd, L * resid * c)
        if cfg.remat == "dots":
            proj = heads + 2 * kv + resid + (2 if llama else 1) * ffn
            add("matmul outputs saved by the dots policy: q,k,v,o,FFN (L)", cd, L * proj * c)
            transient_c = 3 * resid + 4 * heads + ffn
        else:  # full
            transient_c = 3 * resid + 4 * heads + (3 if llama else 2) * ffn
        add("one layer recomputed in the backward (compute dtype part)", cd, transient_c * c)
        add("one layer recomputed: attention scores", f32, scores * F32_BYTES)
        add("one layer recomputed: softmax weights", cd, scores * c)
    add("final norm input and normalised x, float32 (2·btd)", f32, 2 * resid * F32_BYTES)
    add("final norm output (btd)", cd, resid * c)
    add("exp of the logits for the log-softmax (b·t·V)", f32, logits * F32_BYTES)
    add("logits gradient (b·t·V)", f32, logits * F32_BYTES)
    if c != F32_BYTES:
        readout = cfg.d_model * cfg.vocab_size / _param_divisors(mode, m).vocab_tables
        add("read-out matrix cast to the compute dtype", cd, _ceil(readout) * c)
    return tuple(terms)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device during a training step, and whether they fit the device.

    params f32, grads f32, optimizer f32 (AdamW m and v), activations per ``activation_terms``
    (compute dtype except scores and logits, float32). ``fits`` is None without hardware.
    """

    params: int
    grads: int
    optimizer: int
    activations: int
    total: int
    capacity_bytes: int | None
    fits: bool | None
    activation_terms: tuple[ActivationTerm, ...] = field(default=())
    dtypes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, int]:
        """The five byte figures (the keys of ``memory_per_device_bytes``)."""
        return {
            "params": self.params,
            "grads": self.grads,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "total": self.total,
        }


def memory_capacity_per_device(hardware: HardwareProfile, n: int) -> int:
    """Bytes one device may use: the chip's memory, or a 1/n share of a shared host's."""
    return hardware.memory_bytes // n if hardware.devices_share_host else hardware.memory_bytes


def memory_per_device(
    cfg: ModelConfig,
    *,
    mode: str,
    mesh: tuple[int, int] | None,
    batch: int,
    seq: int,
    hardware: HardwareProfile | None = None,
) -> MemoryEstimate:
    """Per-device training memory (bytes) for ``mode`` on ``mesh`` = (data, tensor).

    Bytes per parameter: 4 (f32 params) + 4 (f32 grads) + 8 (AdamW moments) = 16, each divided
    by the mode's sharding (``params_per_device``). The model keeps f32 parameters and casts
    them at use, so there is no separate master copy. Peaks of the optimizer update (a
    parameter-sized update tree) and XLA temporaries are not modelled.
    """
    _validate(cfg, mode, mesh, batch, seq)
    n_params = params_per_device(cfg, mode=mode, mesh=mesh)
    terms = activation_terms(cfg, mode=mode, mesh=mesh, batch=batch, seq=seq)
    params, grads, optimizer = (
        n_params * PARAM_BYTES,
        n_params * GRAD_BYTES,
        n_params * OPTIMIZER_BYTES,
    )
    activations = sum(term.bytes for term in terms)
    total = params + grads + optimizer + activations
    capacity = (
        None if hardware is None else memory_capacity_per_device(hardware, n_devices(mode, mesh))
    )
    dtypes = {
        "params": "float32",
        "grads": "float32",
        "optimizer": "float32 (AdamW m, v)",
        "activations": f"{cfg.dtype}; attention scores and logits float32",
    }
    fits = None if capacity is None else total <= capacity
    return MemoryEstimate(
        params, grads, optimizer, activations, total, capacity, fits, terms, dtypes
    )


# ----------------------------------------------------------------------------- communication


@dataclass(frozen=True)
class CommEstimate:
    """Bytes each device sends per training step, by collective kind.

    Ring algorithms over an axis of n devices, V the full (gathered / reduced) array's bytes:
    AllGather and ReduceScatter send V·(n-1)/n, AllReduce 2·V·(n-1)/n ("How To Scale Your
    Model", jax-ml/scaling-book: T ≈ V/W and 2V/W, which drops the (n-1)/n factor).
    """

    all_reduce: float
    all_gather: float
    reduce_scatter: float

    @property
    def total(self) -> float:
        return self.all_reduce + self.all_gather + self.reduce_scatter

    def to_dict(self) -> dict[str, float]:
        return {
            "all_reduce": self.all_reduce,
            "all_gather": self.all_gather,
            "reduce_scatter": self.reduce_scatter,
            "total": self.total,
        }


def _ring(n: int) -> float:
    return (n - 1) / n


def comm_bytes_per_device(
    cfg: ModelConfig, *, mode: str, mesh: tuple[int, int] | None, batch: int, seq: int
) -> CommEstimate:
    """Collective bytes sent per device per step (see ``CommEstimate`` for the ring model).

    Data axis (size > 1), gradients in float32 like the parameters:
    - parameters sharded over data (fsdp, fsdp_tp, per ``parallel.SPEC_TABLE``): AllGather of
      the f32 parameters in the forward and again in the backward, ReduceScatter of their
      gradients (ZeRO-3 / FSDP). Assumes the gather happens before the cast to the compute
      dtype, as the model casts at use.
    - parameters replicated over data (all of them under dp and tp, the norms under fsdp and
      fsdp_tp): AllReduce of their gradients.
    Tensor axis (tp, fsdp_tp), Megatron (Shoeybi et al. 2019): per layer two AllReduces of the
    (b, t, d) activations in the forward (after o and after w2) and two in the backward (input
    gradients of q/k/v and w1/w3), in the compute dtype; remat ``full`` repeats the two forward
    ones. Plus one for the vocabulary-split embedding lookup (float32: the table is cast after
    the gather) and one for the vocabulary-split head's input gradient (compute dtype).
    ``none`` (one device) and axes of size 1: nothing.
    """
    _validate(cfg, mode, mesh, batch, seq)
    m = effective_mesh(mode, mesh)
    data, tensor = m
    g, div = _param_groups(cfg), _param_divisors(mode, m)
    all_reduce = all_gather = reduce_scatter = 0.0
    if data > 1:
        sharded = replicated = 0.0  # f32 bytes per device, before the data split
        for name in ("layer_matrices", "vocab_tables", "positions", "vectors"):
            count, ways = getattr(g, name), getattr(div, name)
            if mode in FSDP_MODES and ways % data == 0 and ways > 1:
                sharded += F32_BYTES * count / (ways // data)
            else:
                replicated += F32_BYTES * count / ways
        all_gather += 2 * sharded * _ring(data)
        reduce_scatter += sharded * _ring(data)
        all_reduce += 2 * replicated * _ring(data)
    if mode in TP_MODES and tensor > 1:
        bl = math.ceil(batch / data)
        activation = bl * seq * cfg.d_model * DTYPE_BYTES[cfg.dtype]
        per_layer = 4 + (2 if cfg.remat == "full" else 0)
        count = cfg.n_layers * per_layer + 1  # + the head's input gradient
        all_reduce += count * 2 * activation * _ring(tensor)
        all_reduce += 2 * bl * seq * cfg.d_model * F32_BYTES * _ring(tensor)  # embedding
    return CommEstimate(all_reduce, all_gather, reduce_scatter)


# ----------------------------------------------------------------------------- roofline


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
    _validate(cfg, mode, mesh, batch, seq)
    m = effective_mesh(mode, mesh)
    n = m[0] * m[1]
    flops = flop_counts(cfg, batch=batch, seq=seq, causal_halving=causal_halving)
    memory = memory_per_device(cfg, mode=mode, mesh=m, batch=batch, seq=seq, hardware=hardware)
    comm = comm_bytes_per_device(cfg, mode=mode, mesh=m, batch=batch, seq=seq)
    peak = hardware.peak_flops(cfg.dtype)
    if hardware.devices_share_host:
        peak /= n
    workers = m[0] * _tensor_split(mode, m[1])  # devices that split the work (not replicas)
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
