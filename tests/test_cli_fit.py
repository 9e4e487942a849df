"""`scaling fit` on a record generated from a known law on an IsoFLOP design; bad input exits 2
with one line."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import last_json, make_run_record, write_runs

from scaling.laws.parametric import ChinchillaLaw

TRUTH = ChinchillaLaw(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)
TOKENS_PER_STEP = 8 * 128


def isoflop_record(out, law=TRUTH, noise=0.001, seed=0):
    """7 sizes about the optimum on each of 4 budgets (C = 6·N·D), losses from ``law``."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in np.geomspace(1e17, 1e20, 4):
        n_opt = float(law.optimal(C)[0])
        for x in np.linspace(-1.5, 1.5, 7):
            N = round(n_opt * np.exp(x))
            steps = round(C / (6 * N) / TOKENS_PER_STEP)
            D = steps * TOKENS_PER_STEP
            loss = float(law.loss(N, D)) * np.exp(noise * rng.standard_normal())
            rows.append(
                make_run_record(
                    f"r{len(rows)}",
                    size="tiny",
                    batch=8,
                    seq=128,
                    steps=steps,
                    n_params=N,
                    tokens_seen=float(D),
                    model_flops_per_step=6.0 * N * TOKENS_PER_STEP,
                    final_val_loss=loss,
                    final_loss=loss,
                )
            )
    return write_runs(out, rows)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    return isoflop_record(tmp_path_factory.mktemp("iso") / "iso")


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
