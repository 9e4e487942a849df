"""Read a Hugging Face ``config.json`` into a ``ModelConfig`` (llama, mistral, gpt2, gemma).

Pure Python (json); never imports jax or transformers. The mapping keeps the parameter count of
the Hugging Face model where our model has the same parameters:

- llama, mistral: family ``llama`` (RMSNorm, RoPE, SwiGLU, no biases), the same count.
  Mistral's sliding-window attention and any ``rope_scaling`` change no parameter and are not
  modelled.
- gemma (v1): family ``llama``. Gemma's FFN is GeGLU (GELU-gated) where ours is SwiGLU: both
  have three d×f matrices, so counts and FLOPs agree, the activation function does not. Gemma's
  (1 + w) RMSNorm and √d embedding scale change no count. gemma2/gemma3 (extra norms,
  soft-capping) are not accepted.
- gpt2: family ``gpt2`` (LayerNorm, learned positions, GELU MLP, tied head). Our model has no
  attention/MLP biases, so GPT-2 small counts 124,356,864 parameters here against Hugging
  Face's 124,439,808 (the 82,944 bias scalars of 12 layers: 2304 + 768 + 3072 + 768 each).
"""

from __future__ import annotations

import json
from pathlib import Path

from scaling.config import ModelConfig

LLAMA_LIKE = ("llama", "mistral", "gemma")
HF_MODEL_TYPES: tuple[str, ...] = (*LLAMA_LIKE, "gpt2")

# Defaults of the transformers config classes where config.json may omit a key.
_TIED_DEFAULT = {"llama": False, "mistral": False, "gemma": True, "gpt2": True}
_ROPE_THETA_DEFAULT = 10_000.0


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


# Keys of mixture-of-experts configs (Mixtral, Qwen-MoE, DeepSeek, OLMoE, ...): such a model
# would be estimated as a dense one, so it is refused until the model has experts.
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _kind(value) -> str:
    names = {str: "a string", dict: "an object", list: "a list", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def _int(data: dict, source: str, key: str) -> int | None:
    """``data[key]`` as an int (None when absent); ValueError naming the field otherwise."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{source}: {key} must be an integer, got {value!r} ({_kind(value)})")
    return value


def _float(data: dict, source: str, key: str, default: float) -> float:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{source}: {key} must be a number, got {value!r} ({_kind(value)})")
    return float(value)


def _bool(data: dict, source: str, key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{source}: {key} must be true or false, got {value!r} ({_kind(value)})")
    return value


def _require(data: dict, source: str, *keys: str) -> int:
    for key in keys:
        value = _int(data, source, key)
        if value is not None:
            return value
    raise ValueError(f"{source}: missing {' / '.join(keys)}")


def _default_name(path: str | Path) -> str:
    p = Path(path)
    if p.is_dir():
        return p.name
    return p.parent.name if p.name == "config.json" else p.stem


def model_config_from_hf(path: str | Path, *, name: str | None = None, **overrides) -> ModelConfig:
    """A ``ModelConfig`` from a Hugging Face ``config.json`` (a file, or a folder holding one).

    Keys read: model_type; hidden_size / n_embd; num_hidden_layers / n_layer;
    num_attention_heads / n_head; num_key_value_heads; head_dim; intermediate_size / n_inner
    (None → 4·d for gpt2); vocab_size; max_position_embeddings / n_positions;
    tie_word_embeddings (default: tied for gpt2 and gemma, untied for llama and mistral);
    rms_norm_eps / layer_norm_epsilon; rope_theta. ``name`` defaults to the file's stem (or
    its folder's name for ``config.json``); ``overrides`` are further ModelConfig fields (e.g.
    ``dtype="bfloat16"``). Raises ``ValueError`` for an unreadable file or an unknown
    model_type, naming the valid ones.
    """
    data = _read(path)
    source = str(path)
    model_type = data.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(
            f"{source}: unknown model_type {model_type!r}; valid: {', '.join(HF_MODEL_TYPES)}"
        )
    experts = {k: data[k] for k in MOE_KEYS if data.get(k)}
    if experts:
        key, value = next(iter(experts.items()))
        raise ValueError(
            f"{source}: mixture-of-experts models are not supported yet ({key}={value!r}); "
            "the estimate would count a dense model"
        )
    d_model = _require(data, source, "hidden_size", "n_embd")
    n_heads = _require(data, source, "num_attention_heads", "n_head")
    fields: dict[str, object] = {
        "name": name or _default_name(path),
        "family": "gpt2" if model_type == "gpt2" else "llama",
        "n_layers": _require(data, source, "num_hidden_layers", "n_layer"),
        "d_model": d_model,
        "n_heads": n_heads,
        "vocab_size": _require(data, source, "vocab_size"),
        "max_seq_len": _require(data, source, "max_position_embeddings", "n_positions"),
        "tied_embeddings": _bool(data, source, "tie_word_embeddings", _TIED_DEFAULT[model_type]),
    }
    if model_type == "gpt2":
        d_ff = _int(data, source, "n_inner")
        fields["d_ff"] = d_ff if d_ff is not None else 4 * d_model
        fields["norm_eps"] = _float(data, source, "layer_norm_epsilon", 1e-5)
    else:
        fields["d_ff"] = _require(data, source, "intermediate_size")
        fields["norm_eps"] = _float(data, source, "rms_norm_eps", 1e-6)
        fields["rope_theta"] = _float(data, source, "rope_theta", 0.0) or _ROPE_THETA_DEFAULT
        kv = _int(data, source, "num_key_value_heads")
        fields["n_kv_heads"] = None if kv is None or kv == n_heads else kv
        head_dim = _int(data, source, "head_dim")
        if head_dim is not None and head_dim * n_heads != d_model:
            fields["head_dim"] = head_dim
    fields.update(overrides)
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from err
