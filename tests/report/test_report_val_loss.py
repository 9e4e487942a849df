"""The validation-loss figure and columns: drawn from the recorded steps, only for runs that
measured validation loss."""

from __future__ import annotations

import math

import numpy as np
from report_records import figure_named, run, written_csv

from scaling import records
from scaling import report as rp


def _record(out):
    """Two runs on prepared data (validation after steps 3 and 7) and one without."""
    val_steps = {3: 0.0, 7: 0.0}
    for i, (run_id, size) in enumerate((("v1", "tiny"), ("v2", "10m"), ("plain", "30m"))):
        measured = run_id != "plain"
        row = run(run_id, size, "dp", steps=8, data="data/x" if measured else "synthetic")
        steps = []
        for step in range(8):
            loss = 6.0 - 0.3 * step - 0.2 * i
            val = loss + 0.1 if measured and step in val_steps else math.nan
            steps.append(records.StepRecord(run_id, step, loss, 0.1, 1e-3, 1.0, val, 1e-4))
        row.final_loss = steps[-1].loss
        row.final_val_loss = steps[-1].val_loss
        row.final_val_bpb = steps[-1].val_loss / math.log(2) / 3.0 if measured else math.nan
        records.write_outcome(out, records.RunOutcome(row, steps))


def test_val_loss_figure_plots_the_recorded_validation_steps(tmp_path):
    _record(tmp_path / "rec")
    result = rp.build_report([tmp_path / "rec"], out=tmp_path / "out")
    data = written_csv(result, "val_loss")
    steps = records.load_steps(tmp_path / "rec")
    assert set(data["run_id"]) == {"v1", "v2"}  # the run without validation is left out
    val = data[data["split"] == "val"].sort_values(["run_id", "step"])
    expected = steps[np.isfinite(steps["val_loss"])].sort_values(["run_id", "step"])
    np.testing.assert_array_equal(val["step"], expected["step"])
    np.testing.assert_allclose(val["loss"], expected["val_loss"])
    train = data[data["split"] == "train"]
    assert len(train) == 16 and np.allclose(
        train.sort_values(["run_id", "step"])["loss"],
        steps[steps["run_id"] != "plain"].sort_values(["run_id", "step"])["loss"],
    )
    ax = figure_named(result, "val_loss").figure.axes[0]
    lines = {ln.get_gid().split("/", 1)[1]: ln for ln in ax.get_lines() if ln.get_gid()}
    assert set(lines) == {"v1", "v2"}
    for run_id, line in lines.items():
        mine = expected[expected["run_id"] == run_id]
        np.testing.assert_array_equal(line.get_xdata(), mine["step"])
        np.testing.assert_allclose(line.get_ydata(), mine["val_loss"])
    summary = next(t for t in result.tables if t.title == "Runs")
    assert summary.columns[-2:] == ["val loss (nats)", "val bits/byte"]
    by_size = {row[0]: row for row in summary.rows}
    assert by_size["tiny"][-2] == f"{6.0 - 0.3 * 7 + 0.1:.4f}" and by_size["30m"][-2] == "-"
