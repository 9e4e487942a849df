"""`scaling report` on the command line: the default output folder, one-line errors (exit 2)
for bad folders and formats, and no jax import."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
from report_records import run, write
from typer.testing import CliRunner

from scaling.cli.main import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, ["report", *map(str, args)])


def test_cli_writes_the_report_to_the_default_folder(tmp_path, monkeypatch):
    write(tmp_path / "mysweep", [run("a", "tiny", "dp", tokens_per_s=10.0, mfu=0.1)])
    monkeypatch.chdir(tmp_path)
    result = _invoke("mysweep", "--format", "md")
    assert result.exit_code == 0, result.output
    out = tmp_path / "reports" / "mysweep"
    assert (out / "report.md").is_file() and not (out / "index.html").exists()
    assert (out / "loss_vs_step.png").is_file() and (out / "loss_vs_step.csv").is_file()


def test_cli_bad_folders_exit_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty_runs" / "runs").mkdir(parents=True)
    (tmp_path / "foreign" / "runs").mkdir(parents=True)
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "foreign" / "runs" / "a.parquet")
    (tmp_path / "garbage" / "runs").mkdir(parents=True)
    (tmp_path / "garbage" / "runs" / "a.parquet").write_text("not parquet")
    write(tmp_path / "good", [run("a", "tiny", "dp")])
    cases = {
        "empty": "holds no sweep record",
        "empty_runs": "no runs recorded",
        "foreign": "not a scaling sweep record",
        "garbage": "not a readable sweep record",
        "missing": "does not exist",
    }
    for name, message in cases.items():
        result = _invoke(tmp_path / name, "--out", tmp_path / "o")
        assert result.exit_code == 2, (name, result.output)
        text = " ".join(result.output.split())
        assert message in text and "Traceback" not in result.output, (name, result.output)
    result = _invoke(tmp_path / "good", "--baseline", tmp_path / "empty", "--out", tmp_path / "o")
    assert result.exit_code == 2
    result = _invoke(tmp_path / "good", "--format", "pdf", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "valid: html, md" in result.output


def test_report_module_does_not_import_jax():
    code = "import sys, scaling.report, scaling.cli.report; assert 'jax' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
