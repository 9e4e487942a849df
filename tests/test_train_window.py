"""Windowed timing (``RunConfig.sync_every``): steps dispatched without waiting, one host sync
and one metrics fetch per window; with ``RunConfig.steps_per_call`` a window's steps run in calls
of a device loop. The computation must be the per-step run's exactly; only how the steps are
called and timed differs."""

import math

import numpy as np
import pytest
from helpers import equal_within

from scaling.presets import build_run
from scaling.train import run

COMMON = {"batch": 4, "seq": 32, "lr_warmup_steps": 2, "lr": 1e-2}


def test_windowed_run_computes_the_per_step_run_and_times_each_window_as_one():
    per_step = run(build_run("tiny", steps=10, **COMMON))
    windowed = run(build_run("tiny", steps=10, sync_every=4, **COMMON))
    assert windowed.losses == per_step.losses  # bitwise: the same compiled steps, same batches
    assert windowed.grad_norms == per_step.grad_norms and windowed.lrs == per_step.lrs
    assert len(windowed.step_times_s) == len(windowed.data_wait_s) == 10
    # burn-in (1 step) is its own window, then windows of 4, then the one step left
    equal_within(windowed.step_times_s, [range(1, 5), range(5, 9)])
    assert windowed.step_times_s[0] != windowed.step_times_s[1]
    assert all(t > 0 for t in windowed.step_times_s)
    assert not windowed.diverged and not windowed.notes


# sync_every dispatches the window's steps one call each; steps_per_call runs them in one
# call of a device loop (a window holds at least K steps): both end windows at the same steps.
HOST_LOOPS = [{"sync_every": 4}, {"steps_per_call": 4}]


@pytest.mark.parametrize("host_loop", HOST_LOOPS, ids=["sync_every", "steps_per_call"])
def test_evaluations_and_checkpoints_end_windows_and_happen_at_their_steps(tmp_path, host_loop):
    common = {**COMMON, "steps": 10, "eval_every": 3, "eval_batches": 1, "checkpoint_every": 5}
    per_step = run(build_run("tiny", checkpoint_dir=str(tmp_path / "a"), **common))
    windowed = run(build_run("tiny", checkpoint_dir=str(tmp_path / "b"), **host_loop, **common))
    assert windowed.losses == per_step.losses
    evaluated = [i for i, v in enumerate(windowed.val_losses) if math.isfinite(v)]
    assert evaluated == [2, 5, 8, 9]  # after steps 3, 6, 9 and the last
    np.testing.assert_array_equal(windowed.val_losses, per_step.val_losses)
    assert sorted(int(d.name) for d in (tmp_path / "b").iterdir() if d.name.isdigit()) == [5, 10]
    # windows: [0] burn-in, [1, 2] (eval after 3), [3, 4] (checkpoint after 5), [5] (eval
    # after 6), [6, 7, 8] (eval after 9), [9]; with steps_per_call one call each, running
    # 1 to 3 of its 4 steps
    equal_within(windowed.step_times_s, [range(1, 3), range(3, 5), range(6, 9)])
    assert windowed.step_times_s[4] != windowed.step_times_s[5]


@pytest.mark.parametrize("host_loop", HOST_LOOPS, ids=["sync_every", "steps_per_call"])
def test_a_non_finite_loss_still_stops_a_windowed_run_and_only_steps_up_to_it_are_recorded(
    host_loop,
):
    common = {**COMMON, "lr": 1e9, "steps": 40, "timing_warmup_steps": 0}
    per_step = run(build_run("tiny", **common))
    windowed = run(build_run("tiny", **{k: 2 * v for k, v in host_loop.items()}, **common))
    assert per_step.diverged and windowed.diverged
    first_bad = len(per_step.losses) - 1
    assert len(windowed.losses) == first_bad + 1
    np.testing.assert_array_equal(windowed.losses, per_step.losses)  # NaN equals NaN here
    assert all(math.isfinite(v) for v in windowed.losses[:-1])
    lengths = {len(windowed.step_times_s), len(windowed.data_wait_s), len(windowed.val_losses)}
    assert lengths == {first_bad + 1}
    assert first_bad % 8 != 7  # mid-window: the window ran on past it, and a note says so
    assert any(f"after the non-finite loss at step {first_bad}" in n for n in windowed.notes)


@pytest.mark.parametrize("field", ["sync_every", "steps_per_call"])
def test_the_host_loop_goes_from_a_spec_to_the_run_and_the_record_and_old_rows_read_as_one(
    tmp_path, field
):
    import pandas as pd
    from helpers import make_run_record, write_runs

    from scaling import records
    from scaling.spec import SweepSpec, run_config_from_settings

    windowed = SweepSpec("w", axes={"size": ["tiny"]}, fixed={field: 5}).grid()[0]
    assert getattr(run_config_from_settings(windowed), field) == 5
    assert getattr(records.base_record(windowed, "w"), field) == 5
    plain = SweepSpec("w", axes={"size": ["tiny"]}).grid()[0]
    assert field not in plain  # run ids of specs without it stay what they were
    assert getattr(run_config_from_settings(plain), field) == 1
    write_runs(tmp_path, [make_run_record("new", **{field: 5})])
    old = pd.read_parquet(tmp_path / "runs" / "new.parquet").drop(columns=[field])
    old["run_id"] = "old"
    old.to_parquet(tmp_path / "runs" / "old.parquet")
    runs = records.load_runs(tmp_path).set_index("run_id")
    assert runs.loc["old", field] == 1 and runs.loc["new", field] == 5
