"""Against a baseline: runs pair by ``records.config_key`` (the keys ``scaling check`` uses), so
run id, seed and step count never matter and width, depth, family or tied embeddings do."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from report_records import figure_named, run, write, written_csv

from scaling import records
from scaling import report as rp


def test_baseline_ratios_match_by_configuration(built):
    result, *_ = built
    data = written_csv(result, "baseline_ratio")
    assert len(data) == 6  # 3 sizes × 2 modes; steps and run_id differ, config matches
    np.testing.assert_allclose(data["tokens_per_s_ratio"], 2.0)
    np.testing.assert_allclose(data["mfu_ratio"], 1.0)
    fig = figure_named(result, "baseline_ratio").figure
    np.testing.assert_allclose([p.get_height() for p in fig.axes[0].patches], 2.0)


def test_baseline_pairs_by_the_check_configuration_keys(tmp_path):
    measured = {"tokens_per_s": 100.0, "mfu": 0.2}
    current = [
        run("a", "tiny", "dp", **measured),
        run("b", "10m", "dp", **measured),
        run("c", "30m", "dp", **measured),
    ]
    baseline = [
        run("x", "tiny", "dp", seed=7, steps=9, tokens_per_s=50.0, mfu=0.1),  # the same config
        run("y", "10m", "dp", d_model=512, **measured),  # another width of the same preset
        run("z", "30m", "dp", tied=True, **measured),  # tied embeddings: not the same model
    ]
    write(tmp_path / "cur", current)
    write(tmp_path / "base", baseline)
    result = rp.build_report([tmp_path / "cur"], out=tmp_path / "out", baseline=tmp_path / "base")
    data = written_csv(result, "baseline_ratio")
    assert list(data["size"]) == ["tiny"]
    np.testing.assert_allclose(data[["tokens_per_s_ratio", "mfu_ratio"]], [[2.0, 2.0]])
    config = records.config_of(pd.Series(dataclasses.asdict(current[0])))
    assert data.loc[0, "config"] == "|".join(str(config[k]) for k in records.CONFIG_KEYS)
    unmatched = next(t for t in result.tables if t.title == "Configurations without a match")
    assert unmatched.columns[1] == " ".join(records.CONFIG_KEYS)
    assert (
        sorted(side for side, _ in unmatched.rows) == ["baseline only"] * 2 + ["current only"] * 2
    )
    assert any(" 512 " in key for _, key in unmatched.rows)


def test_a_baseline_without_a_match_is_a_note(tmp_path):
    write(tmp_path / "cur", [run("a", "tiny", "dp", tokens_per_s=100.0, mfu=0.2)])
    write(tmp_path / "base", [run("b", "tiny", "dp", n_layers=8, tokens_per_s=50.0, mfu=0.1)])
    result = rp.build_report([tmp_path / "cur"], out=tmp_path / "out", baseline=tmp_path / "base")
    assert "baseline_ratio" not in {f.name for f in result.figures}
    assert any("no configuration matches" in n for n in result.notes)
