"""`scaling train`: one training run of the shared model."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from scaling.cli.common import err_console, out_console, print_json, user_errors

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
    family: Annotated[
        str | None, Opt(help="Architecture of a family: llama | gpt2 | mistral | gemma.")
    ] = None,
    layers: Annotated[int | None, Opt(help="Override the preset's depth.")] = None,
    mup: Annotated[bool, Opt("--mup/--no-mup", help="muP parametrization.")] = False,
    data: Annotated[str, Opt(help="'synthetic' or a .bin/.npy token file.")] = "synthetic",
    mode: Annotated[str, Opt(help="Sharding: none | dp | fsdp | tp | fsdp_tp.")] = "none",
    mesh: Annotated[str | None, Opt(help="Mesh DxT, e.g. 4x2 (default: per mode).")] = None,
    devices: Annotated[int | None, Opt(help="Simulate N CPU devices.")] = None,
    checkpoint_dir: Annotated[str | None, Opt(help="Orbax checkpoint directory.")] = None,
    checkpoint_every: Annotated[int, Opt(help="Save every K steps (0: at the end).")] = 0,
    resume: Annotated[bool, Opt(help="Resume from the latest checkpoint.")] = False,
    coordinator: Annotated[str | None, Opt(help="jax.distributed coordinator HOST:PORT.")] = None,
    num_processes: Annotated[int | None, Opt(help="Processes in the job.")] = None,
    process_id: Annotated[int | None, Opt(help="This process's index.")] = None,
    local_processes: Annotated[int, Opt(help="Spawn P local processes on 127.0.0.1.")] = 0,
    timeout: Annotated[float, Opt(help="Timeout for --local-processes workers (s).")] = 600,
    json_: Annotated[bool, Opt("--json", help="Last stdout line: a JSON result.")] = False,
) -> None:
    """Train a preset on synthetic data (default) or a token file."""
    if local_processes:
        with user_errors():
            if devices is not None and devices % local_processes:
                raise ValueError(
                    f"--devices {devices} is not divisible by --local-processes {local_processes}"
                )
        from scaling.launch import spawn_local

        args = strip_option(sys.argv[1:], "--local-processes")
        if devices is not None:
            args = [*strip_option(args, "--devices"), "--devices", str(devices // local_processes)]
        raise typer.Exit(spawn_local(args, local_processes, timeout))

    from scaling import parallel
    from scaling.presets import build_run

    with user_errors():
        # devices and jax.distributed first: reading an --init checkpoint starts jax
        if devices is not None:
            if devices <= 0:
                raise ValueError(f"--devices must be positive, got {devices}")
            parallel.set_cpu_devices(devices)
        if coordinator is not None or num_processes is not None:
            parallel.init_distributed(coordinator, num_processes, process_id)
        run_cfg = build_run(
            size,
            model=_model_source(size, model, init),
            init=init,
            family=family,
            dtype=dtype,
            remat=remat,
            mup=mup,
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
        )
        result = _train_with_progress(run_cfg, show=not json_)
    import jax

    if jax.process_index() != 0:
        return
    if json_:
        print_json({"size": size or run_cfg.model.name, **result.summary()})
    else:
        out_console.print(
            f"{result.model_name} · {result.mode} {result.mesh[0]}x{result.mesh[1]} · "
            f"final loss {result.final_loss:.4f} · {result.tokens_per_s:,.0f} tokens/s · "
            f"median step {result.step_time_s_median * 1e3:.1f} ms · "
            f"compile {result.compile_s:.2f} s"
        )


def _model_source(size: str | None, model: str | None, init: str | None):
    """--model, else the --init checkpoint's own model unless --size names one, else None."""
    if size is not None and model is not None:
        raise ValueError("give --size or --model, not both")
    if model is not None or init is None or size is not None:
        return model
    from scaling.convert import load_model_config

    return load_model_config(init)


def _train_with_progress(run_cfg, show: bool):
    import jax
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

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
        if metrics.get("step_time_s"):
            info += f" · {tokens / metrics['step_time_s']:,.0f} tok/s"
        progress.update(task, completed=step + 1, info=info)

    try:
        return run(run_cfg, on_step=on_step)
    finally:
        progress.stop()
