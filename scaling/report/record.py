"""The loaded record of one or more sweep directories: runs (sorted, labelled), steps and
coord-check tables. Reads only the parquet (``scaling.records``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from scaling import records
from scaling.decode_record import load_decode
from scaling.presets import PRESETS
from scaling.sharding import MODES

# Columns that may distinguish runs of the same size × mode (shown as "variants").
VARIANT_COLUMNS = ("mesh", "mup", "batch", "seq", "dtype", "remat", "source")
RUN_ID_COLUMNS = ["source", "run_id", "label", "size", "mode", "mup"]  # who a row is
COORD_COLUMNS = {"mup", "width", "step", "site", "rms"}
_REQUIRED = ("run_id", "size", "mode", "status")
_FLOAT_COLUMNS = tuple(
    f.name for f in dataclasses.fields(records.RunRecord) if f.type in ("float", float)
)


@dataclass
class Record:
    """The runs (one row per run, plus ``source``, ``label`` and ``variant``), their steps and
    any coord-check tables of one or more sweep directories."""

    dirs: list[Path]
    runs: pd.DataFrame
    steps: pd.DataFrame
    coord: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    # decode benchmark rows (``scaling.decode_record``), with ``source``; None where none
    decode: pd.DataFrame | None = None
    # results computed once per report and shared by its figures (e.g. the scaling-law fits)
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "ok"]


def mode_rank(mode: str) -> tuple[int, str]:
    return (MODES.index(mode) if mode in MODES else len(MODES), mode)


def _source_names(dirs: Sequence[Path]) -> list[str]:
    names = [d.resolve().name or str(d) for d in dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    return names


def load_record(*dirs: str | Path) -> Record:
    """Load sweep directories; a missing, empty or foreign folder raises ValueError."""
    if not dirs:
        raise ValueError("give at least one sweep directory")
    paths = [Path(d) for d in dirs]
    runs_frames, steps_frames, coord_frames, notes = [], [], [], []
    decode_frames = []
    for path, source in zip(paths, _source_names(paths), strict=True):
        decode = load_decode(path) if path.is_dir() else None
        if decode is not None and not decode.empty:
            decode_frames.append(decode.assign(source=source))
        if decode_frames and not (path / "runs").is_dir():  # a decode-only record
            runs = pd.DataFrame(columns=records.RUN_COLUMNS)
            steps = pd.DataFrame(columns=records.STEP_COLUMNS)
        else:
            runs, steps = _read_sweep(path)
        runs_frames.append(_normalise_runs(runs).assign(source=source))
        steps_frames.append(steps.assign(source=source))
        coord = _read_coord(path, notes)
        if coord is not None:
            coord_frames.append(coord.assign(source=source))
    runs = pd.concat(runs_frames, ignore_index=True)
    steps = pd.concat(steps_frames, ignore_index=True)
    for col in ("step", "loss", "step_time_s"):  # an empty steps file reads as object columns
        steps[col] = pd.to_numeric(steps[col], errors="coerce") if col in steps else math.nan
    steps = steps[steps["step"].notna()].astype({"step": "int64"})
    coord = pd.concat(coord_frames, ignore_index=True) if coord_frames else None
    runs = _sort_runs(runs)
    runs["label"] = _labels(runs)
    runs["variant"] = _variants(runs)
    decode = pd.concat(decode_frames, ignore_index=True) if decode_frames else None
    return Record(paths, runs.reset_index(drop=True), steps, coord, notes, decode=decode)


def _read_sweep(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a directory (expected a sweep record)")
    try:
        runs = records.load_runs(path)
        steps = records.load_steps(path)
    except Exception as exc:  # an unreadable parquet file: name the folder
        if type(exc) is ValueError:  # load_runs' own message (pyarrow's errors subclass it)
            raise
        raise ValueError(
            f"{str(path)!r} is not a readable sweep record: {type(exc).__name__}: {exc}"
        ) from None
    missing = [c for c in _REQUIRED if c not in runs.columns]
    if missing:
        raise ValueError(
            f"{str(path)!r} is not a scaling sweep record: runs/*.parquet lacks "
            f"{', '.join(missing)}"
        )
    return runs, steps


def _read_coord(path: Path, notes: list[str]) -> pd.DataFrame | None:
    coord_path = path / records.COORD_CHECK_FILE
    if not coord_path.is_file():
        return None
    coord = pd.read_parquet(coord_path)
    lacking = COORD_COLUMNS - set(coord.columns)
    if lacking:
        notes.append(f"{coord_path} lacks {', '.join(sorted(lacking))}; coord check skipped.")
        return None
    return coord


def _normalise_runs(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.copy()
    defaults = {f.name: f.default for f in dataclasses.fields(records.RunRecord)}
    for col in records.RUN_COLUMNS:
        if col not in runs.columns:
            default = defaults[col]
            runs[col] = math.nan if default is dataclasses.MISSING else default
    for col in _FLOAT_COLUMNS:
        runs[col] = pd.to_numeric(runs[col], errors="coerce").astype(float)
    for col in ("size", "mode", "mesh", "status", "error", "dtype", "remat", "run_id"):
        runs[col] = runs[col].fillna("").astype(str)
    runs["mup"] = runs["mup"].fillna(False).astype(bool)
    return runs


def _sort_runs(runs: pd.DataFrame) -> pd.DataFrame:
    order = size_order(runs)
    rank = {s: i for i, s in enumerate(order)}
    return (
        runs.assign(_s=runs["size"].map(rank), _m=runs["mode"].map(lambda m: mode_rank(m)[0]))
        .sort_values(["_s", "_m", "mode", "mup", "lr", "mesh", "source", "run_id"])
        .drop(columns=["_s", "_m"])
    )


def size_order(runs: pd.DataFrame) -> list[str]:
    """Known presets in ladder order, then others by parameter count."""
    n_params = runs.groupby("size")["n_params"].max()
    known = [s for s in PRESETS if s in n_params.index]
    other = sorted((s for s in n_params.index if s not in PRESETS), key=lambda s: (n_params[s], s))
    return known + other


def varying(runs: pd.DataFrame, columns: Iterable[str], within: Sequence[str] = ()) -> list[str]:
    """The ``columns`` with more than one value (within some group of ``within``, if given)."""
    out = []
    for col in columns:
        if within:
            counts = runs.groupby(list(within))[col].nunique()
            if (counts > 1).any():
                out.append(col)
        elif runs[col].nunique() > 1:
            out.append(col)
    return out


def describe(row, columns: Iterable[str]) -> list[str]:
    parts = []
    for col in columns:
        value = row[col]
        if col == "mup":
            parts.append("muP" if value else "SP")
        elif col == "lr":
            parts.append(f"lr {value:.3g}")
        elif col == "mesh":
            parts.append(f"mesh {value}")
        elif col == "source":
            parts.append(f"[{value}]")
        else:
            parts.append(f"{col} {value}")
    return parts


def _labels(runs: pd.DataFrame) -> list[str]:
    extra = varying(
        runs,
        ("mesh", "mup", "lr", "batch", "seq", "dtype", "remat", "steps", "seed", "source"),
        within=("size", "mode"),
    )
    return [" ".join([r["size"], r["mode"], *describe(r, extra)]) for _, r in runs.iterrows()]


def _variants(runs: pd.DataFrame) -> list[str]:
    cols = varying(runs, VARIANT_COLUMNS, within=("size", "mode"))
    return [", ".join(describe(r, cols)) for _, r in runs.iterrows()]
