"""Run a grid of configurations, each in its own subprocess, and record every outcome.

* ``run_id`` is a stable hash of a run's full settings, so re-running a sweep skips the runs
  already recorded ``ok`` and retries the others.
* Each run is a ``python -m scaling.worker`` subprocess with its own device count and a
  timeout; a crash, an out-of-memory kill or a timeout becomes that run's ``status``.
* Records go through ``records.write_outcome`` only (atomic files), so killing the sweep at any
  moment loses at most the run in flight.
* ``shard=(i, n)`` runs every n-th run of the grid starting at i (SLURM job arrays).
* Multi-host: every host starts the same sweep with the job's coordinator; run k joins
  ``jax.distributed`` at the coordinator's port + k, and only process 0 records. The record
  directory must be on a file system all hosts see, so they agree on what to skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scaling.launch import free_port
from scaling.records import (
    RunOutcome,
    RunRecord,
    base_record,
    outcome_from_json,
    recorded_status,
    write_outcome,
)
from scaling.spec import SweepSpec

# settings that do not change what a run computes (peaks only change what it is measured against)
NOT_CONFIG = ("sweep", "timeout_s", "peak_tflops", "hbm_gbps")


def run_id_of(settings: dict) -> str:
    """sha256 of the canonical JSON of everything that defines the run (16 hex digits)."""
    config = {k: v for k, v in sorted(settings.items()) if k not in NOT_CONFIG}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def parse_shard(text: str) -> tuple[int, int]:
    parts = text.split("/")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[1]) < 1:
        raise ValueError(f"bad shard {text!r}; expected I/N with 0 <= I < N, e.g. 0/2")
    index, count = int(parts[0]), int(parts[1])
    if index >= count:
        raise ValueError(f"bad shard {text!r}; expected I/N with 0 <= I < N, e.g. 0/2")
    return index, count


@dataclass(frozen=True)
class Distributed:
    """How each run joins a multi-process job."""

    coordinator: str | None = None  # HOST:PORT of process 0 for this sweep
    num_processes: int | None = None
    process_id: int | None = None
    local_processes: int = 0  # spawn this many processes per run on 127.0.0.1

    @property
    def is_recorder(self) -> bool:
        return not self.process_id


@dataclass
class PlannedRun:
    index: int
    run_id: str
    settings: dict
    skip: bool


def plan_sweep(spec: SweepSpec, out_dir: str | Path, shard: tuple[int, int] = (0, 1)):
    """The runs of this shard, each marked ``skip`` when already recorded ok."""
    planned = []
    for index, settings in enumerate(spec.grid()):
        if index % shard[1] != shard[0]:
            continue
        run_id = run_id_of(settings)
        planned.append(
            PlannedRun(index, run_id, settings, recorded_status(out_dir, run_id) == "ok")
        )
    return planned


StepHook = Callable[[dict], None]


def _worker_cmd(payload: dict, result_path: str) -> list[str]:
    return [sys.executable, "-m", "scaling.worker", json.dumps(payload), result_path]


def execute_run(
    run: PlannedRun,
    *,
    distributed: Distributed = Distributed(),
    profile_dir: str | None = None,
    on_step: StepHook | None = None,
) -> RunOutcome:
    """Run one configuration in subprocess(es) and return its outcome, whatever happens."""
    timeout = float(run.settings["timeout_s"])
    with tempfile.TemporaryDirectory(prefix="scaling-run-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        payload = {
            **run.settings,
            "run_id": run.run_id,
            "profile_dir": profile_dir and str(Path(profile_dir) / run.run_id),
        }
        payloads = _payloads(payload, run.index, distributed)
        stderr_path = os.path.join(tmp, "stderr.txt")
        procs = []
        for rank, p in enumerate(payloads):
            err = open(stderr_path if rank == 0 else os.devnull, "w")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    _worker_cmd(p, result_path),
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    start_new_session=True,
                )
            )
        reader = threading.Thread(target=_read_progress, args=(procs[0], on_step), daemon=True)
        reader.start()
        status, message = _wait(procs, timeout)
        reader.join(timeout=5)
        if status is None and os.path.exists(result_path):
            with open(result_path) as f:
                return outcome_from_json(json.load(f))
        record = base_record(run.settings, run.run_id)
        record.status = status or "error"
        record.error = message or _tail(stderr_path)
        return RunOutcome(record, [])


def _payloads(payload: dict, index: int, distributed: Distributed) -> list[dict]:
    if distributed.local_processes:
        port = free_port()
        return [
            {
                **payload,
                "distributed": {
                    "coordinator": f"127.0.0.1:{port}",
                    "num_processes": distributed.local_processes,
                    "process_id": rank,
                },
            }
            for rank in range(distributed.local_processes)
        ]
    if distributed.coordinator or distributed.num_processes:
        info: dict = {"coordinator": None, "num_processes": None, "process_id": None}
        if distributed.coordinator:
            host, port = distributed.coordinator.rsplit(":", 1)
            info = {
                "coordinator": f"{host}:{int(port) + index}",
                "num_processes": distributed.num_processes,
                "process_id": distributed.process_id,
            }
        return [{**payload, "distributed": info}]
    return [payload]


def _read_progress(proc: subprocess.Popen, on_step: StepHook | None) -> None:
    for line in proc.stdout:
        if on_step is not None and line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                on_step(json.loads(line))


def _wait(procs: list[subprocess.Popen], timeout: float) -> tuple[str | None, str]:
    """(None, "") when every process exited 0; else the run's status and a message."""
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            _kill_group(p)
        return "timeout", f"run exceeded its timeout of {timeout:.0f} s"
    except BaseException:
        for p in procs:
            _kill_group(p)
        raise
    bad = [c for c in codes if c]
    if not bad:
        return None, ""
    if -signal.SIGKILL in bad:
        return "oom", "worker killed by SIGKILL (most likely the host ran out of memory)"
    return "error", ""


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(path: str, lines: int = 1) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "worker failed without output"
    tail = [t for t in text if t.strip()][-lines:]
    return " ".join(tail)[:500] or "worker failed without output"


def run_sweep(
    spec: SweepSpec,
    out_dir: str | Path,
    *,
    shard: tuple[int, int] = (0, 1),
    distributed: Distributed = Distributed(),
    profile_dir: str | None = None,
    on_run_start: Callable[[PlannedRun], None] | None = None,
    on_step: StepHook | None = None,
    on_run_end: Callable[[PlannedRun, RunOutcome | None], None] | None = None,
) -> list[PlannedRun]:
    """Execute every not-yet-ok run of this shard, recording each outcome as it ends."""
    planned = plan_sweep(spec, out_dir, shard)
    for run in planned:
        if run.skip:
            if on_run_end is not None:
                on_run_end(run, None)
            continue
        if on_run_start is not None:
            on_run_start(run)
        outcome = execute_run(
            run, distributed=distributed, profile_dir=profile_dir, on_step=on_step
        )
        if distributed.is_recorder:
            write_outcome(out_dir, outcome)
        if on_run_end is not None:
            on_run_end(run, outcome)
    return planned


def remeasure(settings_json: str) -> RunRecord:
    """Run one recorded configuration again in a subprocess (what ``scaling check`` uses to
    re-measure a regressed run); the record is returned, not written."""
    settings = json.loads(settings_json)
    run = PlannedRun(index=0, run_id=run_id_of(settings), settings=settings, skip=False)
    return execute_run(run).record
