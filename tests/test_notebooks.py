"""Every notebook under notebooks/ runs top to bottom without an error, and draws its figures.

Each notebook runs in a fresh IPython kernel started with this interpreter (a kernelspec written
to a temporary folder, so that no kernel installed elsewhere on the machine is picked up), with
the environment and JAX configuration of tests/conftest.py (XLA's concurrency-optimised CPU
scheduler off, float64, synchronous CPU dispatch), but XLA's default optimisation level. The
numbers that matter are asserted inside the notebooks themselves (assert cells), so a wrong
result is a cell error here.

Notebooks are committed without outputs; set BAYESSSM_NOTEBOOK_OUT to a folder to keep the
executed copies (for the docs, or to look at the figures).
"""

import json
import os
import pathlib
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600
KERNEL = "bayesssm-tests"
XLA_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
# Run in the kernel before the first cell, as tests/conftest.py does in the test process.
STARTUP = (
    "import jax; "
    "jax.config.update('jax_enable_x64', True); "
    "jax.config.update('jax_cpu_enable_async_dispatch', False)"
)
# A code cell that calls one of these draws a figure and must show at least one image.
PLOTTING = re.compile(r"\b(?:plt\.(?:plot|subplots|figure)|bs\.plot_\w+|az\.plot_\w+|\.plot\()")


def _kernel_manager(folder: pathlib.Path) -> AsyncKernelManager:
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    # Without the test process's --xla_backend_optimization_level=0 (tests/conftest.py): the
    # notebooks' samplers run long enough for LLVM's optimisations to pay for themselves.
    xla_flags = " ".join(
        flag
        for flag in os.environ.get("XLA_FLAGS", "").split()
        if flag != "--xla_backend_optimization_level=0"
    )
    if XLA_FLAG not in xla_flags:
        xla_flags = (xla_flags + " " + XLA_FLAG).strip()
    kernel = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({sys.executable})",
        "language": "python",
        "env": {"XLA_FLAGS": xla_flags, "MPLBACKEND": "module://matplotlib_inline.backend_inline"},
    }
    (spec / "kernel.json").write_text(json.dumps(kernel))
    specs = KernelSpecManager(kernel_dirs=[str(folder / "kernels")], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def _code(cell) -> str:
    """The cell's source without comments, so that a commented-out call does not count."""
    return "\n".join(line.split("#", 1)[0] for line in cell.source.splitlines())


def _images(cell) -> int:
    return sum(
        1
        for output in cell.get("outputs", [])
        if output.get("output_type") in ("display_data", "execute_result")
        and "image/png" in output.get("data", {})
    )


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    stored = [
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not stored, f"{path.name}: clear the outputs of cells {stored} before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_draws(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        km=_kernel_manager(tmp_path),
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        extra_arguments=[f"--IPKernelApp.exec_lines={STARTUP}"],
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute()
    finally:
        out = os.environ.get("BAYESSSM_NOTEBOOK_OUT")
        if out:
            pathlib.Path(out).mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, pathlib.Path(out) / path.name)

    plotting = [
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and PLOTTING.search(_code(cell))
    ]
    assert plotting, f"{path.name} draws no figures"
    blank = [i for i in plotting if _images(notebook.cells[i]) < 1]
    assert not blank, f"{path.name}: plotting cells {blank} show no image"
