"""`scaling train`: one training run of the shared model."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from scaling.cli.common import (
    KERNEL_HELP,
    MUP_HELP,
    PEAK_HELP,
    STEPS_PER_CALL_HELP,
    SYNC_EVERY_HELP,
    err_console,
    mup_knobs,
    out_console,
    print_json,
    split_list,
    user_errors,
)

Opt = typer.Option


def strip_option(argv: list[str], name: str) -> list[str]:
    """argv without ``--name VALUE`` / ``--name=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def train(
    size: Annotated[str | None, Opt(help="Preset name (see `scaling presets`); default tiny.")] = (
        None
    ),
    model: Annotated[
        str | None, Opt(help="A Hugging Face config.json (or its folder) instead of --size.")
    ] = None,
    init: Annotated[
        str | None,
        Opt(help="Start from these weights (`scaling convert from-hf`); its model by default."),
    ] = None,
    steps: Annotated[int, Opt(help="Optimizer steps.")] = 50,
    batch: Annotated[int, Opt(help="Global batch (sequences).")] = 8,
    seq: Annotated[int, Opt(help="Sequence length (tokens).")] = 128,
    lr: Annotated[float, Opt(help="Peak learning rate.")] = 3e-3,
    warmup: Annotated[int, Opt(help="Learning-rate warm-up steps.")] = 10,
    seed: Annotated[int, Opt(help="Seed for init and data.")] = 0,
    dtype: Annotated[str | None, Opt(help="Compute dtype: float32 | bfloat16.")] = None,
    remat: Annotated[str | None, Opt(help="Rematerialisation: none | full | dots.")] = None,
    attention: Annotated[str | None, Opt(help=KERNEL_HELP["attention"])] = None,
    loss_chunk: Annotated[int, Opt(help=KERNEL_HELP["loss_chunk"])] = 0,
    family: Annotated[
        str | None, Opt(help="Architecture of a family: llama | gpt2 | mistral | gemma.")
    ] = None,
    layers: Annotated[int | None, Opt(help="Override the preset's depth.")] = None,
    mup: Annotated[bool, Opt("--mup/--no-mup", help="muP parametrization.")] = False,
    mup_base_width: Annotated[int | None, Opt(help=MUP_HELP["base_width"])] = None,
    mup_base_head_dim: Annotated[int | None, Opt(help=MUP_HELP["base_head_dim"])] = None,
    mup_input_multiplier: Annotated[float | None, Opt(help=MUP_HELP["alpha_in"])] = None,
    mup_output_multiplier: Annotated[float | None, Opt(help=MUP_HELP["alpha_out"])] = None,
    mup_attn_multiplier: Annotated[float | None, Opt(help=MUP_HELP["alpha_attn"])] = None,
    mup_zero_readout: Annotated[bool | None, Opt(help=MUP_HELP["zero_readout"])] = None,
    data: Annotated[str, Opt(help="synthetic | .bin/.npy file | prepared dir.")] = "synthetic",
    sync_every: Annotated[int, Opt(help=SYNC_EVERY_HELP)] = 1,
    steps_per_call: Annotated[int, Opt(help=STEPS_PER_CALL_HELP)] = 1,
    eval_every: Annotated[int, Opt(help="Validation loss every K steps (0: at the end).")] = 0,
    eval_batches: Annotated[int, Opt(help="Batches of fixed validation windows per eval.")] = 8,
    data_threads: Annotated[int, Opt(help="Loader threads preparing batches ahead.")] = 2,
    data_prefetch: Annotated[int, Opt(help="Batches buffered ahead of the step.")] = 8,
    data_processes: Annotated[int, Opt(help="Loader worker processes (0: threads only).")] = 0,
    mode: Annotated[str, Opt(help="Sharding: none|dp|fsdp|tp|fsdp_tp, MoE ep|fsdp_ep.")] = "none",
    mesh: Annotated[str | None, Opt(help="Mesh DxT, e.g. 4x2 (default: per mode).")] = None,
    devices: Annotated[int | None, Opt(help="Simulate N CPU devices.")] = None,
    peak_tflops: Annotated[float | None, Opt(help=PEAK_HELP["peak_tflops"])] = None,
    hbm_gbps: Annotated[float | None, Opt(help=PEAK_HELP["hbm_gbps"])] = None,
    checkpoint_dir: Annotated[str | None, Opt(help="Orbax checkpoint directory.")] = None,
    checkpoint_every: Annotated[int, Opt(help="Save every K steps (0: at the end).")] = 0,
    resume: Annotated[bool, Opt(help="Resume from the latest intact checkpoint.")] = False,
    overwrite: Annotated[
        bool, Opt(help="Without --resume: delete the checkpoints already in --checkpoint-dir.")
    ] = False,
    allow_config_change: Annotated[
        str,
        Opt(help="With --resume: fields that may differ from the saved run (e.g. steps,lr)."),
    ] = "",
    force: Annotated[
        bool, Opt(help="Run even when the memory estimate says it does not fit.")
    ] = False,
    coordinator: Annotated[str | None, Opt(help="jax.distributed coordinator HOST:PORT.")] = None,
    num_processes: Annotated[int | None, Opt(help="Processes in the job.")] = None,
    process_id: Annotated[int | None, Opt(help="This process's index.")] = None,
    init_timeout: Annotated[
        float, Opt(help="Seconds to wait for every process to join (multi-process).")
    ] = 120.0,
    local_processes: Annotated[int, Opt(help="Spawn P local processes on 127.0.0.1.")] = 0,
    timeout: Annotated[float, Opt(help="Timeout for --local-processes workers (s).")] = 600,
    profile: Annotated[
        str | None,
        Opt(help="Trace the measured steps into DIR (jax.profiler) and summarise by scope."),
    ] = None,
    json_: Annotated[bool, Opt("--json", help="Last stdout line: a JSON result.")] = False,
) -> None:
    """Train a preset on synthetic data (default), a token file or a prepared directory."""
    from scaling.launch import die_with_parent, validate_processes, validate_timeout

    die_with_parent()  # a --local-processes worker goes when its launcher goes
    with user_errors():
        validate_processes(coordinator, num_processes, process_id, local_processes)
        validate_timeout(init_timeout, "--init-timeout")
    if local_processes:
        raise typer.Exit(_spawn(local_processes, devices, timeout))

    from scaling import hostmem, parallel
    from scaling.estimate.hardware import validate_peaks
    from scaling.presets import build_run
    from scaling.spec import LOADER_AND_EVAL

    # orbax logs a traceback from its background thread for a failed save; the error itself
    # reaches the user as one line (checkpoint.finish)
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    with user_errors():
        hostmem.apply_host_memory_setting()  # before jax starts its threads
        # devices and jax.distributed first: reading an --init checkpoint starts jax
        if devices is not None:
            parallel.set_cpu_devices(devices)
        if coordinator is not None or num_processes is not None:
            parallel.init_distributed(coordinator, num_processes, process_id, init_timeout)
        run_cfg = build_run(
            size,
            model=_model_source(size, model, init),
            init=init,
            family=family,
            dtype=dtype,
            remat=remat,
            attention=attention,
            loss_chunk=loss_chunk,
            mup=mup,
            mup_knobs=mup_knobs(
                mup_base_width,
                mup_base_head_dim,
                mup_input_multiplier,
                mup_output_multiplier,
                mup_attn_multiplier,
                mup_zero_readout,
            ),
            mesh=mesh,
            layers=layers,
            steps=steps,
            batch=batch,
            seq=seq,
            lr=lr,
            lr_warmup_steps=warmup,
            seed=seed,
            data=data,
            mode=mode,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            resume=resume,
            overwrite=overwrite,
            sync_every=sync_every,
            steps_per_call=steps_per_call,
            allow_config_change=tuple(split_list(allow_config_change)),
            **{k: v for k, v in locals().items() if k in LOADER_AND_EVAL},
        )
        validate_peaks(peak_tflops, hbm_gbps)
        _preflight(run_cfg, force)
        result, mfu = _train_with_progress(
            run_cfg,
            show=not json_,
            peaks={"peak_tflops": peak_tflops, "hbm_gbps": hbm_gbps},
            profile_dir=profile,
        )
    _render(result, mfu, size, json_)
    if result.profile is not None and not json_:
        out_console.print(profile_table(result.profile, f"profile {profile}"))


def _spawn(local_processes: int, devices: int | None, timeout: float) -> int:
    """Run this same command as ``local_processes`` processes; their exit code."""
    from scaling.cli.common import terminate_cleanly
    from scaling.launch import spawn_local, validate_timeout

    with user_errors():
        validate_timeout(timeout, "--timeout")
        if devices is not None and devices % local_processes:
            raise ValueError(
                f"--devices {devices} is not divisible by --local-processes {local_processes}"
            )
    args = strip_option(sys.argv[1:], "--local-processes")
    if devices is not None:
        args = [*strip_option(args, "--devices"), "--devices", str(devices // local_processes)]
    with terminate_cleanly():
        return spawn_local(args, local_processes, timeout)


def _render(result, mfu: dict, size: str, json_: bool) -> None:
    import jax

    if jax.process_index() != 0:
        return
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if json_:
        print_json({"size": size or result.model_name, **result.summary(), **mfu})
    elif result.already_done:
        out_console.print(
            f"{result.model_name}: already at step {result.start_step} (--steps {result.steps}); "
            "nothing to train. To train on, raise --steps and pass --allow-config-change steps."
        )
    else:
        summary = result.summary()
        val = ""
        if summary["final_val_loss"] is not None:
            val = f" · val loss {summary['final_val_loss']:.4f}"
            if summary["final_val_bpb"] is not None:
                val += f" ({summary['final_val_bpb']:.3f} bits/byte)"
        ceiling = mfu.get("matmul_only_ceiling")
        ceiling = f" (matmul-only ceiling {ceiling:.1%})" if ceiling is not None else ""
        out_console.print(
            f"{result.model_name} · {result.mode} {result.mesh[0]}x{result.mesh[1]} · "
            f"final loss {result.final_loss:.4f}{val} · {result.tokens_per_s:,.0f} tokens/s · "
            f"median step {result.step_time_s_median * 1e3:.1f} ms · MFU {mfu['mfu']:.1%}"
            f"{ceiling} · data wait {result.data_wait_fraction:.1%} of step · "
            f"compile {result.compile_s:.2f} s"
        )


def _preflight(run_cfg, force: bool) -> None:
    """Refuse (ValueError) a run the memory estimate says cannot fit, unless ``force``."""
    from scaling.train import memory_problem

    problem = memory_problem(run_cfg)
    if problem and not force:
        raise ValueError(problem)
    if problem:
        err_console.print(f"[yellow]note:[/] {problem}; running anyway (--force)")


def _model_source(size: str | None, model: str | None, init: str | None):
    """--model, else the --init checkpoint's own model unless --size names one, else None."""
    if size is not None and model is not None:
        raise ValueError("give --size or --model, not both")
    if model is not None or init is None or size is not None:
        return model
    from scaling.convert import load_model_config

    return load_model_config(init)


def _train_with_progress(run_cfg, show: bool, peaks: dict, profile_dir: str | None = None):
    """The run's result and its MFU against the device's peak (``measure.run_mfu``)."""
    import jax
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from scaling import measure
    from scaling.train import run

    show = show and jax.process_index() == 0
    tokens = run_cfg.tokens_per_step
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    progress = Progress(*columns, console=err_console, disable=not show)
    task = progress.add_task(f"train {run_cfg.model.name}", total=run_cfg.steps, info="")

    def on_step(step: int, metrics: dict) -> None:
        if not progress.live.is_started:
            progress.start()  # only once training runs, so bad input never shows a bar
        info = f"loss {metrics['loss']:.4f}"
        if "val_loss" in metrics:
            info += f" · val {metrics['val_loss']:.4f}"
        if metrics.get("step_time_s"):
            info += f" · {tokens / metrics['step_time_s']:,.0f} tok/s"
        progress.update(task, completed=step + 1, info=info)

    device = measure.local_device()
    probe = measure.probe_for(device) if measure.needs_probe(device, peaks["peak_tflops"]) else None
    try:
        result = run(run_cfg, on_step=on_step, probe=probe, profile_dir=profile_dir)
    finally:
        progress.stop()
    if result.already_done:  # nothing was trained, so nothing was measured
        return result, {}
    figures = measure.run_mfu(run_cfg, result, device, probe, **peaks)
    if result.profile and result.profile.get("matmul_s"):
        # the MFU if everything but the step's matmuls took no time (scaling.profile)
        figures["matmul_only_ceiling"] = (
            figures["mfu"] * result.step_time_s_median / result.profile["matmul_s"]
        )
    return result, figures


def profile_table(profile: dict, title: str):
    """The profile summary: per scope its time per step and share, then the top operations."""
    from rich.table import Table

    step = profile["step_time_s"]
    table = Table(title=title, caption=(
        f"self time per step over {profile['steps']} profiled steps; scopes add to "
        f"{profile['total_s'] * 1e3:.1f} ms = {profile['coverage']:.1%} of the mean profiled "
        f"step {step * 1e3:.1f} ms; matmuls {profile.get('matmul_s', 0) * 1e3:.1f} ms "
        f"({profile.get('matmul_s', 0) / step:.1%})"
    ))  # fmt: skip
    for column in ("scope / top operation", "ms per step", "share of step"):
        table.add_column(column, justify="left" if column.startswith("scope") else "right")
    for scope, seconds in profile["scopes_s"].items():
        table.add_row(f"[bold]{scope}[/]", f"{seconds * 1e3:.2f}", f"{seconds / step:.1%}")
    for op in profile["top_ops"][:10]:
        table.add_row(f"  {op['name']} ({op['scope']})", f"{op['self_s'] * 1e3:.2f}",
                      f"{op['self_s'] / step:.1%}")  # fmt: skip
    return table
