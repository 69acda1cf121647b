"""Execute notebooks/quickstart.ipynb headlessly, shrunk through its environment variables."""

import os

import pytest

from tests.conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def test_quickstart_notebook_runs_end_to_end(tmp_path, shared_data_dir, monkeypatch):
    workdir = tmp_path / "run"
    for name, value in {"TFDS_DATA_DIR": shared_data_dir, "JAXCIFAR_NOTEBOOK_WORKDIR": str(workdir),
                        "JAXCIFAR_NOTEBOOK_EPOCHS": "1", "JAXCIFAR_NOTEBOOK_EXAMPLES_PER_CLASS": "20",
                        "JAXCIFAR_NOTEBOOK_TRAIN_SPLIT": "train[:1000]",
                        # the kernel runs in tmp_path, outside the checkout: let it import this tree
                        "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on a failing cell
    assert (workdir / "eval" / "report.json").is_file()
    shown = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
             if "image/png" in o.get("data", {})]
    assert len(shown) == 3  # confusion matrix, training curves, misclassified images
