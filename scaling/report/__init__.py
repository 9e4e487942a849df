"""Figures, tables and html/md reports from sweep records. Never imports jax, never re-runs.

``build_report(dirs, out)`` reads the parquet record of one or more sweep directories (see
``scaling.records``) and writes into ``out``:

* ``index.html`` (self-contained apart from the PNGs beside it) and ``report.md``;
* one ``<figure>.png`` per figure the record has data for, and beside each a ``<figure>.csv``
  holding exactly the data plotted.

Every figure function takes the loaded :class:`Record` and the report's :class:`Style` and
returns a :class:`FigureResult` (the matplotlib Figure and its data) or ``None`` when the record
lacks the data. A run has one colour, marker and line style across all figures (``style``).

Modules: ``record`` (loading), ``style``, ``axes`` (helpers shared by the figures), one module
per figure family (``loss``, ``performance``, ``predicted``, ``scaling_law``, ``mup``,
``baseline``), ``tables``, ``pages`` (html/md) and ``build``
(the figure registry ``FIGURES`` and ``build_report``). A new figure is a function in its
family module and an entry in ``FIGURES``.
"""

from scaling.laws.compute import ScalingFit, fit_scaling_law
from scaling.report.axes import FigureResult
from scaling.report.build import FIGURES, FORMATS, build_report, default_out, parse_formats
from scaling.report.mup import coord_check_figure, coord_check_result
from scaling.report.pages import Report, render_html, render_markdown
from scaling.report.record import Record, load_record, size_order
from scaling.report.scaling_law import scaling_fit_of
from scaling.report.style import COLOR_AXES, MARKERS, MODE_COLORS, Style
from scaling.report.tables import Table

__all__ = [
    "FIGURES",
    "FORMATS",
    "MODE_COLORS",
    "MARKERS",
    "COLOR_AXES",
    "FigureResult",
    "Record",
    "Report",
    "ScalingFit",
    "Style",
    "Table",
    "build_report",
    "coord_check_figure",
    "coord_check_result",
    "default_out",
    "fit_scaling_law",
    "load_record",
    "parse_formats",
    "render_html",
    "render_markdown",
    "scaling_fit_of",
    "size_order",
]
