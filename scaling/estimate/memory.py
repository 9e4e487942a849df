"""Training memory per device: parameters, gradients, AdamW moments and the activations jax saves
for the backward pass, each with its dtype."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scaling import sharding
from scaling.config import FUSED_ATTENTIONS, ModelConfig
from scaling.estimate.flops import expert_rows
from scaling.estimate.hardware import HardwareProfile
from scaling.estimate.mesh import (
    DTYPE_BYTES,
    F32_BYTES,
    ceil,
    effective_mesh,
    n_devices,
    tensor_split,
    validate,
)
from scaling.estimate.params import held_groups, params_per_device, readout_held

# Tensors of width d_ff that jax saves per layer for the dense FFN's backward, by kind (counted
# with ``jax._src.ad_checkpoint.saved_residuals`` on the loss, jax 0.10.2): the w1 (and w3)
# outputs and the w2 input; ``ops.gated`` recomputes the activation's internals.
FFN_SAVED = {"swiglu": 3, "gelu_tanh": 2, "geglu": 3, "gelu": 2, "relu": 2}
PARAM_BYTES = F32_BYTES  # parameters are always float32 (cast to the compute dtype at use)
GRAD_BYTES = F32_BYTES  # gradients of float32 parameters are float32
OPTIMIZER_BYTES = 2 * F32_BYTES  # AdamW: two float32 moments per parameter (optax.adamw)


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
    cfg: ModelConfig,
    *,
    mode: str,
    mesh: tuple[int, int] | None,
    batch: int,
    seq: int,
    loss_chunk: int = 0,
) -> tuple[ActivationTerm, ...]:
    """Activations kept alive for the backward pass, per device, grouped with their dtypes.

    Remat ``none`` follows what jax saves for this model's backward
    (``jax.ad_checkpoint.print_saved_residuals`` on the loss), which the scanned step
    materialises as stacked (L, ...) arrays. Per layer:

    - the residual stream into the two norms (``ops.rms_norm``/``layer_norm`` keep their
      input and recompute the normalised x in the backward): 2·c·btd
    - the two norm outputs (the q/k/v and FFN matmul inputs, reshaped to rows once): 2·c·btd
    - q and k after RoPE, v, all repeated to h heads, and the attention output: 4·c·bt(h·k);
      with RoPE the gathered cos and sin of q and k, 4·c·bt·k/2
    - the softmax weights (``ops.masked_softmax`` keeps only them), float32 b·h·t², and their
      cast to the compute dtype, c·b·h·t², when that is not float32 (``xla``: jax's softmax
      keeps the float32 exp and the weights, and the row sum and its square, 2·bht)
    - FFN: k·c·btf with k per kind (``FFN_SAVED``): gated 3 (w1's and w3's outputs and the
      gated product), plain 2 (w1's output and its activation); ``ops.gated``
      recomputes the activation's intermediates
    - soft-capped attention scores keep tanh and its input, float32: 2·4·b·h·t²
    - row statistics: the norms' 1/rms (or 1/std), float32 2·bt.

    Korthikanti et al. 2022 (34·s·b·h + 5·a·s²·b bytes for 16-bit activations, assuming
    fused elementwise chains) counts ~17 c-sized (b, t, d) tensors per layer; with the lean
    backward rules above a bf16 Llama layer keeps ~16 (SwiGLU's 3·btf is 8 of them) plus RoPE's
    tables, and the float32 softmax weights with their cast, 6·a·s²·b bytes against its 5
    (``korthikanti_activation_bytes_per_layer`` is kept as the reference). The
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
    final norm's input and output, exp of the float32 logits for
    the log-softmax and the logits gradient (with a final soft-cap also tanh and its input,
    float32). With bf16 compute the bf16 copies of the
    read-out matrix, and under remat ``none`` of the layer weights, are saved too.

    Sharding: the batch is split over data; under tp/fsdp_tp the per-head, FFN-hidden and
    vocabulary (logits, head split on V) activations are split over tensor, the (b, t, d)
    residual-stream ones are not. Gradient temporaries of the backward (a layer's score
    gradients, ~3 % of XLA's temp at seq 256), XLA workspace and fragmentation are not
    counted; tests/test_xla_check.py compares the total with XLA's ``memory_analysis``.

    Attention implementations (``cfg.attention``, ``scaling.attention``): ``reference`` as
    above; ``xla`` keeps the same (b, h, t, t) tensors but k and v at their own g heads (no
    repeat); the fused ``cudnn`` and ``splash`` kernels store no t×t scores, weights or mask:
    they keep q, k, v, the output and one float32 log-sum-exp per query row and head (bht),
    and recompute the scores block by block in the backward (Dao et al. 2022, FlashAttention).
    ``loss_chunk`` > 0 (``scaling.loss``): the logits terms are one chunk's, b·c·V, not b·t·V.
    """
    validate(cfg, mode, mesh, batch, seq)
    n = _Elements.of(cfg, mode=mode, mesh=effective_mesh(mode, mesh), batch=batch, seq=seq)
    terms: list[ActivationTerm] = []

    def add(name: str, dtype: str, n_bytes: float) -> None:
        terms.append(ActivationTerm(name, dtype, int(n_bytes)))

    if cfg.remat == "none":
        _saved_by_layers(cfg, n, add)
        if DTYPE_BYTES[cfg.dtype] != F32_BYTES:
            held = held_groups(cfg, mode=n.mode, mesh=n.mesh).layer_matrices
            add("layer weights cast to the compute dtype", cfg.dtype, ceil(held) * n.c)
    else:
        _saved_under_remat(cfg, n, add)
    if cfg.moe:
        _whole_experts(cfg, n, add)
    _saved_outside_layers(cfg, n, add, loss_chunk or seq, seq)
    return tuple(terms)


@dataclass(frozen=True)
class _Elements:
    """Per-device element counts of the activation shapes (the batch split over data, heads,
    FFN width and vocabulary over tensor where the mode splits them)."""

    mode: str
    mesh: tuple[int, int]
    c: int  # bytes of the compute dtype
    resid: int  # (b, t, d): not split by tensor
    rows: int  # (b, t, 1) statistics
    heads: int  # (b, h, t, k)
    kv: int  # (b, h_kv, t, k) before the repeat to h heads
    ffn: int  # (b, t, f)
    scores: int  # (b, h, t, t)
    score_rows: int  # (b, h, t, 1)
    logits: int  # (b, t, V)
    routed: int = 0  # MoE: tokens one device routes (its own; every token under ep dropless)
    expert_rows: int = 0  # MoE: expert rows one device runs (n·k dropless, E·C capacity)

    @classmethod
    def of(cls, cfg: ModelConfig, *, mode: str, mesh, batch: int, seq: int) -> _Elements:
        ts = tensor_split(mode, mesh[1])
        bt = math.ceil(batch / mesh[0]) * seq
        return cls(
            mode=mode,
            mesh=mesh,
            c=DTYPE_BYTES[cfg.dtype],
            resid=bt * cfg.d_model,
            rows=bt,
            heads=bt * ceil(cfg.n_heads * cfg.d_head / ts),
            kv=bt * ceil(cfg.kv_heads * cfg.d_head / ts),
            ffn=bt * ceil(cfg.d_ff / ts),
            scores=bt * ceil(cfg.n_heads / ts) * seq,
            score_rows=bt * ceil(cfg.n_heads / ts),
            logits=bt * ceil(cfg.vocab_size / ts),
            **_moe_elements(cfg, mode, mesh, batch, seq),
        )


def _moe_elements(cfg: ModelConfig, mode: str, mesh, batch: int, seq: int) -> dict[str, int]:
    """Tokens and expert rows of one device's MoE layer (``scaling.moe.sharded_moe_ffn``):
    each device routes its own b·t tokens as one group, except dropless under expert
    parallelism, which gathers all B·t; ``expert_rows`` counts the rows the dispatch buffers
    hold (capacity: E·C, C from the routed tokens; dropless: n·k)."""
    if not cfg.moe:
        return {}
    gathers = sharding.splits_experts(mode) and cfg.moe_dispatch == "dropless"
    routed = batch * seq if gathers else math.ceil(batch / mesh[0]) * seq
    return {"routed": routed, "expert_rows": expert_rows(cfg, routed)[1]}


def _saved_by_layers(cfg: ModelConfig, n: _Elements, add) -> None:
    """Remat none: what every layer saves, stacked over L by the scan."""
    L, c, cd, f32 = cfg.n_layers, n.c, cfg.dtype, "float32"
    add("residual stream into the norms (L·2·btd)", cd, L * 2 * n.resid * c)
    add("norm outputs = matmul inputs (L·2·btd)", cd, L * 2 * n.resid * c)
    if cfg.attention == "reference":
        add("q, k (RoPE), v repeated to h heads; attention output (L·4·bt·hk)", cd,
            L * 4 * n.heads * c)  # fmt: skip
    else:
        add("q (RoPE), attention output (L·2·bt·hk); k (RoPE), v at g heads (L·2·bt·gk)", cd,
            L * (2 * n.heads + 2 * n.kv) * c)  # fmt: skip
    if cfg.positions == "rope":
        # Loop-invariant: the scan saves the four (b, t, k/2) gathers once for all layers.
        copies, label = (
            (1, "hoisted out of the scan (2·bt·k)") if cfg.scan_layers else (L, "(L·2·bt·k)")
        )
        add(f"RoPE cos and sin gathered for q and k, {label}", cd,
            copies * 2 * n.rows * cfg.d_head * c)  # fmt: skip
    if cfg.moe:
        _moe_saved(cfg, n, add, FFN_SAVED[cfg.ffn])
    else:
        kept = FFN_SAVED[cfg.ffn]
        add(f"FFN: {cfg.ffn} matmul outputs and product (L·{kept}·btf)", cd, L * kept * n.ffn * c)
    if cfg.attention in FUSED_ATTENTIONS:
        add("norm row statistics (L·2·bt); fused attention log-sum-exp (L·bht)", f32,
            L * (2 * n.rows + n.score_rows) * F32_BYTES)  # fmt: skip
        return
    if cfg.attention == "xla":  # jax's softmax, differentiated as written
        add("exp of the attention scores (L·b·h·t²)", f32, L * n.scores * F32_BYTES)
        add("softmax weights of the scores (L·b·h·t²)", cd, L * n.scores * c)
        add("softmax sum and its square (L·2·bht)", f32, L * 2 * n.score_rows * F32_BYTES)
    else:
        add("softmax weights, float32 (L·b·h·t²)", f32, L * n.scores * F32_BYTES)
        if c != F32_BYTES:
            add("softmax weights cast to the compute dtype (L·b·h·t²)", cd, L * n.scores * c)
    if cfg.attn_softcap is not None:
        add(
            "soft-capped scores: tanh and its input (L·2·b·h·t²)", f32, L * 2 * n.scores * F32_BYTES
        )
    add("norm row statistics (L·2·bt)", f32, L * 2 * n.rows * F32_BYTES)
    if cfg.scan_layers:
        add("causal mask of the scores, hoisted out of the scan (b·h·t²)", "bool", n.scores)
        add("mask fill of the scores, hoisted out of the scan (b·h·t²)", f32,
            n.scores * F32_BYTES)  # fmt: skip


def _moe_saved(cfg: ModelConfig, n: _Elements, add, kept: int) -> None:
    """Remat none, a mixture of experts (``saved_residuals`` of the loss, jax 0.10.2), per
    layer with R expert rows and n·k assignments of the n tokens routed on this device: the
    FFN kind's intermediates on the R rows (kept·R·f); capacity's dispatched expert inputs
    (R·d), the expert outputs of the assignments before their routing weight (nk·d) and
    the scatter mask (nk·d bytes); dropless's gathered rows and their outputs (2·nk·d),
    under expert parallelism with the mask of the rows routed to this device (nk·d bytes);
    the router's probabilities for the device's own b·t tokens, float32 (bt·E); a shared
    expert's intermediates (kept·bt·f). The tokens going in are the FFN norm's output,
    counted with the norms; the combined output is not saved.

    jax also lists capacity's expert outputs (R + 1 rows: the dropped tokens' zero row) as a
    residual of the combine's gather, but the gather's transpose never reads them and XLA's
    compiled scan does not keep them: per layer, XLA's memory grows by what is counted here
    within 0.6 % in none, ep, fsdp_ep, dp, fsdp and fsdp_tp, 1.3 % in tp (tiny-moe, L = 2 to 4
    and 4 to 8). Counting them too (up to stop 27) put 1-17 % too much into every layer (tp
    17 %, fsdp_tp 6 %, none 4 %), which at L = 4 happened to cancel the backward transients
    left unmodelled under the sharded modes (+1.1 to +2.0 MB at 8 × 128 tokens for ep,
    fsdp_ep, dp, fsdp and fsdp_tp, nearly the same at L = 2, 4 and 8). Under tp, where GSPMD
    partitions the MoE layer itself, XLA holds ~0.9 MB more per 128-token sequence than
    counted, at every depth (+7.4, +14.6, +33.1 MB at batch 8, 16, 32; 1.21 of the estimate
    at L = 4): not modelled. XLA's buffer assignment shows where: the layer's backward holds
    its capacity buffers and assignment rows whole on every tensor device (the dispatched
    inputs' gradients all-reduced over tensor, the combine's scatter: ~3·R·d + 3·nk·d, 7.1 MB
    at batch 8), more than the loss's logits split over tensor (2·b·t·V/8, 2.1 MB), so the
    step's peak moves from the loss into the last MoE layer's backward."""
    L, c, cd, f32 = cfg.n_layers, n.c, cfg.dtype, "float32"
    assignments = n.routed * cfg.experts_per_token * cfg.d_model
    width = n.ffn // n.rows  # d_ff, or its share under a tensor split
    add(f"MoE: {cfg.ffn} intermediates on the expert rows (L·{kept}·R·f)", cd,
        L * kept * n.expert_rows * width * c)  # fmt: skip
    if cfg.moe_dispatch == "capacity":
        add("MoE: dispatched expert inputs (L·R·d), expert outputs of the assignments (L·nk·d)",
            cd, L * (n.expert_rows * cfg.d_model + assignments) * c)  # fmt: skip
        add("MoE: scatter mask of the assignments (L·nk·d)", "bool", L * assignments)
    else:
        add("MoE: gathered rows and their outputs (L·2·nk·d)", cd, L * 2 * assignments * c)
        if sharding.splits_experts(n.mode):
            add("MoE: mask of the gathered rows routed here (L·nk·d)", "bool", L * assignments)
    add("MoE: router probabilities (L·bt·E)", f32, L * n.rows * cfg.n_experts * F32_BYTES)
    if cfg.moe_shared_expert:
        add(f"MoE: shared expert's {cfg.ffn} intermediates (L·{kept}·btf)", cd,
            L * kept * n.ffn * c)  # fmt: skip


def _whole_experts(cfg: ModelConfig, n: _Elements, add) -> None:
    """``dp``, ``fsdp`` and ``fsdp_tp`` run every expert on every device inside the MoE layer's
    ``shard_map`` (``scaling.moe.sharded_moe_ffn``; fsdp_tp gathers them over data only,
    their width stays split over tensor). Under remat ``none`` the scan keeps, for
    every layer, dp's expert gradients before their sum over data (float32) or the expert
    weights gathered over data (compute dtype; fsdp gathers them inside the ``shard_map``,
    fsdp_tp at its boundary): once the expert parameters; and
    the backward holds one layer's whole-expert gradients (float32) before they are summed
    or reduce-scattered. XLA's excess over the other terms (tiny-moe, 8 devices, jax 0.10.2)
    was L + 1.6 layers' expert bytes for dp and L + 1.5 for fsdp (L = 2, 4, 8: 3.45, 5.33,
    9.07 and 3.58, 5.64, 10.0); counted here: L + 1. Under remat ``full`` (the layers
    recomputed one at a time) fsdp and fsdp_tp hold only that one layer's gradients: measured
    0.98, 0.97, 0.97 layers for fsdp and 0.80 for fsdp_tp at L = 2, 4, 8, counted 1; dp's
    backward loop still stacks the expert gradients of the layers before their sum: measured
    0.98, 2.70, 7.04 layers at L = 2, 4, 8, counted L − 1."""
    token_axis, expert_axis = sharding.moe_axes(n.mode)
    if token_axis is None or expert_axis is not None or n.mesh[0] == 1:
        return
    # fsdp_tp gathers the experts over data only: their width stays split over tensor
    layer = cfg.n_experts * (3 if cfg.ffn_gated else 2) * cfg.d_model * cfg.d_ff // n.mesh[1]
    over_data = sharding.shards_over_data(n.mode)
    if cfg.remat == "none" and over_data:
        add("MoE: expert weights gathered whole, kept for the backward (L·E·(2|3)·d·f)",
            cfg.dtype, cfg.n_layers * layer * n.c)  # fmt: skip
    elif cfg.remat == "none":
        add("MoE: expert gradients of every layer before their sum over data (L·E·(2|3)·d·f)",
            "float32", cfg.n_layers * layer * F32_BYTES)  # fmt: skip
    elif not over_data:  # dp, remat: the stack holds the one layer's gradients too
        add("MoE: expert gradients of the layers before their sum over data ((L−1)·E·(2|3)·d·f)",
            "float32", (cfg.n_layers - 1) * layer * F32_BYTES)  # fmt: skip
        return
    add("MoE: one layer's whole-expert gradients in the backward (E·(2|3)·d·f)", "float32",
        layer * F32_BYTES)  # fmt: skip


def _saved_under_remat(cfg: ModelConfig, n: _Elements, add) -> None:
    """Remat full / dots: layer inputs (and the dots policy's matmul outputs), plus one layer
    recomputed during the backward."""
    L, c, cd = cfg.n_layers, n.c, cfg.dtype
    gated = 2 if cfg.ffn_gated else 1
    add("layer inputs (L·btd)", cd, L * n.resid * c)
    if cfg.remat == "dots":
        proj = n.heads + 2 * n.kv + n.resid + gated * n.ffn
        add("matmul outputs saved by the dots policy: q,k,v,o,FFN (L)", cd, L * proj * c)
        transient = 3 * n.resid + 4 * n.heads + n.ffn
    elif cfg.moe:  # full; the recomputed layer's expert rows replace the dense FFN's
        transient = 3 * n.resid + 4 * n.heads + (gated + 1) * n.expert_rows * n.ffn // n.rows
        transient += 2 * n.expert_rows * cfg.d_model + 2 * n.routed * cfg.d_model
    else:  # full
        transient = 3 * n.resid + 4 * n.heads + (gated + 1) * n.ffn
    add("one layer recomputed in the backward (compute dtype part)", cd, transient * c)
    if cfg.attention in FUSED_ATTENTIONS:
        add("one layer recomputed: fused attention log-sum-exp (bht)", "float32",
            n.score_rows * F32_BYTES)  # fmt: skip
        return
    add("one layer recomputed: attention scores", "float32", n.scores * F32_BYTES)
    add("one layer recomputed: softmax weights", cd, n.scores * c)


def _saved_outside_layers(cfg: ModelConfig, n: _Elements, add, chunk: int, seq: int) -> None:
    """The read-out and the loss; with a loss chunk c < t only one (b, c, V) block of logits
    is live at a time, in the forward and in the backward's recompute."""
    f32 = "float32"
    add("final norm input and output (2·btd)", cfg.dtype, 2 * n.resid * n.c)
    rows, logits = ("b·t·V", n.logits) if chunk >= seq else ("b·c·V", n.logits // seq * chunk)
    add(f"exp of the logits for the log-softmax ({rows})", f32, logits * F32_BYTES)
    add(f"logits gradient ({rows})", f32, logits * F32_BYTES)
    if cfg.final_softcap is not None:
        add(f"soft-capped logits: tanh and its input (2·{rows})", f32, 2 * logits * F32_BYTES)
    if n.c != F32_BYTES:
        readout = readout_held(cfg, mode=n.mode, mesh=n.mesh)
        add("read-out matrix cast to the compute dtype", cfg.dtype, ceil(readout) * n.c)


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
    loss_chunk: int = 0,
) -> MemoryEstimate:
    """Per-device training memory (bytes) for ``mode`` on ``mesh`` = (data, tensor).

    Bytes per parameter: 4 (f32 params) + 4 (f32 grads) + 8 (AdamW moments) = 16, each divided
    by the mode's sharding (``params_per_device``). The model keeps f32 parameters and casts
    them at use, so there is no separate master copy. Peaks of the optimizer update (a
    parameter-sized update tree) and XLA temporaries are not modelled.
    """
    validate(cfg, mode, mesh, batch, seq)
    n_params = params_per_device(cfg, mode=mode, mesh=mesh)
    terms = activation_terms(cfg, mode=mode, mesh=mesh, batch=batch, seq=seq, loss_chunk=loss_chunk)
    params, grads, optimizer = (
        n_params * PARAM_BYTES,
        n_params * GRAD_BYTES,
        n_params * OPTIMIZER_BYTES,
    )
    activations = sum(term.bytes for term in terms)
    total = params + grads + optimizer + activations
    known = hardware is not None and hardware.memory_bytes > 0  # 0: capacity not known
    capacity = memory_capacity_per_device(hardware, n_devices(mode, mesh)) if known else None
    dtypes = {
        "params": "float32",
        "grads": "float32",
        "optimizer": "float32 (AdamW m, v)",
        "activations": f"{cfg.dtype}; attention scores (unfused) and logits float32",
    }
    fits = None if capacity is None else total <= capacity
    return MemoryEstimate(
        params, grads, optimizer, activations, total, capacity, fits, terms, dtypes
    )
