"""The `scaling` command: one small module per command group."""

from __future__ import annotations

import typer

from scaling.cli import (
    bench_decode,
    check,
    convert,
    data,
    env,
    estimate,
    evaluate,
    fit,
    generate,
    mup,
    plan,
    presets,
    report,
    sweep,
    train,
    validate,
)

app = typer.Typer(
    name="scaling",
    help="Benchmarking and scaling studies for JAX language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("presets")(presets.presets)
app.command("train")(train.train)
app.command("estimate")(estimate.estimate)
app.command("sweep")(sweep.sweep)
app.command("report")(report.report)
app.command("check")(check.check)
app.command("eval")(evaluate.eval_)
app.command("validate")(validate.validate)
app.command("fit")(fit.fit)
app.command("generate")(generate.generate)
app.command("bench-decode")(bench_decode.bench_decode)
app.command("env")(env.env)
app.add_typer(data.app, name="data")
app.add_typer(mup.app, name="mup")
app.add_typer(convert.app, name="convert")
app.add_typer(plan.app, name="plan")
