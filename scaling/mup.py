"""muP (Tensor Programs V; microsoft/mup) for Adam: per-parameter learning-rate multipliers.

With m = d_model / base_width: hidden matrices (q, k, v, o, FFN) get Adam LR η/m; embeddings,
norm gains and the (untied) read-out keep η. The init and forward-multiplier rules live in the
model (``scaling.model``: ``head_init_std``, ``logit_multiplier``, ``attention_scale``).
"""

from __future__ import annotations

import jax

from scaling.config import ModelConfig
from scaling.parallel import _key_names, param_kind

HIDDEN_KINDS = ("column", "row")


def lr_multipliers(params, cfg: ModelConfig):
    """A tree like ``params`` holding 1/m on hidden matrices and 1.0 elsewhere."""
    m = cfg.mup_width_multiplier

    def multiplier(key_path, _leaf) -> float:
        return 1.0 / m if param_kind(_key_names(key_path)) in HIDDEN_KINDS else 1.0

    return jax.tree_util.tree_map_with_path(multiplier, params)
