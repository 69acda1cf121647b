"""Helpers for testing jaxcifar, and methods written for it: synthetic splits and configs
that train in seconds on a CPU, crashes at a chosen checkpoint, and the check every
resumable feature must pass, that a run interrupted and resumed ends as one trained
straight through, to the bit.

    from jaxcifar import testing

    def test_my_method_resumes_exactly(tmp_path):
        config = testing.tiny_config(objective="my_method")
        testing.assert_resumes_exactly(config, tmp_path, testing.tiny_data())

Failures raise AssertionError, as numpy.testing's do, so any test runner reports them;
nothing here needs pytest.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import jax
import ml_collections
import numpy as np

from jaxcifar import checkpoint, train
from jaxcifar import config as config_lib
from jaxcifar import data as data_lib

# Rounding bounds, measured by experiments/rounding_drift.py (experiments/results/rounding_drift.json).
# 8 devices, 2 processes and 1 device sum a batch's gradients in different float32 orders.
# One step then agrees to rounding (`one_step_on_eight_devices_and_on_one`). Over the 16 steps of the
# synthetic runs the trajectory amplifies that: nudging every initial weight by one ulp on
# 1 device moves the per-epoch mean train losses by 7.5e-4 to 7.7e-4 relative with Adam
# (4 nudges) and by up to 6.7e-4 with SGD; 8 devices against 1 differ by 2.5e-4 on this
# project's AVX2 machines, where the old bound of 1e-4 failed. 5e-3 is 6.5x the largest
# amplification measured. A bug that feeds other batches or skips the gradient all-reduce
# changes the very first update, which the one-step check bounds at rounding level.
TRAJECTORY_RTOL = 5e-3
# An accuracy on `tiny_data`'s 77 eval images may flip one or two borderline images under that drift.
EVAL_FLIPS = 2 / 77

# The mixed-precision bound, which tests/test_precision.py holds the CPU to and
# experiments/device_check.py a GPU: the per-epoch mean train loss of `loss_curve` (tiny_config
# with these fields on tiny_data, 8 steps an epoch, 256 in all) at bfloat16 stays within
# PRECISION_CURVE_ATOL of float32's. Measured on a 2-core AVX2 machine (jax 0.10.2, 2026-12-04):
# the float32 curve falls from 1.94 to 0.022; the largest gap was 0.048 (epoch 10: 0.270 vs
# 0.222) with seed 0, the seed used here, and 0.015 (epoch 22) with seed 1. The bound is twice
# the largest. It is absolute, not relative: where the loss is small, the same small gaps are
# up to 18% of it.
PRECISION_CURVE = dict(epochs=32, optimizer="adam", lr=1e-3)
PRECISION_CURVE_ATOL = 0.1


# ----- data and configs -----
def synthetic_split(n: int, seed: int = 0) -> data_lib.ArraySplit:
    """`n` images whose mean brightness encodes the label, so a model can actually learn them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 32, 32, 3)) + (labels * 20)[:, None, None, None]
    return data_lib.ArraySplit(images.astype(np.uint8), labels)


def tiny_data() -> data_lib.Data:
    """256 train and 77 eval images of `synthetic_split`: 8 steps an epoch at `tiny_config`'s batch size."""
    return data_lib.Data(synthetic_split(256, 0), synthetic_split(77, 1), 10)


def tiny_config(**fields: Any) -> ml_collections.ConfigDict:
    """simple_cnn at toy scale; `fields` are recipe fields."""
    base = dict(model="simple_cnn", epochs=2, batch_size=32, eval_batch_size=20, optimizer="adam", lr=3e-3,
                weight_decay=0.0, warmup_epochs=0.0, log_every_steps=2)
    return config_lib.recipe(base, **fields)


def loss_curve(workdir: str | pathlib.Path, precision: str,
               epochs: int = PRECISION_CURVE["epochs"]) -> tuple[list[float], dict]:
    """(per-epoch mean train losses, summary) of the PRECISION_CURVE run at `precision` in
    `workdir`: at either precision the same seed, so the same initial weights and batches."""
    config = tiny_config(precision=precision, **{**PRECISION_CURVE, "epochs": epochs})
    summary = train.fit(config, workdir, data=tiny_data())
    return [entry["train_loss"] for entry in read_history(workdir)], summary


def tiny_ssl_config(method: str = "ssl_simclr", **fields: Any) -> ml_collections.ConfigDict:
    """A self-supervised recipe at toy scale: a narrow airbench and a small projector."""
    config = config_lib.load_recipe(method)
    config_lib.apply_dict(config, {"model_kwargs": {"widths": (8, 16, 16)}, "batch_size": 64, "eval_batch_size": 20,
                                   "epochs": 2, "log_every_steps": 2, "ssl": {"projector_dims": (32, 16)}, **fields})
    if "crops" in config.method:  # many-crop: fewer crops at toy scale
        config.method.crops = 4
    return config


def write_jpeg_pack(path: str | pathlib.Path, splits: dict[str, data_lib.ArraySplit]) -> None:
    """A pack in ../shared/cifar10_jpeg_pack.npz's layout (data.load_jpeg_pack), from {split: ArraySplit}."""
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


# ----- crashes -----
class CrashAfterSave(Exception):
    """Raised by `crash_after_saves` right after a checkpoint is on disk: a crash between epochs."""


@contextlib.contextmanager
def after_checkpoint(number: int, action: Callable[[], None]) -> Iterator[None]:
    """Within the block, `action()` runs right after the `number`-th checkpoint saved is on
    disk; it raises or exits the process: a crash at the moment a resume starts from."""
    original, saved = checkpoint.Checkpointer.save, []

    def save_then_act(self, *args, **kwargs):
        original(self, *args, **kwargs)
        saved.append(True)
        if len(saved) == number:
            self.wait()
            action()

    with mock.patch.object(checkpoint.Checkpointer, "save", save_then_act):
        yield


def crash_after_saves(fit: Callable[[], Any], saves: int = 1) -> None:
    """Run `fit()` until it crashes, right after its `saves`-th checkpoint is on disk. Fails if
    it ends first: a run that was never interrupted would make a resume test pass vacuously."""
    def crash() -> None:
        raise CrashAfterSave

    with after_checkpoint(saves, crash):
        try:
            fit()
        except CrashAfterSave:
            return
    raise AssertionError(f"The run ended before its checkpoint number {saves}: nothing was interrupted.")


# ----- exact resume -----
def untimed(record: dict) -> dict:
    """`record` (a summary or a metrics.jsonl entry) without its wall-clock fields, which no two runs share."""
    return {key: value for key, value in record.items() if not key.endswith(("_seconds", "_per_second"))}


def saved_steps(workdir: str | pathlib.Path) -> list[int]:
    """The steps of the checkpoints a workdir keeps, oldest first."""
    checkpointer = checkpoint.Checkpointer(workdir)
    try:
        return checkpointer.steps()
    finally:
        checkpointer.close()


def assert_same_checkpoints(a: str | pathlib.Path, b: str | pathlib.Path) -> None:
    """Workdirs `a` and `b` keep the same checkpoint steps, and each holds the same TrainState
    in every bit: parameters, BatchNorm statistics, optimizer, EMA and method state, step, RNG."""
    steps = [saved_steps(path) for path in (a, b)]
    if steps[0] != steps[1] or not steps[0]:
        raise AssertionError(f"Checkpoint steps differ or are missing: {steps[0]} in {a}, {steps[1]} in {b}.")
    for step in steps[0]:
        x, y = (checkpoint.load_state(path, step)[0] for path in (a, b))
        if jax.tree_util.tree_structure(x) != jax.tree_util.tree_structure(y):
            raise AssertionError(f"The TrainStates at step {step} differ in structure.")
        for (path, leaf), other in zip(jax.tree_util.tree_leaves_with_path(x), jax.tree_util.tree_leaves(y)):
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(other),
                                          err_msg=f"step {step}, {jax.tree_util.keystr(path)}")


def read_history(workdir: str | pathlib.Path) -> list[dict]:
    """The run's per-epoch metrics (metrics.jsonl), in order."""
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def assert_resumes_exactly(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, data: data_lib.Data,
                           interrupt: Callable[[Callable[[], dict]], None] = crash_after_saves) -> tuple[dict, dict]:
    """Train `config` on `data` straight through in WORKDIR/straight, and in WORKDIR/resumed
    first interrupted, then resumed to the end; assert that both end alike: the same
    checkpoints to the bit (`assert_same_checkpoints`), the same summary and the same
    per-epoch metrics, all but their timings.

    `interrupt(fit)` makes the first attempt (`fit()` trains in WORKDIR/resumed) and leaves
    that workdir as a failure would; by default the run crashes right after its first
    checkpoint is on disk. Returns the (straight, resumed) summaries for a test's own checks."""
    workdir = pathlib.Path(workdir)

    def fit(name: str) -> dict:
        return train.fit(config, workdir / name, data=data)

    straight = fit("straight")
    interrupt(lambda: fit("resumed"))
    resumed = fit("resumed")
    assert_same_checkpoints(workdir / "straight", workdir / "resumed")
    if untimed(resumed) != untimed(straight):
        raise AssertionError(f"Summaries differ:\nstraight {untimed(straight)}\nresumed  {untimed(resumed)}")
    histories = [[untimed(entry) for entry in read_history(workdir / name)] for name in ("straight", "resumed")]
    if histories[0] != histories[1]:
        raise AssertionError(f"Per-epoch metrics differ:\nstraight {histories[0]}\nresumed  {histories[1]}")
    return straight, resumed


# ----- devices -----
ONE_STEP_ON_8_DEVICES_AND_ON_1 = """
import json
import jax, numpy as np, optax
from jaxcifar import parallel, steps
from jaxcifar.methods.base import StageContext
from jaxcifar.methods.classification import Classification
from jaxcifar.models import create_model
from jaxcifar.testing import synthetic_split, tiny_config

model, tx = create_model("simple_cnn"), optax.{optimizer}
state = steps.create_state(model, jax.random.key(0))
state = state.replace(opt_state=tx.init(state.params))
step = jax.jit(Classification(tiny_config(), 10, model).train_step(tx, StageContext(steps_per_epoch=8)))
data = synthetic_split(32, 0)
batch = {{"image": data.images, "label": data.labels}}
mesh = parallel.make_mesh()
on_eight = step(jax.device_put(state, parallel.replicated(mesh)), jax.device_put(batch, parallel.batch_sharding(mesh)))[0]
on_one = step(jax.device_put(state, jax.devices()[0]), jax.device_put(batch, jax.devices()[0]))[0]
first_device_rows = step(state, {{k: v[:4] for k, v in batch.items()}})[0]  # gradients not summed over devices

def difference(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)))

print(json.dumps({{"devices": jax.device_count(), "eight_vs_one": difference(on_eight, on_one),
                  "missing_all_reduce": difference(first_device_rows, on_one)}}))
"""


DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def with_cpu_devices(count: int) -> dict[str, str]:
    """This process's environment for a child process whose XLA:CPU shows `count` virtual
    devices, its other XLA flags kept (the suite's fast compilation, a user's own): a child
    compared with another must differ only in its devices."""
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split() if not flag.startswith(DEVICE_COUNT_FLAG)]
    return {**os.environ, "XLA_FLAGS": " ".join([*flags, f"{DEVICE_COUNT_FLAG}={count}"])}


def one_step_on_eight_devices_and_on_one(optimizer: str) -> dict:
    """Max weight differences after one supervised step of `optax.OPTIMIZER` (e.g.
    "sgd(0.05, momentum=0.9)"), in a fresh process with 8 virtual CPU devices: 8 devices
    against 1 ("eight_vs_one"), and one device's rows only against all rows
    ("missing_all_reduce", what a step that forgot to sum gradients over devices would do)."""
    out = subprocess.run([sys.executable, "-c", ONE_STEP_ON_8_DEVICES_AND_ON_1.format(optimizer=optimizer)],
                         capture_output=True, text=True, timeout=300, env=with_cpu_devices(8))
    if out.returncode:
        raise RuntimeError(f"The one-step comparison failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
