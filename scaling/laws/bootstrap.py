"""Bootstrap intervals: refit on resampled runs, report percentile intervals (Efron & Tibshirani
1993, ch. 13). Resampling whole runs, not residuals, keeps each run's (N, D, loss) together, as
Hoffmann et al. 2022 and Besiroglu et al. 2024 ("Chinchilla scaling: a replication attempt")
do for the parametric fit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # the intervals' nominal coverage


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval (``lo``, ``hi``) at ``level``;
    NaN bounds when too few resamples succeeded."""

    value: float
    lo: float = float("nan")
    hi: float = float("nan")
    level: float = LEVEL

    def covers(self, truth: float) -> bool:
        return bool(self.lo <= truth <= self.hi)

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "level": self.level}

    def text(self, fmt: str = "{:.4g}") -> str:
        """``value [lo, hi]``, or the value alone when there is no interval."""
        if not (np.isfinite(self.lo) and np.isfinite(self.hi)):
            return fmt.format(self.value)
        return f"{fmt.format(self.value)} [{fmt.format(self.lo)}, {fmt.format(self.hi)}]"


def resample_indices(
    n: int, rng: np.random.Generator, strata: Sequence[int] | None = None
) -> np.ndarray:
    """Indices of one bootstrap sample of ``n`` runs: drawn with replacement from all runs, or
    within each stratum (e.g. each compute budget) when ``strata`` labels them."""
    if strata is None:
        return rng.integers(0, n, n)
    labels = np.asarray(strata)
    parts = [
        rng.choice(np.flatnonzero(labels == s), size=int(np.sum(labels == s)))
        for s in np.unique(labels)
    ]
    return np.concatenate(parts)


def bootstrap(
    fit: Callable[[np.ndarray], dict[str, float] | None],
    n: int,
    resamples: int,
    *,
    seed: int = 0,
    strata: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Call ``fit(indices)`` on ``resamples`` resamples of ``n`` runs; each call returns named
    quantities (or None when the resample cannot be fitted). Returns one array per name, NaN
    where a resample failed."""
    rng = np.random.default_rng(seed)
    results = [fit(resample_indices(n, rng, strata)) for _ in range(resamples)]
    names = sorted({k for r in results if r for k in r})
    return {
        name: np.array([r.get(name, np.nan) if r else np.nan for r in results], dtype=float)
        for name in names
    }


def interval(value: float, samples: np.ndarray | None, level: float = LEVEL) -> Interval:
    """``value`` with the percentile interval of the finite ``samples``; no interval when fewer
    than 20 resamples succeeded or none were drawn."""
    if samples is None:
        return Interval(float(value), level=level)
    finite = np.asarray(samples, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size < 20:
        return Interval(float(value), level=level)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(value), float(lo), float(hi), level)


def success_fraction(samples: dict[str, np.ndarray]) -> float:
    """Fraction of resamples that produced every quantity."""
    if not samples:
        return 0.0
    stacked = np.vstack(list(samples.values()))
    return float(np.mean(np.all(np.isfinite(stacked), axis=0)))
