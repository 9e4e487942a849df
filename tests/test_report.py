"""`scaling report`: figures plot exactly the record, the fit recovers a known law, the pages
reference only files that exist, bad folders exit 2. Synthetic records, no jax, no training."""

from __future__ import annotations

import html.parser
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scaling import records
from scaling import report as rp
from scaling.cli.main import app

runner = CliRunner()
FLOOR = 1.2425
SIZES = {"tiny": (128, 1.1e6, 2.0e9), "10m": (256, 1.0e7, 1.6e10), "30m": (384, 3.0e7, 5.0e10)}
LAW = {"E": 1.9, "A": 3.0e3, "alpha": 0.3}  # final loss = E + A·C^-α


def _law(compute: float) -> float:
    return LAW["E"] + LAW["A"] * compute ** (-LAW["alpha"])


def _run(run_id: str, size: str, mode: str, **kw) -> records.RunRecord:
    d_model, n_params, flops = SIZES[size]
    steps = kw.pop("steps", 6)
    base = dict(
        run_id=run_id,
        sweep="test",
        size=size,
        family="llama",
        mode=mode,
        mesh={"dp": "4x1", "fsdp_tp": "2x2", "none": "1x1"}[mode],
        n_devices=4,
        n_processes=1,
        mup=False,
        batch=8,
        seq=32,
        dtype="float32",
        remat="none",
        steps=steps,
        timing_warmup_steps=1,
        lr=3e-3,
        seed=0,
        data="synthetic",
        d_model=d_model,
        n_layers=4,
        n_heads=8,
        status="ok",
        n_params=int(n_params),
        model_flops_per_step=flops,
        entropy_floor_nats=FLOOR,
        final_loss=_law(steps * flops),
        peak_source="unit-test peak 1e12",
        peak_flops_per_device=1e12,
        device_kind="cpu",
        platform="cpu",
        jax_version="0.0.test",
        flax_version="0.0.flax",
        git_sha="abc123",
        hostname="testhost",
        started_at="2025-01-01T00:00:00+00:00",
    )
    base.update(kw)
    return records.RunRecord(**base)


def _steps(run: records.RunRecord) -> list[records.StepRecord]:
    n = run.steps
    losses = np.linspace(7.5, run.final_loss, n)
    return [
        records.StepRecord(run.run_id, i, float(losses[i]), 0.1 + 0.01 * i, 1e-3, 1.0)
        for i in range(n)
    ]


def _write(out: Path, runs: list[records.RunRecord]) -> None:
    for run in runs:
        steps = _steps(run) if run.status == "ok" else []
        records.write_outcome(out, records.RunOutcome(run, steps))


def _main_runs(scale: float = 1.0, prefix: str = "r") -> list[records.RunRecord]:
    runs, i = [], 0
    for size in SIZES:
        for mode in ("dp", "fsdp_tp"):
            for steps in (4, 12):
                i += 1
                runs.append(
                    _run(
                        f"{prefix}{i:02d}",
                        size,
                        mode,
                        steps=steps,
                        tokens_per_s=scale * (1000.0 + 37 * i),
                        mfu=0.1 + 0.02 * i,
                        step_time_s_median=0.05 * i,
                        predicted_step_s=0.02 * i,
                        predicted_step_s_upper=0.025 * i,
                        compile_s=2.0 + i,
                        peak_memory_bytes=2**20 * (10.0 + 3 * i),
                        est_memory_bytes=2**20 * (9.0 + 3 * i),
                        peak_memory_source="xla_memory_analysis",
                    )
                )
    runs.append(
        _run(
            "fail01",
            "30m",
            "none",
            status="oom",
            error="RESOURCE_EXHAUSTED: out of memory while allocating 12 GiB",
        )
    )
    return runs


def _mup_runs() -> list[records.RunRecord]:
    runs = []
    for mup in (False, True):
        for size in ("tiny", "10m"):
            width = SIZES[size][0]
            best = -8 if mup else (-8 - (width // 128))  # SP optimum shifts with width
            for k, log2_lr in enumerate((-10, -9, -8, -7, -6)):
                loss = 3.0 + 0.05 * (log2_lr - best) ** 2 - 0.1 * (width // 128)
                runs.append(
                    _run(
                        f"m{int(mup)}{size}{k}",
                        size,
                        "none",
                        mup=mup,
                        lr=2.0**log2_lr,
                        final_loss=loss,
                        steps=3,
                    )
                )
    return runs


def _coord_rows() -> pd.DataFrame:
    rows = []
    for mup in (False, True):
        for width in (64, 128, 256, 512):
            for step in range(3):
                for site in ("embed", "block_0", "block_1", "block_2", "logits"):
                    growth = 1.0 if mup else (width / 64) ** (0.5 * step)
                    rows.append(
                        {
                            "mup": mup,
                            "width": width,
                            "step": step,
                            "site": site,
                            "rms": 0.5 * (1 + step) * growth * (2 if site == "logits" else 1),
                        }
                    )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    main, mup, base = root / "main", root / "mup", root / "base"
    _write(main, _main_runs())
    _write(mup, _mup_runs())
    _coord_rows().to_parquet(mup / "coord_check.parquet")
    _write(base, _main_runs(scale=0.5, prefix="b"))  # other run ids, half the throughput
    result = rp.build_report([main, mup], out=root / "out", baseline=base)
    runs = records.load_runs(main, mup)
    steps = records.load_steps(main, mup)
    return result, runs, steps, root


def _csv(result, name: str) -> pd.DataFrame:
    path = result.out / f"{name}.csv"
    assert path.is_file() and (result.out / f"{name}.png").is_file()
    return pd.read_csv(path)


def _figure(result, name: str):
    return next(f for f in result.figures if f.name == name)


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
        _csv(result, name)


def test_loss_curves_plot_the_steps(built):
    result, runs, steps, _ = built
    data = _csv(result, "loss_vs_step")
    ok_steps = steps[steps["run_id"].isin(runs.loc[runs["status"] == "ok", "run_id"])]
    ok_steps = ok_steps.astype({"step": "int64", "loss": float})
    merged = data.merge(ok_steps, on=["run_id", "step"], suffixes=("", "_rec"))
    assert len(merged) == len(data) == len(ok_steps)
    np.testing.assert_allclose(merged["loss"], merged["loss_rec"])
    # the artists: one line per run, its points are the recorded steps, colour per mode
    ax = _figure(result, "loss_vs_step").figure.axes[0]
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

    compute = _csv(result, "loss_vs_compute").merge(
        runs[["run_id", "model_flops_per_step"]], on="run_id", suffixes=("", "_rec")
    )
    np.testing.assert_allclose(
        compute["cumulative_model_flops"], compute["step"] * compute["model_flops_per_step_rec"]
    )
    assert (compute["step"] > 0).all()  # log axis: zero compute left out


def test_throughput_and_compile_bars_are_the_record(built):
    result, runs, *_ = built
    ok = runs[(runs["status"] == "ok") & (runs["run_id"].str.startswith("r"))]
    data = _csv(result, "throughput")
    main = data[data["size"].isin(SIZES) & data["mode"].isin(["dp", "fsdp_tp"])]
    expected = ok.groupby(["size", "mode"])[["mfu", "tokens_per_s"]].median()
    got = main.groupby(["size", "mode"])[["mfu", "tokens_per_s"]].first()
    pd.testing.assert_frame_equal(got.sort_index(), expected.sort_index(), check_names=False)
    # the bars: heights in CSV order, MFU in percent; colour per mode
    fig = _figure(result, "throughput").figure
    mfu_bars = [p for p in fig.axes[0].patches if p.get_height() > 0]
    np.testing.assert_allclose([p.get_height() for p in mfu_bars], data["mfu"] * 100)
    from matplotlib.colors import to_hex

    assert [to_hex(p.get_facecolor()) for p in mfu_bars] == [
        rp.MODE_COLORS[m] for m in data["mode"]
    ]
    tps_bars = [p for p in fig.axes[1].patches if p.get_height() > 0]
    np.testing.assert_allclose([p.get_height() for p in tps_bars], data["tokens_per_s"])

    compile_ = _csv(result, "compile_time")
    compile_ = compile_[compile_["mode"].isin(["dp", "fsdp_tp"])]
    got = compile_.groupby(["size", "mode"])["compile_s"].first()
    pd.testing.assert_series_equal(
        got.sort_index(), ok.groupby(["size", "mode"])["compile_s"].median().sort_index()
    )
    assert (compile_["n_runs"] == 2).all()


def test_measured_vs_predicted_scatter(built):
    result, runs, *_ = built
    ok = runs[runs["status"] == "ok"].set_index("run_id")
    step = _csv(result, "step_time_vs_roofline").set_index("run_id")
    step = step.join(ok[["step_time_s_median", "predicted_step_s"]].add_suffix("_rec"))
    np.testing.assert_allclose(step["step_time_s_median"], step["step_time_s_median_rec"])
    np.testing.assert_allclose(
        step["ratio"], step["step_time_s_median_rec"] / step["predicted_step_s_rec"]
    )
    mem = _csv(result, "memory_vs_estimate").set_index("run_id")
    mem = mem.join(ok[["peak_memory_bytes", "est_memory_bytes"]].add_suffix("_rec"))
    np.testing.assert_allclose(mem["peak_memory_bytes"], mem["peak_memory_bytes_rec"])
    np.testing.assert_allclose(mem["peak_memory_mib"], mem["peak_memory_bytes_rec"] / 2**20)
    np.testing.assert_allclose(
        mem["ratio"], mem["peak_memory_bytes_rec"] / mem["est_memory_bytes_rec"]
    )
    # the artists: one marker per run at (predicted, measured)
    ax = _figure(result, "step_time_vs_roofline").figure.axes[0]
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


def test_scaling_law_figure_and_fit(built):
    result, runs, *_ = built
    data = _csv(result, "scaling_law")
    pts = data[data["series"] == "run"]
    assert len(pts) == (runs["status"] == "ok").sum()
    np.testing.assert_allclose(pts["compute_flops"], pts["steps"] * pts["model_flops_per_step"])
    fitted = data[data["series"] == "fit input"]
    # main record: 6 distinct compute values lie exactly on the law; the muP runs add
    # compute points 3·flops with their own losses, so fit only the main record here
    main = rp.build_report([built[3] / "main"], out=built[3] / "out_main", formats=["md"])
    assert main.fit is not None and main.fit.n_points == 6
    assert pytest.approx(LAW["E"], rel=1e-3) == main.fit.E
    assert main.fit.alpha == pytest.approx(LAW["alpha"], rel=1e-3)
    assert len(fitted) == len(np.unique(fitted["compute_flops"]))
    assert "E (nats)" in (main.out / "report.md").read_text()


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


def test_fit_needs_three_compute_points(tmp_path):
    with pytest.raises(ValueError, match="≥ 3 distinct"):
        rp.fit_scaling_law([1e9, 1e9, 1e10], [3.0, 3.1, 2.5])
    _write(tmp_path / "rec", [_run("a", "tiny", "dp", steps=4), _run("b", "10m", "dp", steps=4)])
    result = rp.build_report([tmp_path / "rec"], out=tmp_path / "out")
    assert result.fit is None
    assert any("needs ≥ 3" in n for n in result.notes)
    assert "needs ≥ 3" in (tmp_path / "out" / "report.md").read_text()


def test_mup_and_coord_check_figures(built):
    result, runs, *_ = built
    data = _csv(result, "mup_lr")
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
    fig = _figure(result, "mup_lr").figure
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    assert set(lines) == {"sp/128", "sp/256", "mup/128", "mup/256"}
    curve = data[(data["mup"]) & (data["width"] == 256)].sort_values("lr")
    np.testing.assert_allclose(lines["mup/256"].get_ydata(), curve["final_loss"])

    coord = _csv(result, "coord_check")
    truth = _coord_rows()
    assert set(coord["site"]) == {"embed", "block_0", "block_2", "logits"}  # 5 sites → 4 shown
    merged = coord.merge(truth, on=["mup", "width", "step", "site"], suffixes=("", "_rec"))
    assert len(merged) == len(coord) == len(truth[truth["site"] != "block_1"])
    np.testing.assert_allclose(merged["rms"], merged["rms_rec"])
    coord_fig = _figure(result, "coord_check").figure
    assert coord_fig.axes[0].get_xscale() == "log" and coord_fig.axes[0].get_yscale() == "log"


def test_coord_check_figure_beside_its_parquet(tmp_path):
    _coord_rows().to_parquet(tmp_path / "coord_check.parquet")
    png = rp.coord_check_figure(tmp_path)
    assert png == tmp_path / "coord_check.png" and png.is_file()
    assert (tmp_path / "coord_check.csv").is_file()


def test_baseline_ratios_match_by_configuration(built):
    result, *_ = built
    data = _csv(result, "baseline_ratio")
    assert len(data) == 6  # 3 sizes × 2 modes; steps and run_id differ, config matches
    np.testing.assert_allclose(data["tokens_per_s_ratio"], 2.0)
    np.testing.assert_allclose(data["mfu_ratio"], 1.0)
    fig = _figure(result, "baseline_ratio").figure
    np.testing.assert_allclose([p.get_height() for p in fig.axes[0].patches], 2.0)


class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("src", "href") and value is not None:
                self.refs.append(value)
            if key == "id":
                self.ids.add(value)


def test_html_references_only_existing_files(built):
    result, *_ = built
    parser = _Refs()
    parser.feed((result.out / "index.html").read_text())
    images = [r for r in parser.refs if r.endswith(".png")]
    assert len(images) == len(result.figures)
    for ref in parser.refs:
        if ref.startswith("#"):
            assert ref[1:] in parser.ids
        else:
            assert "://" not in ref and not ref.startswith("/")
            assert (result.out / ref).is_file(), ref


def test_markdown_has_the_summary_rows_failures_and_environment(built):
    result, runs, *_ = built
    md = (result.out / "report.md").read_text()
    lines = md.splitlines()
    for r in runs.itertuples():
        source = "mup" if r.run_id.startswith("m") else "main"
        prefix = f"| {source} | {r.size} | {r.mode} | {r.mesh} | {'on' if r.mup else 'off'} |"
        assert any(line.startswith(prefix) and f"| {r.status} |" in line for line in lines), r
    row = next(line for line in lines if line.startswith("| main | tiny | dp | 4x1 | off |"))
    rec = runs[runs["run_id"] == "r01"].iloc[0]
    assert f"{rec.final_loss:.4f}" in row and f"{rec.tokens_per_s:,.0f}" in row
    assert "RESOURCE_EXHAUSTED: out of memory" in md
    assert "0.0.test" in md and "testhost" in md and "unit-test peak 1e12" in md
    for f in result.figures:
        assert f"]({f.name}.png)" in md and f"]({f.name}.csv)" in md


def _invoke(*args):
    return runner.invoke(app, ["report", *map(str, args)])


def test_cli_writes_the_report_to_the_default_folder(tmp_path, monkeypatch):
    _write(tmp_path / "mysweep", [_run("a", "tiny", "dp", tokens_per_s=10.0, mfu=0.1)])
    monkeypatch.chdir(tmp_path)
    result = _invoke("mysweep", "--format", "md")
    assert result.exit_code == 0, result.output
    out = tmp_path / "reports" / "mysweep"
    assert (out / "report.md").is_file() and not (out / "index.html").exists()
    assert (out / "loss_vs_step.png").is_file() and (out / "loss_vs_step.csv").is_file()


def test_cli_bad_folders_exit_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty_runs" / "runs").mkdir(parents=True)
    (tmp_path / "foreign" / "runs").mkdir(parents=True)
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "foreign" / "runs" / "a.parquet")
    (tmp_path / "garbage" / "runs").mkdir(parents=True)
    (tmp_path / "garbage" / "runs" / "a.parquet").write_text("not parquet")
    _write(tmp_path / "good", [_run("a", "tiny", "dp")])
    cases = {
        "empty": "holds no sweep record",
        "empty_runs": "no runs recorded",
        "foreign": "not a scaling sweep record",
        "garbage": "not a readable sweep record",
        "missing": "does not exist",
    }
    for name, message in cases.items():
        result = _invoke(tmp_path / name, "--out", tmp_path / "o")
        assert result.exit_code == 2, (name, result.output)
        text = " ".join(result.output.split())
        assert message in text and "Traceback" not in result.output, (name, result.output)
    result = _invoke(tmp_path / "good", "--baseline", tmp_path / "empty", "--out", tmp_path / "o")
    assert result.exit_code == 2
    result = _invoke(tmp_path / "good", "--format", "pdf", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "valid: html, md" in result.output


def test_report_module_does_not_import_jax():
    code = "import sys, scaling.report, scaling.cli.report; assert 'jax' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_style_maps_are_fixed_per_mode_and_size():
    style = rp.Style.of(["fsdp_tp", "dp", "custom"], ["10m", "tiny", "weird"])
    assert style.modes == ["dp", "fsdp_tp", "custom"]
    assert style.color("dp") == rp.MODE_COLORS["dp"] and style.marker("10m") == "s"
    assert style.color("custom") not in rp.MODE_COLORS.values()
    assert style.marker("weird") not in rp.SIZE_MARKERS.values()
    runs = pd.DataFrame(
        {"size": ["tiny", "tiny", "10m", "tiny"], "mup": [False, False, False, True]}
    )
    assert list(rp.Style.emphasis(runs)) == [1.0, 0.0, 1.0, 1.0]  # first drawn widest
