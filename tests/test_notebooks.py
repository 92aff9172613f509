"""The quickstart notebooks run top to bottom offline on the bundled models (small budgets), and are
in sync with notebooks/make_notebooks.py."""

import math
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


# a line each notebook computes and prints, and a check of its numbers
COMPUTED = {
    "vision_quickstart.ipynb": (r"logit (-?[\d.]+); p\(Egyptian cat\) = ([\d.]+)", lambda logit, p: 0 <= p <= 1),
    "language_quickstart.ipynb": (r"corpus median cross-entropy: ([\d.]+)", lambda median: 0 < median < 20),
    "sae_quickstart.ipynb": (r"held-out: FVE (-?[\d.]+), L0 ([\d.]+)", lambda fve, l0: fve <= 1 and 0 < l0 <= 8),
}


@pytest.mark.real
@pytest.mark.parametrize("name", ["vision_quickstart.ipynb", "language_quickstart.ipynb", "sae_quickstart.ipynb"])
def test_notebook_runs_top_to_bottom(name, monkeypatch, tmp_path):
    monkeypatch.setenv("DREAMY_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors
    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
                      if o.output_type == "stream")
    pattern, check = COMPUTED[name]
    found = re.search(pattern, printed)
    assert found, f"{name} did not print {pattern!r}: {printed[-500:]}"
    numbers = [float(group) for group in found.groups()]
    assert all(math.isfinite(n) for n in numbers) and check(*numbers), found.group(0)


def test_committed_notebooks_match_their_sources():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(module.NOTEBOOKS) == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    for name, cells in module.NOTEBOOKS.items():
        committed = nbformat.read(NOTEBOOKS / name, as_version=4)
        assert [c.source for c in committed.cells] == [c.source for c in cells], f"rerun notebooks/make_notebooks.py ({name})"
        assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code"), f"{name} was committed with outputs"
