import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxcifar import checkpoint, progress, train
from jaxcifar.checkpoint import Checkpointer
from jaxcifar import testing
from jaxcifar.testing import EVAL_FLIPS, TRAJECTORY_RTOL, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to


def run_fit_subprocess(workdir, *overrides, devices=1):
    out = subprocess.run([sys.executable, str(REPO / "tests" / "fit_synthetic.py"), str(workdir), *overrides],
                         capture_output=True, text=True, env=testing.with_cpu_devices(devices), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def leaves(variables):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(variables)]


def test_fit_writes_summary_logs_and_checkpoints(tmp_path, tiny_data):
    summary = train.fit(tiny_config(keep_checkpoints=1, tensorboard=False), tmp_path, data=tiny_data)
    for key in ("test_accuracy", "epochs_completed", "wall_seconds", "train_images_per_second", "devices", "config"):
        assert key in summary
    assert summary["epochs_completed"] == 2
    assert summary["eval_examples"] == 77 and summary["steps"] == 2 * (256 // 32)
    assert json.loads((tmp_path / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]
    history = testing.read_history(tmp_path)
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert not (tmp_path / "tensorboard").exists()  # metrics.jsonl only: TensorBoard events were turned off
    # With nothing to select on, the summary reports the final weights: the last epoch's evaluation.
    assert summary["test_accuracy"] == history[-1]["eval_accuracy"] != history[0]["eval_accuracy"]
    # keep_checkpoints=1 keeps the latest; with no validation split nothing is selected, so no best
    ckpt = Checkpointer(tmp_path)
    assert ckpt.steps() == [16] and ckpt.best_step() is None
    assert summary["selection"] == {"split": None, "metric": None, "weights": "final", "step": 16, "epoch": 2}


@pytest.mark.tf("TensorBoard events")
def test_fit_writes_tensorboard_events(tiny_run_dir):
    assert list((tiny_run_dir[0] / "tensorboard").glob("events.out.tfevents.*"))


def test_training_learns_the_synthetic_task(tmp_path, tiny_data):
    summary = train.fit(tiny_config(epochs=6), tmp_path, data=tiny_data)
    assert summary["test_accuracy"] > 0.5  # chance is 0.1


def test_checkpoint_round_trip_restores_every_leaf(tmp_path, tiny_data):
    trainer = train.Trainer(tiny_config(), tmp_path, tiny_data)
    state, _ = trainer.restore_or_init()
    trainer.checkpointer.save(state, {"stage_index": 0, "history": [], "totals": {}})
    trainer.checkpointer.wait()
    target = jax.eval_shape(lambda s: s, state)
    restored, record = trainer.checkpointer.restore(0, target)
    assert record["stage_index"] == 0
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    for a, b in zip(leaves(restored), leaves(state)):
        np.testing.assert_array_equal(a, b)


def test_resume_continues_step_count_and_matches_uninterrupted_run(tmp_path, tiny_data):
    def crash_after_the_first_epoch(fit):
        testing.crash_after_saves(fit)
        assert Checkpointer(tmp_path / "resumed").steps() == [8]

    straight, _ = testing.assert_resumes_exactly(tiny_config(epochs=3), tmp_path, tiny_data, crash_after_the_first_epoch)
    assert straight["steps"] == 24 and straight["epochs_completed"] == 3


def test_same_seed_same_result_and_other_seed_differs(tmp_path, tiny_data):
    runs = {name: train.fit(tiny_config(epochs=1, seed=seed), tmp_path / name, data=tiny_data)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))}
    va, vb, vc = (leaves(checkpoint.load_variables(tmp_path / n, "latest")[0]) for n in "abc")
    assert all(np.array_equal(x, y) for x, y in zip(va, vb))
    assert runs["a"]["test_loss"] == runs["b"]["test_loss"]
    assert not all(np.array_equal(x, y) for x, y in zip(va, vc))


@pytest.mark.slow  # a fresh process
@pytest.mark.parametrize("resident_scan", [False, True], ids=["tf_data", "device_resident_scan"])
def test_eight_devices_give_the_same_losses_as_one(tmp_path, resident_scan):
    args = ["--config.eval_batch_size=40"]
    if resident_scan:  # batches gathered on the devices and each epoch one scan: same losses
        args += ["--config.data.device_resident=True", "--config.data.scan_epoch=True", "--config.tensorboard=False"]
    one = run_fit_subprocess(tmp_path / "one", *args)
    eight = run_fit_subprocess(tmp_path / "eight", *args, devices=8)
    assert one["summary"]["devices"] == 1 and eight["summary"]["devices"] == 8
    np.testing.assert_allclose(eight["train_loss"], one["train_loss"], rtol=TRAJECTORY_RTOL)
    assert abs(eight["summary"]["test_accuracy"] - one["summary"]["test_accuracy"]) <= EVAL_FLIPS


@pytest.mark.slow  # a fresh process
def test_one_step_on_eight_devices_equals_one_device_to_rounding():
    """The invariant behind the trajectory tests: the same state and global batch give the
    same update on 8 devices as on 1, up to float32 summation order. With SGD the update is
    lr * gradient, so the difference is the gradient's rounding: measured 7.5e-9 (half an ulp
    of the largest weight, 0.14), against a bound of 1e-6 (~130x). (Adam divides by the
    gradient's magnitude, which turns rounding in near-zero gradients into 5e-7: that is
    where the trajectory drift starts, not a different update.) An update from one device's
    rows only, what a missing gradient all-reduce would apply, is 9e-3 away."""
    result = testing.one_step_on_eight_devices_and_on_one("sgd(0.05, momentum=0.9)")
    assert result["devices"] == 8
    assert result["eight_vs_one"] <= 1e-6
    assert result["missing_all_reduce"] > 100 * 1e-6


def interrupt_after_a_checkpoint(cmd, workdir, env, after_step=0):
    """(stdout, stderr) of `cmd` stopped with Ctrl-C (SIGINT) once it has saved a checkpoint
    past `after_step`; fails unless it exits 130, as a shell expects of Ctrl-C."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while (Checkpointer(workdir).steps() or [0])[-1] <= after_step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    return out, err


def test_cli_trains_on_real_data_ctrl_c_saves_and_the_same_command_resumes(tmp_path, shared_data_dir):
    workdir = tmp_path / "w"
    cmd = [sys.executable, "-m", "jaxcifar.train", "--config", "simple_cnn", "--workdir", str(workdir),
           "--data_dir", shared_data_dir, "--config.epochs=200", "--config.data.examples_per_class=20",
           "--config.batch_size=50", "--config.data.eval_split=test[:100]", "--config.eval_batch_size=50"]
    env = {**os.environ, "JAXCIFAR_COMPILATION_CACHE": str(tmp_path / "xla_cache")}
    out, err = interrupt_after_a_checkpoint(cmd, workdir, env)
    assert "Stopped by SIGINT" in err and "checkpoint saved" in err and "resume" in err
    assert "tracked_metric" not in err  # no warning that reads like a failure
    first = next(line for line in out.splitlines() if line.startswith("epoch 1/200 [train]"))
    for part in ("train loss", "test[:100] loss", "acc", "img/s"):  # the split as the run names it
        assert part in first
    assert any((tmp_path / "xla_cache").iterdir())  # compiled steps persist for the next run
    stopped_at = Checkpointer(workdir).steps()[-1]
    _, err = interrupt_after_a_checkpoint(cmd, workdir, env, after_step=stopped_at)
    assert f"Resumed from step {stopped_at} " in err


def test_epoch_line_says_what_keras_says():
    entry = {"epoch": 3, "stage": "finetune", "train_loss": 1.23456, "train_accuracy": 0.5, "eval_loss": 0.9,
             "eval_accuracy": 0.615, "epoch_train_seconds": 12.34, "train_images_per_second": 4051.2}
    assert progress.epoch_line(entry, 10) == ("epoch 3/10 [finetune]  train loss 1.2346 acc 50.00%  |  "
                                           "eval loss 0.9000 acc 61.50%  |  12.3 s, 4,051 img/s")
    # The validation split comes first (it selects); each split is named as the run names it.
    data = tiny_config(data={"validation_fraction": 0.1}).data
    both = {**entry, "val_loss": 1.0, "val_accuracy": 0.5}
    assert "[finetune]  train loss 1.2346 acc 50.00%  |  train-validation loss 1.0000 acc 50.00%  |  " \
           "test loss 0.9000 acc 61.50%  |  12.3 s" in progress.epoch_line(both, 10, data_config=data)


def test_an_epoch_too_short_to_time_reports_no_speed(tmp_path, tiny_data):
    """One step per epoch: the step compiles, so no images are timed (once: 183,061 img/s)."""
    summary = train.fit(tiny_config(epochs=1, batch_size=256), tmp_path, data=tiny_data)
    entry = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert entry["train_images_per_second"] is None and summary["train_images_per_second"] is None
    assert "speed not measured" in progress.epoch_line(entry, 1)
    finished = progress.finished_line(summary, tmp_path)
    assert "speed not measured" in finished and "images/s" not in finished
