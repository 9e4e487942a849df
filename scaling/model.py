"""The shared decoder-only language model (Flax NNX); the architecture is read from derived
config properties (``cfg.norm``, ``cfg.positions``, ``cfg.ffn``), never from a family name.

Pre-norm blocks (RMSNorm or LayerNorm; rotary or learned positions; SwiGLU or GELU MLP) with a
final norm before the (tied or untied) head. Layers are created stacked (``nnx.vmap``) and run
with ``jax.lax.scan`` so compile time does not grow with depth. The parameters it creates are
exactly ``scaling.roles.parameters(cfg)``; the muP rules come from ``scaling.mup``. Every
sub-layer runs under a ``jax.named_scope`` (embed, block, attention, ffn, norm, head), so
profiles read by name.

Parameters are float32; ``cfg.dtype`` is the compute dtype (weights are cast at use).
Shapes use these letters: b batch, t/s query/key positions, d model width, f FFN width,
h heads, k head width, v vocabulary.
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

from scaling import mup
from scaling.config import ModelConfig

TRUNCATION = 3.0  # truncated-normal inits are cut at ±3σ


def truncated_normal(key: jax.Array, shape: tuple[int, ...], std: float) -> Array:
    """Normal(0, std²) truncated at ±3·std (std is that of the untruncated distribution)."""
    return std * jax.random.truncated_normal(key, -TRUNCATION, TRUNCATION, shape, jnp.float32)


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


class Linear(nnx.Module):
    """``y = x W`` without bias; ``W`` is stored ``(d_in, d_out)``.

    Default init: truncated normal with σ² = 2 / (d_in + d_out), cut at ±3σ. For square hidden
    matrices this equals σ_base/√m at width m·base, which is also muP's hidden-matrix init.
    """

    def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs, std: float | None = None):
        std = math.sqrt(2.0 / (d_in + d_out)) if std is None else std
        self.weight = nnx.Param(truncated_normal(rngs.params(), (d_in, d_out), std))

    def __call__(self, x: Float[Array, "... i"]) -> Float[Array, "... o"]:
        return jnp.einsum("...i,io->...o", x, self.weight[...].astype(x.dtype))

    def logits(self, x: Float[Array, "... i"]) -> Float[Array, "... o"]:
        """As ``__call__`` but accumulating in float32 (the read-out of the LM head)."""
        w = self.weight[...].astype(x.dtype)
        return jnp.einsum("...i,io->...o", x, w, preferred_element_type=jnp.float32)


class Embedding(nnx.Module):
    """Token (or position) table ``(n, d)``; ``attend`` is the tied read-out ``x Eᵀ``."""

    def __init__(self, n: int, d: int, *, rngs: nnx.Rngs, std: float = 0.02):
        self.weight = nnx.Param(truncated_normal(rngs.params(), (n, d), std))

    def __call__(self, ids: Int[Array, ...]) -> Float[Array, "... d"]:
        return jnp.take(self.weight[...], ids, axis=0)

    def attend(self, x: Float[Array, "... d"]) -> Float[Array, "... v"]:
        """Logits accumulate in float32 whatever the compute dtype."""
        w = self.weight[...].astype(x.dtype)
        return jnp.einsum("...d,vd->...v", x, w, preferred_element_type=jnp.float32)


class RMSNorm(nnx.Module):
    """``x / sqrt(mean(x²) + eps) · g``, computed in float32 and cast back."""

    def __init__(self, d: int, *, eps: float = 1e-5, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((d,), jnp.float32))

    @jax.named_scope("norm")
    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        x32 = x.astype(jnp.float32)
        inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * inv_rms * self.weight[...]).astype(x.dtype)


class LayerNorm(nnx.Module):
    """``(x - mean) / sqrt(var + eps) · g + b``, computed in float32 and cast back."""

    def __init__(self, d: int, *, eps: float = 1e-5, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((d,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((d,), jnp.float32))

    @jax.named_scope("norm")
    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        x32 = x.astype(jnp.float32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(centred * centred, axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]
        return y.astype(x.dtype)


def silu(x: Array) -> Array:
    return x * jax.nn.sigmoid(x)


def gelu(x: Array) -> Array:
    """GELU, tanh approximation (as in GPT-2)."""
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def softmax(x: Float[Array, ...], axis: int = -1) -> Float[Array, ...]:
    """Softmax that subtracts the max first, so large inputs do not overflow."""
    shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    e = jnp.exp(shifted)
    return e / jnp.sum(e, axis=axis, keepdims=True)


def scaled_dot_product_attention(
    q: Float[Array, "... t k"],
    k: Float[Array, "... s k"],
    v: Float[Array, "... s k"],
    mask: Bool[Array, "t s"] | None = None,
    scale: float | None = None,
) -> Float[Array, "... t k"]:
    """softmax(q kᵀ · scale, masked) v; ``mask`` True means "may attend". Scores are float32."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = jnp.einsum("...tk,...sk->...ts", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("...ts,...sk->...tk", weights, v)


@functools.lru_cache(maxsize=32)
def rope_tables(d_k: int, theta: float, max_seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, each ``(max_seq_len, d_k/2)``: angle[p, i] = p · theta^(-2i/d_k)."""
    inv_freq = theta ** (-np.arange(0, d_k, 2, dtype=np.float64) / d_k)
    angles = np.arange(max_seq_len, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class RotaryPositionalEmbedding(nnx.Module):
    """RoPE (Su et al. 2021): rotates pairs (x[2i], x[2i+1]) by position · theta^(-2i/d_k).

    The cos/sin tables are computed once per (d_k, theta, max_seq_len) and cached, not stored
    as model state, so they never reach optimizers or checkpoints.
    """

    def __init__(self, d_k: int, theta: float, max_seq_len: int):
        if d_k % 2:
            raise ValueError(f"RoPE needs an even dimension, got d_k={d_k}")
        self.d_k, self.theta, self.max_seq_len = d_k, theta, max_seq_len

    def __call__(self, x: Float[Array, "... t k"], positions: Int[Array, "... t"]) -> Array:
        cos_table, sin_table = rope_tables(self.d_k, self.theta, self.max_seq_len)
        cos = jnp.asarray(cos_table)[positions].astype(x.dtype)
        sin = jnp.asarray(sin_table)[positions].astype(x.dtype)
        pairs = x.reshape(*x.shape[:-1], self.d_k // 2, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
        return rotated.reshape(x.shape)


class SwiGLU(nnx.Module):
    """``W2 (silu(W1 x) ⊙ W3 x)``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.w1 = Linear(cfg.d_model, cfg.d_ff, rngs=rngs)
        self.w3 = Linear(cfg.d_model, cfg.d_ff, rngs=rngs)
        self.w2 = Linear(cfg.d_ff, cfg.d_model, rngs=rngs)

    @jax.named_scope("ffn")
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        # The batch constraint on the hidden keeps fsdp's backward ZeRO-3-like: without it
        # GSPMD moved the (b, t, f) activations instead of gathering w2 (10m on 4 devices:
        # 4x the bytes of the weight).
        return self.w2(shard_over_batch(silu(self.w1(x)) * self.w3(x), features=True))


class GeluMLP(nnx.Module):
    """``W2 gelu(W1 x)`` (GPT-2's MLP, without biases)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.w1 = Linear(cfg.d_model, cfg.d_ff, rngs=rngs)
        self.w2 = Linear(cfg.d_ff, cfg.d_model, rngs=rngs)

    @jax.named_scope("ffn")
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        return self.w2(shard_over_batch(gelu(self.w1(x)), features=True))


class CausalSelfAttention(nnx.Module):
    """Multi-head (optionally grouped-query) causal self-attention, RoPE for ``llama``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.n_heads, self.kv_heads, self.d_head = cfg.n_heads, cfg.kv_heads, cfg.d_head
        self.scale = mup.attention_scale(cfg)
        self.q = Linear(cfg.d_model, cfg.n_heads * cfg.d_head, rngs=rngs)
        self.k = Linear(cfg.d_model, cfg.kv_heads * cfg.d_head, rngs=rngs)
        self.v = Linear(cfg.d_model, cfg.kv_heads * cfg.d_head, rngs=rngs)
        self.o = Linear(cfg.n_heads * cfg.d_head, cfg.d_model, rngs=rngs)
        self.rope = (
            RotaryPositionalEmbedding(cfg.d_head, cfg.rope_theta, cfg.max_seq_len)
            if cfg.positions == "rope"
            else None
        )

    def _heads(self, x: Array, n: int) -> Float[Array, "b h t k"]:
        b, t, _ = x.shape
        return x.reshape(b, t, n, self.d_head).transpose(0, 2, 1, 3)

    @jax.named_scope("attention")
    def __call__(self, x: Float[Array, "b t d"], positions: Int[Array, "b t"]) -> Array:
        q = self._heads(self.q(x), self.n_heads)
        k = self._heads(self.k(x), self.kv_heads)
        v = self._heads(self.v(x), self.kv_heads)
        if self.rope is not None:
            q = self.rope(q, positions[:, None, :])
            k = self.rope(k, positions[:, None, :])
        if self.kv_heads != self.n_heads:
            k = jnp.repeat(k, self.n_heads // self.kv_heads, axis=1)
            v = jnp.repeat(v, self.n_heads // self.kv_heads, axis=1)
        t = x.shape[1]
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        out = scaled_dot_product_attention(q, k, v, causal, self.scale)
        b, _, _, _ = out.shape
        return self.o(out.transpose(0, 2, 1, 3).reshape(b, t, self.n_heads * self.d_head))


def make_norm(cfg: ModelConfig) -> RMSNorm | LayerNorm:
    norm = RMSNorm if cfg.norm == "rms" else LayerNorm
    return norm(cfg.d_model, eps=cfg.norm_eps)


class TransformerBlock(nnx.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + ffn(norm(x))``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, rngs=rngs)
        self.ffn_norm = make_norm(cfg)
        self.ffn = SwiGLU(cfg, rngs=rngs) if cfg.ffn == "swiglu" else GeluMLP(cfg, rngs=rngs)

    @jax.named_scope("block")
    def __call__(self, x: Float[Array, "b t d"], positions: Int[Array, "b t"]) -> Array:
        x = x + self.attn(self.attn_norm(x), positions)
        return x + self.ffn(self.ffn_norm(x))


def shard_over_batch(x: Array, *, features: bool = False) -> Array:
    """Keep activations split by batch over the mesh's ``data`` axis.

    Without this, GSPMD may carry the parameters' fsdp split (model width over ``data``) into
    the activations and leave the batch replicated, so every device would hold the whole
    batch's activations. ``features``: only the batch dimension is constrained, the others are
    left to GSPMD (an FFN hidden split over ``tensor`` under tp stays split). A no-op outside
    a mesh context or without a ``data`` axis.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "data" not in mesh.axis_names or mesh.shape["data"] == 1:
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
        self.head = (
            None
            if cfg.tied_embeddings
            else Linear(cfg.d_model, cfg.vocab_size, rngs=rngs, std=mup.head_init_std(cfg))
        )

    def __call__(
        self, tokens: Int[Array, "b t"], positions: Int[Array, "b t"] | None = None
    ) -> Float[Array, "b t v"]:
        logits, _ = self.forward_with_rms(tokens, positions)
        return logits

    def forward_with_rms(
        self, tokens: Int[Array, "b t"], positions: Int[Array, "b t"] | None = None
    ) -> tuple[Float[Array, "b t v"], dict[str, Array]]:
        """Logits plus the RMS of the embedding output, every block's output and the logits."""
        cfg = self.cfg
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        with jax.named_scope("embed"):
            x = self.embed(tokens)
            if self.pos_embed is not None:
                x = x + self.pos_embed(positions)
            x = shard_over_batch((x * mup.input_multiplier(cfg)).astype(compute_dtype(cfg)))
        embed_rms = rms(x)
        x, block_rms = self._run_blocks(x, positions)
        with jax.named_scope("head"):
            x = self.final_norm(x)
            logits = self.embed.attend(x) if self.head is None else self.head.logits(x)
            logits = logits.astype(jnp.float32) * mup.logit_multiplier(cfg)
        return logits, {"embed": embed_rms, "blocks": block_rms, "logits": rms(logits)}

    def _run_blocks(self, x: Array, positions: Array) -> tuple[Array, Float[Array, " l"]]:
        graphdef, stacked = nnx.split(self.blocks)

        def body(h, layer_state):
            h = shard_over_batch(nnx.merge(graphdef, layer_state)(h, positions))
            return h, rms(h)

        body = _remat(body, self.cfg.remat, scanned=self.cfg.scan_layers)
        if self.cfg.scan_layers:
            return jax.lax.scan(body, x, stacked)
        per_layer = []
        for i in range(self.cfg.n_layers):
            x, r = body(x, jax.tree.map(lambda a, i=i: a[i], stacked))
            per_layer.append(r)
        return x, jnp.stack(per_layer)


def _stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> TransformerBlock:
    """``n_layers`` blocks whose parameters carry a leading layer axis."""

    @nnx.split_rngs(splits=cfg.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(layer_rngs: nnx.Rngs) -> TransformerBlock:
        return TransformerBlock(cfg, rngs=layer_rngs)

    return make(rngs)


def build_model(cfg: ModelConfig, seed: int = 0) -> TransformerLM:
    return TransformerLM(cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig) -> TransformerLM:
    """Shapes and dtypes only; allocates no parameter memory."""
    return nnx.eval_shape(lambda: build_model(cfg))
