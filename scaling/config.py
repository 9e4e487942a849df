"""Typed, frozen configuration of the model and of one training run.

Presets live in ``scaling.presets`` (data), sweep grids in ``scaling.spec``. This module never
imports jax, so the CLI's ``presets``/``estimate`` commands start instantly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Literal

from scaling.prepared import is_prepared
from scaling.sharding import MODES, check_mode

Family = Literal["llama", "gpt2", "mistral", "gemma"]
Dtype = Literal["float32", "bfloat16"]
Remat = Literal["none", "full", "dots"]
Norm = Literal["rms", "layer"]
Positions = Literal["rope", "learned", "sinusoidal", "none"]
Ffn = Literal["swiglu", "geglu", "gelu_tanh", "gelu", "relu"]
MoeDispatch = Literal["dropless", "capacity"]

FAMILIES: tuple[str, ...] = ("llama", "gpt2", "mistral", "gemma")
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
REMATS: tuple[str, ...] = ("none", "full", "dots")
# Attention implementations (scaling.attention); the fused ones store no (b, h, t, t) scores.
ATTENTIONS: tuple[str, ...] = ("reference", "xla", "cudnn", "splash")
FUSED_ATTENTIONS: tuple[str, ...] = ("cudnn", "splash")
# The muP knobs (ModelConfig fields), settable from the CLI and sweep specs under these names.
MUP_KNOBS: tuple[str, ...] = (
    "mup_base_width",
    "mup_base_head_dim",
    "mup_input_multiplier",
    "mup_output_multiplier",
    "mup_attn_multiplier",
    "mup_zero_readout",
)
NORMS: tuple[str, ...] = ("rms", "layer")
POSITIONS: tuple[str, ...] = ("rope", "learned", "sinusoidal", "none")
FFNS: tuple[str, ...] = ("swiglu", "geglu", "gelu_tanh", "gelu", "relu")
MOE_DISPATCHES: tuple[str, ...] = ("dropless", "capacity")
# FFN kind → (gated, activation): gated FFNs are W2 (act(W1 x) ⊙ W3 x), the others W2 act(W1 x)
FFN_KINDS: dict[str, tuple[bool, str]] = {
    "swiglu": (True, "silu"),
    "geglu": (True, "gelu_tanh"),  # Gemma's GeGLU uses the tanh approximation
    "gelu_tanh": (False, "gelu_tanh"),  # GPT-2's "gelu_new"
    "gelu": (False, "gelu"),  # exact (erf) GELU
    "relu": (False, "relu"),
}
__all__ = [
    "ATTENTIONS",
    "DTYPES",
    "FAMILIES",
    "FFNS",
    "MODES",
    "MUP_KNOBS",
    "NORMS",
    "POSITIONS",
    "REMATS",
    "ModelConfig",
    "RunConfig",
    "model_config_from_dict",
    "parse_mesh",
]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the shared decoder-only LM, as orthogonal fields.

    The model (``scaling.model``), the parameter table (``scaling.roles``) and the estimator
    read these fields only. ``family`` is a label: the named set of architecture fields this
    config started from (``scaling.presets.FAMILY_ARCHITECTURES``: llama, gpt2, mistral,
    gemma), shown in tables and recorded per run; nothing computes with it.

    - norm: ``rms`` (RMSNorm) or ``layer`` (LayerNorm); ``norm_bias`` adds LayerNorm's shift;
      ``norm_unit_offset`` makes the gain ``1 + w`` with ``w`` initialised at 0 (Gemma).
    - positions: ``rope`` (rotary, base ``rope_theta``; ``rope_scaling_factor`` > 1 applies
      Llama-3.1's frequency scaling with the three ``rope_*`` fields below), ``learned`` (a
      (max_seq_len, d) table, GPT-2), ``sinusoidal`` (Vaswani et al. 2017, fixed) or ``none``.
    - ffn: ``swiglu`` / ``geglu`` (gated, three matrices) or ``gelu_tanh`` / ``gelu`` /
      ``relu`` (two matrices). ``d_ff`` is the hidden width. The CPU ladder uses
      ≈ 8/3·d_model for gated FFNs (rounded up to a multiple of 64), which keeps the
      parameter count of a 4·d_model two-matrix MLP.
    - biases: ``qkv_bias`` (q, k, v), ``attn_out_bias`` (o), ``ffn_bias`` (every FFN matrix),
      ``head_bias`` (the read-out; also with a tied table).
    - attention: ``n_heads``, ``n_kv_heads`` (None: MHA; fewer: GQA; 1: MQA), ``head_dim``
      (None: d_model / n_heads), ``sliding_window`` (a query sees itself and the previous
      window − 1 positions; None: all), ``attn_softcap`` (scores → c·tanh(scores / c)).
    - read-out: ``tied_embeddings``, ``final_softcap`` (logits → c·tanh(logits / c)).
    - ``embed_scale``: multiply token embeddings by √d_model (Gemma).
    - mixture of experts (``scaling.moe``; ``n_experts`` 0 means a dense FFN and the other
      ``moe_*`` fields are unused): ``n_experts`` FFNs of width ``d_ff`` per layer, each token
      routed to ``experts_per_token`` of them (softmax over experts, top-k, renormalised over
      the chosen ones: Mixtral); ``moe_shared_expert`` adds one always-on FFN of width
      ``d_ff``; ``moe_aux_loss_coef`` weighs the load-balancing loss and ``moe_z_loss_coef``
      the router z-loss (both averaged over layers, added to the training loss);
      ``moe_dispatch`` is ``dropless`` (every token reaches its experts) or ``capacity``
      (each expert takes at most ``moe_capacity_factor`` × its balanced share of tokens, the
      rest are dropped: they skip the FFN through the residual).
    """

    name: str = "custom"
    family: Family = "llama"  # a label (see above); the model never reads it
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 8
    n_kv_heads: int | None = None  # grouped-query attention; None means n_heads
    head_dim: int | None = None  # None means d_model // n_heads
    d_ff: int = 352
    vocab_size: int = 2048
    max_seq_len: int = 512
    tied_embeddings: bool = True
    # architecture (see the docstring); the defaults are Llama's
    norm: Norm = "rms"
    norm_bias: bool = False
    norm_unit_offset: bool = False
    norm_eps: float = 1e-5
    positions: Positions = "rope"
    rope_theta: float = 10_000.0
    rope_scaling_factor: float = 1.0  # Llama-3.1 frequency scaling; 1 = none
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    ffn: Ffn = "swiglu"
    qkv_bias: bool = False
    attn_out_bias: bool = False
    ffn_bias: bool = False
    head_bias: bool = False
    sliding_window: int | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    embed_scale: bool = False
    # mixture of experts (see the docstring); n_experts=0 is a dense FFN
    n_experts: int = 0
    experts_per_token: int = 2
    moe_shared_expert: bool = False
    moe_aux_loss_coef: float = 0.01
    moe_z_loss_coef: float = 0.001
    moe_dispatch: MoeDispatch = "dropless"
    moe_capacity_factor: float = 1.25
    # numerics and training
    dtype: Dtype = "float32"  # compute dtype; parameters are always float32
    remat: Remat = "none"
    attention: str = "reference"  # one of ATTENTIONS (scaling.attention); what runs, not the math
    scan_layers: bool = True  # False unrolls the layer loop (used to let XLA count FLOPs)
    init_std: float = 0.02  # std of embeddings (and of the muP base for hidden matrices)
    # muP (Tensor Programs V, microsoft/mup); with mup=False the model is standard
    # parametrization and these knobs are ignored. The rules are in ``scaling.mup``.
    mup: bool = False
    mup_base_width: int = 128  # d_model of the base model the hyperparameters were tuned at
    mup_base_head_dim: int | None = None  # d_head of the base model; None: this d_head
    mup_input_multiplier: float = 1.0  # α_in: embedding output × α_in
    mup_output_multiplier: float = 1.0  # α_out: logits × α_out / m
    mup_attn_multiplier: float = 1.0  # α_attn: attention logits × α_attn·√d_head_base / d_head
    mup_zero_readout: bool = False  # zero-initialised untied head

    def __post_init__(self) -> None:
        validate_model(self)

    @property
    def d_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_gated(self) -> bool:
        """Three FFN matrices, ``W2 (act(W1 x) ⊙ W3 x)`` (SwiGLU, GeGLU)."""
        return FFN_KINDS[self.ffn][0]

    @property
    def ffn_activation(self) -> str:
        """``silu``, ``gelu_tanh``, ``gelu`` or ``relu``."""
        return FFN_KINDS[self.ffn][1]

    @property
    def moe(self) -> bool:
        """The FFN of every block is a mixture of experts (``scaling.moe``)."""
        return self.n_experts > 0

    @property
    def rope_scaled(self) -> bool:
        return self.positions == "rope" and self.rope_scaling_factor != 1.0

    @property
    def mup_width_multiplier(self) -> float:
        """m = d_model / base_width under muP, 1 otherwise."""
        return self.d_model / self.mup_base_width if self.mup else 1.0


_CHOICES = {
    "family": FAMILIES,
    "dtype": DTYPES,
    "remat": REMATS,
    "attention": ATTENTIONS,
    "norm": NORMS,
    "positions": POSITIONS,
    "ffn": FFNS,
    "moe_dispatch": MOE_DISPATCHES,
}
_BOOLS = (
    "tied_embeddings", "norm_bias", "norm_unit_offset", "qkv_bias", "attn_out_bias", "ffn_bias",
    "head_bias", "embed_scale", "scan_layers", "mup", "mup_zero_readout", "moe_shared_expert",
)  # fmt: skip


def validate_model(cfg: ModelConfig) -> None:
    """Raise ``ValueError`` naming the bad field and what would be valid."""
    for name, valid in _CHOICES.items():
        if getattr(cfg, name) not in valid:
            raise ValueError(f"unknown {name} {getattr(cfg, name)!r}; valid: {', '.join(valid)}")
    for name in _BOOLS:
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    for name in ("n_layers", "d_model", "n_heads", "d_ff", "vocab_size", "max_seq_len"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name in ("n_kv_heads", "head_dim", "sliding_window"):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value <= 0):  # fmt: skip
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    for name in ("attn_softcap", "final_softcap"):
        value = getattr(cfg, name)
        if value is not None and not (isinstance(value, int | float) and value > 0):
            raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    if not (cfg.norm_eps > 0 and cfg.rope_theta > 0):
        raise ValueError(f"norm_eps and rope_theta must be positive, got {cfg.norm_eps}, "
                         f"{cfg.rope_theta}")  # fmt: skip
    if cfg.head_dim is None and cfg.d_model % cfg.n_heads:
        raise ValueError(
            f"d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}; "
            "choose n_heads dividing d_model or set head_dim"
        )
    if cfg.n_heads % cfg.kv_heads:
        raise ValueError(f"n_heads={cfg.n_heads} is not divisible by n_kv_heads={cfg.kv_heads}")
    if cfg.positions == "rope" and cfg.d_head % 2:
        raise ValueError(f"RoPE needs an even head dimension, got d_head={cfg.d_head}")
    if cfg.positions == "sinusoidal" and cfg.d_model % 2:
        raise ValueError(f"sinusoidal positions need an even d_model, got {cfg.d_model}")
    if cfg.norm_bias and cfg.norm != "layer":
        raise ValueError("norm_bias needs norm='layer' (RMSNorm has no shift)")
    if cfg.norm_unit_offset and cfg.norm != "rms":
        raise ValueError("norm_unit_offset needs norm='rms' (Gemma's (1 + w) RMSNorm)")
    if cfg.rope_scaling_factor < 1 or cfg.rope_high_freq_factor <= cfg.rope_low_freq_factor:
        raise ValueError(
            f"RoPE scaling needs factor >= 1 and high_freq_factor > low_freq_factor, got "
            f"{cfg.rope_scaling_factor}, {cfg.rope_high_freq_factor}, {cfg.rope_low_freq_factor}"
        )
    if cfg.mup and cfg.tied_embeddings:
        raise ValueError(
            "muP needs an untied head (input and output embeddings scale differently); "
            "set tied_embeddings=False"
        )
    if cfg.mup:
        _validate_mup(cfg)
    _validate_moe(cfg)


def _validate_moe(cfg: ModelConfig) -> None:
    for name in ("n_experts", "experts_per_token"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if cfg.moe and not 1 <= cfg.experts_per_token <= cfg.n_experts:
        raise ValueError(
            f"experts_per_token={cfg.experts_per_token} is out of range; valid: "
            f"1..n_experts={cfg.n_experts}"
        )
    for name in ("moe_aux_loss_coef", "moe_z_loss_coef"):
        value = getattr(cfg, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if cfg.moe and cfg.ffn_bias:
        raise ValueError("a mixture of experts has no FFN biases; set ffn_bias=False")
    factor = cfg.moe_capacity_factor
    if not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 0):
        raise ValueError(f"moe_capacity_factor must be a positive number, got {factor!r}")


def _validate_mup(cfg: ModelConfig) -> None:
    if cfg.mup_base_width <= 0:
        raise ValueError(f"mup_base_width must be positive, got {cfg.mup_base_width}")
    base_head = cfg.mup_base_head_dim or cfg.d_head
    if base_head <= 0 or cfg.mup_base_width % base_head:
        raise ValueError(
            f"mup_base_width={cfg.mup_base_width} is not a multiple of the base head width "
            f"{base_head}; choose a base width divisible by it"
        )
    for name in ("mup_input_multiplier", "mup_output_multiplier", "mup_attn_multiplier"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value}")


MODEL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelConfig))


def model_config_from_dict(data: dict) -> ModelConfig:
    """A ``ModelConfig`` from ``dataclasses.asdict`` output (e.g. checkpoint metadata);
    ``ValueError`` naming unknown keys."""
    unknown = sorted(set(data) - set(MODEL_FIELDS))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; valid: {', '.join(MODEL_FIELDS)}")
    return ModelConfig(**data)


@dataclass(frozen=True)
class RunConfig:
    """One training run of the shared model. A run is a value: RunConfig in, RunResult out."""

    model: ModelConfig
    steps: int = 50
    batch: int = 8  # global batch, in sequences
    seq: int = 128
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr·min_lr_ratio
    lr_warmup_steps: int = 10  # learning-rate warm-up (not the timing warm-up)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.95
    seed: int = 0
    data: str = "synthetic"  # "synthetic", a .bin/.npy token file, or a prepared directory
    mode: str = "none"  # one of scaling.sharding.MODES
    mesh: tuple[int, int] | None = None  # (data, tensor); None picks the mode's default
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0  # 0: only at the end (when checkpoint_dir is set)
    resume: bool = False
    overwrite: bool = False  # a fresh run may delete the checkpoints found in checkpoint_dir
    allow_config_change: tuple[str, ...] = ()  # fields a resumed run may change (RESUME_CHANGEABLE)
    init: str | None = None  # initial weights (``scaling convert from-hf``); resume wins
    timing_warmup_steps: int = 1  # steps excluded from timing statistics (not the LR warm-up)
    # Steps per timed window: the host dispatches them without waiting and blocks once at the
    # window's end; each step's time is the window's mean (scaling.measure.StepClock). 1: every
    # step is timed to completion on its own.
    sync_every: int = 1
    # Optimizer steps per call of the compiled program (a loop over stacked batches on the
    # device, Keras's steps_per_execution): one dispatch, one set of temporaries and one metrics
    # fetch for up to K steps; timed windows hold at least K steps. 1: one step per call.
    steps_per_call: int = 1
    # Validation loss every K steps and after the last one (0: only after the last step, and
    # only when the data has a validation split, i.e. a prepared directory).
    eval_every: int = 0
    eval_batches: int = 8  # batches of ``batch`` fixed validation windows per evaluation
    data_threads: int = 2  # Grain read threads preparing batches ahead of the loop (0: inline)
    data_prefetch: int = 8  # batches buffered ahead
    data_processes: int = 0  # Grain worker processes (0: threads of this process only)
    # Cross-entropy over chunks of this many positions (scaling.loss), so the (b, t, v) float32
    # logits are never all live; 0: the whole logits at once. Must divide seq.
    loss_chunk: int = 0

    def __post_init__(self) -> None:
        validate_run(self)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq

    @property
    def evaluates(self) -> bool:
        """Whether the run measures validation loss (see ``eval_every``)."""
        return self.eval_every > 0 or is_prepared(self.data)


MAX_STEPS = 2**31 - 1  # the step counter of the train state is int32


def validate_run(run: RunConfig) -> None:
    if not 0 < run.steps <= MAX_STEPS:
        raise ValueError(f"steps must be in 1..{MAX_STEPS}, got {run.steps}")
    if run.batch <= 0:
        raise ValueError(f"batch must be positive, got {run.batch}")
    if run.seq <= 0 or run.seq > run.model.max_seq_len:
        raise ValueError(
            f"seq={run.seq} is out of range; valid: 1..{run.model.max_seq_len} "
            f"(the context of {run.model.name})"
        )
    if not run.lr > 0 or not math.isfinite(run.lr):
        raise ValueError(f"lr must be a positive finite number, got {run.lr}")
    if not 0 <= run.lr_warmup_steps <= MAX_STEPS:
        raise ValueError(f"warmup must be in 0..{MAX_STEPS}, got {run.lr_warmup_steps}")
    check_mode(run.mode)
    if run.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {run.checkpoint_every}")
    for name in ("eval_every", "data_threads", "data_processes"):
        if getattr(run, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(run, name)}")
    for name in ("eval_batches", "data_prefetch", "sync_every", "steps_per_call"):
        if getattr(run, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(run, name)}")
    _check_loss_chunk(run.loss_chunk, run.seq)
    unknown = [f for f in run.allow_config_change if f not in RESUME_CHANGEABLE]
    if unknown:
        raise ValueError(
            f"--allow-config-change: unknown field {unknown[0]!r}; valid: "
            f"{', '.join(RESUME_CHANGEABLE)}"
        )


def _check_loss_chunk(loss_chunk: int, seq: int) -> None:
    """``ValueError`` unless ``loss_chunk`` is 0 (whole logits) or a divisor of ``seq``."""
    if isinstance(loss_chunk, bool) or not isinstance(loss_chunk, int) or loss_chunk < 0:
        raise ValueError(f"loss_chunk must be 0 (whole logits) or a positive integer, got "
                         f"{loss_chunk!r}")  # fmt: skip
    if loss_chunk and seq % loss_chunk:
        divisors = [c for c in range(1, seq) if seq % c == 0][-3:]
        raise ValueError(
            f"loss_chunk={loss_chunk} does not divide seq={seq}; use 0 (whole logits) or a "
            f"divisor of seq, e.g. {', '.join(map(str, divisors))}"
        )


# Resuming a checkpoint under another RunConfig (scaling.checkpoint): fields named bare,
# model fields without their "model." prefix. Free: how the run is laid out, loaded, evaluated
# and saved, not what it trains (the state is resharded to another mode or mesh on restore).
RESUME_FREE = (
    "mode",
    "mesh",
    "checkpoint_dir",
    "checkpoint_every",
    "resume",
    "overwrite",
    "allow_config_change",
    "timing_warmup_steps",
    "sync_every",
    "steps_per_call",
    "eval_every",
    "eval_batches",
    "data_threads",
    "data_prefetch",
    "data_processes",
    "name",
    "remat",
    "scan_layers",
    "attention",
    "loss_chunk",
)
# Fixed: the shapes and structure of the saved state (muP adds an optimizer stage).
RESUME_FIXED = (
    "family",
    "n_layers",
    "d_model",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "d_ff",
    "vocab_size",
    "max_seq_len",
    "tied_embeddings",
    "mup",
    "n_experts",
    "moe_shared_expert",
)
# Everything else (batch, seed, data, LR schedule, optimizer, numerics) changes what the resumed
# run computes: refused unless listed in allow_config_change.
RESUME_CHANGEABLE = tuple(
    name
    for name in [f.name for f in fields(RunConfig) if f.name != "model"]
    + [f.name for f in fields(ModelConfig)]
    if name not in RESUME_FREE + RESUME_FIXED
)


def resume_differences(saved: dict, now: dict) -> tuple[dict, dict]:
    """Differences between two ``dataclasses.asdict`` RunConfigs (JSON-normalised) as
    ``({fixed field: (saved, now)}, {changeable field: (saved, now)})``. A field the saved
    config lacks (an older version) is not compared."""
    flat_saved = {**{k: v for k, v in saved.items() if k != "model"}, **saved.get("model", {})}
    flat_now = {**{k: v for k, v in now.items() if k != "model"}, **now["model"]}
    diffs = {
        k: (flat_saved[k], v)
        for k, v in flat_now.items()
        if k in flat_saved and k not in RESUME_FREE and flat_saved[k] != v
    }
    fixed = {k: v for k, v in diffs.items() if k in RESUME_FIXED}
    return fixed, {k: v for k, v in diffs.items() if k not in RESUME_FIXED}


def parse_mesh(text: str) -> tuple[int, int]:
    """Parse ``DxT`` (e.g. ``4x2``) into (data, tensor)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"bad mesh {text!r}; expected DxT with positive integers, e.g. 4x2")
    return int(parts[0]), int(parts[1])
