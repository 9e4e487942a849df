"""The report's pages: ``index.html`` (self-contained apart from the PNGs beside it) and
``report.md``, both from the same figures, tables and notes."""

from __future__ import annotations

import datetime as _dt
import html
from dataclasses import dataclass
from pathlib import Path

from scaling.laws.compute import ScalingFit
from scaling.report.axes import FigureResult
from scaling.report.record import Record
from scaling.report.tables import Table


@dataclass
class Report:
    out: Path
    figures: list[FigureResult]
    tables: list[Table]
    notes: list[str]
    files: list[Path]
    record: Record
    fit: ScalingFit | None = None


def _overview(report: Report, baseline) -> list[str]:
    sources = ", ".join(map(str, report.record.dirs))
    runs, decode = report.record.runs, report.record.decode
    parts = [("runs", runs)] if not runs.empty or decode is None else []  # none: decode only
    if decode is not None and not decode.empty:
        parts.append(("decode rows", decode))
    lines = []
    for what, rows in parts:
        counts = rows["status"].value_counts()
        status = ", ".join(f"{n} {s}" for s, n in counts.items())
        lines.append(f"{len(rows)} {what} ({status}) from {sources}.")
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
            cls = "" if _looks_numeric(value) else " class='text'"
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
