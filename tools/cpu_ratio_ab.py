"""MFU against the same-process matmul probe (the record's ratio) of a training step on CPU,
before and after the row-merged matmuls (``scaling.model.matmul_rows``), side by side in one
process: "before" compiles the step with ``matmul_rows`` swapped for the einsum over the leading
dimensions the model used until then. Both steps are compiled first (not timed), then each round
runs one step of each variant, alternating which goes first, every step timed to completion, and
samples the 2048² f32 probe once, so load on a shared host hits both alike. Ratio = model FLOPs
per step ÷ (step time × probe FLOP/s), per round against that round's probe sample. Prints one
JSON object: medians over rounds of step times and ratios, and the after ÷ before step time.

    nice -n 10 uv run python tools/cpu_ratio_ab.py --size 125m --batch 4 --seq 256 --rounds 9
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from scaling import measure, model, parallel, train
from scaling.estimate import estimate
from scaling.presets import build_run


def einsum_leading(x, w, *, transpose_w: bool = False, **kwargs):
    """The matmul the model used before ``matmul_rows``: leading dimensions kept."""
    return jnp.einsum("...i,oi->...o" if transpose_w else "...i,io->...o", x, w, **kwargs)


@contextlib.contextmanager
def variant(name: str):
    new = model.matmul_rows
    if name == "before":
        model.matmul_rows = einsum_leading
    try:
        yield
    finally:
        model.matmul_rows = new


def compiled_step(cfg, name: str):
    with variant(name):
        p = train.plan(cfg)
        with jax.set_mesh(p.mesh):
            return p, p.step.lower(*p.abstract_inputs()).compile(), p.init()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="125m")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    cfg = build_run(args.size, batch=args.batch, seq=args.seq, steps=args.rounds + 1)
    names = ("before", "after")
    steps = {name: compiled_step(cfg, name) for name in names}
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.model.vocab_size, (args.batch, args.seq + 1), dtype=np.int32)
    states, times = {}, {name: [] for name in names}
    for name, (p, step, state) in steps.items():
        batch = parallel.place_batch(tokens, p.batch_sharding, p.batch_shape)
        states[name] = jax.block_until_ready(step(state, batch))[0]  # warm-up, untimed
    probe = measure.probe_for(measure.local_device())
    for i in range(args.rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            p, step, _ = steps[name]
            batch = parallel.place_batch(tokens, p.batch_sharding, p.batch_shape)
            start = time.perf_counter()
            states[name] = jax.block_until_ready(step(states[name], batch))[0]
            times[name].append(time.perf_counter() - start)
        probe.sample()
    hardware, _ = measure.device_peak(measure.local_device(), probe)
    flops = estimate(cfg.model, mode="none", mesh=(1, 1), batch=args.batch, seq=args.seq,
                     hardware=hardware).flops.model_per_step  # fmt: skip
    ratios = {n: [flops / (t * f) for t, f in zip(times[n], probe.samples, strict=True)]
              for n in names}  # fmt: skip
    out = {**vars(args), "model_flops_per_step": flops, "step_s": times,
           "probe_gflops": [f / 1e9 for f in probe.samples]}  # fmt: skip
    out["median_step_s"] = {n: statistics.median(times[n]) for n in names}
    out["median_ratio"] = {n: statistics.median(ratios[n]) for n in names}
    out["after_over_before_step"] = statistics.median(
        a / b for a, b in zip(times["after"], times["before"], strict=True)
    )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
