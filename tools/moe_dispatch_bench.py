"""Dispatch overhead of the MoE layer on CPU: dropless (sorted rows, ``ragged_dot``) vs capacity
(GShard buffers, capacity factor 1.25) vs the dense model at matched active FLOPs, measured side
by side in one process: each variant is compiled first (not timed), then the variants' steps
alternate, every step blocked to completion, so load on the shared host hits them alike.
Prints one JSON object (median step seconds and ratios) and writes it where ``--out`` says.

    nice -n 10 uv run python tools/moe_dispatch_bench.py --rounds 15 --out FILE

``--mode ep --devices 4`` runs every variant under that mode on simulated CPU devices (the
dense model under ``dp``, its counterpart without experts): the sharded dispatches
(``scaling.moe.sharded_moe_ffn``) side by side. Simulated devices share the host's cores, so
the ratios show the dispatches' extra work, not a network's cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time

import jax
import numpy as np

from scaling import parallel, train
from scaling.presets import PRESETS, build_run


def _variants(size: str) -> dict:
    moe = PRESETS[f"{size}-moe"]
    return {
        "dense": PRESETS[size],
        "dropless": dataclasses.replace(moe, moe_dispatch="dropless"),
        "capacity": dataclasses.replace(moe, moe_dispatch="capacity", moe_capacity_factor=1.25),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="tiny", help="tiny or 10m (and its -moe preset)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--mode", default="none", help="none, or a mode such as ep, dp")
    parser.add_argument("--devices", type=int, default=1, help="simulated CPU devices")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    parallel.set_cpu_devices(args.devices)
    steps, states, tokens = {}, {}, None
    for name, cfg in _variants(args.size).items():
        mode = "dp" if args.mode in ("ep", "fsdp_ep") and not cfg.moe else args.mode
        run = build_run(model=cfg, mode=mode, batch=args.batch, seq=args.seq, steps=1000)
        p = train.plan(run)
        with jax.set_mesh(p.mesh):
            steps[name] = p.step.lower(*p.abstract_inputs()).compile()
            states[name] = p.init()
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, cfg.vocab_size, p.batch_shape).astype(np.int32)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(args.rounds + 1):  # round 0 is burn-in
        for name, step in steps.items():
            t0 = time.perf_counter()
            states[name], metrics = step(states[name], tokens)
            jax.block_until_ready(metrics)
            if round_:
                times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "size": args.size,
        "batch": args.batch,
        "seq": args.seq,
        "rounds": args.rounds,
        "mode": args.mode,
        "devices": args.devices,
        "median_step_s": median,
        "dropless_over_capacity": median["dropless"] / median["capacity"],
        "dropless_over_dense": median["dropless"] / median["dense"],
        "capacity_over_dense": median["capacity"] / median["dense"],
        "jax": jax.__version__,
        "machine": f"{platform.machine()} {jax.devices()[0].device_kind}, {platform.node()}",
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        from scaling.records import write_text_atomic

        write_text_atomic(text + "\n", args.out)


if __name__ == "__main__":
    main()
