"""Throughput regression check: a current sweep record against a baseline. Never imports jax.

Runs are matched by configuration (``records.CONFIG_KEYS``: size, family, d_model, n_layers,
tied, mode, mesh, muP, batch, seq, dtype, remat), never by run id or row order, and only
``status == "ok"`` rows are compared; several rows of one configuration on a side (repeated
sweeps) compare by their median. Each matched configuration gets a verdict:

* ``ok``          the metric is within ``tolerance`` of the baseline;
* ``REGRESSED``   worse by more than ``tolerance`` (exit 1);
* ``improved``    better by more than ``tolerance`` (exit 0, with a hint to refresh the baseline);
* ``FAILED``      ok in the baseline but recorded with another status now (exit 1).

Given a ``remeasure`` function (the CLI passes ``scaling.sweep.remeasure``), a REGRESSED or FAILED
configuration is re-measured once before the verdict (its settings rebuilt from
``settings_json``); the re-measurement decides. In relative mode (below) the re-measurement is
side by side instead: every compared configuration is measured again, one after another, up to
``REMEASURE_SWEEPS`` more times while something is still REGRESSED, and the verdict is the median
over all sweeps of each sweep's own factor-divided ratio. The comparison itself is a pure
function of two records and what the re-measurements return. Configurations present on one
side only are listed (``missing in current`` / ``missing in baseline``), never dropped silently,
and do not change the exit code; nothing to compare at all is bad input (exit 2).

Metric: ``mfu`` by default. On CPU its peak is a matmul probe timed after every timed step in
the same worker process (median; since the probe replaced a one-off calibration, three quiet
sweeps show per-configuration max/min 1.04-1.16 and the baseline is their median), so a
machine whose cores are uniformly faster or slower moves numerator and denominator together;
``tokens_per_s`` and ``step_time_s_median`` (lower is better) are raw wall-clock numbers,
comparable on one machine only. Each value is already the median of the run's timed steps.

Tolerance: ``DEFAULT_TOLERANCE = 0.20``, from the run-to-run spread of ``sweeps/ci.toml`` on a
2-core CPU host shared with other engineers' jax jobs (10 sweeps, 5 configurations each):

* quiet host (5 sweeps, ~46 s each): per-configuration MFU max/min 1.19-1.34; leave-one-out
  ratios to the median of the others 0.77-1.18, 4 % of them below 0.80. With the one
  re-measurement that is ~0.2 % false alarms per configuration, ~1 % per CI run.
* host loaded by others (5 sweeps, 63-77 s; 3 more at 8 steps, up to 120 s): max/min up to
  2.8 (3.2 at 8 steps). The calibration matmul flips between ~90 and ~200 GFLOP/s with a
  neighbour on one core, the tiny model's steps by less and not always in the same second,
  so MFU mostly reads high (1.1-1.6× the quiet median) but sometimes low (0.55×): 14 % of the
  comparisons fall below 0.80. This check is meant for an otherwise idle runner.

0.20 stays clear of the quiet spread while a 30 % slowdown (ratio 0.70) still fails with 10
points to spare. ``sweeps/baselines/ci-cpu.parquet`` holds three quiet sweeps (the check uses
their per-configuration median), refreshed in stop 28: the one-device configuration had become
1.21-1.24x faster than the others against the baseline of three weeks before (the lean backward
residuals and row-merged matmuls help it most), which pushed every machine factor up. The three
sweeps gave per-configuration max/min 1.05-1.15.

Relative mode (``relative=True``, ``--relative``) is for a machine other than the baseline's:
MFU against a CPU probe still differs between CPU models (on the CI runner of stop 20 every
tiny configuration read 0.78-0.85× this host's baseline, uniformly, while code that had passed
here at 0.99-1.19×). There the check divides every ratio by the *machine factor*, the median of
the matched configurations' ratios measured side by side in the one current sweep, and gates
on what remains: a configuration that got slower relative to the others (a mode's sharding,
one code path) still fails, while a uniform shift, which on another machine cannot be told from
the hardware, is reported as the machine factor and not gated. It needs at least
``MIN_RELATIVE`` matched configurations so that one regressed configuration cannot move the
median by itself.

Why relative mode re-measures the whole grid: a configuration re-run alone would be divided by a
machine factor measured minutes earlier, on a host whose load had changed since. On the CI
runner of stop 27, tiny fsdp_tp read 0.754 in the sweep and 0.625 when re-run alone, and the
check failed on code whose fresh clone had passed here (0.88 quiet). Under a one-core busy loop
on this host, three sweeps put single configurations at 0.74-0.81 (dp, fsdp_tp) and others at
1.05-1.47 in one sweep, never the same one twice; the median over three sweeps is what a 30 %
slowdown of one mode still fails and one perturbed sweep no longer does.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from scaling import records
from scaling.records import CONFIG_KEYS, config_of

if TYPE_CHECKING:  # pandas loads with the records, so `scaling --help` starts fast
    import pandas as pd

DEFAULT_TOLERANCE = 0.20
DEFAULT_METRIC = "mfu"
MIN_RELATIVE = 3
REMEASURE_SWEEPS = 2  # relative mode: side-by-side sweeps re-measured at most
METRICS: dict[str, bool] = {  # metric → higher is better
    "mfu": True,
    "tokens_per_s": True,
    "step_time_s_median": False,
}
Remeasure = Callable[[str], "records.RunRecord"]  # settings_json → the re-measured record


@dataclass
class Comparison:
    """One configuration: its values on both sides (``None`` where absent) and the verdict."""

    config: dict
    label: str
    verdict: str  # ok | REGRESSED | improved | FAILED | missing in current | missing in baseline
    baseline: float | None = None
    current: float | None = None
    ratio: float | None = None  # current / baseline
    remeasured: bool = False
    first_current: float | None = None  # the value before the re-measurement
    # relative mode's side-by-side re-measurement: the value and the factor-divided ratio
    # of every sweep this configuration ran ok in (the first one included)
    values: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    note: str = ""
    settings_json: str = ""  # of the current run (what a re-measurement rebuilds)


@dataclass
class CheckResult:
    metric: str
    tolerance: float
    rows: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine_factor: float | None = None  # relative mode: median current/baseline ratio

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric]

    def with_verdict(self, *verdicts: str) -> list[Comparison]:
        return [r for r in self.rows if r.verdict in verdicts]

    @property
    def passed(self) -> bool:
        return not self.with_verdict("REGRESSED", "FAILED")

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "tolerance": self.tolerance,
            "machine_factor": self.machine_factor,
            "passed": self.passed,
            "rows": [
                {k: v for k, v in dataclasses.asdict(r).items() if k != "settings_json"}
                for r in self.rows
            ],
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------------------------
# Loading


def load_baseline(path: str | Path) -> pd.DataFrame:
    """Run rows from a baseline parquet file or a sweep record directory."""
    path = Path(path)
    if path.is_dir():
        return _validated(records.load_runs(path), path)
    if not path.is_file():
        raise ValueError(
            f"baseline {str(path)!r} not found (expected a parquet file or a "
            "sweep record directory)"
        )
    import pandas as pd

    try:
        runs = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise ValueError(
            f"baseline {str(path)!r} is not a readable parquet file: {type(exc).__name__}"
        ) from None
    return _validated(runs, path)


def load_current(*paths: str | Path) -> pd.DataFrame:
    """Run rows of one or more sweep record directories (repeated sweeps of one grid: each
    configuration is then compared by its median)."""
    if not paths:
        raise ValueError("no current record given")
    for path in paths:
        if not Path(path).exists():
            raise ValueError(
                f"current record {str(path)!r} not found (expected a sweep record "
                "directory, e.g. runs/)"
            )
    return _validated(records.load_runs(*paths), Path(paths[0]))


def _validated(runs: pd.DataFrame, path: Path) -> pd.DataFrame:
    optional = {"d_model", "n_layers", "tied", "family", "attention", "loss_chunk"}  # config_of
    needed = {*CONFIG_KEYS, "status", *METRICS} - optional
    missing = sorted(needed - set(runs.columns))
    if missing:
        raise ValueError(f"{str(path)!r} is not a run record: missing columns {missing}")
    if runs.empty:
        raise ValueError(f"{str(path)!r} holds no runs")
    return runs


# ---------------------------------------------------------------------------------------------
# Matching and verdicts


def label_of(config: dict) -> str:
    """Compact text for a configuration: defaults (llama, float32, remat none, SP) left out."""
    parts = [config["size"], config["mode"], config["mesh"] or "?"]
    if config["family"] != "llama":
        parts.append(config["family"])
    if config["mup"]:
        parts.append("muP")
    if config["tied"] is not None:
        parts.append("tied" if config["tied"] else "untied")
    parts.append(f"{config['batch']}×{config['seq']}")
    if config["dtype"] != "float32":
        parts.append(config["dtype"])
    if config["remat"] != "none":
        parts.append(f"remat={config['remat']}")
    return " ".join(parts)


def _group(runs: pd.DataFrame, metric: str) -> tuple[dict, dict]:
    """(ok, other): per configuration key, the ok rows' median metric and a representative row;
    and the non-ok statuses of configurations without any ok row."""
    ok: dict[tuple, dict] = {}
    other: dict[tuple, dict] = {}
    for _, row in runs.iterrows():
        config = config_of(row)
        key = tuple(config[k] for k in CONFIG_KEYS)
        value = float(row[metric])
        if row["status"] == "ok" and math.isfinite(value):
            entry = ok.setdefault(key, {"config": config, "values": [], "row": row})
            entry["values"].append(value)
        else:
            entry = other.setdefault(key, {"config": config, "row": row, "statuses": set()})
            entry["statuses"].add(str(row["status"]))
    for entry in ok.values():
        entry["value"] = float(statistics.median(entry["values"]))
    return ok, {k: v for k, v in other.items() if k not in ok}


def verdict_of(ratio: float, tolerance: float, higher_is_better: bool) -> str:
    """``ratio`` is current / baseline."""
    better = ratio if higher_is_better else 1.0 / ratio  # > 1 means faster
    if better < 1.0 - tolerance:
        return "REGRESSED"
    if better > 1.0 + tolerance:
        return "improved"
    return "ok"


def _validate_options(metric: str, tolerance: float) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be between 0 and 1 (a fraction), got {tolerance}")


def compare(
    baseline: pd.DataFrame,
    current: pd.DataFrame,
    *,
    metric: str = DEFAULT_METRIC,
    tolerance: float = DEFAULT_TOLERANCE,
    remeasure: Remeasure | None = None,
    on_remeasure: Callable[[Comparison], None] | None = None,
    relative: bool = False,
) -> CheckResult:
    """Compare two run tables by configuration; ``remeasure`` (if given) re-runs each
    regressed configuration once and the re-measurement decides its verdict. ``relative``
    divides every ratio by the machine factor (module docstring) before the verdict."""
    _validate_options(metric, tolerance)
    higher = METRICS[metric]
    base_ok, base_other = _group(baseline, metric)
    cur_ok, cur_other = _group(current, metric)
    result = CheckResult(metric, tolerance)
    for key, base in base_ok.items():
        config = base["config"]
        row = Comparison(config, label_of(config), "", baseline=base["value"])
        if key in cur_ok:
            cur = cur_ok[key]
            row.current, row.settings_json = cur["value"], str(cur["row"].get("settings_json", ""))
            row.ratio = row.current / row.baseline
            row.verdict = verdict_of(row.ratio, tolerance, higher)
            if len(cur["values"]) > 1:
                row.note = f"median of {len(cur['values'])} current runs"
        else:
            failed = cur_other.pop(key, None) or _pop_meshless(cur_other, config)
            if failed is not None:
                row.verdict = "FAILED"
                row.settings_json = str(failed["row"].get("settings_json", ""))
                status = "/".join(sorted(failed["statuses"]))
                row.note = f"status {status}: {str(failed['row'].get('error', ''))[:120]}"
            else:
                row.verdict = "missing in current"
        result.rows.append(row)
    for key, cur in cur_ok.items():
        if key not in base_ok:
            config = cur["config"]
            note = (
                "not ok in baseline: " + "/".join(sorted(base_other[key]["statuses"]))
                if key in base_other
                else ""
            )
            result.rows.append(
                Comparison(
                    config, label_of(config), "missing in baseline", current=cur["value"], note=note
                )
            )
    for entry in cur_other.values():  # not ok now, and not in the baseline either
        config = entry["config"]
        result.rows.append(
            Comparison(
                config,
                label_of(config),
                "missing in baseline",
                note="status " + "/".join(sorted(entry["statuses"])),
            )
        )
    if not any(r.verdict not in ("missing in current", "missing in baseline") for r in result.rows):
        raise ValueError(
            f"no matching runs: the baseline has {len(base_ok)} ok configuration(s), the current "
            f"record {len(cur_ok)}, none in common (matched on {', '.join(CONFIG_KEYS)})"
        )
    result.notes += _environment_notes(baseline, current)
    if relative:
        _apply_machine_factor(result, higher)
    if remeasure is not None and relative:
        _remeasure_side_by_side(result, remeasure, on_remeasure)
    elif remeasure is not None:
        for row in result.with_verdict("REGRESSED", "FAILED"):
            if on_remeasure is not None:
                on_remeasure(row)
            _remeasure_row(row, remeasure, metric, tolerance, higher)
    order = {"FAILED": 0, "REGRESSED": 1, "improved": 2, "ok": 3}
    result.rows.sort(key=lambda r: (order.get(r.verdict, 4), r.label))
    return result


def _apply_machine_factor(result: CheckResult, higher: bool) -> None:
    """Divide each matched ratio by the median ratio of the matched configurations."""
    matched = [r for r in result.rows if r.ratio is not None]
    if len(matched) < MIN_RELATIVE:
        raise ValueError(
            f"--relative needs at least {MIN_RELATIVE} configurations in common with the "
            f"baseline, got {len(matched)}"
        )
    factor = float(statistics.median(r.ratio for r in matched))
    result.machine_factor = factor
    for row in matched:
        row.ratio /= factor
        row.verdict = verdict_of(row.ratio, result.tolerance, higher)
    result.notes.append(
        f"relative: ratios divided by the machine factor {factor:.3f} (median current/baseline "
        f"of {len(matched)} configurations measured side by side); a uniform shift is not gated"
    )


def _pop_meshless(other: dict, config: dict) -> dict | None:
    """A failed run records the mesh it was asked for ('' for the mode's default), not the
    mesh it would have had: match it on everything else."""
    for key, entry in other.items():
        if entry["config"]["mesh"] == "" and all(
            entry["config"][k] == config[k] for k in CONFIG_KEYS if k != "mesh"
        ):
            return other.pop(key)
    return None


def _remeasure_row(
    row: Comparison, remeasure: Remeasure, metric: str, tolerance: float, higher: bool
) -> None:
    if not row.settings_json:
        row.note = "cannot re-measure: the record has no settings_json"
        return
    value = _remeasured(row, remeasure, metric, "re-measurement")
    if value is None:
        return
    row.first_current, row.current = row.current, value
    row.ratio = value / row.baseline
    row.verdict = verdict_of(row.ratio, tolerance, higher)


def _remeasured(row: Comparison, remeasure: Remeasure, metric: str, what: str) -> float | None:
    """Run ``row``'s configuration again: its ``metric``, or None with the reason in its note."""
    record = remeasure(row.settings_json)
    row.remeasured = True
    value = float(getattr(record, metric))
    if record.status != "ok":
        row.note = f"{what} {record.status}: {record.error[:120]}"
        return None
    if not math.isfinite(value):
        row.note = f"{what} recorded no {metric}"
        return None
    return value


def _remeasure_side_by_side(
    result: CheckResult,
    remeasure: Remeasure,
    on_remeasure: Callable[[Comparison], None] | None,
) -> None:
    """Relative mode: while a configuration is REGRESSED or FAILED, measure every compared
    configuration again, one after another (a new sweep, with its own machine factor), up to
    ``REMEASURE_SWEEPS`` times; each configuration's verdict is then the median of its
    factor-divided ratios over all the sweeps it ran ok in."""
    higher = result.higher_is_better
    rows = [
        r for r in result.rows if r.settings_json and (r.ratio is not None or r.verdict == "FAILED")
    ]
    for row in rows:
        row.ratios = [] if row.ratio is None else [row.ratio]
        row.values = [] if row.current is None else [row.current]
    for row in result.with_verdict("REGRESSED", "FAILED"):
        if not row.settings_json:
            row.note = "cannot re-measure: the record has no settings_json"
    for sweep in range(1, REMEASURE_SWEEPS + 1):
        if not any(r.verdict in ("REGRESSED", "FAILED") for r in rows):
            return
        measured = {}
        for row in rows:
            if on_remeasure is not None:
                on_remeasure(row)
            value = _remeasured(row, remeasure, result.metric, f"re-measurement {sweep}")
            if value is not None:
                measured[id(row)] = value
        if len(measured) < MIN_RELATIVE:
            result.notes.append(
                f"re-measurement {sweep}: only {len(measured)} configuration(s) ran ok, too few "
                f"for a machine factor (need {MIN_RELATIVE}); its values are not used"
            )
            continue
        factor = float(
            statistics.median(measured[id(r)] / r.baseline for r in rows if id(r) in measured)
        )
        result.notes.append(
            f"re-measurement {sweep}: {len(measured)} configurations side by side, machine "
            f"factor {factor:.3f}"
        )
        for row in rows:
            if id(row) not in measured:
                continue
            if row.first_current is None and row.current is not None:
                row.first_current = row.current
            row.values.append(measured[id(row)])
            row.ratios.append(measured[id(row)] / row.baseline / factor)
            row.current = float(statistics.median(row.values))
            row.ratio = float(statistics.median(row.ratios))
            row.verdict = verdict_of(row.ratio, result.tolerance, higher)
            row.note = f"median of {len(row.ratios)} sweeps: " + ", ".join(
                f"{x:.3f}" for x in row.ratios
            )


def _environment_notes(baseline: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    notes = []
    for column in ("device_kind", "platform"):
        if column in baseline.columns and column in current.columns:
            b = sorted(set(baseline.loc[baseline["status"] == "ok", column].astype(str)))
            c = sorted(set(current.loc[current["status"] == "ok", column].astype(str)))
            if b and c and b != c:
                notes.append(f"{column} differs: baseline {', '.join(b)}, current {', '.join(c)}")
                break
    return notes


# ---------------------------------------------------------------------------------------------
# Re-measuring, the whole check, and refreshing the baseline


def check(
    baseline: str | Path,
    current: str | Path | list[str | Path],
    *,
    metric: str = DEFAULT_METRIC,
    tolerance: float = DEFAULT_TOLERANCE,
    remeasure: Remeasure | None = None,
    on_remeasure: Callable[[Comparison], None] | None = None,
    relative: bool = False,
) -> CheckResult:
    """Load both sides and compare them; ``remeasure`` (e.g. ``scaling.sweep.remeasure``)
    re-runs each regressed configuration once; ``relative`` gates on ratios divided by the
    machine factor."""
    _validate_options(metric, tolerance)
    base = load_baseline(baseline)
    cur = load_current(*(current if isinstance(current, list | tuple) else [current]))
    return compare(
        base,
        cur,
        metric=metric,
        tolerance=tolerance,
        remeasure=remeasure,
        on_remeasure=on_remeasure,
        relative=relative,
    )


def update_baseline(baseline: str | Path, *current: str | Path) -> int:
    """Write the ok runs of the current record(s) to the parquet file ``baseline`` atomically
    (temporary file in the same directory, then rename); return how many rows. Several
    records of the same grid make a baseline of per-configuration medians."""
    baseline = Path(baseline)
    if baseline.is_dir():
        raise ValueError(
            f"--update-baseline writes a parquet file, but {str(baseline)!r} is a directory"
        )
    runs = load_current(*current)
    ok = runs[runs["status"] == "ok"].reset_index(drop=True)
    if ok.empty:
        raise ValueError(f"{', '.join(map(str, current))} holds no ok runs to make a baseline of")
    records.write_frame_atomic(ok, baseline)
    return len(ok)
