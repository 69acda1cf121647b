"""experiments/device_check.py's dry run: every step of the GPU check at tiny size on the CPU,
so that the script cannot rot between the times a GPU is lent."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import numpy as np

from jaxcifar import xla_cpu
from jaxcifar.data import ArraySplit
from jaxcifar.testing import PRECISION_CURVE_ATOL, synthetic_split, write_jpeg_pack

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to


@pytest.fixture
def device_check(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    import device_check

    return device_check


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


def test_the_dry_run_samples_every_class_alike(pack, device_check):
    splits = device_check.load_pack(str(pack), dry_run=True)
    assert np.bincount(splits["train"].labels).tolist() == [8] * 10
    assert np.bincount(splits["test"].labels).tolist() == [4] * 10


def test_the_checks_time_guards_fit_its_minutes_on_the_device(device_check):
    every_step = device_check.planned_steps("airbench94_muon.py")
    assert {step.kind for step in every_step} == set(device_check.STEP_SECONDS)  # each kind of step is guarded
    assert device_check.plan_seconds(every_step, install=True) <= device_check.DEVICE_SECONDS


@pytest.mark.slow  # fresh processes; `make test` (CI) runs it
def test_the_device_checks_dry_run_records_every_step(pack, tmp_path, device_check):
    out = tmp_path / "device_check.json"
    # As a user runs it: the dry run sets its own fast compilation (xla_cpu.FAST_COMPILE), which
    # the suite's optimisation level (tests/conftest.py) would override (2.2x slower, measured).
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split() if flag not in xla_cpu.QUICK_COMPILE]
    env = {**os.environ, "XLA_FLAGS": " ".join(flags)}
    done = subprocess.run([sys.executable, str(REPO / "experiments/device_check.py"), "--dry-run", "--pack", str(pack),
                           "--airbench_script", str(tmp_path / "absent.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert "install" not in steps  # a dry run installs nothing
    assert "skipped" in steps.pop("airbench94_muon")
    for record in steps.values():
        assert "error" not in record, record
        assert record["step_wall_seconds"] > 0 and record["peak_host_bytes"] > 0
    for precision in device_check.PRECISIONS:
        record = steps[f"fast_muon_{precision}"]
        assert record["precision"] == precision and record["complete"]
        assert record["train_images"] == 80 and record["test_images"] == 40
        assert len(record["test_accuracy"]) == 1 and 0 <= record["final_accuracy_tta"] <= 1
        assert record["train_images_per_second"] > 0
        for recipe in (*device_check.SSL_RECIPES, *device_check.FEW_LABEL_RECIPES):
            record = steps[f"{recipe}_{precision}"]
            assert record["precision"] == precision and record["train_images_per_second"] > 0
            assert len(record["train_loss"]) == record["epochs"] and np.all(np.isfinite(record["train_loss"]))
        for recipe in device_check.SSL_RECIPES:
            assert steps[f"{recipe}_{precision}"]["train_images"] == 80  # every image, none labelled for it
        for recipe in device_check.FEW_LABEL_RECIPES:  # 2 labels per class, the other 60 images unlabelled
            assert steps[f"{recipe}_{precision}"]["train_images"] == 20
            assert steps[f"{recipe}_{precision}"]["unlabeled_images"] == 60
        assert steps[f"ssl_finetune_{precision}"]["epochs"] == 2  # a probe epoch, then a fine-tune epoch
        assert steps[f"ssl_student_{precision}"]["unlabeled_per_labelled"] == 2
    propagated = steps[device_check.PROPAGATED]
    assert propagated["labels"] == 20 and 0 <= propagated["unlabeled_accuracy"] <= 1
    curve = steps["loss_curve"]
    assert [len(curve["train_loss"][precision]) for precision in device_check.PRECISIONS] == [2, 2]
    assert curve["bound"] == PRECISION_CURVE_ATOL and curve["within_bound"]
    assert 0 < curve["max_abs_gap"] <= PRECISION_CURVE_ATOL  # not 0: the bfloat16 run computed in bfloat16
