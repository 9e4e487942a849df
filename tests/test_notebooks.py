"""The shipped notebooks run top to bottom (so they cannot rot). Part of the validate session:
they need transformers, CPU torch and nbclient; skipped without them."""

from __future__ import annotations

import pytest
from helpers import ROOT

pytestmark = pytest.mark.parity
nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbclient (nox -s validate)")
nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat (nox -s validate)")
pytest.importorskip("transformers", reason="the notebook needs transformers (nox -s validate)")


def test_hf_models_notebook_runs(tmp_path):
    notebook = nbformat.read(ROOT / "reports" / "notebooks" / "hf_models.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell (its asserts too)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(str(o.get("text", "")) + str(o.get("data", {})) for o in outputs)
    assert "fsdp_tp" in text and "final norm" in text
