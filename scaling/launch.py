"""Child processes that cannot outlive their parent, and the local multi-process launcher.

* ``child_env`` / ``die_with_parent``: a child started with ``child_env()`` calls
  ``die_with_parent()`` first thing; it then gets SIGKILL when its parent dies, however the
  parent died (SIGKILL included), through Linux's ``prctl(PR_SET_PDEATHSIG)``, or elsewhere a
  thread that watches the parent's pid.
* ``wait_all``: wait for a group of processes under one timeout, and stop the rest as soon as
  one fails (a peer that died would otherwise leave the others waiting for it).
* ``spawn_local``: the same command as P local processes joined through jax.distributed.

Never imports jax.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PARENT_ENV = "SCALING_PARENT_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment for a child that must die with this process."""
    return {**os.environ, PARENT_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """Arrange to be killed when the parent that set ``PARENT_ENV`` dies; exit now if it
    already has (it died before this process got here). A no-op without ``PARENT_ENV``."""
    parent = os.environ.pop(PARENT_ENV, None)
    if not parent or not parent.isdigit():
        return
    parent_pid = int(parent)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child started with ``start_new_session=True`` and everything it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def wait_all(procs: list[subprocess.Popen], timeout_s: float) -> list[int]:
    """Exit codes of ``procs``; as soon as one exits non-zero the others are killed (their
    codes then read -SIGKILL). Raises ``subprocess.TimeoutExpired`` after ``timeout_s``, and
    kills them all on that or any other exception (Ctrl-C, SIGTERM)."""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes) or any(c for c in codes):
                break
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired([p.args for p in procs], timeout_s)
            time.sleep(0.1)
    except BaseException:
        for p in procs:
            kill_group(p)
        raise
    for p in procs:
        if p.poll() is None:
            kill_group(p)
    return [p.wait() for p in procs]


def parse_coordinator(text: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); ValueError naming the value otherwise."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"bad --coordinator {text!r}; expected HOST:PORT with a port in 1..65535, "
            "e.g. 10.0.0.1:1234"
        )
    return host, int(port)


def validate_processes(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    local_processes: int = 0,
) -> None:
    """The multi-process options, checked before anything starts."""
    if local_processes < 0:
        raise ValueError(f"--local-processes must be >= 0 (0: one process), got {local_processes}")
    if coordinator is not None:
        parse_coordinator(coordinator)
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
    if process_id is not None:
        if num_processes is None:
            raise ValueError("--process-id needs --num-processes")
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"--process-id {process_id} is out of range; valid: 0..{num_processes - 1}"
            )


def validate_timeout(value: float, name: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    return value


def spawn_local(args: list[str], n_processes: int, timeout_s: float) -> int:
    """Run ``python -m scaling ARGS`` ``n_processes`` times as one jax.distributed job.

    Returns process 0's exit code (or the first failure's, or 124 on timeout)."""
    port = free_port()
    procs, logs = [], []
    for rank in range(n_processes):
        cmd = [
            sys.executable,
            "-m",
            "scaling",
            *args,
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            str(n_processes),
            "--process-id",
            str(rank),
        ]
        log = None if rank == 0 else tempfile.TemporaryFile()  # noqa: SIM115 (outlives loop)
        logs.append(log)
        procs.append(
            subprocess.Popen(cmd, stdout=log, stderr=log, env=child_env(), start_new_session=True)
        )
    try:
        codes = wait_all(procs, timeout_s)
    except subprocess.TimeoutExpired:
        print(f"error: local processes timed out after {timeout_s:.0f} s", file=sys.stderr)
        return 124
    failed = [c for c in codes if c]
    if not failed:
        return 0
    first = next((c for c in failed if c != -signal.SIGKILL), failed[0])  # not one we stopped
    rank = codes.index(first)
    if logs[rank] is not None:
        logs[rank].seek(0)
        tail = logs[rank].read().decode(errors="replace").strip().splitlines()[-1:]
        print(f"error: process {rank} exited {first}: {' '.join(tail)}", file=sys.stderr)
    return first if first > 0 else 128 - first
