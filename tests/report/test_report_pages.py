"""The html and md pages reference only files that exist and hold every run, failure and
environment detail of the record."""

from __future__ import annotations

import html.parser


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


def test_environment_groups_runs_whose_probe_medians_differ_into_one_row(tmp_path):
    from report_records import run, write

    from scaling.report.record import load_record
    from scaling.report.tables import environment_table

    probe = "cpu matmul probe (2048² f32), same process: median {:.1f} GFLOP/s of 9"
    peaks = [33.0e9, 21.8e9, 25.4e9]
    write(
        tmp_path,
        [
            run(f"p{i}", "tiny", "dp", peak_source=probe.format(p / 1e9), peak_flops_per_device=p)
            for i, p in enumerate(peaks)
        ]
        + [run("other", "tiny", "none", hostname="otherhost")],
    )
    table = environment_table(load_record(tmp_path))
    assert len(table.rows) == 2  # one per host, not one per probe median
    (probed,) = [r for r in table.rows if r[table.columns.index("host")] == "testhost"]
    assert probed[table.columns.index("runs")] == "3"
    assert "same process: median per run" in probed[table.columns.index("peak FLOP/s source")]
    assert probed[table.columns.index("peak GFLOP/s per device")] == "21.8 – 33.0"
