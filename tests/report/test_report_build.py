"""The build: every file goes through ``records.atomic_path``, and a figure added to the registry
lands in the report with its CSV and a page entry."""

from __future__ import annotations

import contextlib

import pandas as pd
from report_records import coord_rows, main_runs, run, write

from scaling import records
from scaling import report as rp
from scaling.report import build
from scaling.report.axes import FigureResult, new_figure


def test_every_file_is_written_atomically(tmp_path, monkeypatch):
    write(tmp_path / "rec", main_runs())
    coord_rows().to_parquet(tmp_path / "rec" / records.COORD_CHECK_FILE)
    atomic_targets = []
    real_atomic_path = records.atomic_path

    @contextlib.contextmanager
    def recording_atomic_path(path):
        atomic_targets.append(path)
        with real_atomic_path(path) as tmp:
            yield tmp

    monkeypatch.setattr(records, "atomic_path", recording_atomic_path)
    result = rp.build_report([tmp_path / "rec"], out=tmp_path / "out")
    written = sorted(p for p in (tmp_path / "out").iterdir())
    assert {p.suffix for p in written} == {".png", ".csv", ".html", ".md"}
    assert written == sorted(atomic_targets) == sorted(result.files)
    atomic_targets.clear()
    png = rp.coord_check_figure(tmp_path / "rec")
    assert sorted(atomic_targets) == [png.with_suffix(".csv"), png]


def fig_run_count(rec, style) -> FigureResult | None:
    fig, (ax,) = new_figure()
    counts = rec.runs.groupby("status").size().rename("n_runs").reset_index()
    ax.bar(counts["status"], counts["n_runs"])
    return FigureResult("run_count", "Runs per status", "Runs per status.", fig, counts)


def test_a_registered_figure_is_written_and_listed(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "FIGURES", (*build.FIGURES, fig_run_count))
    write(tmp_path / "rec", [run("a", "tiny", "dp"), run("b", "tiny", "dp", status="oom")])
    result = rp.build_report([tmp_path / "rec"], out=tmp_path / "out")
    assert result.figures[-1].name == "run_count"
    counts = pd.read_csv(tmp_path / "out" / "run_count.csv")
    assert dict(zip(counts["status"], counts["n_runs"], strict=True)) == {"ok": 1, "oom": 1}
    assert "](run_count.png)" in (tmp_path / "out" / "report.md").read_text()
    assert "<img src='run_count.png'" in (tmp_path / "out" / "index.html").read_text()
