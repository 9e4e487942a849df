"""Mixtral in the Hugging Face formats, without torch: config.json both ways, tensor names and
layouts (per-expert tensors of the Hub checkpoints), exact safetensors and checkpoint round
trips. Logit parity with transformers' MixtralForCausalLM is in test_parity.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from helpers import last_json

from scaling import convert
from scaling.config import ModelConfig
from scaling.estimate.hf_config import hf_config_of, model_config_from_hf, model_fields_from_hf
from scaling.hf_weights import hf_tensors, read_params, write_safetensors
from scaling.presets import FAMILY_ARCHITECTURES, PRESETS
from scaling.roles import parameters

MIXTRAL = ModelConfig(
    name="small-mixtral", family="mistral", **{**FAMILY_ARCHITECTURES["mistral"],
    "sliding_window": None}, n_layers=2, d_model=24, n_heads=4, n_kv_heads=2, d_ff=20,
    vocab_size=64, max_seq_len=32, tied_embeddings=False, n_experts=3, experts_per_token=2,
)  # fmt: skip


def _random(cfg: ModelConfig, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {p.path: rng.standard_normal(p.shape).astype(np.float32) for p in parameters(cfg)}


def _write(folder, cfg: ModelConfig, params: dict) -> None:
    write_safetensors(hf_tensors(params, cfg), folder)
    (folder / "config.json").write_text(json.dumps(hf_config_of(cfg)))


@pytest.mark.parametrize("cfg", [MIXTRAL, PRESETS["mixtral-8x7b"], PRESETS["tiny-moe"]])
def test_config_round_trip(cfg):
    data = hf_config_of(cfg)
    assert data["model_type"] == "mixtral" and data["architectures"] == ["MixtralForCausalLM"]
    assert data["num_local_experts"] == cfg.n_experts
    assert data["num_experts_per_tok"] == cfg.experts_per_token
    fields = model_fields_from_hf(data)
    assert fields["family"] == "mistral"  # the label: Mixtral is Mistral with experts
    assert dataclasses.replace(cfg, **{**fields, "family": cfg.family}) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(moe_shared_expert=True), "moe_shared_expert=True"),
        (dict(ffn="geglu"), "ffn='geglu'"),
        (dict(qkv_bias=True, attn_out_bias=True), "qkv_bias=True"),
    ],
)
def test_moe_without_a_mixtral_twin_is_refused(overrides, message):
    with pytest.raises(ValueError, match=f"no mixtral equivalent: .*{message}"):
        hf_config_of(dataclasses.replace(MIXTRAL, **overrides))


def test_expert_tensors_are_the_hub_layout_transposed():
    params = _random(MIXTRAL)
    tensors = dict(hf_tensors(params, MIXTRAL))
    prefix = "model.layers.1.block_sparse_moe"
    w1 = params[("blocks", "ffn", "experts", "w1")]
    w2 = params[("blocks", "ffn", "experts", "w2")]
    router = params[("blocks", "ffn", "router", "weight")]
    np.testing.assert_array_equal(tensors[f"{prefix}.experts.2.w1.weight"], w1[1, 2].T)
    np.testing.assert_array_equal(tensors[f"{prefix}.experts.0.w2.weight"], w2[1, 0].T)
    np.testing.assert_array_equal(tensors[f"{prefix}.gate.weight"], router[1].T)
    assert tensors[f"{prefix}.experts.0.w3.weight"].shape == (20, 24)  # (f, d) like nn.Linear
    assert tensors[f"{prefix}.gate.weight"].shape == (3, 24)
    assert sum("experts" in k for k in tensors) == 2 * 3 * 3  # layers × experts × w1/w2/w3
    assert not any("mlp." in k for k in tensors)


def test_safetensors_and_checkpoint_round_trips_are_exact(tmp_path, cli):
    params = _random(MIXTRAL, seed=3)
    _write(tmp_path / "hf", MIXTRAL, params)
    assert model_config_from_hf(tmp_path / "hf", name=MIXTRAL.name) == MIXTRAL
    back = read_params(tmp_path / "hf", MIXTRAL)
    for path, value in params.items():
        np.testing.assert_array_equal(back[path], value)
    result = cli("convert", "from-hf", tmp_path / "hf", "--out", tmp_path / "ck", "--json")
    assert result.exit_code == 0, result.output
    assert last_json(result.output)["n_params"] == sum(v.size for v in params.values())
    result = cli("convert", "to-hf", tmp_path / "ck", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    again = read_params(tmp_path / "out", MIXTRAL)
    for path, value in params.items():
        np.testing.assert_array_equal(again[path], value)
    loaded = convert.flatten(convert.load_params(tmp_path / "ck"))
    np.testing.assert_array_equal(
        np.asarray(loaded[("blocks", "ffn", "experts", "w3")]),
        params[("blocks", "ffn", "experts", "w3")],
    )
