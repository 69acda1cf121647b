"""experiments/device_check.py's dry run: every step of the GPU check at tiny size on the CPU,
so that the script cannot rot between the times a GPU is lent."""

import json
import pathlib
import subprocess
import sys

import pytest

import numpy as np

from jaxcifar.data import ArraySplit
from jaxcifar.testing import synthetic_split, write_jpeg_pack

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to


def sorted_by_class(split: ArraySplit) -> ArraySplit:
    """The split in class order, as ../shared/cifar10_jpeg_pack.npz stores its images."""
    order = np.argsort(split.labels, kind="stable")
    return ArraySplit(split.images[order], split.labels[order])


@pytest.fixture
def pack(tmp_path):
    """A pack sorted by class, with at least 8 train and 4 test images of each class."""
    path = tmp_path / "pack.npz"
    write_jpeg_pack(path, {"train": sorted_by_class(synthetic_split(200, 0)),
                           "test": sorted_by_class(synthetic_split(100, 1))})
    return path


def test_the_dry_run_samples_every_class_alike(pack, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    import device_check

    splits = device_check.load_pack(str(pack), dry_run=True)
    assert np.bincount(splits["train"].labels).tolist() == [8] * 10
    assert np.bincount(splits["test"].labels).tolist() == [4] * 10


@pytest.mark.slow  # a fresh process; `make test` (CI) runs it
def test_the_device_checks_dry_run_records_every_step(pack, tmp_path):
    out = tmp_path / "device_check.json"
    done = subprocess.run([sys.executable, str(REPO / "experiments/device_check.py"), "--dry-run", "--pack", str(pack),
                           "--airbench_script", str(tmp_path / "absent.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert "install" not in steps  # a dry run installs nothing
    for precision in ("float32", "bfloat16"):
        record = steps[f"fast_muon_{precision}"]
        assert "error" not in record, record
        assert record["precision"] == precision and record["complete"]
        assert record["train_images"] == 80 and record["test_images"] == 40
        assert len(record["test_accuracy"]) == 1 and 0 <= record["final_accuracy_tta"] <= 1
        assert record["train_images_per_second"] > 0 and record["peak_host_bytes"] > 0
    assert "skipped" in steps["airbench94_muon"]
