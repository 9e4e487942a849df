"""Typed, frozen configuration: the model, its presets (as data), and one training run.

This module never imports jax, so the CLI's ``presets``/``estimate`` commands start instantly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

Family = Literal["llama", "gpt2"]
Dtype = Literal["float32", "bfloat16"]
Remat = Literal["none", "full", "dots"]
Mode = Literal["none", "dp", "fsdp", "tp", "fsdp_tp"]

FAMILIES: tuple[str, ...] = ("llama", "gpt2")
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
REMATS: tuple[str, ...] = ("none", "full", "dots")
MODES: tuple[str, ...] = ("none", "dp", "fsdp", "tp", "fsdp_tp")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the shared decoder-only LM.

    ``d_ff`` is the hidden width of the FFN. For ``llama`` (SwiGLU, three matrices) the presets
    use ≈ 8/3·d_model rounded up to a multiple of 64, which keeps the parameter count of a GPT
    MLP with 4·d_model (two matrices).
    """

    name: str = "custom"
    family: Family = "llama"
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 8
    n_kv_heads: int | None = None  # grouped-query attention; None means n_heads
    head_dim: int | None = None  # None means d_model // n_heads
    d_ff: int = 352
    vocab_size: int = 2048
    max_seq_len: int = 512
    tied_embeddings: bool = True
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    dtype: Dtype = "float32"  # compute dtype; parameters are always float32
    remat: Remat = "none"
    scan_layers: bool = True  # False unrolls the layer loop (used to let XLA count FLOPs)
    init_std: float = 0.02  # std of embeddings (and of the muP base for hidden matrices)
    # muP (Tensor Programs V); with mup=False the model is standard parametrization.
    mup: bool = False
    mup_base_width: int = 128
    mup_input_multiplier: float = 1.0
    mup_output_multiplier: float = 1.0
    mup_zero_readout: bool = False  # muP option: zero-initialised untied head

    def __post_init__(self) -> None:
        validate_model(self)

    @property
    def d_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def mup_width_multiplier(self) -> float:
        """m = d_model / base_width under muP, 1 otherwise."""
        return self.d_model / self.mup_base_width if self.mup else 1.0


def validate_model(cfg: ModelConfig) -> None:
    """Raise ``ValueError`` naming the bad field and what would be valid."""
    if cfg.family not in FAMILIES:
        raise ValueError(f"unknown family {cfg.family!r}; valid: {', '.join(FAMILIES)}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; valid: {', '.join(DTYPES)}")
    if cfg.remat not in REMATS:
        raise ValueError(f"unknown remat {cfg.remat!r}; valid: {', '.join(REMATS)}")
    for name in ("n_layers", "d_model", "n_heads", "d_ff", "vocab_size", "max_seq_len"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
    if cfg.head_dim is None and cfg.d_model % cfg.n_heads:
        raise ValueError(
            f"d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}; "
            "choose n_heads dividing d_model"
        )
    if cfg.n_heads % cfg.kv_heads:
        raise ValueError(f"n_heads={cfg.n_heads} is not divisible by n_kv_heads={cfg.kv_heads}")
    if cfg.family == "llama" and cfg.d_head % 2:
        raise ValueError(f"RoPE needs an even head dimension, got d_head={cfg.d_head}")
    if cfg.mup and cfg.tied_embeddings:
        raise ValueError(
            "muP needs an untied head (input and output embeddings scale differently); "
            "set tied_embeddings=False"
        )
    if cfg.mup and cfg.mup_base_width <= 0:
        raise ValueError(f"mup_base_width must be positive, got {cfg.mup_base_width}")


def swiglu_hidden(d_model: int, multiple: int = 64) -> int:
    """SwiGLU width with the parameter count of a 4·d_model GELU MLP: 8/3·d, rounded up."""
    return multiple * math.ceil(8 * d_model / 3 / multiple)


GPT3_VOCAB = 50304  # GPT-2's 50257 padded to a multiple of 64 (nanoGPT's choice)
GPT3_CONTEXT = 2048
CPU_VOCAB = 2048


def _preset(name: str, n_layers: int, d_model: int, n_heads: int, *, gpt3: bool) -> ModelConfig:
    return ModelConfig(
        name=name,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_ff=swiglu_hidden(d_model),
        vocab_size=GPT3_VOCAB if gpt3 else CPU_VOCAB,
        max_seq_len=GPT3_CONTEXT if gpt3 else 512,
    )


# GPT-3 ladder: Brown et al. 2020, table 2.1. Two rows of the paper are inconsistent with
# d_model = n_heads·d_head and are fixed here: 1.3B uses 16 heads of 128 (paper: 24 heads),
# 13B uses d_model 5120 (paper: 5140).
PRESETS: dict[str, ModelConfig] = {
    p.name: p
    for p in (
        _preset("tiny", 4, 128, 8, gpt3=False),
        _preset("10m", 12, 256, 8, gpt3=False),
        _preset("30m", 16, 384, 8, gpt3=False),
        _preset("125m", 12, 768, 12, gpt3=True),
        _preset("350m", 24, 1024, 16, gpt3=True),
        _preset("760m", 24, 1536, 16, gpt3=True),
        _preset("1.3b", 24, 2048, 16, gpt3=True),
        _preset("2.7b", 32, 2560, 32, gpt3=True),
        _preset("6.7b", 32, 4096, 32, gpt3=True),
        _preset("13b", 40, 5120, 40, gpt3=True),
        _preset("175b", 96, 12288, 96, gpt3=True),
    )
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown size {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


def with_width(cfg: ModelConfig, width: int) -> ModelConfig:
    """The same depth and head width at another d_model (heads = width / d_head): the width
    axis of muP studies."""
    if width <= 0 or width % cfg.d_head:
        raise ValueError(f"width {width} must be a positive multiple of d_head={cfg.d_head}")
    d_ff = 4 * width if cfg.family == "gpt2" else swiglu_hidden(width)
    return dataclasses.replace(
        cfg,
        name=f"{cfg.name}@{width}",
        d_model=width,
        n_heads=width // cfg.d_head,
        n_kv_heads=None,
        head_dim=None,
        d_ff=d_ff,
    )


def with_family(cfg: ModelConfig, family: Family) -> ModelConfig:
    """The same widths in the other family (gpt2 uses a 4·d_model GELU MLP)."""
    if family == cfg.family:
        return cfg
    d_ff = 4 * cfg.d_model if family == "gpt2" else swiglu_hidden(cfg.d_model)
    return dataclasses.replace(cfg, family=family, d_ff=d_ff)


@dataclass(frozen=True)
class RunConfig:
    """One training run of the shared model. A run is a value: RunConfig in, RunResult out."""

    model: ModelConfig = field(default_factory=lambda: PRESETS["tiny"])
    steps: int = 50
    batch: int = 8  # global batch, in sequences
    seq: int = 128
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr·min_lr_ratio
    warmup_steps: int = 10  # learning-rate warm-up (not the timing warm-up)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.95
    seed: int = 0
    data: str = "synthetic"  # "synthetic" or a path to a .bin/.npy token file
    mode: Mode = "none"
    mesh: tuple[int, int] | None = None  # (data, tensor); None picks the mode's default
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0  # 0: only at the end (when checkpoint_dir is set)
    resume: bool = False
    timing_warmup_steps: int = 1  # steps excluded from timing statistics

    def __post_init__(self) -> None:
        validate_run(self)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq


def validate_run(run: RunConfig) -> None:
    if run.steps < 0:
        raise ValueError(f"steps must be >= 0, got {run.steps}")
    if run.batch <= 0:
        raise ValueError(f"batch must be positive, got {run.batch}")
    if run.seq <= 0 or run.seq > run.model.max_seq_len:
        raise ValueError(
            f"seq={run.seq} is out of range; valid: 1..{run.model.max_seq_len} "
            f"(the context of {run.model.name})"
        )
    if not run.lr > 0 or not math.isfinite(run.lr):
        raise ValueError(f"lr must be a positive finite number, got {run.lr}")
    if run.warmup_steps < 0:
        raise ValueError(f"warmup must be >= 0, got {run.warmup_steps}")
    if run.mode not in MODES:
        raise ValueError(f"unknown mode {run.mode!r}; valid: {', '.join(MODES)}")
    if run.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {run.checkpoint_every}")


def parse_mesh(text: str) -> tuple[int, int]:
    """Parse ``DxT`` (e.g. ``4x2``) into (data, tensor)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"bad mesh {text!r}; expected DxT with positive integers, e.g. 4x2")
    return int(parts[0]), int(parts[1])


def build_run(
    size: str = "tiny",
    *,
    family: str | None = None,
    dtype: str | None = None,
    remat: str | None = None,
    mup: bool = False,
    mesh: str | tuple[int, int] | None = None,
    width: int | None = None,
    tied: bool | None = None,
    layers: int | None = None,
    **run_fields,
) -> RunConfig:
    """A RunConfig from a preset name plus overrides (what the CLI and sweeps call)."""
    model = get_preset(size)
    if width is not None:
        model = with_width(model, width)
    if family is not None:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
        model = with_family(model, family)
    overrides = {k: v for k, v in (("dtype", dtype), ("remat", remat)) if v is not None}
    if tied is not None:
        overrides["tied_embeddings"] = bool(tied)
    if layers is not None:
        overrides.update(n_layers=layers, name=f"{model.name}-L{layers}")
    if mup:
        if tied:
            raise ValueError("muP needs an untied head; drop tied=true or use mup=false")
        overrides.update(mup=True, tied_embeddings=False)
    model = dataclasses.replace(model, **overrides)
    if isinstance(mesh, str):
        mesh = parse_mesh(mesh)
    return RunConfig(model=model, mesh=mesh, **run_fields)


# ---------------------------------------------------------------------------------------------
# Sweeps: a grid of run settings, from CLI options or a TOML spec in sweeps/.

SWEEP_AXES = (
    "size",
    "mode",
    "mup",
    "family",
    "dtype",
    "remat",
    "lr",
    "batch",
    "seq",
    "seed",
    "width",
    "tied",
)
SWEEP_FIXED = (
    "mode",
    "width",
    "tied",
    "steps",
    "warmup_steps",
    "lr_warmup",
    "batch",
    "seq",
    "lr",
    "mesh",
    "devices",
    "dtype",
    "remat",
    "family",
    "data",
    "seed",
    "timeout_s",
    "mup",
)
SWEEP_DEFAULTS: dict[str, object] = {
    "mode": "none",
    "mup": False,
    "steps": 6,
    "warmup_steps": 1,
    "lr_warmup": 2,
    "batch": 8,
    "seq": 128,
    "lr": 3e-3,
    "mesh": None,
    "devices": None,
    "dtype": "float32",
    "remat": "none",
    "family": "llama",
    "data": "synthetic",
    "seed": 0,
    "timeout_s": 1800.0,
    "width": None,
    "tied": None,
}


@dataclass(frozen=True)
class SweepSpec:
    """A declarative grid: every combination of ``axes`` with the ``fixed`` settings.

    TOML form (see ``sweeps/*.toml``)::

        name = "smoke"
        [axes]
        size = ["tiny"]
        mode = ["dp", "fsdp"]
        [fixed]
        steps = 4
    """

    name: str
    axes: dict[str, list] = field(default_factory=dict)
    fixed: dict[str, object] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        for key in self.axes:
            if key not in SWEEP_AXES:
                raise ValueError(f"unknown sweep axis {key!r}; valid: {', '.join(SWEEP_AXES)}")
            if not isinstance(self.axes[key], list) or not self.axes[key]:
                raise ValueError(f"sweep axis {key!r} must be a non-empty list")
        for key in self.fixed:
            if key not in SWEEP_FIXED:
                raise ValueError(f"unknown sweep setting {key!r}; valid: {', '.join(SWEEP_FIXED)}")
        if "size" not in self.axes:
            raise ValueError("a sweep needs a 'size' axis, e.g. size = [\"tiny\"]")
        for size in self.axes["size"]:
            get_preset(size)
        for mode in self.axes.get("mode", []):
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}, all")

    def grid(self) -> list[dict[str, object]]:
        """Run settings, one dict per run, in a stable order (axes vary last-fastest)."""
        import itertools

        keys = list(self.axes)
        runs = []
        for values in itertools.product(*(self.axes[k] for k in keys)):
            settings = {**SWEEP_DEFAULTS, **self.fixed, **dict(zip(keys, values, strict=True))}
            runs.append({"sweep": self.name, **settings})
        return runs


def load_sweep_spec(path: str) -> SweepSpec:
    """Parse a TOML sweep spec; raise ValueError naming the file and the problem."""
    import tomllib
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"sweep spec {path!r} not found")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"sweep spec {path!r} is not valid TOML: {exc}") from None
    unknown = set(data) - {"name", "description", "axes", "fixed"}
    if unknown:
        raise ValueError(
            f"sweep spec {path!r}: unknown keys {sorted(unknown)}; "
            "valid: name, description, axes, fixed"
        )
    return SweepSpec(
        name=data.get("name", p.stem),
        axes=data.get("axes", {}),
        fixed=data.get("fixed", {}),
        description=data.get("description", ""),
    )


def run_config_from_settings(settings: dict) -> RunConfig:
    """The RunConfig of one sweep run's settings."""
    return build_run(
        settings["size"],
        family=settings["family"],
        dtype=settings["dtype"],
        remat=settings["remat"],
        mup=bool(settings["mup"]),
        mesh=settings["mesh"],
        width=settings.get("width"),
        tied=settings.get("tied"),
        mode=settings["mode"],
        steps=settings["steps"],
        batch=settings["batch"],
        seq=settings["seq"],
        lr=settings["lr"],
        warmup_steps=settings["lr_warmup"],
        seed=settings["seed"],
        data=settings["data"],
        timing_warmup_steps=settings["warmup_steps"],
    )
