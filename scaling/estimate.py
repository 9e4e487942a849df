"""Closed-form estimates for the shared model: parameters, FLOPs, memory, communication,
roofline step time. Pure arithmetic on a ModelConfig; never imports jax.
"""

from __future__ import annotations

from dataclasses import dataclass

from scaling.config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts (number of scalars) of one model."""

    total: int
    embedding: int  # token table (+ learned positions for gpt2); the tied head is not extra
    head: int  # untied read-out matrix, 0 when tied
    per_layer: int
    matmul: int  # parameters that take part in a matmul per token (layers + head/tied table)

    @property
    def non_embedding(self) -> int:
        """Total minus the embedding tables (the untied head counts as non-embedding)."""
        return self.total - self.embedding


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Count parameters exactly as ``scaling.model.TransformerLM`` creates them.

    Per layer: q and o are d·(h·k), k and v are d·(h_kv·k); FFN 3·d·f (SwiGLU) or 2·d·f (GELU);
    two norms of d (RMSNorm) or 2d (LayerNorm with bias). No biases elsewhere.
    """
    d, v = cfg.d_model, cfg.vocab_size
    q_width, kv_width = cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head
    attention = 2 * d * q_width + 2 * d * kv_width
    ffn = (3 if cfg.family == "llama" else 2) * d * cfg.d_ff
    norm = d if cfg.family == "llama" else 2 * d
    per_layer = attention + ffn + 2 * norm
    embedding = v * d + (cfg.max_seq_len * d if cfg.family == "gpt2" else 0)
    head = 0 if cfg.tied_embeddings else d * v
    total = embedding + cfg.n_layers * per_layer + norm + head
    matmul = cfg.n_layers * (attention + ffn) + d * v
    return ParamCounts(total, embedding, head, per_layer, matmul)
