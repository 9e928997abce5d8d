"""Execute notebooks in place, top to bottom, in *this* interpreter, and save them with their outputs.

    python notebooks/execute.py                      # every notebook in notebooks/
    python notebooks/execute.py quickstart video_quota

The notebooks are committed with outputs so that their plots and overlays show on a repository page;
``tests/test_notebooks.py`` executes them again and checks that the saved text outputs are still what the
code prints. Run this after changing a notebook or the code it shows. Each notebook runs in its own
folder as the working directory, with a kernel that points at ``sys.executable`` (so it imports the
``vtr`` of this checkout, not whatever ``python`` is first on ``PATH``).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import nbclient

HERE = Path(__file__).resolve().parent
KERNEL = "vtr-notebooks-python"
CELL_TIMEOUT_S = 300  # a cold kernel on 2 shared cores imports torch + transformers slowly
#: what GitHub and Jupyter show as the kernel; the executing kernel is swapped in only while running
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
#: cells with this tag print what legitimately changes between runs (wall times): not compared
VOLATILE = "volatile"


def write_kernelspec(jupyter_dir: Path, name: str = KERNEL) -> str:
    """A kernelspec under ``jupyter_dir/kernels/name`` that runs ``sys.executable``; put ``jupyter_dir`` on
    ``JUPYTER_PATH`` (searched first) to use it. Returns the kernel name."""
    spec_dir = Path(jupyter_dir) / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"vtr ({sys.executable})", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return name


def execute(notebook, kernel_name: str, cwd: Path, timeout: int = CELL_TIMEOUT_S):
    """Run every cell of ``notebook`` (an ``nbformat`` node, changed in place) and return it.

    Raises ``nbclient.exceptions.CellExecutionError`` (with the cell's traceback) on the first error.
    Per-cell timing metadata is not recorded, and PNG stays the only copy of an image (PIL images also
    come as JPEG), so that a rerun with the same outputs saves the same file.
    """
    client = nbclient.NotebookClient(notebook, kernel_name=kernel_name, timeout=timeout, record_timing=False,
                                     resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    finally:
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                if "image/png" in output.get("data", {}):
                    output["data"].pop("image/jpeg", None)
        notebook.metadata["kernelspec"] = dict(KERNELSPEC)
        notebook.metadata.get("language_info", {}).pop("version", None)
    return notebook


def main(argv: list[str] | None = None) -> int:
    names = argv if argv is not None else sys.argv[1:]
    paths = [HERE / f"{n.removesuffix('.ipynb')}.ipynb" for n in names] or sorted(HERE.glob("*.ipynb"))
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        print(f"execute.py: error: no such notebook(s) in {HERE}: {', '.join(missing)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as jupyter_dir:
        kernel = write_kernelspec(Path(jupyter_dir))
        os.environ["JUPYTER_PATH"] = os.pathsep.join([jupyter_dir, os.environ.get("JUPYTER_PATH", "")])
        for path in paths:
            start = time.perf_counter()
            notebook = nbformat.read(path, as_version=4)
            try:
                execute(notebook, kernel, path.parent)
            finally:
                nbformat.write(notebook, path)  # saved even on error: the traceback shows in the file
            print(f"{path.name}: executed and saved in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
