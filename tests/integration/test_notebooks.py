"""Execute every notebook in notebooks/ top to bottom and fail on any error.

The kernel is this interpreter (a kernel spec written for the test, so no
installed ``python3`` spec can point elsewhere), with the checkout first on
its path, so the notebooks run the Stem under test.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL_NAME = "stem-under-test"
# Seconds one cell may take; the slowest cell takes a few seconds.
CELL_TIMEOUT_S = 120

# A cell appended to each notebook's copy, to check which Stem it ran.
WHICH_STEM = "import stem; print(stem.__file__)"


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """Provide a kernel spec that starts an IPython kernel on this interpreter."""
    kernels = tmp_path_factory.mktemp("kernels")
    folder = kernels / KERNEL_NAME
    folder.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Stem under test",
        "language": "python",
    }
    (folder / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kernels)])


def test_notebooks_are_found() -> None:
    assert [path.name for path in NOTEBOOKS] == [
        "01-building-pipelines.ipynb",
        "02-watching-runs.ipynb",
        "03-property-testing.ipynb",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_without_error(
    path: Path, kernel_specs: KernelSpecManager, tmp_path: Path
) -> None:
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(WHICH_STEM))
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_specs)
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=CELL_TIMEOUT_S,
        # The kernel's working folder, where Hypothesis writes its .hypothesis.
        resources={"metadata": {"path": str(tmp_path)}},
    )
    inherited = os.environ.get("PYTHONPATH")
    python_path = str(ROOT) if not inherited else f"{ROOT}{os.pathsep}{inherited}"
    env = {**os.environ, "PYTHONPATH": python_path}

    # Raises CellExecutionError, with the cell and its traceback, on any error.
    # The client shuts the kernel down and closes its sockets only when asked
    # to, because the test made the kernel manager.
    client.execute(env=env, cleanup_kc=True)

    stem_file = notebook.cells[-1].outputs[0]["text"].strip()
    assert Path(stem_file).resolve() == ROOT / "stem" / "__init__.py"
    pictures = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/svg+xml" in output.get("data", {})
    ]
    assert pictures, f"{path.name} shows no picture of a run."
