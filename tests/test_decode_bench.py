"""`scaling bench-decode`: rows in the decode record with the record's conventions, measured
beside the roofline, resumable, and plotted by `scaling report`."""

import pandas as pd
import pytest
from helpers import last_json, one_error_line

from scaling.decode_record import DECODE_COLUMNS, load_decode, load_decode_steps
from scaling.estimate.hardware import cpu_profile
from scaling.estimate.inference import decode_estimate
from scaling.presets import get_preset

ARGS = ["--sizes", "tiny", "--batches", "2", "--prompt-lens", 4, "--gen-len", 4,
        "--repeats", 2, "--hbm-gbps", 10, "--json"]  # fmt: skip


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from typer.testing import CliRunner

    from scaling.cli.main import app

    out = tmp_path_factory.mktemp("decode")
    result = CliRunner().invoke(app, ["bench-decode", "--out", str(out), *map(str, ARGS)])
    assert result.exit_code == 0, result.output
    return out, last_json(result.stdout)


def test_rows_measure_decode_and_sit_beside_the_roofline(bench):
    out, rows = bench
    assert [(r["batch"], r["status"]) for r in rows] == [(2, "ok")]
    steps = load_decode_steps(out)
    for r in rows:
        assert r["ttft_s"] > 0 and r["compile_s"] > 0
        assert r["prefill_tokens_per_s"] == pytest.approx(r["batch"] * 4 / r["ttft_s"])
        mine = steps[steps["run_id"] == r["run_id"]]
        assert len(mine) == 2 * 3  # repeats × (gen_len - 1): token 0 comes from the prefill
        assert r["decode_step_s_median"] == pytest.approx(mine["latency_s"].median())
        assert r["decode_step_s_p90"] >= r["decode_step_s_median"]
        assert r["decode_tokens_per_s"] == pytest.approx(r["batch"] / r["decode_step_s_median"])
        # the cache arrays hold 2 · L 4 · b · h_kv 8 · S 8 · k 16 · 4 bytes, as estimated
        assert r["kv_cache_bytes_per_device"] == 2 * 4 * r["batch"] * 8 * 8 * 16 * 4
        assert r["est_kv_cache_bytes_per_device"] == r["kv_cache_bytes_per_device"]
        assert r["bandwidth_bytes_per_s"] == pytest.approx(10e9)
        hw = cpu_profile(r["peak_flops_per_device"], 1, copy_bandwidth_bytes_per_s=10e9)
        est = decode_estimate(get_preset("tiny"), hw, batch=r["batch"], prompt_len=4, gen_len=4)
        assert r["predicted_decode_tokens_per_s"] == pytest.approx(est.decode_tokens_per_s)
        assert r["platform"] == "cpu" and r["jax_version"] and r["started_at"]
        # XLA's count of the decode step: the estimate's matmuls plus ~1 % elementwise work
        assert 1.0 <= r["xla_decode_flops_per_step"] / r["est_decode_flops_per_step"] <= 1.05
        assert r["est_decode_flops_per_step"] == est.decode_flops_per_step
    frame = load_decode(out)
    assert list(frame.columns) == DECODE_COLUMNS and len(frame) == 1


def test_a_recorded_configuration_is_skipped_on_rerun(bench, cli):
    out, rows = bench
    again = cli("bench-decode", "--out", out, *ARGS)
    assert again.exit_code == 0, again.output
    assert "recorded ok, skipped" in again.stderr
    assert [r["started_at"] for r in last_json(again.stdout)] == [r["started_at"] for r in rows]


def test_report_plots_the_decode_rows(bench, tmp_path):
    from scaling.report.build import build_report

    out, _ = bench
    report = build_report([out], out=tmp_path / "report", formats=["md"])
    figure = next(f for f in report.figures if f.name == "decode")
    data = pd.read_csv(tmp_path / "report" / "decode.csv")
    assert list(data["batch"]) == [2] and (data["measured_over_roofline"] > 0).all()
    assert figure.data["decode_tokens_per_s"].notna().all()
    page = (tmp_path / "report" / "report.md").read_text()
    assert "1 decode rows (1 ok)" in page and "runs (" not in page  # no empty training table
    (row,) = [line for line in page.splitlines() if line.startswith("| tiny | none | 1x1 | 2 |")]
    measured = f"{data['decode_tokens_per_s'].iloc[0]:,.0f}"
    assert f"| {measured} |" in row and ("| memory |" in row or "| compute |" in row)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batches", "3", "--mode", "dp"], "global batch 3 is not divisible by data=8"),
        (["--prompt-lens", "500", "--gen-len", "20"], r"exceed the context of tiny \(512\)"),
        (["--batches", "1,x"], "comma-separated integers"),
        (["--sizes", "huge"], "unknown size 'huge'"),
    ],
)
def test_bad_grid_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, args, message):
    import re

    result = cli("bench-decode", "--out", tmp_path / "rec", "--sizes", "tiny", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    assert not (tmp_path / "rec").exists()


def test_sweep_task_decode_records_rows_the_report_plots(cli, tmp_path):
    out = tmp_path / "sweep"
    result = cli("sweep", "none", "--task", "decode", "--sizes", "tiny", "--batch", "2",
                 "--prompt-len", "4", "--gen-len", "4", "--hbm-gbps", "10", "--out", out,
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = last_json(result.stdout)
    assert (row["size"], row["mode"], row["batch"], row["status"]) == ("tiny", "none", 2, "ok")
    assert (row["prompt_len"], row["gen_len"]) == (4, 4)
    assert list(load_decode(out)["run_id"]) == [row["run_id"]]
    from scaling.report.build import build_report

    report = build_report([out], out=tmp_path / "report", formats=["md"])
    assert [f.name for f in report.figures] == ["decode"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "infer"], "unknown --task 'infer'; valid: train, decode"),
        (["--task", "decode", "--steps", "3"], "--steps: only for --task train, not decode"),
        (["--task", "decode", "--mup", "on"], "--mup: only for --task train, not decode"),
        (
            ["--task", "decode", "--attention", "xla", "--eval-every", "2"],
            "--attention, --eval-every: only for --task train, not decode",
        ),
        (
            ["--task", "decode", "--shard", "1/2", "--sync-every", "4"],
            "--sync-every, --shard: only for --task train, not decode",
        ),
        (
            ["--task", "decode", "--local-processes", "2"],
            "--local-processes: only for --task train, not decode",
        ),
    ],
)
def test_sweep_task_decode_bad_input_is_one_line(cli, tmp_path, args, message):
    result = cli("sweep", *args, "--out", tmp_path / "r")
    assert result.exit_code == 2 and message in one_error_line(result)
