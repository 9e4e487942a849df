"""Each figure plots exactly the record: its CSV against the stored runs and steps, its
artists against its CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from report_records import FLOOR, SIZES, coord_rows, figure_named, written_csv

from scaling import report as rp


def test_every_figure_is_written_with_its_csv(built):
    result, *_ = built
    names = {f.name for f in result.figures}
    assert names == {
        "loss_vs_step",
        "loss_vs_compute",
        "throughput",
        "step_time_vs_roofline",
        "memory_vs_estimate",
        "compile_time",
        "scaling_law",
        "mup_lr",
        "coord_check",
        "baseline_ratio",
    }
    for name in names:
        written_csv(result, name)


def test_loss_curves_plot_the_steps(built):
    result, runs, steps, _ = built
    data = written_csv(result, "loss_vs_step")
    ok_steps = steps[steps["run_id"].isin(runs.loc[runs["status"] == "ok", "run_id"])]
    ok_steps = ok_steps.astype({"step": "int64", "loss": float})
    merged = data.merge(ok_steps, on=["run_id", "step"], suffixes=("", "_rec"))
    assert len(merged) == len(data) == len(ok_steps)
    np.testing.assert_allclose(merged["loss"], merged["loss_rec"])
    # the artists: one line per run, its points are the recorded steps, colour per mode
    ax = figure_named(result, "loss_vs_step").figure.axes[0]
    lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
    assert len(lines) == runs["status"].eq("ok").sum()
    for gid, line in lines.items():
        run_id = gid.split("/", 1)[1]
        rec = ok_steps[ok_steps["run_id"] == run_id].sort_values("step")
        np.testing.assert_array_equal(line.get_xdata(), rec["step"])
        np.testing.assert_allclose(line.get_ydata(), rec["loss"])
        mode = runs.loc[runs["run_id"] == run_id, "mode"].iloc[0]
        assert line.get_color() == rp.MODE_COLORS[mode]
    floor = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert floor and np.allclose(floor[0].get_ydata(), FLOOR)

    compute = written_csv(result, "loss_vs_compute").merge(
        runs[["run_id", "model_flops_per_step"]], on="run_id", suffixes=("", "_rec")
    )
    np.testing.assert_allclose(
        compute["cumulative_model_flops"], compute["step"] * compute["model_flops_per_step_rec"]
    )
    assert (compute["step"] > 0).all()  # log axis: zero compute left out


def test_throughput_and_compile_bars_are_the_record(built):
    result, runs, *_ = built
    ok = runs[(runs["status"] == "ok") & (runs["run_id"].str.startswith("r"))]
    data = written_csv(result, "throughput")
    main = data[data["size"].isin(SIZES) & data["mode"].isin(["dp", "fsdp_tp"])]
    expected = ok.groupby(["size", "mode"])[["mfu", "tokens_per_s"]].median()
    got = main.groupby(["size", "mode"])[["mfu", "tokens_per_s"]].first()
    pd.testing.assert_frame_equal(got.sort_index(), expected.sort_index(), check_names=False)
    # the bars: heights in CSV order, MFU in percent; colour per mode
    fig = figure_named(result, "throughput").figure
    mfu_bars = [p for p in fig.axes[0].patches if p.get_height() > 0]
    np.testing.assert_allclose([p.get_height() for p in mfu_bars], data["mfu"] * 100)
    assert [to_hex(p.get_facecolor()) for p in mfu_bars] == [
        rp.MODE_COLORS[m] for m in data["mode"]
    ]
    tps_bars = [p for p in fig.axes[1].patches if p.get_height() > 0]
    np.testing.assert_allclose([p.get_height() for p in tps_bars], data["tokens_per_s"])

    compile_ = written_csv(result, "compile_time")
    compile_ = compile_[compile_["mode"].isin(["dp", "fsdp_tp"])]
    got = compile_.groupby(["size", "mode"])["compile_s"].first()
    pd.testing.assert_series_equal(
        got.sort_index(), ok.groupby(["size", "mode"])["compile_s"].median().sort_index()
    )
    assert (compile_["n_runs"] == 2).all()


def test_measured_vs_predicted_scatter(built):
    result, runs, *_ = built
    ok = runs[runs["status"] == "ok"].set_index("run_id")
    step = written_csv(result, "step_time_vs_roofline").set_index("run_id")
    step = step.join(ok[["step_time_s_median", "predicted_step_s"]].add_suffix("_rec"))
    np.testing.assert_allclose(step["step_time_s_median"], step["step_time_s_median_rec"])
    np.testing.assert_allclose(
        step["ratio"], step["step_time_s_median_rec"] / step["predicted_step_s_rec"]
    )
    mem = written_csv(result, "memory_vs_estimate").set_index("run_id")
    mem = mem.join(ok[["peak_memory_bytes", "est_memory_bytes"]].add_suffix("_rec"))
    np.testing.assert_allclose(mem["peak_memory_bytes"], mem["peak_memory_bytes_rec"])
    np.testing.assert_allclose(mem["peak_memory_mib"], mem["peak_memory_bytes_rec"] / 2**20)
    np.testing.assert_allclose(
        mem["ratio"], mem["peak_memory_bytes_rec"] / mem["est_memory_bytes_rec"]
    )
    # the artists: one marker per run at (predicted, measured)
    ax = figure_named(result, "step_time_vs_roofline").figure.axes[0]
    points = {
        ln.get_gid().split("/", 1)[1]: (ln.get_xdata()[0], ln.get_ydata()[0])
        for ln in ax.get_lines()
        if ln.get_gid()
    }
    assert set(points) == set(step.index)
    for run_id, (x, y) in points.items():
        assert (x, y) == pytest.approx(
            (ok.loc[run_id, "predicted_step_s"], ok.loc[run_id, "step_time_s_median"])
        )


def test_scaling_law_figure_plots_each_run_and_the_frontier(built):
    result, runs, *_ = built
    data = written_csv(result, "scaling_law")
    pts = data[data["series"] == "run"]
    assert len(pts) == (runs["status"] == "ok").sum()
    np.testing.assert_allclose(pts["compute_flops"], pts["steps"] * pts["model_flops_per_step"])
    fitted = data[data["series"] == "fit input"]
    assert len(fitted) == len(np.unique(fitted["compute_flops"]))


def test_mup_and_coord_check_figures(built):
    result, runs, *_ = built
    data = written_csv(result, "mup_lr")
    mup_runs = runs[runs["run_id"].str.startswith("m")]
    merged = data.merge(
        mup_runs.rename(columns={"d_model": "width"}),
        on=["mup", "width", "lr"],
        suffixes=("", "_rec"),
    )
    assert len(merged) == len(mup_runs) == len(data)
    np.testing.assert_allclose(merged["final_loss"], merged["final_loss_rec"])
    np.testing.assert_allclose(merged["log2_lr"], np.log2(merged["lr"]))
    best = data[data["is_optimum"]].set_index(["mup", "width"])["log2_lr"]
    assert best[(True, 128)] == best[(True, 256)] == -8  # muP: optimum transfers
    assert best[(False, 128)] == -9 and best[(False, 256)] == -10
    # the artists: one line per (parametrization, width)
    fig = figure_named(result, "mup_lr").figure
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    assert set(lines) == {"sp/128", "sp/256", "mup/128", "mup/256"}
    curve = data[(data["mup"]) & (data["width"] == 256)].sort_values("lr")
    np.testing.assert_allclose(lines["mup/256"].get_ydata(), curve["final_loss"])

    coord = written_csv(result, "coord_check")
    truth = coord_rows()
    assert set(coord["site"]) == {"embed", "block_0", "block_2", "logits"}  # 5 sites → 4 shown
    merged = coord.merge(truth, on=["mup", "width", "step", "site"], suffixes=("", "_rec"))
    assert len(merged) == len(coord) == len(truth[truth["site"] != "block_1"])
    np.testing.assert_allclose(merged["rms"], merged["rms_rec"])
    coord_fig = figure_named(result, "coord_check").figure
    assert coord_fig.axes[0].get_xscale() == "log" and coord_fig.axes[0].get_yscale() == "log"


def test_coord_check_figure_beside_its_parquet(tmp_path):
    coord_rows().to_parquet(tmp_path / "coord_check.parquet")
    png = rp.coord_check_figure(tmp_path)
    assert png == tmp_path / "coord_check.png" and png.is_file()
    assert (tmp_path / "coord_check.csv").is_file()
