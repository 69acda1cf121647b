"""A refactoring check: the parameter digest of a short straight run of each recipe on
synthetic data. Run it before and after a change that should not change any number (in two
checkouts) and compare the two outputs line by line.

    python experiments/recipe_digests.py [RECIPE ...] > digests.txt

Each recipe keeps its own network, optimizer, augmentation and method; only its length
(3 epochs, or 1 per stage) and its batch sizes shrink, on 64 synthetic training images. A
recipe that needs files from another run (ssl_student's propagated targets) or a
pretrained backbone's input size (resnet50_transfer) is left out by default.
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import tempfile

import jax
import numpy as np

from jaxcifar import checkpoint, config as config_lib, data as data_lib, train
from jaxcifar.testing import synthetic_split

DEFAULT_RECIPES = ("fast", "fast_muon", "simple_cnn", "resnet18", "ssl_simclr", "ssl_multicrop", "ssl_finetune")


def short_config(name: str):
    config = config_lib.load_recipe(name)
    config.batch_size, config.eval_batch_size, config.log_every_steps, config.epochs = 16, 20, 2, 3
    if config.stages:
        config.stages = tuple({**dict(stage), "epochs": 1} for stage in config.stages)
    return config


def digest(workdir: pathlib.Path) -> tuple[str, int]:
    """sha256 (16 hex digits) of every variable of the run's latest checkpoint, and its step."""
    variables, step = checkpoint.load_variables(workdir, "latest")
    leaves = jax.tree_util.tree_leaves(variables)
    return hashlib.sha256(b"".join(np.asarray(leaf).tobytes() for leaf in leaves)).hexdigest()[:16], step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", default=list(DEFAULT_RECIPES))
    args = parser.parse_args()
    data = data_lib.Data(synthetic_split(64, 0), synthetic_split(40, 1), 10)
    for name in args.recipes:
        with tempfile.TemporaryDirectory() as directory:
            train.fit(short_config(name), pathlib.Path(directory) / "run", data=data)
            value, step = digest(pathlib.Path(directory) / "run")
        print(f"{name} {value} step {step}", flush=True)


if __name__ == "__main__":
    main()
