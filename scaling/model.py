"""The shared decoder-only language model (Flax NNX); the architecture is read from
``ModelConfig``'s fields (``norm``, ``positions``, ``ffn``, the bias flags, ``sliding_window``,
soft-caps, ``embed_scale``...), never from a family name.

Pre-norm blocks (RMSNorm, Gemma's (1 + w) RMSNorm or LayerNorm; rotary, learned, sinusoidal or
no positions; gated (SwiGLU, GeGLU) or plain (GELU, ReLU) FFN) with a final norm before the
(tied or untied) head. Layers are created stacked (``nnx.vmap``) and run with
``jax.lax.scan`` so compile time does not grow with depth. The parameters it creates are
exactly ``scaling.roles.parameters(cfg)``; the muP rules come from ``scaling.mup``. Every
sub-layer runs under a ``jax.named_scope`` (embed, block, attention, ffn, norm, head), so
profiles read by name. Conventions follow Hugging Face's implementations (RoPE rotates the two
halves of each head, ``rotate_half``), so imported weights need no permutation.

Parameters are float32; ``cfg.dtype`` is the compute dtype (weights are cast at use).
Shapes use these letters: b batch, t/s query/key positions, d model width, f FFN width,
h heads, k head width, v vocabulary, l layers.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, Float, Int

from scaling import attention, moe, mup, sharding
from scaling.config import ModelConfig
from scaling.ops import gated, layer_norm, masked_softmax, rms_norm

TRUNCATION = 3.0  # truncated-normal inits are cut at ±3σ


def truncated_normal(key: jax.Array, shape: tuple[int, ...], std: float) -> Array:
    """Normal(0, std²) truncated at ±3·std (std is that of the untruncated distribution)."""
    return std * jax.random.truncated_normal(key, -TRUNCATION, TRUNCATION, shape, jnp.float32)


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def matmul_rows(
    x: Float[Array, "... i"], w: Float[Array, "i o"], *, transpose_w: bool = False, **kwargs
) -> Float[Array, "... o"]:
    """``x @ w`` (or ``x @ wᵀ``) with the leading dimensions of ``x`` merged into one row
    dimension first: the weight gradient is then one 2-D ``dot`` contracting the rows of ``x``
    and of the output gradient in the layout both already have. With the leading dimensions kept
    (``einsum("...i,io->...o")``), XLA's CPU backend copied the output gradient into a transposed
    layout for every weight gradient (~8 % of a 125m step in FFN copies; the head's logits
    gradient too). ``kwargs`` go to ``jnp.matmul`` (``preferred_element_type``)."""
    rows = x.reshape(-1, x.shape[-1])
    out = jnp.matmul(rows, w.T if transpose_w else w, **kwargs)
    return out.reshape(*x.shape[:-1], out.shape[-1])


@jax.custom_vjp
def _rows_gathered(w: Float[Array, "i o"]) -> Float[Array, "i o"]:
    return jax.lax.with_sharding_constraint(w, P(None, P.UNCONSTRAINED))


def _rows_gathered_fwd(w: Array) -> tuple[Array, None]:
    return _rows_gathered(w), None


def _rows_gathered_bwd(_, g: Array) -> tuple[Array]:
    # The cotangent is left to GSPMD: constraining it like the forward (what
    # with_sharding_constraint's own transpose does) turned the weight gradient's
    # reduce-scatter into an all-reduce.
    return (g,)


_rows_gathered.defvjp(_rows_gathered_fwd, _rows_gathered_bwd)


def _split_over_data() -> bool:
    """Whether the current (abstract) mesh has a ``data`` axis of more than one device."""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and "data" in mesh.axis_names and mesh.shape["data"] > 1


def gathered_over_data(w: Float[Array, "i o"]) -> Float[Array, "i o"]:
    """``w`` with its input dimension gathered over the mesh's ``data`` axis (fsdp's split),
    its output dimension left as it is (split over ``tensor`` under fsdp_tp); the identity
    outside a mesh or without a ``data`` axis, and in value everywhere."""
    return _rows_gathered(w) if _split_over_data() else w


class Linear(nnx.Module):
    """``y = x W (+ b)``; ``W`` is stored ``(d_in, d_out)``, the bias (zeros at init) ``(d_out,)``.

    Default init: truncated normal with σ² = 2 / (d_in + d_out), cut at ±3σ. For square hidden
    matrices this equals σ_base/√m at width m·base, which is also muP's hidden-matrix init.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        rngs: nnx.Rngs,
        std: float | None = None,
        bias: bool = False,
    ):
        std = math.sqrt(2.0 / (d_in + d_out)) if std is None else std
        self.weight = nnx.Param(truncated_normal(rngs.params(), (d_in, d_out), std))
        self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32)) if bias else None

    def __call__(
        self, x: Float[Array, "... i"], *, gather_input_dim: bool = False
    ) -> Float[Array, "... o"]:
        """``gather_input_dim``: gather ``W`` over ``data`` explicitly (``gathered_over_data``)
        so the forward's dot and the backward's share one gathered operand."""
        w = self.weight[...].astype(x.dtype)
        y = matmul_rows(x, gathered_over_data(w) if gather_input_dim else w)
        return y if self.bias is None else y + self.bias[...].astype(x.dtype)


class Embedding(nnx.Module):
    """Token (or position) table ``(n, d)``; ``attend`` is the tied read-out ``x Eᵀ``."""

    def __init__(self, n: int, d: int, *, rngs: nnx.Rngs, std: float = 0.02):
        self.weight = nnx.Param(truncated_normal(rngs.params(), (n, d), std))

    def __call__(self, ids: Int[Array, ...]) -> Float[Array, "... d"]:
        return jnp.take(self.weight[...], ids, axis=0)

    def attend(self, x: Float[Array, "... d"]) -> Float[Array, "... v"]:
        """Logits accumulate in float32 whatever the compute dtype."""
        w = self.weight[...].astype(x.dtype)
        return matmul_rows(x, w, transpose_w=True, preferred_element_type=jnp.float32)


class RMSNorm(nnx.Module):
    """``x / sqrt(mean(x²) + eps) · g``, computed in float32 and cast back. With
    ``unit_offset`` the gain is ``1 + w`` and ``w`` starts at 0 (Gemma)."""

    def __init__(self, d: int, *, eps: float = 1e-5, unit_offset: bool = False):
        self.eps, self.unit_offset = eps, unit_offset
        self.weight = nnx.Param(jnp.full((d,), 0.0 if unit_offset else 1.0, jnp.float32))

    @jax.named_scope("norm")
    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        gain = 1.0 + self.weight[...] if self.unit_offset else self.weight[...]
        return rms_norm(x, gain, self.eps)


class LayerNorm(nnx.Module):
    """``(x - mean) / sqrt(var + eps) · g (+ b)``, computed in float32 and cast back."""

    def __init__(self, d: int, *, eps: float = 1e-5, bias: bool = True):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((d,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((d,), jnp.float32)) if bias else None

    @jax.named_scope("norm")
    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        y = layer_norm(x, self.weight[...], self.eps)
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(x.dtype)


def silu(x: Array) -> Array:
    return x * jax.nn.sigmoid(x)


def gelu(x: Array) -> Array:
    """GELU, tanh approximation (GPT-2's ``gelu_new``, Gemma's ``gelu_pytorch_tanh``)."""
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_exact(x: Array) -> Array:
    """GELU with the error function: x·Φ(x)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def relu(x: Array) -> Array:
    return jnp.maximum(x, 0)


ACTIVATIONS = {"silu": silu, "gelu_tanh": gelu, "gelu": gelu_exact, "relu": relu}


def softcap(x: Array, cap: float | None) -> Array:
    """``cap · tanh(x / cap)`` (Gemma 2's logit soft-capping); identity for ``cap=None``."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def scaled_dot_product_attention(
    q: Float[Array, "... t k"],
    k: Float[Array, "... s k"],
    v: Float[Array, "... s k"],
    mask: Bool[Array, "t s"] | None = None,
    scale: float | None = None,
    cap: float | None = None,
) -> Float[Array, "... t k"]:
    """softmax(softcap(q kᵀ · scale), masked) v; ``mask`` True means "may attend". Scores are
    float32."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = jnp.einsum("...tk,...sk->...ts", q, k, preferred_element_type=jnp.float32) * scale
    weights = masked_softmax(softcap(scores, cap), mask).astype(v.dtype)
    return jnp.einsum("...ts,...sk->...tk", weights, v)


def attention_mask(t: int, window: int | None) -> Bool[Array, "t s"]:
    """Causal mask; with a sliding ``window`` a query at i sees keys i - window < j ≤ i
    (Hugging Face's ``sliding_window_overlay``: the window counts the query itself)."""
    i = jnp.arange(t)[:, None]
    j = jnp.arange(t)[None, :]
    allowed = j <= i
    return allowed if window is None else allowed & (i - j < window)


def rope_inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """theta^(-2i/k) for i < k/2, with Llama-3.1's scaling when ``rope_scaling_factor`` > 1:
    wavelengths above original_context / low_freq_factor are divided by the factor, those below
    original_context / high_freq_factor kept, and those between interpolated smoothly (Meta's
    ``apply_scaling``; transformers' ``_compute_llama3_parameters``)."""
    k = cfg.d_head
    inv_freq = cfg.rope_theta ** (-np.arange(0, k, 2, dtype=np.float64) / k)
    factor = cfg.rope_scaling_factor
    if factor == 1.0:
        return inv_freq
    low, high, context = (
        cfg.rope_low_freq_factor,
        cfg.rope_high_freq_factor,
        cfg.rope_original_context,
    )
    wavelength = 2 * math.pi / inv_freq
    scaled = np.where(wavelength > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= context / high) & (wavelength <= context / low)
    return np.where(medium, smoothed, scaled)


@functools.lru_cache(maxsize=32)
def rope_tables(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, each ``(max_seq_len, d_head/2)``: angle[p, i] = p · inv_freq[i]."""
    angles = np.arange(cfg.max_seq_len, dtype=np.float64)[:, None] * rope_inverse_frequencies(cfg)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: Float[Array, "... t k"], cfg: ModelConfig, positions: Int[Array, "... t"]):
    """RoPE (Su et al. 2021) in the rotate-half layout (GPT-NeoX, Hugging Face): dimension i
    pairs with i + k/2 and the pair rotates by position · inv_freq[i]. The cos/sin tables are
    computed once per config (cached), not stored as model state."""
    cos_table, sin_table = rope_tables(cfg)
    cos = jnp.asarray(cos_table)[positions].astype(x.dtype)
    sin = jnp.asarray(sin_table)[positions].astype(x.dtype)
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


@functools.lru_cache(maxsize=8)
def sinusoidal_table(n: int, d: int) -> np.ndarray:
    """Vaswani et al. 2017: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same)."""
    angles = np.arange(n, dtype=np.float64)[:, None] * 10_000.0 ** (-np.arange(0, d, 2) / d)
    table = np.empty((n, d), np.float64)
    table[:, 0::2], table[:, 1::2] = np.sin(angles), np.cos(angles)
    return table.astype(np.float32)


def gated_activation(
    activation: str, h: Float[Array, "... f"], gate: Float[Array, "... f"] | None
) -> Float[Array, "... f"]:
    """``scaling.ops.gated`` with the activation named by ``ModelConfig.ffn_activation``."""
    return gated(ACTIVATIONS[activation], h, gate)


class FeedForward(nnx.Module):
    """Gated ``W2 (act(W1 x) ⊙ W3 x)`` (SwiGLU, GeGLU) or ``W2 act(W1 x)`` (GELU, ReLU)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f, bias = cfg.d_model, cfg.d_ff, cfg.ffn_bias
        self.activation = cfg.ffn_activation
        self.w1 = Linear(d, f, rngs=rngs, bias=bias)
        self.w3 = Linear(d, f, rngs=rngs, bias=bias) if cfg.ffn_gated else None
        self.w2 = Linear(f, d, rngs=rngs, bias=bias)
        # With the layer recomputed, GSPMD partitioned the recompute's and the backward's dots
        # with W1 and W3 separately; under fsdp_tp at 10m (jax 0.10.2) their all-gathers were
        # written with two forms of the same replica groups, so each weight was gathered three
        # times per layer instead of twice (+11 % of the step's collective bytes). Without remat
        # the explicit gather would be saved for the backward: a copy of every layer's weights.
        self.gather_inputs = cfg.remat != "none"

    @jax.named_scope("ffn")
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        rows = x.reshape(-1, x.shape[-1])  # once, so the backward keeps one copy of the input
        gathered = self.gather_inputs
        gate = None if self.w3 is None else self.w3(rows, gather_input_dim=gathered)
        hidden = gated_activation(self.activation, self.w1(rows, gather_input_dim=gathered), gate)
        # The batch constraint on the hidden keeps fsdp's backward ZeRO-3-like: without it
        # GSPMD moved the (b, t, f) activations instead of gathering w2 (10m on 4 devices:
        # 4x the bytes of the weight).
        return self.w2(shard_over_batch(hidden, features=True)).reshape(x.shape)


class CausalSelfAttention(nnx.Module):
    """Multi-head, grouped-query or multi-query causal self-attention; RoPE, a sliding window
    and score soft-capping when the config asks for them."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.n_heads, self.kv_heads, self.d_head = cfg.n_heads, cfg.kv_heads, cfg.d_head
        self.scale = mup.attention_scale(cfg)
        d, q_width, kv_width = cfg.d_model, cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head
        self.q = Linear(d, q_width, rngs=rngs, bias=cfg.qkv_bias)
        self.k = Linear(d, kv_width, rngs=rngs, bias=cfg.qkv_bias)
        self.v = Linear(d, kv_width, rngs=rngs, bias=cfg.qkv_bias)
        self.o = Linear(q_width, d, rngs=rngs, bias=cfg.attn_out_bias)

    def _heads(self, x: Array, n: int) -> Float[Array, "b h t k"]:
        b, t, _ = x.shape
        return x.reshape(b, t, n, self.d_head).transpose(0, 2, 1, 3)

    @jax.named_scope("attention")
    def __call__(self, x: Float[Array, "b t d"], positions: Int[Array, "b t"]) -> Array:
        cfg = self.cfg
        rows = x.reshape(-1, x.shape[-1])  # once, so the backward keeps one copy of the input
        q = self._heads(self.q(rows).reshape(*x.shape[:-1], -1), self.n_heads)
        k = self._heads(self.k(rows).reshape(*x.shape[:-1], -1), self.kv_heads)
        v = self._heads(self.v(rows).reshape(*x.shape[:-1], -1), self.kv_heads)
        if cfg.positions == "rope":
            q = apply_rope(q, cfg, positions[:, None, :])
            k = apply_rope(k, cfg, positions[:, None, :])
        b, _, t, _ = q.shape
        if cfg.attention != "reference":  # jax's or a fused kernel (scaling.attention)
            out = attention.attend(q, k, v, cfg, self.scale)
            return self.o(out.transpose(0, 2, 1, 3).reshape(b, t, self.n_heads * self.d_head))
        if self.kv_heads != self.n_heads:
            k = jnp.repeat(k, self.n_heads // self.kv_heads, axis=1)
            v = jnp.repeat(v, self.n_heads // self.kv_heads, axis=1)
        mask = attention_mask(t, cfg.sliding_window)
        out = scaled_dot_product_attention(q, k, v, mask, self.scale, cfg.attn_softcap)
        return self.o(out.transpose(0, 2, 1, 3).reshape(b, t, self.n_heads * self.d_head))


def make_norm(cfg: ModelConfig) -> RMSNorm | LayerNorm:
    if cfg.norm == "rms":
        return RMSNorm(cfg.d_model, eps=cfg.norm_eps, unit_offset=cfg.norm_unit_offset)
    return LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.norm_bias)


def make_ffn(cfg: ModelConfig, rngs: nnx.Rngs) -> FeedForward | moe.MoEFeedForward:
    """The dense FFN, or the mixture of experts when ``cfg.n_experts`` > 0 (built from this
    module's pieces: a ``(d, e)`` router, the shared expert as a dense FFN)."""
    if not cfg.moe:
        return FeedForward(cfg, rngs=rngs)
    return moe.MoEFeedForward(
        cfg,
        rngs=rngs,
        router=Linear(cfg.d_model, cfg.n_experts, rngs=rngs),
        shared=FeedForward(cfg, rngs=rngs) if cfg.moe_shared_expert else None,
        activation=ACTIVATIONS[cfg.ffn_activation],
        init=truncated_normal,
    )


class TransformerBlock(nnx.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + ffn(norm(x))``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, rngs=rngs)
        self.ffn_norm = make_norm(cfg)
        self.ffn = make_ffn(cfg, rngs)

    def __call__(self, x: Float[Array, "b t d"], positions: Int[Array, "b t"]) -> Array:
        return self.forward_with_aux(x, positions)[0]

    @jax.named_scope("block")
    def forward_with_aux(
        self, x: Float[Array, "b t d"], positions: Int[Array, "b t"]
    ) -> tuple[Float[Array, "b t d"], dict[str, Array]]:
        """The block's output and the MoE layer's router statistics ({} for a dense FFN)."""
        x = x + self.attn(self.attn_norm(x), positions)
        if isinstance(self.ffn, FeedForward):
            return x + self.ffn(self.ffn_norm(x)), {}
        out, aux = self.ffn(self.ffn_norm(x))
        return x + out, aux


class Head(nnx.Module):
    """The read-out: an untied ``(d, V)`` matrix or the tied token table, plus an optional
    bias; logits accumulate in float32."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, v = cfg.d_model, cfg.vocab_size
        std = mup.head_init_std(cfg)
        tied = cfg.tied_embeddings
        self.weight = None if tied else nnx.Param(truncated_normal(rngs.params(), (d, v), std))
        self.bias = nnx.Param(jnp.zeros((v,), jnp.float32)) if cfg.head_bias else None

    def logits(self, x: Float[Array, "b t d"], table: Embedding) -> Float[Array, "b t v"]:
        if self.weight is None:
            logits = table.attend(x)
        else:
            w = self.weight[...].astype(x.dtype)
            logits = matmul_rows(x, w, preferred_element_type=jnp.float32)
        return logits if self.bias is None else logits + self.bias[...]


def shard_over_batch(x: Array, *, features: bool = False) -> Array:
    """Keep activations split by batch over the mesh's ``data`` axis.

    Without this, GSPMD may carry the parameters' fsdp split (model width over ``data``) into
    the activations and leave the batch replicated, so every device would hold the whole
    batch's activations. ``features``: only the batch dimension is constrained, the others are
    left to GSPMD (an FFN hidden split over ``tensor`` under tp stays split). A no-op outside
    a mesh context or without a ``data`` axis.
    """
    if not _split_over_data():
        return x
    rest = P.UNCONSTRAINED if features else None
    return jax.lax.with_sharding_constraint(x, P("data", *([rest] * (x.ndim - 1))))


def _remat(fn, remat: str, *, scanned: bool):
    """``jax.checkpoint`` per layer. Inside ``lax.scan`` CSE cannot merge the recompute with
    the forward, so ``prevent_cse=False`` (jax's advice for scans) costs nothing; the unrolled
    variant (used to count FLOPs) needs ``prevent_cse=True``, or XLA merges part of the
    recompute in sharded programs and per-device FLOPs read 0.83-0.92 of the scanned step's."""
    if remat == "full":
        return jax.checkpoint(fn, prevent_cse=not scanned)
    if remat == "dots":
        policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
        return jax.checkpoint(fn, prevent_cse=not scanned, policy=policy)
    return fn


def rms(x: Array) -> Float[Array, ""]:
    """Root-mean-square of an activation, in float32 (used by the muP coord check)."""
    x32 = x.astype(jnp.float32)
    return jnp.sqrt(jnp.mean(x32 * x32))


class TransformerLM(nnx.Module):
    """Token ids ``(b, t)`` → logits ``(b, t, v)`` in float32."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, rngs=rngs, std=cfg.init_std)
        self.pos_embed = (
            Embedding(cfg.max_seq_len, cfg.d_model, rngs=rngs, std=cfg.init_std)
            if cfg.positions == "learned"
            else None
        )
        self.blocks = _stacked_blocks(cfg, rngs)
        self.final_norm = make_norm(cfg)
        head = Head(cfg, rngs=rngs)
        self.head = None if head.weight is None and head.bias is None else head

    def __call__(
        self, tokens: Int[Array, "b t"], positions: Int[Array, "b t"] | None = None
    ) -> Float[Array, "b t v"]:
        return self.forward_with_aux(tokens, positions)[0]

    def forward_with_aux(
        self, tokens: Int[Array, "b t"], positions: Int[Array, "b t"] | None = None
    ) -> tuple[Float[Array, "b t v"], dict[str, Array]]:
        """Logits plus every MoE layer's router statistics stacked over layers
        (``scaling.moe``; {} for a dense model)."""
        logits, _, _, aux = self._forward(tokens, positions, lambda h: ())
        return logits, aux

    def forward_with_rms(
        self, tokens: Int[Array, "b t"], positions: Int[Array, "b t"] | None = None
    ) -> tuple[Float[Array, "b t v"], dict[str, Array]]:
        """Logits plus the RMS of the embedding output, every block's output and the logits."""
        logits, embedded, block_rms, _ = self._forward(tokens, positions, rms)
        return logits, {"embed": rms(embedded), "blocks": block_rms, "logits": rms(logits)}

    def forward_with_hidden(
        self, tokens: Int[Array, "b t"], positions: Int[Array, "b t"] | None = None
    ) -> tuple[Float[Array, "b t v"], Float[Array, "b t d"], Float[Array, "l b t d"]]:
        """Logits, the embedding output and every block's output (for parity checks)."""
        return self._forward(tokens, positions, lambda h: h)[:3]

    def _embed(self, tokens: Array, positions: Array) -> Float[Array, "b t d"]:
        cfg = self.cfg
        with jax.named_scope("embed"):
            x = self.embed(tokens)
            if cfg.embed_scale:
                x = x * jnp.float32(math.sqrt(cfg.d_model))
            if self.pos_embed is not None:
                x = x + self.pos_embed(positions)
            elif cfg.positions == "sinusoidal":
                x = x + jnp.asarray(sinusoidal_table(cfg.max_seq_len, cfg.d_model))[positions]
            return shard_over_batch((x * mup.input_multiplier(cfg)).astype(compute_dtype(cfg)))

    def _forward(self, tokens: Array, positions: Array | None, collect):
        x, embedded, collected, aux = self._hidden(tokens, positions, collect)
        with jax.named_scope("head"):
            logits = self.readout(x)
        return logits, embedded, collected, aux

    def _hidden(self, tokens: Array, positions: Array | None, collect):
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        embedded = self._embed(tokens, positions)
        x, (collected, aux) = self._run_blocks(embedded, positions, collect)
        with jax.named_scope("head"):
            return self.final_norm(x), embedded, collected, aux

    def final_hidden_with_aux(
        self, tokens: Int[Array, "b t"], positions: Int[Array, "b t"] | None = None
    ) -> tuple[Float[Array, "b t d"], dict[str, Array]]:
        """The final norm's output (the read-out's input: ``scaling.loss`` chunks from here)
        and the MoE router statistics ({} for a dense model)."""
        hidden, _, _, aux = self._hidden(tokens, positions, lambda h: ())
        return hidden, aux

    def readout(self, x: Float[Array, "... d"]) -> Float[Array, "... v"]:
        """Float32 logits of final hidden states: head (or tied table), soft-cap, muP scale."""
        head = self.head
        logits = self.embed.attend(x) if head is None else head.logits(x, self.embed)
        logits = softcap(logits.astype(jnp.float32), self.cfg.final_softcap)
        return logits * mup.logit_multiplier(self.cfg)

    def _run_blocks(self, x: Array, positions: Array, collect) -> tuple[Array, tuple]:
        graphdef, stacked = nnx.split(self.blocks)

        def body(h, layer_state):
            h, aux = nnx.merge(graphdef, layer_state).forward_with_aux(h, positions)
            h = shard_over_batch(h)
            return h, (collect(h), aux)

        body = _remat(body, self.cfg.remat, scanned=self.cfg.scan_layers)
        if self.cfg.scan_layers:
            return jax.lax.scan(body, x, stacked)
        per_layer = []
        for i in range(self.cfg.n_layers):
            x, r = body(x, jax.tree.map(lambda a, i=i: a[i], stacked))
            per_layer.append(r)
        return x, jax.tree.map(lambda *layers: jnp.stack(layers), *per_layer)


def _stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> TransformerBlock:
    """``n_layers`` blocks whose parameters carry a leading layer axis."""

    @nnx.split_rngs(splits=cfg.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(layer_rngs: nnx.Rngs) -> TransformerBlock:
        return TransformerBlock(cfg, rngs=layer_rngs)

    return make(rngs)


def build_model(cfg: ModelConfig, seed: int = 0, *, mode: str = "none") -> TransformerLM:
    """The model; under a ``mode`` that splits the tokens (and the experts) over ``data``,
    the MoE layers dispatch across it explicitly (``moe.sharded_moe_ffn``)."""
    model = TransformerLM(cfg, rngs=nnx.Rngs(params=seed))
    token_axis, expert_axis = sharding.moe_axes(mode)
    if cfg.moe and token_axis is not None:
        model.set_attributes(
            moe.MoEFeedForward,
            token_axis=token_axis,
            expert_axis=expert_axis,
            expert_data_dims=sharding.expert_data_dims(mode),
        )
    return model


def abstract_model(cfg: ModelConfig) -> TransformerLM:
    """Shapes and dtypes only; allocates no parameter memory."""
    return nnx.eval_shape(lambda: build_model(cfg))
