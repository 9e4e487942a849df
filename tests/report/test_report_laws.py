"""The scaling-law figures: drawn for a record that varies N and D (an IsoFLOP design on a known
law), absent for records that do not; what they plot matches an independent computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import isoflop_record

from scaling import report as rp
from scaling.laws.parametric import ChinchillaLaw

TRUTH = ChinchillaLaw(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)
LAW_FIGURES = {"isoflop", "optimal_scaling", "loss_contours", "heldout"}


@pytest.fixture(scope="module")
def iso_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("laws")
    record = isoflop_record(root / "iso", TRUTH, curve_points=12)
    return rp.build_report([record], out=root / "out"), root / "out"


def test_law_figures_and_table_are_in_the_report(iso_report):
    result, out = iso_report
    names = {f.name for f in result.figures}
    assert names >= LAW_FIGURES
    for name in LAW_FIGURES:
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.csv").is_file()
    page = (out / "report.md").read_text(encoding="utf-8")
    assert "Scaling laws (N_opt ∝ C^a" in page and "1.242" in page  # entropy floor beside E


def test_isoflop_minima_are_the_vertices_of_numpys_parabolas(iso_report):
    _, out = iso_report
    minima = pd.read_csv(out / "isoflop.csv").query("series == 'minimum'")
    runs = pd.read_parquet(out.parent / "iso" / "runs")
    runs["C"] = runs["steps"] * runs["model_flops_per_step"]
    runs["budget"] = np.round(np.log10(runs["C"]), 1)
    expected = []
    for _, on in runs.groupby("budget"):
        c2, c1, _ = np.polyfit(np.log(on["n_params"]), on["final_val_loss"], 2)
        expected.append(np.exp(-c1 / (2 * c2)))
    np.testing.assert_allclose(np.sort(minima["N"]), np.sort(expected), rtol=1e-9)


def test_heldout_figure_predicts_the_largest_run_close_to_its_measurement(iso_report):
    _, out = iso_report
    held = pd.read_csv(out / "heldout.csv").query("series == 'held out'")
    runs = pd.read_parquet(out.parent / "iso" / "runs")
    largest = runs.loc[runs["n_params"].idxmax()]
    assert list(held["run_id"]) == [largest["run_id"]]
    assert held["measured"].iloc[0] == pytest.approx(largest["final_val_loss"], rel=1e-12)
    assert held["predicted"].iloc[0] == pytest.approx(largest["final_val_loss"], rel=0.01)
    assert held["lo"].iloc[0] <= held["predicted"].iloc[0] <= held["hi"].iloc[0]


def test_contour_csv_holds_the_fitted_law_at_each_run(iso_report):
    _, out = iso_report
    runs = pd.read_csv(out / "loss_contours.csv")
    assert len(runs) == 28
    np.testing.assert_allclose(runs["fitted"], runs["loss"], rtol=0.01)  # 0.1 % noise, good fit


def test_records_without_varied_n_and_d_get_no_law_figures(built):
    result = built[0]
    assert not LAW_FIGURES & {f.name for f in result.figures}
