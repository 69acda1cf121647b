"""How the package is installed: what `make train` pulls in, and imports that can't be
shadowed by folders in the working directory."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to



def make_dry_run(target: str) -> str:
    """The commands `make TARGET` would run from scratch (-B: as if nothing were built yet)."""
    return subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_make_train_installs_only_the_package_and_make_test_adds_the_test_extras():
    train = make_dry_run("train")
    assert "pip install --quiet -e ." in train and "[test]" not in train and "torch" not in train
    assert 'pip install --quiet -e ".[test]"' in make_dry_run("test")


def test_a_jaxcifar_folder_in_the_working_directory_does_not_shadow_the_package(tmp_path):
    # What a user sees from the parent of a clone named `jaxcifar` holding a `runs/` output folder.
    (tmp_path / "jaxcifar" / "runs").mkdir(parents=True)
    out = subprocess.run([sys.executable, "-c", "from jaxcifar import runs; print(runs.__file__)"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(REPO / "jaxcifar" / "runs.py")


def test_the_outputs_the_readme_commands_write_are_git_ignored():
    for path in ("runs/cnn/summary.json", "exported/cnn/model.stablehlo"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0, f"{path} is not ignored"
