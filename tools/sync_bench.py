"""Per-step vs windowed host loop (``RunConfig.sync_every``) on this machine, side by side in one
process: for each size, repeats of a run timed step by step (``sync_every=1``) and a run whose
measured steps form one window (``sync_every=steps``) alternate, so load on a shared host hits
both alike. Reports per size the median over repeats of each run's median step time, and their
ratio (windowed ÷ per-step; below 1: the windowed loop is faster). Prints one JSON object.

    nice -n 10 uv run python tools/sync_bench.py --sizes tiny,10m --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import jax

from scaling import train
from scaling.presets import build_run


def median_step_s(size: str, steps: int, sync_every: int, batch: int, seq: int) -> float:
    cfg = build_run(size, steps=steps, batch=batch, seq=seq, sync_every=sync_every)
    return train.run(cfg).step_time_s_median


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="tiny,10m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    ways = {"per_step": 1, "windowed": args.steps}
    out = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
           "jax": jax.__version__, "machine": platform.machine(), **vars(args)}  # fmt: skip
    out["sizes"] = {}
    for size in args.sizes.split(","):
        times: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(args.repeats):
            for way, sync_every in ways.items():
                times[way].append(median_step_s(size, args.steps, sync_every, args.batch, args.seq))
        medians = {way: statistics.median(t) for way, t in times.items()}
        out["sizes"][size] = {
            "median_step_s": medians,
            "runs_step_s": times,
            "windowed_over_per_step": medians["windowed"] / medians["per_step"],
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
