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
    FFN_IN = "ffn_in"  # (L, d, f): SwiGLU's w1, the GELU MLP's first matrix
    FFN_GATE = "ffn_gate"  # (L, d, f): SwiGLU's w3 (the linear branch)
    FFN_OUT = "ffn_out"  # (L, f, d): w2
    NORM_GAIN = "norm_gain"  # (L, d) or (d,)
    NORM_BIAS = "norm_bias"  # (L, d) or (d,): LayerNorm's shift
    HEAD = "head"  # untied read-out (d, V)

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
        return self not in (Role.NORM_GAIN, Role.NORM_BIAS)


HIDDEN_ROLES = frozenset(
    {Role.ATTN_Q, Role.ATTN_K, Role.ATTN_V, Role.ATTN_O, Role.FFN_IN, Role.FFN_GATE, Role.FFN_OUT}
)
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
}
# module name inside a block → role of its ``weight``
_BLOCK_MATRICES = {
    ("attn", "q"): Role.ATTN_Q,
    ("attn", "k"): Role.ATTN_K,
    ("attn", "v"): Role.ATTN_V,
    ("attn", "o"): Role.ATTN_O,
    ("ffn", "w1"): Role.FFN_IN,
    ("ffn", "w3"): Role.FFN_GATE,
    ("ffn", "w2"): Role.FFN_OUT,
}
_NORMS = ("attn_norm", "ffn_norm", "final_norm")
_NORM_LEAVES = {"weight": Role.NORM_GAIN, "bias": Role.NORM_BIAS}
PARAM_ROOTS = ("embed", "pos_embed", "blocks", "final_norm", "head")


def role_of(path: Path) -> Role:
    """The role of the parameter at ``path``; ``ValueError`` for a path the model never makes."""
    names = tuple(str(p) for p in path)
    if names in (("embed", "weight"), ("pos_embed", "weight"), ("head", "weight")):
        return {"embed": Role.EMBED, "pos_embed": Role.POSITION, "head": Role.HEAD}[names[0]]
    if len(names) >= 2 and names[-2] in _NORMS and names[-1] in _NORM_LEAVES:
        return _NORM_LEAVES[names[-1]]
    if len(names) == 4 and names[0] == "blocks" and names[-1] == "weight":
        role = _BLOCK_MATRICES.get(names[1:3])
        if role is not None:
            return role
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
    d, L, f = cfg.d_model, cfg.n_layers, cfg.d_ff
    q_width, kv_width = cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head
    norm_leaves = ("weight", "bias") if cfg.family == "gpt2" else ("weight",)
    out = [Param(("embed", "weight"), Role.EMBED, (cfg.vocab_size, d))]
    if cfg.family == "gpt2":
        out.append(Param(("pos_embed", "weight"), Role.POSITION, (cfg.max_seq_len, d)))
    for norm in ("attn_norm", "ffn_norm"):
        out += [
            Param(("blocks", norm, leaf), role_of((norm, leaf)), (L, d)) for leaf in norm_leaves
        ]
    out += [
        Param(("blocks", "attn", "q", "weight"), Role.ATTN_Q, (L, d, q_width)),
        Param(("blocks", "attn", "k", "weight"), Role.ATTN_K, (L, d, kv_width)),
        Param(("blocks", "attn", "v", "weight"), Role.ATTN_V, (L, d, kv_width)),
        Param(("blocks", "attn", "o", "weight"), Role.ATTN_O, (L, q_width, d)),
        Param(("blocks", "ffn", "w1", "weight"), Role.FFN_IN, (L, d, f)),
    ]
    if cfg.family == "llama":
        out.append(Param(("blocks", "ffn", "w3", "weight"), Role.FFN_GATE, (L, d, f)))
    out.append(Param(("blocks", "ffn", "w2", "weight"), Role.FFN_OUT, (L, f, d)))
    out += [
        Param(("final_norm", leaf), role_of(("final_norm", leaf)), (d,)) for leaf in norm_leaves
    ]
    if not cfg.tied_embeddings:
        out.append(Param(("head", "weight"), Role.HEAD, (d, cfg.vocab_size)))
    return tuple(out)


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
