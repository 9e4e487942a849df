"""A scaling-law study of a sweep record: ok runs become fit points (N parameters, D tokens, C
FLOPs, final loss), grouped by parametrization and architecture (never mixed in one fit), and
each group gets approach 1 (``envelope``), approach 2 (``isoflop``), the chosen law (approach 3,
``parametric``, or L(C) of ``compute``), held-out extrapolation and the compute-optimal
allocation of the requested budgets. Reads pandas frames of ``scaling.records``; no jax.

N is the run's total parameter count (``n_params``), D its training tokens (``tokens_seen``:
batch · seq · steps), C its model FLOPs (steps · ``model_flops_per_step``: 6·N_matmul per token
plus attention, ``scaling.estimate.flops``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.laws.bootstrap import Interval
from scaling.laws.compute import ScalingFit, fit_scaling_law
from scaling.laws.envelope import Curve, EnvelopeFit, fit_envelope
from scaling.laws.isoflop import IsoFlopFit, fit_isoflop
from scaling.laws.parametric import FORMS, LawStudy, study_law

LOSSES = {"val": "final_val_loss", "train": "final_loss"}
LAWS = (*FORMS, "loss-vs-compute")
# What makes runs comparable in one fit: the architecture family and head, the
# parametrization, the context length and the data (the loss is in nats of its tokens).
GROUP_KEYS = ("family", "tied", "mup", "seq", "data")


@dataclass(frozen=True)
class StudyOptions:
    law: str = "chinchilla"
    loss: str = "val"
    holdout: str = "none"  # "none", "largest" (every run of the largest N) or a run count
    resamples: int = 200
    budgets: tuple[float, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.law not in LAWS:
            raise ValueError(f"unknown law {self.law!r}; valid: {', '.join(LAWS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; valid: {', '.join(LOSSES)}")
        if self.holdout not in ("none", "largest") and not _positive_int(self.holdout):
            raise ValueError(
                f"bad holdout {self.holdout!r}; valid: none, largest, or a number of runs"
            )
        if self.resamples < 0:
            raise ValueError(f"bootstrap resamples must be ≥ 0, got {self.resamples}")
        for budget in self.budgets:
            if not (math.isfinite(budget) and budget > 0):
                raise ValueError(f"bad budget {budget!r}; give positive FLOPs, e.g. 1e21")


def _positive_int(text: str) -> bool:
    return text.isdigit() and int(text) > 0


def group_label(row) -> str:
    """e.g. ``llama SP tied seq 128 data synthetic``."""
    tied = row.get("tied")
    head = "" if tied is None or tied != tied else ("tied " if tied else "untied ")
    data = Path(str(row["data"])).name or str(row["data"])
    return (
        f"{row['family']} {'muP' if row['mup'] else 'SP'} {head}seq {int(row['seq'])} data {data}"
    )


def _shape(row) -> str:
    """The run's preset and, where recorded, its depth × width: ``tiny 2x64``."""
    layers, width = row.get("n_layers"), row.get("d_model")
    if layers and width and layers == layers and width == width:
        return f"{row['size']} {int(layers)}x{int(width)}"
    return str(row["size"])


def fit_points(runs: pd.DataFrame, loss: str) -> pd.DataFrame:
    """The ok runs with finite N, D, C and loss, one row each: run_id, size, N, D, C, steps,
    loss, entropy floor, the group keys and ``group`` (their label)."""
    ok = runs[runs["status"] == "ok"].copy()
    tokens = ok["batch"].astype(float) * ok["seq"].astype(float) * ok["steps"].astype(float)
    seen = pd.to_numeric(ok.get("tokens_seen"), errors="coerce")
    points = pd.DataFrame(
        {
            "run_id": ok["run_id"],
            "size": [_shape(r) for _, r in ok.iterrows()],
            "N": ok["n_params"].astype(float),
            "D": seen.where(np.isfinite(seen), tokens) if seen is not None else tokens,
            "C": ok["steps"].astype(float) * ok["model_flops_per_step"].astype(float),
            "steps": ok["steps"].astype(float),
            "loss": pd.to_numeric(ok[LOSSES[loss]], errors="coerce"),
            "floor": pd.to_numeric(ok.get("entropy_floor_nats"), errors="coerce"),
        }
    )
    for key in GROUP_KEYS:
        points[key] = ok.get(key)
    finite = np.isfinite(points[["N", "D", "C", "loss"]]).all(axis=1)
    points = points[finite & (points[["N", "D", "C", "loss"]] > 0).all(axis=1)]
    points["group"] = [group_label(r) for _, r in points.iterrows()]
    return points.reset_index(drop=True)


def heldout_mask(points: pd.DataFrame, holdout: str) -> np.ndarray:
    """Which runs to hold out: none; every run of the largest N ("largest"); or the K runs of
    largest compute (a count)."""
    if holdout == "none" or points.empty:
        return np.zeros(len(points), dtype=bool)
    if holdout == "largest":
        return (points["N"] == points["N"].max()).to_numpy()
    mask = np.zeros(len(points), dtype=bool)
    mask[np.argsort(-points["C"].to_numpy(), kind="stable")[: int(holdout)]] = True
    return mask


def curves_of(points: pd.DataFrame, steps: pd.DataFrame, loss: str) -> list[Curve]:
    """Each run's loss against cumulative compute after its LR warm-up (from the step of peak
    LR): validation loss where ≥ 3 evaluations were recorded and ``loss`` is "val", else the
    training loss as a centred running mean over a tenth of the run (one batch is noisy)."""
    curves = []
    for p in points.itertuples():
        s = steps[steps["run_id"] == p.run_id].sort_values("step")
        if s.empty:
            continue
        s = s.iloc[int(np.argmax(s["lr"].to_numpy())) :]
        val = s[np.isfinite(s["val_loss"].astype(float))]
        if loss == "val" and len(val) >= 3:
            s, y = val, val["val_loss"].to_numpy(dtype=float)
        else:
            window = max(1, len(s) // 10)
            y = s["loss"].rolling(window, center=True, min_periods=1).mean().to_numpy()
        done = s["step"].to_numpy(dtype=float) + 1  # steps completed
        if len(done) >= 2:
            curves.append(Curve(p.N, p.C / p.steps * done, p.D / p.steps * done, y))
    return curves


@dataclass(frozen=True)
class HeldOut:
    """A run left out of the fit: its measured loss and the loss the fit predicts for it."""

    run_id: str
    size: str
    N: float
    D: float
    C: float
    measured: float
    predicted: Interval

    @property
    def error(self) -> float:
        """(predicted − measured) / measured."""
        return self.predicted.value / self.measured - 1

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "size": self.size,
            "N": self.N,
            "D": self.D,
            "C": self.C,
            "measured": self.measured,
            "predicted": self.predicted.to_dict(),
            "error": self.error,
        }


@dataclass
class GroupStudy:
    """Every fit of one group of comparable runs."""

    label: str
    n_runs: int
    law: str
    parametric: LawStudy | None = None  # approach 3 on the runs not held out
    compute: ScalingFit | None = None  # L(C) on the lowest loss per compute (not held out)
    isoflop: IsoFlopFit | None = None  # approach 2 on every run of the group
    envelope: EnvelopeFit | None = None  # approach 1 on every run's loss curve
    heldout: list[HeldOut] = field(default_factory=list)
    entropy_floor: float = math.nan  # known best loss (synthetic data), to compare with E
    notes: list[str] = field(default_factory=list)

    @property
    def heldout_error(self) -> float:
        """Mean absolute relative error of the held-out predictions (NaN without any)."""
        return float(np.mean([abs(h.error) for h in self.heldout])) if self.heldout else math.nan

    def to_dict(self) -> dict:
        return {
            "group": self.label,
            "runs": self.n_runs,
            "law": self.law,
            "parametric": self.parametric.to_dict() if self.parametric else None,
            "loss_vs_compute": _compute_dict(self.compute) if self.compute else None,
            "isoflop": self.isoflop.to_dict() if self.isoflop else None,
            "envelope": self.envelope.to_dict() if self.envelope else None,
            "heldout": [h.to_dict() for h in self.heldout],
            "heldout_mean_abs_error": self.heldout_error,
            "entropy_floor": self.entropy_floor,
            "notes": self.notes,
        }


def _compute_dict(fit: ScalingFit) -> dict:
    return {
        "E": fit.E,
        "A": fit.A,
        "alpha": fit.alpha,
        "E_se": fit.E_se,
        "A_se": fit.A_se,
        "alpha_se": fit.alpha_se,
        "n_points": fit.n_points,
        "rmse_log": fit.rmse_log,
    }


def _frontier(points: pd.DataFrame) -> pd.DataFrame:
    """The lowest loss at each distinct compute (10 significant digits)."""
    key = points["C"].map(lambda c: float(f"{c:.10g}"))
    return points.loc[points.assign(_c=key).groupby("_c")["loss"].idxmin().to_numpy()]


def _fit_law(study: GroupStudy, train: pd.DataFrame, held: pd.DataFrame, opts: StudyOptions):
    """The chosen law on the training runs, its held-out predictions, or a note why not."""
    try:
        if opts.law == "loss-vs-compute":
            study.compute = fit_scaling_law(_frontier(train)["C"], _frontier(train)["loss"])
            predicted = [Interval(float(study.compute.predict(c))) for c in held["C"]]
        else:
            study.parametric = study_law(
                train["N"],
                train["D"],
                train["loss"],
                law=opts.law,
                budgets=opts.budgets,
                predict_at=list(zip(held["N"], held["D"], strict=True)),
                resamples=opts.resamples,
                seed=opts.seed,
            )
            predicted = list(study.parametric.predictions)
            _note_degenerate(study, train)
    except ValueError as exc:
        study.notes.append(f"{opts.law} fit skipped: {exc}")
        return
    study.heldout = [
        HeldOut(r.run_id, str(r.size), r.N, r.D, r.C, r.loss, p)
        for r, p in zip(held.itertuples(), predicted, strict=True)
    ]


def _note_degenerate(study: GroupStudy, train: pd.DataFrame) -> None:
    """Say so when the fitted floor E sits at ~0: the runs do not constrain it, and the law
    reduces to A/N^α + B/D^β (an extrapolation then never levels off)."""
    law = study.parametric.fit.law
    floor = law.params().get("E", np.inf)
    if floor < 0.01 * float(train["loss"].min()):
        study.notes.append(
            f"the fitted E = {floor:.3g} sits at its lower bound: these runs do not constrain "
            "the loss floor, so predictions far beyond them decrease without limit."
        )


def study_group(points: pd.DataFrame, steps: pd.DataFrame, opts: StudyOptions) -> GroupStudy:
    """Every fit of one group's points (see the module docstring)."""
    study = GroupStudy(str(points["group"].iloc[0]), len(points), opts.law)
    floors = points["floor"].dropna().unique()
    if len(floors) == 1:
        study.entropy_floor = float(floors[0])
    held = heldout_mask(points, opts.holdout)
    if held.all():
        study.notes.append(f"holdout {opts.holdout!r} leaves no run to fit; nothing held out")
        held[:] = False
    _fit_law(study, points[~held], points[held], opts)
    args = (points[c].to_numpy() for c in ("N", "D", "C", "loss"))
    study.isoflop = fit_isoflop(
        *args, budgets=opts.budgets, resamples=opts.resamples, seed=opts.seed
    )
    if study.isoflop is None:
        study.notes.append(
            "IsoFLOP fit (approach 2) skipped: it needs ≥ 2 compute budgets, each with ≥ 3 sizes "
            "whose loss has its minimum inside them (`scaling plan isoflop`)."
        )
    curves = curves_of(points, steps, opts.loss) if not steps.empty else []
    study.envelope = fit_envelope(curves, resamples=opts.resamples, seed=opts.seed)
    if study.envelope is None and curves:
        study.notes.append(
            "Envelope fit (approach 1) skipped: fewer than 2 model sizes are the lowest-loss "
            "run at some compute with a smaller and a larger size beside them."
        )
    return study


def study_record(runs: pd.DataFrame, steps: pd.DataFrame, opts: StudyOptions) -> list[GroupStudy]:
    """One ``GroupStudy`` per group of comparable runs, largest group first. Raises ValueError
    when no ok run has the chosen loss."""
    points = fit_points(runs, opts.loss)
    if points.empty:
        hint = " (validation loss is measured on prepared data or with eval_every; try train)"
        raise ValueError(
            f"no ok run has a finite {LOSSES[opts.loss]} to fit"
            + (hint if opts.loss == "val" else "")
        )
    groups = sorted(points.groupby("group"), key=lambda g: -len(g[1]))
    return [study_group(g.reset_index(drop=True), steps, opts) for _, g in groups]
