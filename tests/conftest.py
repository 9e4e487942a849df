"""Shared fixtures. Tests run on 8 simulated CPU devices; this must happen before jax creates its
backend, so it is the first thing pytest imports."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from scaling.records import RunOutcome, RunRecord, StepRecord, write_outcome  # noqa: E402

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"


def last_json(text: str):
    """The JSON object on the last line of a command's stdout (every --json command ends so)."""
    return json.loads(text.strip().splitlines()[-1])


def one_error_line(result) -> str:
    """The one stderr line of a refused command (exit code 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def cli():
    """``cli("train", "--size", "tiny")``: invoke the `scaling` app in-process."""
    from scaling.cli.main import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def make_run_record(run_id: str = "r1", **overrides) -> RunRecord:
    """An ok run row of the tiny model with plausible measurements; override any column."""
    fields = dict(
        run_id=run_id,
        sweep="test",
        size="tiny",
        family="llama",
        mode="dp",
        mesh="4x1",
        n_devices=4,
        n_processes=1,
        mup=False,
        batch=8,
        seq=64,
        dtype="float32",
        remat="none",
        steps=6,
        timing_warmup_steps=1,
        lr=3e-3,
        seed=0,
        data="synthetic",
        d_model=128,
        n_layers=4,
        n_heads=8,
        tied=True,
        status="ok",
        mfu=0.1,
        tokens_per_s=10_000.0,
        step_time_s_median=0.05,
        platform="cpu",
        device_kind="cpu",
    )
    fields.update(overrides)
    return RunRecord(**fields)


def write_runs(out: Path, rows: list[RunRecord], steps: dict | None = None) -> Path:
    """Write run rows (and optional ``{run_id: [StepRecord, ...]}``) through the one writer."""
    for row in rows:
        write_outcome(out, RunOutcome(row, (steps or {}).get(row.run_id, [])))
    return out


__all__ = [
    "DATA",
    "ROOT",
    "StepRecord",
    "in_namespace",
    "last_json",
    "make_run_record",
    "needs_mounts",
    "one_error_line",
    "write_runs",
]


def private_mounts_work() -> bool:
    """Whether this host lets a process mount a tmpfs in its own mount namespace."""
    import subprocess

    try:
        probe = subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    not private_mounts_work(),
    reason="cannot mount a tiny tmpfs in a private mount namespace (unshare -rm) here",
)


def in_namespace(script: str, timeout: float = 300):
    """Run the shell ``script`` in a private mount namespace: its mounts (a tiny tmpfs, a
    read-only remount) vanish with it, nothing on the host changes."""
    import subprocess

    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
