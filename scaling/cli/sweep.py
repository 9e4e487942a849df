"""`scaling sweep`: run a grid of configurations and record them in parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scaling.cli.common import (
    MUP_HELP,
    PEAK_HELP,
    STEPS_PER_CALL_HELP,
    SYNC_EVERY_HELP,
    err_console,
    mup_knobs,
    out_console,
    print_json,
    split_list,
    terminate_cleanly,
    user_errors,
)

Opt = typer.Option
CPU_DEFAULTS = {"batch": 8, "seq": 128, "steps": 6, "timing_warmup_steps": 1}


def spec_from_options(
    modes: str | None,
    sizes: str | None,
    mup: str,
    fixed: dict,
    spec_path: str | None,
    models: str | None = None,
):
    """A SweepSpec from a spec file (options override its fixed settings) or from options."""
    from scaling.sharding import DENSE_MODES, MODES
    from scaling.spec import SweepSpec, load_sweep_spec

    mup_axis = {"off": [False], "on": [True], "both": [False, True]}
    if mup not in mup_axis:
        raise ValueError(f"bad --mup {mup!r}; valid: off, on, both")
    if spec_path:
        spec = load_sweep_spec(spec_path)
        axes = dict(spec.axes)
        if modes:
            axes["mode"] = _modes(modes, MODES, DENSE_MODES)
        if sizes:
            axes["size"] = split_list(sizes)
            axes.pop("model", None)
        if models:
            axes["model"] = split_list(models)
            axes.pop("size", None)
        if mup != "off":
            axes["mup"] = mup_axis[mup]
        return SweepSpec(spec.name, axes, {**spec.fixed, **fixed}, spec.description, spec.points)
    if not modes or not (sizes or models):
        raise ValueError(
            "give MODES and --sizes or --model (e.g. `scaling sweep fsdp_tp --sizes 125m`) "
            "or --spec sweeps/NAME.toml"
        )
    if sizes and models:
        raise ValueError("give --sizes or --model, not both")
    models_axis = {"model": split_list(models)} if models else {"size": split_list(sizes)}
    axes = {**models_axis, "mode": _modes(modes, MODES, DENSE_MODES), "mup": mup_axis[mup]}
    return SweepSpec("cli", axes, {**CPU_DEFAULTS, **fixed})


def _modes(text: str, valid: tuple[str, ...], every: tuple[str, ...]) -> list[str]:
    """``all`` is every mode that runs any model (``every``); the expert-parallel modes,
    which need a mixture-of-experts model, are named explicitly."""
    modes = list(every) if text == "all" else split_list(text)
    for mode in modes:
        if mode not in valid:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(valid)}, all")
    return modes


# The sweep's options that only a training sweep reads (--task decode refuses them).
TRAINING_ONLY = (
    "spec", "model", "steps", "lr", "data", "remat", "seq", "timing_warmup_steps", "sync_every",
    "steps_per_call", "attention", "loss_chunk", "eval_every", "eval_batches", "timeout",
    "peak_tflops", "shard",
    "profile", "coordinator", "num_processes", "process_id", "local_processes", "force",
    "mup_base_width", "mup_base_head_dim", "mup_input_multiplier", "mup_output_multiplier",
    "mup_attn_multiplier", "mup_zero_readout",
)  # fmt: skip


def _training_options_given(options: dict) -> list[str]:
    """The training-only options set away from their defaults (None, False, 0, shard 0/1), as
    their command-line names."""
    given = [n for n in TRAINING_ONLY if options[n] not in (None, False) and options[n] != "0/1"]
    return ["--" + name.replace("_", "-") for name in given]


def _check_decode_task(task: str, mup: str, given: list[str]) -> None:
    if task != "decode":
        raise ValueError(f"unknown --task {task!r}; valid: train, decode")
    if mup != "off" or given:
        options = ", ".join([*given, *(["--mup"] if mup != "off" else [])])
        raise ValueError(f"{options}: only for --task train, not decode")


def sweep(
    modes: Annotated[
        str | None,
        typer.Argument(
            help="Comma list of none,dp,fsdp,tp,fsdp_tp,ep,fsdp_ep (ep: MoE models) or 'all' "
            "(the modes that run dense models)."
        ),
    ] = None,
    sizes: Annotated[str | None, Opt(help="Comma list of presets, e.g. 125m,350m.")] = None,
    model: Annotated[
        str | None, Opt(help="Comma list of Hugging Face config.json paths (instead of --sizes).")
    ] = None,
    mup: Annotated[str, Opt(help="muP: off | on | both.")] = "off",
    mup_base_width: Annotated[int | None, Opt(help=MUP_HELP["base_width"])] = None,
    mup_base_head_dim: Annotated[int | None, Opt(help=MUP_HELP["base_head_dim"])] = None,
    mup_input_multiplier: Annotated[float | None, Opt(help=MUP_HELP["alpha_in"])] = None,
    mup_output_multiplier: Annotated[float | None, Opt(help=MUP_HELP["alpha_out"])] = None,
    mup_attn_multiplier: Annotated[float | None, Opt(help=MUP_HELP["alpha_attn"])] = None,
    mup_zero_readout: Annotated[bool | None, Opt(help=MUP_HELP["zero_readout"])] = None,
    steps: Annotated[int | None, Opt(help="Steps per run.")] = None,
    timing_warmup_steps: Annotated[
        int | None,
        Opt("--timing-warmup-steps", "--warmup-steps", help="Steps excluded from timing."),
    ] = None,
    sync_every: Annotated[int | None, Opt(help=SYNC_EVERY_HELP)] = None,
    steps_per_call: Annotated[int | None, Opt(help=STEPS_PER_CALL_HELP)] = None,
    batch: Annotated[int | None, Opt(help="Global batch (sequences).")] = None,
    seq: Annotated[int | None, Opt(help="Sequence length.")] = None,
    mesh: Annotated[str | None, Opt(help="Mesh DxT (default: per mode).")] = None,
    devices: Annotated[int | None, Opt(help="Simulated CPU devices per run.")] = None,
    dtype: Annotated[str | None, Opt(help="float32 | bfloat16.")] = None,
    remat: Annotated[str | None, Opt(help="none | full | dots.")] = None,
    attention: Annotated[str | None, Opt(help="reference | xla | cudnn | splash.")] = None,
    loss_chunk: Annotated[
        int | None, Opt(help="Cross-entropy over chunks of N positions (0: whole).")
    ] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate.")] = None,
    data: Annotated[
        str | None, Opt(help="'synthetic', a token file, or a `data prepare` directory.")
    ] = None,
    eval_every: Annotated[int | None, Opt(help="Validation loss every K steps.")] = None,
    eval_batches: Annotated[int | None, Opt(help="Validation batches per eval.")] = None,
    timeout: Annotated[float | None, Opt(help="Per-run timeout (s).")] = None,
    peak_tflops: Annotated[float | None, Opt(help=PEAK_HELP["peak_tflops"])] = None,
    hbm_gbps: Annotated[float | None, Opt(help=PEAK_HELP["hbm_gbps"])] = None,
    spec: Annotated[str | None, Opt(help="Sweep spec, e.g. sweeps/smoke.toml.")] = None,
    out: Annotated[Path, Opt(help="Record directory.")] = Path("runs"),
    shard: Annotated[str, Opt(help="Run every N-th run starting at I: I/N.")] = "0/1",
    profile: Annotated[bool, Opt(help="Write a jax.profiler trace per run.")] = False,
    coordinator: Annotated[str | None, Opt(help="Multi-host: coordinator HOST:PORT.")] = None,
    num_processes: Annotated[int | None, Opt(help="Multi-host: processes.")] = None,
    process_id: Annotated[int | None, Opt(help="Multi-host: this process.")] = None,
    init_timeout: Annotated[
        float, Opt(help="Seconds for every process of a run to join (multi-process).")
    ] = 120.0,
    local_processes: Annotated[int, Opt(help="Run each run as P local processes.")] = 0,
    force: Annotated[
        bool, Opt(help="Run configurations the memory estimate says do not fit.")
    ] = False,
    json_: Annotated[bool, Opt("--json", help="Last stdout line: JSON list of runs.")] = False,
    task: Annotated[
        str,
        Opt(help="train, or decode: KV-cache generation per size × mode (as bench-decode)."),
    ] = "train",
    prompt_len: Annotated[int, Opt(help="--task decode: prompt tokens per row.")] = 32,
    gen_len: Annotated[int, Opt(help="--task decode: generated tokens per row.")] = 32,
) -> None:
    """Run MODES × sizes (× muP) on the shared model; record everything under --out."""
    options = dict(locals())
    if task != "train":
        with user_errors():
            _check_decode_task(task, mup, _training_options_given(options))
            from scaling.sharding import DENSE_MODES, MODES

            decode_modes = _modes(modes or "none", MODES, DENSE_MODES)
        from scaling.cli.bench_decode import run_decode_grid

        run_decode_grid(
            str(out), sizes or "tiny", decode_modes, str(batch or 8), str(prompt_len), gen_len,
            dtype=dtype or "float32", mesh=mesh, devices=devices, hbm_gbps=hbm_gbps,
            name="decode", json_=json_,
        )  # fmt: skip
        return
    from scaling import records
    from scaling.estimate.hardware import validate_peaks
    from scaling.hostmem import host_memory_setting
    from scaling.launch import validate_processes, validate_timeout
    from scaling.spec import validate_settings
    from scaling.sweep import Distributed, parse_shard, run_sweep

    given = {
        "steps": steps,
        "timing_warmup_steps": timing_warmup_steps,
        "sync_every": sync_every,
        "steps_per_call": steps_per_call,
        "batch": batch,
        "seq": seq,
        "mesh": mesh,
        "devices": devices,
        "dtype": dtype,
        "remat": remat,
        "attention": attention,
        "loss_chunk": loss_chunk,
        "lr": lr,
        "data": data,
        "eval_every": eval_every,
        "eval_batches": eval_batches,
        "timeout_s": timeout,
        "peak_tflops": peak_tflops,
        "hbm_gbps": hbm_gbps,
        **mup_knobs(
            mup_base_width,
            mup_base_head_dim,
            mup_input_multiplier,
            mup_output_multiplier,
            mup_attn_multiplier,
            mup_zero_readout,
        ),
    }
    with user_errors():
        host_memory_setting()  # each worker applies it; a bad value fails here, not per run
        validate_peaks(peak_tflops, hbm_gbps)
        grid_spec = spec_from_options(
            modes, sizes, mup, {k: v for k, v in given.items() if v is not None}, spec, model
        )
        shard_index = parse_shard(shard)
        validate_processes(coordinator, num_processes, process_id, local_processes)
        validate_timeout(init_timeout, "--init-timeout")
        for settings in grid_spec.grid():  # validate every run's config before starting
            validate_settings(settings)
        distributed = Distributed(
            coordinator, num_processes, process_id, local_processes, init_timeout
        )
        if distributed.is_recorder:
            records.check_writable(out)
    for axis, values in grid_spec.duplicates().items():
        err_console.print(
            f"[yellow]note:[/] {axis} lists {', '.join(map(str, values))} more than once; "
            "each run runs once",
            highlight=False,
            soft_wrap=True,
        )
    stopped = "stopped by SIGTERM; the run in flight was not recorded; the same command resumes"
    with user_errors(), terminate_cleanly(stopped):
        with SweepProgress(grid_spec, shard_index, disable=json_) as progress:
            planned = run_sweep(
                grid_spec,
                out,
                shard=shard_index,
                distributed=distributed,
                profile_dir=str(out / "profiles") if profile else None,
                on_run_start=progress.on_run_start,
                on_step=progress.on_step,
                on_run_end=progress.on_run_end,
                on_note=progress.on_note,
                force=force,
            )
        if distributed.is_recorder:
            _render(records.load_runs(out), planned, grid_spec.name, out, json_)


def _render(runs, planned, name: str, out: Path, json_: bool) -> None:
    """This sweep's rows: a JSON list or a table, and a note on runs predicted not to fit."""
    runs = runs[runs["run_id"].isin({run.run_id for run in planned})]
    predicted = int((runs["status"] == "oom-predicted").sum())
    if predicted:
        err_console.print(
            f"[yellow]note:[/] {predicted} run(s) not run: the memory estimate says they do "
            "not fit (status oom-predicted); --force runs them"
        )
    if json_:
        print_json(runs.to_dict(orient="records"))
    else:
        out_console.print(summary_table(runs, name))
        shown = str(out).encode("utf-8", "backslashreplace").decode()  # a non-UTF-8 name
        out_console.print(
            f"record: {shown}/runs, {shown}/steps "
            f"({sum(r.skip for r in planned)} runs already recorded, skipped)",
            highlight=False,
        )


class SweepProgress:
    """Two Rich progress bars on stderr: runs of this shard, and steps of the run in flight."""

    def __init__(self, grid_spec, shard: tuple[int, int], *, disable: bool):
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=err_console,
            disable=disable,
        )
        mine = [i for i in range(len(grid_spec.grid())) if i % shard[1] == shard[0]]
        self.runs = self.bar.add_task(f"sweep {grid_spec.name}", total=len(mine), info="")
        self.steps = self.bar.add_task("steps", total=None, info="")

    def __enter__(self) -> SweepProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def on_run_start(self, run) -> None:
        s = run.settings
        info = f"{s['size']} {s['mode']}" + (" muP" if s["mup"] else "")
        self.bar.update(self.runs, info=info)
        self.bar.reset(self.steps, total=int(s["steps"]), info="compiling…")

    def on_step(self, metrics: dict) -> None:
        info = f"loss {metrics['loss']:.3f}"
        self.bar.update(self.steps, completed=metrics["step"] + 1, info=info)

    def on_note(self, text: str) -> None:
        self.bar.console.print(f"[yellow]note:[/] {text}", highlight=False, soft_wrap=True)

    def on_run_end(self, run, outcome) -> None:
        self.bar.advance(self.runs)
        if outcome is not None and outcome.record.status != "ok":
            err_console.print(
                f"[yellow]{run.settings['size']} {run.settings['mode']}: "
                f"{outcome.record.status}[/] {outcome.record.error}"
            )


def summary_table(runs, title: str) -> Table:
    table = Table(title=f"sweep {title}")
    for col in (
        "size",
        "mode",
        "mesh",
        "muP",
        "status",
        "step (s)",
        "tokens/s",
        "MFU",
        "final loss",
        "val loss",
    ):
        table.add_column(col, justify="right")
    for r in runs.sort_values(["size", "mode", "mup"]).itertuples():
        ok = r.status == "ok"
        val = getattr(r, "final_val_loss", float("nan"))
        table.add_row(
            r.size,
            r.mode,
            r.mesh,
            "on" if r.mup else "off",
            r.status if ok else f"[red]{r.status}[/]",
            f"{r.step_time_s_median:.3f}" if ok else "-",
            f"{r.tokens_per_s:,.0f}" if ok else "-",
            f"{r.mfu:.1%}" if ok else "-",
            f"{r.final_loss:.3f}" if ok else "-",
            f"{val:.3f}" if ok and val == val else "-",  # NaN: not measured
        )
    return table
