"""Processes (issue 19): workers die with their sweep, whatever signal it gets; temporary
directories do not pile up; a timed-out run keeps its steps; a missing peer is named within
the init timeout."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaling import records, sweep
from scaling.launch import wait_all
from scaling.spec import SweepSpec

ROOT = Path(__file__).parent.parent


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def workers_under(marker: Path) -> list[int]:
    """Worker processes whose command line names ``marker`` (their result file's folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "scaling.worker" in cmd and str(marker) in cmd and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def wait_for(condition, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def test_a_child_dies_with_its_parent_even_on_sigkill(tmp_path):
    child = (
        "from scaling.launch import die_with_parent; import time; die_with_parent(); "
        "print('ready', flush=True); time.sleep(120)"
    )
    parent = (
        "import subprocess, sys, time; from scaling.launch import child_env\n"
        f"c = subprocess.Popen([sys.executable, '-c', {child!r}], env=child_env(), "
        "stdout=subprocess.PIPE, text=True)\n"
        "assert c.stdout.readline().strip() == 'ready'\n"
        "print(c.pid, flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child_pid = int(proc.stdout.readline())
    assert alive(child_pid)
    proc.kill()
    proc.wait()
    assert wait_for(lambda: not alive(child_pid), 5), "the child outlived its parent"


def test_wait_all_stops_the_others_when_one_fails():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    start = time.monotonic()
    assert wait_all([sleeper, failing], timeout_s=60) == [-signal.SIGKILL, 3]
    assert time.monotonic() - start < 30  # not the 60 s the sleeper would take


FAKE_WORKER = """import json, sys, time
for step in range(3):
    print(json.dumps({"step": step, "loss": 5.0 - step, "grad_norm": 1.0, "lr": 1e-3,
                      "step_time_s": 0.01}), flush=True)
time.sleep(120)
"""


def test_a_run_stopped_by_its_timeout_keeps_the_steps_it_finished(tmp_path, monkeypatch):
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setattr(sweep, "_worker_cmd", lambda payload, path: [sys.executable, str(script)])
    spec = SweepSpec("t", {"size": ["tiny"]}, {"steps": 100, "timeout_s": 3})
    sweep.run_sweep(spec, tmp_path / "rec")
    run = records.load_runs(tmp_path / "rec").iloc[0]
    steps = records.load_steps(tmp_path / "rec")
    assert run["status"] == "timeout" and "timeout of 3 s" in run["error"]
    assert list(steps["step"]) == [0, 1, 2] and list(steps["loss"]) == [5.0, 4.0, 3.0]


def start_sweep(tmp_path: Path) -> tuple[subprocess.Popen, Path, list[int]]:
    """A real sweep of tiny (long enough to be interrupted) in its own process group, with
    its temporary directories under ``tmp_path/tmp``; returns once its worker trains."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    args = ["sweep", "none", "--sizes", "tiny", "--steps", "2000", "--seq", "16", "--batch", "4"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "scaling", *args, "--out", str(tmp_path / "rec")],
        env={**os.environ, "TMPDIR": str(tmp)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert wait_for(lambda: workers_under(tmp), 180), "no worker started"
    workers = workers_under(tmp)
    steps = lambda: (tmp_path / "rec").exists()  # noqa: E731
    assert wait_for(steps, 60)
    return proc, tmp, workers


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_signalling_a_sweep_process_group_leaves_no_worker_and_no_temp_dir(tmp_path, sig):
    proc, tmp, workers = start_sweep(tmp_path)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert wait_for(lambda: not any(alive(w) for w in workers), 10), "a worker outlived the sweep"
    left = list(tmp.glob("scaling-run-*"))
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM and not left
        lines = [line for line in err.splitlines() if line.strip() and "error" in line]
        assert lines == [lines[0]] and "stopped by SIGTERM" in lines[0] and "resumes" in lines[0]
        assert "Traceback" not in err
    else:  # nothing can clean up after SIGKILL but the next sweep
        assert len(left) == 1
        assert sweep.remove_stale_run_dirs(tmp) == left and not left[0].exists()


@pytest.mark.slow
def test_sigint_stops_cleanly_and_the_rerun_resumes_without_duplicates(tmp_path):
    proc, tmp, workers = start_sweep(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    assert wait_for(lambda: not any(alive(w) for w in workers), 10)
    assert not list(tmp.glob("scaling-run-*"))
    args = ["sweep", "none", "--sizes", "tiny", "--steps", "2", "--seq", "16", "--batch", "4"]
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-m", "scaling", *args, "--out", str(tmp_path / "rec")],
            check=True,
            capture_output=True,
            cwd=ROOT,
            timeout=300,
        )
    runs = records.load_runs(tmp_path / "rec")
    assert len(runs) == 1 and runs["status"].item() == "ok"


def test_a_missing_peer_is_named_within_the_init_timeout(tmp_path):
    from scaling.launch import free_port

    port = free_port()
    args = ["train", "--size", "tiny", "--steps", "1", "--seq", "16", "--batch", "4"]
    args += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "0"]
    result = subprocess.run(
        [sys.executable, "-m", "scaling", *args, "--init-timeout", "5"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,  # jax alone would wait its own timeout, then abort (exit 134)
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines[-1].startswith("error: process 1 of 2 did not join within 5 s"), lines
    assert "--init-timeout" in lines[-1]


def test_the_worker_streams_one_json_line_per_finished_step(capsys):
    from scaling.worker import _print_step

    metrics = {"loss": 2.5, "grad_norm": 1.0, "lr": 1e-3, "step_time_s": 0.1, "val_loss": 2.7}
    _print_step(7, metrics)
    line = json.loads(capsys.readouterr().out)
    (step,) = sweep._steps_of("r", [line])
    assert (step.step, step.loss, step.step_time_s, step.val_loss) == (7, 2.5, 0.1, 2.7)
