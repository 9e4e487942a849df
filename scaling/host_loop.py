"""How the host calls the compiled training step: timed windows (``RunConfig.sync_every``)
cut into calls of up to ``RunConfig.steps_per_call`` steps, each call's inputs placed on the
devices, and each call's metrics back to one dict per step. ``scaling.train.run`` drives it."""

from __future__ import annotations

import time

import numpy as np

from scaling import parallel
from scaling.config import RunConfig
from scaling.measure import StepClock


def window_end(run_cfg: RunConfig, step: int, clock: StepClock) -> int:
    """One past the last step of the timed window that starts at ``step``: ``sync_every``
    steps (at least ``steps_per_call``, so that a call holds several), fewer where the run, the
    burn-in or the steps before an evaluation or a checkpoint end first (those happen between
    windows, never inside a timed one)."""
    end = min(step + max(run_cfg.sync_every, run_cfg.steps_per_call), run_cfg.steps)
    if clock.steps_to_burn_in_end():
        end = min(end, step + clock.steps_to_burn_in_end())
    checkpoint_every = run_cfg.checkpoint_every if run_cfg.checkpoint_dir else 0
    for every in (run_cfg.eval_every, checkpoint_every):
        if every:
            end = min(end, (step // every + 1) * every)
    return end


def dispatch_window(compiled, state, n: int, clock: StepClock, next_input, per_call: int):
    """Run ``n`` steps as one timed window: calls of up to ``steps_per_call`` steps each,
    dispatched without waiting for the previous one, the inputs after the first fetched and
    placed while the device computes, and the host blocks once at the end
    (``StepClock.end``). Returns the state and each call's metrics, still on the device."""
    counts = call_counts(n, per_call)
    inputs = next_input(counts[0])  # outside the window, as in per-step timing
    clock.begin()
    held = []
    for following in [*counts[1:], 0]:
        state, metrics = compiled(state, *inputs)
        held.append(metrics)
        if following:
            inputs = next_input(following)
    return clock.end((state, held), n)


def call_counts(n: int, per_call: int) -> list[int]:
    """The steps of each call that runs ``n`` steps, ``per_call`` at most per call."""
    return [min(per_call, n - done) for done in range(0, n, per_call)]


def next_input(p, iterator, count: int, waits: list[float]) -> tuple:
    """The next call's arguments after the state, placed on the devices: one batch, or with
    ``steps_per_call`` > 1 ``count`` batches stacked (zero-padded to K) and the count. Each
    step's wait for its batch (loader, plus its share of the placement) goes to ``waits``."""
    if p.steps is None:
        waited = time.perf_counter()
        batch = parallel.place_batch(np.asarray(next(iterator)), p.batch_sharding, p.batch_shape)
        waits.append(time.perf_counter() - waited)
        return (batch,)
    rows = []
    for _ in range(count):
        waited = time.perf_counter()
        rows.append(np.asarray(next(iterator)))
        waits.append(time.perf_counter() - waited)
    waited = time.perf_counter()
    local = np.zeros((p.run.steps_per_call, *rows[0].shape), rows[0].dtype)
    local[:count] = rows
    stacked = parallel.place_batch(local, p.stacked_batch_sharding, p.stacked_batch_shape)
    share = (time.perf_counter() - waited) / count
    waits[-count:] = [w + share for w in waits[-count:]]
    return stacked, np.int32(count)


def per_step(fetched: list[dict], n: int, per_call: int) -> list[dict]:
    """One metrics dict per step from a window's fetched calls (a call of ``make_train_steps``
    holds K entries per metric, of which the call's count are steps)."""
    if per_call == 1:
        return fetched
    counts = call_counts(n, per_call)
    return [
        {name: values[i] for name, values in metrics.items()}
        for metrics, count in zip(fetched, counts, strict=True)
        for i in range(count)
    ]
