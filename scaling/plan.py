"""Study planners: sweep specs (``scaling.spec``) for scaling-law studies. Never imports jax.

* ``plan_isoflop``: on each compute budget C, runs of several model sizes whose token counts
  spend C (Hoffmann et al. 2022, approach 2), centred on a guess of the optimum;
* ``plan_ladder``: each size trained for several multiples of tokens per parameter (OLMo's
  ladder; gives approach 1 several schedules per size and approach 3 a spread of N and D).

Compute is the project's own count: C = F·D with F the model FLOPs per token
(``scaling.estimate.flops_per_token``: 6·N_matmul plus attention, full t×t convention, the
figure each run records as ``model_flops_per_step``), i.e. C = 6·N·D with N the
FLOP-equivalent parameter count F/6. Steps are whole, so a run's compute lies within half a
step of its budget."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scaling.estimate import flops_per_token, param_counts
from scaling.presets import PRESETS, build_run
from scaling.spec import SweepSpec

TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022: ~20 tokens per parameter at the optimum
MIN_STEPS = 40


@dataclass(frozen=True)
class Shape:
    """A model of the study: a preset, optionally with another depth and width."""

    label: str  # as given: a preset name or LAYERSxWIDTH
    size: str
    layers: int | None
    width: int | None
    n_params: int  # total parameters
    flops_per_token: float  # model FLOPs per training token (FLOPs)

    def settings(self) -> dict[str, object]:
        extra = {"layers": self.layers, "width": self.width}
        return {"size": self.size, **{k: v for k, v in extra.items() if v is not None}}


def parse_shapes(text: str, *, base: str = "tiny", seq: int = 128, **model) -> list[Shape]:
    """Shapes from a comma list of presets (``tiny,10m``) or LAYERSxWIDTH on ``base``
    (``2x64,4x128``: depth and d_model, heads of the base's width); sorted by parameters.
    ``model``: build_run's overrides (family, mup, tied, data: the data sets the vocabulary)."""
    shapes = []
    for label in (p.strip() for p in text.split(",")):
        if not label:
            continue
        layers = width = None
        size = label
        if label not in PRESETS:
            parts = label.lower().split("x")
            if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
                valid = ", ".join(PRESETS)
                raise ValueError(f"bad size {label!r}; give a preset ({valid}) or LAYERSxWIDTH")
            size, layers, width = base, int(parts[0]), int(parts[1])
        cfg = build_run(size, layers=layers, width=width, seq=seq, **model).model
        fpt = flops_per_token(cfg, seq, causal_halving=False)
        shapes.append(Shape(label, size, layers, width, param_counts(cfg).total, fpt))
    if not shapes:
        raise ValueError("give at least one size, e.g. --sizes tiny or --sizes 2x64,4x128")
    labels = [s.label for s in shapes]
    if len(set(labels)) < len(labels):
        raise ValueError(f"sizes repeat: {','.join(labels)}")
    return sorted(shapes, key=lambda s: s.n_params)


@dataclass(frozen=True)
class PlannedRun:
    shape: Shape
    steps: int
    tokens: int
    budget: float | None  # the IsoFLOP budget it spends (FLOPs); None on a ladder

    @property
    def compute(self) -> float:
        return self.shape.flops_per_token * self.tokens

    def point(self) -> dict[str, object]:
        return {**self.shape.settings(), "steps": self.steps}


@dataclass
class Plan:
    name: str
    description: str
    runs: list[PlannedRun]
    fixed: dict[str, object] = field(default_factory=dict)

    def spec(self) -> SweepSpec:
        points = [r.point() for r in self.runs]
        return SweepSpec(self.name, {}, self.fixed, self.description, points)

    def to_toml(self) -> str:
        """The sweep spec as TOML, each point preceded by a comment of its N, D and C."""
        lines = [f"name = {_toml(self.name)}", f"description = {_toml(self.description)}", ""]
        lines += ["[fixed]", *(f"{k} = {_toml(v)}" for k, v in self.fixed.items() if v is not None)]
        for run in self.runs:
            budget = f"budget {run.budget:.3g}, " if run.budget else ""
            lines += [
                "",
                f"# {budget}N {run.shape.n_params:,}, D {run.tokens:,} tokens "
                f"({run.tokens / run.shape.n_params:.3g}/param), C {run.compute:.4g} FLOPs",
                "[[points]]",
                *(f"{k} = {_toml(v)}" for k, v in run.point().items()),
            ]
        return "\n".join(lines) + "\n"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{text}"'


def _run(shape: Shape, tokens: float, tokens_per_step: int, budget: float | None) -> PlannedRun:
    steps = max(1, round(tokens / tokens_per_step))
    return PlannedRun(shape, steps, steps * tokens_per_step, budget)


def plan_isoflop(
    shapes: list[Shape],
    budgets: list[float],
    *,
    points_per_budget: int = 5,
    tokens_per_param: float = TOKENS_PER_PARAM,
    tokens_per_step: int,
    min_steps: int = MIN_STEPS,
) -> list[PlannedRun]:
    """On each budget C (FLOPs), ``points_per_budget`` consecutive sizes (by parameters) with
    D = C / F tokens each, centred on the size whose D/N is nearest ``tokens_per_param``; sizes
    whose run would be shorter than ``min_steps`` are left out."""
    if points_per_budget < 3:
        raise ValueError(f"points per budget must be ≥ 3 for a parabola, got {points_per_budget}")
    ordered = sorted(budgets)
    for lo, hi in zip(ordered, ordered[1:], strict=False):
        if hi < 1.25 * lo:
            raise ValueError(
                f"budgets {lo:g} and {hi:g} are < 25 % apart; the fit groups runs by it"
            )
    runs = []
    for budget in ordered:
        if not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"bad budget {budget!r}; give positive FLOPs, e.g. 1e13")
        fits = [s for s in shapes if budget / s.flops_per_token / tokens_per_step >= min_steps]
        if len(fits) < 3:
            raise ValueError(
                f"budget {budget:g} gives ≥ {min_steps} steps to {len(fits)} of the sizes; "
                "a parabola needs 3: add smaller sizes or raise the budget"
            )
        ratio = [
            abs(math.log(budget / s.flops_per_token / s.n_params / tokens_per_param)) for s in fits
        ]
        k = min(points_per_budget, len(fits))
        start = min(max(0, ratio.index(min(ratio)) - k // 2), len(fits) - k)
        runs += [
            _run(s, budget / s.flops_per_token, tokens_per_step, budget)
            for s in fits[start : start + k]
        ]
    return runs


def plan_ladder(
    shapes: list[Shape],
    multiples: list[float],
    *,
    tokens_per_step: int,
    min_steps: int = MIN_STEPS,
) -> list[PlannedRun]:
    """Every size for each multiple m of tokens per parameter (D = m·N); runs shorter than
    ``min_steps`` are left out."""
    for m in multiples:
        if not (math.isfinite(m) and m > 0):
            raise ValueError(f"bad tokens per parameter {m!r}; give positive numbers, e.g. 5,10,20")
    runs = [
        _run(s, m * s.n_params, tokens_per_step, None)
        for s in shapes
        for m in sorted(multiples)
        if m * s.n_params / tokens_per_step >= min_steps
    ]
    if not runs:
        raise ValueError(f"every run would be shorter than {min_steps} steps; raise the multiples")
    return runs
