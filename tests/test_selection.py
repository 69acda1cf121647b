"""Model selection reads the validation split held out of the training images, never the
test split; a run without a validation split selects nothing and reports its final weights,
which every tool opens by default."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxcifar import checkpoint, evaluate, train
from jaxcifar import data as data_lib
from jaxcifar.testing import synthetic_split, tiny_config

WITH_VALIDATION = {"data": {"validation_fraction": 0.25}}


def with_validation(test_labels_seed=None):
    """Tiny splits with a validation split; `test_labels_seed` shuffles the test labels."""
    test = synthetic_split(77, 1)
    if test_labels_seed is not None:
        test = dataclasses.replace(test, labels=np.random.default_rng(test_labels_seed).permutation(test.labels))
    return data_lib.Data(synthetic_split(256, 0), test, 10, validation=synthetic_split(64, 2))


def weights(workdir, step):
    variables, _ = checkpoint.load_variables(workdir, step)
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(variables)]


def test_changing_the_test_labels_changes_no_selection_and_no_weights(tmp_path):
    config = tiny_config(epochs=3, keep_checkpoints=3, **WITH_VALIDATION)
    runs = {seed: train.fit(config, tmp_path / str(seed), data=with_validation(seed)) for seed in (None, 7)}
    plain, shuffled = runs[None], runs[7]
    assert plain["selection"] == shuffled["selection"] and plain["selection"]["split"] == "train-validation"
    assert plain["val_accuracy"] == shuffled["val_accuracy"]
    assert plain["test_accuracy"] != shuffled["test_accuracy"]  # the test labels did change what it reports
    for step in checkpoint.Checkpointer(tmp_path / "None").steps():
        for a, b in zip(weights(tmp_path / "None", step), weights(tmp_path / "7", step)):
            np.testing.assert_array_equal(a, b)


def test_the_best_checkpoint_is_the_best_validation_epoch_and_the_summary_reports_it(tmp_path):
    summary = train.fit(tiny_config(epochs=3, keep_checkpoints=3, **WITH_VALIDATION), tmp_path, data=with_validation())
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda h: h["val_accuracy"])
    assert summary["selection"]["step"] == best["step"] == checkpoint.Checkpointer(tmp_path).best_step()
    # summary.json's figures are of the selected weights, as evaluate reports them by default.
    assert summary["val_accuracy"] == best["val_accuracy"] and summary["test_accuracy"] == best["eval_accuracy"]
    report, _ = evaluate.evaluate_workdir(tmp_path, split=synthetic_split(77, 1), out=tmp_path / "eval")
    assert report["checkpoint_step"] == best["step"] and report["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert report["checkpoint"] == "best"


def test_without_a_validation_split_the_tools_default_to_the_final_weights(tmp_path, tiny_data):
    summary = train.fit(tiny_config(epochs=2), tmp_path, data=tiny_data)
    assert summary["selection"]["weights"] == "final" and "val_accuracy" not in summary
    _, step = checkpoint.load_variables(tmp_path)  # the default, 'best', has nothing selected to name
    assert step == summary["selection"]["step"] == summary["steps"]
    report, _ = evaluate.evaluate_workdir(tmp_path, split=tiny_data.eval, out=tmp_path / "eval")
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"]) and report["checkpoint"] == "final"


def test_validation_is_held_out_of_any_source_stratified_and_fixed():
    whole = synthetic_split(400, 0)
    d = tiny_config(**WITH_VALIDATION).data
    kept, held = data_lib.split_train(d, whole)
    again = data_lib.split_train(d, whole)[1]
    np.testing.assert_array_equal(held.images, again.images)
    assert len(kept) + len(held) == len(whole)
    counts, held_counts = np.bincount(whole.labels, minlength=10), np.bincount(held.labels, minlength=10)
    np.testing.assert_array_equal(held_counts, np.round(counts * 0.25).astype(int))
    assert data_lib.split_train(tiny_config().data, whole)[1] is None


def test_selection_settings_that_would_read_the_test_split_are_refused(tmp_path, tiny_data):
    from jaxcifar import config as config_lib

    with pytest.raises(ValueError, match="validation_fraction"):
        config_lib.validate(tiny_config(early_stopping={"patience": 2}), 1)
    with pytest.raises(ValueError, match="val_accuracy"):
        config_lib.validate(tiny_config(early_stopping={"patience": 2, "metric": "eval_accuracy"},
                                        **WITH_VALIDATION), 1)
    # A library caller handing over data without a validation split is told the same.
    with pytest.raises(ValueError, match="validation split"):
        train.fit(tiny_config(early_stopping={"patience": 2}, **WITH_VALIDATION), tmp_path, data=tiny_data)
