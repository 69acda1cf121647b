"""Shared fixtures: tiny synthetic splits and configs that train in seconds on a CPU."""

import os
import pathlib

import numpy as np
import pytest

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "tensorflow_datasets"


def synthetic_split(n: int, seed: int = 0) -> data_lib.ArraySplit:
    """Images whose mean brightness encodes the label, so a model can actually learn them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 32, 32, 3)) + (labels * 20)[:, None, None, None]
    return data_lib.ArraySplit(images.astype(np.uint8), labels)


@pytest.fixture
def tiny_data():
    from jaxcifar.train import Data

    return Data(synthetic_split(256, 0), synthetic_split(77, 1), 10)


def tiny_config(**fields):
    """simple_cnn at toy scale; `fields` are recipe fields."""
    base = dict(model="simple_cnn", epochs=2, batch_size=32, eval_batch_size=20, optimizer="adam", lr=3e-3,
                weight_decay=0.0, warmup_epochs=0.0, log_every_steps=2)
    return config_lib.recipe(base, **fields)


@pytest.fixture
def shared_data_dir():
    if not (SHARED_DATA / "cifar10").is_dir():
        pytest.skip(f"prepared CIFAR-10 not found at {SHARED_DATA}")
    return str(SHARED_DATA)


@pytest.fixture(autouse=True)
def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class CrashAfterSave(Exception):
    """Raised right after a checkpoint is on disk, to simulate a crash between epochs."""


def crash_on_first_save(monkeypatch, fit):
    """Run `fit()` with Checkpointer.save raising once its first checkpoint is written."""
    from jaxcifar.checkpoint import Checkpointer

    original = Checkpointer.save

    def save_then_crash(self, state, record, metrics=None):
        original(self, state, record, metrics)
        self.wait()
        raise CrashAfterSave

    with monkeypatch.context() as patch:
        patch.setattr(Checkpointer, "save", save_then_crash)
        with pytest.raises(CrashAfterSave):
            fit()
