"""Model presets as data: the CPU ladder, the GPT-3 ladder and published architectures (GPT-2,
Llama, OpenLLaMA, Mistral, Gemma), the named architecture families, and the overrides sweeps
and the CLI apply to them (width, family, depth, dtype, remat, muP). Never imports jax."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from scaling.config import FAMILIES, MUP_KNOBS, ModelConfig, RunConfig, parse_mesh
from scaling.prepared import is_prepared, open_prepared, padded_vocab


def swiglu_hidden(d_model: int, multiple: int = 64) -> int:
    """SwiGLU width with the parameter count of a 4·d_model GELU MLP: 8/3·d, rounded up."""
    return multiple * math.ceil(8 * d_model / 3 / multiple)


def ffn_width(d_model: int, gated: bool) -> int:
    """The FFN width the presets use at ``d_model``: 4·d for a two-matrix FFN (GPT-2's MLP),
    ≈ 8/3·d rounded up to 64 for a gated one (SwiGLU, GeGLU), so both hold the same FFN
    parameters."""
    return swiglu_hidden(d_model) if gated else 4 * d_model


GPT3_VOCAB = 50304  # GPT-2's 50257 padded to a multiple of 64 (nanoGPT's choice)
GPT3_CONTEXT = 2048
CPU_VOCAB = 2048

# The architecture fields of each named family (``ModelConfig.family`` is this label). Widths,
# depth, vocabulary, context, tying and eps belong to a preset, not to a family.
_NO_BIASES = dict(qkv_bias=False, attn_out_bias=False, ffn_bias=False, head_bias=False)
_LLAMA = dict(
    norm="rms", norm_bias=False, norm_unit_offset=False, positions="rope", ffn="swiglu",
    sliding_window=None, attn_softcap=None, final_softcap=None, embed_scale=False, **_NO_BIASES,
)  # fmt: skip
FAMILY_ARCHITECTURES: dict[str, dict[str, object]] = {
    "llama": _LLAMA,
    # GPT-2 (Radford et al. 2019; Hugging Face GPT2LMHeadModel): LayerNorm with bias, learned
    # positions, tanh-GELU MLP, biases on every attention and MLP matrix, no head bias.
    "gpt2": {
        **_LLAMA,
        "norm": "layer",
        "norm_bias": True,
        "positions": "learned",
        "ffn": "gelu_tanh",
        "qkv_bias": True,
        "attn_out_bias": True,
        "ffn_bias": True,
    },  # fmt: skip
    # Mistral 7B v0.1 (Jiang et al. 2023): Llama's blocks with a 4096-token sliding window.
    "mistral": {**_LLAMA, "sliding_window": 4096},
    # Gemma (v1; Gemma Team 2024): (1 + w) RMSNorm, tanh-GeGLU, embeddings × √d_model.
    "gemma": {**_LLAMA, "norm_unit_offset": True, "ffn": "geglu", "embed_scale": True},
}
assert tuple(FAMILY_ARCHITECTURES) == FAMILIES


def _preset(name: str, n_layers: int, d_model: int, n_heads: int, *, gpt3: bool) -> ModelConfig:
    return ModelConfig(
        name=name,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_ff=swiglu_hidden(d_model),
        vocab_size=GPT3_VOCAB if gpt3 else CPU_VOCAB,
        max_seq_len=GPT3_CONTEXT if gpt3 else 512,
    )


def _published(name: str, family: str, **fields) -> ModelConfig:
    return ModelConfig(name=name, family=family, **FAMILY_ARCHITECTURES[family], **fields)


def _gpt2(name: str, n_layers: int, d_model: int, n_heads: int) -> ModelConfig:
    """GPT-2 as released (openai-community/gpt2*): 50257 tokens, 1024 positions, tied head."""
    return _published(
        name, "gpt2", n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_ff=4 * d_model,
        vocab_size=50257, max_seq_len=1024, tied_embeddings=True,
    )  # fmt: skip


# Published architectures, field by field from their Hugging Face config.json; each n_params
# equals the Hugging Face model's parameter count (tests/test_presets.py).
PUBLISHED: tuple[ModelConfig, ...] = (
    _gpt2("gpt2", 12, 768, 12),
    _gpt2("gpt2-medium", 24, 1024, 16),
    _gpt2("gpt2-large", 36, 1280, 20),
    _gpt2("gpt2-xl", 48, 1600, 25),
    # meta-llama/Llama-2-7b-hf
    _published("llama-2-7b", "llama", n_layers=32, d_model=4096, n_heads=32, d_ff=11008,
               vocab_size=32000, max_seq_len=4096, tied_embeddings=False),
    # meta-llama/Meta-Llama-3-8B (GQA 32/8, rope_theta 500000; no rope_scaling, unlike 3.1)
    _published("llama-3-8b", "llama", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8,
               d_ff=14336, vocab_size=128256, max_seq_len=8192, tied_embeddings=False,
               rope_theta=500_000.0),
    # openlm-research/open_llama_3b
    _published("open-llama-3b", "llama", n_layers=26, d_model=3200, n_heads=32, d_ff=8640,
               vocab_size=32000, max_seq_len=2048, tied_embeddings=False, norm_eps=1e-6),
    # mistralai/Mistral-7B-v0.1 (GQA 32/8, sliding window 4096)
    _published("mistral-7b", "mistral", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8,
               d_ff=14336, vocab_size=32000, max_seq_len=32768, tied_embeddings=False),
    # google/gemma-2b (MQA, head_dim 256) and google/gemma-7b (16 heads of 256 ≠ d_model)
    _published("gemma-2b", "gemma", n_layers=18, d_model=2048, n_heads=8, n_kv_heads=1,
               d_ff=16384, vocab_size=256000, max_seq_len=8192, tied_embeddings=True,
               norm_eps=1e-6),  # 8 heads of 2048 / 8 = 256
    _published("gemma-7b", "gemma", n_layers=28, d_model=3072, n_heads=16, head_dim=256,
               d_ff=24576, vocab_size=256000, max_seq_len=8192, tied_embeddings=True,
               norm_eps=1e-6),
)  # fmt: skip

# mistralai/Mixtral-8x7B-v0.1: Mistral's blocks without the sliding window (config.json has
# "sliding_window": null), 8 experts of width 14336, top-2; 46,702,792,704 parameters.
MIXTRAL_8X7B = dataclasses.replace(
    _published("mixtral-8x7b", "mistral", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8,
               d_ff=14336, vocab_size=32000, max_seq_len=32768, tied_embeddings=False,
               rope_theta=1e6, n_experts=8, experts_per_token=2, moe_aux_loss_coef=0.02),
    sliding_window=None,
)  # fmt: skip


def _moe_preset(dense: ModelConfig, name: str, n_experts: int, k: int) -> ModelConfig:
    """``dense`` with each FFN replaced by ``n_experts`` experts of width d_ff·(1/k), top-k:
    the same active FFN parameters (and FLOPs per token, plus the router's 2·d·E) as the dense
    model, n_experts/k times its FFN parameters in total."""
    return dataclasses.replace(
        dense, name=name, n_experts=n_experts, experts_per_token=k, d_ff=dense.d_ff // k
    )


# GPT-3 ladder: Brown et al. 2020, table 2.1. Two rows of the paper are inconsistent with
# d_model = n_heads·d_head and are fixed here: 1.3B uses 16 heads of 128 (paper: 24 heads),
# 13B uses d_model 5120 (paper: 5140).
PRESETS: dict[str, ModelConfig] = {
    p.name: p
    for p in (
        _preset("tiny", 4, 128, 8, gpt3=False),
        _preset("10m", 12, 256, 8, gpt3=False),
        _preset("30m", 16, 384, 8, gpt3=False),
        _preset("125m", 12, 768, 12, gpt3=True),
        _preset("350m", 24, 1024, 16, gpt3=True),
        _preset("760m", 24, 1536, 16, gpt3=True),
        _preset("1.3b", 24, 2048, 16, gpt3=True),
        _preset("2.7b", 32, 2560, 32, gpt3=True),
        _preset("6.7b", 32, 4096, 32, gpt3=True),
        _preset("13b", 40, 5120, 40, gpt3=True),
        _preset("175b", 96, 12288, 96, gpt3=True),
        *PUBLISHED,
    )
}
# The CPU MoE ladder: tiny and 10m at matched active FLOPs, 8 experts, top-2.
PRESETS["tiny-moe"] = _moe_preset(PRESETS["tiny"], "tiny-moe", 8, 2)
PRESETS["10m-moe"] = _moe_preset(PRESETS["10m"], "10m-moe", 8, 2)
PRESETS["mixtral-8x7b"] = MIXTRAL_8X7B


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown size {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


def load_model(path: str | Path, **overrides) -> ModelConfig:
    """The architecture of a Hugging Face ``config.json`` (a file, or a folder holding one)."""
    from scaling.estimate.hf_config import model_config_from_hf

    return model_config_from_hf(path, **overrides)


def with_width(cfg: ModelConfig, width: int) -> ModelConfig:
    """The same depth and head width at another d_model (heads = width / d_head): the width
    axis of muP studies."""
    if width <= 0 or width % cfg.d_head:
        raise ValueError(f"width {width} must be a positive multiple of d_head={cfg.d_head}")
    return dataclasses.replace(
        cfg,
        name=f"{cfg.name}@{width}",
        d_model=width,
        n_heads=width // cfg.d_head,
        n_kv_heads=None,
        head_dim=None,
        d_ff=ffn_width(width, cfg.ffn_gated),
    )


def with_family(cfg: ModelConfig, family: str) -> ModelConfig:
    """The same widths with another family's architecture fields (``FAMILY_ARCHITECTURES``).
    A two-matrix FFN gets 4·d_model, a gated one ≈ 8/3·d_model, when the kind changes."""
    if family not in FAMILY_ARCHITECTURES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    if family == cfg.family:
        return cfg
    changed = dataclasses.replace(cfg, family=family, **FAMILY_ARCHITECTURES[family])
    if changed.ffn_gated != cfg.ffn_gated:
        changed = dataclasses.replace(changed, d_ff=ffn_width(cfg.d_model, changed.ffn_gated))
    return changed


def build_run(
    size: str | None = "tiny",
    *,
    model: str | Path | ModelConfig | None = None,
    family: str | None = None,
    dtype: str | None = None,
    remat: str | None = None,
    attention: str | None = None,
    mup: bool = False,
    mesh: str | tuple[int, int] | None = None,
    width: int | None = None,
    tied: bool | None = None,
    layers: int | None = None,
    mup_knobs: dict[str, object] | None = None,
    **run_fields,
) -> RunConfig:
    """A RunConfig from a preset name, or ``model`` (a Hugging Face config.json, or a
    ModelConfig), plus overrides (what the CLI and sweeps call). With a prepared data
    directory the model's vocabulary is the data's (``prepared.padded_vocab``).
    ``mup_knobs``: ``config.MUP_KNOBS`` values (None entries keep the default)."""
    if isinstance(model, ModelConfig):
        cfg = model
    else:
        cfg = load_model(model) if model is not None else get_preset(size or "tiny")
    if width is not None:
        cfg = with_width(cfg, width)
    if family is not None:
        cfg = with_family(cfg, family)
    chosen = (("dtype", dtype), ("remat", remat), ("attention", attention))
    overrides = {k: v for k, v in chosen if v is not None}
    if tied is not None:
        overrides["tied_embeddings"] = bool(tied)
    if layers is not None:
        overrides.update(n_layers=layers, name=f"{cfg.name}-L{layers}")
    for key, value in (mup_knobs or {}).items():
        if key not in MUP_KNOBS:
            raise ValueError(f"unknown muP option {key!r}; valid: {', '.join(MUP_KNOBS)}")
        if value is not None:
            overrides[key] = value
    if mup:
        if tied:
            raise ValueError("muP needs an untied head; drop tied=true or use mup=false")
        overrides.update(mup=True, tied_embeddings=False)
    data = run_fields.get("data")
    if data is not None and is_prepared(data):
        # The data decides the vocabulary (padded to a multiple of 64 for tensor splits).
        overrides["vocab_size"] = padded_vocab(open_prepared(data).vocab_size)
    cfg = dataclasses.replace(cfg, **overrides)
    if isinstance(mesh, str):
        mesh = parse_mesh(mesh)
    return RunConfig(model=cfg, mesh=mesh, **run_fields)
