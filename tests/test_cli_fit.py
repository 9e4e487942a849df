"""`scaling fit` on a record generated from a known law on an IsoFLOP design; bad input exits 2
with one line."""

from __future__ import annotations

import pytest
from helpers import isoflop_record, last_json, make_run_record, write_runs

from scaling.laws.parametric import ChinchillaLaw

TRUTH = ChinchillaLaw(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    return isoflop_record(tmp_path_factory.mktemp("iso") / "iso", TRUTH)


def test_fit_json_recovers_the_law_and_predicts_the_held_out_largest_size(cli, record):
    result = cli(
        "fit", record, "--law", "chinchilla", "--holdout", "largest", "--json",
        "--bootstrap", "40", "--budget", "1e21",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (group,) = last_json(result.stdout)
    assert group["runs"] == 28 and group["group"] == "llama SP tied seq 128 data synthetic"
    params = group["parametric"]["params"]
    assert params["E"]["value"] == pytest.approx(TRUTH.E, rel=0.05)
    assert params["a"]["value"] == pytest.approx(TRUTH.a, rel=0.05)
    assert params["a"]["lo"] < params["a"]["value"] < params["a"]["hi"]
    assert len(group["heldout"]) == 1  # the largest N sits on the largest budget only
    assert group["heldout_mean_abs_error"] < 0.01
    # approach 2 on the same runs: the IsoFLOP minima of this law scale close to β/(α+β)
    assert group["isoflop"]["a"]["value"] == pytest.approx(TRUTH.a, rel=0.05)
    (alloc,) = group["parametric"]["allocations"]
    assert alloc["n_opt"]["value"] == pytest.approx(float(TRUTH.optimal(1e21)[0]), rel=0.1)


def test_fit_prints_tables_per_group(cli, record):
    result = cli("fit", record, "--bootstrap", "0", "--budget", "1e21", "--holdout", "3")
    assert result.exit_code == 0, result.output
    for text in ("chinchilla law", "approach 2 (IsoFLOP)", "held out", "compute-optimal"):
        assert text in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--law", "hoffmann"], "unknown law 'hoffmann'; valid: chinchilla, kaplan"),
        (["--loss", "test"], "unknown loss 'test'; valid: val, train"),
        (["--holdout", "0"], "bad holdout '0'"),
        (["--budget", "lots"], "bad --budget 'lots'"),
        (["--bootstrap", "-1"], "bootstrap resamples must be ≥ 0"),
    ],
)
def test_fit_bad_options_exit_2_with_one_line(cli, record, args, message):
    result = cli("fit", record, *args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_fit_of_a_missing_folder_or_no_val_loss_exits_2(cli, tmp_path):
    result = cli("fit", tmp_path / "nothing")
    assert result.exit_code == 2 and "holds no sweep record" in result.output
    record = write_runs(tmp_path / "r", [make_run_record("a", n_params=1000)])
    result = cli("fit", record)
    assert result.exit_code == 2 and "no ok run has a finite final_val_loss" in result.output
