import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from flax import nnx

from scaling.coord_check import coord_check
from scaling.model import build_model
from scaling.mup import attention_scale, fan_in_ratios, lr_multipliers
from scaling.presets import build_run, get_preset, with_width
from scaling.train import decay_mask, make_optimizer

TRUNCATED_STD = 0.98658  # std of a standard normal cut at ±3σ

HIDDEN = {"q", "k", "v", "o", "w1", "w2", "w3"}


def _cfg(width: int, mup: bool):
    cfg = with_width(get_preset("tiny"), width)
    return dataclasses.replace(cfg, mup=mup, tied_embeddings=False)


def test_hidden_init_std_scales_as_one_over_sqrt_m_under_mup():
    small, large = build_model(_cfg(128, True)), build_model(_cfg(512, True))
    for name in ("q", "o"):
        s = float(np.std(small.blocks.attn.__getattribute__(name).weight[...]))
        big = float(np.std(large.blocks.attn.__getattribute__(name).weight[...]))
        assert big / s == pytest.approx(1 / math.sqrt(512 / 128), rel=0.03), name
    # Under SP the hidden init is what the foundation set: σ² = 2/(d_in + d_out), cut at ±3σ.
    sp = build_model(_cfg(512, False))
    w1 = np.asarray(sp.blocks.ffn.w1.weight[...])
    expected = math.sqrt(2 / (512 + w1.shape[-1])) * TRUNCATED_STD
    assert float(np.std(w1)) == pytest.approx(expected, rel=0.03)
    # The muP head keeps a width-independent init (its 1/m is a forward multiplier).
    assert float(np.std(large.head.weight[...])) == pytest.approx(0.02 * TRUNCATED_STD, rel=0.05)


def test_lr_multiplier_is_the_fan_in_ratio_of_each_hidden_matrix():
    # microsoft/mup's MuAdam divides a matrix's LR by its fan-in width multiplier. At width 512
    # (base 128): q/k/v/w1/w3 read d_model (×4), o reads h·k = 512 (×4), w2 reads d_ff:
    # SwiGLU widths 1408 vs 384 at the base (×3.667, not d_model's ×4).
    cfg = _cfg(512, True)
    params = nnx.to_pure_dict(nnx.state(build_model(cfg)))
    base = nnx.to_pure_dict(nnx.state(build_model(_cfg(128, True))))
    multipliers = lr_multipliers(params, cfg)
    flat = jax.tree_util.tree_flatten_with_path(multipliers)[0]
    assert {getattr(p[0], "key", None) for p, _ in flat} >= {"embed", "head", "final_norm"}
    for path, value in flat:
        names = [getattr(k, "key", k) for k in path]
        if names[-2] in HIDDEN:
            leaf, base_leaf = params, base
            for n in names:
                leaf, base_leaf = leaf[n], base_leaf[n]
            expected = base_leaf.shape[-2] / leaf.shape[-2]  # (L, fan_in, fan_out)
        else:
            expected = 1.0
        assert value == pytest.approx(expected), names
    w2 = multipliers["blocks"]["ffn"]["w2"]["weight"]
    assert w2 == pytest.approx(384 / 1408) and multipliers["blocks"]["attn"]["q"]["weight"] == 0.25


def test_w2_multiplier_follows_d_ff_not_d_model():
    # width 32: d_ff 128 against the base's 384, so w2's LR is ×3 (fan-in), q's ×4 (d_model).
    ratios = fan_in_ratios(_cfg(32, True))
    assert ratios[("blocks", "ffn", "w2", "weight")] == pytest.approx(128 / 384)
    assert ratios[("blocks", "attn", "q", "weight")] == pytest.approx(32 / 128)
    assert ratios[("blocks", "attn", "o", "weight")] == pytest.approx(32 / 128)


def test_attention_scale_is_base_normalised():
    # Heads added at a fixed head width (16): muP keeps the standard 1/√d_head at every width,
    # not 1/d_head (4× flatter at d_head 16).
    for width in (64, 256):
        assert attention_scale(_cfg(width, True)) == pytest.approx(1 / math.sqrt(16))
        assert attention_scale(_cfg(width, True)) == attention_scale(_cfg(width, False))
    # Head width growing from a base of 64: α·√64 / d_head (microsoft/mup's 8/d_head).
    grown = dataclasses.replace(
        _cfg(512, True), n_heads=4, mup_base_head_dim=64, mup_attn_multiplier=2.0
    )
    assert grown.d_head == 128
    assert attention_scale(grown) == pytest.approx(2.0 * 8 / 128)
    model = build_model(_cfg(256, True))
    assert model.blocks.attn.scale == pytest.approx(0.25)


def _hand_adamw(params, grads_seq, *, lr, b1, b2, eps, wd, clip, multipliers, decay):
    """Per-group AdamW written out in NumPy: clip → Adam → ×multiplier → +wd·w → ×(−lr)."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_seq, start=1):
        norm = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
        scale = min(1.0, clip / norm)
        for k in p:
            g = grads[k] * scale
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            update = multipliers[k] * m_hat / (np.sqrt(v_hat) + eps)
            if decay[k]:
                update = update + wd * p[k]
            p[k] = p[k] - lr(t - 1) * update
    return p


def test_optax_chain_with_multipliers_equals_hand_written_per_group_adamw():
    run = build_run(
        "tiny",
        width=512,
        mup=True,
        lr=1e-2,
        lr_warmup_steps=2,
        steps=10,
        weight_decay=0.1,
        grad_clip=0.7,
    )
    params = {
        "blocks": {
            "attn": {"q": {"weight": jnp.full((2, 3, 4), 0.3)}},
            "attn_norm": {"weight": jnp.ones((2, 3))},
        },
        "embed": {"weight": jnp.full((5, 3), 0.5)},
        "head": {"weight": jnp.full((3, 5), -0.2)},
    }
    rng = np.random.default_rng(0)
    grads_seq = [
        jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
        for _ in range(4)
    ]
    tx = make_optimizer(run, params)
    state, p = tx.init(params), params
    for g in grads_seq:
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
    keys = {
        "q": ("blocks", "attn", "q", "weight"),
        "norm": ("blocks", "attn_norm", "weight"),
        "embed": ("embed", "weight"),
        "head": ("head", "weight"),
    }

    def get(tree, path):
        for name in path:
            tree = tree[name]
        return tree

    from scaling.train import cosine_lr

    hand = _hand_adamw(
        {k: get(params, path) for k, path in keys.items()},
        [{k: np.asarray(get(g, path), np.float64) for k, path in keys.items()} for g in grads_seq],
        lr=lambda t: float(cosine_lr(t, max_lr=1e-2, min_lr=1e-3, warmup=2, total=10)),
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        wd=0.1,
        clip=0.7,
        multipliers={"q": 0.25, "norm": 1.0, "embed": 1.0, "head": 1.0},
        decay={"q": True, "norm": False, "embed": True, "head": True},
    )
    for k, path in keys.items():
        np.testing.assert_allclose(get(p, path), hand[k], rtol=2e-5, atol=1e-7, err_msg=k)
    assert decay_mask(params)["blocks"]["attn_norm"]["weight"] is False


def test_mup_at_base_width_is_sp_up_to_the_documented_differences():
    sp_cfg, mup_cfg = _cfg(128, False), _cfg(128, True)  # m = 1
    sp, mu = build_model(sp_cfg, seed=3), build_model(mup_cfg, seed=3)
    sp_params = nnx.to_pure_dict(nnx.state(sp))
    mu_params = nnx.to_pure_dict(nnx.state(mu))
    # Identical parameters except the head's init std (documented: init_std vs σ²=2/(d+v)).
    for path, a in jax.tree_util.tree_flatten_with_path(sp_params)[0]:
        names = [getattr(k, "key", k) for k in path]
        b = mu_params
        for n in names:
            b = b[n]
        if names[0] != "head":
            np.testing.assert_array_equal(a, b, err_msg=str(names))
    # With the SP head copied in, the muP model computes exactly the SP logits: the
    # multipliers are 1 at m = 1 and the attention scale is the standard 1/√d_head.
    mu.head.weight[...] = sp.head.weight[...]
    tokens = jnp.arange(32, dtype=jnp.int32).reshape(2, 16) % 64
    np.testing.assert_allclose(mu(tokens), sp(tokens), rtol=1e-6, atol=1e-6)
    assert set(jax.tree.leaves(lr_multipliers(mu_params, mup_cfg))) == {1.0}


def test_coord_check_logits_flat_under_mup_and_growing_under_sp():
    rows = pd.DataFrame(coord_check([128, 1024], steps=3, lr=1e-2))
    logits = rows[(rows.site == "logits") & (rows.step == 3)].set_index(["mup", "width"])["rms"]
    mup_ratio = logits[(True, 1024)] / logits[(True, 128)]
    sp_ratio = logits[(False, 1024)] / logits[(False, 128)]
    assert 0.5 <= mup_ratio <= 2.0, mup_ratio
    assert sp_ratio > 2.0, sp_ratio
    assert set(rows.site) == {"embed", "block_0", "block_1", "logits"}
    assert sorted(rows.step.unique()) == [0, 1, 2, 3]
