"""The parameter-role table (`scaling.roles`) against the model it describes, and the sharding
rules (`scaling.sharding`) against what jax actually places on each device."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from scaling import parallel, sharding
from scaling.config import ModelConfig
from scaling.estimate import params_per_device
from scaling.model import abstract_model
from scaling.presets import PRESETS, with_family
from scaling.roles import Role, parameters, role_of
from scaling.train import decay_mask

TINY = PRESETS["tiny"]
CASES = [PRESETS[n] for n in PRESETS] + [
    *(with_family(TINY, family) for family in ("gpt2", "mistral", "gemma")),
    dataclasses.replace(TINY, tied_embeddings=False),
    ModelConfig(n_layers=3, d_model=64, n_heads=8, n_kv_heads=2, head_dim=6, d_ff=96),
    # every optional parameter at once, and the variants that create none
    dataclasses.replace(
        TINY,
        name="all-biases",
        norm="layer",
        norm_bias=True,
        qkv_bias=True,
        attn_out_bias=True,
        ffn_bias=True,
        head_bias=True,
        tied_embeddings=False,
    ),  # fmt: skip
    dataclasses.replace(TINY, name="tied-head-bias", head_bias=True, ffn="relu", d_ff=100),
    dataclasses.replace(TINY, name="plain", norm="layer", positions="sinusoidal", ffn="gelu"),
    dataclasses.replace(TINY, name="nope", positions="none", ffn="geglu", attn_softcap=30.0),
]


def _model_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    state = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return {tuple(str(k.key) for k in path): tuple(leaf.shape) for path, leaf in flat}


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.name}-{c.family}-{c.tied_embeddings}")
def test_table_lists_exactly_the_parameters_the_model_creates(cfg):
    table = {p.path: p.shape for p in parameters(cfg)}
    assert table == _model_shapes(cfg)
    for p in parameters(cfg):
        assert role_of(p.path) is p.role


@pytest.mark.parametrize(
    "path",
    [("embed", "bias"), ("blocks", "attn", "qkv", "weight"), ("mystery",), ("head", "scale")],
)
def test_unknown_parameter_names_raise_one_value_error(path):
    with pytest.raises(ValueError, match="no role for parameter"):
        role_of(path)


def test_roles_decide_decay_and_mup_hidden_matrices():
    cfg = with_family(PRESETS["tiny"], "gpt2")
    params = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
    mask = jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]
    decayed = {"/".join(str(k.key) for k in path) for path, on in mask if on}
    not_decayed = {"/".join(str(k.key) for k in path) for path, on in mask if not on}
    assert {"blocks/attn/q/bias", "blocks/ffn/w2/bias", "final_norm/bias"} <= not_decayed
    # GPT-2's biases (q, k, v, o, FFN) and LayerNorm shifts are not decayed, like the gains.
    assert decayed == {
        "embed/weight",
        "pos_embed/weight",
        "blocks/attn/q/weight",
        "blocks/attn/k/weight",
        "blocks/attn/v/weight",
        "blocks/attn/o/weight",
        "blocks/ffn/w1/weight",
        "blocks/ffn/w2/weight",
    }
    assert {r for r in Role if r.hidden} == {
        Role.ATTN_Q, Role.ATTN_K, Role.ATTN_V, Role.ATTN_O,
        Role.FFN_IN, Role.FFN_GATE, Role.FFN_OUT,
        Role.EXPERT_IN, Role.EXPERT_GATE, Role.EXPERT_OUT,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "mesh"), [("dp", (8, 1)), ("fsdp", (8, 1)), ("tp", (1, 8)), ("fsdp_tp", (4, 2))]
)
@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
def test_estimator_holds_what_jax_places_on_a_device(mode, mesh, family):
    """The estimator's per-device parameter count equals the shard shapes of the real
    NamedShardings (the same rules drive both); gpt2 adds biases split over tensor."""
    cfg = dataclasses.replace(with_family(TINY, family), head_bias=True)
    params = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
    jax_mesh = parallel.make_mesh(mesh, jax.devices()[: mesh[0] * mesh[1]])
    shards = parallel.shardings(params, mode, jax_mesh)
    held = sum(
        int(np.prod(s.shard_shape(p.shape)))
        for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(shards), strict=True)
    )
    assert held == params_per_device(cfg, mode=mode, mesh=mesh)
    assert held < sum(p.size for p in parameters(cfg)) or mode == "dp"


def test_every_mode_has_rules_a_default_mesh_and_a_mesh_rule():
    for mode in sharding.MODES:
        assert set(sharding.RULES[mode]) <= {role.kind for role in Role} - {"vector"}
        sharding.validate_mesh(mode, sharding.default_mesh_shape(mode, 8))
    with pytest.raises(ValueError, match="unknown mode 'pp'; valid: none, dp, fsdp, tp, fsdp_tp"):
        sharding.check_mode("pp")
