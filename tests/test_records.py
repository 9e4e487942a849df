"""The record: atomic writes leave no partial file, the JSON codec round-trips, run identity,
and version-1 records still read under the version-2 names."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from helpers import make_run_record, write_runs

from scaling import check, records
from scaling.report import load_record


def _v1_file(out, record: records.RunRecord) -> None:
    """A run row as version 1 wrote it: the two old column names, no ``tied`` column."""
    row = dataclasses.asdict(record)
    row["warmup_steps"] = row.pop("timing_warmup_steps")
    row["xla_flops_per_step"] = row.pop("xla_flops_per_step_global")
    del row["tied"]
    row["schema_version"] = 1
    (out / "runs").mkdir(parents=True)
    pd.DataFrame([row]).to_parquet(out / "runs" / f"{record.run_id}.parquet")


def test_version_1_records_read_under_version_2_names(tmp_path):
    old = make_run_record(
        "v1", timing_warmup_steps=3, xla_flops_per_step_global=1.5e9, tied=None,
        settings_json=json.dumps({"tied": False}),
    )  # fmt: skip
    _v1_file(tmp_path / "old", old)
    runs = records.load_runs(tmp_path / "old")
    assert runs.loc[0, "timing_warmup_steps"] == 3
    assert runs.loc[0, "xla_flops_per_step_global"] == 1.5e9
    assert "warmup_steps" not in runs.columns
    assert records.config_of(runs.iloc[0])["tied"] is False  # from settings_json
    # a version-2 record of the same configuration matches it in check and loads in report
    new = write_runs(tmp_path / "new", [make_run_record("v2", tied=False, mfu=0.1)])
    result = check.compare(records.load_runs(tmp_path / "old"), records.load_runs(new))
    assert [r.verdict for r in result.rows] == ["ok"]
    assert load_record(tmp_path / "old").runs.loc[0, "timing_warmup_steps"] == 3


def test_json_codec_round_trips_an_outcome():
    outcome = records.RunOutcome(
        make_run_record("rt", final_loss=1.25),
        [
            records.StepRecord(
                "rt",
                0,
                2.5,
                0.1,
                1e-3,
                0.5,
                val_loss=2.75,
                data_wait_s=1e-4,
                **{name: 0.5 for name in records.ROUTER_COLUMNS},
            )
        ],  # fmt: skip
    )
    text = json.dumps(records.outcome_to_json(outcome))
    back = records.outcome_from_json(json.loads(text))
    assert json.dumps(records.outcome_to_json(back)) == text  # NaN != NaN, so compare as text
    assert back.record.final_loss == 1.25 and back.steps == outcome.steps


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "a" / "file.json"
    records.write_json_atomic({"v": 1}, target)
    with pytest.raises(RuntimeError), records.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed midway")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]  # no temporary left


def test_config_key_ignores_run_id_seed_and_steps():
    a = make_run_record("a", seed=1, steps=6)
    b = make_run_record("b", seed=2, steps=60)
    c = make_run_record("c", batch=16)
    key = records.config_key
    rows = [dataclasses.asdict(r) for r in (a, b, c)]
    assert key(rows[0]) == key(rows[1]) != key(rows[2])


def test_null_tied_in_old_settings_means_the_default_of_that_era(tmp_path):
    # The committed CI baseline was written before the ``tied`` column: settings hold
    # ``"tied": null``, meaning the preset default (tied, untied under muP).
    for mup in (False, True):
        old = make_run_record(
            f"v1{mup}", mup=mup, tied=None, settings_json=json.dumps({"tied": None})
        )
        assert records.config_of(dataclasses.asdict(old))["tied"] is (not mup)


def test_committed_ci_baseline_pairs_with_every_ci_sweep_run():
    # What ``.ci/run`` does: a fresh sweep of sweeps/ci.toml checked against the baseline.
    from pathlib import Path

    from scaling.sharding import default_mesh_shape
    from scaling.spec import load_sweep_spec

    root = Path(__file__).resolve().parents[1]
    baseline = check.load_baseline(root / "sweeps" / "baselines" / "ci-cpu.parquet")
    baseline_keys = {records.config_key(row) for _, row in baseline.iterrows()}
    spec = load_sweep_spec(str(root / "sweeps" / "ci.toml"))
    fresh_keys = set()
    for i, settings in enumerate(spec.grid()):
        row = dataclasses.asdict(records.base_record(settings, f"r{i}"))
        rows, cols = default_mesh_shape(row["mode"], 4)  # the sweep's 4 simulated devices
        fresh_keys.add(records.config_key({**row, "mesh": f"{rows}x{cols}"}))
    assert fresh_keys and fresh_keys <= baseline_keys


def test_version_3_records_without_moe_columns_read_as_dense(tmp_path):
    """Schema 4 added the mixture-of-experts columns; a version-3 file lacks them and reads
    with NaN/empty there, next to a version-4 MoE row with its router statistics."""
    old = dataclasses.asdict(make_run_record("v3"))
    for column in ("n_experts", "experts_per_token", "n_params_active", *records.ROUTER_COLUMNS):
        del old[column]
    old["schema_version"] = 3
    (tmp_path / "runs").mkdir()
    pd.DataFrame([old]).to_parquet(tmp_path / "runs" / "v3.parquet")
    moe_row = make_run_record("v4", size="tiny-moe", n_experts=8, experts_per_token=2,
                              n_params_active=1_119_360, expert_load_min=0.1,
                              dropped_fraction=0.0)  # fmt: skip
    write_runs(tmp_path, [moe_row])
    runs = records.load_runs(tmp_path).set_index("run_id")
    assert runs.loc["v4", "n_experts"] == 8 and runs.loc["v4", "expert_load_min"] == 0.1
    assert pd.isna(runs.loc["v3", "n_experts"]) and pd.isna(runs.loc["v3", "expert_load_min"])
    assert records.SCHEMA_VERSION == 4
