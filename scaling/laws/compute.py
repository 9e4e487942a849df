"""The loss-vs-compute law L(C) = E + A·C^(−α): pure NumPy, with SciPy's curve_fit when importable.
Knows nothing of records or figures (the report's scaling-law figure and ``scaling fit --law
loss-vs-compute`` both use it)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np


@dataclass
class ScalingFit:
    """L(C) = E + A·C^(−α) fitted by least squares on log L. Standard errors from the
    covariance (NaN when there are no degrees of freedom)."""

    E: float
    A: float
    alpha: float
    E_se: float
    A_se: float
    alpha_se: float
    n_points: int
    method: str
    rmse_log: float  # root-mean-square residual of log L

    def predict(self, compute) -> np.ndarray:
        return self.E + self.A * np.asarray(compute, dtype=float) ** (-self.alpha)


def _law_log(x, E, a, alpha):
    return np.log(E + np.exp(a - alpha * x))


def _law_jac(x, E, a, alpha):
    u = np.exp(a - alpha * x)
    d = E + u
    return np.stack([1 / d, u / d, -x * u / d], axis=1)


def _profile_start(x: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Best (E, a, α) over a grid of E below min(L), each with (a, α) by linear regression
    of log(L − E) on x."""
    y = np.log(loss)
    best, best_cost = None, np.inf
    for E in loss.min() * (1 - np.geomspace(1, 1e-3, 120)):
        slope, intercept = np.polyfit(x, np.log(loss - E), 1)
        if slope >= 0:
            continue
        p = np.array([E, intercept, -slope])
        cost = float(np.sum((_law_log(x, *p) - y) ** 2))
        if cost < best_cost:
            best, best_cost = p, cost
    if best is None:  # loss does not fall with compute: a flat start
        best = np.array([0.5 * loss.min(), np.log(0.5 * loss.min()), 0.1])
    return best


def _levenberg_marquardt(x, y, p0, iterations: int = 500) -> np.ndarray:
    p = np.asarray(p0, dtype=float)
    r = _law_log(x, *p) - y
    cost, lam = float(r @ r), 1e-3
    for _ in range(iterations):
        J = _law_jac(x, *p)
        H, g = J.T @ J, J.T @ r
        try:
            step = np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), -g)
        except np.linalg.LinAlgError:
            break
        trial = p + step
        trial[0], trial[2] = max(trial[0], 0.0), max(trial[2], 0.0)
        r_new = _law_log(x, *trial) - y
        new_cost = float(r_new @ r_new)
        if np.isfinite(new_cost) and new_cost <= cost:
            done = cost - new_cost <= 1e-15 * max(cost, 1e-300)
            p, r, cost, lam = trial, r_new, new_cost, lam / 3
            if done:
                break
        else:
            lam *= 4
            if lam > 1e12:
                break
    return p


def _scipy_fit(x, y, p0, required: bool) -> np.ndarray | None:
    """scipy.optimize.curve_fit with E, α ≥ 0; None when SciPy is missing (and not
    ``required``) or the fit fails."""
    try:
        from scipy.optimize import OptimizeWarning, curve_fit
    except ImportError:
        if required:
            raise
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, _ = curve_fit(
                _law_log,
                x,
                y,
                p0=p0,
                jac=_law_jac,
                method="trf",
                bounds=([0, -np.inf, 0], [np.inf, np.inf, np.inf]),
                max_nfev=5000,
            )
    except (RuntimeError, ValueError):
        return None
    return popt


def fit_scaling_law(compute, loss, *, use_scipy: bool | None = None) -> ScalingFit:
    """Fit L(C) = E + A·C^(−α) to (compute, loss) points (≥ 3 distinct compute values).

    Least squares on log L with parameters (E, log A', α) and C normalised by its geometric
    mean C₀, so A = A'·C₀^α; scipy.optimize.curve_fit when importable (``use_scipy=None``),
    else a Levenberg–Marquardt of our own, both started from a profile over E."""
    C = np.asarray(compute, dtype=float)
    L = np.asarray(loss, dtype=float)
    keep = np.isfinite(C) & np.isfinite(L) & (C > 0) & (L > 0)
    C, L = C[keep], L[keep]
    distinct = len(np.unique(C))
    if distinct < 3:
        raise ValueError(f"fitting E + A·C^-α needs ≥ 3 distinct compute points; got {distinct}")
    log_c0 = float(np.mean(np.log(C)))
    x, y = np.log(C) - log_c0, np.log(L)
    p0 = _profile_start(x, L)
    popt = None if use_scipy is False else _scipy_fit(x, y, p0, required=bool(use_scipy))
    method = "numpy Levenberg-Marquardt" if popt is None else "scipy.optimize.curve_fit"
    if popt is None:
        popt = _levenberg_marquardt(x, y, p0)
    resid = _law_log(x, *popt) - y
    dof = len(y) - 3
    cov = np.full((3, 3), np.nan)
    if dof > 0:
        J = _law_jac(x, *popt)
        cov = np.linalg.pinv(J.T @ J) * float(resid @ resid) / dof
    E, a, alpha = (float(v) for v in popt)
    log_a = a + alpha * log_c0
    var_log_a = cov[1, 1] + log_c0**2 * cov[2, 2] + 2 * log_c0 * cov[1, 2]
    A = math.exp(log_a)
    return ScalingFit(
        E=E,
        A=A,
        alpha=alpha,
        E_se=float(np.sqrt(cov[0, 0])),
        A_se=float(A * np.sqrt(var_log_a)),
        alpha_se=float(np.sqrt(cov[2, 2])),
        n_points=len(y),
        method=method,
        rmse_log=float(np.sqrt(np.mean(resid**2))),
    )
