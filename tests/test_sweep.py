import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from scaling.records import RUN_COLUMNS, load_runs, load_steps
from scaling.spec import SweepSpec, load_sweep_spec
from scaling.sweep import parse_shard, plan_sweep, run_id_of, run_sweep

SWEEPS = sorted((Path(__file__).parent.parent / "sweeps").glob("*.toml"))
SMALL = {"steps": 3, "batch": 8, "seq": 32, "timing_warmup_steps": 1}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_spec_parses_into_valid_run_configs(path):
    from scaling.spec import run_config_from_settings

    spec = load_sweep_spec(str(path))
    grid = spec.grid()
    assert grid, path
    for settings in grid:
        run_config_from_settings(settings)


def test_bad_spec_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[axes]\nsize = ["tiny"]\ncolour = ["red"]\n')
    with pytest.raises(ValueError, match="unknown sweep axis 'colour'"):
        load_sweep_spec(str(bad))
    bad.write_text('name = "x"\n[axes]\nsize = ["huge"]\n')
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        load_sweep_spec(str(bad))
    with pytest.raises(ValueError, match="not found"):
        load_sweep_spec(str(tmp_path / "missing.toml"))


def test_run_id_is_stable_and_ignores_the_sweep_name():
    spec = SweepSpec("a", {"size": ["tiny"], "mode": ["dp", "tp"]}, SMALL)
    ids = [run_id_of(s) for s in spec.grid()]
    assert len(set(ids)) == 2
    other = SweepSpec("b", {"size": ["tiny"], "mode": ["dp", "tp"]}, SMALL)
    assert ids == [run_id_of(s) for s in other.grid()]
    changed = SweepSpec("a", {"size": ["tiny"], "mode": ["dp", "tp"]}, {**SMALL, "seq": 16})
    assert not set(ids) & {run_id_of(s) for s in changed.grid()}


def test_points_with_token_budgets_layers_width_and_mesh_axes(tmp_path):
    from scaling.spec import run_config_from_settings

    spec_file = tmp_path / "iso.toml"
    spec_file.write_text(
        'name = "iso"\n[axes]\nmesh = ["2x1", "1x2"]\nseed = [0, 1]\n'
        '[fixed]\nmode = "fsdp_tp"\nbatch = 4\nseq = 32\n'
        '[[points]]\nsize = "tiny"\nlayers = 2\nwidth = 64\ntokens = 1000\n'
        '[[points]]\nsize = "tiny"\ntokens = 12800\n'
    )
    grid = load_sweep_spec(str(spec_file)).grid()
    assert len(grid) == 2 * 2 * 2
    runs = [run_config_from_settings(s) for s in grid]
    # tokens / (batch · seq) rounded: 1000 / 128 → 8; 12800 / 128 = 100
    assert [r.steps for r in runs] == [8] * 4 + [100] * 4
    assert [r.model.n_layers for r in runs] == [2] * 4 + [4] * 4
    assert [r.model.d_model for r in runs] == [64] * 4 + [128] * 4
    assert [r.mesh for r in runs[:4]] == [(2, 1), (2, 1), (1, 2), (1, 2)]
    assert [r.seed for r in runs[:4]] == [0, 1, 0, 1]
    # points without a token budget keep the run ids of the plain grid
    plain = SweepSpec("a", {"size": ["tiny"]}, SMALL).grid()
    pointed = SweepSpec("a", {}, SMALL, points=[{"size": "tiny"}]).grid()
    assert [run_id_of(s) for s in plain] == [run_id_of(s) for s in pointed]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"axes": {"steps": [10]}, "points": [{"size": "tiny", "tokens": 10}]}, "not both"),
        ({"points": [{"size": "tiny", "colour": 1}]}, "unknown sweep point setting 'colour'"),
        ({"points": [{"tokens": 10}]}, "needs a 'size' axis"),
        ({"axes": {"size": ["tiny"]}, "fixed": {"tokens": -5}}, "tokens must be a positive"),
    ],
)
def test_bad_points_and_token_budgets_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        SweepSpec(
            "x", spec.get("axes", {}), spec.get("fixed", {}), "", spec.get("points", [])
        ).grid()


def test_shards_cover_the_grid_exactly_once(tmp_path):
    spec = SweepSpec("s", {"size": ["tiny", "10m", "30m"], "mode": ["dp", "fsdp", "tp"]}, SMALL)
    first = [r.index for r in plan_sweep(spec, tmp_path, parse_shard("0/2"))]
    second = [r.index for r in plan_sweep(spec, tmp_path, parse_shard("1/2"))]
    assert sorted(first + second) == list(range(9))
    assert not set(first) & set(second)
    for bad in ("2/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="bad shard"):
            parse_shard(bad)


def test_smoke_sweep_records_the_schema_and_resumes_without_rerunning(tmp_path):
    spec = SweepSpec("smoke", {"size": ["tiny", "10m"], "mode": ["dp", "fsdp_tp"]}, SMALL)
    planned = run_sweep(spec, tmp_path)
    runs, steps = load_runs(tmp_path), load_steps(tmp_path)
    assert list(runs.columns) == RUN_COLUMNS
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}, runs[["status", "error"]]
    assert ((runs["mfu"] > 0) & (runs["mfu"] <= 1)).all()
    assert (runs["hfu"] >= runs["mfu"]).all()
    assert set(runs["mesh"]) == {"4x1", "2x2"}  # 4 simulated devices by default
    assert (runs["compile_s"] > 0).all() and (runs["step_time_s_median"] > 0).all()
    assert runs["peak_source"].str.contains("matmul probe").all()
    # XLA's count (unrolled lowering) includes elementwise work: a little above 6·N·T + attn
    ratio = runs["xla_flops_per_step_global"] / runs["hardware_flops_per_step"]
    assert ratio.between(1.0, 1.15).all(), ratio
    for run_id in runs["run_id"]:
        losses = steps[steps["run_id"] == run_id].sort_values("step")
        assert list(losses["step"]) == [0, 1, 2]
        final = runs.loc[runs["run_id"] == run_id, "final_loss"].item()
        assert losses["loss"].iloc[-1] == pytest.approx(final)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    again = run_sweep(spec, tmp_path)
    assert all(r.skip for r in again) and len(again) == len(planned)
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path):
    spec = SweepSpec(
        "fail",
        {"size": ["tiny"], "mode": ["tp", "fsdp_tp"], "lr": [3e-3, 1e9]},
        {**SMALL, "mesh": "4x2", "steps": 6, "lr_warmup_steps": 0},
    )
    run_sweep(spec, tmp_path)
    runs = load_runs(tmp_path).set_index(["mode", "lr"])
    assert runs.loc[("tp", 3e-3), "status"] == "error"
    assert "mode tp needs data=1" in runs.loc[("tp", 3e-3), "error"]
    assert runs.loc[("fsdp_tp", 3e-3), "status"] == "ok"
    assert runs.loc[("fsdp_tp", 1e9), "status"] == "diverged"
    # a failed run is retried by the next sweep; an ok one is not
    again = {r.settings["mode"] + str(r.settings["lr"]): r.skip for r in plan_sweep(spec, tmp_path)}
    assert again == {
        "tp0.003": False,
        "tp1000000000.0": False,
        "fsdp_tp0.003": True,
        "fsdp_tp1000000000.0": False,
    }


def test_sigkill_mid_sweep_then_rerun_leaves_one_readable_row_per_run(tmp_path):
    out = tmp_path / "rec"
    args = [
        sys.executable,
        "-m",
        "scaling",
        "sweep",
        "dp,fsdp,tp",
        "--sizes",
        "tiny",
        "--steps",
        "3",
        "--seq",
        "32",
        "--out",
        str(out),
        "--json",
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "runs").glob("*.parquet"))) < 1:
        time.sleep(0.2)
    time.sleep(2.0)  # the second run is now in flight
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= len(list((out / "runs").glob("*.parquet"))) < 3
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    files = sorted((out / "runs").glob("*.parquet"))  # temporaries never end in .parquet
    frames = [pd.read_parquet(f) for f in files]
    runs = pd.concat(frames)
    assert len(runs) == 3 and runs["run_id"].is_unique
    assert set(runs["mode"]) == {"dp", "fsdp", "tp"} and set(runs["status"]) == {"ok"}


def test_sweep_with_two_local_processes_records_one_row_like_one_process(tmp_path):
    """Each run spans 2 processes × 4 CPU devices (jax.distributed on 127.0.0.1); only
    process 0 records, and the losses equal a single 4-device process's."""
    from scaling.sweep import Distributed

    spec = SweepSpec(
        "mp", {"size": ["tiny"], "mode": ["fsdp_tp"]}, {**SMALL, "devices": 4, "timeout_s": 240}
    )
    run_sweep(spec, tmp_path / "two", distributed=Distributed(local_processes=2))
    run_sweep(spec, tmp_path / "one")
    two, one = load_runs(tmp_path / "two"), load_runs(tmp_path / "one")
    assert len(two) == 1 and two["status"].item() == "ok", two[["status", "error"]]
    assert (two["n_processes"].item(), two["n_devices"].item()) == (2, 8)
    assert (one["n_processes"].item(), one["n_devices"].item()) == (1, 4)
    steps_two = load_steps(tmp_path / "two").sort_values("step")["loss"].to_numpy()
    steps_one = load_steps(tmp_path / "one").sort_values("step")["loss"].to_numpy()
    assert len(steps_two) == 3
    import numpy as np

    np.testing.assert_allclose(steps_two, steps_one, rtol=1e-5)


def test_mup_knobs_are_sweep_keys_that_reach_the_model():
    from scaling.spec import run_config_from_settings

    spec = SweepSpec(
        "knobs",
        axes={"size": ["tiny"], "mup": [True], "mup_attn_multiplier": [0.5, 2.0]},
        fixed={"mup_base_width": 64, "mup_output_multiplier": 3.0, "mup_zero_readout": True},
    )
    models = [run_config_from_settings(s).model for s in spec.grid()]
    assert [m.mup_attn_multiplier for m in models] == [0.5, 2.0]
    assert {(m.mup_base_width, m.mup_output_multiplier, m.mup_zero_readout) for m in models} == {
        (64, 3.0, True)
    }
    # Absent knobs leave the run id of an existing spec unchanged (no new default settings).
    plain = SweepSpec("x", axes={"size": ["tiny"]}).grid()[0]
    assert not any(k.startswith("mup_") for k in plain)
    with pytest.raises(ValueError, match="unknown sweep setting 'mup_alpha'"):
        SweepSpec("x", axes={"size": ["tiny"]}, fixed={"mup_alpha": 1.0})
