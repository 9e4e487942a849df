"""The scaling-law fit: it recovers a known law (with and without SciPy), refuses fewer than
three compute points, and the report fits the lowest loss per compute."""

from __future__ import annotations

import numpy as np
import pytest
from report_records import LAW, run, write

from scaling import report as rp


@pytest.mark.parametrize("use_scipy", [True, False])
def test_fit_recovers_a_known_law_with_noise(use_scipy):
    rng = np.random.default_rng(0)
    E, A, alpha = 1.7, 400.0, 0.15
    C = np.geomspace(1e15, 1e21, 12)
    L = (E + A * C**-alpha) * (1 + 0.002 * rng.standard_normal(C.size))
    fit = rp.fit_scaling_law(C, L, use_scipy=use_scipy)
    assert pytest.approx(E, rel=0.05) == fit.E
    assert pytest.approx(A, rel=0.05) == fit.A
    assert fit.alpha == pytest.approx(alpha, rel=0.05)
    assert all(np.isfinite([fit.E_se, fit.A_se, fit.alpha_se]))
    assert ("scipy" in fit.method) == use_scipy


def test_report_fits_the_main_record_exactly(built):
    # main record: 6 distinct compute values lie exactly on the law; the muP runs add
    # compute points 3·flops with their own losses, so fit only the main record here
    root = built[3]
    main = rp.build_report([root / "main"], out=root / "out_main", formats=["md"])
    assert main.fit is not None and main.fit.n_points == 6
    assert pytest.approx(LAW["E"], rel=1e-3) == main.fit.E
    assert main.fit.alpha == pytest.approx(LAW["alpha"], rel=1e-3)
    assert "E (nats)" in (main.out / "report.md").read_text()


def test_fit_needs_three_compute_points(tmp_path):
    with pytest.raises(ValueError, match="≥ 3 distinct"):
        rp.fit_scaling_law([1e9, 1e9, 1e10], [3.0, 3.1, 2.5])
    write(tmp_path / "rec", [run("a", "tiny", "dp", steps=4), run("b", "10m", "dp", steps=4)])
    result = rp.build_report([tmp_path / "rec"], out=tmp_path / "out")
    assert result.fit is None
    assert any("needs ≥ 3" in n for n in result.notes)
    assert "needs ≥ 3" in (tmp_path / "out" / "report.md").read_text()
