"""The style: fixed colours, markers and line styles for the known modes and presets, a look for
any number of others, and in a single-mode report colour on the axis that varies."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.colors import to_hex
from report_records import figure_named, run, write

from scaling import report as rp
from scaling.presets import PRESETS


def test_style_maps_are_fixed_per_mode_and_size():
    style = rp.Style.of(["fsdp_tp", "dp", "custom"], ["10m", "tiny", "weird"])
    assert style.modes == ["dp", "fsdp_tp", "custom"]
    assert style.color("dp") == rp.MODE_COLORS["dp"] and style.marker("10m") == "s"
    assert style.color("custom") not in rp.MODE_COLORS.values()
    every_preset = rp.Style.of(["dp"], [*PRESETS, "weird"])
    # more presets than markers: markers and line styles cycle at coprime lengths (18, 11), so
    # the pair still tells every size apart
    look = lambda s: (every_preset.marker(s), every_preset.linestyle(s))  # noqa: E731
    assert look("weird") not in {look(s) for s in PRESETS}
    assert len({look(s) for s in PRESETS}) == len(PRESETS)
    runs = pd.DataFrame(
        {"size": ["tiny", "tiny", "10m", "tiny"], "mup": [False, False, False, True]}
    )
    assert list(rp.Style.emphasis(runs)) == [1.0, 0.0, 1.0, 1.0]  # first drawn widest


def test_any_number_of_presets_sizes_and_modes_gets_a_look(tmp_path, monkeypatch):
    for i in range(12, 16):  # a ladder longer than the markers of the original 11 presets
        monkeypatch.setitem(PRESETS, f"preset{i}", PRESETS["tiny"])
    sizes = [*PRESETS, *(f"other{i:02d}" for i in range(30))]
    modes = [f"mode{i:02d}" for i in range(len(sizes))]  # more than any palette
    runs = [
        run(f"r{i:02d}", size, mode, n_params=1e6 * (i + 1), tokens_per_s=100.0 + i, mfu=0.2)
        for i, (size, mode) in enumerate(zip(sizes, modes, strict=True))
    ]
    write(tmp_path / "rec", runs)
    result = rp.build_report([tmp_path / "rec"], out=tmp_path / "out", formats=["md"])
    assert {"loss_vs_step", "throughput", "scaling_law"} <= {f.name for f in result.figures}
    style = rp.Style.of(modes, sizes)
    looks = {(style.marker(s), str(style.linestyle(s))) for s in sizes}
    assert len(looks) == len(sizes)  # marker × line style tells every size apart
    assert all(style.color(m) != "black" for m in modes)  # black: a mode without a colour
    assert style.color(modes[0]) != style.color(modes[1])
    ax = figure_named(result, "loss_vs_step").figure.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_gid()]
    assert len(lines) == len(sizes)


def _one_mode_runs(axis: str) -> tuple[list, list]:
    """Runs of mode "none" that differ only in ``axis``; the value of each."""
    if axis == "d_model":
        values = [64, 128, 256, 512]
        return [run(f"w{v}", "tiny", "none", d_model=v) for v in values], values
    if axis == "lr":
        values = [2.0**-k for k in range(6, 12)]
        return [run(f"lr{i}", "tiny", "none", lr=v) for i, v in enumerate(values)], values
    if axis == "size":
        values = ["tiny", "10m", "30m"]
        return [run(f"s{v}", v, "none") for v in values], values
    values = [False, True]
    return [run(f"mup{int(v)}", "tiny", "none", mup=v) for v in values], values


@pytest.mark.parametrize(
    ("axis", "meaning"),
    [
        ("d_model", "width (d_model)"),
        ("lr", "learning rate"),
        ("size", "size"),  # widths differ too, but only from size to size
        ("mup", "parametrization (SP/muP)"),
    ],
)
def test_one_mode_colour_encodes_the_axis_that_varies(tmp_path, axis, meaning):
    runs, values = _one_mode_runs(axis)
    write(tmp_path / "rec", runs)
    result = rp.build_report([tmp_path / "rec"], out=tmp_path / "out", formats=["md"])
    ax = figure_named(result, "loss_vs_step").figure.axes[0]
    color_of = {
        ln.get_gid().split("/", 1)[1]: to_hex(ln.get_color())
        for ln in ax.get_lines()
        if ln.get_gid()
    }
    assert len(color_of) == len(values)
    assert len(set(color_of.values())) == len(values)  # one colour per value, none grey
    assert rp.MODE_COLORS["none"] not in color_of.values()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == len(values) + 1  # one entry per run, and the entropy floor
    assert f"(colour: {meaning};" in figure_named(result, "loss_vs_step").caption


def test_a_width_sweep_of_many_runs_is_coloured_by_width(tmp_path):
    # the 48-run muP transfer study: one size, 4 widths × 6 LRs × SP/muP, one mode
    widths, lrs = [32, 64, 128, 256], [2.0**-k for k in range(5, 11)]
    runs = [
        run(
            f"t{w}-{i}-{int(mup)}",
            "tiny",
            "none",
            d_model=w,
            lr=lr,
            mup=mup,
            predicted_step_s=1e-3 * w,
            step_time_s_median=2e-3 * w,
        )
        for w in widths
        for i, lr in enumerate(lrs)
        for mup in (False, True)
    ]
    write(tmp_path / "rec", runs)
    result = rp.build_report([tmp_path / "rec"], out=tmp_path / "out", formats=["md"])
    ax = figure_named(result, "loss_vs_step").figure.axes[0]
    width_of = {r.run_id: r.d_model for r in runs}
    colors: dict[int, set] = {}
    for line in (ln for ln in ax.get_lines() if ln.get_gid()):
        width = width_of[line.get_gid().split("/", 1)[1]]
        colors.setdefault(width, set()).add(to_hex(line.get_color()))
    assert all(len(c) == 1 for c in colors.values())  # one colour per width
    assert len(set.union(*colors.values())) == len(widths)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [f"d_model {w}" for w in widths] == [t for t in legend if t.startswith("d_model")]
    assert "colour: width (d_model)" in figure_named(result, "loss_vs_step").caption
    # the scatter of measured against predicted colours its points the same way
    ax = figure_named(result, "step_time_vs_roofline").figure.axes[0]
    for point in (ln for ln in ax.get_lines() if ln.get_gid()):
        width = width_of[point.get_gid().split("/", 1)[1]]
        assert {to_hex(point.get_color())} == colors[width]
