"""How the package is installed: what `make train`, `make test` and `make test-latest` pull
in, the version ranges they test, and imports that can't be shadowed by folders in the
working directory."""

import pathlib
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to


def make_dry_run(target: str) -> str:
    """The commands `make TARGET` would run from scratch (-B: as if nothing were built yet)."""
    return subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_make_train_installs_the_package_with_tensorflow_and_make_test_adds_the_test_extras():
    train = make_dry_run("train")
    assert 'pip install --quiet -c constraints.txt -e ".[tf]"' in train and "test" not in train
    assert 'pip install --quiet -c constraints.txt -e ".[test]"' in make_dry_run("test")


def project() -> dict:
    return pytest.importorskip("tomllib").loads((REPO / "pyproject.toml").read_text())["project"]


def test_the_constraints_pin_the_lower_end_of_each_range():
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    lower_ends = {}
    for requirement in map(Requirement, project()["dependencies"]):
        bounds = {spec.operator: spec.version for spec in requirement.specifier}
        if "<" in bounds:  # a tested range (a bare floor such as numpy>=2.0 is no range)
            lower_ends[requirement.name] = bounds[">="]
    assert {name: version for name, version in pins.items() if name != "jaxlib"} == lower_ends
    assert pins["jaxlib"] == pins["jax"]


def requirements_of(extra: str) -> set[str]:
    """Every distribution `pip install -e ".[extra]"` asks for by name, the package's own extras followed."""
    names, extras, seen = {Requirement(r).name for r in project()["dependencies"]}, [extra], set()
    while extras:
        name = extras.pop()
        seen.add(name)
        for requirement in map(Requirement, project()["optional-dependencies"][name]):
            if requirement.name == "jaxcifar":
                extras += sorted(requirement.extras - seen)
            else:
                names.add(requirement.name)
    return names


def test_make_test_latest_installs_the_newest_releases_and_no_tensorflow():
    latest = make_dry_run("test-latest")
    assert 'pip install --quiet -e ".[test-base]"' in latest and "constraints" not in latest
    assert not requirements_of("test-base") & {"tensorflow", "tensorflow-cpu", "tensorflow-datasets", "tensorboard"}
    assert {"tensorflow-cpu", "tensorflow-datasets"} <= requirements_of("test")


def test_a_jaxcifar_folder_in_the_working_directory_does_not_shadow_the_package(tmp_path):
    # What a user sees from the parent of a clone named `jaxcifar` holding a `runs/` output folder.
    (tmp_path / "jaxcifar" / "runs").mkdir(parents=True)
    out = subprocess.run([sys.executable, "-c", "from jaxcifar import runs; print(runs.__file__)"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(REPO / "jaxcifar" / "runs.py")


def test_the_outputs_the_readme_commands_write_are_git_ignored():
    for path in ("runs/cnn/summary.json", "exported/cnn/model.stablehlo"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0, f"{path} is not ignored"
