"""The record of sweeps: one schema, its JSON codec, one atomic writer, one reader, and the
run-identity keys that ``check`` and ``report --baseline`` both match on. Never imports jax.

Layout of a sweep directory ``DIR``::

    DIR/runs/<run_id>.parquet    one row per run   (RunRecord)
    DIR/steps/<run_id>.parquet   one row per step  (StepRecord)

Both are readable with ``pandas.read_parquet(DIR / "runs")``. Every file the package writes
(parquet, JSON, CSV, pages, figures, caches) goes through ``atomic_path``: a temporary name in
the same directory, fsync, then a rename, so a ``kill -9`` at any moment leaves either the old
file or the new one, never a partial one. Steps are written before the run row, so a run row
exists only once its steps do.

Schema versions: 2 renamed two ambiguous version-1 columns (``RENAMED_COLUMNS``) and added
``tied``; ``load_runs`` reads version-1 files under the new names. 3 added validation loss
(``final_val_loss``, ``final_val_bpb``, per step ``val_loss``), ``tokens_seen`` and the data
wait (per step ``data_wait_s``, per run ``data_wait_s_median``); older files read with NaN there.
4 added ``attention`` and ``loss_chunk`` (older rows ran the reference attention and the
whole-logits loss, which is what ``config_of`` reads there), and mixture-of-experts columns:
per run ``n_experts``, ``experts_per_token``,
``n_params_active`` (0 in older files: read them as dense, ``n_params_active`` = ``n_params``)
and the router statistics of the last step (``ROUTER_COLUMNS``), per step the same statistics;
NaN for dense runs and older files.
``sync_every`` (steps per timed window, ``RunConfig.sync_every``; where it is above 1 the per-step
times are window means) came later within version 4; rows without it timed each step alone (1).
So did ``steps_per_call`` (``RunConfig.steps_per_call``: optimizer steps per call of the compiled
program; above 1 the per-step times are window means too); rows without it ran one (1).
``host_allocator`` (``scaling.hostmem``) too; older rows read "" (glibc's malloc, unrecorded).
A prepared data directory is written through ``atomic_directory`` (a temporary directory, then a
rename).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where frames are built, so writers stay light
    import pandas as pd

SCHEMA_VERSION = 4
# MoE router statistics (``scaling.moe.router_metrics``), per step and (last step) per run:
# the auxiliary losses averaged over layers, the expert load (fraction of token-expert
# assignments per expert: min and max over layers and experts, 1/E when balanced; entropy in
# nats averaged over layers, ln E when balanced) and the fraction of assignments dropped.
ROUTER_COLUMNS = (
    "aux_loss",
    "z_loss",
    "expert_load_min",
    "expert_load_max",
    "expert_load_entropy",
    "dropped_fraction",
)
# oom-predicted: not run, the memory pre-flight (scaling.preflight) says it cannot fit
STATUSES = ("ok", "oom", "oom-predicted", "diverged", "error", "timeout")
# version 1 name → version 2 name
RENAMED_COLUMNS = {
    "warmup_steps": "timing_warmup_steps",
    "xla_flops_per_step": "xla_flops_per_step_global",
}


@dataclass
class RunRecord:
    """One run of a sweep. Units are in the names: ``_s`` seconds, ``_bytes`` bytes,
    ``flops`` floating-point operations, losses in nats/token."""

    # identity and configuration
    run_id: str
    sweep: str
    size: str  # the preset key (``scaling presets``), not the derived model name
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
    timing_warmup_steps: int  # steps excluded from the timing statistics (not the LR warm-up)
    lr: float
    seed: int
    data: str
    d_model: int = 0
    n_layers: int = 0
    n_heads: int = 0
    tied: bool | None = None  # tied input/output embeddings; None where unknown (version 1)
    attention: str = "reference"  # ModelConfig.attention (scaling.attention); < v4: reference
    loss_chunk: int = 0  # RunConfig.loss_chunk: positions per loss chunk; 0 whole logits
    # RunConfig.sync_every: steps per timed window; above 1 the step times are window means
    sync_every: int = 1
    # RunConfig.steps_per_call: optimizer steps per call of the compiled program (a device loop)
    steps_per_call: int = 1
    n_experts: int = 0  # mixture of experts (0: dense FFN; version < 4: dense)
    experts_per_token: int = 0
    settings_json: str = ""  # every setting of the run (sweep.run_id_of hashes these)
    # outcome
    status: str = "error"  # one of STATUSES
    error: str = ""
    # measurements
    n_params: int = 0
    n_params_active: int = 0  # parameters one token uses (= n_params when dense)
    compile_s: float = math.nan
    step_time_s_median: float = math.nan
    step_time_s_min: float = math.nan
    step_time_s_max: float = math.nan
    tokens_per_s: float = math.nan
    model_flops_per_step: float = math.nan  # analytic, all devices, attention convention below
    hardware_flops_per_step: float = math.nan  # model FLOPs + remat recompute, all devices
    attention_convention: str = ""
    mfu: float = math.nan  # model_flops_per_step / (median step · devices · peak)
    hfu: float = math.nan  # hardware_flops_per_step / (median step · devices · peak)
    peak_memory_bytes: float = math.nan  # per device
    peak_memory_source: str = ""  # "memory_stats" or "xla_memory_analysis"
    est_memory_bytes: float = math.nan  # analytic, per device
    est_comm_bytes: float = math.nan  # analytic, per device per step
    xla_comm_bytes: float = math.nan  # XLA: partitioned step's collectives, per device per step
    xla_flops_per_step_global: float = math.nan  # XLA cost_analysis, unrolled step, all devices
    xla_argument_bytes: float = math.nan  # XLA memory_analysis of the step, per device
    xla_output_bytes: float = math.nan
    xla_temp_bytes: float = math.nan
    xla_alias_bytes: float = math.nan
    predicted_step_s: float = math.nan  # roofline lower bound
    predicted_step_s_upper: float = math.nan  # roofline upper bound (compute + comm)
    predicted_mfu: float = math.nan
    final_loss: float = math.nan
    # Validation loss after the last step on the data's fixed validation windows (nats/token),
    # and in bits per UTF-8 byte where the data knows its bytes; NaN where not measured.
    final_val_loss: float = math.nan
    final_val_bpb: float = math.nan
    tokens_seen: float = math.nan  # training tokens by the end: batch · seq · steps completed
    data_wait_s_median: float = math.nan  # loader wait before a measured step (outside timing)
    entropy_floor_nats: float = math.nan  # known best loss (synthetic data only)
    peak_flops_per_device: float = math.nan
    peak_source: str = ""
    # environment
    device_kind: str = ""
    platform: str = ""
    jax_version: str = ""
    flax_version: str = ""
    host_allocator: str = ""  # scaling.hostmem: the malloc serving the run's host buffers
    git_sha: str = ""
    hostname: str = ""
    started_at: str = ""  # ISO 8601, UTC
    wall_s: float = math.nan  # the whole run subprocess, start to finish
    # MoE router statistics at the last step (``ROUTER_COLUMNS``); NaN for dense runs
    aux_loss: float = math.nan
    z_loss: float = math.nan
    expert_load_min: float = math.nan
    expert_load_max: float = math.nan
    expert_load_entropy: float = math.nan
    dropped_fraction: float = math.nan
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
    val_loss: float = math.nan  # validation loss after this step; NaN where none was measured
    data_wait_s: float = math.nan  # waiting for this step's batch, outside step_time_s
    # MoE router statistics of this step (``ROUTER_COLUMNS``); NaN for dense runs
    aux_loss: float = math.nan
    z_loss: float = math.nan
    expert_load_min: float = math.nan
    expert_load_max: float = math.nan
    expert_load_entropy: float = math.nan
    dropped_fraction: float = math.nan


@dataclass
class RunOutcome:
    """What one run subprocess reports back: its row and its steps."""

    record: RunRecord
    steps: list[StepRecord] = field(default_factory=list)


RUN_COLUMNS = [f.name for f in dataclasses.fields(RunRecord)]
STEP_COLUMNS = [f.name for f in dataclasses.fields(StepRecord)]

# ----------------------------------------------------------------------------- run identity

# What makes two runs "the same configuration" for comparing them across records (``scaling
# check`` and ``scaling report --baseline``): everything that changes what is computed per step,
# never the run id, seed, step count or row order.
CONFIG_KEYS = (
    "size",
    "family",
    "d_model",
    "n_layers",
    "tied",
    "mode",
    "mesh",
    "mup",
    "batch",
    "seq",
    "dtype",
    "remat",
    "attention",
    "loss_chunk",
)


def config_of(row) -> dict:
    """The ``CONFIG_KEYS`` of one run row (a dict or a pandas row), normalised to Python
    types. ``tied`` falls back to the run's ``settings_json`` (version-1 rows), then to the
    default of that era."""
    tied = row.get("tied")
    if tied is None or (isinstance(tied, float) and math.isnan(tied)):
        try:
            tied = json.loads(row.get("settings_json") or "{}").get("tied")
        except (json.JSONDecodeError, AttributeError):
            tied = None
    if tied is None:
        # Rows without a ``tied`` column and ``"tied": null`` in their settings ran the
        # preset's default head, which for every preset of those versions was tied unless
        # muP (which forces an untied head).
        tied = not bool(row["mup"])
    return {
        "size": str(row["size"]),
        "family": str(row.get("family") or "llama"),
        "d_model": _int_or_zero(row.get("d_model")),
        "n_layers": _int_or_zero(row.get("n_layers")),
        "tied": None if tied is None else bool(tied),
        "mode": str(row["mode"]),
        "mesh": str(row.get("mesh") or ""),
        "mup": bool(row["mup"]),
        "batch": int(row["batch"]),
        "seq": int(row["seq"]),
        "dtype": str(row["dtype"]),
        "remat": str(row["remat"]),
        "attention": _str_or(row.get("attention"), "reference"),
        "loss_chunk": _int_or_zero(row.get("loss_chunk")),
    }


def config_key(row) -> tuple:
    config = config_of(row)
    return tuple(config[k] for k in CONFIG_KEYS)


def _str_or(value, default: str) -> str:
    """``value`` as text; ``default`` for None, NaN (a column older rows lack) or ''."""
    return str(value) if isinstance(value, str) and value else default


def _int_or_zero(value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return int(number) if math.isfinite(number) else 0


# ----------------------------------------------------------------------------- the JSON codec


def outcome_to_json(outcome: RunOutcome) -> dict:
    return {
        "record": dataclasses.asdict(outcome.record),
        "steps": [dataclasses.asdict(s) for s in outcome.steps],
    }


def outcome_from_json(data: dict) -> RunOutcome:
    record = {RENAMED_COLUMNS.get(k, k): v for k, v in data["record"].items()}
    return RunOutcome(RunRecord(**record), [StepRecord(**s) for s in data["steps"]])


def git_sha() -> str:
    """The short commit of the checkout the package runs from ('' outside git)."""
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def base_record(settings: dict, run_id: str) -> RunRecord:
    """The identity and configuration columns of one sweep run, before it runs (a run that
    fails before measuring anything is recorded with these)."""
    from scaling.spec import run_config_from_settings

    try:
        model = run_config_from_settings(settings).model
        dims = {
            "d_model": model.d_model,
            "n_layers": model.n_layers,
            "n_heads": model.n_heads,
            "tied": model.tied_embeddings,
            "n_experts": model.n_experts,
            "experts_per_token": model.experts_per_token if model.moe else 0,
        }
    except ValueError:
        dims = {}
    return RunRecord(
        run_id=run_id,
        sweep=str(settings["sweep"]),
        size=settings["size"],
        family=settings["family"],
        mode=settings["mode"],
        mesh=str(settings["mesh"] or ""),
        n_devices=0,
        n_processes=1,
        mup=bool(settings["mup"]),
        batch=int(settings["batch"]),
        seq=int(settings["seq"]),
        dtype=settings["dtype"],
        remat=settings["remat"],
        attention=str(settings.get("attention") or "reference"),
        loss_chunk=int(settings.get("loss_chunk") or 0),
        sync_every=int(settings.get("sync_every") or 1),
        steps_per_call=int(settings.get("steps_per_call") or 1),
        steps=int(settings["steps"]),
        timing_warmup_steps=int(settings["timing_warmup_steps"]),
        lr=float(settings["lr"]),
        seed=int(settings["seed"]),
        data=str(settings["data"]),
        git_sha=git_sha(),
        hostname=socket.gethostname(),
        started_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        settings_json=json.dumps(settings, sort_keys=True),
        **dims,
    )


# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it
    onto ``path`` (atomic on POSIX). On any error the temporary file is removed and ``path``
    is left as it was. Creates the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # name the file the caller asked for, not the temporary one
        if exc.errno and exc.filename in (None, str(tmp)):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; when the block succeeds, fsync its
    files and rename it onto ``path``. On any error (or interrupt) the temporary directory is
    removed and ``path`` is untouched. An existing ``path`` is an error unless ``replace``; then
    it is renamed aside first and removed after the new one is in place."""
    import shutil

    path = Path(path)
    if path.exists() and not replace:
        raise ValueError(f"output {str(path)!r} already exists; remove it or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    tmp = path.with_name(f".{path.name}.{tag}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        old = path.with_name(f".{path.name}.{tag}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_frame_atomic(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: any path Python opens
        frame.to_parquet(f, index=False)


def write_json_atomic(obj, path: str | Path, *, indent: int | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(
            json.dumps(obj, default=float, indent=indent, sort_keys=indent is not None),
            encoding="utf-8",
        )


def write_text_atomic(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_outcome(out_dir: str | Path, outcome: RunOutcome) -> None:
    """The one writer of run records: steps first, then the run row (its presence marks the
    run done)."""
    import pandas as pd

    out_dir = Path(out_dir)
    run_id = outcome.record.run_id
    steps = pd.DataFrame([dataclasses.asdict(s) for s in outcome.steps], columns=STEP_COLUMNS)
    write_frame_atomic(steps.astype({"step": "int64"}), out_dir / "steps" / f"{run_id}.parquet")
    run = pd.DataFrame([dataclasses.asdict(outcome.record)], columns=RUN_COLUMNS)
    write_frame_atomic(run, out_dir / "runs" / f"{run_id}.parquet")


# ----------------------------------------------------------------------------- reading


# Columns without which a parquet file in runs/ or steps/ is not a record of this package.
REQUIRED_RUN_COLUMNS = ("run_id", "status", "size", "mode")
REQUIRED_STEP_COLUMNS = ("run_id", "step", "loss")
QUARANTINE_DIR = "quarantine"


def read_record_file(path: str | Path, required: tuple[str, ...]) -> pd.DataFrame:
    """One parquet file of a record; ``ValueError`` naming the file when it does not read
    (truncated, not parquet) or lacks the record's columns (a foreign file)."""
    frame, problem = _read_checked(Path(path), required)
    if problem:
        raise ValueError(f"{str(path)!r} {problem}; move it out of {str(Path(path).parent)!r}")
    return frame


def _read_checked(path: Path, required: tuple[str, ...]) -> tuple[pd.DataFrame | None, str]:
    import pandas as pd

    try:
        with open(path, "rb") as f:
            frame = pd.read_parquet(f)
    except OSError:
        raise
    except Exception as exc:  # pyarrow raises several kinds for a damaged file
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:160]  # one sentence
        return None, f"is not a readable sweep record file ({type(exc).__name__}: {first})"
    missing = [c for c in required if c not in frame.columns]
    if missing:
        return None, f"is not a scaling sweep record file (no column {', '.join(missing)})"
    return frame, ""


def damaged_files(out_dir: str | Path) -> list[tuple[Path, str]]:
    """(file, what is wrong) for every unreadable or foreign parquet file in ``runs/`` and
    ``steps/``, and for the run rows whose steps file is missing or damaged (such a run must be
    redone)."""
    out_dir = Path(out_dir)
    bad: dict[Path, str] = {}
    for sub, required in (("steps", REQUIRED_STEP_COLUMNS), ("runs", REQUIRED_RUN_COLUMNS)):
        folder = out_dir / sub
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            _, problem = _read_checked(path, required)
            steps = out_dir / "steps" / path.name
            if problem:
                bad[path] = problem
            elif sub == "runs" and (not steps.is_file() or steps in bad):
                bad[path] = "has no readable steps file"
    return list(bad.items())


def quarantine(out_dir: str | Path, files: list[Path]) -> Path:
    """Move ``files`` into ``DIR/quarantine/<sub>/`` (kept for inspection, out of the
    record's way); returns the quarantine directory."""
    target = Path(out_dir) / QUARANTINE_DIR
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    for path in files:
        dest = target / path.parent.name / f"{path.stem}.{stamp}{path.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    return target


def check_writable(out_dir: str | Path) -> None:
    """Raise ``ValueError``/``OSError`` naming the directory when a record cannot be written
    into ``out_dir`` (a file in its place, no permission, a read-only or full file system,
    a name the file system refuses): checked before any run starts, not after it finished."""
    import pandas as pd

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"record directory {str(out_dir)!r} is a file; give a directory")
    probe = pd.DataFrame({"probe": [i * 1.1 for i in range(4096)]})  # ~25 kB: about one run row
    for sub in ("steps", "runs"):
        folder = out_dir / sub
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{str(folder)!r} is a file; the record needs a directory there")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ".write-check"
        write_frame_atomic(probe, path)
        path.unlink()


def recorded_status(out_dir: str | Path, run_id: str) -> str | None:
    """The status of a recorded run, or None when it is not recorded (or does not read)."""
    path = Path(out_dir) / "runs" / f"{run_id}.parquet"
    if not path.is_file():
        return None
    try:
        return str(read_record_file(path, ("status",))["status"].iloc[0])
    except (ValueError, IndexError):
        return None


def upgrade_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Version-1 run rows under version-2 column names; rows before version 4 with the
    reference attention and the whole-logits loss they ran, rows without ``sync_every`` or
    ``steps_per_call`` with the per-step timing and the one step per call they ran (1)."""
    runs = runs.rename(columns={k: v for k, v in RENAMED_COLUMNS.items() if k in runs.columns})
    defaults = {"attention": "reference", "loss_chunk": 0, "sync_every": 1, "steps_per_call": 1}
    for column, value in defaults.items():
        if column not in runs.columns:
            runs[column] = value
        elif runs[column].isna().any():
            runs[column] = runs[column].fillna(value).astype(type(value))
    return runs


def _load(folder: Path, columns: list[str], required: tuple[str, ...]) -> pd.DataFrame:
    import pandas as pd

    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return pd.DataFrame(columns=columns)
    return pd.concat([read_record_file(f, required) for f in files], ignore_index=True)


def load_runs(*dirs: str | Path) -> pd.DataFrame:
    """All run rows of one or more sweep directories. Raises ValueError if there are none, or
    naming a file in ``runs/`` that does not read or is not a run record."""
    import pandas as pd

    frames = []
    for d in dirs:
        d = Path(d)
        if not (d / "runs").is_dir():
            raise ValueError(f"{str(d)!r} holds no sweep record (expected {str(d / 'runs')!r})")
        frames.append(upgrade_runs(_load(d / "runs", RUN_COLUMNS, REQUIRED_RUN_COLUMNS)))
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RUN_COLUMNS)
    if runs.empty:
        raise ValueError(f"no runs recorded in {', '.join(map(str, dirs))}")
    return runs


def load_steps(*dirs: str | Path) -> pd.DataFrame:
    """All step rows; ValueError naming a file in ``steps/`` that does not read."""
    import pandas as pd

    frames = [_load(Path(d) / "steps", STEP_COLUMNS, REQUIRED_STEP_COLUMNS) for d in dirs]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=STEP_COLUMNS)


COORD_CHECK_FILE = "coord_check.parquet"  # columns: mup, width, step, site, rms


def write_coord_check(out_dir: str | Path, rows: list[dict]) -> Path:
    import pandas as pd

    path = Path(out_dir) / COORD_CHECK_FILE
    write_frame_atomic(pd.DataFrame(rows, columns=["mup", "width", "step", "site", "rms"]), path)
    return path
