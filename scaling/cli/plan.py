"""`scaling plan isoflop|ladder`: write a study's sweep spec (TOML) to stdout, a summary to
stderr, so `scaling plan isoflop ... > spec.toml` captures only the spec."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from scaling.cli.common import err_console, split_list, user_errors

Opt = typer.Option
app = typer.Typer(
    help="Write sweep specs for scaling-law studies (TOML on stdout).", no_args_is_help=True
)

Sizes = Annotated[
    str, Opt(help="Comma list of presets (tiny,10m) or LAYERSxWIDTH on --base (2x64,4x128).")
]
Base = Annotated[str, Opt(help="Preset that LAYERSxWIDTH sizes modify (head width, vocab).")]
Batch = Annotated[int, Opt(help="Global batch (sequences).")]
Seq = Annotated[int, Opt(help="Sequence length.")]
Data = Annotated[str, Opt(help="'synthetic' or a `data prepare` directory (sets the vocab).")]
MinSteps = Annotated[int, Opt(help="Leave out runs shorter than this.")]
Lr = Annotated[float, Opt(help="Peak learning rate.")]
Warmup = Annotated[int, Opt("--lr-warmup-steps", help="Learning-rate warm-up steps.")]
Mup = Annotated[bool, Opt("--mup/--sp", help="muP (untied head) or standard parametrization.")]
EvalEvery = Annotated[
    int | None, Opt(help="Validation every K steps (default: the shortest run's steps).")
]
EvalBatches = Annotated[int, Opt(help="Validation batches per evaluation.")]
Name = Annotated[str | None, Opt(help="Sweep name (default: the command's).")]


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(p) for p in split_list(text)]
    except ValueError:
        raise ValueError(f"bad {option} {text!r}; give a comma list of numbers") from None


def _emit(plan, fixed: dict, eval_every: int | None) -> None:
    from scaling.spec import validate_settings

    shortest = min(r.steps for r in plan.runs)
    plan.fixed = {**fixed, "eval_every": eval_every or shortest}
    for settings in plan.spec().grid():  # the checks `scaling sweep` makes before it starts
        validate_settings(settings)
    table = Table(title=f"{plan.name}: {len(plan.runs)} runs", title_justify="left")
    for col in ("budget", "size", "params", "steps", "tokens", "tokens/param", "C (FLOPs)"):
        table.add_column(col, justify="right")
    for r in plan.runs:
        table.add_row(
            f"{r.budget:.3g}" if r.budget else "-",
            r.shape.label,
            f"{r.shape.n_params:,}",
            str(r.steps),
            f"{r.tokens:,}",
            f"{r.tokens / r.shape.n_params:.3g}",
            f"{r.compute:.3g}",
        )
    err_console.print(table)
    typer.echo(plan.to_toml(), nl=False)


def _fixed(batch, seq, data, lr, warmup, mup, eval_batches) -> dict:
    return {
        "mode": "none",
        "batch": batch,
        "seq": seq,
        "data": data,
        "lr": lr,
        "lr_warmup_steps": warmup,
        "timing_warmup_steps": 1,
        "mup": mup,
        "eval_batches": eval_batches,
    }


@app.command("isoflop")
def isoflop(
    budgets: Annotated[str, Opt(help="Comma list of compute budgets (FLOPs), e.g. 1e12,3e12.")],
    sizes: Sizes,
    points_per_budget: Annotated[int, Opt(help="Sizes per budget (≥ 3).")] = 5,
    tokens_per_param: Annotated[
        float, Opt(help="Centre each budget's sizes on this D/N (Chinchilla: ~20).")
    ] = 20.0,
    base: Base = "tiny",
    batch: Batch = 8,
    seq: Seq = 128,
    data: Data = "synthetic",
    min_steps: MinSteps = 40,
    lr: Lr = 3e-3,
    lr_warmup_steps: Warmup = 10,
    mup: Mup = False,
    eval_every: EvalEvery = None,
    eval_batches: EvalBatches = 8,
    name: Name = None,
) -> None:
    """IsoFLOP profiles: on each budget C, the sizes whose D = C / (FLOPs per token) is nearest
    --tokens-per-param, centred (C = 6·N·D with the project's FLOP count)."""
    from scaling.plan import Plan, parse_shapes, plan_isoflop

    with user_errors():
        shapes = parse_shapes(sizes, base=base, seq=seq, data=data, mup=mup)
        runs = plan_isoflop(
            shapes,
            _floats(budgets, "--budgets"),
            points_per_budget=points_per_budget,
            tokens_per_param=tokens_per_param,
            tokens_per_step=batch * seq,
            min_steps=min_steps,
        )
        description = f"IsoFLOP study: budgets {budgets} FLOPs, {points_per_budget} sizes each"
        plan = Plan(name or "isoflop", description, runs)
        _emit(plan, _fixed(batch, seq, data, lr, lr_warmup_steps, mup, eval_batches), eval_every)


@app.command("ladder")
def ladder(
    sizes: Sizes,
    tokens_per_param: Annotated[
        str, Opt(help="Comma list of token multiples per parameter, e.g. 5,10,20,40.")
    ] = "5,10,20,40",
    base: Base = "tiny",
    batch: Batch = 8,
    seq: Seq = 128,
    data: Data = "synthetic",
    min_steps: MinSteps = 40,
    lr: Lr = 3e-3,
    lr_warmup_steps: Warmup = 10,
    mup: Mup = False,
    eval_every: EvalEvery = None,
    eval_batches: EvalBatches = 8,
    name: Name = None,
) -> None:
    """A model ladder: every size trained for D = m·N tokens for each multiple m."""
    from scaling.plan import Plan, parse_shapes, plan_ladder

    with user_errors():
        shapes = parse_shapes(sizes, base=base, seq=seq, data=data, mup=mup)
        multiples = _floats(tokens_per_param, "--tokens-per-param")
        runs = plan_ladder(shapes, multiples, tokens_per_step=batch * seq, min_steps=min_steps)
        description = f"Model ladder: {sizes} × {tokens_per_param} tokens per parameter"
        plan = Plan(name or "ladder", description, runs)
        _emit(plan, _fixed(batch, seq, data, lr, lr_warmup_steps, mup, eval_batches), eval_every)
