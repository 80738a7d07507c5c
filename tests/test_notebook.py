"""notebooks/walkthrough.ipynb runs from top to bottom (nbclient), as CI runs it.

The notebook uses LIDC-IDRI-0001 from ../shared/data when it is there, else a synthetic
patient; the test checks that it took the path this machine calls for, that every figure
was produced and that the lungs were found.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip(
    "nbformat", reason="the test extra (nbformat, nbclient, ipykernel) is not installed"
)
nbclient = pytest.importorskip(
    "nbclient", reason="the test extra (nbformat, nbclient, ipykernel) is not installed"
)
pytest.importorskip(
    "ipykernel", reason="the test extra (nbformat, nbclient, ipykernel) is not installed"
)

REPO = Path(__file__).resolve().parents[1]
#: Where the notebook looks for LIDC-IDRI-0001 (as tests/conftest.py; the kernel inherits
#: this process's environment, DSBPREP_SHARED_DATA included).
SHARED_DATA = Path(os.environ.get("DSBPREP_SHARED_DATA", REPO.parent / "shared" / "data"))
NOTEBOOK = REPO / "notebooks" / "walkthrough.ipynb"
#: Seconds one cell may take (the build of one patient is the slowest, ~15 s here).
CELL_TIMEOUT_S = 300


def _outputs(nb, kind: str) -> list:
    return [
        o
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if kind in o.get("data", {}) or (kind == "stream" and o.get("output_type") == "stream")
    ]


@pytest.mark.slow
def test_walkthrough_notebook_executes():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        "commit the notebook without outputs (CI executes it)"
    )
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    text = "".join(o.get("text", "") for o in _outputs(nb, "stream"))
    real = (SHARED_DATA / "lidc-idri" / "LIDC-IDRI-0001").is_dir()
    assert ("real data:" in text) == real and ("SYNTHETIC" in text) == (not real)
    assert "found 2 lungs" in text
    assert "built 1, skipped 0" in text
    if real:
        assert "LIDC-IDRI-0001" in text
    # HU, stages, training volume, case figure, report montage, patches
    assert len(_outputs(nb, "image/png")) >= 6
