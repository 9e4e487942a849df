"""The calibrated roofline (scaling.estimate.calibrate) recovers known efficiencies from runs
generated with them and predicts held-out sizes; the report shows it; the muP verdict table."""

from __future__ import annotations

import dataclasses
import json

import pytest
from report_records import figure_named, run, write, written_csv

from scaling import report as rp
from scaling.estimate.calibrate import Terms, calibrate_rows, fit, run_terms
from scaling.estimate.roofline import Efficiency
from scaling.report.mup import TransferVerdict, transfer_verdicts
from scaling.report.record import load_record
from scaling.spec import SWEEP_DEFAULTS

# Every term reaches calibrate.MIN_SHARE of some run's time here (compute 27 %, HBM 66 %,
# link 8 %), so each factor is determined; at HBM 0.05 every matmul is bandwidth-bound and the
# compute factor could not be told.
TRUE = Efficiency(compute=0.6, hbm=0.3, link=0.1, overhead_s=0.004)
CONFIGS = [(size, mode, mesh) for size in ("tiny", "10m", "30m", "125m")
           for mode, mesh in (("none", "1x1"), ("fsdp_tp", "2x2"))]  # fmt: skip


def _rows(eff: Efficiency = TRUE) -> list[dict]:
    """Run rows of real configurations whose step times follow ``eff`` exactly."""
    rows = []
    for i, (size, mode, mesh) in enumerate(CONFIGS):
        settings = {**SWEEP_DEFAULTS, "sweep": "cal", "size": size, "mode": mode,
                    "mesh": None if mode == "none" else mesh, "batch": 8, "seq": 64}  # fmt: skip
        n = 1 if mode == "none" else 4
        row = dataclasses.asdict(run(
            f"c{i}", size, mode, mesh=mesh, n_devices=n, batch=8, seq=64,
            settings_json=json.dumps(settings), peak_flops_per_device=2e11 / n,
        ))  # fmt: skip
        row["step_time_s_median"] = run_terms(row).predict(eff)
        rows.append(row)
    return rows


def test_fit_recovers_the_efficiencies_it_was_generated_with():
    rows = _rows()
    cal = calibrate_rows(r for r in rows if r["size"] != "125m")
    assert set(cal.fitted) == {"compute", "hbm", "link", "overhead_s"}
    for name in ("compute", "hbm", "link", "overhead_s"):
        assert getattr(cal.efficiency, name) == pytest.approx(getattr(TRUE, name), rel=1e-3)
    for held in (r for r in rows if r["size"] == "125m"):  # predicted, never fitted on
        assert run_terms(held).predict(cal.efficiency) == pytest.approx(
            held["step_time_s_median"], rel=1e-3
        )


def test_a_link_term_below_the_minimum_share_is_left_unfitted():
    rows = _rows(dataclasses.replace(TRUE, link=1.0))  # communication < 1 % of every step
    cal = calibrate_rows(r for r in rows if r["size"] != "125m")
    assert "link" not in cal.fitted and cal.efficiency.link == 1.0


def test_terms_without_communication_leave_the_link_unfitted():
    runs = [Terms(c, m, 0.0, False, 0.01 + c / 0.5 + m / 0.2)
            for c, m in ((0.1, 0.05), (0.3, 0.02), (1.0, 0.4), (2.0, 0.1))]  # fmt: skip
    cal = fit(runs)
    assert "link" not in cal.fitted and cal.efficiency.link == 1.0
    assert cal.efficiency.compute == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        fit(runs[:1])


def test_report_shows_held_out_predictions(tmp_path):
    rows = _rows()
    write(tmp_path / "cal", [run(r.pop("run_id"), r.pop("size"), r.pop("mode"), **r) for r in rows])
    result = rp.build_report([tmp_path / "cal"], out=tmp_path / "out",
                             calibrate_on=["tiny", "10m", "30m"])  # fmt: skip
    data = written_csv(result, "calibrated_step_time")
    held = data[data["role"] == "held out"]
    assert set(held["size"]) == {"125m"} and len(data) == len(rows)
    assert held["error"].abs().max() < 1e-3  # generated with the model: exact
    assert "Held out: 2 runs" in figure_named(result, "calibrated_step_time").caption
    table = next(t for t in result.tables if t.title == "Calibrated step-time prediction")
    assert len(table.rows) == len(rows) and "η compute 0.6" in table.note
    with pytest.raises(ValueError, match="no ok runs of 1.3b to calibrate on"):
        rp.build_report([tmp_path / "cal"], out=tmp_path / "o2", calibrate_on=["1.3b"])


def test_transfer_verdict_of_the_mup_record(built):
    _, _, _, root = built
    verdicts = {v.mup: v for v in transfer_verdicts(load_record(root / "mup"))}
    mup, sp = verdicts[True], verdicts[False]
    assert mup.widths == sp.widths == [128, 256]
    assert mup.best_log2_lr == [-8, -8] and mup.drift_steps == 0 and mup.transfers
    assert sp.best_log2_lr == [-9, -10] and sp.drift_steps == 1
    result, *_ = built
    table = next(t for t in result.tables if t.title.startswith("muP learning-rate transfer"))
    assert [row[:3] for row in table.rows] == [
        ["SP", "128", "-9"], ["SP", "256", "-10"], ["muP", "128", "-8"], ["muP", "256", "-8"]
    ]  # fmt: skip


def test_a_rise_counts_only_beyond_the_seed_spread():
    within = TransferVerdict(True, [32, 64, 128], [-7, -7, -6], [2.0, 2.05, 1.9],
                             [0.1, 0.08, 0.02], 1.0)  # fmt: skip
    assert within.non_increasing and within.drift_steps == 1 and within.transfers
    beyond = dataclasses.replace(within, best_loss=[2.0, 2.2, 1.9])
    assert beyond.rises == [True, False] and not beyond.transfers
    drifting = dataclasses.replace(within, best_log2_lr=[-9, -7, -6])
    assert drifting.drift_steps == 3 and not drifting.transfers
