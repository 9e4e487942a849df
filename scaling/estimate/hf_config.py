"""Hugging Face ``config.json`` ↔ ``ModelConfig`` for the model types gpt2, llama, mistral,
gemma (v1) and mixtral (mistral's blocks with a mixture of experts), field for field: the
architecture read here is the one ``transformers`` builds, so parameter counts equal Hugging
Face's and imported weights reproduce its logits.

Pure Python (json); never imports jax or transformers. A model type, field or value the shared
model cannot reproduce (T5, experts, ALiBi-style rotary variants, a bidirectional Gemma, a
non-numeric width...) raises ``ValueError`` naming the field and what is supported: better no
number than a wrong one.

Both config dialects are read: ``rope_parameters`` (transformers ≥ 5) and the older
``rope_theta`` / ``rope_scaling`` keys. ``hf_config_of`` writes the transformers-5 form plus
``rope_theta`` for older readers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scaling.config import ModelConfig

HF_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "gemma", "gpt2", "mixtral")
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "gemma": "GemmaForCausalLM",
    "mixtral": "MixtralForCausalLM",
}
# The family label (``ModelConfig.family``) of each model type; mixtral is mistral with experts.
_FAMILY = {"mixtral": "mistral"}
# transformers' MixtralConfig defaults where config.json may omit a key
_MIXTRAL_DEFAULTS = {"num_experts_per_tok": 2, "router_aux_loss_coef": 0.001}
# Defaults of the transformers config classes where config.json may omit a key.
_TIED_DEFAULT = {"llama": False, "mistral": False, "gemma": True, "gpt2": True, "mixtral": False}
_EPS_DEFAULT = {"llama": 1e-6, "mistral": 1e-6, "gemma": 1e-6, "gpt2": 1e-5, "mixtral": 1e-5}
_ROPE_THETA_DEFAULT = 10_000.0
# hidden_act / activation_function → (our FFN kind when gated, when not gated)
_ACTIVATIONS = {
    "silu": ("swiglu", None),
    "swish": ("swiglu", None),
    "gelu_pytorch_tanh": ("geglu", "gelu_tanh"),
    "gelu_new": ("geglu", "gelu_tanh"),
    "gelu": (None, "gelu"),
    "relu": (None, "relu"),
}
# Keys announcing a mixture of experts in a model type other than mixtral: not supported.
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _read(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"cannot read a Hugging Face config from {str(p)!r}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{str(p)!r} is not a Hugging Face config (expected a JSON object)")
    return data


def _default_name(path: str | Path) -> str:
    p = Path(path)
    if p.is_dir():
        return p.resolve().name
    return p.resolve().parent.name if p.name == "config.json" else p.stem


def _shown(value: Any) -> str:
    """A JSON value and its kind, e.g. ``'4096x' (a string)``."""
    kinds = {str: "a string", dict: "an object", list: "a list", bool: "a boolean"}
    kind = kinds.get(type(value))
    return f"{value!r} ({kind})" if kind else repr(value)


class _Fields:
    """Typed access to a config dict; every error names the field."""

    def __init__(self, data: dict, source: str):
        self.data, self.source = data, source

    def error(self, key: str, message: str) -> ValueError:
        return ValueError(f"{self.source}: field {key!r} {message}")

    def get(self, *keys: str, default: Any = None) -> tuple[str, Any]:
        for key in keys:
            if self.data.get(key) is not None:
                return key, self.data[key]
        return keys[0], default

    def int(self, *keys: str, default: int | None = None, required: bool = True) -> int | None:
        key, value = self.get(*keys, default=default)
        if value is None:
            if required:
                raise self.error(" / ".join(keys), "is missing; it must be a positive integer")
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 4096.0: some exporters write integers as floats
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.error(key, f"must be a positive integer, got {_shown(value)}")
        return value

    def float(self, *keys: str, default: float) -> float:
        key, value = self.get(*keys, default=default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.error(key, f"must be a positive number, got {_shown(value)}")
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        value = default if value is None else value
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_shown(value)}")
        return value

    def require(self, key: str, expected: Any, why: str) -> None:
        value = self.data.get(key)
        if value is not None and value != expected:
            raise self.error(key, f"= {value!r} is not supported ({why}); supported: {expected!r}")


def model_config_from_hf(path: str | Path, *, name: str | None = None, **overrides) -> ModelConfig:
    """A ``ModelConfig`` from a Hugging Face ``config.json`` (a file, or a folder holding one).

    ``family`` becomes the model type (gpt2, llama, mistral, gemma); ``name`` defaults to the
    folder's name (or the file's stem); ``overrides`` are further ModelConfig fields (e.g.
    ``dtype="bfloat16"``). Raises ``ValueError`` for an unreadable file, an unsupported model
    type, experts, or a field value the shared model does not reproduce, naming the field.
    """
    data = _read(path)
    fields = model_fields_from_hf(data, source=str(path))
    fields["name"] = name or _default_name(path)
    fields.update(overrides)
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err


def model_fields_from_hf(data: dict, *, source: str = "config.json") -> dict[str, Any]:
    """The ModelConfig fields (all but ``name``) of a parsed ``config.json``."""
    model_type = data.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(
            f"{source}: field 'model_type' = {model_type!r} is not supported; supported: "
            f"{', '.join(HF_MODEL_TYPES)}"
        )
    f = _Fields(data, source)
    for key in _EXPERT_KEYS:
        if data.get(key) and model_type != "mixtral":
            raise f.error(key, f"= {data[key]!r}: mixture-of-experts models are supported as "
                          "model_type 'mixtral' only")  # fmt: skip
    common = {
        "family": _FAMILY.get(model_type, model_type),
        "vocab_size": f.int("vocab_size"),
        "tied_embeddings": f.bool("tie_word_embeddings", _TIED_DEFAULT[model_type]),
    }
    specific = _gpt2_fields(f) if model_type == "gpt2" else _llama_like_fields(f, model_type)
    return {**common, **specific}


def _gpt2_fields(f: _Fields) -> dict[str, Any]:
    f.require("scale_attn_weights", True, "scores are always scaled by 1/√d_head")
    f.require("scale_attn_by_inverse_layer_idx", False, "no per-layer score scaling")
    f.require("add_cross_attention", False, "decoder-only")
    d_model = f.int("n_embd", "hidden_size")
    act_key, act = f.get("activation_function", default="gelu_new")
    ffn = _ACTIVATIONS.get(act, (None, None))[1]
    if ffn is None:
        supported = [k for k, v in _ACTIVATIONS.items() if v[1]]
        raise f.error(act_key, f"= {act!r} is not supported; supported: {', '.join(supported)}")
    return {
        "n_layers": f.int("n_layer", "num_hidden_layers"),
        "d_model": d_model,
        "n_heads": f.int("n_head", "num_attention_heads"),
        "d_ff": f.int("n_inner", default=4 * d_model),
        "max_seq_len": f.int("n_positions", "max_position_embeddings"),
        "norm": "layer",
        "norm_bias": True,
        "norm_eps": f.float("layer_norm_epsilon", default=_EPS_DEFAULT["gpt2"]),
        "positions": "learned",
        "ffn": ffn,
        "qkv_bias": True,
        "attn_out_bias": True,
        "ffn_bias": True,
    }


def _llama_like_fields(f: _Fields, model_type: str) -> dict[str, Any]:
    d_model = f.int("hidden_size")
    n_heads = f.int("num_attention_heads")
    kv = f.int("num_key_value_heads", default=n_heads)
    head_dim = f.int("head_dim", default=None, required=False)
    default_act = "gelu_pytorch_tanh" if model_type == "gemma" else "silu"
    act_key, act = f.get("hidden_activation", "hidden_act", default=default_act)
    if model_type == "gemma" and act == "gelu":
        act = "gelu_pytorch_tanh"  # transformers' GemmaConfig reads legacy "gelu" as tanh-GELU
    ffn = _ACTIVATIONS.get(act, (None, None))[0]
    if ffn is None:
        supported = [k for k, v in _ACTIVATIONS.items() if v[0]]
        raise f.error(act_key, f"= {act!r} is not supported; supported: {', '.join(supported)}")
    attention_bias = f.bool("attention_bias", False)
    fields: dict[str, Any] = {
        "n_layers": f.int("num_hidden_layers"),
        "d_model": d_model,
        "n_heads": n_heads,
        "n_kv_heads": None if kv == n_heads else kv,
        "head_dim": None if head_dim is None or head_dim * n_heads == d_model else head_dim,
        "d_ff": f.int("intermediate_size"),
        "max_seq_len": f.int("max_position_embeddings"),
        "norm": "rms",
        "norm_eps": f.float("rms_norm_eps", default=_EPS_DEFAULT[model_type]),
        "positions": "rope",
        "ffn": ffn,
        "qkv_bias": attention_bias,
        "attn_out_bias": attention_bias,
        "ffn_bias": f.bool("mlp_bias", False),
        **_rope_fields(f),
    }
    if model_type in ("mistral", "mixtral"):
        fields["sliding_window"] = f.int("sliding_window", default=None, required=False)
    if model_type == "mixtral":
        fields.update(_mixtral_fields(f))
    if model_type == "gemma":
        f.require("use_bidirectional_attention", False, "causal decoder")
        fields.update(norm_unit_offset=True, embed_scale=True)
    return fields


def _mixtral_fields(f: _Fields) -> dict[str, Any]:
    """Experts (``num_local_experts`` of width ``intermediate_size``, top
    ``num_experts_per_tok``), the load-balancing coefficient; no router noise, no biases."""
    f.require("router_jitter_noise", 0.0, "the router adds no noise")
    coef_key, coef = f.get(
        "router_aux_loss_coef", default=_MIXTRAL_DEFAULTS["router_aux_loss_coef"]
    )
    if isinstance(coef, bool) or not isinstance(coef, int | float) or coef < 0:
        raise f.error(coef_key, f"must be a number >= 0, got {_shown(coef)}")
    return {
        "n_experts": f.int("num_local_experts"),
        "experts_per_token": f.int(
            "num_experts_per_tok", default=_MIXTRAL_DEFAULTS["num_experts_per_tok"]
        ),
        "moe_aux_loss_coef": float(coef),
        "moe_dispatch": "dropless",  # transformers computes every routed token
    }


def _rope_fields(f: _Fields) -> dict[str, Any]:
    """rope_theta and Llama-3.1 scaling from ``rope_parameters`` or the legacy keys."""
    params = f.data.get("rope_parameters") or f.data.get("rope_scaling") or {}
    key = "rope_parameters" if f.data.get("rope_parameters") else "rope_scaling"
    if not isinstance(params, dict):
        raise f.error(key, f"must be an object, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", f.data.get("rope_theta")) or _ROPE_THETA_DEFAULT
    if isinstance(theta, bool) or not isinstance(theta, int | float) or theta <= 0:
        raise f.error("rope_theta", f"must be a positive number, got {theta!r}")
    partial = params.get("partial_rotary_factor", f.data.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise f.error("partial_rotary_factor", f"= {partial!r} is not supported; supported: 1.0")
    out: dict[str, Any] = {"rope_theta": float(theta)}
    if rope_type == "llama3":
        sub = _Fields(params, f"{f.source}: {key}")
        out.update(
            rope_scaling_factor=sub.float("factor", default=8.0),
            rope_low_freq_factor=sub.float("low_freq_factor", default=1.0),
            rope_high_freq_factor=sub.float("high_freq_factor", default=4.0),
            rope_original_context=sub.int(
                "original_max_position_embeddings",
                default=f.data.get("max_position_embeddings"),
            ),
        )
    elif rope_type != "default":
        raise f.error(f"{key}.rope_type", f"= {rope_type!r} is not supported; supported: "
                      "default, llama3")  # fmt: skip
    return out


# ----------------------------------------------------------------------------- ModelConfig → HF

_GPT2_FIXED = dict(
    norm="layer", norm_bias=True, norm_unit_offset=False, positions="learned", qkv_bias=True,
    attn_out_bias=True, ffn_bias=True, head_bias=False, n_kv_heads=None, head_dim=None,
    sliding_window=None, attn_softcap=None, final_softcap=None, embed_scale=False,
)  # fmt: skip
_LLAMA_FIXED = dict(
    norm="rms", norm_bias=False, positions="rope", head_bias=False, attn_softcap=None,
    final_softcap=None,
)  # fmt: skip
_HF_ACT = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh", "gelu_tanh": "gelu_new"}


def _mismatch(cfg: ModelConfig, fixed: dict[str, Any]) -> list[str]:
    return [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in fixed.items()
            if getattr(cfg, k) != v]  # fmt: skip


def hf_model_type(cfg: ModelConfig) -> str:
    """The Hugging Face model type that reproduces ``cfg`` exactly: gpt2, gemma, mistral,
    llama or (with experts) mixtral; ``ValueError`` naming the fields that no supported type
    has."""
    if cfg.moe:
        return _mixtral_type(cfg)
    if cfg.positions == "learned":
        bad = _mismatch(cfg, _GPT2_FIXED)
        if cfg.ffn not in ("gelu_tanh", "gelu", "relu"):
            bad.append(f"ffn={cfg.ffn!r} (needs gelu_tanh, gelu or relu)")
        if bad:
            raise ValueError(f"{cfg.name} has no gpt2 equivalent: {'; '.join(bad)}")
        return "gpt2"
    bad = _mismatch(cfg, _LLAMA_FIXED)
    if cfg.ffn not in ("swiglu", "geglu"):
        bad.append(f"ffn={cfg.ffn!r} (needs swiglu or geglu)")
    if cfg.qkv_bias != cfg.attn_out_bias:
        bad.append("qkv_bias and attn_out_bias differ (Hugging Face's attention_bias sets both)")
    if cfg.norm_unit_offset != cfg.embed_scale:
        bad.append("norm_unit_offset and embed_scale differ (gemma has both, llama neither)")
    if bad:
        raise ValueError(f"{cfg.name} has no llama/mistral/gemma equivalent: {'; '.join(bad)}")
    biases = cfg.qkv_bias or cfg.ffn_bias
    if cfg.norm_unit_offset:
        if cfg.sliding_window is not None or cfg.rope_scaled or cfg.ffn_bias:
            raise ValueError(f"{cfg.name}: gemma has no sliding window, RoPE scaling or MLP bias")
        return "gemma"
    if cfg.sliding_window is not None and biases:
        raise ValueError(f"{cfg.name}: a sliding window (mistral) comes without biases")
    if cfg.sliding_window is not None or (cfg.family == "mistral" and not biases):
        return "mistral"
    return "llama"


def _mixtral_type(cfg: ModelConfig) -> str:
    fixed = {
        **_LLAMA_FIXED, "ffn": "swiglu", "qkv_bias": False, "attn_out_bias": False,
        "norm_unit_offset": False, "embed_scale": False, "moe_shared_expert": False,
    }  # fmt: skip
    bad = _mismatch(cfg, fixed)
    if cfg.rope_scaled:
        bad.append("rope_scaling_factor != 1 (Mixtral has no RoPE scaling)")
    if bad:
        raise ValueError(f"{cfg.name} has no mixtral equivalent: {'; '.join(bad)}")
    return "mixtral"


def hf_config_of(cfg: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` of the Hugging Face model equal to ``cfg`` (``hf_model_type``)."""
    model_type = hf_model_type(cfg)
    out: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [ARCHITECTURES[model_type]],
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tied_embeddings,
        "dtype": "float32",
    }
    if model_type == "gpt2":
        out.update(
            n_layer=cfg.n_layers, n_embd=cfg.d_model, n_head=cfg.n_heads, n_inner=cfg.d_ff,
            n_positions=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
            activation_function=_HF_ACT.get(cfg.ffn, cfg.ffn), resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0,
        )  # fmt: skip
        return out
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaled:
        rope.update(
            rope_type="llama3", factor=cfg.rope_scaling_factor,
            low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
            original_max_position_embeddings=cfg.rope_original_context,
        )  # fmt: skip
    out.update(
        num_hidden_layers=cfg.n_layers, hidden_size=cfg.d_model,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.d_head, intermediate_size=cfg.d_ff,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        hidden_act=_HF_ACT[cfg.ffn], rope_parameters=rope, rope_theta=cfg.rope_theta,
        attention_bias=cfg.qkv_bias, attention_dropout=0.0,
    )  # fmt: skip
    if model_type in ("llama", "mistral"):
        out["mlp_bias"] = cfg.ffn_bias
    if model_type in ("mistral", "mixtral"):
        out["sliding_window"] = cfg.sliding_window
        del out["attention_bias"]  # Mistral's attention has no bias option
    if model_type == "mixtral":
        out.update(
            num_local_experts=cfg.n_experts, num_experts_per_tok=cfg.experts_per_token,
            router_aux_loss_coef=cfg.moe_aux_loss_coef, router_jitter_noise=0.0,
            output_router_logits=False,
        )  # fmt: skip
    return out
