"""Parity with Hugging Face ``transformers``: small random models of every supported architecture,
made by transformers itself from a config (odd sizes, GQA/MQA, tied and untied heads, rope
theta and Llama-3.1 scaling, a sliding window shorter than the sequence, biases), saved,
imported and compared in float32; exported checkpoints load back in transformers.

Needs CPU ``torch`` and ``transformers`` (``uvx nox -s validate`` installs them); without them
every test here is skipped with that reason. Tolerance: max |Δ logits| ≤ 1e-4 · max |logits|
(measured: ~2e-7 to 5e-7).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import last_json

from scaling import convert
from scaling.estimate import param_counts
from scaling.estimate.hf_config import hf_config_of
from scaling.presets import PRESETS
from scaling.validate import TOLERANCE, compare_with_hf

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch", reason="parity tests need CPU torch (uvx nox -s validate)")
transformers = pytest.importorskip(
    "transformers", reason="parity tests need transformers (uvx nox -s validate)"
)

# architecture → transformers config keyword arguments (all with odd, non-square sizes)
CASES = {
    "gpt2": ("GPT2Config", dict(n_layer=3, n_embd=36, n_head=3, n_inner=52, vocab_size=97,
                                n_positions=48)),
    "gpt2-untied-relu": ("GPT2Config", dict(n_layer=2, n_embd=20, n_head=5, vocab_size=61,
                                            n_positions=40, activation_function="relu",
                                            tie_word_embeddings=False)),
    "llama-gqa": ("LlamaConfig", dict(num_hidden_layers=3, hidden_size=48, num_attention_heads=6,
                                      num_key_value_heads=2, intermediate_size=84,
                                      vocab_size=101, max_position_embeddings=64,
                                      rope_theta=500.0)),
    "llama3-scaled-tied-biases": ("LlamaConfig", dict(
        num_hidden_layers=2, hidden_size=40, num_attention_heads=5, num_key_value_heads=1,
        head_dim=12, intermediate_size=72, vocab_size=89, max_position_embeddings=64,
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
                      "rope_theta": 10000.0})),
    "mistral-window": ("MistralConfig", dict(num_hidden_layers=2, hidden_size=48,
                                             num_attention_heads=6, num_key_value_heads=3,
                                             intermediate_size=76, vocab_size=83,
                                             max_position_embeddings=64, sliding_window=7)),
    "gemma-mqa": ("GemmaConfig", dict(num_hidden_layers=2, hidden_size=48, num_attention_heads=4,
                                      num_key_value_heads=1, head_dim=16, intermediate_size=68,
                                      vocab_size=79, max_position_embeddings=64)),
    "mixtral-experts": ("MixtralConfig", dict(num_hidden_layers=2, hidden_size=48,
                                              num_attention_heads=6, num_key_value_heads=2,
                                              intermediate_size=36, vocab_size=71,
                                              max_position_embeddings=64, num_local_experts=5,
                                              num_experts_per_tok=2, sliding_window=None)),
}  # fmt: skip
SEQ = 24  # longer than the sliding window (7), shorter than every context


def randomized_hf_model(case: str):
    """A transformers model of ``case`` with every parameter random (norm gains around 1,
    biases non-zero), so no parameter's use goes unchecked."""
    config_class, kwargs = CASES[case]
    config = getattr(transformers, config_class)(**kwargs)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:  # norm gains and biases
                base = 1.0 if "norm" in name or "ln_" in name else 0.0
                if "gemma" in case and "norm" in name:
                    base = 0.0  # Gemma stores w of the gain 1 + w
                param.copy_(base + 0.2 * torch.randn_like(param))
            else:
                param.copy_(0.08 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    dirs = {}
    for case in CASES:
        model = randomized_hf_model(case)
        model.save_pretrained(root / case)
        dirs[case] = root / case
    return dirs


def hf_logits(folder, tokens: np.ndarray) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_imported_model_matches_transformers(hf_dirs, case):
    report = compare_with_hf(hf_dirs[case], batch=2, seq=SEQ)
    assert report.passed, report.to_dict()
    assert report.logits.relative <= TOLERANCE
    final = next(r for r in report.rows if r.name == "final norm")
    assert final.relative <= TOLERANCE  # the final hidden states, too
    assert all(r.relative <= TOLERANCE for r in report.rows)  # and every layer


def test_parity_check_can_fail(hf_dirs):
    """Guard: the same comparison with one layer's weights perturbed reports a mismatch, and a
    window left out (Mistral) changes the logits beyond the tolerance."""
    from scaling.hf_weights import read_params

    folder = hf_dirs["llama-gqa"]
    cfg = convert.model_config_from_hf(folder)
    params = read_params(folder, cfg)
    params[("blocks", "ffn", "w2", "weight")][1] *= 1.01
    assert not compare_with_hf(folder, params=convert.nest(params), seq=SEQ).passed
    from scaling.validate import our_outputs

    folder = hf_dirs["mistral-window"]
    cfg = convert.model_config_from_hf(folder)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, SEQ))
    windowed = our_outputs(cfg, convert.nest(read_params(folder, cfg)), tokens)["logits"]
    no_window = dataclasses.replace(cfg, sliding_window=None)
    full = our_outputs(no_window, convert.nest(read_params(folder, cfg)), tokens)["logits"]
    assert np.abs(windowed - hf_logits(folder, tokens)).max() < 1e-4 * np.abs(windowed).max()
    assert np.abs(full - windowed).max() > 1e-2 * np.abs(windowed).max()


@pytest.mark.parametrize(
    "case", ["gpt2", "llama3-scaled-tied-biases", "mistral-window", "gemma-mqa", "mixtral-experts"]
)
def test_export_loads_back_in_transformers_with_identical_logits(hf_dirs, tmp_path, cli, case):
    result = cli("convert", "from-hf", hf_dirs[case], "--out", tmp_path / "ck")
    assert result.exit_code == 0, result.output
    result = cli("convert", "to-hf", tmp_path / "ck", "--out", tmp_path / "hf", "--json")
    assert result.exit_code == 0, result.output
    tokens = np.random.default_rng(1).integers(0, 50, (2, SEQ))
    # bit-identical float32 tensors: transformers computes bit-identical logits
    np.testing.assert_array_equal(hf_logits(tmp_path / "hf", tokens),
                                  hf_logits(hf_dirs[case], tokens))  # fmt: skip
    # and the round trip to-hf → from-hf is exact
    result = cli("convert", "from-hf", tmp_path / "hf", "--out", tmp_path / "ck2")
    assert result.exit_code == 0, result.output
    first = convert.flatten(convert.load_params(tmp_path / "ck"))
    second = convert.flatten(convert.load_params(tmp_path / "ck2"))
    assert first.keys() == second.keys()
    for path in first:
        np.testing.assert_array_equal(np.asarray(first[path]), np.asarray(second[path]))


def test_validate_command(hf_dirs, cli):
    result = cli("validate", hf_dirs["gemma-mqa"], "--seq", SEQ, "--json")
    assert result.exit_code == 0, result.output
    report = last_json(result.output)
    assert report["passed"] and [r["name"] for r in report["rows"]] == [
        "embeddings", "layer 1", "final norm", "logits",
    ]  # fmt: skip
    table = cli("validate", hf_dirs["gpt2"], "--seq", SEQ)
    assert table.exit_code == 0 and "parity" in table.output and "layer 2" in table.output


@pytest.mark.parametrize("preset", [n for n in PRESETS if "-" in n or n == "gpt2"])
def test_preset_counts_equal_transformers_on_the_meta_device(preset):
    """transformers builds each published preset from ``hf_config_of`` without memory; its
    parameter count equals ours (and FACTS.md's list)."""
    cfg = PRESETS[preset]
    data = hf_config_of(cfg)
    config = transformers.AutoConfig.for_model(**data)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == param_counts(cfg).total
