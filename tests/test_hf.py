"""Hugging Face configs, the key mapping, safetensors I/O and converted checkpoints, without torch.

The layouts checked here (tensor names, shapes, what is transposed) are those transformers 5.24
writes for GPT2LMHeadModel / LlamaForCausalLM / MistralForCausalLM / GemmaForCausalLM
(listed by hand below from its ``save_pretrained`` output); tests/test_parity.py checks the
same mapping against transformers itself.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from helpers import DATA, last_json

from scaling import convert
from scaling.config import ModelConfig
from scaling.estimate import param_counts
from scaling.estimate.hf_config import (
    hf_config_of,
    hf_model_type,
    model_config_from_hf,
    model_fields_from_hf,
)
from scaling.hf_weights import (
    INDEX_FILE,
    SINGLE_FILE,
    hf_tensors,
    read_params,
    write_safetensors,
)
from scaling.presets import FAMILY_ARCHITECTURES, PRESETS
from scaling.roles import parameters


def small(family: str, **kw) -> ModelConfig:
    base = dict(n_layers=2, d_model=24, n_heads=4, d_ff=40, vocab_size=64, max_seq_len=32)
    return ModelConfig(name=f"small-{family}", family=family,
                       **{**base, **FAMILY_ARCHITECTURES[family], **kw})  # fmt: skip


SMALL = {
    "gpt2": small("gpt2"),
    "llama": small("llama", n_kv_heads=2, tied_embeddings=False),
    "mistral": small("mistral", n_kv_heads=1, sliding_window=5, tied_embeddings=False),
    "gemma": small("gemma", head_dim=8, n_kv_heads=1),
}


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {p.path: rng.standard_normal(p.shape).astype(np.float32) for p in parameters(cfg)}


def write_hf_dir(folder, cfg: ModelConfig, params: dict, **kw) -> None:
    """A Hugging Face folder made by our own writer (transformers-free)."""
    write_safetensors(hf_tensors(params, cfg), folder, **kw)
    (folder / "config.json").write_text(json.dumps(hf_config_of(cfg)))


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("file", "preset"),
    [
        ("gpt2-small.json", "gpt2"),
        ("llama-2-7b.json", "llama-2-7b"),
        ("mistral-7b.json", "mistral-7b"),
        ("gemma-2b.json", "gemma-2b"),
        ("mixtral-8x7b.json", "mixtral-8x7b"),
    ],
)
def test_published_configs_read_as_the_presets(file, preset):
    """Hub config.json files (older dialect: rope_theta, hidden_act "gelu" for Gemma) read
    field for field as the presets, so counts equal Hugging Face's."""
    cfg = model_config_from_hf(DATA / file)
    assert dataclasses.replace(cfg, name=preset) == PRESETS[preset]


def test_llama31_rope_scaling_is_read():
    cfg = model_config_from_hf(DATA / "llama-3.1-8b.json")
    assert (cfg.rope_theta, cfg.rope_scaling_factor, cfg.rope_original_context) == (
        500_000.0,
        8.0,
        8192,
    )
    assert (cfg.rope_low_freq_factor, cfg.rope_high_freq_factor) == (1.0, 4.0)
    same_shapes = dataclasses.replace(PRESETS["llama-3-8b"], max_seq_len=cfg.max_seq_len)
    assert [p.shape for p in parameters(cfg)] == [p.shape for p in parameters(same_shapes)]


# Mixture-of-experts presets (model type mixtral, family label mistral): tests/test_moe_hf.py
PUBLISHED_DENSE = [n for n in PRESETS if ("-" in n or n == "gpt2") and not PRESETS[n].moe]


@pytest.mark.parametrize("name", PUBLISHED_DENSE + list(SMALL))
def test_config_round_trip(name):
    cfg = PRESETS.get(name) or SMALL[name]
    fields = model_fields_from_hf(hf_config_of(cfg))
    assert dataclasses.replace(cfg, **fields) == cfg
    assert hf_config_of(cfg)["model_type"] == cfg.family


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model_type": "t5"}, "'model_type' = 't5' is not supported; supported: llama"),
        ({"model_type": "mixtral"}, "'num_local_experts' is missing"),
        (
            {"num_local_experts": 8},
            "'num_local_experts' = 8: mixture-of-experts models are "
            "supported as model_type 'mixtral' only",
        ),
        (
            {"model_type": "mixtral", "num_local_experts": 4, "router_jitter_noise": 0.1},
            "'router_jitter_noise' = 0.1 is not supported",
        ),
        ({"hidden_size": "big"}, "'hidden_size' must be a positive integer, got 'big'"),
        ({"num_hidden_layers": 0}, "'num_hidden_layers' must be a positive integer, got 0"),
        ({"tie_word_embeddings": "yes"}, "'tie_word_embeddings' must be true or false"),
        ({"hidden_act": "gelu"}, "'hidden_act' = 'gelu' is not supported; supported: silu"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type' = 'yarn'"),
        ({"partial_rotary_factor": 0.5}, "'partial_rotary_factor' = 0.5 is not supported"),
        ({"rms_norm_eps": -1}, "'rms_norm_eps' must be a positive number"),
    ],
)
def test_unsupported_fields_name_the_field(data, message):
    base = json.loads((DATA / "llama-2-7b.json").read_text())
    with pytest.raises(ValueError, match=message):
        model_fields_from_hf({**base, **data})


def test_gpt2_options_we_do_not_model_are_refused():
    base = json.loads((DATA / "gpt2-small.json").read_text())
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        model_fields_from_hf({**base, "scale_attn_by_inverse_layer_idx": True})
    with pytest.raises(ValueError, match="'activation_function' = 'swish' is not supported"):
        model_fields_from_hf({**base, "activation_function": "swish"})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(positions="sinusoidal"), "no llama/mistral/gemma equivalent: positions"),
        (dict(ffn="relu", d_ff=40), "ffn='relu'"),
        (dict(head_bias=True), "head_bias=True"),
        (dict(qkv_bias=True), "qkv_bias and attn_out_bias differ"),
        (dict(norm_unit_offset=True), "norm_unit_offset and embed_scale differ"),
        (dict(attn_softcap=30.0), "attn_softcap=30.0"),
    ],
)
def test_architectures_without_a_hugging_face_twin_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        hf_model_type(dataclasses.replace(SMALL["llama"], **fields))
    with pytest.raises(ValueError, match="no gpt2 equivalent: n_kv_heads=2"):
        hf_model_type(dataclasses.replace(SMALL["gpt2"], n_kv_heads=2))


# ----------------------------------------------------------------------------- key mapping

GPT2_KEYS = {
    "transformer.wte.weight": (64, 24),
    "transformer.wpe.weight": (32, 24),
    "transformer.ln_f.weight": (24,),
    "transformer.ln_f.bias": (24,),
    **{
        f"transformer.h.{i}.{name}": shape
        for i in range(2)
        for name, shape in {
            "ln_1.weight": (24,),
            "ln_1.bias": (24,),
            "ln_2.weight": (24,),
            "ln_2.bias": (24,),
            "attn.c_attn.weight": (24, 72),
            "attn.c_attn.bias": (72,),
            "attn.c_proj.weight": (24, 24),
            "attn.c_proj.bias": (24,),
            "mlp.c_fc.weight": (24, 40),
            "mlp.c_fc.bias": (40,),
            "mlp.c_proj.weight": (40, 24),
            "mlp.c_proj.bias": (24,),
        }.items()  # fmt: skip
    },
}
LLAMA_KEYS = {  # GQA 4 heads / 2 kv heads of 6, untied
    "model.embed_tokens.weight": (64, 24),
    "model.norm.weight": (24,),
    "lm_head.weight": (64, 24),
    **{
        f"model.layers.{i}.{name}": shape
        for i in range(2)
        for name, shape in {
            "input_layernorm.weight": (24,),
            "post_attention_layernorm.weight": (24,),
            "self_attn.q_proj.weight": (24, 24),
            "self_attn.k_proj.weight": (12, 24),
            "self_attn.v_proj.weight": (12, 24),
            "self_attn.o_proj.weight": (24, 24),
            "mlp.gate_proj.weight": (40, 24),
            "mlp.up_proj.weight": (40, 24),
            "mlp.down_proj.weight": (24, 40),
        }.items()  # fmt: skip
    },
}


@pytest.mark.parametrize(("family", "keys"), [("gpt2", GPT2_KEYS), ("llama", LLAMA_KEYS)])
def test_exported_tensor_names_and_shapes(family, keys):
    cfg = SMALL[family]
    tensors = dict(hf_tensors(random_params(cfg), cfg))
    assert {k: v.shape for k, v in tensors.items()} == keys


def test_layouts_transpose_linears_and_split_gpt2_qkv():
    llama = SMALL["llama"]
    params = random_params(llama)
    tensors = dict(hf_tensors(params, llama))
    q = params[("blocks", "attn", "q", "weight")]
    np.testing.assert_array_equal(tensors["model.layers.1.self_attn.q_proj.weight"], q[1].T)
    np.testing.assert_array_equal(
        tensors["model.layers.0.mlp.gate_proj.weight"],
        params[("blocks", "ffn", "w1", "weight")][0].T,
    )
    np.testing.assert_array_equal(tensors["lm_head.weight"], params[("head", "weight")].T)
    gpt2 = SMALL["gpt2"]
    params = random_params(gpt2)
    c_attn = dict(hf_tensors(params, gpt2))["transformer.h.1.attn.c_attn.weight"]
    for j, name in enumerate("qkv"):  # Conv1D keeps (in, out); q, k, v side by side
        np.testing.assert_array_equal(
            c_attn[:, 24 * j : 24 * (j + 1)], params[("blocks", "attn", name, "weight")][1]
        )


@pytest.mark.parametrize("family", list(SMALL))
@pytest.mark.parametrize("shard_bytes", [2**30, 4000])
def test_safetensors_round_trip_is_exact(tmp_path, family, shard_bytes):
    cfg = SMALL[family]
    params = random_params(cfg, seed=1)
    write_hf_dir(tmp_path, cfg, params, max_shard_bytes=shard_bytes)
    sharded = shard_bytes < 2**30
    assert (tmp_path / INDEX_FILE).is_file() == sharded
    assert (tmp_path / SINGLE_FILE).is_file() == (not sharded)
    assert model_config_from_hf(tmp_path, name=cfg.name) == cfg
    back = read_params(tmp_path, cfg)
    assert set(back) == set(params)
    for path, value in params.items():
        np.testing.assert_array_equal(back[path], value)
    bf16 = read_params(tmp_path, cfg, dtype="bfloat16")  # one rounding to 8 mantissa bits
    for path, value in params.items():
        np.testing.assert_allclose(bf16[path].astype(np.float32), value, rtol=2**-8)


def test_read_refuses_missing_unexpected_and_misshaped_tensors(tmp_path):
    from safetensors.numpy import save_file

    cfg = SMALL["llama"]
    tensors = dict(hf_tensors(random_params(cfg), cfg))
    (tmp_path / "config.json").write_text(json.dumps(hf_config_of(cfg)))

    def attempt(replaced: dict, message: str) -> None:
        save_file(replaced, str(tmp_path / SINGLE_FILE))
        with pytest.raises(ValueError, match=message):
            read_params(tmp_path, cfg)

    attempt({k: v for k, v in tensors.items() if "layers.1.mlp.up" not in k},
            r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]")  # fmt: skip
    attempt({**tensors, "model.layers.0.self_attn.q_norm.weight": np.ones(6, np.float32)},
            "unexpected tensor 'model.layers.0.self_attn.q_norm.weight'")  # fmt: skip
    attempt({**tensors, "model.norm.weight": np.ones(23, np.float32)},
            r"'model.norm.weight' has shape \[23\]; final_norm/weight needs \[24\]")  # fmt: skip
    # buffers and a tied model's duplicate head are no parameters: ignored
    tied = dataclasses.replace(cfg, tied_embeddings=True)
    tensors = dict(hf_tensors(random_params(tied), tied))
    save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"],
               "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(3, np.float32)},
              str(tmp_path / SINGLE_FILE))  # fmt: skip
    assert len(read_params(tmp_path, tied)) == len(parameters(tied))


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("family", ["gpt2", "gemma"])
def test_checkpoint_round_trip_is_exact(tmp_path, cli, family):
    cfg = SMALL[family]
    params = random_params(cfg, seed=2)
    hf_dir = tmp_path / "hf"
    write_hf_dir(hf_dir, cfg, params)
    result = cli("convert", "from-hf", hf_dir, "--out", tmp_path / "ck", "--json")
    assert result.exit_code == 0, result.output
    summary = last_json(result.output)
    assert summary["n_params"] == sum(v.size for v in params.values())
    assert summary["peak_rss_bytes"] > 0 and summary["seconds"] > 0
    stored = convert.load_model_config(tmp_path / "ck")
    assert stored == dataclasses.replace(cfg, name="hf")
    loaded = convert.flatten(convert.load_params(tmp_path / "ck"))
    for path, value in params.items():
        np.testing.assert_array_equal(np.asarray(loaded[path]), value)
    result = cli("convert", "to-hf", tmp_path / "ck", "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    again = read_params(tmp_path / "out", cfg)
    for path, value in params.items():
        np.testing.assert_array_equal(again[path], value)
    # a second conversion into the same directory is refused, nothing overwritten
    result = cli("convert", "from-hf", hf_dir, "--out", tmp_path / "ck")
    assert result.exit_code == 2 and "is not empty" in result.output


def test_convert_errors_are_one_line(tmp_path, cli):
    result = cli("convert", "from-hf", tmp_path, "--out", tmp_path / "ck")
    assert result.exit_code == 2 and "holds no config.json" in result.output
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    result = cli("convert", "from-hf", tmp_path, "--out", tmp_path / "ck")
    assert result.exit_code == 2 and "'t5' is not supported" in result.output
    result = cli("convert", "to-hf", tmp_path / "nothing", "--out", tmp_path / "hf")
    assert result.exit_code == 2 and "not found" in result.output
    result = cli("convert", "from-hf", "--hf-repo", "org/name", "--out", tmp_path / "ck")
    assert result.exit_code == 2
    assert "hub" in result.output or "huggingface_hub" in result.output


def test_validate_without_transformers_is_a_clear_error(tmp_path, cli, monkeypatch):
    import sys

    cfg = SMALL["llama"]
    write_hf_dir(tmp_path, cfg, random_params(cfg))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if absent
    result = cli("validate", tmp_path)
    assert result.exit_code == 2
    assert "needs torch and transformers" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "modes", [("none", "fsdp_tp"), pytest.param(("fsdp", "tp"), marks=pytest.mark.slow)]
)
def test_train_from_imported_weights_in_any_mode(tmp_path, cli, modes):
    """``train --init``: the step-0 loss is that of the imported weights (computed here with
    the model on the same first batch), the same in every sharding mode, and not that of a
    random init."""
    import jax.numpy as jnp

    from scaling.data import batch_dataset
    from scaling.train import cross_entropy
    from scaling.validate import model_from_params

    # tp over 8 devices: heads, FFN width and vocabulary divisible by 8
    cfg = dataclasses.replace(SMALL["llama"], d_model=32, n_heads=8, n_kv_heads=None)
    params = random_params(cfg, seed=3)
    for value in params.values():
        value *= 0.3
    write_hf_dir(tmp_path / "hf", cfg, params)
    assert cli("convert", "from-hf", tmp_path / "hf", "--out", tmp_path / "ck").exit_code == 0
    batch = np.asarray(batch_dataset("synthetic", vocab_size=64, batch=8, seq=16, seed=0)[0])
    model = model_from_params(cfg, convert.nest(params))
    expected = float(cross_entropy(model(jnp.asarray(batch[:, :-1])), jnp.asarray(batch[:, 1:])))
    losses = {}
    for mode in modes:
        result = cli("train", "--init", tmp_path / "ck", "--steps", 1, "--batch", 8, "--seq",
                     16, "--mode", mode, "--json")  # fmt: skip
        assert result.exit_code == 0, result.output
        losses[mode] = last_json(result.output)["losses"][0]
    for mode, loss in losses.items():
        assert loss == pytest.approx(expected, rel=1e-5), mode
    random = cli("train", "--model", tmp_path / "hf", "--steps", 1, "--batch", 8, "--seq", 16,
                 "--json")  # fmt: skip
    assert random.exit_code == 0, random.output
    assert abs(last_json(random.output)["losses"][0] - expected) > 1e-3
    mismatch = cli("train", "--init", tmp_path / "ck", "--size", "tiny", "--steps", 1)
    assert mismatch.exit_code == 2 and "does not fit tiny" in mismatch.output


def test_sweep_on_a_hugging_face_config(tmp_path, cli):
    """A config.json as the model of a sharded sweep (the issue's acceptance run)."""
    path = DATA / "small-llama" / "config.json"
    result = cli("sweep", "fsdp_tp", "--model", path, "--steps", 3, "--batch", 8, "--seq", 32,
                 "--out", tmp_path, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = last_json(result.output)
    assert [r["status"] for r in rows] == ["ok"] and rows[0]["size"] == "small-llama"
    assert rows[0]["family"] == "llama"
    assert rows[0]["n_params"] == param_counts(convert.model_config_from_hf(path)).total
    assert json.loads(rows[0]["settings_json"])["model"] == str(path)
