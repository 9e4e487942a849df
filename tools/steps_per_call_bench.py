"""Step time and MFU of `scaling train` with one step per call against several steps per call
(``--steps-per-call K``), one process per run, the settings alternating within each round (the
order reversed every other round), so that load on a shared host hits them alike. Per run:
the record's median step, MFU against the run's own probe, the probe's median, and the child
process's system CPU time and minor page faults (``getrusage(RUSAGE_CHILDREN)``). Prints one
JSON object (medians per setting, and every run).

    uv run python tools/steps_per_call_bench.py --size 125m --batch 4 --seq 256 --steps 9 \
        --per-call 1,4,8 --rounds 3 > reports/cpu-speed/steps_per_call_125m.json
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys


def one_run(args, per_call: int) -> dict:
    command = [
        sys.executable, "-m", "scaling", "train", "--size", args.size, "--batch", str(args.batch),
        "--seq", str(args.seq), "--steps", str(args.steps), "--steps-per-call", str(per_call),
        "--json",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads(out.strip().splitlines()[-1])
    probe = re.search(r"median ([\d.]+) GFLOP/s", summary["peak_source"])
    return {
        "steps_per_call": per_call,
        "step_time_s_median": round(summary["step_time_s_median"], 3),
        "step_times_s": [round(t, 3) for t in summary["step_times_s"]],
        "mfu": round(summary["mfu"], 3),
        "probe_gflops_median": float(probe.group(1)) if probe else None,
        "final_loss": summary["final_loss"],
        "system_cpu_s": round(after.ru_stime - before.ru_stime, 2),
        "minor_page_faults": after.ru_minflt - before.ru_minflt,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="125m")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--per-call", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = [int(k) for k in args.per_call.split(",")]
    runs = []
    for i in range(args.rounds):
        for per_call in settings if i % 2 == 0 else settings[::-1]:
            runs.append(one_run(args, per_call))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    medians = {
        k: {
            name: statistics.median(r[name] for r in runs if r["steps_per_call"] == k)
            for name in (
                "step_time_s_median",
                "mfu",
                "probe_gflops_median",
                "system_cpu_s",
                "minor_page_faults",
            )
        }  # fmt: skip
        for k in settings
    }
    print(json.dumps({"args": vars(args), "medians": medians, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
