"""The shared NNX model, component by component, against an independent float64 NumPy reference.

Every reference below is written from the formulas (not from ``scaling.model``): weights are read
out of the modules, inputs are seeded random numbers, and the float32 JAX output must match the
float64 NumPy result within ``RTOL``/``ATOL`` (stated per test where looser).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling import model as model_lib
from scaling import ops
from scaling.config import ModelConfig
from scaling.estimate import param_counts
from scaling.model import (
    ACTIVATIONS,
    CausalSelfAttention,
    Embedding,
    FeedForward,
    LayerNorm,
    Linear,
    RMSNorm,
    TransformerBlock,
    abstract_model,
    apply_rope,
    attention_mask,
    build_model,
    gelu,
    gelu_exact,
    relu,
    rope_inverse_frequencies,
    scaled_dot_product_attention,
    silu,
    sinusoidal_table,
)
from scaling.ops import softmax
from scaling.presets import FAMILY_ARCHITECTURES, PRESETS, with_family

RTOL, ATOL = 1e-5, 1e-6  # float32 vs float64 reference

# std of a standard normal truncated at ±3 (what a "σ, cut at ±3σ" init should have, over σ)
_A = 3.0
_PHI_A = math.exp(-0.5 * _A * _A) / math.sqrt(2 * math.pi)
TRUNC_STD_FACTOR = math.sqrt(1.0 - 2 * _A * _PHI_A / math.erf(_A / math.sqrt(2)))  # ≈ 0.98658


def small_cfg(family: str = "llama", **kw) -> ModelConfig:
    """A small model with ``family``'s architecture fields (``kw`` overrides any field)."""
    base = dict(n_layers=2, d_model=16, n_heads=4, d_ff=32, vocab_size=50, max_seq_len=16)
    return ModelConfig(**{**base, "family": family, **FAMILY_ARCHITECTURES[family], **kw})


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def w(var, i: int | None = None) -> np.ndarray:
    """A parameter as float64 NumPy, optionally layer ``i`` of a stacked parameter."""
    a = f64(var[...])
    return a if i is None else a[i]


def assert_close(got, want, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(f64(got), want, rtol=rtol, atol=atol)


@functools.partial(jax.jit, static_argnums=0)
def _jit_forward(graphdef, state, tokens, positions):
    return nnx.merge(graphdef, state)(tokens, positions)


def forward(m, tokens, positions=None):
    """``m(tokens, positions)`` under one cached jit: an eager call re-compiles the layer scan
    on every call, a jitted one compiles once per model structure."""
    graphdef, state = nnx.split(m)
    tokens = jnp.asarray(tokens)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return _jit_forward(graphdef, state, tokens, jnp.asarray(positions))


@functools.partial(jax.jit, static_argnums=0)
def _jit_logits_and_grads(graphdef, state, tokens, weights):
    def loss(s):
        logits = nnx.merge(graphdef, s)(tokens)
        return jnp.sum(logits * weights), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(state)
    return logits, grads


def logits_and_grads(m, tokens, weights):
    """Logits and d sum(logits·weights) / d state, via nnx.split/merge."""
    graphdef, state = nnx.split(m)
    return _jit_logits_and_grads(graphdef, state, jnp.asarray(tokens), jnp.asarray(weights))


# ------------------------------------------------------------------------------------------------
# NumPy reference (float64)
# ------------------------------------------------------------------------------------------------


def np_rmsnorm(x, g, eps):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * g


def np_layernorm(x, g, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def np_gelu_exact(x):
    exact = [0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in np.ravel(x)]
    return np.array(exact).reshape(np.shape(x))


NP_ACTIVATIONS = {
    "silu": np_silu,
    "gelu_tanh": np_gelu_tanh,
    "gelu": np_gelu_exact,
    "relu": lambda x: np.maximum(x, 0.0),
}


def np_softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_sdpa(q, k, v, mask=None, scale=None):
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = np.einsum("...tk,...sk->...ts", q, k) * scale
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    return np.einsum("...ts,...sk->...tk", np_softmax(s), v)


def np_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """theta^(-2i/k), then Meta's Llama-3.1 ``apply_scaling`` written as its loop."""
    k = cfg.d_head
    freqs = [cfg.rope_theta ** (-2.0 * i / k) for i in range(k // 2)]
    factor = cfg.rope_scaling_factor
    if factor == 1.0:
        return np.array(freqs)
    low_wavelen = cfg.rope_original_context / cfg.rope_low_freq_factor
    high_wavelen = cfg.rope_original_context / cfg.rope_high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(freq)
        elif wavelen > low_wavelen:
            out.append(freq / factor)
        else:
            smooth = (cfg.rope_original_context / wavelen - cfg.rope_low_freq_factor) / (
                cfg.rope_high_freq_factor - cfg.rope_low_freq_factor
            )
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(out)


def rope_vec(vec, pos, inv_freq):
    """Rotate each pair (vec[i], vec[i + k/2]) by pos·inv_freq[i] with an explicit 2×2 matrix
    (the rotate-half layout of GPT-NeoX and Hugging Face)."""
    half = vec.shape[-1] // 2
    out = np.empty(vec.shape)
    for i in range(half):
        ang = pos * inv_freq[i]
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        out[[i, i + half]] = rot @ vec[[i, i + half]]
    return out


def np_rope(x, pos, cfg: ModelConfig):
    """``x`` (..., k) and integer ``pos`` of shape x.shape[:-1]."""
    inv_freq = np_inv_freq(cfg)
    out = np.empty(x.shape)
    for idx in np.ndindex(*x.shape[:-1]):
        out[idx] = rope_vec(x[idx], float(pos[idx]), inv_freq)
    return out


def np_sinusoidal(positions, d):
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)), one by one."""
    out = np.empty((*positions.shape, d))
    for idx in np.ndindex(*positions.shape):
        for i in range(d // 2):
            angle = positions[idx] / 10_000.0 ** (2 * i / d)
            out[(*idx, 2 * i)], out[(*idx, 2 * i + 1)] = math.sin(angle), math.cos(angle)
    return out


def np_linear(x, p, name):
    y = x @ p[name]
    bias = p.get(name + "_b")
    return y if bias is None else y + bias


def np_attention(x, positions, p, cfg: ModelConfig):
    """Causal self-attention from weights p = dict(q, k, v, o, and q_b... biases or None)."""
    b, t, _ = x.shape
    h, kvh, dk = cfg.n_heads, cfg.kv_heads, cfg.d_head
    q = np_linear(x, p, "q").reshape(b, t, h, dk)
    k = np_linear(x, p, "k").reshape(b, t, kvh, dk)
    v = np_linear(x, p, "v").reshape(b, t, kvh, dk)
    if cfg.positions == "rope":
        q = np_rope(q, np.broadcast_to(positions[:, :, None], (b, t, h)), cfg)
        k = np_rope(k, np.broadcast_to(positions[:, :, None], (b, t, kvh)), cfg)
    # muP: α_attn·√d_head_base / d_head (microsoft/mup's 8/d_head at a base head width of 64)
    base_dk = cfg.mup_base_head_dim or dk
    scale = cfg.mup_attn_multiplier * np.sqrt(base_dk) / dk if cfg.mup else 1.0 / np.sqrt(dk)
    allowed = np.array([[j <= i and (cfg.sliding_window is None or i - j < cfg.sliding_window)
                         for j in range(t)] for i in range(t)])  # fmt: skip
    rep = h // kvh
    out = np.zeros((b, t, h, dk))
    for bi in range(b):
        for hi in range(h):
            kv = hi // rep  # query head hi reads kv head hi // (h / h_kv)
            s = q[bi, :, hi] @ k[bi, :, kv].T * scale
            if cfg.attn_softcap is not None:
                s = cfg.attn_softcap * np.tanh(s / cfg.attn_softcap)
            s = np.where(allowed, s, -np.inf)
            out[bi, :, hi] = np_softmax(s) @ v[bi, :, kv]
    return np_linear(out.reshape(b, t, h * dk), p, "o")


def np_ffn(x, p, cfg: ModelConfig):
    act = NP_ACTIVATIONS[cfg.ffn_activation]
    hidden = act(np_linear(x, p, "w1"))
    if cfg.ffn in ("swiglu", "geglu"):
        hidden = hidden * np_linear(x, p, "w3")
    return np_linear(hidden, p, "w2")


def np_norm(x, g, b, cfg):
    if cfg.norm == "rms":
        return np_rmsnorm(x, 1.0 + g if cfg.norm_unit_offset else g, cfg.norm_eps)
    return np_layernorm(x, g, 0.0 if b is None else b, cfg.norm_eps)


def _maybe(var, i=None):
    return None if var is None else w(var, i)


def _linears(module, names, i=None) -> dict:
    out = {}
    for n in names:
        lin = getattr(module, n)
        if lin is not None:
            out[n], out[n + "_b"] = w(lin.weight, i), _maybe(lin.bias, i)
    return out


def block_params(blk, cfg: ModelConfig, i: int | None = None) -> dict:
    return {
        "attn_norm_g": w(blk.attn_norm.weight, i),
        "attn_norm_b": _maybe(getattr(blk.attn_norm, "bias", None), i),
        "ffn_norm_g": w(blk.ffn_norm.weight, i),
        "ffn_norm_b": _maybe(getattr(blk.ffn_norm, "bias", None), i),
        "attn": _linears(blk.attn, "qkvo", i),
        "ffn": _linears(blk.ffn, ("w1", "w2", "w3"), i),
    }


def np_block(x, positions, p, cfg):
    x = x + np_attention(
        np_norm(x, p["attn_norm_g"], p["attn_norm_b"], cfg), positions, p["attn"], cfg
    )
    return x + np_ffn(np_norm(x, p["ffn_norm_g"], p["ffn_norm_b"], cfg), p["ffn"], cfg)


def lm_params(m, cfg: ModelConfig) -> dict:
    """All weights of a TransformerLM as float64 NumPy, layers as a list of dicts."""
    head = m.head
    return {
        "embed": w(m.embed.weight),
        "pos_embed": None if m.pos_embed is None else w(m.pos_embed.weight),
        "layers": [block_params(m.blocks, cfg, i) for i in range(cfg.n_layers)],
        "final_g": w(m.final_norm.weight),
        "final_b": _maybe(getattr(m.final_norm, "bias", None)),
        "head": None if head is None else _maybe(head.weight),
        "head_b": None if head is None else _maybe(head.bias),
    }


def np_lm(p: dict, cfg: ModelConfig, tokens, positions=None):
    b, t = tokens.shape
    if positions is None:
        positions = np.broadcast_to(np.arange(t), (b, t))
    x = p["embed"][tokens]
    if cfg.embed_scale:
        x = x * math.sqrt(cfg.d_model)
    if cfg.positions == "learned":
        x = x + p["pos_embed"][positions]
    if cfg.positions == "sinusoidal":
        x = x + np_sinusoidal(positions, cfg.d_model)
    if cfg.mup:
        x = x * cfg.mup_input_multiplier
    for layer in p["layers"]:
        x = np_block(x, positions, layer, cfg)
    x = np_norm(x, p["final_g"], p["final_b"], cfg)
    logits = x @ p["embed"].T if cfg.tied_embeddings else x @ p["head"]
    if p["head_b"] is not None:
        logits = logits + p["head_b"]
    if cfg.final_softcap is not None:
        logits = cfg.final_softcap * np.tanh(logits / cfg.final_softcap)
    if cfg.mup:
        logits = logits * cfg.mup_output_multiplier / (cfg.d_model / cfg.mup_base_width)
    return logits


def randomize_vectors(m, cfg: ModelConfig, seed: int, scale: float = 0.3) -> None:
    """Give every norm gain and every bias a non-trivial value (they start at 1 or 0), so the
    reference checks their use."""
    rng = np.random.default_rng(seed)
    state = nnx.state(m, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        if path[-1] == "bias" or "norm" in str(path[-2]):
            shape = var.get_value().shape
            start = 1.0 if path[-1] == "weight" and not cfg.norm_unit_offset else 0.0
            var.set_value(jnp.asarray(start + scale * rng.standard_normal(shape), jnp.float32))
    nnx.update(m, state)


# ------------------------------------------------------------------------------------------------
# Linear and Embedding
# ------------------------------------------------------------------------------------------------


def test_linear_forward_is_x_times_w_without_bias():
    lin = Linear(16, 24, rngs=nnx.Rngs(0))  # shapes shared with other tests: fewer compiles
    assert lin.weight[...].shape == (16, 24)
    assert [k for k, _ in nnx.to_flat_state(nnx.state(lin))] == [("weight",)]  # no bias
    x = np.random.default_rng(1).standard_normal((2, 3, 16)).astype(np.float32)
    assert_close(lin(jnp.asarray(x)), f64(x) @ w(lin.weight))
    # zero input gives zero output exactly (no hidden bias)
    assert np.all(np.asarray(lin(jnp.zeros((4, 16)))) == 0.0)


def test_linear_with_bias_adds_it_and_starts_at_zero():
    lin = Linear(16, 24, rngs=nnx.Rngs(0), bias=True)
    assert [k for k, _ in nnx.to_flat_state(nnx.state(lin))] == [("bias",), ("weight",)]
    np.testing.assert_array_equal(w(lin.bias), np.zeros(24))
    b = np.random.default_rng(2).standard_normal(24).astype(np.float32)
    lin.bias[...] = jnp.asarray(b)
    x = np.random.default_rng(1).standard_normal((2, 3, 16)).astype(np.float32)
    assert_close(lin(jnp.asarray(x)), f64(x) @ w(lin.weight) + f64(b))


@pytest.mark.parametrize("d_in,d_out", [(512, 512), (256, 768)])
def test_linear_init_is_truncated_normal(d_in, d_out):
    wt = f64(Linear(d_in, d_out, rngs=nnx.Rngs(3)).weight[...])
    sigma = math.sqrt(2.0 / (d_in + d_out))
    assert wt.shape == (d_in, d_out)
    assert np.abs(wt).max() <= 3 * sigma * (1 + 1e-6)
    # with ≥ 2.6e5 draws ~0.1 % land in (2.9σ, 3σ]: the cut is at 3σ, not tighter
    assert np.abs(wt).max() > 2.9 * sigma
    assert abs(wt.mean()) < 0.01 * sigma
    np.testing.assert_allclose(wt.std(), TRUNC_STD_FACTOR * sigma, rtol=0.02)


def test_linear_custom_std_and_seeds():
    a = f64(Linear(512, 512, rngs=nnx.Rngs(0), std=0.05).weight[...])
    np.testing.assert_allclose(a.std(), TRUNC_STD_FACTOR * 0.05, rtol=0.03)
    assert np.abs(a).max() <= 0.15 * (1 + 1e-6)
    b = f64(Linear(512, 512, rngs=nnx.Rngs(0), std=0.05).weight[...])
    c = f64(Linear(512, 512, rngs=nnx.Rngs(1), std=0.05).weight[...])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_embedding_lookup_attend_and_init():
    emb = Embedding(50, 16, rngs=nnx.Rngs(0))
    table = w(emb.weight)
    assert table.shape == (50, 16)
    ids = np.array([[0, 49, 7, 7], [3, 1, 2, 48]])
    assert_close(emb(jnp.asarray(ids)), table[ids])
    x = np.random.default_rng(0).standard_normal((2, 3, 16)).astype(np.float32)
    assert_close(emb.attend(jnp.asarray(x)), f64(x) @ table.T)
    big = f64(Embedding(512, 512, rngs=nnx.Rngs(1), std=0.02).weight[...])
    assert np.abs(big).max() <= 0.06 * (1 + 1e-6)
    np.testing.assert_allclose(big.std(), TRUNC_STD_FACTOR * 0.02, rtol=0.02)


# ------------------------------------------------------------------------------------------------
# Norms and pointwise functions
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_rmsnorm(eps):
    rng = np.random.default_rng(0)
    d = 16
    norm = RMSNorm(d, eps=eps)
    g = (1.0 + 0.5 * rng.standard_normal(d)).astype(np.float32)
    norm.weight[...] = jnp.asarray(g)
    # small scale so eps visibly matters when eps = 1e-2
    x = (0.1 * rng.standard_normal((3, 5, d))).astype(np.float32)
    assert_close(norm(jnp.asarray(x)), np_rmsnorm(f64(x), f64(g), eps))


def test_rmsnorm_unit_offset_is_gemmas_one_plus_w():
    rng = np.random.default_rng(3)
    norm = RMSNorm(16, eps=1e-6, unit_offset=True)
    np.testing.assert_array_equal(w(norm.weight), np.zeros(16))  # gain 1 + 0 at init
    g = (0.5 * rng.standard_normal(16)).astype(np.float32)
    norm.weight[...] = jnp.asarray(g)
    x = rng.standard_normal((3, 5, 16)).astype(np.float32)
    assert_close(norm(jnp.asarray(x)), np_rmsnorm(f64(x), 1.0 + f64(g), 1e-6))
    assert not np.allclose(f64(norm(jnp.asarray(x))), np_rmsnorm(f64(x), f64(g), 1e-6))


def test_layernorm_without_bias_has_no_shift():
    norm = LayerNorm(16, eps=1e-5, bias=False)
    assert [k for k, _ in nnx.to_flat_state(nnx.state(norm))] == [("weight",)]
    x = np.random.default_rng(4).standard_normal((3, 16)).astype(np.float32)
    assert_close(norm(jnp.asarray(x)), np_layernorm(f64(x), 1.0, 0.0, 1e-5), atol=1e-5)


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layernorm(eps):
    rng = np.random.default_rng(1)
    d = 16
    norm = LayerNorm(d, eps=eps)
    g = (1.0 + 0.5 * rng.standard_normal(d)).astype(np.float32)
    b = (0.3 * rng.standard_normal(d)).astype(np.float32)
    norm.weight[...] = jnp.asarray(g)
    norm.bias[...] = jnp.asarray(b)
    x = (2.0 + 0.1 * rng.standard_normal((3, 5, d))).astype(np.float32)  # non-zero mean
    assert_close(norm(jnp.asarray(x)), np_layernorm(f64(x), f64(g), f64(b), eps), atol=1e-5)


def test_norms_compute_in_float32_and_keep_input_dtype():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    xb = jnp.asarray(x, jnp.bfloat16)
    ref_in = f64(np.asarray(xb.astype(jnp.float32)))
    for norm, ref in [
        (RMSNorm(8), np_rmsnorm(ref_in, 1.0, 1e-5)),
        (LayerNorm(8), np_layernorm(ref_in, 1.0, 0.0, 1e-5)),
    ]:
        y = norm(xb)
        assert y.dtype == jnp.bfloat16
        # a single bf16 rounding of the f32 result: relative error ≤ 2^-8
        assert_close(y.astype(jnp.float32), ref, rtol=2**-8, atol=1e-6)


def test_silu():
    x = np.concatenate([np.linspace(-8, 8, 33), [-100.0, 100.0]]).astype(np.float32)
    y = np.asarray(silu(jnp.asarray(x)))
    assert np.all(np.isfinite(y))
    assert_close(y, np_silu(f64(x)))


def test_gelu_is_tanh_approximation():
    x = np.linspace(-6, 6, 49).astype(np.float32)
    y = gelu(jnp.asarray(x))
    assert_close(y, np_gelu_tanh(f64(x)))
    # the exact (erf) GELU differs by more than the tolerance, so the check discriminates
    assert np.max(np.abs(np_gelu_tanh(f64(x)) - np_gelu_exact(f64(x)))) > 1e-4
    assert_close(gelu_exact(jnp.asarray(x)), np_gelu_exact(f64(x)))
    assert_close(relu(jnp.asarray(x)), np.maximum(f64(x), 0.0))


@pytest.mark.parametrize(
    "x",
    [
        [[0.1, -2.0, 3.0, 0.5]],
        [[1000.0, 1001.0, 1002.0, 999.0]],
        [[1e4, 0.0, -1e4, 1e4 - 1.0]],
        [[-1e4, -1e4 + 2.0, -1e4 - 1.0, -1e4]],
    ],
)
def test_softmax_stable(x):
    x = np.asarray(x, np.float32)
    y = np.asarray(softmax(jnp.asarray(x)))
    assert np.all(np.isfinite(y))
    assert_close(y, np_softmax(f64(x)))
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    if np.abs(x).max() >= 1000:
        assert not np.all(np.isfinite(naive))  # naive formula really overflows here


def test_softmax_axis_and_gradient_at_large_inputs():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 4)) + 500.0).astype(np.float32)
    assert_close(softmax(jnp.asarray(x), axis=0), np_softmax(f64(x), axis=0))
    # Jacobian of softmax: diag(p) - p pᵀ, must be finite for huge logits
    x1 = np.array([1e4, 1e4 - 1.0, 0.0], np.float32)
    jac = np.asarray(jax.jacobian(softmax)(jnp.asarray(x1)))
    p = np_softmax(f64(x1))
    assert np.all(np.isfinite(jac))
    assert_close(jac, np.diag(p) - np.outer(p, p))


# ------------------------------------------------------------------------------------------------
# Attention pieces
# ------------------------------------------------------------------------------------------------


def test_sdpa_without_mask():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)
    k = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    v = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    out = scaled_dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    assert out.shape == (2, 3, 5, 8)
    assert_close(out, np_sdpa(f64(q), f64(k), f64(v)))
    out2 = scaled_dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), scale=0.3)
    assert_close(out2, np_sdpa(f64(q), f64(k), f64(v), scale=0.3))


def test_sdpa_with_mask():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 6, 4)).astype(np.float32)
    k = rng.standard_normal((2, 6, 4)).astype(np.float32)
    v = rng.standard_normal((2, 6, 4)).astype(np.float32)
    mask = rng.random((6, 6)) < 0.5
    mask[np.arange(6), rng.integers(0, 6, 6)] = True  # every query may attend somewhere
    out = scaled_dot_product_attention(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask)
    )
    assert_close(out, np_sdpa(f64(q), f64(k), f64(v), mask))
    # causal mask: values at later keys have no influence on earlier queries
    causal = np.tril(np.ones((6, 6), bool))
    q, k = jnp.asarray(q), jnp.asarray(k)
    a = scaled_dot_product_attention(q, k, jnp.asarray(v), jnp.asarray(causal))
    v3 = v.copy()
    v3[:, 3:] += 100.0
    b = scaled_dot_product_attention(q, k, jnp.asarray(v3), jnp.asarray(causal))
    np.testing.assert_array_equal(np.asarray(a)[:, :3], np.asarray(b)[:, :3])
    assert_close(a, np_sdpa(f64(q), f64(k), f64(v), causal))
    assert_close(b, np_sdpa(f64(q), f64(k), f64(v3), causal))


ROPE_CASES = {
    "theta 10000": dict(),
    "theta 500": dict(rope_theta=500.0),
    # Llama-3.1 scaling with a short original context, so all three bands occur at k = 16
    "llama3 scaling": dict(rope_scaling_factor=8.0, rope_original_context=64),
}


def rope_cfg(d_k: int = 16, **kw) -> ModelConfig:
    return small_cfg(d_model=4 * d_k, n_heads=4, max_seq_len=128, **kw)


@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_rope_matches_explicit_rotation(case):
    rng = np.random.default_rng(0)
    cfg = rope_cfg(**ROPE_CASES[case])
    d_k = cfg.d_head
    x = rng.standard_normal((2, 4, d_k)).astype(np.float32)
    pos = np.array([[3, 7, 1, 12], [127, 0, 40, 5]])  # non-zero, non-contiguous, unsorted
    y = apply_rope(jnp.asarray(x), cfg, jnp.asarray(pos))
    assert_close(y, np_rope(f64(x), pos, cfg), atol=1e-5)
    # with a heads axis and positions broadcast over it (as the attention calls it)
    xh = rng.standard_normal((2, 3, 4, d_k)).astype(np.float32)
    yh = apply_rope(jnp.asarray(xh), cfg, jnp.asarray(pos)[:, None, :])
    assert_close(yh, np_rope(f64(xh), np.broadcast_to(pos[:, None, :], (2, 3, 4)), cfg), atol=1e-5)
    # a rotation preserves norms
    np.testing.assert_allclose(
        np.linalg.norm(f64(y), axis=-1), np.linalg.norm(f64(x), axis=-1), rtol=1e-5
    )


def test_llama3_scaling_touches_only_low_frequencies():
    plain, scaled = rope_cfg(), rope_cfg(**ROPE_CASES["llama3 scaling"])
    base, new = rope_inverse_frequencies(plain), rope_inverse_frequencies(scaled)
    np.testing.assert_allclose(new, np_inv_freq(scaled), rtol=1e-12)
    assert new[0] == base[0]  # the highest frequency is kept
    assert new[-1] == pytest.approx(base[-1] / 8.0)  # the lowest divided by the factor
    between = (new != base) & (new != base / 8.0)
    assert between.any()  # and some are interpolated


def test_rope_dot_product_depends_only_on_offset():
    rng = np.random.default_rng(1)
    cfg = rope_cfg()
    d_k = cfg.d_head
    q = jnp.asarray(rng.standard_normal(d_k).astype(np.float32))
    k = jnp.asarray(rng.standard_normal(d_k).astype(np.float32))

    def dot(m, n):
        qm = apply_rope(q[None], cfg, jnp.array([m]))[0]
        kn = apply_rope(k[None], cfg, jnp.array([n]))[0]
        return float(jnp.dot(qm, kn))

    for m, n in [(5, 2), (9, 30), (0, 0)]:
        base = dot(m, n)
        for shift in (1, 17, 60):
            np.testing.assert_allclose(dot(m + shift, n + shift), base, rtol=1e-4, atol=1e-5)
    # but it does depend on the offset itself
    assert abs(dot(5, 2) - dot(5, 3)) > 1e-3
    # position 0 is the identity
    np.testing.assert_allclose(np.asarray(apply_rope(q[None], cfg, jnp.array([0]))[0]), q)


def test_rope_rejects_odd_dimension():
    with pytest.raises(ValueError, match="even"):
        small_cfg(d_model=28, n_heads=4)


def test_sinusoidal_table_and_sliding_window_mask():
    assert_close(sinusoidal_table(16, 8), np_sinusoidal(np.arange(16), 8))
    mask = np.asarray(attention_mask(6, 3))
    want = np.array([[0 <= i - j < 3 for j in range(6)] for i in range(6)])
    np.testing.assert_array_equal(mask, want)
    np.testing.assert_array_equal(np.asarray(attention_mask(6, None)), np.tril(np.ones((6, 6))))


# ------------------------------------------------------------------------------------------------
# FFNs, attention, block
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ffn", ["swiglu", "geglu", "gelu_tanh", "gelu", "relu"])
@pytest.mark.parametrize("bias", [False, True])
def test_feed_forward(ffn, bias):
    cfg = small_cfg(ffn=ffn, ffn_bias=bias, d_ff=24)
    module = FeedForward(cfg, rngs=nnx.Rngs(0))
    gated = ffn in ("swiglu", "geglu")
    assert (module.w3 is not None) == gated
    if bias:
        rng = np.random.default_rng(5)
        for lin in (module.w1, module.w2, module.w3):
            if lin is not None:
                lin.bias[...] = jnp.asarray(rng.standard_normal(lin.bias[...].shape), jnp.float32)
    p = _linears(module, ("w1", "w2", "w3"))
    assert p["w1"].shape == (16, 24) and p["w2"].shape == (24, 16)
    if gated:
        assert not np.allclose(p["w1"], p["w3"])  # independent draws
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    assert_close(module(jnp.asarray(x)), np_ffn(f64(x), p, cfg), atol=1e-5)


ATTN_CASES = {
    "llama": dict(family="llama"),
    "gpt2": dict(family="gpt2"),
    "llama_gqa": dict(family="llama", n_kv_heads=2),
    "gpt2_gqa_mqa": dict(family="gpt2", n_kv_heads=1),
    "llama_head_dim": dict(family="llama", head_dim=6),
    "llama_mup": dict(family="llama", mup=True, tied_embeddings=False),
    "mistral_window_3": dict(family="mistral", sliding_window=3, n_kv_heads=2),
    "biases_softcap": dict(qkv_bias=True, attn_out_bias=True, attn_softcap=2.0),
    "llama3_rope": dict(rope_scaling_factor=4.0, rope_original_context=8),
}


@pytest.mark.parametrize("case", list(ATTN_CASES))
def test_causal_self_attention(case):
    cfg = small_cfg(**{"rope_theta": 100.0, **ATTN_CASES[case]})
    attn = CausalSelfAttention(cfg, rngs=nnx.Rngs(0))
    randomize_vectors(attn, cfg, seed=3)
    p = _linears(attn, "qkvo")
    assert p["q"].shape == (16, cfg.n_heads * cfg.d_head)
    assert p["k"].shape == (16, cfg.kv_heads * cfg.d_head)
    assert p["o"].shape == (cfg.n_heads * cfg.d_head, 16)
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((2, 6, 16))).astype(np.float32)  # large scores: softcap bites
    positions = np.array([[0, 1, 2, 3, 4, 5], [2, 3, 4, 9, 10, 15]])
    got = attn(jnp.asarray(x), jnp.asarray(positions))
    assert_close(got, np_attention(f64(x), positions, p, cfg), atol=1e-5)
    if cfg.sliding_window is not None or cfg.attn_softcap is not None:
        plain = dataclasses.replace(cfg, sliding_window=None, attn_softcap=None)
        assert not np.allclose(f64(got), np_attention(f64(x), positions, p, plain), atol=1e-3)


def test_attention_reference_is_sensitive_to_kv_head_grouping():
    """Guard for the GQA check: grouping kv heads the other way round gives another answer."""
    cfg = small_cfg(n_kv_heads=2)
    attn = CausalSelfAttention(cfg, rngs=nnx.Rngs(0))
    p = {n: w(getattr(attn, n).weight) for n in "qkvo"}
    x = np.random.default_rng(0).standard_normal((1, 5, 16))
    pos = np.arange(5)[None]
    # swap the two kv heads in k and v: query heads would then read the wrong group
    dk = cfg.d_head
    swap = np.concatenate([np.arange(dk, 2 * dk), np.arange(dk)])
    p2 = dict(p, k=p["k"][:, swap], v=p["v"][:, swap])
    got = f64(attn(jnp.asarray(x, jnp.float32), jnp.asarray(pos)))
    assert np.allclose(got, np_attention(x, pos, p, cfg), atol=1e-5)
    assert not np.allclose(got, np_attention(x, pos, p2, cfg), atol=1e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
def test_transformer_block_pre_norm(family):
    cfg = small_cfg(family=family)
    blk = TransformerBlock(cfg, rngs=nnx.Rngs(0))
    randomize_vectors(blk, cfg, seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    pos = np.broadcast_to(np.arange(5), (2, 5))
    got = blk(jnp.asarray(x), jnp.asarray(pos))
    assert_close(got, np_block(f64(x), pos, block_params(blk, cfg), cfg), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Whole model
# ------------------------------------------------------------------------------------------------

LM_CASES = {
    "llama": dict(family="llama"),
    "gpt2": dict(family="gpt2"),
    "llama_untied_gqa": dict(family="llama", tied_embeddings=False, n_kv_heads=2),
    "gpt2_untied": dict(family="gpt2", tied_embeddings=False),
    "llama_mup": dict(
        family="llama",
        mup=True,
        tied_embeddings=False,
        mup_base_width=8,
        mup_input_multiplier=2.0,
        mup_output_multiplier=3.0,
        mup_attn_multiplier=1.5,
        mup_base_head_dim=2,
    ),
    "mistral_window": dict(family="mistral", sliding_window=3, n_kv_heads=2),
    "gemma_mqa": dict(family="gemma", n_kv_heads=1, head_dim=8),
    "sinusoidal_relu_layernorm": dict(norm="layer", positions="sinusoidal", ffn="relu"),
    "nope_gelu_all_biases": dict(
        positions="none",
        ffn="gelu",
        qkv_bias=True,
        attn_out_bias=True,
        ffn_bias=True,
        head_bias=True,
        tied_embeddings=False,
        attn_softcap=3.0,
        final_softcap=2.0,
    ),  # fmt: skip
    "llama3_rope_tied_head_bias": dict(
        rope_scaling_factor=8.0, rope_original_context=8, head_bias=True, rope_theta=50.0
    ),
}


@pytest.mark.parametrize("case", list(LM_CASES))
def test_transformer_lm_matches_numpy_reference(case):
    cfg = small_cfg(**LM_CASES[case])
    m = build_model(cfg, seed=0)
    randomize_vectors(m, cfg, seed=1)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, cfg.vocab_size, (2, 8))
    logits = forward(m, tokens)
    assert logits.shape == (2, 8, cfg.vocab_size) and logits.dtype == jnp.float32
    assert_close(logits, np_lm(lm_params(m, cfg), cfg, tokens), atol=1e-5)
    # explicit, non-contiguous positions
    pos = np.array([[1, 2, 4, 5, 9, 10, 13, 15], [0, 3, 6, 7, 8, 11, 12, 14]])
    assert_close(
        forward(m, tokens, pos),
        np_lm(lm_params(m, cfg), cfg, tokens, pos),
        atol=1e-5,
    )


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
def test_default_positions_are_arange(family):
    """``m(tokens)`` (eager, positions=None) equals the reference with positions 0..t-1."""
    cfg = small_cfg(family=family)
    m = build_model(cfg, seed=0)
    tokens = np.random.default_rng(3).integers(0, 50, (2, 8))
    assert_close(m(jnp.asarray(tokens)), np_lm(lm_params(m, cfg), cfg, tokens), atol=1e-5)


def test_logits_invariant_to_position_shift_only_for_relative_or_no_positions():
    """RoPE is relative and ``none`` ignores positions: shifting all positions leaves their
    logits unchanged; learned (gpt2) and sinusoidal positions change them."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 8)))
    shifted = jnp.broadcast_to(jnp.arange(8) + 7, (2, 8))
    cases = (("rope", True), ("none", True), ("learned", False), ("sinusoidal", False))
    for positions, invariant in cases:
        m = build_model(small_cfg(positions=positions), seed=0)
        a, b = f64(forward(m, tokens)), f64(forward(m, tokens, shifted))
        assert np.allclose(a, b, rtol=1e-4, atol=1e-5) == invariant, positions


@pytest.mark.parametrize("family", ["llama", "gpt2", "mistral", "gemma"])
def test_transformer_lm_is_causal(family):
    cfg = small_cfg(family=family, sliding_window=3 if family == "mistral" else None)
    m = build_model(cfg, seed=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (2, 8))
    base = f64(forward(m, tokens))
    for j in (1, 4, 7):
        changed = tokens.copy()
        changed[:, j:] = (changed[:, j:] + 1 + rng.integers(0, 40, changed[:, j:].shape)) % 50
        out = f64(forward(m, changed))
        np.testing.assert_allclose(out[:, :j], base[:, :j], rtol=1e-6, atol=1e-7)
        # and the change is visible from position j on (so the check is not vacuous)
        assert np.abs(out[:, j] - base[:, j]).max() > 1e-4


def test_layers_are_stacked_and_independently_initialised():
    cfg = small_cfg()
    m = build_model(cfg, seed=0)
    q = w(m.blocks.attn.q.weight)
    assert q.shape == (2, 16, 16)
    assert not np.allclose(q[0], q[1])
    assert not np.allclose(w(m.blocks.ffn.w1.weight)[0], w(m.blocks.ffn.w1.weight)[1])
    # same seed: same parameters; another seed: different
    s0 = nnx.state(m, nnx.Param)
    s0b = nnx.state(build_model(cfg, seed=0), nnx.Param)
    s1 = nnx.state(build_model(cfg, seed=1), nnx.Param)
    for a, b, c in zip(jax.tree.leaves(s0), jax.tree.leaves(s0b), jax.tree.leaves(s1), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        if a.ndim == 3 or a.shape == (50, 16):  # random (non-norm) parameters
            assert not np.allclose(np.asarray(a), np.asarray(c))


def test_model_init_statistics():
    """Hidden matrices σ² = 2/(d_in+d_out), embeddings init_std, untied head σ² = 2/(d+v)."""
    cfg = dataclasses.replace(PRESETS["tiny"], n_layers=2, max_seq_len=32, tied_embeddings=False)
    m = build_model(cfg, seed=0)
    d, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    checks = [
        (m.blocks.attn.q.weight, math.sqrt(2 / (2 * d))),
        (m.blocks.attn.o.weight, math.sqrt(2 / (2 * d))),
        (m.blocks.ffn.w1.weight, math.sqrt(2 / (d + f))),
        (m.blocks.ffn.w2.weight, math.sqrt(2 / (d + f))),
        (m.embed.weight, cfg.init_std),
        (m.head.weight, math.sqrt(2 / (d + v))),
    ]
    for var, sigma in checks:
        a = w(var)
        assert np.abs(a).max() <= 3 * sigma * (1 + 1e-6)
        np.testing.assert_allclose(a.std(), TRUNC_STD_FACTOR * sigma, rtol=0.03)
    np.testing.assert_array_equal(w(m.blocks.attn_norm.weight), np.ones((2, d)))
    np.testing.assert_array_equal(w(m.final_norm.weight), np.ones(d))


def test_scan_and_unrolled_layers_agree():
    for family in ("llama", "gpt2", "gemma"):
        cfg = small_cfg(family=family)
        tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 8)))
        scan = build_model(cfg, seed=4)
        loop = build_model(dataclasses.replace(cfg, scan_layers=False), seed=4)
        assert_close(forward(loop, tokens), f64(forward(scan, tokens)), atol=1e-5)
        assert_close(
            forward(scan, tokens), np_lm(lm_params(scan, cfg), cfg, np.asarray(tokens)), atol=1e-5
        )


@pytest.mark.parametrize(
    "family,remat", [("llama", "full"), ("llama", "dots"), ("gpt2", "dots"), ("gemma", "full")]
)
def test_remat_preserves_logits_and_gradients(family, remat):
    cfg = small_cfg(family=family)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, (2, 8))
    weights = rng.standard_normal((2, 8, 50)).astype(np.float32)
    m = build_model(cfg, seed=0)
    ref_logits, ref_grads = logits_and_grads(m, tokens, weights)
    assert_close(ref_logits, np_lm(lm_params(m, cfg), cfg, tokens), atol=1e-5)
    leaves = jax.tree.leaves(ref_grads)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in leaves)  # every parameter gets a grad
    m_r = build_model(dataclasses.replace(cfg, remat=remat), seed=0)
    logits, grads = logits_and_grads(m_r, tokens, weights)
    assert_close(logits, f64(ref_logits), atol=1e-6)
    for g, g0 in zip(jax.tree.leaves(grads), leaves, strict=True):
        # the recompute may fuse differently: float32 rounding of sums whose terms reach the
        # leaf's largest entries (gpt2 dots: 3.3e-6 on an embedding gradient of max 32)
        scale = max(1.0, float(np.abs(f64(g0)).max()))
        assert_close(g, f64(g0), rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
def test_gradient_matches_finite_difference(family):
    """A directional derivative of sum(logits·R) along random directions in the embedding,
    layer-1 q and layer-0 w1, against a central difference of the float64 NumPy reference."""
    cfg = small_cfg(family=family)
    m = build_model(cfg, seed=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (2, 8))
    wts = rng.standard_normal((2, 8, cfg.vocab_size))
    _, grads = logits_and_grads(m, tokens, wts.astype(np.float32))
    g_embed = f64(grads["embed"]["weight"][...])
    g_q = f64(grads["blocks"]["attn"]["q"]["weight"][...])[1]
    g_w1 = f64(grads["blocks"]["ffn"]["w1"]["weight"][...])[0]
    d_embed, d_q, d_w1 = (rng.standard_normal(g.shape) for g in (g_embed, g_q, g_w1))
    analytic = np.sum(g_embed * d_embed) + np.sum(g_q * d_q) + np.sum(g_w1 * d_w1)
    base = lm_params(m, cfg)

    def np_loss(eps):
        p = lm_params(m, cfg)
        p["embed"] = base["embed"] + eps * d_embed
        p["layers"][1]["attn"]["q"] = base["layers"][1]["attn"]["q"] + eps * d_q
        p["layers"][0]["ffn"]["w1"] = base["layers"][0]["ffn"]["w1"] + eps * d_w1
        return float(np.sum(np_lm(p, cfg, tokens) * wts))

    # small step: the embedding is tiny (σ≈0.02) and normalised, so the loss is very curved there
    eps = 1e-6
    fd = (np_loss(eps) - np_loss(-eps)) / (2 * eps)
    np.testing.assert_allclose(analytic, fd, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute():
    """Params stay float32, logits come back float32, values within bf16 error of f32 logits.

    Tolerance: max |Δ| ≤ 0.05 · max |f32 logits| (bf16 has an 8-bit mantissa, ≈0.4 % per op).
    """
    for family in ("llama", "gpt2", "gemma"):
        cfg = small_cfg(family=family)
        bf = dataclasses.replace(cfg, dtype="bfloat16")
        tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 8)))
        m32, m16 = build_model(cfg, seed=0), build_model(bf, seed=0)
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m16, nnx.Param)))
        l32, l16 = f64(forward(m32, tokens)), forward(m16, tokens)
        assert l16.dtype == jnp.float32
        diff = np.abs(f64(l16) - l32).max()
        assert diff <= 0.05 * np.abs(l32).max()
        assert diff > 0  # the computation really ran in lower precision
        # and matmuls in the traced program take bf16 operands
        jaxpr = str(jax.make_jaxpr(lambda t, m=m16: m(t))(tokens))
        assert "bf16[" in jaxpr
        assert "bf16[" not in str(jax.make_jaxpr(lambda t, m=m32: m(t))(tokens))


# ------------------------------------------------------------------------------------------------
# Parameter counts and shapes on the presets (abstract, no memory)
# ------------------------------------------------------------------------------------------------


def hand_param_count(cfg: ModelConfig) -> int:
    """Written from the architecture fields, matrix by matrix."""
    d, f, v, L, T = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers, cfg.max_seq_len
    q, kv = cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head
    gated = cfg.ffn in ("swiglu", "geglu")
    norm = 2 * d if cfg.norm_bias else d
    ffn = (3 if gated else 2) * d * f
    if cfg.n_experts:  # E experts, a (d, E) router, an optional shared expert
        ffn = cfg.n_experts * ffn + d * cfg.n_experts + ffn * cfg.moe_shared_expert
    per_layer = 2 * d * q + 2 * d * kv + 2 * norm + ffn
    per_layer += (q + 2 * kv) * cfg.qkv_bias + d * cfg.attn_out_bias
    per_layer += ((2 if gated else 1) * f + d) * cfg.ffn_bias
    outside = v * d + norm + (0 if cfg.tied_embeddings else d * v) + v * cfg.head_bias
    outside += T * d if cfg.positions == "learned" else 0
    return L * per_layer + outside


# Hugging Face's parameter counts (transformers 5.24, meta device; FACTS.md "Checked in review")
HF_PARAM_COUNTS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "llama-2-7b": 6_738_415_616,
    "llama-3-8b": 8_030_261_248,
    "open-llama-3b": 3_426_473_600,
    "mistral-7b": 7_241_732_096,
    "gemma-2b": 2_506_172_416,
    "gemma-7b": 8_537_680_896,
    "mixtral-8x7b": 46_702_792_704,
}


def abstract_params(cfg: ModelConfig) -> dict:
    state = nnx.state(abstract_model(cfg), nnx.Param)
    return {".".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(state)}


def count(params: dict) -> int:
    return sum(int(np.prod(p.shape)) for p in params.values())


CPU_PRESETS = ["tiny", "10m", "30m"]
COUNT_CASES = [(n, PRESETS[n]) for n in PRESETS] + [
    (f"{n}-{family}", with_family(PRESETS[n], family))
    for n in CPU_PRESETS
    for family in ("gpt2", "gemma")
]


@pytest.mark.parametrize("name,cfg", COUNT_CASES, ids=[c[0] for c in COUNT_CASES])
def test_preset_param_count_and_shapes(name, cfg):
    """Every preset built abstractly (``nnx.eval_shape``: no memory, also for the 8B ones)."""
    params = abstract_params(cfg)
    n = count(params)
    assert n == param_counts(cfg).total == hand_param_count(cfg)
    if name in HF_PARAM_COUNTS:
        assert n == HF_PARAM_COUNTS[name]
    d, f, v, L = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
    q, kv = cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head
    shape = {k: tuple(p.shape) for k, p in params.items()}
    assert all(p.dtype == jnp.float32 for p in params.values())
    assert shape["embed.weight"] == (v, d)
    assert shape["blocks.attn.q.weight"] == (L, d, q)
    assert shape["blocks.attn.k.weight"] == (L, d, kv)
    assert shape["blocks.attn.o.weight"] == (L, q, d)
    ffn = "blocks.ffn.experts." if cfg.moe else "blocks.ffn."
    leaf = "" if cfg.moe else ".weight"
    experts = (cfg.n_experts,) if cfg.moe else ()
    assert shape[f"{ffn}w1{leaf}"] == (L, *experts, d, f)
    assert shape[f"{ffn}w2{leaf}"] == (L, *experts, f, d)
    assert shape["blocks.attn_norm.weight"] == (L, d)
    assert shape["final_norm.weight"] == (d,)
    assert ("head.weight" in shape) == (not cfg.tied_embeddings)
    assert (f"{ffn}w3{leaf}" in shape) == (cfg.ffn in ("swiglu", "geglu"))
    assert ("pos_embed.weight" in shape) == (cfg.positions == "learned")
    assert ("final_norm.bias" in shape) == cfg.norm_bias
    assert ("blocks.attn.q.bias" in shape) == cfg.qkv_bias
    if cfg.qkv_bias:
        assert shape["blocks.attn.k.bias"] == (L, kv) and shape["blocks.attn.o.bias"] == (L, d)


@pytest.mark.parametrize("name", ["tiny", "125m", "175b"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_untied_head_adds_d_times_v(name, family):
    cfg = with_family(PRESETS[name], family)
    untied = dataclasses.replace(cfg, tied_embeddings=False)
    tied_p, untied_p = abstract_params(cfg), abstract_params(untied)
    assert count(untied_p) - count(tied_p) == cfg.d_model * cfg.vocab_size
    assert tuple(untied_p["head.weight"].shape) == (cfg.d_model, cfg.vocab_size)
    assert count(untied_p) == hand_param_count(untied) == param_counts(untied).total


@pytest.mark.parametrize(
    "kw",
    [dict(n_kv_heads=2), dict(n_kv_heads=1, family="gpt2"), dict(head_dim=16), dict(head_dim=6)],
)
def test_param_count_gqa_and_head_dim(kw):
    kw = dict(kw)
    family = kw.pop("family", "llama")
    cfg = small_cfg(family, n_layers=3, d_model=64, n_heads=8, d_ff=96, vocab_size=100, **kw)
    params = abstract_params(cfg)
    d, h, kv, dk = 64, 8, cfg.kv_heads, cfg.d_head
    attn = 2 * d * h * dk + 2 * d * kv * dk  # q, o full width; k, v grouped
    gpt2 = family == "gpt2"
    ffn = (2 if gpt2 else 3) * d * 96
    biases = (h * dk + 2 * kv * dk + d + 96 + d) if gpt2 else 0  # q, k, v, o, FFN in, out
    norms = 4 * d if gpt2 else 2 * d
    final = 2 * d if gpt2 else d
    pos = cfg.max_seq_len * d if gpt2 else 0
    assert count(params) == 3 * (attn + ffn + biases + norms) + 100 * d + pos + final
    assert count(params) == param_counts(cfg).total
    assert tuple(params["blocks.attn.k.weight"].shape) == (3, d, kv * dk)
    assert tuple(params["blocks.attn.q.weight"].shape) == (3, d, h * dk)
    assert tuple(params["blocks.attn.o.weight"].shape) == (3, h * dk, d)


# The norms, the masked softmax and the gated activation carry their own backward (they keep
# fewer tensors for it): each against jax's autodiff of the plain formula, in float64, on
# random inputs and a random cotangent, and the forward against NumPy.
def _vjp64(fn, *args):
    with jax.enable_x64():
        args = [jnp.asarray(a, jnp.float64) if a.dtype.kind == "f" else jnp.asarray(a)
                for a in args]  # fmt: skip
        out, pullback = jax.vjp(fn, *args)
        cot = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape))
        return np.asarray(out), [np.asarray(g) for g in pullback(cot) if g is not None]


def _plain_rms(x, g):
    return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-5) * g


def _plain_layer(x, g):
    c = x - jnp.mean(x, axis=-1, keepdims=True)
    return c / jnp.sqrt(jnp.mean(c * c, axis=-1, keepdims=True) + 1e-5) * g


@pytest.mark.parametrize(
    ("lean", "plain"), [(ops.rms_norm, _plain_rms), (ops.layer_norm, _plain_layer)]
)
def test_norm_backward_equals_autodiff_of_the_formula(lean, plain):
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((2, 5, 8)) * 3 + 1, rng.standard_normal(8)
    out, grads = _vjp64(lambda a, b: lean(a, b, 1e-5), x, g)
    want_out, want_grads = _vjp64(plain, x, g)
    centred = x - x.mean(-1, keepdims=True) if lean is ops.layer_norm else x
    # the norms compute in float32 whatever the input dtype: float32 tolerances
    want_np = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + 1e-5) * g
    np.testing.assert_allclose(out, want_np, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rms_norm_computes_in_float32_and_returns_the_input_dtype():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 8)), jnp.bfloat16)
    y = ops.rms_norm(x, jnp.ones(8), 1e-5)
    x64 = np.asarray(x, np.float64)
    want = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + 1e-5)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-2)
    dx = jax.grad(lambda a: ops.rms_norm(a, jnp.ones(8), 1e-5).astype(jnp.float32).sum())(x)
    assert dx.dtype == jnp.bfloat16


@pytest.mark.parametrize("masked", [True, False])
def test_masked_softmax_backward_equals_autodiff_of_the_formula(masked):
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((2, 3, 6, 6)) * 4
    mask = np.tril(np.ones((6, 6), bool)) if masked else None

    def plain(s):
        if mask is not None:
            s = jnp.where(mask, s, -1e300)
        return jax.nn.softmax(s, axis=-1)

    out, grads = _vjp64(lambda s: ops.masked_softmax(s, mask), scores)
    want_out, want_grads = _vjp64(plain, scores)
    np.testing.assert_allclose(out, np_softmax(np.where(mask, scores, -np.inf)) if masked
                               else np_softmax(scores), rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(out, want_out, rtol=1e-12)
    np.testing.assert_allclose(grads[0], want_grads[0], rtol=1e-10, atol=1e-12)
    if masked:  # nothing flows to the masked scores
        assert np.all(grads[0][..., ~mask] == 0)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("gated", [True, False])
def test_gated_activation_backward_equals_autodiff_of_the_formula(activation, gated):
    rng = np.random.default_rng(0)
    h, gate = rng.standard_normal((4, 6)) * 2, rng.standard_normal((4, 6))
    act = ACTIVATIONS[activation]
    if gated:
        out, grads = _vjp64(lambda a, b: model_lib.gated_activation(activation, a, b), h, gate)
        want_out, want_grads = _vjp64(lambda a, b: act(a) * b, h, gate)
    else:
        out, grads = _vjp64(lambda a: model_lib.gated_activation(activation, a, None), h)
        want_out, want_grads = _vjp64(act, h)
    np.testing.assert_allclose(out, want_out, rtol=1e-12)
    for got, want in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
