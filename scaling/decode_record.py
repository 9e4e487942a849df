"""The record of decode benchmarks (``scaling bench-decode``), beside a sweep's training record
and with its conventions: a run id hashed from the settings, a status, the environment, one
parquet row per run and one per timed decode step, each written atomically (steps first, so a
row exists only once its steps do). Never imports jax.

Layout of a record directory ``DIR``::

    DIR/decode/<run_id>.parquet         one row per configuration   (DecodeRecord)
    DIR/decode_steps/<run_id>.parquet   one row per timed decode step (DecodeStep)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scaling.records import _load, read_record_file, write_frame_atomic

if TYPE_CHECKING:
    import pandas as pd

DECODE_DIR = "decode"
DECODE_STEPS_DIR = "decode_steps"
DECODE_SCHEMA_VERSION = 1
DECODE_STATUSES = ("ok", "oom", "error")
# What defines a decode configuration (its run id hashes these).
DECODE_CONFIG_KEYS = ("size", "mode", "mesh", "batch", "prompt_len", "gen_len", "dtype", "seed")


@dataclass
class DecodeRecord:
    """One decode configuration: ``repeats`` generations of ``gen_len`` tokens from ``batch``
    prompts of ``prompt_len`` random ids, greedy, after one untimed warm-up generation.
    Units are in the names; per device unless ``global``."""

    run_id: str
    sweep: str
    size: str
    family: str
    mode: str
    mesh: str  # "DxT"
    n_devices: int
    batch: int
    prompt_len: int
    gen_len: int
    dtype: str
    seed: int
    repeats: int
    d_model: int = 0
    n_layers: int = 0
    n_heads: int = 0
    kv_heads: int = 0
    n_params: int = 0
    status: str = "error"
    error: str = ""
    compile_s: float = math.nan  # prefill + decode step, ahead of time (never timed)
    ttft_s: float = math.nan  # median over repeats: prefill and the first token, read back
    prefill_tokens_per_s: float = math.nan  # batch · prompt_len / ttft_s
    decode_step_s_median: float = math.nan  # per-token latency, every timed step pooled
    decode_step_s_p90: float = math.nan
    decode_tokens_per_s: float = math.nan  # batch / decode_step_s_median
    kv_cache_bytes_per_device: float = math.nan  # the cache arrays' shards, measured
    est_kv_cache_bytes_per_device: float = math.nan  # scaling.estimate.inference
    est_decode_flops_per_step: float = math.nan  # scaling.estimate.inference, per device
    est_decode_bytes_per_step: float = math.nan  # weights + cache read per step, per device
    # XLA's cost_analysis of the lowered decode step (layers unrolled, one device): FLOPs agree
    # with the estimate within ~1 % (elementwise work); "bytes accessed" sums every op's
    # operands and results, so it is several times the unique HBM traffic estimated above.
    xla_decode_flops_per_step: float = math.nan
    xla_decode_bytes_per_step: float = math.nan
    predicted_prefill_s: float = math.nan  # roofline
    predicted_decode_step_s: float = math.nan
    predicted_decode_tokens_per_s: float = math.nan
    predicted_bound: str = ""  # "memory" or "compute"
    compute_bound_batch: float = math.nan  # NaN: never compute-bound
    peak_flops_per_device: float = math.nan
    bandwidth_bytes_per_s: float = math.nan  # per device
    hardware_source: str = ""
    device_kind: str = ""
    platform: str = ""
    jax_version: str = ""
    flax_version: str = ""
    git_sha: str = ""
    hostname: str = ""
    started_at: str = ""
    wall_s: float = math.nan
    schema_version: int = DECODE_SCHEMA_VERSION


@dataclass
class DecodeStep:
    """One timed decode step (one new token for every row)."""

    run_id: str
    repeat: int
    step: int  # 1 .. gen_len - 1 (token 0 comes from the prefill)
    latency_s: float


DECODE_COLUMNS = [f.name for f in dataclasses.fields(DecodeRecord)]
DECODE_STEP_COLUMNS = [f.name for f in dataclasses.fields(DecodeStep)]
_REQUIRED = ("run_id", "size", "batch", "status")


def decode_run_id(settings: dict) -> str:
    """sha256 of the canonical JSON of the configuration keys (16 hex digits)."""
    config = {k: settings[k] for k in DECODE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def write_decode(out_dir: str | Path, record: DecodeRecord, steps: list[DecodeStep]) -> None:
    import pandas as pd

    out_dir = Path(out_dir)
    frame = pd.DataFrame([dataclasses.asdict(s) for s in steps], columns=DECODE_STEP_COLUMNS)
    write_frame_atomic(frame, out_dir / DECODE_STEPS_DIR / f"{record.run_id}.parquet")
    row = pd.DataFrame([dataclasses.asdict(record)], columns=DECODE_COLUMNS)
    write_frame_atomic(row, out_dir / DECODE_DIR / f"{record.run_id}.parquet")


def decode_status(out_dir: str | Path, run_id: str) -> str | None:
    """The recorded status of ``run_id`` (None: not recorded, or unreadable)."""
    path = Path(out_dir) / DECODE_DIR / f"{run_id}.parquet"
    if not path.is_file():
        return None
    try:
        return str(read_record_file(path, ("status",))["status"].iloc[0])
    except (ValueError, IndexError):
        return None


def _load_all(dirs, sub: str, columns: list[str], required: tuple[str, ...]) -> pd.DataFrame:
    import pandas as pd

    frames = [_load(Path(d) / sub, columns, required) for d in dirs]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def load_decode(*dirs: str | Path) -> pd.DataFrame:
    """Every decode row of the directories (an empty frame where there are none); a
    ``ValueError`` names a file that does not read."""
    return _load_all(dirs, DECODE_DIR, DECODE_COLUMNS, _REQUIRED)


def load_decode_steps(*dirs: str | Path) -> pd.DataFrame:
    return _load_all(dirs, DECODE_STEPS_DIR, DECODE_STEP_COLUMNS, ("run_id", "latency_s"))
