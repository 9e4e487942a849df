"""muP (Tensor Programs V; microsoft/mup) for Adam: the parametrization rules, nothing else.

muP scales every hidden matrix from a *base model*, the one whose hyperparameters were tuned
(``base_config``): width ``mup_base_width``, head width ``mup_base_head_dim`` (default: this
model's, i.e. width grows by adding heads of a fixed width), FFN width by the presets' rule
(``scaling.presets.ffn_width``). With m = d_model / base width under muP (1 under SP):

- init: hidden matrices σ_base/√m (the model's fan-in/fan-out init already gives this for
  square matrices), embeddings and norm gains constant; the untied read-out a width-independent
  ``init_std`` (or zero with ``mup_zero_readout``), its 1/m living in the forward multiplier;
- forward multipliers: embedding output × α_in, logits × α_out/m, attention logits
  × α_attn·√d_head_base / d_head (``attention_scale``);
- Adam learning rates: each hidden matrix η · fan_in_base / fan_in (``lr_multipliers``; what
  microsoft/mup's MuAdam divides by, its ``width_mult`` of the matrix's fan-in dimension):
  q, k, v and the FFN in/gate matrices read d_model, o reads the attention width h·k, the FFN
  out-matrix w2 reads d_ff. Everything else η.

Which parameters are hidden matrices, and their shapes, come from ``scaling.roles``. The model
reads these functions; the coord check that validates them is ``scaling.coord_check``.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from scaling.config import ModelConfig
from scaling.presets import ffn_width
from scaling.roles import Path, param_path, parameters, role_of


def base_config(cfg: ModelConfig) -> ModelConfig:
    """The base model muP transfers from (see the module docstring); same depth and family."""
    head = cfg.mup_base_head_dim or cfg.d_head
    width = cfg.mup_base_width
    return dataclasses.replace(
        cfg,
        name=f"{cfg.name}:mup-base",
        d_model=width,
        n_heads=width // head,
        n_kv_heads=None,
        head_dim=head,
        d_ff=ffn_width(width, cfg.ffn_gated),
    )


def fan_in_ratios(cfg: ModelConfig) -> dict[Path, float]:
    """fan_in / fan_in_base of every hidden matrix (matrices are stored ``(L, in, out)``), by
    parameter path; the muP width multiplier of that matrix (dimensionless)."""
    base = {p.path: p.shape[-2] for p in parameters(base_config(cfg)) if p.role.hidden}
    return {p.path: p.shape[-2] / base[p.path] for p in parameters(cfg) if p.role.hidden}


def lr_multipliers(params, cfg: ModelConfig):
    """A tree like ``params`` holding fan_in_base / fan_in on hidden matrices under muP and 1.0
    elsewhere (and everywhere under SP)."""
    ratios = fan_in_ratios(cfg) if cfg.mup else {}

    def multiplier(key_path, _leaf) -> float:
        path = param_path(key_path)
        return 1.0 / ratios[path] if role_of(path).hidden and ratios else 1.0

    return jax.tree_util.tree_map_with_path(multiplier, params)


def attention_scale(cfg: ModelConfig) -> float:
    """Attention logits multiplier: 1/√d_head under SP; under muP the base-normalised
    α_attn·√d_head_base / d_head, which is 1/d_head scaling as d_head grows and equals
    α_attn/√d_head when heads are added at a fixed head width (microsoft/mup writes 8/d_head:
    a base head width of 64). A bare 1/d_head would make attention √d_head× flatter than
    standard at every width (FACTS.md: 4× at d_head 16, and wider models learned slower)."""
    if not cfg.mup:
        return 1.0 / math.sqrt(cfg.d_head)
    base_head = cfg.mup_base_head_dim or cfg.d_head
    return cfg.mup_attn_multiplier * math.sqrt(base_head) / cfg.d_head


def head_init_std(cfg: ModelConfig) -> float:
    """Untied head: σ² = 2/(d+v) under SP; under muP a width-independent ``init_std`` (the 1/m
    of the readout lives in the forward multiplier instead), or 0 with ``mup_zero_readout``."""
    if cfg.mup:
        return 0.0 if cfg.mup_zero_readout else cfg.init_std
    return math.sqrt(2.0 / (cfg.d_model + cfg.vocab_size))


def logit_multiplier(cfg: ModelConfig) -> float:
    """α_out / m under muP (Tensor Programs V), 1 under SP."""
    return cfg.mup_output_multiplier / cfg.mup_width_multiplier if cfg.mup else 1.0


def input_multiplier(cfg: ModelConfig) -> float:
    """α_in under muP, 1 under SP."""
    return cfg.mup_input_multiplier if cfg.mup else 1.0
