"""The walkthrough notebook runs end to end (executed with nbclient), so it never rots."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.fail(
            "no 'python3' Jupyter kernel is installed (pip install -e '.[test]' brings ipykernel)"
        )
    return "python3"


@pytest.mark.slow
def test_walkthrough_notebook_executes(tmp_path: Path) -> None:
    kernel = _kernel()
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=180, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors, errors
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
    ]
    assert len(images) >= 5, "the notebook should show its figures inline"
    text = "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    assert "ibp" in text and "tightest" in text


def test_notebook_explains_every_figure() -> None:
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    shown = sum(c.source.count("display(Image(") for c in nb.cells if c.cell_type == "code")
    explained = sum(
        1 for c in nb.cells if c.cell_type == "markdown" and c.source.lstrip().startswith("**")
    )
    assert shown >= 5 and explained >= shown
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs"
    )
