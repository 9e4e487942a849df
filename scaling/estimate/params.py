"""Parameter counts of the shared model and what one device holds of them, both read off the
parameter table (``scaling.roles.parameters``) and the sharding rules (``scaling.sharding``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scaling import sharding
from scaling.config import ModelConfig
from scaling.estimate.mesh import ceil, effective_mesh
from scaling.roles import EXPERT_ROLES, Param, Role, parameters


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts (number of scalars) of one model."""

    total: int
    embedding: int  # token table (+ learned positions); the tied head is not extra
    head: int  # untied read-out matrix, 0 when tied
    per_layer: int
    matmul: int  # parameters that take part in a matmul per token (layers + head/tied table)
    # parameters one token uses: total less the experts it is not routed to (= total if dense)
    active: int = -1

    def __post_init__(self) -> None:
        if self.active < 0:
            object.__setattr__(self, "active", self.total)

    @property
    def non_embedding(self) -> int:
        """Total minus the embedding tables (the untied head counts as non-embedding)."""
        return self.total - self.embedding


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Count the parameters ``scaling.model.TransformerLM`` creates (``roles.parameters``).

    Per layer: q and o are d·(h·k), k and v are d·(h_kv·k); FFN 3·d·f (SwiGLU) or 2·d·f (GELU);
    two norms of d (RMSNorm) or 2d (LayerNorm with bias). The read-out (untied head, or the
    tied token table) takes part in a matmul; the embedding lookup does not.

    Mixture of experts (``scaling.moe``): a token multiplies k = experts_per_token of the E
    experts, so ``matmul`` and ``active`` count k/E of the expert matrices (the shared expert
    fully), and ``matmul`` adds the router's d·E per layer (its logits are a matmul every token
    pays): N_matmul = attention + router + k·(expert FFN) + shared FFN + read-out.
    """
    table = parameters(cfg)
    by_role: dict[Role, int] = {}
    for p in table:
        by_role[p.role] = by_role.get(p.role, 0) + p.size
    total = sum(by_role.values())
    embedding = by_role.get(Role.EMBED, 0) + by_role.get(Role.POSITION, 0)
    head = by_role.get(Role.HEAD, 0)
    stacked = sum(p.size for p in table if p.stacked)
    layer_matrices = sum(p.size for p in table if p.role.hidden)
    experts = sum(p.size for p in table if p.role in EXPERT_ROLES)
    idle = experts - experts // max(cfg.n_experts, 1) * cfg.experts_per_token if cfg.moe else 0
    return ParamCounts(
        total=total,
        embedding=embedding,
        head=head,
        per_layer=stacked // cfg.n_layers,
        matmul=layer_matrices - idle + by_role.get(Role.ROUTER, 0) + cfg.d_model * cfg.vocab_size,
        active=total - idle,
    )


@dataclass(frozen=True)
class ParamGroups:
    """Parameter scalars by how the model uses them (one device's share, or all of them)."""

    layer_matrices: float  # q, k, v, o and FFN matrices of all layers
    vocab_tables: float  # token table (V, d) and the untied head (d, V)
    positions: float  # the learned position table (T, d); 0 with RoPE
    vectors: float  # norm gains (and LayerNorm biases), every layer plus the final norm

    @property
    def total(self) -> float:
        return self.layer_matrices + self.vocab_tables + self.positions + self.vectors


def group_of(role: Role) -> str:
    if role.hidden:
        return "layer_matrices"
    if role in (Role.EMBED, Role.HEAD):
        return "vocab_tables"
    if role is Role.POSITION:
        return "positions"
    return "vectors"


def shard_ways(param: Param, mode: str, mesh: tuple[int, int]) -> tuple[int, ...]:
    """How many ways each dimension of ``param`` is split under ``mode`` on ``mesh``."""
    counts = sharding.shard_counts(sharding.rule(mode, param.role.kind), mesh)
    return counts + (1,) * (len(param.shape) - len(counts))


def held_scalars(param: Param, mode: str, mesh: tuple[int, int]) -> int:
    """Scalars of the largest shard of ``param`` one device holds (uneven splits round up, as
    XLA pads them)."""
    return math.prod(
        ceil(dim / ways)
        for dim, ways in zip(param.shape, shard_ways(param, mode, mesh), strict=True)
    )


def held_groups(cfg: ModelConfig, *, mode: str, mesh: tuple[int, int] | None) -> ParamGroups:
    """Scalars one device holds, by group."""
    m = effective_mesh(mode, mesh)
    sums = dict.fromkeys(("layer_matrices", "vocab_tables", "positions", "vectors"), 0.0)
    for p in parameters(cfg):
        sums[group_of(p.role)] += held_scalars(p, mode, m)
    return ParamGroups(**sums)


def readout_held(cfg: ModelConfig, *, mode: str, mesh: tuple[int, int] | None) -> float:
    """Scalars of the read-out matrix (untied head, or the tied token table) one device holds."""
    m = effective_mesh(mode, mesh)
    role = Role.EMBED if cfg.tied_embeddings else Role.HEAD
    param = next(p for p in parameters(cfg) if p.role is role)
    return held_scalars(param, mode, m)


def params_per_device(cfg: ModelConfig, *, mode: str, mesh: tuple[int, int] | None) -> int:
    """Number of parameter scalars one device holds (largest shard, rounded up)."""
    return int(held_groups(cfg, mode=mode, mesh=mesh).total)


def stacked_held(cfg: ModelConfig, *, mode: str, mesh: tuple[int, int] | None) -> int:
    """Scalars of the stacked (per-layer) parameters one device holds."""
    m = effective_mesh(mode, mesh)
    return sum(held_scalars(p, mode, m) for p in parameters(cfg) if p.stacked)
