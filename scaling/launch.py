"""Start the same command as P local processes joined through jax.distributed (127.0.0.1).

Workers run under a timeout: a missing peer makes jax abort after its init timeout, so a
stuck job must be killed from outside. Only process 0's output is shown.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=log))
    try:
        codes = [p.wait(timeout=timeout_s) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        print(f"error: local processes timed out after {timeout_s:.0f} s", file=sys.stderr)
        return 124
    for rank, (code, log) in enumerate(zip(codes, logs, strict=True)):
        if code and log is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-1:]
            print(f"error: process {rank} exited {code}: {' '.join(tail)}", file=sys.stderr)
    return codes[0] or next((c for c in codes if c), 0)
