"""`scaling estimate`: the table, --json keys, --compile on tiny, one-line errors (exit 2)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import last_json, make_run_record, write_runs
from rich.console import Console
from typer.testing import CliRunner

from scaling.cli.estimate import render, simulate_devices
from scaling.cli.main import app
from scaling.estimate.calibrate import run_terms
from scaling.spec import SWEEP_DEFAULTS

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["estimate", *args])


def test_table_shows_sizes_memory_verdict_and_peak():
    result = invoke("--sizes", "125m,350m")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "125m",
        "350m",
        "activations",
        "total / capacity",
        "comm bytes",
        "step time",
        "MFU",
        "TFLOP",
        "495 TFLOP/s",
        "full t×t",
        "datasheet",
    ):
        assert text in out, text
    # f32, batch 8 × 2048 tokens, unfused attention: 125m fits an H100's 80 GB, 350m does not.
    assert "fits" in out and "does NOT fit" in out


def test_json_keys_and_values():
    result = invoke("--sizes", "125m,350m", "--mode", "fsdp_tp", "--mesh", "4x2",
                    "--batch", "16", "--dtype", "bfloat16", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = last_json(result.stdout)
    assert [r["size"] for r in rows] == ["125m", "350m"]
    for row in rows:
        for key in ("size", "n_params", "n_params_non_embedding", "flops_per_token",
                    "flops_per_step", "memory_per_device_bytes", "fits",
                    "comm_bytes_per_device_per_step", "predicted_step_s", "predicted_mfu",
                    "attention_convention", "peak_flops_per_device"):  # fmt: skip
            assert key in row, key
        assert set(row["memory_per_device_bytes"]) == {
            "params", "grads", "optimizer", "activations", "total"
        }  # fmt: skip
        assert row["mesh"] == [4, 2] and row["n_devices"] == 8 and row["seq"] == 2048
        assert row["peak_flops_per_device"] == 989e12  # bf16 on h100
        assert row["comm_bytes_per_device_per_step"] > 0 and row["fits"] is True
        assert "xla_flops_per_step_per_device" not in row  # only with --compile
        assert row["predicted_binding"] in ("compute", "memory", "communication")
        assert row["hbm_bytes_per_device_per_step"] > 0 and row["predicted_memory_s"] > 0
        assert row["efficiency"] == {"compute": 1.0, "hbm": 1.0, "link": 1.0, "overhead_s": 0.0}
    assert rows[0]["n_params"] < rows[1]["n_params"]


def test_calibrate_predicts_with_fitted_efficiencies(tmp_path):
    # Two recorded tiny CPU runs whose step times are 4x the datasheet compute term: the fitted
    # compute efficiency is 1/4 and the estimate uses it.
    rows = []
    for i, size in enumerate(("tiny", "10m")):
        settings = {**SWEEP_DEFAULTS, "sweep": "c", "size": size, "batch": 8, "seq": 64}
        row = make_run_record(
            f"c{i}",
            size=size,
            mode="none",
            mesh="1x1",
            n_devices=1,
            settings_json=json.dumps(settings),
            peak_flops_per_device=1e11,
        )
        terms = run_terms(dataclasses.asdict(row))
        row.step_time_s_median = 4 * terms.compute_s + terms.memory_s
        rows.append(row)
    write_runs(tmp_path / "cal", rows)
    result = invoke("--sizes", "30m", "--hardware", "cpu", "--peak-tflops", "0.1",
                    "--calibrate", str(tmp_path / "cal"), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    row = last_json(result.stdout)[0]
    assert row["efficiency"]["compute"] == pytest.approx(0.25, rel=1e-3)
    assert row["calibration"]["n_runs"] == 2 and row["calibration"]["record"]
    assert row["predicted_compute_s"] == pytest.approx(
        row["hardware_flops_per_device"] / (0.25 * 1e11), rel=1e-6
    )
    missing = invoke("--sizes", "30m", "--calibrate", str(tmp_path / "nope"))
    assert missing.exit_code == 2 and "holds no sweep record" in missing.output


def test_causal_halving_and_seq_default():
    full = last_json(invoke("--sizes", "tiny", "--json").stdout)[0]
    half = last_json(invoke("--sizes", "tiny", "--causal-halving", "--json").stdout)[0]
    assert full["seq"] == 512  # min(2048, context)
    assert half["attention_convention"] == "causal_halved" != full["attention_convention"]
    assert half["flops_per_token"] < full["flops_per_token"]
    assert half["predicted_step_s"] == full["predicted_step_s"]  # the hardware work is the same


def test_hf_config_replaces_sizes():
    rows = last_json(invoke("--hf-config", str(DATA / "llama-2-7b.json"), "--seq", "1024",
                            "--json").stdout)  # fmt: skip
    assert len(rows) == 1 and rows[0]["size"] == "llama-2-7b"
    assert rows[0]["n_params"] == 6_738_415_616
    assert rows[0]["fits"] is False  # 16 bytes per parameter alone is 108 GB


def test_compile_adds_xla_counts_on_tiny():
    # --devices 8: the tests run on 8 simulated devices already, set_cpu_devices accepts them.
    result = invoke("--sizes", "tiny", "--seq", "32", "--batch", "2", "--compile",
                    "--devices", "8", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = last_json(result.stdout)
    row = rows[0]
    assert row["xla_flops_method"] == "unrolled lowering"
    assert set(row["xla_memory"]) == {"argument", "output", "temp", "alias"}
    for key in ("xla_flops_per_step_per_device", "xla_flops_ratio", "xla_memory_ratio"):
        assert row[key] > 0, key
    assert row["xla_flops_ratio"] == pytest.approx(1.0, abs=0.02)
    console = Console(width=200, record=True)
    console.print(render(rows, compiled=True))
    text = console.export_text()
    assert "XLA / analytic" in text and "unrolled lowering" in text


def test_compiled_dropless_moe_on_cpu_says_why_xla_counts_more():
    result = invoke("--sizes", "tiny-moe", "--seq", "32", "--batch", "8", "--mode", "ep",
                    "--mesh", "8x1", "--devices", "8", "--compile")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "masked matmul over every expert" in result.output.replace("\n", " ")


def test_mesh_sets_the_simulated_device_count():
    # --compile with a DxT mesh simulates D·T CPU devices before jax starts; in this process
    # jax already runs 8, which a 4x2 mesh accepts and a 2x2 mesh cannot change.
    import jax

    assert len(jax.devices()) == 8  # start jax here so set_cpu_devices cannot reconfigure it
    simulate_devices(None, (4, 2))
    with pytest.raises(ValueError, match="cannot simulate 4 CPU devices"):
        simulate_devices(None, (2, 2))
    result = invoke("--sizes", "tiny", "--mode", "fsdp_tp", "--mesh", "2x2", "--compile")
    assert result.exit_code == 2 and "cannot simulate 4 CPU devices" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--sizes", "125m,9z"), "unknown size '9z'"),
        (("--hardware", "h900"), "unknown hardware 'h900'"),
        (("--mode", "zero", "--mesh", "4x2"), "unknown mode 'zero'"),
        (("--mesh", "4by2", "--mode", "dp"), "bad mesh '4by2'"),
        (("--mode", "fsdp"), "needs --mesh"),
        (("--mesh", "4x2"), "needs a sharded --mode"),
        (("--hf-config", "/nonexistent/config.json"), "cannot read a Hugging Face config"),
        (("--sizes", "tiny", "--seq", "4096"), "seq=4096 is out of range"),
        (("--sizes", ""), "no sizes given"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("error:")
    assert result.stdout == ""


def test_estimate_does_not_import_jax():
    code = (
        "import sys; from typer.testing import CliRunner; from scaling.cli.main import app; "
        "r = CliRunner().invoke(app, ['estimate', '--sizes', '125m', '--json']); "
        "assert r.exit_code == 0, r.output; assert 'jax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
