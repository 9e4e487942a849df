"""Approach 1 of Hoffmann et al. 2022 (§3.1): the minimum loss over training runs at each compute.
Every run's loss curve is a function of its cumulative compute; at each compute C of a log grid
the run of lowest (interpolated) loss gives N_opt(C) (its parameters) and D_opt(C) (its tokens by
then), and power laws through those points give N_opt ∝ C^a, D_opt ∝ C^b. Pure NumPy.

Caveat the paper states: a point inside a run lies on that run's learning-rate schedule, which
was set for its full length, so its loss is higher than a run ending there would reach; with one
step count per size this favours the larger models at small C. Several step counts per size
(``scaling plan ladder``) reduce it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.laws.bootstrap import Interval, bootstrap, interval
from scaling.laws.isoflop import PowerLaw, fit_power_law

GRID_POINTS = 100


@dataclass(frozen=True)
class Curve:
    """One run's loss against cumulative compute (FLOPs) and tokens, after its LR warm-up."""

    n_params: float
    compute: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray


@dataclass(frozen=True)
class Envelope:
    """At each compute of the grid, the lowest loss over the runs and that run's N and D;
    ``interior`` where that N is neither the smallest nor the largest of the runs reaching that
    compute (elsewhere the optimum may lie beyond the sampled sizes)."""

    compute: np.ndarray
    n_opt: np.ndarray
    d_opt: np.ndarray
    loss: np.ndarray
    interior: np.ndarray


def envelope(curves: list[Curve], points: int = GRID_POINTS) -> Envelope | None:
    """The lower envelope on a log grid from the compute where the first run ends to where the
    last ends (before any run ends, every run is early in its schedule and the smallest model
    wins by default), loss interpolated linearly in ln C within each run; None when fewer than
    two runs reach a compute of that range."""
    ends = np.sort([c.compute[-1] for c in curves])
    if len(curves) < 2 or ends[0] >= ends[-1]:
        return None
    grid = np.geomspace(ends[0], ends[-1], points)
    loss = np.full((len(curves), points), np.inf)
    for i, c in enumerate(curves):
        reach = (grid >= c.compute[0]) & (grid <= c.compute[-1])
        loss[i, reach] = np.interp(np.log(grid[reach]), np.log(c.compute), c.loss)
    sizes = np.array([c.n_params for c in curves], dtype=float)[:, None]
    reached = np.isfinite(loss)
    smallest = np.where(reached, sizes, np.inf).min(axis=0)
    largest = np.where(reached, sizes, -np.inf).max(axis=0)
    best = np.argmin(loss, axis=0)
    cols = np.arange(points)
    n_opt = np.array([curves[i].n_params for i in best])
    tokens_per_flop = np.array([curves[i].tokens[-1] / curves[i].compute[-1] for i in best])
    d_opt = grid * tokens_per_flop  # a run's tokens grow in proportion to its compute
    interior = (n_opt > smallest) & (n_opt < largest)
    return Envelope(grid, n_opt, d_opt, loss[best, cols], interior)


@dataclass(frozen=True)
class EnvelopeFit:
    envelope: Envelope
    n_opt: PowerLaw
    d_opt: PowerLaw
    a: Interval
    b: Interval
    sizes_on_envelope: int  # distinct model sizes that are an interior optimum somewhere

    def to_dict(self) -> dict:
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "sizes_on_envelope": self.sizes_on_envelope,
            "compute_range": [float(self.envelope.compute[0]), float(self.envelope.compute[-1])],
        }


def _laws(curves: list[Curve]) -> tuple[Envelope, PowerLaw, PowerLaw] | None:
    """The envelope and power laws through its interior points; None when fewer than two
    model sizes are interior optima (no exponent to fit)."""
    env = envelope(curves)
    if env is None or np.unique(env.n_opt[env.interior]).size < 2:
        return None
    c, n, d = env.compute[env.interior], env.n_opt[env.interior], env.d_opt[env.interior]
    return env, fit_power_law(c, n), fit_power_law(c, d)


def fit_envelope(curves: list[Curve], *, resamples: int = 0, seed: int = 0) -> EnvelopeFit | None:
    """Approach 1 with bootstrap intervals on a and b (whole runs resampled); None when fewer
    than two model sizes are ever the best."""
    fitted = _laws(curves)
    if fitted is None:
        return None
    env, n_law, d_law = fitted

    def refit(idx: np.ndarray) -> dict[str, float] | None:
        again = _laws([curves[i] for i in idx])
        return None if again is None else {"a": again[1].exponent, "b": again[2].exponent}

    samples = bootstrap(refit, len(curves), resamples, seed=seed) if resamples else {}
    return EnvelopeFit(
        env,
        n_law,
        d_law,
        interval(n_law.exponent, samples.get("a")),
        interval(d_law.exponent, samples.get("b")),
        int(np.unique(env.n_opt[env.interior]).size),
    )
