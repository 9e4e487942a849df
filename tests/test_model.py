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

from scaling.config import ModelConfig
from scaling.estimate import param_counts
from scaling.model import (
    CausalSelfAttention,
    Embedding,
    GeluMLP,
    LayerNorm,
    Linear,
    RMSNorm,
    RotaryPositionalEmbedding,
    SwiGLU,
    TransformerBlock,
    abstract_model,
    build_model,
    gelu,
    scaled_dot_product_attention,
    silu,
    softmax,
)
from scaling.presets import PRESETS, with_family

RTOL, ATOL = 1e-5, 1e-6  # float32 vs float64 reference

# std of a standard normal truncated at ±3 (what a "σ, cut at ±3σ" init should have, over σ)
_A = 3.0
_PHI_A = math.exp(-0.5 * _A * _A) / math.sqrt(2 * math.pi)
TRUNC_STD_FACTOR = math.sqrt(1.0 - 2 * _A * _PHI_A / math.erf(_A / math.sqrt(2)))  # ≈ 0.98658


def small_cfg(**kw) -> ModelConfig:
    base = dict(n_layers=2, d_model=16, n_heads=4, d_ff=32, vocab_size=50, max_seq_len=16)
    base.update(kw)
    return ModelConfig(**base)


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


def np_softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_sdpa(q, k, v, mask=None, scale=None):
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = np.einsum("...tk,...sk->...ts", q, k) * scale
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    return np.einsum("...ts,...sk->...tk", np_softmax(s), v)


def rope_vec(vec, pos, theta):
    """Rotate each pair (vec[2i], vec[2i+1]) by pos·theta^(-2i/d) with an explicit 2×2 matrix."""
    d = vec.shape[-1]
    out = np.empty(d)
    for i in range(d // 2):
        ang = pos * theta ** (-2.0 * i / d)
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        out[2 * i : 2 * i + 2] = rot @ vec[2 * i : 2 * i + 2]
    return out


def np_rope(x, pos, theta):
    """``x`` (..., d) and integer ``pos`` of shape x.shape[:-1]."""
    out = np.empty(x.shape)
    for idx in np.ndindex(*x.shape[:-1]):
        out[idx] = rope_vec(x[idx], float(pos[idx]), theta)
    return out


def np_attention(x, positions, p, cfg: ModelConfig):
    """Causal self-attention from weights p = dict(q, k, v, o) stored (d_in, d_out)."""
    b, t, _ = x.shape
    h, kvh, dk = cfg.n_heads, cfg.kv_heads, cfg.d_head
    q = (x @ p["q"]).reshape(b, t, h, dk)
    k = (x @ p["k"]).reshape(b, t, kvh, dk)
    v = (x @ p["v"]).reshape(b, t, kvh, dk)
    if cfg.family == "llama":
        pos_q = np.broadcast_to(positions[:, :, None], (b, t, h))
        pos_k = np.broadcast_to(positions[:, :, None], (b, t, kvh))
        q = np_rope(q, pos_q, cfg.rope_theta)
        k = np_rope(k, pos_k, cfg.rope_theta)
    # muP: α_attn·√d_head_base / d_head (microsoft/mup's 8/d_head at a base head width of 64)
    base_dk = cfg.mup_base_head_dim or dk
    scale = cfg.mup_attn_multiplier * np.sqrt(base_dk) / dk if cfg.mup else 1.0 / np.sqrt(dk)
    causal = np.tril(np.ones((t, t), dtype=bool))
    rep = h // kvh
    out = np.zeros((b, t, h, dk))
    for bi in range(b):
        for hi in range(h):
            kv = hi // rep  # query head hi reads kv head hi // (h / h_kv)
            s = q[bi, :, hi] @ k[bi, :, kv].T * scale
            s = np.where(causal, s, -np.inf)
            out[bi, :, hi] = np_softmax(s) @ v[bi, :, kv]
    return out.reshape(b, t, h * dk) @ p["o"]


def np_ffn(x, p, family):
    if family == "llama":
        return (np_silu(x @ p["w1"]) * (x @ p["w3"])) @ p["w2"]
    return np_gelu_tanh(x @ p["w1"]) @ p["w2"]


def np_norm(x, g, b, cfg):
    if cfg.family == "llama":
        return np_rmsnorm(x, g, cfg.norm_eps)
    return np_layernorm(x, g, b, cfg.norm_eps)


def block_params(blk, cfg: ModelConfig, i: int | None = None) -> dict:
    gpt2 = cfg.family == "gpt2"
    p = {
        "attn_norm_g": w(blk.attn_norm.weight, i),
        "attn_norm_b": w(blk.attn_norm.bias, i) if gpt2 else None,
        "ffn_norm_g": w(blk.ffn_norm.weight, i),
        "ffn_norm_b": w(blk.ffn_norm.bias, i) if gpt2 else None,
        "attn": {n: w(getattr(blk.attn, n).weight, i) for n in "qkvo"},
        "ffn": {"w1": w(blk.ffn.w1.weight, i), "w2": w(blk.ffn.w2.weight, i)},
    }
    if not gpt2:
        p["ffn"]["w3"] = w(blk.ffn.w3.weight, i)
    return p


def np_block(x, positions, p, cfg):
    x = x + np_attention(
        np_norm(x, p["attn_norm_g"], p["attn_norm_b"], cfg), positions, p["attn"], cfg
    )
    return x + np_ffn(np_norm(x, p["ffn_norm_g"], p["ffn_norm_b"], cfg), p["ffn"], cfg.family)


def lm_params(m, cfg: ModelConfig) -> dict:
    """All weights of a TransformerLM as float64 NumPy, layers as a list of dicts."""
    gpt2 = cfg.family == "gpt2"
    return {
        "embed": w(m.embed.weight),
        "pos_embed": w(m.pos_embed.weight) if gpt2 else None,
        "layers": [block_params(m.blocks, cfg, i) for i in range(cfg.n_layers)],
        "final_g": w(m.final_norm.weight),
        "final_b": w(m.final_norm.bias) if gpt2 else None,
        "head": None if cfg.tied_embeddings else w(m.head.weight),
    }


def np_lm(p: dict, cfg: ModelConfig, tokens, positions=None):
    b, t = tokens.shape
    if positions is None:
        positions = np.broadcast_to(np.arange(t), (b, t))
    x = p["embed"][tokens]
    if cfg.family == "gpt2":
        x = x + p["pos_embed"][positions]
    if cfg.mup:
        x = x * cfg.mup_input_multiplier
    for layer in p["layers"]:
        x = np_block(x, positions, layer, cfg)
    x = np_norm(x, p["final_g"], p["final_b"], cfg)
    logits = x @ p["embed"].T if cfg.tied_embeddings else x @ p["head"]
    if cfg.mup:
        logits = logits * cfg.mup_output_multiplier / (cfg.d_model / cfg.mup_base_width)
    return logits


def randomize_norms(m, cfg: ModelConfig, seed: int) -> None:
    """Give every norm a non-trivial gain (and bias) so the reference checks their use."""
    rng = np.random.default_rng(seed)
    norms = [m.blocks.attn_norm, m.blocks.ffn_norm, m.final_norm]
    for norm in norms:
        shape = norm.weight[...].shape
        norm.weight[...] = jnp.asarray(1.0 + 0.3 * rng.standard_normal(shape), jnp.float32)
        if cfg.family == "gpt2":
            norm.bias[...] = jnp.asarray(0.1 * rng.standard_normal(shape), jnp.float32)


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


@pytest.mark.parametrize("theta", [10_000.0, 500.0])
def test_rope_matches_explicit_rotation(theta):
    rng = np.random.default_rng(0)
    d_k, max_len = 8, 64
    rope = RotaryPositionalEmbedding(d_k, theta, max_len)
    x = rng.standard_normal((2, 4, d_k)).astype(np.float32)
    pos = np.array([[3, 7, 1, 12], [63, 0, 40, 5]])  # non-zero, non-contiguous, unsorted
    y = rope(jnp.asarray(x), jnp.asarray(pos))
    assert_close(y, np_rope(f64(x), pos, theta), atol=1e-5)
    # with a heads axis and positions broadcast over it (as the attention calls it)
    xh = rng.standard_normal((2, 3, 4, d_k)).astype(np.float32)
    yh = rope(jnp.asarray(xh), jnp.asarray(pos)[:, None, :])
    assert_close(
        yh, np_rope(f64(xh), np.broadcast_to(pos[:, None, :], (2, 3, 4)), theta), atol=1e-5
    )
    # a rotation preserves norms
    np.testing.assert_allclose(
        np.linalg.norm(f64(y), axis=-1), np.linalg.norm(f64(x), axis=-1), rtol=1e-5
    )


def test_rope_dot_product_depends_only_on_offset():
    rng = np.random.default_rng(1)
    d_k = 16
    rope = RotaryPositionalEmbedding(d_k, 10_000.0, 128)
    q = jnp.asarray(rng.standard_normal(d_k).astype(np.float32))
    k = jnp.asarray(rng.standard_normal(d_k).astype(np.float32))

    def dot(m, n):
        qm = rope(q[None], jnp.array([m]))[0]
        kn = rope(k[None], jnp.array([n]))[0]
        return float(jnp.dot(qm, kn))

    for m, n in [(5, 2), (9, 30), (0, 0)]:
        base = dot(m, n)
        for shift in (1, 17, 60):
            np.testing.assert_allclose(dot(m + shift, n + shift), base, rtol=1e-4, atol=1e-5)
    # but it does depend on the offset itself
    assert abs(dot(5, 2) - dot(5, 3)) > 1e-3
    # position 0 is the identity
    np.testing.assert_allclose(np.asarray(rope(q[None], jnp.array([0]))[0]), np.asarray(q))


def test_rope_rejects_odd_dimension():
    with pytest.raises(ValueError, match="even"):
        RotaryPositionalEmbedding(7, 10_000.0, 16)


# ------------------------------------------------------------------------------------------------
# FFNs, attention, block
# ------------------------------------------------------------------------------------------------


def test_swiglu():
    cfg = small_cfg(d_ff=24)
    ffn = SwiGLU(cfg, rngs=nnx.Rngs(0))
    p = {n: w(getattr(ffn, n).weight) for n in ("w1", "w2", "w3")}
    assert p["w1"].shape == (16, 24) and p["w3"].shape == (16, 24) and p["w2"].shape == (24, 16)
    assert not np.allclose(p["w1"], p["w3"])  # independent draws
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    want = (np_silu(f64(x) @ p["w1"]) * (f64(x) @ p["w3"])) @ p["w2"]
    assert_close(ffn(jnp.asarray(x)), want)


def test_gelu_mlp():
    cfg = small_cfg(family="gpt2", d_ff=24)
    ffn = GeluMLP(cfg, rngs=nnx.Rngs(0))
    w1, w2 = w(ffn.w1.weight), w(ffn.w2.weight)
    assert w1.shape == (16, 24) and w2.shape == (24, 16)
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    assert_close(ffn(jnp.asarray(x)), np_gelu_tanh(f64(x) @ w1) @ w2)


ATTN_CASES = {
    "llama": dict(family="llama"),
    "gpt2": dict(family="gpt2"),
    "llama_gqa": dict(family="llama", n_kv_heads=2),
    "gpt2_gqa_mqa": dict(family="gpt2", n_kv_heads=1),
    "llama_head_dim": dict(family="llama", head_dim=6),
    "llama_mup": dict(family="llama", mup=True, tied_embeddings=False),
}


@pytest.mark.parametrize("case", list(ATTN_CASES))
def test_causal_self_attention(case):
    cfg = small_cfg(rope_theta=100.0, **ATTN_CASES[case])
    attn = CausalSelfAttention(cfg, rngs=nnx.Rngs(0))
    p = {n: w(getattr(attn, n).weight) for n in "qkvo"}
    assert p["q"].shape == (16, cfg.n_heads * cfg.d_head)
    assert p["k"].shape == (16, cfg.kv_heads * cfg.d_head)
    assert p["o"].shape == (cfg.n_heads * cfg.d_head, 16)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 16)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4, 5], [2, 3, 4, 9, 10, 15]])
    got = attn(jnp.asarray(x), jnp.asarray(positions))
    assert_close(got, np_attention(f64(x), positions, p, cfg), atol=1e-5)


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


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_transformer_block_pre_norm(family):
    cfg = small_cfg(family=family)
    blk = TransformerBlock(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    for norm in (blk.attn_norm, blk.ffn_norm):
        norm.weight[...] = jnp.asarray(1.0 + 0.3 * rng.standard_normal(16), jnp.float32)
        if family == "gpt2":
            norm.bias[...] = jnp.asarray(0.1 * rng.standard_normal(16), jnp.float32)
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
}


@pytest.mark.parametrize("case", list(LM_CASES))
def test_transformer_lm_matches_numpy_reference(case):
    cfg = small_cfg(**LM_CASES[case])
    m = build_model(cfg, seed=0)
    randomize_norms(m, cfg, seed=1)
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


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_default_positions_are_arange(family):
    """``m(tokens)`` (eager, positions=None) equals the reference with positions 0..t-1."""
    cfg = small_cfg(family=family)
    m = build_model(cfg, seed=0)
    tokens = np.random.default_rng(3).integers(0, 50, (2, 8))
    assert_close(m(jnp.asarray(tokens)), np_lm(lm_params(m, cfg), cfg, tokens), atol=1e-5)


def test_llama_logits_invariant_to_position_shift_gpt2_not():
    """RoPE is relative: shifting all positions leaves llama logits unchanged; gpt2 changes."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 8)))
    shifted = jnp.broadcast_to(jnp.arange(8) + 7, (2, 8))
    for family, invariant in (("llama", True), ("gpt2", False)):
        m = build_model(small_cfg(family=family), seed=0)
        a, b = f64(forward(m, tokens)), f64(forward(m, tokens, shifted))
        assert np.allclose(a, b, rtol=1e-4, atol=1e-5) == invariant, family


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_transformer_lm_is_causal(family):
    cfg = small_cfg(family=family)
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
    for family in ("llama", "gpt2"):
        cfg = small_cfg(family=family)
        tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 8)))
        scan = build_model(cfg, seed=4)
        loop = build_model(dataclasses.replace(cfg, scan_layers=False), seed=4)
        assert_close(forward(loop, tokens), f64(forward(scan, tokens)), atol=1e-5)
        assert_close(
            forward(scan, tokens), np_lm(lm_params(scan, cfg), cfg, np.asarray(tokens)), atol=1e-5
        )


@pytest.mark.parametrize("family,remat", [("llama", "full"), ("llama", "dots"), ("gpt2", "dots")])
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
        assert_close(g, f64(g0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
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
    for family in ("llama", "gpt2"):
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
    """Written from the architecture, for the standard (no GQA, head_dim = d/h) layout."""
    d, f, v, L = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
    if cfg.family == "llama":
        per_layer = 4 * d * d + 3 * d * f + 2 * d
        final_norm, pos = d, 0
    else:
        per_layer = 4 * d * d + 2 * d * f + 4 * d
        final_norm, pos = 2 * d, cfg.max_seq_len * d
    head = 0 if cfg.tied_embeddings else d * v
    return L * per_layer + v * d + pos + final_norm + head


def abstract_params(cfg: ModelConfig) -> dict:
    state = nnx.state(abstract_model(cfg), nnx.Param)
    return {".".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(state)}


def count(params: dict) -> int:
    return sum(int(np.prod(p.shape)) for p in params.values())


CPU_PRESETS = ["tiny", "10m", "30m"]
COUNT_CASES = [(n, PRESETS[n]) for n in PRESETS] + [
    (n + "-gpt2", with_family(PRESETS[n], "gpt2")) for n in CPU_PRESETS
]


@pytest.mark.parametrize("name,cfg", COUNT_CASES, ids=[c[0] for c in COUNT_CASES])
def test_preset_param_count_and_shapes(name, cfg):
    params = abstract_params(cfg)
    n = count(params)
    assert n == param_counts(cfg).total
    assert n == hand_param_count(cfg)
    d, f, v, L = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
    shape = {k: tuple(p.shape) for k, p in params.items()}
    assert all(p.dtype == jnp.float32 for p in params.values())
    assert shape["embed.weight"] == (v, d)
    assert shape["blocks.attn.q.weight"] == (L, d, d)
    assert shape["blocks.attn.o.weight"] == (L, d, d)
    assert shape["blocks.ffn.w1.weight"] == (L, d, f)
    assert shape["blocks.ffn.w2.weight"] == (L, f, d)
    assert shape["blocks.attn_norm.weight"] == (L, d)
    assert shape["final_norm.weight"] == (d,)
    assert "head.weight" not in shape  # presets tie the head
    if cfg.family == "llama":
        assert shape["blocks.ffn.w3.weight"] == (L, d, f)
        assert "pos_embed.weight" not in shape and "final_norm.bias" not in shape
    else:
        assert "blocks.ffn.w3.weight" not in shape
        assert shape["pos_embed.weight"] == (cfg.max_seq_len, d)
        assert shape["blocks.ffn_norm.bias"] == (L, d)
        assert shape["final_norm.bias"] == (d,)


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
    cfg = ModelConfig(n_layers=3, d_model=64, n_heads=8, d_ff=96, vocab_size=100, **kw)
    params = abstract_params(cfg)
    d, h, kv, dk = 64, 8, cfg.kv_heads, cfg.d_head
    attn = 2 * d * h * dk + 2 * d * kv * dk  # q, o full width; k, v grouped
    ffn = (3 if cfg.family == "llama" else 2) * d * 96
    norms = 2 * d if cfg.family == "llama" else 4 * d
    final = d if cfg.family == "llama" else 2 * d
    pos = cfg.max_seq_len * d if cfg.family == "gpt2" else 0
    assert count(params) == 3 * (attn + ffn + norms) + 100 * d + pos + final
    assert count(params) == param_counts(cfg).total
    assert tuple(params["blocks.attn.k.weight"].shape) == (3, d, kv * dk)
    assert tuple(params["blocks.attn.q.weight"].shape) == (3, d, h * dk)
    assert tuple(params["blocks.attn.o.weight"].shape) == (3, h * dk, d)
