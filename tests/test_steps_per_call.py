"""Several optimizer steps per call (``RunConfig.steps_per_call``): one compiled device loop over
stacked batches. The computation must be the one-step run's exactly; what changes is how many
steps one call runs, and so how the steps are timed (window means)."""

import math
import shutil

import numpy as np
import pytest

from scaling.host_loop import call_counts
from scaling.presets import build_run
from scaling.train import plan, run

COMMON = {"batch": 4, "seq": 32, "lr_warmup_steps": 2, "lr": 1e-2}


def equal_within(times: list[float], windows: list[range]) -> None:
    """Every window's steps carry one and the same time (the window's mean)."""
    for window in windows:
        assert len({times[i] for i in window}) == 1, (window, [times[i] for i in window])


@pytest.mark.parametrize(
    ("n", "per_call", "counts"),
    [(10, 4, [4, 4, 2]), (3, 4, [3]), (8, 4, [4, 4]), (3, 1, [1, 1, 1]), (1, 5, [1])],
)
def test_a_window_is_cut_into_calls_of_at_most_k_steps(n, per_call, counts):
    assert call_counts(n, per_call) == counts


def test_calls_of_several_steps_compute_the_one_step_run():
    one = run(build_run("tiny", steps=10, **COMMON))
    looped = run(build_run("tiny", steps=10, steps_per_call=3, **COMMON))
    assert looped.losses == one.losses  # bitwise: the same step in a device loop, same batches
    assert looped.grad_norms == one.grad_norms and looped.lrs == one.lrs
    assert looped.steps_per_call == 3
    assert len(looped.step_times_s) == len(looped.data_wait_s) == 10
    # burn-in (1 step) is its own call, then windows of one call of 3 steps each
    equal_within(looped.step_times_s, [range(1, 4), range(4, 7), range(7, 10)])
    assert len(set(looped.step_times_s)) == 4
    assert all(t > 0 for t in looped.step_times_s) and all(w >= 0 for w in looped.data_wait_s)
    assert not looped.diverged and not looped.notes


def test_evaluations_and_checkpoints_cut_calls_short_and_happen_at_their_steps(tmp_path):
    common = {**COMMON, "steps": 10, "eval_every": 3, "eval_batches": 1, "checkpoint_every": 5}
    one = run(build_run("tiny", checkpoint_dir=str(tmp_path / "a"), **common))
    looped = run(build_run("tiny", checkpoint_dir=str(tmp_path / "b"), steps_per_call=4, **common))
    assert looped.losses == one.losses
    evaluated = [i for i, v in enumerate(looped.val_losses) if math.isfinite(v)]
    assert evaluated == [2, 5, 8, 9]  # after steps 3, 6, 9 and the last
    np.testing.assert_array_equal(looped.val_losses, one.val_losses)
    assert sorted(int(d.name) for d in (tmp_path / "b").iterdir() if d.name.isdigit()) == [5, 10]
    # calls (one per window): [0] burn-in, [1, 2] (eval after 3), [3, 4] (checkpoint after 5),
    # [5] (eval after 6), [6, 7, 8] (eval after 9), [9]: the one program runs 1 to 3 steps
    equal_within(looped.step_times_s, [range(1, 3), range(3, 5), range(6, 9)])
    assert looped.step_times_s[4] != looped.step_times_s[5]


def test_a_resumed_looped_run_continues_the_uninterrupted_one(tmp_path):
    common = {**COMMON, "steps": 10, "checkpoint_dir": str(tmp_path), "checkpoint_every": 5}
    whole = run(build_run("tiny", steps=10, **COMMON))
    first = run(build_run("tiny", steps_per_call=2, **common))
    assert first.losses == whole.losses
    shutil.rmtree(tmp_path / "10")  # the job died after step 5
    resumed = run(build_run("tiny", steps_per_call=4, resume=True, **common))
    assert resumed.start_step == 5
    assert resumed.losses == whole.losses[5:]  # a burn-in call of 1 step, then one of 4


def test_a_non_finite_loss_stops_a_looped_run_and_only_steps_up_to_it_are_recorded():
    common = {**COMMON, "lr": 1e9, "steps": 40, "timing_warmup_steps": 0}
    one = run(build_run("tiny", **common))
    looped = run(build_run("tiny", steps_per_call=8, **common))
    assert one.diverged and looped.diverged
    first_bad = len(one.losses) - 1
    assert len(looped.losses) == first_bad + 1
    np.testing.assert_array_equal(looped.losses, one.losses)  # NaN equals NaN here
    lengths = {len(looped.step_times_s), len(looped.data_wait_s), len(looped.val_losses)}
    assert lengths == {first_bad + 1}
    assert first_bad % 8 != 7  # mid-call: the loop ran on past it, and a note says so
    assert any(f"after the non-finite loss at step {first_bad}" in n for n in looped.notes)


def test_the_loop_needs_no_memory_beyond_its_stacked_batches():
    """XLA's memory analysis of the K-step program against the one-step program: the arguments
    grow by the K - 1 extra batches and the int32 count (hand count), the temporaries by the
    (K,) metrics (a few bytes) and nothing of the step's size."""
    from scaling.measure import memory_figures

    k, batch, seq = 3, 4, 32
    cfg = build_run("tiny", steps=4, steps_per_call=k, batch=batch, seq=seq)
    p = plan(cfg)
    one = memory_figures(p.step.lower(*p.abstract_inputs()).compile())
    looped = memory_figures(p.compile_call())
    assert looped["argument_bytes"] - one["argument_bytes"] == (k - 1) * batch * (seq + 1) * 4 + 4
    assert looped["alias_bytes"] == one["alias_bytes"]  # the state is still updated in place
    assert abs(looped["temp_bytes"] / one["temp_bytes"] - 1) < 0.01


def test_steps_per_call_goes_from_a_spec_to_the_run_and_the_record_and_old_rows_read_as_one(
    tmp_path,
):
    import pandas as pd
    from helpers import make_run_record, write_runs

    from scaling import records
    from scaling.spec import SweepSpec, run_config_from_settings

    looped = SweepSpec("k", axes={"size": ["tiny"]}, fixed={"steps_per_call": 4}).grid()[0]
    assert run_config_from_settings(looped).steps_per_call == 4
    assert records.base_record(looped, "k").steps_per_call == 4
    plain = SweepSpec("k", axes={"size": ["tiny"]}).grid()[0]
    assert "steps_per_call" not in plain  # run ids of specs without it stay what they were
    assert run_config_from_settings(plain).steps_per_call == 1
    write_runs(tmp_path, [make_run_record("new", steps_per_call=4)])
    old = pd.read_parquet(tmp_path / "runs" / "new.parquet").drop(columns=["steps_per_call"])
    old["run_id"] = "old"
    old.to_parquet(tmp_path / "runs" / "old.parquet")
    runs = records.load_runs(tmp_path).set_index("run_id")
    assert runs.loc["old", "steps_per_call"] == 1 and runs.loc["new", "steps_per_call"] == 4
