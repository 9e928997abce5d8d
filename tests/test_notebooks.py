"""Every notebook in ``notebooks/`` executes top to bottom without errors, in this interpreter.

The kernel is a kernelspec written to a temporary Jupyter path that points at ``sys.executable``,
so the notebooks import the ``vtr`` under test and not whatever ``python`` is first on ``PATH``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
KERNEL = "vtr-test-python"
CELL_TIMEOUT_S = 300  # a cold kernel on 2 shared cores imports torch + transformers slowly


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory) -> str:
    spec_dir = tmp_path_factory.mktemp("jupyter") / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"vtr tests ({sys.executable})",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    mp = pytest.MonkeyPatch()
    # Jupyter searches JUPYTER_PATH first; the spec above then wins over any installed "python3".
    mp.setenv("JUPYTER_PATH", str(spec_dir.parent.parent))
    yield KERNEL
    mp.undo()


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb files"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count"))]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_without_errors(path, kernel_name):
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, kernel_name=kernel_name, timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(path.parent)}},  # the notebook's own folder as cwd
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, on the first error
    errors = [out for cell in notebook.cells if cell.cell_type == "code"
              for out in cell.outputs if out.output_type == "error"]
    assert not errors
    executable = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    assert all(cell.execution_count for cell in executable), "some cells did not run"
