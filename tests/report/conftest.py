"""The report every figure test reads: a main record, a muP record with a coord check, and a
baseline of the main runs at half the throughput. Built once per session."""

from __future__ import annotations

import pytest
from report_records import coord_rows, main_runs, mup_runs, write

from scaling import records
from scaling import report as rp


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    main, mup, base = root / "main", root / "mup", root / "base"
    write(main, main_runs())
    write(mup, mup_runs())
    coord_rows().to_parquet(mup / "coord_check.parquet")
    write(base, main_runs(scale=0.5, prefix="b"))  # other run ids, half the throughput
    result = rp.build_report([main, mup], out=root / "out", baseline=base)
    runs = records.load_runs(main, mup)
    steps = records.load_steps(main, mup)
    return result, runs, steps, root
