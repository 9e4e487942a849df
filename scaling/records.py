"""The parquet record of sweeps: one schema, one writer, one reader. Never imports jax.

Layout of a sweep directory ``DIR``::

    DIR/runs/<run_id>.parquet    one row per run   (RunRecord)
    DIR/steps/<run_id>.parquet   one row per step  (StepRecord)

Both are readable with ``pandas.read_parquet(DIR / "runs")``. Each file is written to a
temporary name and renamed into place (atomic on POSIX), steps before the run row, so a run
row exists only once its steps do, and a ``kill -9`` at any moment leaves no partial file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "diverged", "error", "timeout")


@dataclass
class RunRecord:
    """One run of a sweep. Units are in the names: ``_s`` seconds, ``_bytes`` bytes,
    ``flops`` floating-point operations, losses in nats/token."""

    # identity and configuration
    run_id: str
    sweep: str
    size: str
    family: str
    mode: str
    mesh: str  # "DxT"
    n_devices: int
    n_processes: int
    mup: bool
    batch: int
    seq: int
    dtype: str
    remat: str
    steps: int
    warmup_steps: int  # timing warm-up: steps excluded from the timing statistics
    lr: float
    seed: int
    data: str
    d_model: int = 0
    n_layers: int = 0
    n_heads: int = 0
    settings_json: str = ""  # every setting of the run (sweep.run_id_of hashes these)
    # outcome
    status: str = "error"  # one of STATUSES
    error: str = ""
    # measurements
    n_params: int = 0
    compile_s: float = math.nan
    step_time_s_median: float = math.nan
    step_time_s_min: float = math.nan
    step_time_s_max: float = math.nan
    tokens_per_s: float = math.nan
    model_flops_per_step: float = math.nan  # analytic, attention convention below
    hardware_flops_per_step: float = math.nan  # model FLOPs + remat recompute
    attention_convention: str = ""
    mfu: float = math.nan  # model_flops_per_step / (median step · devices · peak)
    hfu: float = math.nan  # hardware_flops_per_step / (median step · devices · peak)
    peak_memory_bytes: float = math.nan  # per device
    peak_memory_source: str = ""  # "memory_stats" or "xla_memory_analysis"
    est_memory_bytes: float = math.nan  # analytic, per device
    est_comm_bytes: float = math.nan  # analytic, per device per step
    xla_flops_per_step: float = math.nan  # XLA cost_analysis of the unrolled step, all devices
    xla_argument_bytes: float = math.nan  # XLA memory_analysis of the step, per device
    xla_output_bytes: float = math.nan
    xla_temp_bytes: float = math.nan
    xla_alias_bytes: float = math.nan
    predicted_step_s: float = math.nan  # roofline lower bound
    predicted_step_s_upper: float = math.nan  # roofline upper bound (compute + comm)
    predicted_mfu: float = math.nan
    final_loss: float = math.nan
    entropy_floor_nats: float = math.nan  # known best loss (synthetic data only)
    peak_flops_per_device: float = math.nan
    peak_source: str = ""
    # environment
    device_kind: str = ""
    platform: str = ""
    jax_version: str = ""
    flax_version: str = ""
    git_sha: str = ""
    hostname: str = ""
    started_at: str = ""  # ISO 8601, UTC
    wall_s: float = math.nan  # the whole run subprocess, start to finish
    schema_version: int = SCHEMA_VERSION


@dataclass
class StepRecord:
    """One optimizer step of one run."""

    run_id: str
    step: int
    loss: float
    step_time_s: float
    lr: float
    grad_norm: float


@dataclass
class RunOutcome:
    """What one run subprocess reports back: its row and its steps."""

    record: RunRecord
    steps: list[StepRecord] = field(default_factory=list)


RUN_COLUMNS = [f.name for f in dataclasses.fields(RunRecord)]
STEP_COLUMNS = [f.name for f in dataclasses.fields(StepRecord)]


def write_frame_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    frame.to_parquet(tmp, index=False)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_outcome(out_dir: str | Path, outcome: RunOutcome) -> None:
    """The one writer: steps first, then the run row (its presence marks the run done)."""
    out_dir = Path(out_dir)
    run_id = outcome.record.run_id
    steps = pd.DataFrame([dataclasses.asdict(s) for s in outcome.steps], columns=STEP_COLUMNS)
    write_frame_atomic(steps.astype({"step": "int64"}), out_dir / "steps" / f"{run_id}.parquet")
    run = pd.DataFrame([dataclasses.asdict(outcome.record)], columns=RUN_COLUMNS)
    write_frame_atomic(run, out_dir / "runs" / f"{run_id}.parquet")


def recorded_status(out_dir: str | Path, run_id: str) -> str | None:
    path = Path(out_dir) / "runs" / f"{run_id}.parquet"
    if not path.is_file():
        return None
    return str(pd.read_parquet(path, columns=["status"])["status"].iloc[0])


def _load(folder: Path, columns: list[str]) -> pd.DataFrame:
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return pd.DataFrame(columns=columns)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def load_runs(*dirs: str | Path) -> pd.DataFrame:
    """All run rows of one or more sweep directories (raises ValueError if there are none)."""
    frames = []
    for d in dirs:
        d = Path(d)
        if not (d / "runs").is_dir():
            raise ValueError(f"{str(d)!r} holds no sweep record (expected {str(d / 'runs')!r})")
        frames.append(_load(d / "runs", RUN_COLUMNS))
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RUN_COLUMNS)
    if runs.empty:
        raise ValueError(f"no runs recorded in {', '.join(map(str, dirs))}")
    return runs


COORD_CHECK_FILE = "coord_check.parquet"  # columns: mup, width, step, site, rms


def write_coord_check(out_dir: str | Path, rows: list[dict]) -> Path:
    path = Path(out_dir) / COORD_CHECK_FILE
    write_frame_atomic(pd.DataFrame(rows, columns=["mup", "width", "step", "site", "rms"]), path)
    return path


def load_steps(*dirs: str | Path) -> pd.DataFrame:
    frames = [_load(Path(d) / "steps", STEP_COLUMNS) for d in dirs]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=STEP_COLUMNS)
