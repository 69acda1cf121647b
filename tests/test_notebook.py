"""notebooks/quickstart.ipynb: executed headlessly, shrunk through its environment variables; and its install
cell (with jaxcifar/colab.py behind it) run as on a fresh Colab-like runtime, with pip and git faked."""

import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from jaxcifar import colab

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to

pytestmark = pytest.mark.slow  # a Jupyter kernel

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_end_to_end(tmp_path, shared_data_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    workdir = tmp_path / "run"
    for name, value in {"TFDS_DATA_DIR": shared_data_dir, "JAXCIFAR_NOTEBOOK_WORKDIR": str(workdir),
                        "JAXCIFAR_NOTEBOOK_EPOCHS": "1", "JAXCIFAR_NOTEBOOK_EXAMPLES_PER_CLASS": "20",
                        "JAXCIFAR_NOTEBOOK_TRAIN_SPLIT": "train[:1000]",
                        # the kernel runs in tmp_path, outside the checkout: let it import this tree
                        "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on a failing cell
    assert list((workdir / "eval").rglob("report.json"))  # eval/SPLIT/report.json
    shown = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
             if "image/png" in o.get("data", {})]
    assert len(shown) == 3  # confusion matrix, training curves, misclassified images


def test_notebook_links_resolve_outside_the_checkout():
    # Colab opens the notebook on its own, so a relative link such as ../README.md leads nowhere.
    text = "".join("".join(cell["source"]) for cell in json.loads(NOTEBOOK.read_text())["cells"]
                   if cell["cell_type"] == "markdown")
    assert all(target.startswith("https://") for target in re.findall(r"\]\(([^)]+)\)", text))


def run_install_cell(monkeypatch, cwd, *, tensorflow: bool) -> list[list[str]]:
    """Run the notebook's install cell as on a GPU runtime without jaxcifar; returns the commands it ran.

    Nothing is installed: the commands are recorded, and a `git clone` becomes a link to this checkout.
    """
    commands = []

    def run(command, check):
        commands.append(command)
        if command[:2] == ["git", "clone"]:
            os.symlink(REPO, command[-1])

    real_version, real_find_spec = importlib.metadata.version, importlib.util.find_spec

    def version(name):
        if name == "jaxcifar":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    def find_spec(name, *args):
        if name == "tensorflow":
            return importlib.machinery.ModuleSpec(name, None) if tensorflow else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cell puts the checkout in front
    monkeypatch.chdir(cwd)
    cell = next(cell for cell in json.loads(NOTEBOOK.read_text())["cells"] if cell["cell_type"] == "code")
    exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}, install cell", "exec"), {})
    return commands


def pip_command(*arguments) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "-q", *arguments]


def test_install_cell_outside_a_checkout_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXCIFAR_REPO_URL", raising=False)
    with pytest.raises(RuntimeError, match="set REPO_URL .*JAXCIFAR_REPO_URL"):
        run_install_cell(monkeypatch, tmp_path, tensorflow=True)


def test_install_cell_on_colab_clones_keeps_its_tensorflow_and_installs_jax_for_cuda(tmp_path, monkeypatch):
    project = pytest.importorskip("tomllib").loads((REPO / "pyproject.toml").read_text())["project"]
    monkeypatch.setenv("JAXCIFAR_REPO_URL", "https://example.org/jaxcifar.git")
    clone, install_package, install_requirements = run_install_cell(monkeypatch, tmp_path, tensorflow=True)
    checkout = tmp_path / "jaxcifar-checkout"
    # a folder named like the package, in the working directory, would shadow the installed package
    assert not checkout.name.isidentifier()
    assert clone == ["git", "clone", "--depth", "1", "https://example.org/jaxcifar.git", str(checkout)]
    assert install_package == pip_command("--no-deps", "-e", str(checkout))
    wanted = project["dependencies"] + project["optional-dependencies"]["tf"] + project["optional-dependencies"]["cuda"]
    assert install_requirements == pip_command(*(r for r in wanted if not r.startswith("tensorflow-cpu")))
    assert str(checkout) == sys.path[0]  # importable before the kernel restarts


def test_install_cell_in_a_checkout_without_tensorflow_installs_the_tf_and_cuda_extras(monkeypatch):
    assert run_install_cell(monkeypatch, REPO / "notebooks", tensorflow=False) == [pip_command("-e", f"{REPO}[tf,cuda]")]


@pytest.mark.parametrize("gpu, tpu_device, expected", [(True, True, "cuda"), (False, True, "tpu"),
                                                       (False, False, "")])
def test_accelerator_extra(gpu, tpu_device, expected, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if gpu and name == "nvidia-smi" else None)
    monkeypatch.setattr(colab, "TPU_DEVICE", tmp_path / "accel0")
    if tpu_device:
        colab.TPU_DEVICE.touch()
    for name in ("COLAB_TPU_ADDR", "TPU_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert colab.accelerator_extra() == expected


def test_requirements_are_matched_by_normalized_name():
    assert colab.distribution_name("tensorflow-cpu==2.21.0") == "tensorflow-cpu"
    assert colab.distribution_name("Orbax_Checkpoint==0.12.8") == "orbax-checkpoint"
    assert colab.distribution_name("jax[tpu]==0.10.2") == "jax"
    assert colab.distribution_name("tensorflow.cpu>=2") in colab.TENSORFLOW_DISTRIBUTIONS


def test_restart_message_names_what_changed_under_the_kernel():
    assert colab.restart_message({"jax": "0.10.2", "numpy": "2.0.2"}, {"jax": "0.10.2", "numpy": "2.0.2"}) is None
    message = colab.restart_message({"jax": "0.4.33", "numpy": "2.0.2"}, {"jax": "0.10.2", "numpy": "2.0.2"})
    assert message.endswith(f"(jax 0.4.33 -> 0.10.2): {colab.RESTART}.")


def test_install_stops_when_pip_replaces_a_jax_the_kernel_imported(monkeypatch):
    versions = {"jax": "0.4.33"}  # what Colab had, and the kernel imported
    monkeypatch.setattr(colab, "imported_distributions", lambda: {"jax"})
    monkeypatch.setattr(importlib.metadata, "version", versions.__getitem__)
    monkeypatch.setattr(subprocess, "run", lambda command, check: versions.update(jax="0.10.2"))
    with pytest.raises(RuntimeError, match=re.escape(colab.RESTART)):
        colab.install(REPO)
