"""What a new user trips on in the first hour (issue 28): each test failed before its fix."""

import json
import re
import signal
import sys

import numpy as np
import pytest

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar import pretrained, stop_signals, train
from jaxcifar.checkpoint import Checkpointer
from jaxcifar.cli import evaluate as evaluate_cli
from jaxcifar.cli import export as export_cli
from jaxcifar.cli import predict as predict_cli
from jaxcifar.cli import quantize as quantize_cli
from jaxcifar.cli import train as train_cli
from jaxcifar.testing import synthetic_split, tiny_config


def test_a_refused_start_leaves_nothing_behind_and_names_the_flag(tmp_path):
    data = data_lib.Data(synthetic_split(60, 0), synthetic_split(20, 1), 10)
    with pytest.raises(ValueError, match=r"batch_size=64 is larger than the 60 .*--config\.batch_size=32"):
        train.fit(tiny_config(batch_size=64, epochs=1), tmp_path, data=data)
    assert not (tmp_path / "config.json").exists()
    train.fit(tiny_config(batch_size=32, epochs=1), tmp_path, data=data)  # the corrected command just runs
    assert Checkpointer(tmp_path).steps() == [1]


def test_a_run_that_never_saved_a_step_does_not_block_its_corrected_command(tmp_path):
    data = data_lib.Data(synthetic_split(64, 0), synthetic_split(20, 1), 10)
    train.Trainer(tiny_config(lr=1.0), tmp_path, data).checkpointer.close()  # wrote config.json, saved no step
    train.fit(tiny_config(epochs=1), tmp_path, data=data)  # a different config, no --overwrite needed
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == tiny_config().lr
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.replaced-*"))  # nothing set aside
    with pytest.raises(FileExistsError, match="different config"):  # a run that trained is still protected
        train.fit(tiny_config(epochs=1, lr=1.0), tmp_path, data=data)


def test_epochs_that_every_stage_overrides_is_refused_with_the_stage_syntax():
    config = config_lib.load_recipe("ssl_finetune")
    with pytest.raises(ValueError, match=r"--config\.stages\.frozen\.epochs=\.\.\. --config\.stages\.finetune\.epochs"):
        config_lib.override(config, "epochs", "1")
    config_lib.override(config, "stages.frozen.epochs", "1")  # the syntax it names works
    simple = config_lib.load_recipe("simple_cnn")
    config_lib.override(simple, "epochs", "1")  # a one-stage recipe takes it as before
    assert simple.epochs == 1


def test_a_user_error_is_one_line_and_status_2_in_every_tool(tmp_path, capsys):
    from jaxcifar.serve import __main__ as serve

    for main, args in ((predict_cli.main, ["--workdir", str(tmp_path / "missing"), "x.png"]),
                       (evaluate_cli.main, ["--workdir", str(tmp_path / "missing")]),
                       (export_cli.main, ["--workdir", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]),
                       (quantize_cli.main, ["--workdir", str(tmp_path / "missing"), "--out", str(tmp_path / "q")]),
                       (serve.main, ["--workdir", str(tmp_path / "missing")]),
                       (train_cli.main, ["--config", "nope", "--workdir", str(tmp_path / "w")])):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err, err


def test_tfds_input_without_tensorflow_is_one_error_line_naming_the_extra_and_what_else_to_read(tmp_path, monkeypatch,
                                                                                                capsys):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # any import of it now fails, as without the `tf` extra
    assert train_cli.main(["--config", "simple_cnn", "--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: reading the TFDS dataset 'cifar10' needs TensorFlow") and err.count("\n") == 1, err
    assert 'pip install -e ".[tf]"' in err and "--config.data.image_folder=DIR" in err
    assert not (tmp_path / "run").exists()


def test_predict_with_a_self_supervised_run_says_what_to_do_without_a_traceback(monkeypatch, capsys, tmp_path):
    """It once printed 17 lines of traceback: the refusal came after the run was opened."""
    from jaxcifar import runs

    class SelfSupervisedRun:
        workdir, config = tmp_path, config_lib.load_recipe("ssl_simclr")
        require_classifier = runs.Run.require_classifier
        is_classifier = False

    monkeypatch.setattr(predict_cli, "load_run", lambda workdir, which: SelfSupervisedRun())
    assert predict_cli.main(["--workdir", str(tmp_path), "x.png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "self-supervised" in err and "Traceback" not in err


def test_the_stop_message_starts_its_own_line(tmp_path, shared_data_dir, monkeypatch, capsys):
    """A stop mid-epoch: the progress bar is closed before the message is printed."""
    calls = []

    def stop_on_second_check(self):
        calls.append(1)
        return signal.SIGINT if len(calls) == 2 else None

    monkeypatch.setattr(stop_signals.StopSignals, "agreed", stop_on_second_check)
    status = train_cli.main(["--config", "simple_cnn", "--workdir", str(tmp_path), "--data_dir", shared_data_dir,
                         "--config.epochs=1", "--config.data.examples_per_class=20", "--config.batch_size=50",
                         "--config.data.eval_split=test[:100]", "--config.eval_batch_size=50"])
    err = capsys.readouterr().err
    assert status == 130 and "Stopped by SIGINT at step 2" in err
    assert re.search(r"(^|[\r\n])jaxcifar: Stopped by SIGINT", err), err[-500:]


def test_a_new_head_is_announced_in_the_users_terms():
    head = {"kernel": np.zeros((8, 3)), "bias": np.zeros(3)}
    assert pretrained.new_head_message(head, {}).endswith("training a new head for 3 classes.")
    assert "head is for 10 classes" in pretrained.new_head_message(head, {"kernel": np.zeros((8, 10)),
                                                                         "bias": np.zeros(10)})
