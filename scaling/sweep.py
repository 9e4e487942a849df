"""Run a grid of configurations, each in its own subprocess, and record every outcome.

* ``run_id`` is a stable hash of a run's full settings, so re-running a sweep skips the runs
  already recorded ``ok`` and retries the others.
* Each run is a ``python -m scaling.worker`` subprocess with its own device count and a
  timeout; a crash, an out-of-memory kill or a timeout becomes that run's ``status``, with the
  steps it finished (streamed from the worker's stdout).
* Records go through ``records.write_outcome`` only (atomic files), so killing the sweep at any
  moment loses at most the run in flight. Workers die with the sweep (``launch.die_with_parent``),
  and the temporary directories of a killed sweep are removed by the next one.
* Before planning, unreadable or foreign files in the record are moved to ``DIR/quarantine/``
  and their runs redone. A run in progress in another sweep into the same directory (a lock
  file per run) is left to it and waited for at the end. When a finished run cannot be
  written, its result is kept (``KEPT_DIR``) and recorded by the next sweep that plans it.
* ``shard=(i, n)`` runs every n-th run of the grid starting at i (SLURM job arrays).
* Multi-host: every host starts the same sweep with the job's coordinator; run k joins
  ``jax.distributed`` at the coordinator's port + k, and only process 0 records. The record
  directory must be on a file system all hosts see, so they agree on what to skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scaling.launch import child_env, free_port, wait_all
from scaling.records import (
    ROUTER_COLUMNS,
    RunOutcome,
    RunRecord,
    StepRecord,
    base_record,
    damaged_files,
    outcome_from_json,
    outcome_to_json,
    quarantine,
    recorded_status,
    write_json_atomic,
    write_outcome,
)
from scaling.spec import SweepSpec

RUN_DIR_PREFIX = "scaling-run-"  # + the sweep's pid + "-": temporary directory of one run
KEPT_DIR = Path(tempfile.gettempdir()) / "scaling-kept-results"
LOCK_DIR = "locks"
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
    init_timeout_s: float = 120.0  # for every process to join

    @property
    def is_recorder(self) -> bool:
        return not self.process_id

    @property
    def multi_host(self) -> bool:
        return bool(self.coordinator or self.num_processes)


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
NoteHook = Callable[[str], None]


def _worker_cmd(payload: dict, result_path: str) -> list[str]:
    return [sys.executable, "-m", "scaling.worker", json.dumps(payload), result_path]


def execute_run(
    run: PlannedRun,
    *,
    distributed: Distributed = Distributed(),
    profile_dir: str | None = None,
    on_step: StepHook | None = None,
    force: bool = False,
) -> RunOutcome:
    """Run one configuration in subprocess(es) and return its outcome, whatever happens.

    The workers die with this process; a run that fails, times out or is killed keeps the
    steps it finished. ``force`` runs a configuration the memory pre-flight refuses."""
    timeout = float(run.settings["timeout_s"])
    with tempfile.TemporaryDirectory(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        payload = {
            **run.settings,
            "run_id": run.run_id,
            "profile_dir": profile_dir and str(Path(profile_dir) / run.run_id),
            "force": force,
        }
        stderr_path = os.path.join(tmp, "stderr.txt")
        procs = []
        for rank, p in enumerate(_payloads(payload, run.index, distributed)):
            with open(stderr_path if rank == 0 else os.devnull, "w") as err:
                procs.append(
                    subprocess.Popen(
                        _worker_cmd(p, result_path),
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        start_new_session=True,  # Ctrl-C reaches the sweep, which stops them
                        env=child_env(),
                    )
                )
        finished: list[dict] = []
        reader = threading.Thread(
            target=_read_progress, args=(procs[0], on_step, finished), daemon=True
        )
        reader.start()
        status, message = _wait(procs, timeout)
        reader.join(timeout=5)
        if status is None and os.path.exists(result_path):
            with open(result_path) as f:
                return outcome_from_json(json.load(f))
        record = base_record(run.settings, run.run_id)
        record.status = status or "error"
        record.error = message or _tail(stderr_path)
        return RunOutcome(record, _steps_of(run.run_id, finished))


def _payloads(payload: dict, index: int, distributed: Distributed) -> list[dict]:
    timeout = distributed.init_timeout_s
    if distributed.local_processes:
        port = free_port()
        return [
            {
                **payload,
                "distributed": {
                    "coordinator": f"127.0.0.1:{port}",
                    "num_processes": distributed.local_processes,
                    "process_id": rank,
                    "timeout_s": timeout,
                },
            }
            for rank in range(distributed.local_processes)
        ]
    if distributed.multi_host:
        info: dict = {"coordinator": None, "num_processes": None, "process_id": None}
        if distributed.coordinator:
            host, port = distributed.coordinator.rsplit(":", 1)
            info = {
                "coordinator": f"{host}:{int(port) + index}",
                "num_processes": distributed.num_processes,
                "process_id": distributed.process_id,
            }
        return [{**payload, "distributed": {**info, "timeout_s": timeout}}]
    return [payload]


def _read_progress(proc: subprocess.Popen, on_step: StepHook | None, finished: list) -> None:
    """Each JSON line the worker prints is one finished step: keep it, show it."""
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        with contextlib.suppress(json.JSONDecodeError):
            metrics = json.loads(line)
            finished.append(metrics)
            if on_step is not None:
                on_step(metrics)


def _steps_of(run_id: str, finished: list[dict]) -> list[StepRecord]:
    """The StepRecords of the JSON lines a worker printed (one per finished step)."""
    keys = ("step", "loss", "step_time_s", "lr", "grad_norm")
    optional = ("val_loss", "data_wait_s", *ROUTER_COLUMNS)
    return [
        StepRecord(
            run_id,
            int(m["step"]),
            *(float(m[k]) for k in keys[1:]),
            **{k: float(m[k]) for k in optional if k in m},
        )
        for m in finished
        if all(k in m for k in keys)
    ]


def _wait(procs: list[subprocess.Popen], timeout: float) -> tuple[str | None, str]:
    """(None, "") when every process exited 0; else the run's status and a message."""
    try:
        codes = wait_all(procs, timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"run exceeded its timeout of {timeout:.0f} s"
    bad = [c for c in codes if c]
    if not bad:
        return None, ""
    if all(c == -signal.SIGKILL for c in bad):
        return "oom", "worker killed by SIGKILL (most likely the host ran out of memory)"
    return "error", ""


def _tail(path: str, lines: int = 1) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "worker failed without output"
    tail = [t for t in text if t.strip()][-lines:]
    return " ".join(tail)[:500] or "worker failed without output"


# ----------------------------------------------------------------------------- housekeeping


def remove_stale_run_dirs(tmp_root: str | Path | None = None) -> list[Path]:
    """Delete the temporary run directories of sweeps that no longer run (killed with
    SIGKILL, so they could not clean up); returns what was removed."""
    removed = []
    for path in Path(tmp_root or tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*-*"):
        pid = path.name[len(RUN_DIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or not path.is_dir() or path.stat().st_uid != os.getuid():
            continue
        if not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def repair_record(out_dir: str | Path) -> list[str]:
    """Move unreadable or foreign files of the record (and run rows whose steps are damaged)
    to ``DIR/quarantine/``, so that their runs are redone; one note per file."""
    damaged = damaged_files(out_dir)
    if not damaged:
        return []
    target = quarantine(out_dir, [path for path, _ in damaged])
    return [
        f"{path} {problem}: moved to {target}/; its run will be redone"
        if path.parent.name == "runs"
        else f"{path} {problem}: moved to {target}/"
        for path, problem in damaged
    ]


@contextlib.contextmanager
def run_lock(out_dir: str | Path, run_id: str, *, wait: bool = False) -> Iterator[str | None]:
    """Hold the lock of one run in ``DIR/locks/`` (``fcntl.flock``, released when the holder
    dies). Yields None once held, or (``wait=False``) the holder's pid text when another
    process holds it."""
    path = Path(out_dir) / LOCK_DIR / f"{run_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            yield f.read().strip() or "?"
            return
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield None
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def keep_result(outcome: RunOutcome) -> Path:
    """Save a finished run's outcome where the next sweep will find it (``KEPT_DIR``)."""
    path = KEPT_DIR / f"{outcome.record.run_id}.json"
    write_json_atomic(outcome_to_json(outcome), path)
    return path


def kept_result(run_id: str) -> RunOutcome | None:
    path = KEPT_DIR / f"{run_id}.json"
    try:
        return outcome_from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def record(out_dir: str | Path, outcome: RunOutcome) -> None:
    """``write_outcome``; when that fails, the finished result is kept and the error says
    where (the next sweep into a writable ``out_dir`` records it without re-running)."""
    try:
        write_outcome(out_dir, outcome)
    except OSError as exc:
        try:
            kept = f"kept in {keep_result(outcome)}; the next sweep records it"
        except OSError as again:
            kept = f"and could not be kept either ({again.strerror})"
        raise OSError(
            exc.errno,
            f"{exc.strerror}; the result of run {outcome.record.run_id} is {kept}",
            exc.filename,
        ) from exc
    (KEPT_DIR / f"{outcome.record.run_id}.json").unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the sweep


@dataclass
class Hooks:
    """Callbacks of a sweep for progress display (all optional)."""

    on_run_start: Callable[[PlannedRun], None] | None = None
    on_step: StepHook | None = None
    on_run_end: Callable[[PlannedRun, RunOutcome | None], None] | None = None
    on_note: NoteHook | None = None

    def note(self, text: str) -> None:
        if self.on_note is not None:
            self.on_note(text)

    def run_start(self, run: PlannedRun) -> None:
        if self.on_run_start is not None:
            self.on_run_start(run)

    def run_end(self, run: PlannedRun, outcome: RunOutcome | None) -> None:
        if self.on_run_end is not None:
            self.on_run_end(run, outcome)


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
    on_note: NoteHook | None = None,
    force: bool = False,
) -> list[PlannedRun]:
    """Execute every not-yet-ok run of this shard, recording each outcome as it ends."""
    hooks = Hooks(on_run_start, on_step, on_run_end, on_note)
    removed = remove_stale_run_dirs()
    if removed:
        hooks.note(f"removed {len(removed)} temporary directories of killed sweeps")
    if distributed.is_recorder:
        for note in repair_record(out_dir):
            hooks.note(note)
    planned = plan_sweep(spec, out_dir, shard)
    locks = distributed.is_recorder and not distributed.multi_host
    waiting = []
    for run in planned:
        if run.skip:
            hooks.run_end(run, None)
            continue
        if not locks:
            _run_one(run, out_dir, distributed, profile_dir, hooks, force)
            continue
        with run_lock(out_dir, run.run_id) as holder:
            if holder is None:
                _run_one(run, out_dir, distributed, profile_dir, hooks, force)
                continue
        hooks.note(
            f"{_label(run)} is running in another sweep (pid {holder}); waiting for it "
            "after the other runs"
        )
        waiting.append(run)
    for run in waiting:
        with run_lock(out_dir, run.run_id, wait=True):
            _run_one(run, out_dir, distributed, profile_dir, hooks, force)
    return planned


def _label(run: PlannedRun) -> str:
    s = run.settings
    return f"{s['size']} {s['mode']}" + (" muP" if s["mup"] else "") + f" ({run.run_id})"


def _run_one(run, out_dir, distributed: Distributed, profile_dir, hooks: Hooks, force) -> None:
    """One run under its lock: recorded meanwhile by another sweep → skipped; a kept result
    of an earlier sweep → recorded; else executed and recorded."""
    if recorded_status(out_dir, run.run_id) == "ok":
        run.skip = True
        hooks.note(f"{_label(run)} was recorded by another sweep meanwhile; skipped")
        hooks.run_end(run, None)
        return
    outcome = kept_result(run.run_id) if distributed.is_recorder else None
    if outcome is not None:
        hooks.note(f"{_label(run)}: recording the result kept by an earlier sweep")
    else:
        hooks.run_start(run)
        outcome = execute_run(
            run,
            distributed=distributed,
            profile_dir=profile_dir,
            on_step=hooks.on_step,
            force=force,
        )
    if distributed.is_recorder:
        record(out_dir, outcome)
    hooks.run_end(run, outcome)


def remeasure(settings_json: str) -> RunRecord:
    """Run one recorded configuration again in a subprocess (what ``scaling check`` uses to
    re-measure a regressed run); the record is returned, not written."""
    settings = json.loads(settings_json)
    run = PlannedRun(index=0, run_id=run_id_of(settings), settings=settings, skip=False)
    return execute_run(run).record
