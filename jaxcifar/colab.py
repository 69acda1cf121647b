"""Install jaxcifar from the quickstart notebook on a Colab-like runtime.

The notebook's first cell loads this file straight from the checkout, before the package is
installed, so it uses the standard library only and imports nothing from jaxcifar.

Such a runtime already has JAX and TensorFlow, at versions of its own:

* TensorFlow: jaxcifar's `tf` extra (TFDS input, which the notebook reads) pins `tensorflow-cpu`,
  which installs the same `tensorflow` module as the runtime's `tensorflow` distribution and
  would overwrite it file by file. When a TensorFlow is importable, the package goes in with
  `--no-deps` and its other requirements are installed by name, so the runtime keeps its
  TensorFlow (jaxcifar uses it for tf.data only).
* JAX: pip keeps the runtime's JAX where it is within pyproject.toml's range and replaces it
  otherwise, with the `cuda` or `tpu` extra that matches the accelerator. A module the kernel
  had already imported stays at its old version until the runtime restarts, so `install`
  checks for that and says so.
"""

import importlib
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

RESTART = "Runtime > Restart session, then run the cells again"
TPU_DEVICE = pathlib.Path("/dev/accel0")  # TPU VMs (Colab's TPU runtimes included)
# Distributions that provide the `tensorflow` module; jaxcifar's pin is one of them.
TENSORFLOW_DISTRIBUTIONS = {"tensorflow", "tensorflow-cpu"}


def accelerator_extra() -> str:
    """The pip extra for this runtime's accelerator: "cuda", "tpu", or "" for CPU only.

    Decided from the machine, not from JAX: the installed JAX may be about to be replaced.
    """
    if shutil.which("nvidia-smi"):
        return "cuda"
    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME") or TPU_DEVICE.exists():
        return "tpu"
    return ""


def distribution_name(requirement: str) -> str:
    """The normalized (PEP 503) distribution name that a requirement string starts with."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(checkout: pathlib.Path, extras: list[str]) -> list[str]:
    """The checkout's dependencies, plus those of `extras`, as its pyproject.toml lists them."""
    import tomllib  # Python 3.11+ (Colab has 3.12); imported here so the rest of this module runs on 3.10

    project = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]


def install_commands(checkout: pathlib.Path, extra: str, keep_tensorflow: bool) -> list[list[str]]:
    """The pip commands that install `checkout` (editable) with the `tf` extra and the
    accelerator's `extra`, keeping an installed TensorFlow if asked."""
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    extras = ["tf", extra] if extra else ["tf"]
    if not keep_tensorflow:
        return [pip + ["-e", f"{checkout}[{','.join(extras)}]"]]
    requirements = [requirement for requirement in project_requirements(checkout, extras)
                    if distribution_name(requirement) not in TENSORFLOW_DISTRIBUTIONS]
    return [pip + ["--no-deps", "-e", str(checkout)], pip + requirements]


def imported_distributions() -> set[str]:
    """The distributions whose top-level modules this process has imported."""
    return {name for module, names in importlib.metadata.packages_distributions().items()
            if module in sys.modules for name in names}


def installed_versions(names) -> dict[str, str]:
    """Installed version of each of `names` that is installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass  # e.g. a module file that no installed distribution claims any more
    return versions


def restart_message(before: dict[str, str], after: dict[str, str]) -> str | None:
    """What to do if pip changed the version of a distribution the kernel had imported; None if nothing."""
    changed = [f"{name} {version} -> {after.get(name, 'removed')}"
               for name, version in sorted(before.items()) if after.get(name) != version]
    if not changed:
        return None
    return f"pip replaced packages this runtime had already imported ({', '.join(changed)}): {RESTART}."


def install(checkout: pathlib.Path) -> None:
    """pip-install `checkout` for this runtime; raises, so that "Run all" stops, if the runtime must restart."""
    extra = accelerator_extra()
    keep_tensorflow = importlib.util.find_spec("tensorflow") is not None
    if keep_tensorflow:
        print("A TensorFlow is already installed: keeping it instead of jaxcifar's tensorflow-cpu pin.")
    loaded = installed_versions(imported_distributions())  # before pip changes anything
    for command in install_commands(checkout, extra, keep_tensorflow):
        print("$", shlex.join(command))
        subprocess.run(command, check=True)
    importlib.invalidate_caches()  # let this process see what pip just wrote
    message = restart_message(loaded, installed_versions(loaded))
    if message:
        raise RuntimeError(message)
