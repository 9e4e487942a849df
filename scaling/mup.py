"""muP (Tensor Programs V; microsoft/mup) for Adam: the parametrization rules, nothing else.

With m = d_model / base_width under muP (1 under standard parametrization):

- init: hidden matrices σ_base/√m (the model's fan-in/fan-out init already gives this for
  square matrices), embeddings and norm gains constant; the untied read-out a width-independent
  ``init_std`` (or zero with ``mup_zero_readout``), its 1/m living in the forward multiplier;
- forward multipliers: embedding output × α_in, logits × α_out/m, attention logits × 1/d_head;
- Adam learning rates: hidden matrices η/m (``lr_multipliers``), everything else η.

Which parameters are hidden matrices comes from their role (``scaling.roles``). The model reads
these functions; the coord check that validates them is ``scaling.coord_check``.
"""

from __future__ import annotations

import math

import jax

from scaling.config import ModelConfig
from scaling.roles import param_path, role_of


def lr_multipliers(params, cfg: ModelConfig):
    """A tree like ``params`` holding 1/m on hidden matrices and 1.0 elsewhere."""
    m = cfg.mup_width_multiplier

    def multiplier(key_path, _leaf) -> float:
        return 1.0 / m if role_of(param_path(key_path)).hidden else 1.0

    return jax.tree_util.tree_map_with_path(multiplier, params)


def attention_scale(cfg: ModelConfig) -> float:
    """1/√d_head (standard) or 1/d_head (muP, Tensor Programs V)."""
    return 1.0 / cfg.d_head if cfg.mup else 1.0 / math.sqrt(cfg.d_head)


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
