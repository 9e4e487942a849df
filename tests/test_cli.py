import numpy as np
import pytest
from helpers import last_json
from typer.testing import CliRunner

from scaling.cli.main import app
from scaling.presets import PRESETS

runner = CliRunner()


def test_presets_json_lists_every_preset_with_counts():
    result = runner.invoke(app, ["presets", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in last_json(result.stdout)}
    assert set(rows) == set(PRESETS)
    keys = {
        "name",
        "family",
        "n_layers",
        "d_model",
        "n_heads",
        "d_ff",
        "vocab_size",
        "max_seq_len",
        "n_params",
        "n_params_non_embedding",
    }
    assert keys <= set(rows["125m"])
    # 125m with tied embeddings: 12·(4·768² + 3·768·2048 + 2·768) + 50304·768 + 768
    assert rows["125m"]["n_params"] == 12 * (4 * 768**2 + 3 * 768 * 2048 + 2 * 768) + (
        50304 * 768 + 768
    )
    assert rows["125m"]["n_params_non_embedding"] == rows["125m"]["n_params"] - 50304 * 768


def test_presets_table():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0 and "175b" in result.stdout and "1.3b" in result.stdout


def test_train_json_reports_losses_per_step():
    result = runner.invoke(
        app, ["train", "--size", "tiny", "--steps", "6", "--seq", "32", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = last_json(result.stdout)
    assert out["size"] == "tiny" and out["steps"] == 6 and len(out["losses"]) == 6
    assert out["final_loss"] == out["losses"][-1] and out["tokens_per_s"] > 0
    assert out["losses"][-1] < out["losses"][0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--size", "huge"], "unknown size 'huge'"),
        (["train", "--seq", "4096"], "seq=4096 is out of range; valid: 1..512"),
        (["train", "--steps", "-3"], "steps must be in 1..2147483647, got -3"),
        (["train", "--data", "nope.bin"], "data file 'nope.bin' not found"),
        (["train", "--mode", "tp", "--mesh", "4x2"], "mode tp needs data=1"),
        (["train", "--mode", "dp", "--mesh", "2x1"], "needs 2 devices but 8 are available"),
        (["train", "--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["train", "--sync-every", "0"], "sync_every must be >= 1, got 0"),
        (["sweep", "none", "--sizes", "tiny", "--sync-every", "-2"], "sync_every must be >= 1"),
        (["train", "--steps-per-call", "0"], "steps_per_call must be >= 1, got 0"),
        (["sweep", "none", "--sizes", "tiny", "--steps-per-call", "-1"], "steps_per_call must be"),
        (["sweep", "dp", "--sizes", "huge"], "unknown size 'huge'"),
        (["sweep", "pp", "--sizes", "tiny"], "unknown mode 'pp'"),
        (["sweep", "dp", "--sizes", "tiny", "--shard", "3/2"], "bad shard '3/2'"),
        (["sweep", "--spec", "missing.toml"], "sweep spec 'missing.toml' not found"),
        (["sweep", "dp"], "give MODES and --sizes"),
        (["train", "--mup", "--mup-attn-multiplier", "-1"], "mup_attn_multiplier must be"),
        (["train", "--mup", "--mup-base-width", "72"], "mup_base_width=72 is not a multiple"),
        (
            ["sweep", "none", "--sizes", "tiny", "--mup", "on", "--mup-output-multiplier", "0"],
            "mup_output_multiplier must be",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_token_id_out_of_range_is_a_clean_error(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.array([0, 1, 70000] * 300, dtype=np.uint32))
    result = runner.invoke(app, ["train", "--data", str(path), "--steps", "1"])
    assert result.exit_code == 2
    assert "token id 70000" in result.output and "valid ids: 0..2047" in result.output


def test_data_from_text_then_train_on_it(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    out = tmp_path / "a.bin"
    result = runner.invoke(app, ["data", "from-text", str(text), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size == 2 * len(text.read_bytes())
    result = runner.invoke(
        app, ["train", "--data", str(out), "--steps", "3", "--seq", "32", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert len(last_json(result.stdout)["losses"]) == 3


def test_sweep_cli_json(tmp_path):
    result = runner.invoke(
        app,
        [
            "sweep",
            "none",
            "--sizes",
            "tiny",
            "--steps",
            "2",
            "--seq",
            "16",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = last_json(result.stdout)
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["mesh"] == "1x1"
    assert (tmp_path / "runs" / f"{rows[0]['run_id']}.parquet").is_file()
