"""`reports/notebooks/scaling_study.ipynb` runs in the default suite: its code cells are executed
in order in one namespace (as Jupyter would, without a kernel or nbclient, which only the
validate session installs), and its own checks against `reports/isoflop-cpu/fit.json` hold."""

from __future__ import annotations

import contextlib
import io
import json

from helpers import ROOT

NOTEBOOK = ROOT / "reports" / "notebooks" / "scaling_study.ipynb"


def test_scaling_study_notebook_executes(monkeypatch):
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    monkeypatch.chdir(NOTEBOOK.parent)
    namespace: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for cell in cells:
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), namespace)
    assert "the refit matches fit.json" in out.getvalue()
    assert namespace["study"].parametric.fit.n_points >= 6
