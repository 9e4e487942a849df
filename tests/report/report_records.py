"""Synthetic sweep records for the report tests: run rows built from a few sizes whose final
losses lie on a known scaling law, their steps, muP LR sweeps and a coord-check table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scaling import records

FLOOR = 1.2425
SIZES = {"tiny": (128, 1.1e6, 2.0e9), "10m": (256, 1.0e7, 1.6e10), "30m": (384, 3.0e7, 5.0e10)}
LAW = {"E": 1.9, "A": 3.0e3, "alpha": 0.3}  # final loss = E + A·C^-α
MESHES = {"dp": "4x1", "fsdp_tp": "2x2", "none": "1x1"}


def law(compute: float) -> float:
    return LAW["E"] + LAW["A"] * compute ** (-LAW["alpha"])


def run(run_id: str, size: str, mode: str, **kw) -> records.RunRecord:
    """One ok run whose final loss lies on ``LAW``; ``kw`` overrides any column. A size not
    in ``SIZES`` is 64 wide, 1 M parameters, 1 GFLOP per step unless ``kw`` says otherwise."""
    default = (kw.get("d_model", 64), kw.get("n_params", 1e6), kw.get("model_flops_per_step", 1e9))
    d_model, n_params, flops = SIZES.get(size, default)
    steps = kw.pop("steps", 6)
    base = dict(
        run_id=run_id,
        sweep="test",
        size=size,
        family="llama",
        mode=mode,
        mesh=MESHES.get(mode, "1x1"),
        n_devices=4,
        n_processes=1,
        mup=False,
        batch=8,
        seq=32,
        dtype="float32",
        remat="none",
        steps=steps,
        timing_warmup_steps=1,
        lr=3e-3,
        seed=0,
        data="synthetic",
        d_model=d_model,
        n_layers=4,
        n_heads=8,
        status="ok",
        n_params=int(n_params),
        model_flops_per_step=flops,
        entropy_floor_nats=FLOOR,
        final_loss=law(steps * flops),
        peak_source="unit-test peak 1e12",
        peak_flops_per_device=1e12,
        device_kind="cpu",
        platform="cpu",
        jax_version="0.0.test",
        flax_version="0.0.flax",
        git_sha="abc123",
        hostname="testhost",
        started_at="2025-01-01T00:00:00+00:00",
    )
    base.update(kw)
    return records.RunRecord(**base)


def steps_of(run: records.RunRecord) -> list[records.StepRecord]:
    """Losses falling linearly from 7.5 to the run's final loss."""
    n = run.steps
    losses = np.linspace(7.5, run.final_loss, n)
    return [
        records.StepRecord(run.run_id, i, float(losses[i]), 0.1 + 0.01 * i, 1e-3, 1.0)
        for i in range(n)
    ]


def write(out: Path, runs: list[records.RunRecord]) -> None:
    """A sweep record of ``runs`` in ``out`` (failed runs without steps)."""
    for r in runs:
        steps = steps_of(r) if r.status == "ok" else []
        records.write_outcome(out, records.RunOutcome(r, steps))


def main_runs(scale: float = 1.0, prefix: str = "r") -> list[records.RunRecord]:
    """3 sizes × 2 modes × 2 step counts with every measurement, and one OOM."""
    runs, i = [], 0
    for size in SIZES:
        for mode in ("dp", "fsdp_tp"):
            for steps in (4, 12):
                i += 1
                runs.append(
                    run(
                        f"{prefix}{i:02d}",
                        size,
                        mode,
                        steps=steps,
                        tokens_per_s=scale * (1000.0 + 37 * i),
                        mfu=0.1 + 0.02 * i,
                        step_time_s_median=0.05 * i,
                        predicted_step_s=0.02 * i,
                        predicted_step_s_upper=0.025 * i,
                        compile_s=2.0 + i,
                        peak_memory_bytes=2**20 * (10.0 + 3 * i),
                        est_memory_bytes=2**20 * (9.0 + 3 * i),
                        peak_memory_source="xla_memory_analysis",
                    )
                )
    runs.append(
        run(
            "fail01",
            "30m",
            "none",
            status="oom",
            error="RESOURCE_EXHAUSTED: out of memory while allocating 12 GiB",
        )
    )
    return runs


def mup_runs() -> list[records.RunRecord]:
    """SP and muP × 2 widths × 5 LRs in mode none: muP's optimum stays at 2⁻⁸, SP's shifts."""
    runs = []
    for mup in (False, True):
        for size in ("tiny", "10m"):
            width = SIZES[size][0]
            best = -8 if mup else (-8 - (width // 128))  # SP optimum shifts with width
            for k, log2_lr in enumerate((-10, -9, -8, -7, -6)):
                loss = 3.0 + 0.05 * (log2_lr - best) ** 2 - 0.1 * (width // 128)
                runs.append(
                    run(
                        f"m{int(mup)}{size}{k}",
                        size,
                        "none",
                        mup=mup,
                        lr=2.0**log2_lr,
                        final_loss=loss,
                        steps=3,
                    )
                )
    return runs


def coord_rows() -> pd.DataFrame:
    """RMS per site that stays flat with width under muP and grows under SP."""
    rows = []
    for mup in (False, True):
        for width in (64, 128, 256, 512):
            for step in range(3):
                for site in ("embed", "block_0", "block_1", "block_2", "logits"):
                    growth = 1.0 if mup else (width / 64) ** (0.5 * step)
                    rows.append(
                        {
                            "mup": mup,
                            "width": width,
                            "step": step,
                            "site": site,
                            "rms": 0.5 * (1 + step) * growth * (2 if site == "logits" else 1),
                        }
                    )
    return pd.DataFrame(rows)


def written_csv(result, name: str) -> pd.DataFrame:
    """The CSV of figure ``name`` (asserting its PNG was written beside it)."""
    path = result.out / f"{name}.csv"
    assert path.is_file() and (result.out / f"{name}.png").is_file()
    return pd.read_csv(path)


def figure_named(result, name: str):
    return next(f for f in result.figures if f.name == name)
