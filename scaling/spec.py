"""Sweeps as data: a grid of run settings from CLI options or a TOML spec in ``sweeps/``, and the
RunConfig of one grid point. Never imports jax."""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from scaling.config import MUP_KNOBS, RunConfig, parse_mesh
from scaling.presets import build_run, get_preset, load_model
from scaling.roles import tensor_split_dims
from scaling.sharding import MODES, check_device_count, default_mesh_shape, validate_plan

SWEEP_AXES = (
    "size",
    "model",
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
    "steps",
    "tokens",
    "layers",
    "mesh",
    *MUP_KNOBS,
    "attention",
    "loss_chunk",
)
# Optional settings: absent from SWEEP_DEFAULTS (so run ids of sweeps that do not set them stay
# what they were); RunConfig's defaults apply when a spec leaves them out.
LOADER_AND_EVAL = ("eval_every", "eval_batches", "data_threads", "data_prefetch", "data_processes")
# Shape and length overrides, optional in the same way: ``layers`` replaces the preset's depth;
# ``tokens`` is a token budget per run, which sets steps = round(tokens / (batch · seq)).
SHAPE_AND_LENGTH = ("layers", "tokens")
# Kernels (attention implementation, chunked loss), optional in the same way: absent, the
# reference attention and the whole-logits loss run, and old run ids stay what they were.
KERNELS = ("attention", "loss_chunk")
# How the host times and calls the steps (RunConfig.sync_every, steps_per_call), optional in
# the same way: absent, each step is its own call, timed to completion, and old run ids stay
# what they were.
HOST_LOOP = ("sync_every", "steps_per_call")
SWEEP_FIXED = (
    "model",
    "mode",
    "width",
    "tied",
    "steps",
    "timing_warmup_steps",
    "lr_warmup_steps",
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
    *SHAPE_AND_LENGTH,
    *KERNELS,
    *HOST_LOOP,
    *LOADER_AND_EVAL,
    *MUP_KNOBS,
    "peak_tflops",  # a device's peak / HBM bandwidth when it has no profile (measurement only)
    "hbm_gbps",
)
# The muP knobs (``MUP_KNOBS``) have no entry in SWEEP_DEFAULTS: absent, the ModelConfig
# default applies and the run id of a spec that does not name them stays what it was.
# Setting names of earlier versions: a spec that uses one is told the new name.
RENAMED_SETTINGS = {"warmup_steps": "timing_warmup_steps", "lr_warmup": "lr_warmup_steps"}
SWEEP_DEFAULTS: dict[str, object] = {
    "mode": "none",
    "mup": False,
    "steps": 6,
    "timing_warmup_steps": 1,
    "lr_warmup_steps": 2,
    "batch": 8,
    "seq": 128,
    "lr": 3e-3,
    "mesh": None,
    "devices": None,
    "dtype": "float32",
    "remat": "none",
    "family": None,  # the preset's own family; filled in per run by ``SweepSpec.grid``
    "data": "synthetic",
    "seed": 0,
    "timeout_s": 1800.0,
    "width": None,
    "tied": None,
}


def _unknown(kind: str, key: str, valid: tuple[str, ...]) -> ValueError:
    if key in RENAMED_SETTINGS:
        return ValueError(f"sweep {kind} {key!r} is now called {RENAMED_SETTINGS[key]!r}")
    return ValueError(f"unknown sweep {kind} {key!r}; valid: {', '.join(valid)}")


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

    ``model`` (an axis or a fixed setting) takes Hugging Face ``config.json`` paths instead of
    presets; each run's ``size`` is then the model's name (its folder's). ``family`` left unset
    is the model's own (a preset's or the config's model type), so a run's settings, and its
    run id, name the family it ran.

    ``points`` (TOML ``[[points]]`` tables of axis settings) are runs that are not a product,
    e.g. the (size, steps) pairs of an IsoFLOP study (``scaling plan``): the grid is every
    point combined with every combination of the ``axes``.
    """

    name: str
    axes: dict[str, list] = field(default_factory=dict)
    fixed: dict[str, object] = field(default_factory=dict)
    description: str = ""
    points: list[dict[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key in self.axes:
            if key not in SWEEP_AXES:
                raise _unknown("axis", key, SWEEP_AXES)
            if not isinstance(self.axes[key], list) or not self.axes[key]:
                raise ValueError(f"sweep axis {key!r} must be a non-empty list")
        for key in self.fixed:
            if key not in SWEEP_FIXED:
                raise _unknown("setting", key, SWEEP_FIXED)
        self._check_points()
        sizes = [*self.axes.get("size", []), *(p["size"] for p in self.points if "size" in p)]
        given = [*self.axes.get("model", [self.fixed.get("model")])]
        models = [m for m in [*given, *(p.get("model") for p in self.points)] if m is not None]
        every_point = all("size" in p or "model" in p for p in self.points)
        named = "size" in self.axes or "model" in self.axes or self.fixed.get("model") is not None
        if bool(sizes) == bool(models) or not (named or (self.points and every_point)):
            raise ValueError(
                "a sweep needs a 'size' axis (presets, e.g. size = [\"tiny\"]) or 'model' "
                "paths (Hugging Face config.json), not both"
            )
        for size in sizes:
            get_preset(size)
        for model in models:
            load_model(model)
        for mode in self.axes.get("mode", []):
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}, all")

    def _check_points(self) -> None:
        for point in self.points:
            if not isinstance(point, dict) or not point:
                raise ValueError(f"a sweep point must be a table of settings, got {point!r}")
            for key in point:
                if key not in SWEEP_AXES:
                    raise _unknown("point setting", key, SWEEP_AXES)
        sources = [self.fixed, self.axes, *self.points]
        if any("tokens" in x for x in sources) and any("steps" in x for x in sources):
            raise ValueError("give 'steps' or 'tokens' (a token budget per run), not both")

    def duplicates(self) -> dict[str, list]:
        """Axis values listed more than once (``grid`` runs each once)."""
        return {
            key: [v for i, v in enumerate(values) if v in values[:i]]
            for key, values in self.axes.items()
            if len(_unique(values)) < len(values)
        }

    def grid(self) -> list[dict[str, object]]:
        """Run settings, one dict per run, in a stable order (points, then axes varying
        last-fastest); a value repeated on an axis counts once."""
        keys = list(self.axes)
        runs = []
        for point in self.points or [{}]:
            for values in itertools.product(*(_unique(self.axes[k]) for k in keys)):
                chosen = dict(zip(keys, values, strict=True))
                settings = {**SWEEP_DEFAULTS, **self.fixed, **point, **chosen}
                if settings.get("tokens") is not None:
                    settings["steps"] = steps_of(settings)
                runs.append({"sweep": self.name, **_with_model_labels(settings)})
        return runs


def _unique(values: list) -> list:
    return [v for i, v in enumerate(values) if v not in values[:i]]


def _with_model_labels(settings: dict) -> dict:
    """``size`` (the model's name for a ``model`` path) and ``family`` (the model's own when
    unset) of one run, so the record names what ran."""
    settings = dict(settings)
    if settings.get("model") is not None:
        cfg = load_model(settings["model"])
        settings["size"] = cfg.name
    else:
        settings.pop("model", None)
        cfg = get_preset(settings["size"])
    if settings.get("family") is None:
        settings["family"] = cfg.family
    return settings


def load_sweep_spec(path: str) -> SweepSpec:
    """Parse a TOML sweep spec; raise ValueError naming the file and the problem."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"sweep spec {path!r} not found")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"sweep spec {path!r} is not valid TOML: {exc}") from None
    unknown = set(data) - {"name", "description", "axes", "fixed", "points"}
    if unknown:
        raise ValueError(
            f"sweep spec {path!r}: unknown keys {sorted(unknown)}; "
            "valid: name, description, axes, fixed, points"
        )
    try:
        return SweepSpec(
            name=data.get("name", p.stem),
            axes=data.get("axes", {}),
            fixed=data.get("fixed", {}),
            description=data.get("description", ""),
            points=data.get("points", []),
        )
    except ValueError as exc:
        raise ValueError(f"sweep spec {path!r}: {exc}") from None


def steps_of(settings: dict) -> int:
    """The steps of a run with a token budget: tokens / (batch · seq), rounded, ≥ 1."""
    tokens = settings["tokens"]
    if not (isinstance(tokens, int | float) and tokens > 0):
        raise ValueError(f"tokens must be a positive number, got {tokens!r}")
    return max(1, round(tokens / (settings["batch"] * settings["seq"])))


CPU_DEFAULT_DEVICES = 4


def default_devices(settings: dict) -> int:
    """Simulated CPU devices a run needs: its mesh, else 4 for sharded modes, else 1.

    Four, not eight: simulated devices share one host's RAM and cores, and each holds its own
    XLA scratch space (measured: 350m fsdp_tp, batch 8 × 128, 8 devices 19.1 GB vs 4 devices
    13.0 GB of host memory), so fewer devices keep GPT-3-sized presets within a 24 GiB host.
    Ignored on accelerators, where the mesh spans the real devices."""
    if settings.get("devices"):
        return int(settings["devices"])
    if settings.get("mesh"):
        d, t = parse_mesh(str(settings["mesh"]))
        return d * t
    return 1 if settings["mode"] == "none" else CPU_DEFAULT_DEVICES


def validate_settings(settings: dict) -> RunConfig:
    """The RunConfig of one sweep run, after the checks a run would otherwise fail minutes
    later: the device count, the timeout, and, when the mesh or the device count is given,
    the plan (``scaling.sharding.validate_plan``, the one validation ``train`` uses)."""
    run = run_config_from_settings(settings)
    devices = settings.get("devices")
    if devices is not None:
        check_device_count(int(devices))
    timeout = settings.get("timeout_s")
    if timeout is not None and not (isinstance(timeout, int | float) and 0 < timeout < math.inf):
        raise ValueError(f"--timeout must be a positive number of seconds, got {timeout}")
    if devices is None and run.mesh is None:
        return run  # the mode's default mesh spans the devices the worker finds
    n = default_devices(settings)
    mesh = run.mesh or default_mesh_shape(run.mode, n)
    validate_plan(
        run.mode,
        mesh,
        tensor_divides=tensor_split_dims(run.model),
        batch=run.batch,
        model_name=run.model.name,
        n_devices=n if run.mode != "none" else None,
        n_experts=run.model.n_experts,
    )
    return run


def run_config_from_settings(settings: dict) -> RunConfig:
    """The RunConfig of one sweep run's settings."""
    return build_run(
        settings["size"],
        model=settings.get("model"),
        family=settings["family"],
        dtype=settings["dtype"],
        remat=settings["remat"],
        attention=settings.get("attention"),
        mup=bool(settings["mup"]),
        mesh=settings["mesh"],
        width=settings.get("width"),
        tied=settings.get("tied"),
        layers=settings.get("layers"),
        mode=settings["mode"],
        steps=settings["steps"],
        batch=settings["batch"],
        seq=settings["seq"],
        lr=settings["lr"],
        lr_warmup_steps=settings["lr_warmup_steps"],
        seed=settings["seed"],
        data=settings["data"],
        timing_warmup_steps=settings["timing_warmup_steps"],
        **{k: settings[k] for k in LOADER_AND_EVAL + HOST_LOOP if settings.get(k) is not None},
        **({"loss_chunk": settings["loss_chunk"]} if settings.get("loss_chunk") else {}),
        mup_knobs={key: settings.get(key) for key in MUP_KNOBS},
    )
