"""Model presets as data: the CPU ladder and the GPT-3 ladder, plus the overrides sweeps and the
CLI apply to them (width, family, depth, dtype, remat, muP). Never imports jax."""

from __future__ import annotations

import dataclasses
import math

from scaling.config import FAMILIES, Family, ModelConfig, RunConfig, parse_mesh
from scaling.prepared import is_prepared, open_prepared, padded_vocab


def swiglu_hidden(d_model: int, multiple: int = 64) -> int:
    """SwiGLU width with the parameter count of a 4·d_model GELU MLP: 8/3·d, rounded up."""
    return multiple * math.ceil(8 * d_model / 3 / multiple)


GPT3_VOCAB = 50304  # GPT-2's 50257 padded to a multiple of 64 (nanoGPT's choice)
GPT3_CONTEXT = 2048
CPU_VOCAB = 2048


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
    )
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown size {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


def with_width(cfg: ModelConfig, width: int) -> ModelConfig:
    """The same depth and head width at another d_model (heads = width / d_head): the width
    axis of muP studies."""
    if width <= 0 or width % cfg.d_head:
        raise ValueError(f"width {width} must be a positive multiple of d_head={cfg.d_head}")
    d_ff = 4 * width if cfg.family == "gpt2" else swiglu_hidden(width)
    return dataclasses.replace(
        cfg,
        name=f"{cfg.name}@{width}",
        d_model=width,
        n_heads=width // cfg.d_head,
        n_kv_heads=None,
        head_dim=None,
        d_ff=d_ff,
    )


def with_family(cfg: ModelConfig, family: Family) -> ModelConfig:
    """The same widths in the other family (gpt2 uses a 4·d_model GELU MLP)."""
    if family == cfg.family:
        return cfg
    d_ff = 4 * cfg.d_model if family == "gpt2" else swiglu_hidden(cfg.d_model)
    return dataclasses.replace(cfg, family=family, d_ff=d_ff)


def build_run(
    size: str = "tiny",
    *,
    family: str | None = None,
    dtype: str | None = None,
    remat: str | None = None,
    mup: bool = False,
    mesh: str | tuple[int, int] | None = None,
    width: int | None = None,
    tied: bool | None = None,
    layers: int | None = None,
    **run_fields,
) -> RunConfig:
    """A RunConfig from a preset name plus overrides (what the CLI and sweeps call). With a
    prepared data directory the model's vocabulary is the data's (``prepared.padded_vocab``)."""
    model = get_preset(size)
    if width is not None:
        model = with_width(model, width)
    if family is not None:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
        model = with_family(model, family)
    overrides = {k: v for k, v in (("dtype", dtype), ("remat", remat)) if v is not None}
    if tied is not None:
        overrides["tied_embeddings"] = bool(tied)
    if layers is not None:
        overrides.update(n_layers=layers, name=f"{model.name}-L{layers}")
    if mup:
        if tied:
            raise ValueError("muP needs an untied head; drop tied=true or use mup=false")
        overrides.update(mup=True, tied_embeddings=False)
    data = run_fields.get("data")
    if data is not None and is_prepared(data):
        # The data decides the vocabulary (padded to a multiple of 64 for tensor splits).
        overrides["vocab_size"] = padded_vocab(open_prepared(data).vocab_size)
    model = dataclasses.replace(model, **overrides)
    if isinstance(mesh, str):
        mesh = parse_mesh(mesh)
    return RunConfig(model=model, mesh=mesh, **run_fields)
