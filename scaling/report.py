"""Figures, tables and html/md reports from sweep records. Never imports jax, never re-runs.

``build_report(dirs, out)`` reads the parquet record of one or more sweep directories (see
``scaling.records``) and writes into ``out``:

* ``index.html`` (self-contained apart from the PNGs beside it) and ``report.md``;
* one ``<figure>.png`` per figure the record has data for, and beside each a ``<figure>.csv``
  holding exactly the data plotted.

Every figure function takes the loaded :class:`Record` and the report's :class:`Style` and
returns a :class:`FigureResult` (the matplotlib Figure and its data) or ``None`` when the record
lacks the data. One colour per mode and one marker/linestyle per size hold across all figures.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from scaling import records
from scaling.config import MODES
from scaling.presets import PRESETS

FORMATS = ("html", "md")
COORD_CHECK_FILE = "coord_check.parquet"  # columns: mup, width, step, site, rms
DPI = 130

# ---------------------------------------------------------------- the one style of all figures
MODE_COLORS: dict[str, str] = {
    "none": "#6e6e6e",  # grey
    "dp": "#1f77b4",  # blue
    "fsdp": "#2ca02c",  # green
    "tp": "#ff7f0e",  # orange
    "fsdp_tp": "#9467bd",  # purple
}
_EXTRA_COLORS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728")
# The ladder presets get fixed markers and line styles; later presets (the published
# architectures) and models from config.json files take the extra ones below.
SIZE_MARKERS: dict[str, str] = dict(zip(PRESETS, "os^Dv<>pPXh", strict=False))
SIZE_LINESTYLES: dict[str, object] = dict(
    zip(
        PRESETS,
        [
            "-",
            "-.",
            ":",
            (0, (6, 1.5)),
            (0, (1, 1)),
            (0, (5, 1, 1, 1, 1, 1)),
            (0, (9, 2, 2, 2)),
            (0, (2, 2)),
            (0, (4, 1, 1, 1)),
            (0, (7, 1, 1, 1, 1, 1, 1, 1)),
            (0, (3, 3)),
        ],
        strict=False,
    )
)
_EXTRA_MARKERS = ("d", "H", "8", "1", "2", "3", "4")
_VARIANT_HATCHES = ("", "//", "..", "xx", "\\\\", "oo", "--", "++")
FLOOR_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2}  # entropy floor

# Columns a configuration is matched by (baseline comparison): everything but run_id and seed.
CONFIG_KEY = ("size", "mode", "mesh", "mup", "batch", "seq", "dtype", "remat")
# Columns that may distinguish runs of the same size × mode (shown as "variants").
VARIANT_COLUMNS = ("mesh", "mup", "batch", "seq", "dtype", "remat", "source")
_REQUIRED = ("run_id", "size", "mode", "status")
_FLOAT_COLUMNS = tuple(
    f.name for f in dataclasses.fields(records.RunRecord) if f.type in ("float", float)
)


@dataclass
class Style:
    """Colour per mode, marker and linestyle per size: fixed for the known modes and presets,
    assigned in order for anything else. Built once per report from every run it shows."""

    modes: list[str]
    sizes: list[str]
    _colors: dict[str, str] = field(default_factory=dict)
    _markers: dict[str, str] = field(default_factory=dict)
    _linestyles: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, modes: Iterable[str], sizes: Iterable[str]) -> Style:
        modes = sorted(set(modes), key=_mode_rank)
        sizes = list(dict.fromkeys(sizes))
        style = cls(modes, sizes)
        extra = iter(_EXTRA_COLORS * 4)
        for m in modes:
            style._colors[m] = MODE_COLORS.get(m) or next(extra)
        free_markers = iter(_EXTRA_MARKERS * 4)
        free_styles = iter(list(SIZE_LINESTYLES.values()) * 4)
        for s in sizes:
            style._markers[s] = SIZE_MARKERS.get(s) or next(free_markers)
            style._linestyles[s] = SIZE_LINESTYLES.get(s) or next(free_styles)
        return style

    def color(self, mode: str) -> str:
        return self._colors.get(mode, "black")

    def marker(self, size: str) -> str:
        return self._markers.get(size, "o")

    def linestyle(self, size: str) -> object:
        return self._linestyles.get(size, "-")

    def legend_handles(
        self, modes: Iterable[str], sizes: Iterable[str], lines: bool = True, mup: bool = False
    ) -> list:
        """Colour swatches for the modes, then grey markers (and lines) for the sizes."""
        modes, sizes = set(modes), set(sizes)
        handles: list = [
            Patch(color=self.color(m), label=f"mode {m}") for m in self.modes if m in modes
        ]
        handles += [
            Line2D(
                [],
                [],
                color="0.35",
                marker=self.marker(s),
                linestyle=self.linestyle(s) if lines else "none",
                label=f"size {s}",
            )
            for s in self.sizes
            if s in sizes
        ]
        if mup:
            handles.append(
                Line2D(
                    [],
                    [],
                    color="0.35",
                    marker="o",
                    markerfacecolor="white",
                    linestyle="none",
                    label="open marker: muP",
                )
            )
        return handles

    @staticmethod
    def face(mup: bool) -> str | None:
        """Marker face: filled for SP, open (white) for muP runs."""
        return "white" if mup else None

    def edge(self, mode: str, mup: bool) -> dict:
        """Marker edge of scatter points: thin black, or for muP's open markers the mode's
        colour, thicker."""
        if mup:
            return {"markeredgecolor": self.color(mode), "markeredgewidth": 1.6}
        return {"markeredgecolor": "black", "markeredgewidth": 0.5}

    @staticmethod
    def emphasis(runs: pd.DataFrame) -> pd.Series:
        """Per run, 1.0 down to 0.0 in drawing order among the runs that share size and
        parametrization (so share marker and line style): drawn wider first, so that identical
        curves (same math, another sharding) stay visible. Groups of more than 4: all 0.3."""
        keys = runs["size"].astype(str) + "|" + runs["mup"].astype(str)
        rank = keys.groupby(keys).cumcount()
        count = keys.map(keys.value_counts())
        wide = 1.0 - rank / (count - 1).clip(lower=1)
        return wide.where(count <= 4, 0.3)


RUN_ID_COLUMNS = ["source", "run_id", "label", "size", "mode", "mup"]  # who a row is


def _mode_rank(mode: str) -> tuple[int, str]:
    return (MODES.index(mode) if mode in MODES else len(MODES), mode)


# ---------------------------------------------------------------- loading


@dataclass
class Record:
    """The runs (one row per run, plus ``source``, ``label`` and ``variant``), their steps and
    any coord-check tables of one or more sweep directories."""

    dirs: list[Path]
    runs: pd.DataFrame
    steps: pd.DataFrame
    coord: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "ok"]


def _source_names(dirs: Sequence[Path]) -> list[str]:
    names = [d.resolve().name or str(d) for d in dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    return names


def load_record(*dirs: str | Path) -> Record:
    """Load sweep directories; a missing, empty or foreign folder raises ValueError."""
    if not dirs:
        raise ValueError("give at least one sweep directory")
    paths = [Path(d) for d in dirs]
    runs_frames, steps_frames, coord_frames, notes = [], [], [], []
    for path, source in zip(paths, _source_names(paths), strict=True):
        if not path.exists():
            raise ValueError(f"{str(path)!r} does not exist")
        if not path.is_dir():
            raise ValueError(f"{str(path)!r} is not a directory (expected a sweep record)")
        try:
            runs = records.load_runs(path)
            steps = records.load_steps(path)
        except Exception as exc:  # an unreadable parquet file: name the folder
            if type(exc) is ValueError:  # load_runs' own message (pyarrow's errors subclass it)
                raise
            raise ValueError(
                f"{str(path)!r} is not a readable sweep record: {type(exc).__name__}: {exc}"
            ) from None
        missing = [c for c in _REQUIRED if c not in runs.columns]
        if missing:
            raise ValueError(
                f"{str(path)!r} is not a scaling sweep record: runs/*.parquet lacks "
                f"{', '.join(missing)}"
            )
        runs_frames.append(_normalise_runs(runs).assign(source=source))
        steps_frames.append(steps.assign(source=source))
        coord_path = path / COORD_CHECK_FILE
        if coord_path.is_file():
            coord = pd.read_parquet(coord_path)
            lacking = {"mup", "width", "step", "site", "rms"} - set(coord.columns)
            if lacking:
                notes.append(
                    f"{coord_path} lacks {', '.join(sorted(lacking))}; coord check skipped."
                )
            else:
                coord_frames.append(coord.assign(source=source))
    runs = pd.concat(runs_frames, ignore_index=True)
    steps = pd.concat(steps_frames, ignore_index=True)
    for col in ("step", "loss", "step_time_s"):  # an empty steps file reads as object columns
        steps[col] = pd.to_numeric(steps[col], errors="coerce") if col in steps else math.nan
    steps = steps[steps["step"].notna()].astype({"step": "int64"})
    coord = pd.concat(coord_frames, ignore_index=True) if coord_frames else None
    runs = _sort_runs(runs)
    runs["label"] = _labels(runs)
    runs["variant"] = _variants(runs)
    return Record(paths, runs.reset_index(drop=True), steps, coord, notes)


def _normalise_runs(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.copy()
    defaults = {f.name: f.default for f in dataclasses.fields(records.RunRecord)}
    for col in records.RUN_COLUMNS:
        if col not in runs.columns:
            default = defaults[col]
            runs[col] = math.nan if default is dataclasses.MISSING else default
    for col in _FLOAT_COLUMNS:
        runs[col] = pd.to_numeric(runs[col], errors="coerce").astype(float)
    for col in ("size", "mode", "mesh", "status", "error", "dtype", "remat", "run_id"):
        runs[col] = runs[col].fillna("").astype(str)
    runs["mup"] = runs["mup"].fillna(False).astype(bool)
    return runs


def _sort_runs(runs: pd.DataFrame) -> pd.DataFrame:
    order = size_order(runs)
    rank = {s: i for i, s in enumerate(order)}
    return (
        runs.assign(_s=runs["size"].map(rank), _m=runs["mode"].map(lambda m: _mode_rank(m)[0]))
        .sort_values(["_s", "_m", "mode", "mup", "lr", "mesh", "source", "run_id"])
        .drop(columns=["_s", "_m"])
    )


def size_order(runs: pd.DataFrame) -> list[str]:
    """Known presets in ladder order, then others by parameter count."""
    n_params = runs.groupby("size")["n_params"].max()
    known = [s for s in PRESETS if s in n_params.index]
    other = sorted((s for s in n_params.index if s not in PRESETS), key=lambda s: (n_params[s], s))
    return known + other


def _varying(runs: pd.DataFrame, columns: Iterable[str], within: Sequence[str] = ()) -> list[str]:
    out = []
    for col in columns:
        if within:
            counts = runs.groupby(list(within))[col].nunique()
            if (counts > 1).any():
                out.append(col)
        elif runs[col].nunique() > 1:
            out.append(col)
    return out


def _describe(row, columns: Iterable[str]) -> list[str]:
    parts = []
    for col in columns:
        value = row[col]
        if col == "mup":
            parts.append("muP" if value else "SP")
        elif col == "lr":
            parts.append(f"lr {value:.3g}")
        elif col == "mesh":
            parts.append(f"mesh {value}")
        elif col == "source":
            parts.append(f"[{value}]")
        else:
            parts.append(f"{col} {value}")
    return parts


def _labels(runs: pd.DataFrame) -> list[str]:
    extra = _varying(
        runs,
        ("mesh", "mup", "lr", "batch", "seq", "dtype", "remat", "steps", "seed", "source"),
        within=("size", "mode"),
    )
    return [" ".join([r["size"], r["mode"], *_describe(r, extra)]) for _, r in runs.iterrows()]


def _variants(runs: pd.DataFrame) -> list[str]:
    cols = _varying(runs, VARIANT_COLUMNS, within=("size", "mode"))
    return [", ".join(_describe(r, cols)) for _, r in runs.iterrows()]


# ---------------------------------------------------------------- figure helpers


@dataclass
class FigureResult:
    """A figure, the exact data it plots (written as ``<name>.csv``) and its caption."""

    name: str
    title: str
    caption: str
    figure: Figure
    data: pd.DataFrame


def _figure(width: float = 7.5, height: float = 4.6, ncols: int = 1, **kw) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False, **kw)[0]
    return fig, list(axes)


def _log_axis(ax, which: str = "x", values=None) -> None:
    """Log₁₀ scale; minor ticks labelled only at 2 and 5 × 10ⁿ, and only when ``values`` span
    less than two decades (else the labels collide)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    v = np.asarray([] if values is None else values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) and v.max() / v.min() < 100:
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        axis.set_minor_formatter(FuncFormatter(_sci_label))
        axis.set_major_formatter(FuncFormatter(_sci_label))
    else:
        axis.set_minor_formatter(NullFormatter())


def _sci_label(value: float, _pos=None) -> str:
    if value <= 0:
        return ""
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10**exponent
    if -2 <= exponent <= 3:
        return f"{value:g}"
    return rf"${mantissa:.2g}\times10^{{{exponent}}}$"


def _spans_decades(values, factor: float = 10.0) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return len(v) > 1 and v.max() / v.min() >= factor


def _legend_outside(ax, handles=None, **kw) -> None:
    kw = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "frameon": False, **kw}
    if handles is None:
        ax.legend(**kw)
    else:
        ax.legend(handles=handles, **kw)


def _si(value: float, unit: str = "") -> str:
    if not np.isfinite(value):
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".strip()


def _mib(value: float) -> float:
    return value / 2**20


def _floors(runs: pd.DataFrame) -> list[float]:
    floors = runs["entropy_floor_nats"].to_numpy(dtype=float)
    return sorted({round(float(f), 6) for f in floors if np.isfinite(f)})


def _draw_floors(ax, floors: list[float]) -> None:
    for i, floor in enumerate(floors):
        label = f"entropy floor {floor:.4g} nats (synthetic data)" if i == 0 else None
        ax.axhline(floor, label=label, **FLOOR_STYLE)


# ---------------------------------------------------------------- 1. loss curves


def _step_table(rec: Record) -> pd.DataFrame:
    cols = ["source", "run_id", "label", "size", "mode", "mup", "status", "model_flops_per_step"]
    steps = rec.steps.merge(rec.runs[cols], on=["source", "run_id"], how="inner")
    steps = steps[np.isfinite(steps["loss"].astype(float))]
    order = {
        rid: i for i, rid in enumerate(zip(rec.runs["source"], rec.runs["run_id"], strict=True))
    }
    steps = steps.assign(_o=[order[k] for k in zip(steps["source"], steps["run_id"], strict=True)])
    return steps.sort_values(["_o", "step"]).drop(columns="_o").reset_index(drop=True)


MAX_RUN_LEGEND = 14  # more runs than this: a legend of modes and sizes instead of one per run


def _runs_legend(ax, steps: pd.DataFrame, style: Style) -> str:
    """A legend entry per run when there are few, else per mode and size; caption text."""
    n_runs = steps.groupby(["source", "run_id"]).ngroups
    if n_runs <= MAX_RUN_LEGEND:
        _legend_outside(ax)
        return ""
    floor = [h for h in ax.get_lines() if h.get_label().startswith("entropy floor")][:1]
    _legend_outside(
        ax, floor + style.legend_handles(steps["mode"], steps["size"], mup=bool(steps["mup"].any()))
    )
    return f" {n_runs} runs: the CSV names each line (run_id, label)."


def _plot_runs(ax, steps: pd.DataFrame, x: str, style: Style) -> None:
    runs = steps.drop_duplicates(["source", "run_id"])
    wide_of = dict(
        zip(zip(runs["source"], runs["run_id"], strict=True), Style.emphasis(runs), strict=True)
    )
    for (source, run_id), run in steps.groupby(["source", "run_id"], sort=False):
        r = run.iloc[0]
        label = r["label"] + ("" if r["status"] == "ok" else f" ({r['status']})")
        wide = wide_of[(source, run_id)]
        ax.plot(
            run[x],
            run["loss"],
            color=style.color(r["mode"]),
            linestyle=style.linestyle(r["size"]),
            marker=style.marker(r["size"]),
            markerfacecolor=style.face(r["mup"]),
            markevery=max(1, len(run) // 8),
            markersize=4 + 4 * wide,
            linewidth=1.3 + 2.2 * wide,
            alpha=0.9,
            label=label,
            gid=f"{r['source']}/{r['run_id']}",
        )


def fig_loss_vs_step(rec: Record, style: Style) -> FigureResult | None:
    steps = _step_table(rec)
    if steps.empty:
        return None
    fig, (ax,) = _figure(9, 4.8)
    _plot_runs(ax, steps, "step", style)
    floors = _floors(rec.runs)
    _draw_floors(ax, floors)
    ax.set(
        xlabel="optimizer step", ylabel="training loss (nats/token)", title="Training loss per step"
    )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    caption = (
        "Training loss of every run against optimizer step (colour: mode; marker and "
        "line style: size; runs drawn narrower on top of wider ones, so that identical "
        "curves of different modes stay visible)." + _runs_legend(ax, steps, style)
    )
    if floors:
        caption += (
            " Dashed: the entropy rate of the synthetic data, the best loss any model can reach."
        )
    data = steps[["source", "run_id", "label", "size", "mode", "step", "loss"]]
    return FigureResult("loss_vs_step", "Loss vs step", caption, fig, data)


def fig_loss_vs_compute(rec: Record, style: Style) -> FigureResult | None:
    steps = _step_table(rec)
    steps = steps.assign(
        cumulative_model_flops=steps["step"].astype(float) * steps["model_flops_per_step"]
    )
    steps = steps[np.isfinite(steps["cumulative_model_flops"])]
    log_x = _spans_decades(steps["cumulative_model_flops"])
    if log_x:
        steps = steps[steps["cumulative_model_flops"] > 0]
    if steps.empty:
        return None
    fig, (ax,) = _figure(9, 4.8)
    _plot_runs(ax, steps, "cumulative_model_flops", style)
    floors = _floors(rec.runs)
    _draw_floors(ax, floors)
    if log_x:
        _log_axis(ax, "x", steps["cumulative_model_flops"])
    ax.set(
        xlabel="cumulative model FLOPs (step × model FLOPs per step)",
        ylabel="training loss (nats/token)",
        title="Training loss vs compute",
    )
    ax.grid(alpha=0.3, which="both" if log_x else "major")
    caption = (
        "Training loss against the model FLOPs spent before the step (analytic "
        "model FLOPs per step × step index)." + _runs_legend(ax, steps, style)
    )
    if log_x:
        caption += " Log x axis; step 0 (no compute yet) is left out."
    if floors:
        caption += " Dashed: the entropy floor of the synthetic data."
    data = steps[
        [
            "source",
            "run_id",
            "label",
            "size",
            "mode",
            "step",
            "model_flops_per_step",
            "cumulative_model_flops",
            "loss",
        ]
    ]
    return FigureResult("loss_vs_compute", "Loss vs compute", caption, fig, data)


# ---------------------------------------------------------------- 2./4. grouped bars


def _bar_table(
    rec: Record, values: Sequence[str], runs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Median of ``values`` over the ok runs of each size × mode × variant, in plot order."""
    runs = rec.ok if runs is None else runs
    runs = runs[np.isfinite(runs[list(values)].to_numpy(dtype=float)).any(axis=1)]
    if runs.empty:
        return pd.DataFrame(columns=["size", "mode", "variant", "n_runs", *values])
    table = (
        runs.groupby(["size", "mode", "variant"], sort=False)
        .agg(n_runs=("run_id", "size"), **{v: (v, "median") for v in values})
        .reset_index()
    )
    return table  # runs are already sorted: groupby(sort=False) keeps size, mode order


def _grouped_bars(
    ax, table: pd.DataFrame, value: str, style: Style, fmt: str, scale: float = 1.0
) -> list:
    """One group per size, one bar per mode (× variant) inside it; returns the bar patches in
    the row order of ``table`` (rows with a NaN value get no bar)."""
    table = table[np.isfinite(table[value].astype(float))]
    sizes = list(dict.fromkeys(table["size"]))
    variants = list(dict.fromkeys(table["variant"]))
    hatch = {v: _VARIANT_HATCHES[i % len(_VARIANT_HATCHES)] for i, v in enumerate(variants)}
    widest = table.groupby("size").size().max()
    width = 0.8 / widest
    patches = []
    many = widest > 4
    for g, size in enumerate(sizes):
        group = table[table["size"] == size]
        for j, (_, row) in enumerate(group.iterrows()):
            x = g + (j - (len(group) - 1) / 2) * width
            bars = ax.bar(
                x,
                row[value] * scale,
                width * 0.95,
                color=style.color(row["mode"]),
                hatch=hatch[row["variant"]],
                edgecolor="white",
                linewidth=0.5,
            )
            ax.bar_label(
                bars,
                labels=[fmt.format(row[value] * scale)],
                fontsize=7,
                rotation=90 if many else 0,
                padding=2,
            )
            patches.append(bars.patches[0])
    ax.set_xticks(range(len(sizes)), sizes)
    ax.set_xlabel("model size")
    ax.margins(y=0.15)
    handles = style.legend_handles(table["mode"], [])
    if len(variants) > 1:
        handles += [
            Patch(facecolor="0.85", edgecolor="0.3", hatch=hatch[v], label=v or "-")
            for v in variants
        ]
    _legend_outside(ax, handles)
    return patches


def _peak_caption(runs: pd.DataFrame) -> str:
    sources = [s for s in dict.fromkeys(runs["peak_source"]) if s]
    peaks = runs["peak_flops_per_device"].to_numpy(dtype=float)
    peaks = peaks[np.isfinite(peaks)]
    if len(sources) > 2:  # e.g. a CPU calibration per run: name one, count the rest
        sources = [
            f"{sources[0]} (and {len(sources) - 1} more, one per run: see the Environment table)"
        ]
    text = "Peak FLOP/s per device: " + ("; ".join(sources) if sources else "not recorded")
    if len(peaks):
        lo, hi = peaks.min(), peaks.max()
        text += (
            f" ({_si(lo, 'FLOP/s')})"
            if np.isclose(lo, hi, rtol=1e-3)
            else f" ({_si(lo, 'FLOP/s')} – {_si(hi, 'FLOP/s')} across runs)"
        )
    return text + "."


def fig_throughput(rec: Record, style: Style) -> FigureResult | None:
    table = _bar_table(rec, ["mfu", "tokens_per_s"])
    if table.empty:
        return None
    fig, axes = _figure(13, 4.8, ncols=2)
    _grouped_bars(axes[0], table, "mfu", style, "{:.1f}", scale=100)
    axes[0].set(ylabel="MFU (% of peak)", title="Model FLOPs utilisation")
    _grouped_bars(axes[1], table, "tokens_per_s", style, "{:,.0f}")
    if _spans_decades(table["tokens_per_s"], 30):
        _log_axis(axes[1], "y", table["tokens_per_s"])
    axes[1].set(ylabel="tokens/s (whole mesh)", title="Throughput")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    caption = (
        "MFU = model FLOPs per step ÷ (median step time × devices × peak FLOP/s per "
        "device); tokens/s over the whole mesh, from the median step time. Bars: "
        "median over the ok runs of each size × mode"
        + (" × variant (hatch)" if table["variant"].nunique() > 1 else "")
        + ". "
        + _peak_caption(rec.ok)
    )
    data = table.assign(mfu_percent=table["mfu"] * 100)
    return FigureResult("throughput", "MFU and throughput", caption, fig, data)


def fig_compile_time(rec: Record, style: Style) -> FigureResult | None:
    table = _bar_table(rec, ["compile_s"])
    if table.empty:
        return None
    fig, (ax,) = _figure(8, 4.6)
    _grouped_bars(ax, table, "compile_s", style, "{:.2f}")
    if _spans_decades(table["compile_s"], 30):
        _log_axis(ax, "y", table["compile_s"])
    ax.set(ylabel="compile time (s)", title="Compile time of the train step")
    ax.grid(axis="y", alpha=0.3)
    caption = (
        "Time to lower and compile the jitted train step (s), median over the ok runs "
        "of each size × mode."
    )
    return FigureResult("compile_time", "Compile time", caption, fig, table)


# ---------------------------------------------------------------- 3. measured vs predicted


def _versus(
    ax, data: pd.DataFrame, x: str, y: str, style: Style, annotate: bool, xerr_hi: str | None = None
) -> None:
    for _, r in data.iterrows():
        if xerr_hi is not None and np.isfinite(r[xerr_hi]) and r[xerr_hi] > r[x]:
            ax.plot(
                [r[x], r[xerr_hi]],
                [r[y], r[y]],
                color=style.color(r["mode"]),
                linewidth=1,
                marker="|",
                markersize=6,
            )
        ax.plot(
            r[x],
            r[y],
            linestyle="none",
            marker=style.marker(r["size"]),
            color=style.color(r["mode"]),
            markerfacecolor=style.face(r["mup"]),
            markersize=7,
            gid=f"{r['source']}/{r['run_id']}",
            **style.edge(r["mode"], r["mup"]),
        )
    values = np.concatenate(
        [data[x].to_numpy(float), data[y].to_numpy(float)]
        + ([data[xerr_hi].to_numpy(float)] if xerr_hi else [])
    )
    values = values[np.isfinite(values) & (values > 0)]
    lo, hi = values.min() / 1.6, values.max() * 1.6
    ax.plot([lo, hi], [lo, hi], color="0.5", linewidth=1, linestyle="--", label="y = x")
    _log_axis(ax, "x", [lo, hi])
    _log_axis(ax, "y", [lo, hi])
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3, which="both")
    if annotate:
        obstacles = []
        if xerr_hi is not None:  # the range bars: a few points along each
            for _, r in data.iterrows():
                if np.isfinite(r[xerr_hi]) and r[xerr_hi] > r[x]:
                    obstacles += [(v, r[y]) for v in np.geomspace(r[x], r[xerr_hi], 6)]
        _place_labels(
            ax,
            data[x].to_numpy(float),
            data[y].to_numpy(float),
            [f"×{v:.2f}" for v in data["ratio"]],
            obstacles,
        )
    handles = style.legend_handles(
        data["mode"], data["size"], lines=False, mup=bool(data["mup"].any())
    )
    handles.append(Line2D([], [], color="0.5", linestyle="--", label="y = x (prediction exact)"))
    _legend_outside(ax, handles)


def _place_labels(ax, xs, ys, texts, obstacles=(), fontsize: float = 7) -> None:
    """Annotate points, each label at the first of a few offsets (right, above, below, left)
    whose box hits neither another point nor a label already placed (approximate boxes in
    points; the axes limits must be set)."""
    fig = ax.figure
    fig.canvas.draw()  # fixes the layout, so the data → display transform is final
    scale = fig.dpi / 72.0
    pts = ax.transData.transform(np.column_stack([xs, ys])) / scale  # in points
    others = [*pts]
    if len(obstacles):
        others += [*(ax.transData.transform(np.asarray(obstacles, dtype=float)) / scale)]
    placed: list[tuple[float, float, float, float]] = []
    radius = 5.0
    for i, text in enumerate(texts):
        w, h = 0.65 * fontsize * len(text) + 2, 1.4 * fontsize + 2  # with a little padding
        px, py = pts[i]
        options = [
            (7, -h / 2),
            (-w / 2, 7),
            (-w / 2, -7 - h),
            (-7 - w, -h / 2),
            (7, 5),
            (7, -5 - h),
            (-7 - w, 5),
            (-7 - w, -5 - h),
        ]
        chosen = options[0]
        for dx, dy in options:
            box = (px + dx, py + dy, px + dx + w, py + dy + h)
            hits_point = any(
                box[0] - radius < qx < box[2] + radius and box[1] - radius < qy < box[3] + radius
                for j, (qx, qy) in enumerate(others)
                if j != i
            )
            hits_label = any(
                box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed
            )
            if not hits_point and not hits_label:
                chosen = (dx, dy)
                break
        dx, dy = chosen
        placed.append((px + dx, py + dy, px + dx + w, py + dy + h))
        ax.annotate(
            text,
            (xs[i], ys[i]),
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=fontsize,
            color="0.2",
            ha="left",
            va="bottom",
            arrowprops={
                "arrowstyle": "-",
                "color": "0.55",
                "linewidth": 0.5,
                "shrinkA": 0,
                "shrinkB": 4,
            },
        )


def fig_step_time_vs_roofline(rec: Record, style: Style) -> FigureResult | None:
    runs = rec.ok
    runs = runs[(runs["predicted_step_s"] > 0) & (runs["step_time_s_median"] > 0)]
    if runs.empty:
        return None
    data = runs[
        [
            *RUN_ID_COLUMNS,
            "predicted_step_s",
            "predicted_step_s_upper",
            "step_time_s_median",
        ]
    ].copy()
    data["ratio"] = data["step_time_s_median"] / data["predicted_step_s"]
    fig, (ax,) = _figure(7.5, 5.4)
    _versus(
        ax,
        data,
        "predicted_step_s",
        "step_time_s_median",
        style,
        len(data) <= 16,
        xerr_hi="predicted_step_s_upper",
    )
    ax.set(
        xlabel="roofline prediction (s/step)",
        ylabel="measured median step time (s)",
        title="Step time: measured vs roofline",
    )
    caption = (
        "Measured median step time against the roofline prediction (s per step, log-log)."
        " The marker sits at the lower bound (max of compute and memory time); the bar "
        "extends to the upper bound (compute + communication). Labels: measured ÷ "
        "predicted lower bound; points above y = x are slower than predicted."
    )
    return FigureResult("step_time_vs_roofline", "Step time vs roofline", caption, fig, data)


def fig_memory_vs_estimate(rec: Record, style: Style) -> FigureResult | None:
    runs = rec.ok
    runs = runs[(runs["est_memory_bytes"] > 0) & (runs["peak_memory_bytes"] > 0)]
    if runs.empty:
        return None
    data = runs[
        [
            *RUN_ID_COLUMNS,
            "est_memory_bytes",
            "peak_memory_bytes",
            "peak_memory_source",
        ]
    ].copy()
    data["est_memory_mib"] = _mib(data["est_memory_bytes"])
    data["peak_memory_mib"] = _mib(data["peak_memory_bytes"])
    data["ratio"] = data["peak_memory_bytes"] / data["est_memory_bytes"]
    fig, (ax,) = _figure(7.5, 5.4)
    _versus(ax, data, "est_memory_mib", "peak_memory_mib", style, len(data) <= 16)
    ax.set(
        xlabel="analytic estimate (MiB per device)",
        ylabel="measured peak (MiB per device)",
        title="Peak memory: measured vs estimate",
    )
    sources = ", ".join(s for s in dict.fromkeys(data["peak_memory_source"]) if s) or "unknown"
    caption = (
        f"Peak memory per device (MiB = 2²⁰ bytes, log-log): measured ({sources}) "
        "against the analytic estimate. Labels: measured ÷ estimated."
    )
    return FigureResult("memory_vs_estimate", "Memory vs estimate", caption, fig, data)


# ---------------------------------------------------------------- 5. scaling law


@dataclass
class ScalingFit:
    """L(C) = E + A·C^(−α) fitted by least squares on log L. Standard errors from the
    covariance (NaN when there are no degrees of freedom)."""

    E: float
    A: float
    alpha: float
    E_se: float
    A_se: float
    alpha_se: float
    n_points: int
    method: str
    rmse_log: float  # root-mean-square residual of log L

    def predict(self, compute) -> np.ndarray:
        return self.E + self.A * np.asarray(compute, dtype=float) ** (-self.alpha)


def _law_log(x, E, a, alpha):
    return np.log(E + np.exp(a - alpha * x))


def _law_jac(x, E, a, alpha):
    u = np.exp(a - alpha * x)
    d = E + u
    return np.stack([1 / d, u / d, -x * u / d], axis=1)


def _profile_start(x: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Best (E, a, α) over a grid of E below min(L), each with (a, α) by linear regression
    of log(L − E) on x."""
    y = np.log(loss)
    best, best_cost = None, np.inf
    for E in loss.min() * (1 - np.geomspace(1, 1e-3, 120)):
        slope, intercept = np.polyfit(x, np.log(loss - E), 1)
        if slope >= 0:
            continue
        p = np.array([E, intercept, -slope])
        cost = float(np.sum((_law_log(x, *p) - y) ** 2))
        if cost < best_cost:
            best, best_cost = p, cost
    if best is None:  # loss does not fall with compute: a flat start
        best = np.array([0.5 * loss.min(), np.log(0.5 * loss.min()), 0.1])
    return best


def _levenberg_marquardt(x, y, p0, iterations: int = 500) -> np.ndarray:
    p = np.asarray(p0, dtype=float)
    r = _law_log(x, *p) - y
    cost, lam = float(r @ r), 1e-3
    for _ in range(iterations):
        J = _law_jac(x, *p)
        H, g = J.T @ J, J.T @ r
        try:
            step = np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), -g)
        except np.linalg.LinAlgError:
            break
        trial = p + step
        trial[0], trial[2] = max(trial[0], 0.0), max(trial[2], 0.0)
        r_new = _law_log(x, *trial) - y
        new_cost = float(r_new @ r_new)
        if np.isfinite(new_cost) and new_cost <= cost:
            done = cost - new_cost <= 1e-15 * max(cost, 1e-300)
            p, r, cost, lam = trial, r_new, new_cost, lam / 3
            if done:
                break
        else:
            lam *= 4
            if lam > 1e12:
                break
    return p


def fit_scaling_law(compute, loss, *, use_scipy: bool | None = None) -> ScalingFit:
    """Fit L(C) = E + A·C^(−α) to (compute, loss) points (≥ 3 distinct compute values).

    Least squares on log L with parameters (E, log A', α) and C normalised by its geometric
    mean C₀, so A = A'·C₀^α; scipy.optimize.curve_fit when importable (``use_scipy=None``),
    else a Levenberg–Marquardt of our own, both started from a profile over E."""
    C = np.asarray(compute, dtype=float)
    L = np.asarray(loss, dtype=float)
    keep = np.isfinite(C) & np.isfinite(L) & (C > 0) & (L > 0)
    C, L = C[keep], L[keep]
    distinct = len(np.unique(C))
    if distinct < 3:
        raise ValueError(f"fitting E + A·C^-α needs ≥ 3 distinct compute points; got {distinct}")
    log_c0 = float(np.mean(np.log(C)))
    x, y = np.log(C) - log_c0, np.log(L)
    p0 = _profile_start(x, L)
    method = "numpy Levenberg-Marquardt"
    popt = None
    if use_scipy is not False:
        try:
            from scipy.optimize import OptimizeWarning, curve_fit
        except ImportError:
            if use_scipy:
                raise
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", OptimizeWarning)
                    popt, _ = curve_fit(
                        _law_log,
                        x,
                        y,
                        p0=p0,
                        jac=_law_jac,
                        method="trf",
                        bounds=([0, -np.inf, 0], [np.inf, np.inf, np.inf]),
                        max_nfev=5000,
                    )
                method = "scipy.optimize.curve_fit"
            except (RuntimeError, ValueError):
                popt = None
    if popt is None:
        popt = _levenberg_marquardt(x, y, p0)
    resid = _law_log(x, *popt) - y
    dof = len(y) - 3
    cov = np.full((3, 3), np.nan)
    if dof > 0:
        J = _law_jac(x, *popt)
        cov = np.linalg.pinv(J.T @ J) * float(resid @ resid) / dof
    E, a, alpha = (float(v) for v in popt)
    log_a = a + alpha * log_c0
    var_log_a = cov[1, 1] + log_c0**2 * cov[2, 2] + 2 * log_c0 * cov[1, 2]
    A = math.exp(log_a)
    return ScalingFit(
        E=E,
        A=A,
        alpha=alpha,
        E_se=float(np.sqrt(cov[0, 0])),
        A_se=float(A * np.sqrt(var_log_a)),
        alpha_se=float(np.sqrt(cov[2, 2])),
        n_points=len(y),
        method=method,
        rmse_log=float(np.sqrt(np.mean(resid**2))),
    )


def _compute_points(rec: Record) -> pd.DataFrame:
    runs = rec.ok.assign(
        compute_flops=rec.ok["steps"].astype(float) * rec.ok["model_flops_per_step"]
    )
    runs = runs[
        np.isfinite(runs["compute_flops"])
        & (runs["compute_flops"] > 0)
        & np.isfinite(runs["final_loss"])
        & (runs["final_loss"] > 0)
    ]
    return runs


def scaling_fit_of(rec: Record) -> tuple[ScalingFit | None, str]:
    """The fit over the best (lowest) final loss at each distinct compute, and a note."""
    runs = _compute_points(rec)
    frontier = _frontier(runs)
    n = len(frontier)
    if n < 3:
        return None, (
            f"Scaling-law fit skipped: {n} distinct compute point(s) among the ok "
            "runs; E + A·C^-α needs ≥ 3 (≥ 4 for a meaningful fit)."
        )
    fit = fit_scaling_law(frontier["compute_flops"], frontier["final_loss"])
    note = ""
    if frontier["final_loss"].min() * 1e-6 >= fit.E:
        note = (
            "The fitted E sits at its lower bound 0: these points do not constrain the "
            "loss floor (too few, too noisy, or not on one E + A·C^-α curve)."
        )
    if n == 3:
        note += (" " if note else "") + (
            "Scaling-law fit through exactly 3 compute points: it interpolates them, and its "
            "parameters have no standard errors; ≥ 4 points are needed for a meaningful fit."
        )
    return fit, note


def _frontier(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty:
        return runs.assign(_c=[])
    key = runs["compute_flops"].map(lambda c: float(f"{c:.10g}"))
    idx = runs.assign(_c=key).groupby("_c")["final_loss"].idxmin()
    return runs.loc[idx.to_numpy()].sort_values("compute_flops")


def _pm(value: float, se: float, fmt: str = "{:.4g}") -> str:
    return fmt.format(value) + (f" ± {fmt.format(se)}" if np.isfinite(se) else "")


def fig_scaling_law(rec: Record, style: Style) -> FigureResult | None:
    runs = _compute_points(rec)
    frontier = _frontier(runs)
    if len(frontier) < 2:
        return None
    fit, note = scaling_fit_of(rec)
    fig, (ax,) = _figure(9, 5)
    wide = Style.emphasis(runs)
    for i, r in runs.iterrows():  # earlier runs drawn larger: coinciding runs stay visible
        ax.plot(
            r["compute_flops"],
            r["final_loss"],
            linestyle="none",
            marker=style.marker(r["size"]),
            color=style.color(r["mode"]),
            markersize=5 + 5 * wide[i],
            markerfacecolor=style.face(r["mup"]),
            **style.edge(r["mode"], r["mup"]),
        )
    ax.plot(
        frontier["compute_flops"],
        frontier["final_loss"],
        linestyle="none",
        marker="o",
        markersize=14,
        markerfacecolor="none",
        markeredgecolor="black",
        label="lowest loss per compute" + (" (fitted)" if fit is not None else ""),
    )
    rows = [
        runs.assign(series="run")[
            [
                "series",
                "label",
                "size",
                "mode",
                "steps",
                "model_flops_per_step",
                "compute_flops",
                "final_loss",
            ]
        ],
        frontier.assign(series="fit input")[
            [
                "series",
                "label",
                "size",
                "mode",
                "steps",
                "model_flops_per_step",
                "compute_flops",
                "final_loss",
            ]
        ],
    ]
    c_lo, c_hi = frontier["compute_flops"].min(), frontier["compute_flops"].max()
    floors = _floors(rec.ok)
    text = None
    if fit is not None:
        grid = np.geomspace(c_lo / 2, c_hi * 4, 200)
        ax.plot(
            grid,
            fit.predict(grid),
            color="crimson",
            linewidth=1.8,
            label=f"fit E + A·C^(−α), α = {_pm(fit.alpha, fit.alpha_se, '{:.3g}')}",
        )
        ax.axhline(
            fit.E,
            color="crimson",
            linestyle=":",
            linewidth=1.2,
            label=f"fitted E = {_pm(fit.E, fit.E_se, '{:.3g}')} nats",
        )
        rows.append(
            pd.DataFrame(
                {"series": "fit curve", "compute_flops": grid, "final_loss": fit.predict(grid)}
            )
        )
        text = (
            f"E = {_pm(fit.E, fit.E_se)}\nA = {_pm(fit.A, fit.A_se)}\n"
            f"α = {_pm(fit.alpha, fit.alpha_se)}\n{fit.n_points} points"
        )
        ax.text(
            0.02,
            0.03,
            text,
            transform=ax.transAxes,
            fontsize=8,
            va="bottom",
            bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9},
        )
    else:
        ax.text(
            0.5,
            0.5,
            "too few compute points for a fit\n(needs ≥ 3, ≥ 4 to be meaningful)",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=10,
            color="0.4",
        )
    _draw_floors(ax, floors)
    if _spans_decades(runs["compute_flops"], 5):
        _log_axis(ax, "x", runs["compute_flops"])
    ax.set(
        xlabel="training compute C = steps × model FLOPs per step (FLOPs)",
        ylabel="final training loss (nats/token)",
        title="Scaling law: final loss vs compute",
    )
    ax.grid(alpha=0.3, which="both")
    handles, _ = ax.get_legend_handles_labels()
    _legend_outside(
        ax,
        handles
        + style.legend_handles(
            runs["mode"], runs["size"], lines=False, mup=bool(runs["mup"].any())
        ),
    )
    caption = (
        "Final training loss of each ok run against its training compute C (total "
        "model FLOPs). Circled: the lowest loss at each distinct C, the points fitted."
    )
    if fit is not None:
        caption += (
            f" Fit of L(C) = E + A·C^(−α) by least squares on log L "
            f"({fit.method}), ± one standard error from the covariance: E = "
            f"{_pm(fit.E, fit.E_se)} nats, A = {_pm(fit.A, fit.A_se)}, α = "
            f"{_pm(fit.alpha, fit.alpha_se)}."
        )
    if floors:
        caption += f" Dashed: the known entropy floor {floors[0]:.4g} nats, to compare with E."
    if note:
        caption += " " + note
    return FigureResult(
        "scaling_law", "Scaling law", caption, fig, pd.concat(rows, ignore_index=True)
    )


# ---------------------------------------------------------------- 6. muP


def _width_colors(widths: Sequence[int]) -> dict[int, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    n = max(len(widths) - 1, 1)
    return {w: cmap(0.9 * i / n) for i, w in enumerate(sorted(widths))}


def fig_mup_lr(rec: Record, style: Style) -> FigureResult | None:
    runs = rec.ok
    runs = runs[(runs["lr"] > 0) & np.isfinite(runs["final_loss"])]
    if runs.empty:
        return None
    width = runs["d_model"].where(runs["d_model"] > 0)
    if width.isna().any():
        return None
    runs = runs.assign(width=width.astype(int))
    # the records that hold muP runs or an LR sweep (a plain size ladder has nothing to show)
    lr_sweep = (
        runs.groupby(["source", "mup", "width"])["lr"].nunique().gt(1).groupby("source").any()
    )
    sources = set(lr_sweep[lr_sweep].index) | set(runs.loc[runs["mup"], "source"])
    runs = runs[runs["source"].isin(sources)]
    if runs.empty:
        return None
    data = (
        runs.groupby(["mup", "width", "lr"])
        .agg(final_loss=("final_loss", "mean"), n_runs=("run_id", "size"))
        .reset_index()
    )
    data["log2_lr"] = np.log2(data["lr"])
    data["is_optimum"] = False
    swept = data.groupby(["mup", "width"])["lr"].transform("nunique") > 1
    best = data[swept].groupby(["mup", "width"])["final_loss"].idxmin()
    data.loc[best.to_numpy(), "is_optimum"] = True
    colors = _width_colors(list(data["width"].unique()))
    fig, axes = _figure(12, 4.8, ncols=2, sharey=True)
    for ax, mup in zip(axes, (False, True), strict=True):
        part = data[data["mup"] == mup]
        name = "muP" if mup else "SP (standard parametrization)"
        for w, curve in part.groupby("width"):
            ax.plot(
                curve["log2_lr"],
                curve["final_loss"],
                marker="o",
                color=colors[w],
                label=f"d_model {w}",
                gid=f"{'mup' if mup else 'sp'}/{w}",
            )
            opt = curve[curve["is_optimum"]]
            ax.plot(
                opt["log2_lr"],
                opt["final_loss"],
                marker="*",
                markersize=16,
                linestyle="none",
                color=colors[w],
                markeredgecolor="black",
            )
        if part.empty:
            ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", color="0.5")
        elif not part["is_optimum"].any():
            ax.text(
                0.5,
                0.5,
                "one learning rate per width:\nno optimum to mark (sweep the LR)",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="0.4",
            )
        ax.set(title=name, xlabel="log₂ peak learning rate")
        ax.grid(alpha=0.3)
        if not part.empty:
            title = "width (★ = best LR)" if part["is_optimum"].any() else "width"
            ax.legend(fontsize=8, title=title, title_fontsize=8)
    axes[0].set_ylabel("final training loss (nats/token)")
    skipped = int((rec.runs["status"] != "ok").sum())
    caption = (
        "Final loss against log₂ of the peak learning rate, one curve per width "
        "(d_model), SP left and muP right; ★ marks each curve's best LR (mean over runs "
        "sharing width and LR). Under muP the optimum should stay put as width grows."
    )
    if not data["is_optimum"].any():
        caption += " This record has one LR per width, so no optimum can be located."
    if skipped:
        caption += f" {skipped} run(s) that did not finish ok are left out."
    return FigureResult("mup_lr", "muP learning-rate transfer", caption, fig, data)


def _coord_sites(sites: Iterable[str]) -> list[str]:
    def rank(site: str):
        if site == "embed":
            return (0, 0, site)
        if site.startswith("block_") and site[6:].isdigit():
            return (1, int(site[6:]), site)
        if site == "logits":
            return (3, 0, site)
        return (2, 0, site)

    ordered = sorted(set(sites), key=rank)
    if len(ordered) <= 4:
        return ordered
    blocks = [s for s in ordered if rank(s)[0] == 1]
    keep = {"embed", "logits"} | ({blocks[0], blocks[-1]} if blocks else set())
    return [s for s in ordered if s in keep] or ordered[:4]


def fig_coord_check(rec: Record, style: Style | None = None) -> FigureResult | None:
    if rec.coord is None or rec.coord.empty:
        return None
    return coord_check_result(rec.coord)


def coord_check_figure(directory: str | Path) -> Path | None:
    """Draw ``directory/coord_check.parquet`` (as ``scaling mup coord-check`` writes it) into
    ``coord_check.png`` + ``coord_check.csv`` beside it; the PNG's path, or None if empty."""
    directory = Path(directory)
    coord = pd.read_parquet(directory / COORD_CHECK_FILE)
    result = coord_check_result(coord)
    if result is None:
        return None
    png = directory / f"{result.name}.png"
    result.figure.savefig(png, dpi=DPI)
    result.data.to_csv(directory / f"{result.name}.csv", index=False)
    return png


def coord_check_result(coord: pd.DataFrame) -> FigureResult | None:
    """The coord-check figure of a table with columns mup, width, step, site, rms."""
    coord = coord.assign(mup=coord["mup"].astype(bool))
    coord = coord[np.isfinite(coord["rms"].astype(float)) & (coord["rms"] > 0)]
    if coord.empty:
        return None
    all_sites = coord["site"].nunique()
    sites = _coord_sites(coord["site"])
    steps = sorted(coord["step"].unique())
    if len(steps) > 8:
        steps = [steps[int(round(i))] for i in np.linspace(0, len(steps) - 1, 8)]
    coord = coord[coord["site"].isin(sites) & coord["step"].isin(steps)]
    data = coord.groupby(["site", "mup", "step", "width"])["rms"].mean().reset_index()
    data = data.assign(_s=data["site"].map({s: i for i, s in enumerate(sites)}))
    data = data.sort_values(["_s", "mup", "step", "width"]).drop(columns="_s")
    from matplotlib import colormaps

    cmap = colormaps["plasma"]
    step_color = {s: cmap(0.85 * i / max(len(steps) - 1, 1)) for i, s in enumerate(steps)}
    fig = Figure(figsize=(11, 2.9 * len(sites) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(sites), 2, squeeze=False, sharey="row")
    for i, site in enumerate(sites):
        for j, mup in enumerate((False, True)):
            ax = grid[i][j]
            part = data[(data["site"] == site) & (data["mup"] == mup)]
            for step, line in part.groupby("step"):
                ax.plot(
                    line["width"],
                    line["rms"],
                    marker="o",
                    color=step_color[step],
                    label=f"step {step}",
                    gid=f"{site}/{'mup' if mup else 'sp'}/{step}",
                )
            if part.empty:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="0.5")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            ax.set_title(f"{'muP' if mup else 'SP'}: {site}", fontsize=10)
            if i == len(sites) - 1:
                ax.set_xlabel("width (d_model, log₂)")
            if j == 0:
                ax.set_ylabel("activation RMS")
    grid[0][1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    caption = (
        "Coordinate check: RMS of the activations at each site against width, one line "
        "per training step, SP left and muP right. Under muP the lines stay flat as width "
        "grows; under SP they drift."
    )
    if len(sites) < all_sites:
        caption += " Sites shown: " + ", ".join(sites) + "."
    return FigureResult("coord_check", "muP coordinate check", caption, fig, data)


# ---------------------------------------------------------------- 7. baseline


def _config_key(runs: pd.DataFrame) -> pd.Series:
    return runs[list(CONFIG_KEY)].astype(str).agg("|".join, axis=1)


def baseline_table(current: Record, baseline: Record) -> pd.DataFrame:
    """Median tokens/s and MFU of the ok runs of each configuration in both records."""
    cols = ["tokens_per_s", "mfu"]

    def per_config(rec: Record) -> pd.DataFrame:
        ok = rec.ok.assign(config=_config_key(rec.ok))
        return ok.groupby("config", sort=False).agg(
            **{c: (c, "first") for c in CONFIG_KEY},
            **{v: (v, "median") for v in cols},
            n_runs=("run_id", "size"),
        )

    cur, base = per_config(current), per_config(baseline)
    base = base[cols + ["n_runs"]].rename(columns=lambda c: f"{c}_baseline")
    both = cur.rename(columns={c: f"{c}_current" for c in cols + ["n_runs"]}).join(
        base, how="inner"
    )
    for c in cols:
        both[f"{c}_ratio"] = both[f"{c}_current"] / both[f"{c}_baseline"]
    return both.reset_index()


def _config_label(row, varying: Sequence[str]) -> str:
    return " ".join([row["size"], row["mode"], *_describe(row, varying)])


def fig_baseline(current: Record, baseline: Record, style: Style) -> FigureResult | None:
    table = baseline_table(current, baseline)
    if table.empty:
        return None
    varying = _varying(
        table, ("mesh", "mup", "batch", "seq", "dtype", "remat"), within=("size", "mode")
    )
    table["label"] = [_config_label(r, varying) for _, r in table.iterrows()]
    fig, axes = _figure(max(8, 1.0 * len(table) + 4), 4.8, ncols=2)
    for ax, col, name in zip(axes, ("tokens_per_s", "mfu"), ("tokens/s", "MFU"), strict=True):
        x = np.arange(len(table))
        values = table[f"{col}_ratio"].to_numpy(dtype=float)
        bars = ax.bar(
            x,
            np.nan_to_num(values),
            color=[style.color(m) for m in table["mode"]],
            edgecolor="white",
        )
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="= baseline")
        ax.set_xticks(x, table["label"], rotation=30, ha="right", fontsize=8)
        ax.set(ylabel=f"{name}: current ÷ baseline", title=f"{name} vs baseline")
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    handles = style.legend_handles(table["mode"], [])
    handles.append(Line2D([], [], color="black", linestyle="--", label="ratio 1 (= baseline)"))
    _legend_outside(axes[1], handles)
    caption = (
        "Throughput (tokens/s) and MFU of this record ÷ the baseline's, per "
        "configuration (matched by size, mode, mesh, muP, batch, seq, dtype, remat; "
        "median over ok runs). Above 1: faster than the baseline."
    )
    return FigureResult("baseline_ratio", "Against the baseline", caption, fig, table)


# ---------------------------------------------------------------- tables


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


def _fmt(value: float, spec: str) -> str:
    return spec.format(value) if isinstance(value, int | float) and np.isfinite(value) else "-"


def summary_table(rec: Record) -> Table:
    lr_varies = rec.runs["lr"].nunique() > 1
    cols = [
        "size",
        "mode",
        "mesh",
        "muP",
        *(["lr"] if lr_varies else []),
        "status",
        "step time (s)",
        "roofline (s)",
        "step ÷ roofline",
        "tokens/s",
        "MFU",
        "peak mem (MiB)",
        "est. mem (MiB)",
        "mem ÷ est.",
        "final loss (nats)",
    ]
    multi = rec.runs["source"].nunique() > 1
    if multi:
        cols.insert(0, "record")
    rows = []
    for _, r in rec.runs.iterrows():
        ok = r["status"] == "ok"
        v = (lambda x: x) if ok else (lambda x: math.nan)  # noqa: E731
        row = [
            r["size"],
            r["mode"],
            r["mesh"],
            "on" if r["mup"] else "off",
            *([f"{r['lr']:g}"] if lr_varies else []),
            r["status"],
            _fmt(v(r["step_time_s_median"]), "{:.4g}"),
            _fmt(v(r["predicted_step_s"]), "{:.3g}"),
            _fmt(v(r["step_time_s_median"] / r["predicted_step_s"]), "{:.2f}"),
            _fmt(v(r["tokens_per_s"]), "{:,.0f}"),
            _fmt(v(r["mfu"] * 100), "{:.1f} %"),
            _fmt(v(_mib(r["peak_memory_bytes"])), "{:,.1f}"),
            _fmt(_mib(r["est_memory_bytes"]), "{:,.1f}"),
            _fmt(v(r["peak_memory_bytes"] / r["est_memory_bytes"]), "{:.2f}"),
            _fmt(v(r["final_loss"]), "{:.4f}"),
        ]
        rows.append(([r["source"]] if multi else []) + row)
    return Table(
        "Runs",
        cols,
        rows,
        "Step time: median over the timed steps (after warm-up); "
        "memory per device; ratios are measured ÷ predicted.",
    )


def failed_table(rec: Record) -> Table | None:
    failed = rec.runs[rec.runs["status"] != "ok"]
    if failed.empty:
        return None
    rows = []
    for _, r in failed.iterrows():
        error = " ".join(str(r["error"]).split()) or "(no message)"
        if len(error) > 600:
            error = error[:600] + " …"
        rows.append([r["label"], r["run_id"], r["status"], error])
    return Table("Failed runs", ["run", "run_id", "status", "error"], rows)


def environment_table(rec: Record) -> Table:
    cols = [
        "source",
        "device_kind",
        "platform",
        "n_devices",
        "n_processes",
        "jax_version",
        "flax_version",
        "git_sha",
        "hostname",
        "peak_source",
    ]
    env = rec.runs.copy()
    env[cols] = env[cols].astype(str)
    groups = (
        env.groupby(cols, sort=False)
        .agg(runs=("run_id", "size"), first=("started_at", "min"), last=("started_at", "max"))
        .reset_index()
    )
    rows = [
        [
            *(str(r[c]) for c in cols),
            str(r["runs"]),
            f"{r['first']} … {r['last']}" if r["first"] != r["last"] else str(r["first"]),
        ]
        for _, r in groups.iterrows()
    ]
    names = [
        "record",
        "device",
        "platform",
        "devices",
        "processes",
        "jax",
        "flax",
        "git",
        "host",
        "peak FLOP/s source",
        "runs",
        "started (UTC)",
    ]
    return Table("Environment", names, rows)


def fit_table(fit: ScalingFit) -> Table:
    rows = [
        ["E (nats)", f"{fit.E:.5g}", _fmt(fit.E_se, "{:.3g}")],
        ["A", f"{fit.A:.5g}", _fmt(fit.A_se, "{:.3g}")],
        ["α", f"{fit.alpha:.5g}", _fmt(fit.alpha_se, "{:.3g}")],
    ]
    return Table(
        "Scaling-law fit L(C) = E + A·C^(−α)",
        ["parameter", "value", "std. error"],
        rows,
        f"{fit.n_points} points, {fit.method}, RMS residual of log L {fit.rmse_log:.3g}.",
    )


def unmatched_table(current: Record, baseline: Record) -> Table | None:
    cur, base = set(_config_key(current.ok)), set(_config_key(baseline.ok))
    rows = [["current only", k.replace("|", " ")] for k in sorted(cur - base)]
    rows += [["baseline only", k.replace("|", " ")] for k in sorted(base - cur)]
    if not rows:
        return None
    return Table("Configurations without a match", ["in", " ".join(CONFIG_KEY)], rows)


# ---------------------------------------------------------------- the report


@dataclass
class Report:
    out: Path
    figures: list[FigureResult]
    tables: list[Table]
    notes: list[str]
    files: list[Path]
    record: Record
    fit: ScalingFit | None = None


FIGURES = (
    fig_loss_vs_step,
    fig_loss_vs_compute,
    fig_throughput,
    fig_step_time_vs_roofline,
    fig_memory_vs_estimate,
    fig_compile_time,
    fig_scaling_law,
    fig_mup_lr,
    fig_coord_check,
)


def default_out(first_dir: str | Path) -> Path:
    return Path("reports") / (Path(first_dir).resolve().name or "report")


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
    parts = [p for p in parts if p]
    bad = [p for p in parts if p not in FORMATS]
    if bad or not parts:
        raise ValueError(f"bad --format {','.join(bad) or text!r}; valid: {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(parts))


def build_report(
    dirs: Sequence[str | Path],
    out: str | Path | None = None,
    formats: Sequence[str] = FORMATS,
    baseline: str | Path | None = None,
) -> Report:
    """Load the records, draw every figure they have data for, write PNG + CSV per figure and
    the html/md pages. Raises ValueError on a missing, empty or foreign folder."""
    formats = parse_formats(formats)
    rec = load_record(*dirs)
    base = load_record(baseline) if baseline is not None else None
    out = Path(out) if out is not None else default_out(dirs[0])
    all_runs = rec.runs if base is None else pd.concat([rec.runs, base.runs])
    style = Style.of(all_runs["mode"], size_order(all_runs))
    notes = list(rec.notes)
    figures = [f for f in (fn(rec, style) for fn in FIGURES) if f is not None]
    fit, fit_note = scaling_fit_of(rec)
    if fit_note:
        notes.append(fit_note)
    tables = [summary_table(rec)]
    if fit is not None:
        tables.append(fit_table(fit))
    if base is not None:
        notes.extend(base.notes)
        figure = fig_baseline(rec, base, style)
        if figure is None:
            notes.append(f"Baseline {baseline}: no configuration matches this record's ok runs.")
        else:
            figures.append(figure)
            t = figure.data
            tables.append(
                Table(
                    f"Against the baseline ({baseline})",
                    [
                        "configuration",
                        "tokens/s",
                        "baseline tokens/s",
                        "ratio",
                        "MFU",
                        "baseline MFU",
                        "ratio",
                    ],
                    [
                        [
                            r["label"],
                            _fmt(r["tokens_per_s_current"], "{:,.0f}"),
                            _fmt(r["tokens_per_s_baseline"], "{:,.0f}"),
                            _fmt(r["tokens_per_s_ratio"], "{:.3f}"),
                            _fmt(r["mfu_current"] * 100, "{:.1f} %"),
                            _fmt(r["mfu_baseline"] * 100, "{:.1f} %"),
                            _fmt(r["mfu_ratio"], "{:.3f}"),
                        ]
                        for _, r in t.iterrows()
                    ],
                )
            )
        unmatched = unmatched_table(rec, base)
        if unmatched is not None:
            tables.append(unmatched)
    failed = failed_table(rec)
    if failed is not None:
        tables.append(failed)
    tables.append(environment_table(rec))
    if not any(f.name == "mup_lr" for f in figures) and rec.runs["mup"].any():
        notes.append("muP runs are recorded but lack d_model or final losses; no LR figure.")

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for f in figures:
        png, csv = out / f"{f.name}.png", out / f"{f.name}.csv"
        f.figure.savefig(png, dpi=DPI)
        f.data.to_csv(csv, index=False)
        files += [png, csv]
    report = Report(out, figures, tables, notes, files, rec, fit)
    title = "Sweep report: " + ", ".join(str(d) for d in dirs)
    if "html" in formats:
        path = out / "index.html"
        path.write_text(render_html(report, title, base_dir=baseline), encoding="utf-8")
        files.append(path)
    if "md" in formats:
        path = out / "report.md"
        path.write_text(render_markdown(report, title, base_dir=baseline), encoding="utf-8")
        files.append(path)
    return report


def _overview(report: Report, baseline) -> list[str]:
    runs = report.record.runs
    counts = runs["status"].value_counts()
    status = ", ".join(f"{n} {s}" for s, n in counts.items())
    lines = [f"{len(runs)} runs ({status}) from {', '.join(map(str, report.record.dirs))}."]
    if baseline is not None:
        lines.append(f"Baseline: {baseline}.")
    lines.append(
        "Generated "
        + _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        + " by scaling report, from the stored parquet record only."
    )
    return lines


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, title: str, base_dir=None) -> str:
    out = [f"# {title}", ""]
    out += [line for line in _overview(report, base_dir)] + [""]
    for note in report.notes:
        out.append(f"> **Note:** {note}")
        out.append("")
    out.append(f"## {report.tables[0].title}")
    out += _md_table(report.tables[0])
    out.append("## Figures")
    out.append("")
    for f in report.figures:
        out += [
            f"### {f.title}",
            "",
            f"![{f.title}]({f.name}.png)",
            "",
            f"{f.caption} Data: [{f.name}.csv]({f.name}.csv).",
            "",
        ]
    for table in report.tables[1:]:
        out.append(f"## {table.title}")
        out += _md_table(table)
    return "\n".join(out).rstrip() + "\n"


def _md_table(table: Table) -> list[str]:
    lines = [
        "",
        "| " + " | ".join(map(_md_cell, table.columns)) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
    if table.note:
        lines += ["", table.note]
    return lines + [""]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.text{text-align:left;max-width:40em;word-break:break-word}
figure{margin:1.2em 0}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;max-width:60em}.note{background:#fff7e0;
border-left:4px solid #e0b000;padding:.4em .8em}.status-bad{color:#b00020;font-weight:600}
nav a{margin-right:1em}
"""


def render_html(report: Report, title: str, base_dir=None) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    parts += [f"<p>{e(line)}</p>" for line in _overview(report, base_dir)]
    nav = [("runs", "Runs")] + [(f.name, f.title) for f in report.figures]
    parts.append("<nav>" + "".join(f"<a href='#{e(a)}'>{e(t)}</a>" for a, t in nav) + "</nav>")
    parts += [f"<p class='note'>{e(n)}</p>" for n in report.notes]
    parts.append(_html_table(report.tables[0], "runs"))
    parts.append("<h2>Figures</h2>")
    for f in report.figures:
        parts.append(
            f"<figure id='{e(f.name)}'><h3>{e(f.title)}</h3>"
            f"<img src='{e(f.name)}.png' alt='{e(f.title)}'>"
            f"<figcaption>{e(f.caption)} Data: <a href='{e(f.name)}.csv'>{e(f.name)}.csv</a>"
            "</figcaption></figure>"
        )
    for i, table in enumerate(report.tables[1:]):
        parts.append(_html_table(table, f"table-{i + 1}"))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_table(table: Table, anchor: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for col, value in zip(table.columns, row, strict=True):
            numeric = _looks_numeric(value)
            cls = "" if numeric else " class='text'"
            if col == "status" and value != "ok":
                cls = " class='text status-bad'"
            cells.append(f"<td{cls}>{e(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = f"<p>{e(table.note)}</p>" if table.note else ""
    return (
        f"<h2 id='{e(anchor)}'>{e(table.title)}</h2><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>{note}"
    )


def _looks_numeric(value: str) -> bool:
    text = str(value).replace(",", "").replace("%", "").strip()
    if text == "-":
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True
