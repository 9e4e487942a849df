"""Parametric laws of final loss in model size N (parameters) and training tokens D, fitted the
way Hoffmann et al. 2022 (Chinchilla) fit their approach 3 (appendix D.2): a Huber loss
(δ = 10⁻³) on the residuals of log-loss, minimised with L-BFGS from a grid of initialisations.

* ``ChinchillaLaw``: L(N, D) = E + A/N^α + B/D^β, fitted as
  log L = LSE(a − α·log N, b − β·log D, e) with A = eᵃ, B = eᵇ, E = eᵉ (Hoffmann et al., eq. 2
  and D.2). Compute-optimal under C = 6·N·D (their eq. 4): N_opt = G·(C/6)^(β/(α+β)),
  D_opt = G⁻¹·(C/6)^(α/(α+β)), G = (α·A / (β·B))^(1/(α+β)).
* ``KaplanLaw``: L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D (Kaplan et al. 2020, eq. 1.5), fitted
  the same way; minimising it along C = 6·N·D gives
  N_opt = (p·N_c^p·C / (6·D_c))^(1/(p+1)) with p = α_N/α_D.

The grid is Chinchilla's: α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}
(4,500 points). Evaluating the objective on all of them is one vectorised pass; L-BFGS then
starts from the ``starts`` best of them (and from any ``extra`` starts given, e.g. the full-data
optimum for a bootstrap resample) and the lowest minimum wins. Pure NumPy/SciPy.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from scaling.laws.bootstrap import Interval, bootstrap, interval, success_fraction

HUBER_DELTA = 1e-3
STARTS = 8  # L-BFGS runs from the best grid points
_LBFGS = {"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-11, "maxcor": 20}
_POSITIVE = (1e-6, 10.0)  # bounds on exponents


_blas_depth = 0


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with one BLAS thread. SciPy's L-BFGS-B calls OpenBLAS on vectors of 4–5
    numbers; with OpenBLAS's worker threads on a busy host every call waits for them (measured
    on the 2-core development host under load: 0.7 ms vs 0.03 ms per L-BFGS-B iteration).
    Re-entrant: only the outermost block sets the limit (setting it costs ~4 ms)."""
    global _blas_depth
    if _blas_depth:
        yield
        return
    _blas_depth += 1
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        _blas_depth -= 1


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals ``r`` divided by δ (same minimiser, values of order |r|), and
    its derivative: r²/(2δ) for |r| ≤ δ, |r| − δ/2 beyond."""
    a = np.abs(r)
    quad = a <= delta
    value = np.where(quad, 0.5 * r * r / delta, a - 0.5 * delta)
    grad = np.where(quad, r / delta, np.sign(r))
    return value, grad


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A/N^α + B/D^β (nats/token; N parameters, D tokens)."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    law = "chinchilla"

    def loss(self, N, D) -> np.ndarray:
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A * N**-self.alpha + self.B * D**-self.beta

    @property
    def a(self) -> float:
        """Exponent of N_opt(C) ∝ C^a: β/(α+β)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt(C) ∝ C^b: α/(α+β)."""
        return self.alpha / (self.alpha + self.beta)

    def optimal(self, C) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N_opt, D_opt, L) at compute C = 6·N·D (FLOPs), Hoffmann et al. eq. 4."""
        C = np.asarray(C, dtype=float)
        s = self.alpha + self.beta
        log_g = (math.log(self.alpha * self.A) - math.log(self.beta * self.B)) / s
        N = np.exp(log_g + self.a * np.log(C / 6))
        D = C / (6 * N)
        return N, D, self.loss(N, D)

    def params(self) -> dict[str, float]:
        return {**asdict(self), "a": self.a, "b": self.b}


@dataclass(frozen=True)
class KaplanLaw:
    """L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D (Kaplan et al. 2020, eq. 1.5)."""

    N_c: float
    D_c: float
    alpha_N: float
    alpha_D: float

    law = "kaplan"

    def loss(self, N, D) -> np.ndarray:
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        p = self.alpha_N / self.alpha_D
        return ((self.N_c / N) ** p + self.D_c / D) ** self.alpha_D

    @property
    def a(self) -> float:
        """Exponent of N_opt(C) ∝ C^a: 1/(p+1) = α_D/(α_N+α_D)."""
        return self.alpha_D / (self.alpha_N + self.alpha_D)

    @property
    def b(self) -> float:
        return 1 - self.a

    def optimal(self, C) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N_opt, D_opt, L) minimising the law along C = 6·N·D (FLOPs)."""
        C = np.asarray(C, dtype=float)
        p = self.alpha_N / self.alpha_D
        log_n = (
            math.log(p) + p * math.log(self.N_c) + np.log(C) - math.log(6) - math.log(self.D_c)
        ) / (p + 1)
        N = np.exp(log_n)
        D = C / (6 * N)
        return N, D, self.loss(N, D)

    def params(self) -> dict[str, float]:
        return {**asdict(self), "a": self.a, "b": self.b}


Law = ChinchillaLaw | KaplanLaw


def _lse3(t1, t2, t3):
    m = np.maximum(np.maximum(t1, t2), t3)
    e1, e2, e3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(t3 - m)
    total = e1 + e2 + e3
    return m + np.log(total), e1 / total, e2 / total, e3 / total


class _Chinchilla:
    """θ = (a, b, e, α, β); log L̂ = LSE(a − α·log N, b − β·log D, e)."""

    names = ("a", "b", "e", "alpha", "beta")
    bounds = [(None, None), (None, None), (None, None), _POSITIVE, _POSITIVE]
    grid = np.array(
        [
            (a, b, e, al, be)
            for al, be, e, a, b in itertools.product(
                np.arange(0, 2.01, 0.5),
                np.arange(0, 2.01, 0.5),
                np.arange(-1, 1.01, 0.5),
                np.arange(0, 25.1, 5),
                np.arange(0, 25.1, 5),
            )
        ]
    )

    @staticmethod
    def predict(theta, log_n, log_d):
        """log L̂ for θ of shape (5,) or (G, 5); with its softmax weights."""
        theta = np.asarray(theta, dtype=float)
        a, b, e, al, be = (theta[..., i, None] for i in range(5))
        return _lse3(a - al * log_n, b - be * log_d, e + 0 * log_n)

    @classmethod
    def objective(cls, theta, log_n, log_d, log_l, delta):
        pred, w1, w2, w3 = cls.predict(theta, log_n, log_d)
        value, dh = huber(pred - log_l, delta)
        grad = np.array(
            [
                np.sum(dh * w1),
                np.sum(dh * w2),
                np.sum(dh * w3),
                -np.sum(dh * w1 * log_n),
                -np.sum(dh * w2 * log_d),
            ]
        )
        return float(np.sum(value)), grad

    @staticmethod
    def law(theta) -> ChinchillaLaw:
        a, b, e, al, be = (float(v) for v in theta)
        return ChinchillaLaw(E=math.exp(e), A=math.exp(a), alpha=al, B=math.exp(b), beta=be)

    @staticmethod
    def theta(law: ChinchillaLaw) -> np.ndarray:
        return np.array([math.log(law.A), math.log(law.B), math.log(law.E), law.alpha, law.beta])


class _Kaplan:
    """θ = (ln N_c, ln D_c, α_N, α_D); log L̂ = α_D·logaddexp(p·(ln N_c − ln N), ln D_c − ln D)."""

    names = ("ln_N_c", "ln_D_c", "alpha_N", "alpha_D")
    bounds = [(None, None), (None, None), _POSITIVE, _POSITIVE]
    grid = np.array(
        list(
            itertools.product(
                np.arange(0, 40.1, 5),
                np.arange(0, 40.1, 5),
                (0.05, 0.1, 0.2, 0.4, 0.8),
                (0.05, 0.1, 0.2, 0.4, 0.8),
            )
        )
    )

    @staticmethod
    def predict(theta, log_n, log_d):
        theta = np.asarray(theta, dtype=float)
        ln_nc, ln_dc, an, ad = (theta[..., i, None] for i in range(4))
        diff = ln_nc - log_n
        u = an / ad * diff
        s = np.logaddexp(u, ln_dc - log_d)
        return ad * s, u, s, np.exp(u - s), diff

    @classmethod
    def objective(cls, theta, log_n, log_d, log_l, delta):
        pred, u, s, wu, diff = cls.predict(theta, log_n, log_d)
        value, dh = huber(pred - log_l, delta)
        _, _, an, ad = (float(v) for v in theta)
        grad = np.array(
            [
                np.sum(dh * an * wu),
                np.sum(dh * ad * (1 - wu)),
                np.sum(dh * wu * diff),
                np.sum(dh * (s - wu * u)),
            ]
        )
        return float(np.sum(value)), grad

    @staticmethod
    def law(theta) -> KaplanLaw:
        ln_nc, ln_dc, an, ad = (float(v) for v in theta)
        return KaplanLaw(N_c=math.exp(ln_nc), D_c=math.exp(ln_dc), alpha_N=an, alpha_D=ad)

    @staticmethod
    def theta(law: KaplanLaw) -> np.ndarray:
        return np.array([math.log(law.N_c), math.log(law.D_c), law.alpha_N, law.alpha_D])


FORMS = {"chinchilla": _Chinchilla, "kaplan": _Kaplan}


@dataclass(frozen=True)
class ParametricFit:
    """A fitted law, the minimised objective (Σ Huber/δ) and the points it saw."""

    law: Law
    objective: float
    n_points: int
    rmse_log: float  # root-mean-square residual of log L


def fit_law(
    N,
    D,
    loss,
    *,
    law: str = "chinchilla",
    delta: float = HUBER_DELTA,
    starts: int = STARTS,
    extra_starts: tuple[Law, ...] = (),
) -> ParametricFit:
    """Fit ``law`` ("chinchilla" or "kaplan") to final losses of runs with N parameters and D
    tokens; raises ValueError with fewer points than the law has parameters + 1."""
    if law not in FORMS:
        raise ValueError(f"unknown law {law!r}; valid: {', '.join(FORMS)}")
    form = FORMS[law]
    N, D, L = (np.asarray(x, dtype=float) for x in (N, D, loss))
    keep = np.isfinite(N) & np.isfinite(D) & np.isfinite(L) & (N > 0) & (D > 0) & (L > 0)
    log_n, log_d, log_l = np.log(N[keep]), np.log(D[keep]), np.log(L[keep])
    need = len(form.names) + 1
    if log_l.size < need:
        raise ValueError(f"fitting the {law} law needs ≥ {need} runs; got {log_l.size}")
    candidates = []
    if starts > 0:  # the grid pass costs ~20 ms at 50 runs
        grid_pred = form.predict(form.grid, log_n, log_d)[0]
        grid_cost = np.sum(huber(grid_pred - log_l, delta)[0], axis=1)
        candidates = [form.grid[i] for i in np.argsort(grid_cost)[:starts]]
    candidates += [form.theta(x) for x in extra_starts]
    best = None
    with one_blas_thread():
        for theta0 in candidates:
            result = minimize(
                form.objective,
                theta0,
                args=(log_n, log_d, log_l, delta),
                jac=True,
                method="L-BFGS-B",
                bounds=form.bounds,
                options=_LBFGS,
            )
            if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
                best = result
    if best is None:
        raise ValueError(f"the {law} fit found no finite minimum from {len(candidates)} starts")
    resid = form.predict(best.x, log_n, log_d)[0] - log_l
    return ParametricFit(
        form.law(best.x), float(best.fun), int(log_l.size), float(np.sqrt(np.mean(resid**2)))
    )


@dataclass(frozen=True)
class Allocation:
    """The compute-optimal split of a budget (FLOPs) under a fitted law, with intervals."""

    budget: float
    n_opt: Interval  # parameters
    d_opt: Interval  # tokens
    loss: Interval  # predicted loss at (N_opt, D_opt), nats/token

    @property
    def tokens_per_param(self) -> float:
        return self.d_opt.value / self.n_opt.value

    def to_dict(self) -> dict:
        return {
            "budget": self.budget,
            "n_opt": self.n_opt.to_dict(),
            "d_opt": self.d_opt.to_dict(),
            "loss": self.loss.to_dict(),
            "tokens_per_param": self.tokens_per_param,
        }


@dataclass(frozen=True)
class LawStudy:
    """A parametric fit with bootstrap intervals on its parameters, on the compute-optimal
    allocation of each requested budget and on its predictions at requested (N, D)."""

    fit: ParametricFit
    params: dict[str, Interval]
    allocations: tuple[Allocation, ...]
    predictions: tuple[Interval, ...]
    resamples: int
    success: float  # fraction of resamples that could be fitted

    def to_dict(self) -> dict:
        return {
            "law": self.fit.law.law,
            "params": {k: v.to_dict() for k, v in self.params.items()},
            "n_points": self.fit.n_points,
            "rmse_log": self.fit.rmse_log,
            "allocations": [a.to_dict() for a in self.allocations],
            "resamples": self.resamples,
            "resample_success": self.success,
        }


def _quantities(law: Law, budgets, predict_at) -> dict[str, float]:
    """Every number a study reports of one law, by name."""
    out = dict(law.params())
    for i, c in enumerate(budgets):
        n, d, loss = (float(v) for v in law.optimal(c))
        out.update({f"n{i}": n, f"d{i}": d, f"l{i}": loss})
    for i, (n, d) in enumerate(predict_at):
        out[f"p{i}"] = float(law.loss(n, d))
    return out


def study_law(
    N,
    D,
    loss,
    *,
    law: str = "chinchilla",
    budgets=(),
    predict_at=(),
    resamples: int = 0,
    seed: int = 0,
) -> LawStudy:
    """Fit ``law`` to the runs and bootstrap it (``resamples`` resamples of whole runs, each
    refitted by L-BFGS from the full-data optimum, which the full fit found from the grid);
    report intervals on the
    parameters, on the compute-optimal allocation of each budget (FLOPs, along C = 6·N·D) and on
    the predicted loss at each (N, D) of ``predict_at``."""
    N, D, loss = (np.asarray(v, dtype=float) for v in (N, D, loss))
    with one_blas_thread():
        full = fit_law(N, D, loss, law=law)

        def refit(idx: np.ndarray) -> dict[str, float] | None:
            try:
                again = fit_law(
                    N[idx],
                    D[idx],
                    loss[idx],
                    law=law,
                    starts=0,
                    extra_starts=(full.law,),
                )
            except ValueError:
                return None
            return _quantities(again.law, budgets, predict_at)

        samples = bootstrap(refit, N.size, resamples, seed=seed) if resamples else {}
    point = _quantities(full.law, budgets, predict_at)
    params = {k: interval(point[k], samples.get(k)) for k in full.law.params()}
    allocations = tuple(
        Allocation(
            float(c),
            interval(point[f"n{i}"], samples.get(f"n{i}")),
            interval(point[f"d{i}"], samples.get(f"d{i}")),
            interval(point[f"l{i}"], samples.get(f"l{i}")),
        )
        for i, c in enumerate(budgets)
    )
    predictions = tuple(
        interval(point[f"p{i}"], samples.get(f"p{i}")) for i in range(len(predict_at))
    )
    success = success_fraction(samples) if resamples else 0.0
    return LawStudy(full, params, allocations, predictions, resamples, success)
