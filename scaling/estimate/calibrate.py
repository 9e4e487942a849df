"""Calibrated roofline: fit the efficiency factors of ``roofline.Efficiency`` (achieved
fractions of peak compute, HBM and link bandwidth, and a fixed overhead per step) to measured
runs of a sweep record, then predict the step time of other configurations. Pure NumPy/SciPy on
stored records; never imports jax.

For each configuration (the median over its repeated runs) the roofline's terms are recomputed
at efficiency 1 from its settings (``spec.run_config_from_settings``) against its host's peak
(``with_host_peaks``: the median of the peaks recorded on that host) and the HBM and link
bandwidths of its device's profile (on CPU: the unmeasured copy-bandwidth order of magnitude,
which the fitted η rescales).
The model of ``roofline.Estimate.predicted_step_s`` is then

    t = overhead + Σ_matmuls max(F_i/η_compute, B_i/η_hbm) + M/η_hbm
        (+ L/η_link, or max(·, L/η_link) with overlap)

and the factors minimise the squared log-ratio of predicted to measured median step time
(``scipy.optimize.least_squares``), so every run weighs by its relative error. A factor whose
term stays below ``MIN_SHARE`` of every run's time at the fitted efficiencies (no
communication in one-device runs) is not fitted and stays 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from scaling.config import parse_mesh
from scaling.estimate.hardware import (
    HardwareProfile,
    cpu_profile,
    custom_profile,
    host_memory_bytes,
    match_device_kind,
)
from scaling.estimate.roofline import DATASHEET, Efficiency, estimate
from scaling.estimate.traffic import matmuls

FACTORS = ("compute", "hbm", "link", "overhead_s")
# A factor is fitted only where its term reaches this share of some run's time at the fitted
# efficiencies; below it the runs cannot tell its value (the link on one CPU host: copies of
# < 1 % of a step).
MIN_SHARE = 0.02


@dataclass(frozen=True)
class Terms:
    """Roofline terms of one run at efficiency 1 (seconds per step) and its measured time.
    ``matmuls``: (FLOPs / peak, bytes / bandwidth) of each matmul group (``traffic.matmuls``);
    ``memory_s`` the rest of the HBM traffic."""

    compute_s: float
    memory_s: float
    comm_s: float
    overlap: bool  # communication may hide under the device time (not on a shared host)
    measured_s: float
    matmuls: tuple[tuple[float, float], ...] = ()

    def predict(self, eff: Efficiency) -> float:
        if self.matmuls:
            products = sum(max(f / eff.compute, b / eff.hbm) for f, b in self.matmuls)
        else:
            products = self.compute_s / eff.compute
        device = eff.overhead_s + products + self.memory_s / eff.hbm
        comm = self.comm_s / eff.link
        return max(device, comm) if self.overlap else device + comm


@dataclass(frozen=True)
class Calibration:
    """Fitted efficiencies and how well they describe the runs they were fitted on."""

    efficiency: Efficiency
    fitted: tuple[str, ...]  # the factors the runs determined (others stay at 1 / 0)
    n_runs: int
    rms_log_error: float  # root-mean-square of log(predicted / measured) on those runs

    def to_dict(self) -> dict[str, object]:
        return {
            "efficiency": self.efficiency.to_dict(),
            "fitted": list(self.fitted),
            "n_runs": self.n_runs,
            "rms_log_error": self.rms_log_error,
        }


def run_profile(row: Mapping) -> HardwareProfile:
    """The profile a recorded run was measured against: its recorded peak per device, the
    bandwidths of its device kind's profile (CPU: the shared host's placeholder)."""
    peak, n = float(row["peak_flops_per_device"]), int(row["n_devices"])
    if str(row.get("platform", "")) == "cpu" or str(row.get("device_kind", "")).lower() == "cpu":
        return cpu_profile(peak * n, host_memory_bytes())  # the estimator divides by n again
    known = match_device_kind(str(row.get("device_kind", "")))
    return custom_profile(known, name=known.name if known else "recorded", peak_tflops=peak / 1e12)


def run_terms(row: Mapping) -> Terms:
    """``Terms`` of one recorded ok run (a dict or a pandas row of ``records.RunRecord``)."""
    from scaling.spec import run_config_from_settings

    run = run_config_from_settings(json.loads(row["settings_json"]))
    profile = run_profile(row)
    mesh = parse_mesh(str(row["mesh"]))
    est = estimate(run.model, mode=run.mode, mesh=mesh, batch=run.batch, seq=run.seq,
                   hardware=profile)  # fmt: skip
    flop_rate = est.peak_flops_per_device
    byte_rate = est.traffic.total / est.memory_s if est.memory_s else math.inf
    products = tuple(
        (p.flops / flop_rate, p.bytes / byte_rate)
        for p in matmuls(run.model, mode=run.mode, mesh=mesh, batch=run.batch, seq=run.seq)
    )
    return Terms(est.compute_s, est.memory_s, est.comm_s, not profile.devices_share_host,
                 float(row["step_time_s_median"]), products)  # fmt: skip


def _efficiency(x: np.ndarray, fitted: tuple[str, ...]) -> Efficiency:
    values = dict(DATASHEET.to_dict())
    for name, value in zip(fitted, x, strict=True):
        values[name] = float(value) if name == "overhead_s" else float(math.exp(-value))
    return Efficiency(**values)


def fit(terms: Iterable[Terms]) -> Calibration:
    """Least-squares efficiencies for ``terms`` (at least two runs with a finite step time).
    A factor whose term, at the fitted efficiencies, stays below ``MIN_SHARE`` of every run's
    time is dropped (left at 1) and the rest refitted: those runs cannot tell its value."""

    runs = [t for t in terms if t.measured_s > 0 and math.isfinite(t.measured_s)]
    if len(runs) < 2:
        raise ValueError(f"calibration needs at least 2 measured ok runs, got {len(runs)}")
    fitted = tuple(
        name
        for name, column in (("compute", "compute_s"), ("hbm", "memory_s"), ("link", "comm_s"))
        if any(getattr(t, column) > 0 or (name == "hbm" and t.matmuls) for t in runs)
    )
    while True:
        names = (*fitted, "overhead_s")[: len(runs)]  # never more unknowns than runs
        eff, rms = _least_squares(runs, names)
        weak = [n for n in names if n != "overhead_s" and _max_share(runs, eff, n) < MIN_SHARE]
        if not weak:
            return Calibration(eff, names, len(runs), rms)
        fitted = tuple(n for n in fitted if n not in weak)


def _max_share(runs: list[Terms], eff: Efficiency, name: str) -> float:
    """The largest share of a run's predicted time that the term of ``name`` accounts for at
    the efficiencies ``eff``: the time that disappears when that term is free."""
    free = dataclasses.replace(eff, **{name: math.inf})
    return max(1.0 - t.predict(free) / t.predict(eff) for t in runs)


def _least_squares(runs: list[Terms], fitted: tuple[str, ...]) -> tuple[Efficiency, float]:
    from scipy.optimize import least_squares

    measured = np.log([t.measured_s for t in runs])

    def residuals(x: np.ndarray) -> np.ndarray:
        eff = _efficiency(x, fitted)
        return np.log([max(t.predict(eff), 1e-12) for t in runs]) - measured

    # x: log(1/η) for the fractions (any sign), seconds for the overhead (>= 0; started
    # inside its bound: least_squares started on a bound can stop at once)
    lower = [0.0 if name == "overhead_s" else -np.inf for name in fitted]
    start = [0.01 * min(t.measured_s for t in runs) if n == "overhead_s" else 0.0 for n in fitted]
    result = least_squares(residuals, start, bounds=(lower, np.inf))
    return _efficiency(result.x, fitted), float(np.sqrt(np.mean(result.fun**2)))


def _shared(row: Mapping) -> bool:
    return str(row.get("platform", "")) == "cpu" or str(row.get("device_kind", "")) == "cpu"


def with_host_peaks(rows: Iterable[Mapping]) -> list[dict]:
    """The ok rows with each run's peak replaced by the median over every run of its host
    (hostname, device kind, dtype). A CPU run's peak is a probe sampled between its steps: a
    few snapshots of the load of the moment. On a shared host they scatter far more than the
    steps do (measured here: 17–79 GFLOP/s across one sweep, MFU 0.99–1.98 for 125m and
    350m, against 0.63 on a quiet host: the probe side under-read), so the calibration holds
    every run to the host's median. Datasheet peaks are constant and stay as they are."""
    rows = [dict(r) for r in rows if r.get("status", "ok") == "ok"]
    hosts: dict[tuple, list[float]] = {}
    for r in rows:
        scale = float(r["n_devices"]) if _shared(r) else 1.0  # the host's, not a share
        key = (r.get("hostname", ""), r.get("device_kind", ""), r.get("dtype", ""))
        hosts.setdefault(key, []).append(float(r["peak_flops_per_device"]) * scale)
    for r in rows:
        key = (r.get("hostname", ""), r.get("device_kind", ""), r.get("dtype", ""))
        scale = float(r["n_devices"]) if _shared(r) else 1.0
        r["peak_flops_per_device"] = float(np.median(hosts[key])) / scale
    return rows


def prepared(rows: Iterable[Mapping]) -> list[dict]:
    """What the calibration fits and predicts: host peaks, then one row per configuration."""
    return medians_by_config(with_host_peaks(rows))


def medians_by_config(rows: Iterable[Mapping]) -> list[dict]:
    """One row per configuration (``records.CONFIG_KEYS``) of the ok runs: the median step
    time and the median peak over its repeats (sweeps run again into other directories), the
    rest from its first run. On a shared host one run's step times and probe samples follow
    the load of the moment; medians over repeats are what a prediction is held to."""
    from scaling.records import config_key

    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        if row.get("status", "ok") == "ok":
            groups.setdefault(config_key(row), []).append(row)
    out = []
    for repeats in groups.values():
        row = dict(repeats[0])
        for column in ("step_time_s_median", "peak_flops_per_device"):
            row[column] = float(np.median([float(r[column]) for r in repeats]))
        row["repeats"] = len(repeats)
        out.append(row)
    return out


def calibrate_rows(rows: Iterable[Mapping]) -> Calibration:
    """``fit`` on recorded ok runs (``prepared``: host peaks, medians per configuration)."""
    return fit(run_terms(r) for r in prepared(rows))
