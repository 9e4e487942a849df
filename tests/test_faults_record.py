"""Damaged, foreign and unwritable records (issue 19): the damaged file is named (or moved
aside and its run redone), earlier records stay intact, a finished run is never thrown away."""

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import in_namespace, make_run_record, needs_mounts, one_error_line, write_runs

from scaling import records, sweep
from scaling.spec import SweepSpec
from scaling.sweep import run_id_of

SMALL = {"steps": 1, "seq": 16, "batch": 4, "timing_warmup_steps": 0}


def spec_of(*modes: str) -> SweepSpec:
    return SweepSpec("faults", {"size": ["tiny"], "mode": list(modes)}, SMALL)


def recorded(out: Path, spec: SweepSpec) -> list[str]:
    """Record every run of ``spec`` as ok (without training), as a finished sweep would."""
    ids = [run_id_of(s) for s in spec.grid()]
    steps = {i: [records.StepRecord(i, 0, 5.0, 0.1, 1e-3, 1.0)] for i in ids}
    write_runs(out, [make_run_record(i, sweep="faults") for i in ids], steps)
    return ids


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def foreign(out: Path) -> Path:
    path = out / "runs" / "foreign.parquet"
    pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}).to_parquet(path)
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_loading_a_record_names_the_file_that_is_not_a_run_record(tmp_path, damage):
    recorded(tmp_path, spec_of("none"))
    bad = tmp_path / "runs" / "zz.parquet"
    if damage == "foreign":
        pd.DataFrame({"a": [1]}).to_parquet(bad)
    else:
        shutil.copy(next((tmp_path / "runs").glob("*.parquet")), bad)
        truncate(bad) if damage == "truncated" else bad.write_text("not parquet\n")
    with pytest.raises(ValueError, match=f"'{bad}' is not a") as err:
        records.load_runs(tmp_path)
    assert f"move it out of '{tmp_path / 'runs'}'" in str(err.value)


def test_check_and_report_name_a_foreign_parquet_file(cli, tmp_path):
    recorded(tmp_path, spec_of("none", "dp"))
    bad = foreign(tmp_path)
    line = one_error_line(cli("check", "--baseline", tmp_path, "--current", tmp_path))
    assert str(bad) in line and "no column run_id" in line
    line = one_error_line(cli("report", tmp_path, "--out", tmp_path / "report", "--format", "md"))
    assert str(bad) in line


def test_a_sweep_moves_damaged_files_aside_and_redoes_their_runs(tmp_path, monkeypatch):
    spec = spec_of("none", "dp", "fsdp")
    ids = recorded(tmp_path, spec)
    truncate(tmp_path / "runs" / f"{ids[0]}.parquet")
    truncate(tmp_path / "steps" / f"{ids[1]}.parquet")
    stray = foreign(tmp_path)
    intact = (tmp_path / "runs" / f"{ids[2]}.parquet").read_bytes()
    executed, notes = [], []

    def execute(run, **_):
        executed.append(run.run_id)
        return records.RunOutcome(make_run_record(run.run_id, sweep="faults"), [])

    monkeypatch.setattr(sweep, "execute_run", execute)
    sweep.run_sweep(spec, tmp_path, on_note=notes.append)
    assert sorted(executed) == sorted(ids[:2])  # the third is intact and skipped
    assert (tmp_path / "runs" / f"{ids[2]}.parquet").read_bytes() == intact
    moved = {p.name.split(".")[0] for p in (tmp_path / "quarantine").rglob("*.parquet")}
    assert moved == {ids[0], ids[1], "foreign"}  # ids[1]: its run row and its steps
    assert any(str(stray) in n and "moved to" in n for n in notes), notes
    assert len(records.load_runs(tmp_path)) == 3


def test_a_record_that_cannot_be_written_keeps_the_finished_result(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "KEPT_DIR", tmp_path / "kept")
    spec = spec_of("none")
    (run_id,) = [run_id_of(s) for s in spec.grid()]
    finished = records.RunOutcome(make_run_record(run_id, tokens_per_s=1234.0), [])

    def full(out_dir, outcome):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir))

    monkeypatch.setattr(sweep, "write_outcome", full)
    monkeypatch.setattr(sweep, "execute_run", lambda run, **_: finished)
    with pytest.raises(OSError, match="kept in .*kept.*the next sweep records it"):
        sweep.run_sweep(spec, tmp_path / "rec")
    monkeypatch.setattr(sweep, "write_outcome", records.write_outcome)
    monkeypatch.setattr(sweep, "execute_run", lambda run, **_: pytest.fail("ran again"))
    sweep.run_sweep(spec, tmp_path / "rec")  # records the kept result without re-running
    assert records.load_runs(tmp_path / "rec")["tokens_per_s"].item() == 1234.0
    assert not list((tmp_path / "kept").iterdir())


def test_a_run_held_by_another_sweep_is_waited_for_not_computed_twice(tmp_path, monkeypatch):
    spec = spec_of("none", "dp")
    ids = [run_id_of(s) for s in spec.grid()]
    executed, notes = [], []

    def execute(run, **_):
        executed.append(run.run_id)
        return records.RunOutcome(make_run_record(run.run_id), [])

    monkeypatch.setattr(sweep, "execute_run", execute)
    held, release = threading.Event(), threading.Event()

    def other_sweep():  # holds the first run's lock, then records it
        with sweep.run_lock(tmp_path, ids[0]) as holder:
            assert holder is None
            held.set()
            release.wait(30)
            write_runs(tmp_path, [make_run_record(ids[0])])

    thread = threading.Thread(target=other_sweep)
    thread.start()
    held.wait(30)
    threading.Timer(1.0, release.set).start()
    sweep.run_sweep(spec, tmp_path, on_note=notes.append)
    thread.join()
    assert executed == [ids[1]]
    assert any("running in another sweep" in n for n in notes), notes
    assert any("recorded by another sweep meanwhile; skipped" in n for n in notes), notes


def test_sweep_into_an_unwritable_place_is_refused_before_training(cli, tmp_path):
    file = tmp_path / "file"
    file.write_text("mine")
    args = ["sweep", "none", "--sizes", "tiny", "--steps", "1", "--out"]
    assert "is a file; give a directory" in one_error_line(cli(*args, file))
    assert file.read_text() == "mine"
    line = one_error_line(cli(*args, tmp_path / ("x" * 300)))
    assert "File name too long" in line and "use a shorter name" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not stop root from writing")
def test_sweep_into_a_read_only_directory_is_refused_before_training(cli, tmp_path):
    recorded(tmp_path / "rec", spec_of("dp"))
    os.chmod(tmp_path / "rec" / "runs", 0o555)
    try:
        line = one_error_line(cli("sweep", "none", "--sizes", "tiny", "--out", tmp_path / "rec"))
    finally:
        os.chmod(tmp_path / "rec" / "runs", 0o755)
    assert "Permission denied" in line and str(tmp_path / "rec" / "runs") in line


def test_a_record_under_a_name_that_is_not_utf8_writes_and_reads(tmp_path):
    out = Path(os.fsdecode(bytes(tmp_path) + b"/rec-\xff\xfe"))
    records.check_writable(out)
    recorded(out, spec_of("none"))
    assert len(records.load_runs(out)) == 1 and len(records.load_steps(out)) == 1


# ----------------------------------------------------------------------------- real file systems


CHECK = """import json, sys, pandas as pd
from scaling.records import load_runs
print(json.dumps(sorted(load_runs(sys.argv[1])["run_id"])))"""


@needs_mounts
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_sweep_into_a_full_or_read_only_disk_is_one_line_and_keeps_earlier_records(tmp_path, fault):
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    ids = recorded(src, spec_of("none"))
    mnt.mkdir()
    py = sys.executable
    if fault == "full":  # the earlier record, then a file that takes every free byte
        prepare = (
            f"mount -t tmpfs -o size=256k tmpfs {mnt} && cp -r {src} {mnt}/rec && "
            f"(dd if=/dev/zero of={mnt}/fill bs=4k 2>/dev/null; true)"
        )
    else:
        prepare = (
            f"mount -t tmpfs -o size=1m tmpfs {mnt} && cp -r {src} {mnt}/rec && "
            f"mount -o remount,ro {mnt}"
        )
    result = in_namespace(
        f"{prepare} && {py} -m scaling sweep none,dp --sizes tiny --steps 1 --out {mnt}/rec; "
        f"echo rc=$?; {py} -c '{CHECK}' {mnt}/rec"
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    expected = "No space left on device" if fault == "full" else "Read-only file system"
    assert expected in lines[0] and f"{mnt}/rec/" in lines[0]
    rc, kept = result.stdout.strip().splitlines()[-2:]
    assert rc == "rc=2" and json.loads(kept) == ids  # the earlier record, intact


@needs_mounts
def test_report_onto_a_full_disk_is_one_line(tmp_path):
    recorded(tmp_path / "rec", spec_of("none"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = in_namespace(
        f"mount -t tmpfs -o size=64k tmpfs {mnt} && "
        f"(dd if=/dev/zero of={mnt}/fill bs=4k 2>/dev/null; true) && "
        f"{sys.executable} -m scaling report {tmp_path / 'rec'} --out {mnt}/report --format md"
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and "No space left on device" in lines[0]


def test_the_lock_is_released_when_its_holder_dies(tmp_path):
    code = (
        "import sys, time; from scaling.sweep import run_lock\n"
        f"with run_lock({str(tmp_path)!r}, 'r1') as h:\n"
        "    print(h, flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "None"
    with sweep.run_lock(tmp_path, "r1") as other:
        assert other == str(holder.pid)  # held: the holder's pid
    holder.kill()
    holder.wait()
    time.sleep(0.2)
    with sweep.run_lock(tmp_path, "r1") as other:
        assert other is None
