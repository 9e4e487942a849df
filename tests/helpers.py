"""Plain helpers the tests import (`from helpers import ...`); fixtures live in conftest.py.
A module of its own because tests/report has a conftest.py too, and two modules named
``conftest`` shadow each other on import."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from scaling.records import RunOutcome, RunRecord, StepRecord, write_outcome

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"


def last_json(text: str):
    """The JSON object on the last line of a command's stdout (every --json command ends so)."""
    return json.loads(text.strip().splitlines()[-1])


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


def isoflop_record(out: Path, law, *, noise=0.001, seed=0, curve_points=0, budgets=None):
    """Runs of 7 sizes about the optimum on each compute budget (C = 6·N·D, batch 8 × seq 128),
    final losses from ``law`` (a ``scaling.laws.parametric`` law) with log-normal noise; with
    ``curve_points``, that many step rows per run at log-spaced steps, the loss on the law at
    the tokens seen so far (LR warm-up over the first two rows)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows, steps = [], {}
    for C in np.geomspace(1e17, 1e20, 4) if budgets is None else budgets:
        n_opt = float(law.optimal(C)[0])
        for x in np.linspace(-1.5, 1.5, 7):
            N = round(n_opt * np.exp(x))
            n_steps = round(C / (6 * N) / 1024)
            loss = float(law.loss(N, n_steps * 1024)) * np.exp(noise * rng.standard_normal())
            run_id = f"r{len(rows)}"
            rows.append(
                make_run_record(
                    run_id,
                    batch=8,
                    seq=128,
                    steps=n_steps,
                    n_params=N,
                    tokens_seen=float(n_steps * 1024),
                    model_flops_per_step=6.0 * N * 1024,
                    final_val_loss=loss,
                    final_loss=loss,
                    entropy_floor_nats=1.2425,
                )
            )
            at = np.unique(np.geomspace(1, n_steps, curve_points).round().astype(int)) - 1
            steps[run_id] = [
                StepRecord(
                    run_id, int(t), float(law.loss(N, (t + 1) * 1024)), 0.1, min(1, i / 2), 1
                )
                for i, t in enumerate(at)
            ]
    return write_runs(out, rows, steps)


# A few small standard-library modules: real text every machine has (~90 KB).
STDLIB_SAMPLE = (
    "abc.py",
    "bisect.py",
    "colorsys.py",
    "fnmatch.py",
    "heapq.py",
    "keyword.py",
    "numbers.py",
    "string.py",
    "textwrap.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "json/scanner.py",
    "json/tool.py",
)


def stdlib_sample(folder: Path) -> Path:
    """Copy STDLIB_SAMPLE into ``folder`` (flat, as ``json_decoder.py`` etc.)."""
    import shutil
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    folder.mkdir(parents=True, exist_ok=True)
    for name in STDLIB_SAMPLE:
        shutil.copy(root / name, folder / name.replace("/", "_"))
    return folder


__all__ = ["StepRecord"]


def one_error_line(result) -> str:
    """The one stderr line of a refused command (exit code 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def private_mounts_work() -> bool:
    """Whether this host lets a process mount a tmpfs in its own mount namespace."""
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


def in_namespace(script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the shell ``script`` in a private mount namespace: its mounts (a tiny tmpfs, a
    read-only remount) vanish with it, nothing on the host changes."""
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def equal_within(times: list[float], windows: list[range]) -> None:
    """Every window's steps carry one and the same time (the window's mean)."""
    for window in windows:
        assert len({times[i] for i in window}) == 1, (window, [times[i] for i in window])
