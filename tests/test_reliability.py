"""Crash safety: exact resume after SIGKILL, SIGTERM saves, restore on another device
count, two-process data parallelism and stops, and clear errors that lose nothing."""

import functools
import json
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcifar import checkpoint, steps, testing, train
from jaxcifar.checkpoint import Checkpointer
from jaxcifar.models import create_model
from jaxcifar.testing import TRAJECTORY_RTOL, tiny_config
from jaxcifar.workdir import Workdir

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to

SCRIPT = str(REPO / "tests" / "fit_synthetic.py")

# These tests' processes crash, stop and resume the training loop; how batches reach it is not
# their subject. So they keep the train split on the device (the same batches as tf.data, bit
# for bit: tests/test_fast.py) and write no TensorBoard events, and none imports TensorFlow,
# about 6 s of each of some 30 processes. The two-process comparison keeps tf.data, where
# each process streams only its own rows.
WITHOUT_TENSORFLOW = ("--config.data.device_resident=True", "--config.tensorboard=False")
# The run that the SIGKILL and SIGTERM tests interrupt and `uninterrupted_run` trains straight
# through: 8 epochs of 8 steps leave a signal sent after the first checkpoint time to land mid-run.
# log_every_steps=1 syncs the loop with the device every step, so a SIGTERM lands at any step, mostly
# mid-epoch (syncing every 2 steps, 2 of 4 tries stopped at an epoch's end).
INTERRUPTED_ARGS = ("--config.epochs=8", "--config.log_every_steps=1", *WITHOUT_TENSORFLOW)
# The runs compared up to rounding drift, which testing.TRAJECTORY_RTOL bounds over 2 epochs: the
# first 2 of 8 epochs, at a higher learning rate, drifted 3.2e-3 from 1 device to 2 processes. An
# eval batch of 40 splits over 8 devices and over 2 processes.
DRIFT_ARGS = ("--config.epochs=2", "--config.eval_batch_size=40")


def start(workdir, *args, devices=1, env=None):
    """fit_synthetic.py in a fresh process on `devices` CPU devices, `env` added to its environment."""
    return subprocess.Popen([sys.executable, SCRIPT, str(workdir), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**testing.with_cpu_devices(devices), **(env or {})})


def result(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[len("RESULT "):])


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    """RESULT of INTERRUPTED_ARGS trained straight through: what an interrupted run must resume to."""
    return result(start(tmp_path_factory.mktemp("uninterrupted"), *INTERRUPTED_ARGS))


def checkpoint_entries(workdir):
    d = workdir / "checkpoints"
    return len(list(d.iterdir())) if d.is_dir() else 0


def wait_for_progress(proc, workdir, entries_before, timeout=120):
    deadline = time.time() + timeout
    while checkpoint_entries(workdir) <= entries_before and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)


@pytest.mark.slow  # fresh processes
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, uninterrupted_run):
    rng = random.Random(os.environ.get("PYTEST_SEED", time.time()))
    workdir = tmp_path / "killed"
    for _ in range(3):  # three kills, each at a random moment during or just after a checkpoint write
        proc = start(workdir, *INTERRUPTED_ARGS)
        wait_for_progress(proc, workdir, checkpoint_entries(workdir))
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = result(start(workdir, *INTERRUPTED_ARGS))
    assert resumed["summary"]["steps"] == uninterrupted_run["summary"]["steps"] == 64
    assert resumed["digest"] == uninterrupted_run["digest"]
    assert resumed["summary"]["test_loss"] == uninterrupted_run["summary"]["test_loss"]


@pytest.mark.slow  # fresh processes
def test_sigterm_saves_mid_epoch_and_resume_matches(tmp_path, uninterrupted_run):
    workdir = tmp_path / "term"
    proc = start(workdir, *INTERRUPTED_ARGS)
    wait_for_progress(proc, workdir, 0)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "checkpoint saved" in err
    assert "tracked_metric" not in err  # Orbax's warning about a save without eval metrics reads like a failure
    # The stop saved where it stopped; mid-epoch (8 steps an epoch), with that epoch's partial sums.
    stopped_at = int(re.search(r"Stopped by SIGTERM at step (\d+)", err).group(1))
    assert Checkpointer(workdir).steps()[-1] == stopped_at
    if stopped_at % 8:
        assert "partial_epoch" in Checkpointer(workdir).restore_record(stopped_at)
    resumed = result(start(workdir, *INTERRUPTED_ARGS))
    assert resumed["digest"] == uninterrupted_run["digest"]
    # The interrupted epoch's metrics cover all of it: its first part's sums were saved
    # with the checkpoint and continued, in the same float32 order as the straight run.
    assert resumed["train_loss"] == uninterrupted_run["train_loss"]


@pytest.mark.slow  # fresh processes
def test_checkpoint_from_8_devices_resumes_on_1(tmp_path):
    args = (*DRIFT_ARGS, *WITHOUT_TENSORFLOW)
    proc = start(tmp_path / "w", *args, devices=8, env={"JAXCIFAR_TEST_CRASH_AFTER_SAVES": "1"})
    proc.communicate(timeout=300)
    assert proc.returncode == 17 and Checkpointer(tmp_path / "w").steps() == [8]
    _, step = checkpoint.load_variables(tmp_path / "w", "latest")  # evaluate/predict/export path, 1 device
    assert step == 8
    resumed = result(start(tmp_path / "w", *args))
    straight = result(start(tmp_path / "one", *args))
    assert resumed["summary"]["devices"] == 1 and resumed["summary"]["steps"] == 16
    # The first epoch ran on 8 devices: rounding drift, bounded as testing.TRAJECTORY_RTOL says.
    np.testing.assert_allclose(resumed["train_loss"], straight["train_loss"], rtol=TRAJECTORY_RTOL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_processes(workdir, *args):
    """Both processes of a jax.distributed run on this machine (CPU collectives through gloo)."""
    coordinator = f"127.0.0.1:{free_port()}"
    return [start(workdir, *args, f"--distributed.coordinator={coordinator}", "--distributed.num_processes=2",
                  f"--distributed.process_id={i}") for i in range(2)]


def finish(procs, timeout):
    """[(stdout, stderr)] of every process once all have exited; fails (TimeoutExpired) if one
    is still running `timeout` s later, and kills whatever is left."""
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def two_process_result(procs, timeout=300):
    outs = finish(procs, timeout)
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    assert not any(l.startswith("RESULT ") for l in outs[1][0].splitlines())  # only process 0 reports
    return json.loads(next(l for l in outs[0][0].splitlines() if l.startswith("RESULT "))[7:])


@pytest.mark.slow  # fresh processes
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    multi = two_process_result(start_two_processes(tmp_path / "multi", *DRIFT_ARGS))
    single = result(start(tmp_path / "single", *DRIFT_ARGS, devices=2))
    assert multi["summary"]["processes"] == 2 and multi["summary"]["devices"] == 2
    # Two processes sum gradients through gloo in another order: rounding drift (testing.TRAJECTORY_RTOL).
    np.testing.assert_allclose(multi["train_loss"], single["train_loss"], rtol=TRAJECTORY_RTOL)


# A stop is sent once 2 of 4 epochs are logged: the step loop acts on it at its next sync (every
# log_every_steps=2 steps) within epoch 3; a scanned epoch, which a CPU runs ~25x slower than the
# step loop (benchmarks/results/scan_epoch_cpu.json), at epoch 3's end.
TWO_PROCESS_STOP_ARGS = {
    "step_loop": ("--config.epochs=4", "--config.eval_batch_size=40", *WITHOUT_TENSORFLOW),
    "scanned": ("--config.epochs=4", "--config.eval_batch_size=40", *WITHOUT_TENSORFLOW,
                "--config.data.scan_epoch=True"),
}


@pytest.fixture(scope="module")
def uninterrupted_two_process_run(tmp_path_factory):
    """epoch path -> process 0's RESULT of an uninterrupted two-process run (run once per path)."""
    @functools.cache
    def get(epoch_path):
        workdir = tmp_path_factory.mktemp(f"uninterrupted_{epoch_path}")
        return two_process_result(start_two_processes(workdir, *TWO_PROCESS_STOP_ARGS[epoch_path]))

    return get


def wait_for_logged_epochs(workdir, n, procs, timeout=240):
    deadline = time.time() + timeout
    log = workdir / "metrics.jsonl"
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if log.exists() and len(log.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} epochs were not logged in {workdir}")


@pytest.mark.slow  # fresh processes
@pytest.mark.parametrize("epoch_path,signalled", [("step_loop", (1,)), ("step_loop", (0, 1)), ("scanned", (0,))],
                         ids=["one_process", "both_processes", "one_process_scanned_epochs"])
def test_sigterm_to_any_process_stops_every_process_at_one_step_and_resume_is_bit_identical(
        tmp_path, uninterrupted_two_process_run, epoch_path, signalled):
    # A process that saved on its own would wait in Orbax's collective save while the other
    # waits in the next step's all-reduce: both would hang until `finish` gives up.
    args = TWO_PROCESS_STOP_ARGS[epoch_path]
    workdir = tmp_path / "stopped"
    procs = start_two_processes(workdir, *args)
    wait_for_logged_epochs(workdir, 2, procs)  # compiled, in the training loop
    for i in signalled:
        procs[i].send_signal(signal.SIGTERM)
    outs = finish(procs, timeout=60)
    errs = [err for _, err in outs]
    assert [p.returncode for p in procs] == [143, 143], errs[0][-2000:] + errs[1][-2000:]  # 128 + SIGTERM
    stopped_at = {int(re.search(r"Stopped by SIGTERM at step (\d+); checkpoint saved", err).group(1)) for err in errs}
    assert len(stopped_at) == 1 and Checkpointer(workdir).steps()[-1] == stopped_at.pop()
    resumed = two_process_result(start_two_processes(workdir, *args))
    straight = uninterrupted_two_process_run(epoch_path)
    assert resumed["digest"] == straight["digest"]
    assert resumed["train_loss"] == straight["train_loss"]


def test_incompatible_workdir_is_refused_then_moved_aside_with_overwrite(tmp_path, tiny_data):
    train.fit(tiny_config(epochs=1), tmp_path / "run", data=tiny_data)
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(FileExistsError, match="lr: 0.003 -> 0.1.*--overwrite"):
        train.fit(tiny_config(epochs=1, lr=0.1), tmp_path / "run", data=tiny_data)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
    train.fit(tiny_config(epochs=1, lr=0.1), tmp_path / "run", data=tiny_data, overwrite=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and sorted(p.name for p in (aside[0] / "checkpoints").iterdir()) == before


def test_a_process_reading_the_config_while_process_0_rewrites_it_never_sees_a_partial_file(tmp_path):
    # On resume every process reads config.json while process 0 writes it again; a truncating
    # write let process 1 read an empty file (a CI failure of the two-process SIGTERM test).
    config = tiny_config(epochs=1)
    Workdir(tmp_path, config)
    seen, done = [], threading.Event()

    def read_until_done():
        while not done.is_set():
            seen.append((tmp_path / "config.json").read_text())

    reader = threading.Thread(target=read_until_done)
    reader.start()
    for _ in range(300):
        Workdir(tmp_path, config)
    done.set()
    reader.join()
    assert seen and all(json.loads(text) for text in seen)


def test_run_written_before_a_field_existed_resumes_unless_the_field_leaves_its_default(tmp_path, tiny_data):
    train.fit(tiny_config(epochs=1), tmp_path / "run", data=tiny_data)
    config_file = tmp_path / "run" / "config.json"
    stored = json.loads(config_file.read_text())
    del stored["lookahead_every"], stored["data"]["scan_epoch"]  # as an older jaxcifar wrote it
    config_file.write_text(json.dumps(stored))
    assert train.fit(tiny_config(epochs=1), tmp_path / "run", data=tiny_data)["steps"] == 8  # resumed, done
    config_file.write_text(json.dumps(stored))
    with pytest.raises(FileExistsError, match="lookahead_every: 0 -> 5"):
        train.fit(tiny_config(epochs=1, lookahead_every=5), tmp_path / "run", data=tiny_data)


def test_workdir_with_its_own_parameter_groups_is_resumable(tmp_path):
    # User-keyed dicts replace the default {"all": ...} whole; filling the stored copy from
    # the defaults would add "all" and refuse every staged or `fast` run on resume.
    config = tiny_config(epochs=1)
    config.param_groups, config.lr_multipliers = {"head": "^head", "body": ".*"}, {"head": 1.0, "body": 0.1}
    Workdir(tmp_path / "run", config)
    (tmp_path / "run" / "checkpoints" / "8").mkdir(parents=True)  # it trained: a changed config is refused
    Workdir(tmp_path / "run", config)
    config.lr_multipliers = {"head": 1.0, "body": 0.2}
    with pytest.raises(FileExistsError, match="lr_multipliers.body: 0.1 -> 0.2"):
        Workdir(tmp_path / "run", config)


@flax.struct.dataclass
class TrainStateBeforeLookahead:
    """steps.TrainState as jaxcifar wrote it before the `slow` field existed."""
    step: Any
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: Any
    ema_params: Any = None


@flax.struct.dataclass
class TrainStateBeforeMethodState(TrainStateBeforeLookahead):
    """steps.TrainState as jaxcifar wrote it before the `method_state` field existed."""
    slow: Any = None


@pytest.mark.parametrize("old_type, new_field", [(TrainStateBeforeLookahead, "slow"),
                                                 (TrainStateBeforeMethodState, "method_state")])
def test_checkpoint_written_before_a_field_existed_restores_where_it_is_off(tmp_path, old_type, new_field):
    """An old checkpoint resumes a run that has the field off (no lookahead; a method
    without state of its own), and is refused, saying why, by one that needs it."""
    state = steps.create_state(create_model("simple_cnn"), jax.random.key(0))
    state = state.replace(step=jnp.asarray(8, jnp.int32), opt_state=optax.sgd(0.1, momentum=0.9).init(state.params))
    old = old_type(**{f: getattr(state, f) for f in old_type.__dataclass_fields__})
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(old, {"history": []})
    checkpointer.wait()
    restored, record = checkpointer.restore(8, state)
    assert getattr(restored, new_field) is None and record == {"history": []}
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=f"has no \\[.*'{new_field}'"):
        checkpointer.restore(8, state.replace(**{new_field: {"params": state.params}}))
    checkpointer.close()


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, tiny_data, caplog):
    def train_then_corrupt_the_last_checkpoint(fit):
        fit()
        for f in (tmp_path / "resumed" / "checkpoints" / "16" / "state").rglob("*"):
            if f.is_file():
                f.write_bytes(b"garbage")

    # Epoch 2 is re-trained from step 8, identically.
    testing.assert_resumes_exactly(tiny_config(epochs=2, keep_checkpoints=3), tmp_path, tiny_data,
                                   train_then_corrupt_the_last_checkpoint)
    assert "could not be restored" in caplog.text and (tmp_path / "resumed" / "corrupt_checkpoints").is_dir()
    assert Checkpointer(tmp_path / "resumed").steps() == [8, 16]


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path, tiny_data):
    config = tiny_config(epochs=3, optimizer="sgd", lr=1e6, momentum=0.0, warmup_epochs=1.0)
    with pytest.raises(train.NonFiniteLoss, match=r"NaN/inf at step \d+"):
        train.fit(config, tmp_path, data=tiny_data)
    for step in Checkpointer(tmp_path).steps():
        variables, _ = checkpoint.load_variables(tmp_path, step)
        assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree_util.tree_leaves(variables))


def test_failing_checkpoint_write_surfaces_and_keeps_previous(tmp_path, tiny_data, monkeypatch):
    import orbax.checkpoint as ocp

    config = tiny_config(epochs=2)
    original = Checkpointer.save
    calls = {"n": 0}

    def save(self, state, record, metrics=None):
        calls["n"] += 1
        if calls["n"] == 2:
            monkeypatch.setattr(ocp.args, "StandardSave", _raising_save)
        original(self, state, record, metrics)

    monkeypatch.setattr(Checkpointer, "save", save)
    with pytest.raises(OSError, match="No space left"):
        train.fit(config, tmp_path, data=tiny_data)
    monkeypatch.undo()
    assert Checkpointer(tmp_path).steps() == [8]
    variables, step = checkpoint.load_variables(tmp_path, "latest")
    assert step == 8 and variables["params"]


def _raising_save(*args, **kwargs):
    raise OSError(28, "No space left on device")
