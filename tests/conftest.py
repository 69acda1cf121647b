"""Shared fixtures: tiny synthetic splits and configs that train in seconds on a CPU."""

import os
import pathlib
import tempfile

import numpy as np
import pytest

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib

REPO = pathlib.Path(__file__).resolve().parents[1]

# Rounding bounds, measured by experiments/rounding_drift.py (experiments/results/rounding_drift.json).
# 8 devices, 2 processes and 1 device sum a batch's gradients in different float32 orders.
# One step then agrees to rounding (tests/test_train.py). Over the 16 steps of the
# synthetic runs the trajectory amplifies that: nudging every initial weight by one ulp on
# 1 device moves the per-epoch mean train losses by 7.5e-4 to 7.7e-4 relative with Adam
# (4 nudges) and by up to 6.7e-4 with SGD; 8 devices against 1 differ by 2.5e-4 on this
# project's AVX2 machines, where the old bound of 1e-4 failed. 5e-3 is 6.5x the largest
# amplification measured. A bug that feeds other batches or skips the gradient all-reduce
# changes the very first update, which the one-step test bounds at rounding level.
TRAJECTORY_RTOL = 5e-3
# An accuracy on 77 eval images may flip one or two borderline images under that drift.
EVAL_FLIPS = 2 / 77

SHARED_DATA = REPO.parent / "shared" / "tensorflow_datasets"

# One persistent XLA cache for the whole suite: both xdist workers and every subprocess they
# start (fit_synthetic.py, the CLIs) compile the same tiny steps, and each compiled once
# instead of in every fresh interpreter. A test that checks caching itself sets its own
# JAXCIFAR_COMPILATION_CACHE. The cache is keyed by the program, flags and devices, so it
# cannot hand a test another program's executable.
TEST_COMPILATION_CACHE = pathlib.Path(tempfile.gettempdir()) / f"jaxcifar-tests-xla-{os.getuid()}"
os.environ.setdefault("JAXCIFAR_COMPILATION_CACHE", str(TEST_COMPILATION_CACHE))


def pytest_configure(config):
    from jaxcifar import parallel

    parallel.configure_compilation_cache()
    config.addinivalue_line("markers", "slow: trains on the real data or in fresh processes; "
                                       "`make test-fast` leaves these out")


def pytest_collection_modifyitems(items):
    """Every test that reads the real data is slow (its own @pytest.mark.slow not needed)."""
    for item in items:
        if "shared_data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def synthetic_split(n: int, seed: int = 0) -> data_lib.ArraySplit:
    """Images whose mean brightness encodes the label, so a model can actually learn them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 32, 32, 3)) + (labels * 20)[:, None, None, None]
    return data_lib.ArraySplit(images.astype(np.uint8), labels)


def write_jpeg_pack(path, splits):
    """A pack in ../shared/cifar10_jpeg_pack.npz's layout, from {split: ArraySplit}."""
    import io

    from PIL import Image

    arrays = {}
    for name, split in splits.items():
        blobs = []
        for image in split.images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=95)
            blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
        arrays[f"{name}_jpeg"] = np.concatenate(blobs)
        arrays[f"{name}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        arrays[f"{name}_labels"] = split.labels.astype(np.uint8)
    np.savez(path, **arrays)


@pytest.fixture
def tiny_data():
    from jaxcifar.data import Data

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


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
    """(workdir, eval split, summary) of one tiny run on synthetic data (1 epoch of
    tiny_config), trained once per test process and shared by the evaluate, export, predict
    and serve tests. Read it; copy it before changing anything in it."""
    from jaxcifar import train

    workdir, eval_split = tmp_path_factory.mktemp("tiny_run"), synthetic_split(77, 1)
    summary = train.fit(tiny_config(epochs=1), workdir, data=data_lib.Data(synthetic_split(256, 0), eval_split, 10))
    return workdir, eval_split, summary


@pytest.fixture(scope="session")
def tiny_run(tiny_run_dir):
    """The shared tiny run, opened at its final checkpoint."""
    from jaxcifar import runs

    return runs.load_run(tiny_run_dir[0], "latest")
