"""Every parameter of the shared model: its path, its role and its shape, from the config alone.
Never imports jax.

This is the one table that sharding (``scaling.parallel`` via ``scaling.sharding``), muP
(``scaling.mup``), the estimator (``scaling.estimate``) and the weight-decay mask read; the
model (``scaling.model``) creates exactly these parameters (a test compares the two for every
preset). A path the table does not know raises one ``ValueError`` (``role_of``), never a guess.

Paths are those of ``nnx.to_pure_dict(nnx.state(model))``, e.g.
``("blocks", "attn", "q", "weight")``. Parameters under ``blocks`` carry a leading layer axis.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from scaling.config import ModelConfig

Path = tuple[str, ...]


class Role(enum.StrEnum):
    """What a parameter does in the model."""

    EMBED = "embed"  # token table (V, d), also the read-out when tied
    POSITION = "position"  # learned position table (T, d)
    ATTN_Q = "attn_q"  # (L, d, h·k)
    ATTN_K = "attn_k"  # (L, d, h_kv·k)
    ATTN_V = "attn_v"  # (L, d, h_kv·k)
    ATTN_O = "attn_o"  # (L, h·k, d)
    FFN_IN = "ffn_in"  # (L, d, f): the activated matrix (SwiGLU/GeGLU's w1 = HF gate_proj)
    FFN_GATE = "ffn_gate"  # (L, d, f): the linear branch of a gated FFN (w3 = HF up_proj)
    FFN_OUT = "ffn_out"  # (L, f, d): w2
    NORM_GAIN = "norm_gain"  # (L, d) or (d,)
    NORM_BIAS = "norm_bias"  # (L, d) or (d,): LayerNorm's shift
    HEAD = "head"  # untied read-out (d, V)
    # biases of the matrices above (``ModelConfig.qkv_bias`` / ``attn_out_bias`` / ...)
    ATTN_Q_BIAS = "attn_q_bias"  # (L, h·k)
    ATTN_K_BIAS = "attn_k_bias"  # (L, h_kv·k)
    ATTN_V_BIAS = "attn_v_bias"  # (L, h_kv·k)
    ATTN_O_BIAS = "attn_o_bias"  # (L, d)
    FFN_IN_BIAS = "ffn_in_bias"  # (L, f)
    FFN_GATE_BIAS = "ffn_gate_bias"  # (L, f)
    FFN_OUT_BIAS = "ffn_out_bias"  # (L, d)
    HEAD_BIAS = "head_bias"  # (V,)
    # mixture of experts (``scaling.moe``); a shared expert's matrices are FFN_IN/GATE/OUT
    ROUTER = "router"  # (L, d, E)
    EXPERT_IN = "expert_in"  # (L, E, d, f): every expert's w1
    EXPERT_GATE = "expert_gate"  # (L, E, d, f): w3 of gated experts
    EXPERT_OUT = "expert_out"  # (L, E, f, d): w2

    @property
    def kind(self) -> str:
        """The sharding kind (``scaling.sharding.RULES``) of this role."""
        return _KIND[self]

    @property
    def hidden(self) -> bool:
        """A hidden matrix: both dimensions grow with width (muP's "hidden weights")."""
        return self in HIDDEN_ROLES

    @property
    def decayed(self) -> bool:
        """Whether AdamW's weight decay applies (matrices and tables; not gains or biases)."""
        return self not in VECTOR_ROLES

    @property
    def matrix(self) -> bool:
        """A 2-D weight per layer (or the tables and head): what ``x W`` multiplies."""
        return self not in VECTOR_ROLES


HIDDEN_ROLES = frozenset(
    {Role.ATTN_Q, Role.ATTN_K, Role.ATTN_V, Role.ATTN_O, Role.FFN_IN, Role.FFN_GATE, Role.FFN_OUT,
     Role.EXPERT_IN, Role.EXPERT_GATE, Role.EXPERT_OUT}
)  # fmt: skip
# Expert matrices: a token multiplies experts_per_token of the n_experts (``active`` counts).
EXPERT_ROLES = frozenset({Role.EXPERT_IN, Role.EXPERT_GATE, Role.EXPERT_OUT})
BIAS_ROLES = frozenset(
    {Role.ATTN_Q_BIAS, Role.ATTN_K_BIAS, Role.ATTN_V_BIAS, Role.ATTN_O_BIAS, Role.FFN_IN_BIAS,
     Role.FFN_GATE_BIAS, Role.FFN_OUT_BIAS, Role.HEAD_BIAS}
)  # fmt: skip
VECTOR_ROLES = BIAS_ROLES | {Role.NORM_GAIN, Role.NORM_BIAS}
_KIND = {
    Role.EMBED: "embed",
    Role.POSITION: "position",
    Role.ATTN_Q: "column",
    Role.ATTN_K: "column",
    Role.ATTN_V: "column",
    Role.FFN_IN: "column",
    Role.FFN_GATE: "column",
    Role.ATTN_O: "row",
    Role.FFN_OUT: "row",
    Role.NORM_GAIN: "vector",
    Role.NORM_BIAS: "vector",
    Role.HEAD: "head",
    # a column matrix's bias is split like its output columns; a row matrix's bias is added
    # after the reduction, so it is a replicated vector like the norms
    Role.ATTN_Q_BIAS: "column_bias",
    Role.ATTN_K_BIAS: "column_bias",
    Role.ATTN_V_BIAS: "column_bias",
    Role.FFN_IN_BIAS: "column_bias",
    Role.FFN_GATE_BIAS: "column_bias",
    Role.ATTN_O_BIAS: "vector",
    Role.FFN_OUT_BIAS: "vector",
    Role.HEAD_BIAS: "head_bias",
    # the router's (d, E) is small and E need not divide a tensor axis: only fsdp splits it
    Role.ROUTER: "router",
    Role.EXPERT_IN: "expert_column",
    Role.EXPERT_GATE: "expert_column",
    Role.EXPERT_OUT: "expert_row",
}
# module inside a block → (role of its ``weight``, role of its ``bias``)
_BLOCK_LINEARS = {
    ("attn", "q"): (Role.ATTN_Q, Role.ATTN_Q_BIAS),
    ("attn", "k"): (Role.ATTN_K, Role.ATTN_K_BIAS),
    ("attn", "v"): (Role.ATTN_V, Role.ATTN_V_BIAS),
    ("attn", "o"): (Role.ATTN_O, Role.ATTN_O_BIAS),
    ("ffn", "w1"): (Role.FFN_IN, Role.FFN_IN_BIAS),
    ("ffn", "w3"): (Role.FFN_GATE, Role.FFN_GATE_BIAS),
    ("ffn", "w2"): (Role.FFN_OUT, Role.FFN_OUT_BIAS),
}
_LEAF_INDEX = {"weight": 0, "bias": 1}
_EXPERT_LEAVES = {"w1": Role.EXPERT_IN, "w3": Role.EXPERT_GATE, "w2": Role.EXPERT_OUT}
_SHARED_EXPERT = ("ffn", "shared")  # the MoE layer's dense always-on FFN
_NORMS = ("attn_norm", "ffn_norm", "final_norm")
_NORM_LEAVES = {"weight": Role.NORM_GAIN, "bias": Role.NORM_BIAS}
PARAM_ROOTS = ("embed", "pos_embed", "blocks", "final_norm", "head")


def role_of(path: Path) -> Role:
    """The role of the parameter at ``path``; ``ValueError`` for a path the model never makes."""
    names = tuple(str(p) for p in path)
    top = {
        ("embed", "weight"): Role.EMBED,
        ("pos_embed", "weight"): Role.POSITION,
        ("head", "weight"): Role.HEAD,
        ("head", "bias"): Role.HEAD_BIAS,
    }
    if names in top:
        return top[names]
    if len(names) >= 2 and names[-2] in _NORMS and names[-1] in _NORM_LEAVES:
        return _NORM_LEAVES[names[-1]]
    if len(names) == 4 and names[0] == "blocks" and names[-1] in _LEAF_INDEX:
        roles = _BLOCK_LINEARS.get(names[1:3])
        if roles is not None:
            return roles[_LEAF_INDEX[names[-1]]]
        if names[1:] == ("ffn", "router", "weight"):
            return Role.ROUTER
    if len(names) == 4 and names[:3] == ("blocks", "ffn", "experts") and names[3] in _EXPERT_LEAVES:
        return _EXPERT_LEAVES[names[3]]
    if len(names) == 5 and names[0] == "blocks" and names[1:3] == _SHARED_EXPERT:
        roles = _BLOCK_LINEARS.get(("ffn", names[3]))
        if roles is not None and names[4] in _LEAF_INDEX:
            return roles[_LEAF_INDEX[names[4]]]
    raise ValueError(f"no role for parameter {'/'.join(names)}; known roots: {PARAM_ROOTS}")


@dataclass(frozen=True)
class Param:
    """One parameter array of the model (scalars: ``size``)."""

    path: Path
    role: Role
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n

    @property
    def stacked(self) -> bool:
        """Carries the leading layer axis (the model scans over it)."""
        return self.path[0] == "blocks"


def parameters(cfg: ModelConfig) -> tuple[Param, ...]:
    """Every parameter ``scaling.model.TransformerLM`` creates for ``cfg``, in a stable order."""
    d, L, f, V = cfg.d_model, cfg.n_layers, cfg.d_ff, cfg.vocab_size
    q_width, kv_width = cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head
    norm_leaves = ("weight", "bias") if cfg.norm_bias else ("weight",)
    out = [Param(("embed", "weight"), Role.EMBED, (V, d))]
    if cfg.positions == "learned":
        out.append(Param(("pos_embed", "weight"), Role.POSITION, (cfg.max_seq_len, d)))

    def linear(scope: str, name: str, d_in: int, d_out: int, bias: bool) -> None:
        weight_role, bias_role = _BLOCK_LINEARS[(scope, name)]
        out.append(Param(("blocks", scope, name, "weight"), weight_role, (L, d_in, d_out)))
        if bias:
            out.append(Param(("blocks", scope, name, "bias"), bias_role, (L, d_out)))

    for norm in ("attn_norm", "ffn_norm"):
        out += [Param(("blocks", norm, leaf), _NORM_LEAVES[leaf], (L, d)) for leaf in norm_leaves]
    linear("attn", "q", d, q_width, cfg.qkv_bias)
    linear("attn", "k", d, kv_width, cfg.qkv_bias)
    linear("attn", "v", d, kv_width, cfg.qkv_bias)
    linear("attn", "o", q_width, d, cfg.attn_out_bias)
    if cfg.moe:
        out += _moe_parameters(cfg)
    else:
        linear("ffn", "w1", d, f, cfg.ffn_bias)
        if cfg.ffn_gated:
            linear("ffn", "w3", d, f, cfg.ffn_bias)
        linear("ffn", "w2", f, d, cfg.ffn_bias)
    out += [Param(("final_norm", leaf), _NORM_LEAVES[leaf], (d,)) for leaf in norm_leaves]
    if not cfg.tied_embeddings:
        out.append(Param(("head", "weight"), Role.HEAD, (d, V)))
    if cfg.head_bias:
        out.append(Param(("head", "bias"), Role.HEAD_BIAS, (V,)))
    return tuple(out)


def _moe_parameters(cfg: ModelConfig) -> list[Param]:
    """The MoE layer's parameters (``scaling.moe.MoEFeedForward``), in the model's order:
    router, shared expert, experts."""
    d, L, f, E = cfg.d_model, cfg.n_layers, cfg.d_ff, cfg.n_experts
    out = [Param(("blocks", "ffn", "router", "weight"), Role.ROUTER, (L, d, E))]
    if cfg.moe_shared_expert:
        shared = (("w1", d, f), ("w3", d, f), ("w2", f, d)) if cfg.ffn_gated else (
            ("w1", d, f), ("w2", f, d))  # fmt: skip
        for name, d_in, d_out in shared:
            role = _BLOCK_LINEARS[("ffn", name)][0]
            out.append(Param(("blocks", *_SHARED_EXPERT, name, "weight"), role, (L, d_in, d_out)))
    names = ("w1", "w3", "w2") if cfg.ffn_gated else ("w1", "w2")
    for name in names:
        shape = (L, E, f, d) if name == "w2" else (L, E, d, f)
        out.append(Param(("blocks", "ffn", "experts", name), _EXPERT_LEAVES[name], shape))
    return out


def param_path(key_path) -> Path:
    """A ``jax.tree_util`` key path as a tuple of names (dict keys, attribute names, indices)."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path)


def under_param(path: Path) -> Path | None:
    """The parameter path inside a longer path (an optimizer moment ``mu/blocks/attn/...``
    follows its parameter), or None when the path holds no parameter (Adam's step count)."""
    for i, name in enumerate(path):
        if name in PARAM_ROOTS:
            return path[i:]
    return None


def tensor_split_dims(cfg: ModelConfig) -> tuple[tuple[str, int], ...]:
    """The model dimensions a tensor axis splits (column/row/embed/head kinds): heads, kv heads,
    FFN width, vocabulary; each must be divisible by the tensor axis."""
    return (
        ("n_heads", cfg.n_heads),
        ("n_kv_heads", cfg.kv_heads),
        ("d_ff", cfg.d_ff),
        ("vocab_size", cfg.vocab_size),
    )
