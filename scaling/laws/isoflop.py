"""Approach 2 of Hoffmann et al. 2022 (§3.2, "IsoFLOP profiles"): on each compute budget C, fit a
parabola to the final loss against ln N and against ln D; its vertex is that budget's
compute-optimal N_opt(C) and D_opt(C). Power laws through the vertices give N_opt ∝ C^a and
D_opt ∝ C^b (least squares on logs, as the paper's Figure 3 does). Pure NumPy.

Units: N parameters, D tokens, C FLOPs, loss nats/token."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scaling.laws.bootstrap import Interval, bootstrap, interval

BUDGET_TOLERANCE = 0.10  # runs whose compute differs by < 10 % belong to one budget


def budget_labels(compute, tolerance: float = BUDGET_TOLERANCE) -> np.ndarray:
    """Label each run with the index of its compute budget: runs sorted by compute start a new
    budget where consecutive computes differ by more than ``tolerance`` (relative). Integer
    step counts put a planned run's compute within a few per cent of its budget."""
    C = np.asarray(compute, dtype=float)
    order = np.argsort(C)
    gaps = np.diff(np.log(C[order])) > math.log1p(tolerance)
    labels = np.empty(C.size, dtype=int)
    labels[order] = np.concatenate([[0], np.cumsum(gaps)]) if C.size else []
    return labels


@dataclass(frozen=True)
class Parabola:
    """loss = c0 + c1·x + c2·x² over x = ln(N) (or ln D) sampled on [x_lo, x_hi]."""

    c0: float
    c1: float
    c2: float
    x_lo: float
    x_hi: float

    @property
    def vertex(self) -> float:
        return -self.c1 / (2 * self.c2)

    @property
    def convex(self) -> bool:
        return self.c2 > 0

    @property
    def inside(self) -> bool:
        """Whether the minimum lies within the sampled range (else it is extrapolated)."""
        return self.convex and self.x_lo <= self.vertex <= self.x_hi

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return self.c0 + self.c1 * x + self.c2 * x * x


def fit_parabola(x, loss) -> Parabola | None:
    """Least-squares parabola of loss in x; None with fewer than 3 distinct x."""
    x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    if np.unique(x).size < 3:
        return None
    c2, c1, c0 = np.polyfit(x, loss, 2)
    return Parabola(float(c0), float(c1), float(c2), float(x.min()), float(x.max()))


@dataclass(frozen=True)
class Profile:
    """One budget's IsoFLOP profile: its compute (geometric mean of its runs' C), the parabolas
    in ln N and ln D and their vertices."""

    compute: float
    n_runs: int
    in_n: Parabola
    in_d: Parabola

    @property
    def usable(self) -> bool:
        """Both parabolas convex with their minimum inside the sampled sizes."""
        return self.in_n.inside and self.in_d.inside

    @property
    def n_opt(self) -> float:
        return math.exp(self.in_n.vertex) if self.in_n.convex else math.nan

    @property
    def d_opt(self) -> float:
        return math.exp(self.in_d.vertex) if self.in_d.convex else math.nan

    @property
    def loss_opt(self) -> float:
        return float(self.in_n(self.in_n.vertex)) if self.in_n.convex else math.nan


def profiles(N, D, C, loss, labels) -> list[Profile]:
    """The profile of every budget with ≥ 3 distinct sizes, by compute."""
    N, D, C, loss, labels = (np.asarray(v) for v in (N, D, C, loss, labels))
    found = []
    for label in np.unique(labels):
        on = labels == label
        in_n = fit_parabola(np.log(N[on].astype(float)), loss[on])
        in_d = fit_parabola(np.log(D[on].astype(float)), loss[on])
        if in_n is None or in_d is None:
            continue
        compute = float(np.exp(np.mean(np.log(C[on].astype(float)))))
        found.append(Profile(compute, int(on.sum()), in_n, in_d))
    return sorted(found, key=lambda p: p.compute)


@dataclass(frozen=True)
class PowerLaw:
    """y = k·C^exponent, fitted by least squares on (ln C, ln y)."""

    log_k: float
    exponent: float

    def __call__(self, C) -> np.ndarray:
        return np.exp(self.log_k + self.exponent * np.log(np.asarray(C, dtype=float)))


def fit_power_law(C, y) -> PowerLaw:
    slope, intercept = np.polyfit(np.log(np.asarray(C, float)), np.log(np.asarray(y, float)), 1)
    return PowerLaw(float(intercept), float(slope))


@dataclass(frozen=True)
class IsoFlopLaws:
    """N_opt(C) and D_opt(C) through the usable profiles' vertices."""

    n_opt: PowerLaw
    d_opt: PowerLaw
    used: tuple[Profile, ...]


def fit_vertices(found: list[Profile]) -> IsoFlopLaws | None:
    """Power laws through the vertices of the usable profiles; None with fewer than 2."""
    used = tuple(p for p in found if p.usable)
    if len(used) < 2:
        return None
    C = [p.compute for p in used]
    return IsoFlopLaws(
        fit_power_law(C, [p.n_opt for p in used]), fit_power_law(C, [p.d_opt for p in used]), used
    )


@dataclass(frozen=True)
class IsoFlopFit:
    """Approach 2 with bootstrap intervals (runs resampled within each budget)."""

    laws: IsoFlopLaws
    profiles: tuple[Profile, ...]  # every budget's, usable or not
    a: Interval  # N_opt ∝ C^a
    b: Interval  # D_opt ∝ C^b
    allocations: tuple[tuple[float, Interval, Interval], ...]  # (C, N_opt, D_opt)
    resamples: int

    def to_dict(self) -> dict:
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "n_opt_law": {"log_k": self.laws.n_opt.log_k, "exponent": self.laws.n_opt.exponent},
            "d_opt_law": {"log_k": self.laws.d_opt.log_k, "exponent": self.laws.d_opt.exponent},
            "profiles": [
                {
                    "compute": p.compute,
                    "runs": p.n_runs,
                    "n_opt": p.n_opt,
                    "d_opt": p.d_opt,
                    "loss_opt": p.loss_opt,
                    "usable": p.usable,
                }
                for p in self.profiles
            ],
            "allocations": [
                {"budget": c, "n_opt": n.to_dict(), "d_opt": d.to_dict()}
                for c, n, d in self.allocations
            ],
            "resamples": self.resamples,
        }


def fit_isoflop(
    N, D, C, loss, labels=None, *, budgets=(), resamples: int = 0, seed: int = 0
) -> IsoFlopFit | None:
    """Approach 2 on runs with parameters N, tokens D, compute C and final ``loss``; ``labels``
    name each run's budget (default: ``budget_labels(C)``). ``budgets``: computes at which to
    give N_opt and D_opt with intervals. None when fewer than 2 budgets have a usable profile
    (≥ 3 sizes, convex, minimum inside the sampled sizes)."""
    N, D, C, loss = (np.asarray(v, dtype=float) for v in (N, D, C, loss))
    labels = budget_labels(C) if labels is None else np.asarray(labels)
    found = profiles(N, D, C, loss, labels)
    laws = fit_vertices(found)
    if laws is None:
        return None

    def refit(idx: np.ndarray) -> dict[str, float] | None:
        again = fit_vertices(profiles(N[idx], D[idx], C[idx], loss[idx], labels[idx]))
        if again is None:
            return None
        out = {"a": again.n_opt.exponent, "b": again.d_opt.exponent}
        for i, c in enumerate(budgets):
            out[f"n{i}"], out[f"d{i}"] = float(again.n_opt(c)), float(again.d_opt(c))
        return out

    samples = bootstrap(refit, N.size, resamples, seed=seed, strata=labels) if resamples else {}
    allocations = tuple(
        (
            float(c),
            interval(float(laws.n_opt(c)), samples.get(f"n{i}")),
            interval(float(laws.d_opt(c)), samples.get(f"d{i}")),
        )
        for i, c in enumerate(budgets)
    )
    return IsoFlopFit(
        laws,
        tuple(found),
        interval(laws.n_opt.exponent, samples.get("a")),
        interval(laws.d_opt.exponent, samples.get("b")),
        allocations,
        resamples,
    )
