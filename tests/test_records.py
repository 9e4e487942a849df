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
        [records.StepRecord("rt", 0, 2.5, 0.1, 1e-3, 0.5, val_loss=2.75, data_wait_s=1e-4)],
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
