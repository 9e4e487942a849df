"""Several optimizer steps per call (``RunConfig.steps_per_call``): one compiled device loop over
stacked batches. The computation must be the one-step run's exactly; what changes is how many
steps one call runs, and so how the steps are timed (window means)."""

import shutil

import pytest
from helpers import equal_within

from scaling.host_loop import call_counts
from scaling.presets import build_run
from scaling.train import plan, run

COMMON = {"batch": 4, "seq": 32, "lr_warmup_steps": 2, "lr": 1e-2}


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


def test_a_resumed_looped_run_continues_the_uninterrupted_one(tmp_path):
    common = {**COMMON, "steps": 10, "checkpoint_dir": str(tmp_path), "checkpoint_every": 5}
    whole = run(build_run("tiny", steps=10, **COMMON))
    first = run(build_run("tiny", steps_per_call=2, **common))
    assert first.losses == whole.losses
    shutil.rmtree(tmp_path / "10")  # the job died after step 5
    resumed = run(build_run("tiny", steps_per_call=4, resume=True, **common))
    assert resumed.start_step == 5
    assert resumed.losses == whole.losses[5:]  # a burn-in call of 1 step, then one of 4


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
