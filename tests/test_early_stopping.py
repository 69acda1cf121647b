"""Early stopping (per stage, on the best epoch's weights, resumable) and dropout on the heads."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcifar import augment, early_stopping, steps, testing, train
from jaxcifar import data as data_lib
from jaxcifar.methods.base import StageContext
from jaxcifar.methods.classification import Classification
from jaxcifar.models import create_model
from jaxcifar.testing import synthetic_split, tiny_config

# Accuracy lies in [0, 1], so with min_delta=1 no epoch after a stage's first counts as an
# improvement, whatever training does: a plateau that needs no luck, while the weights (and
# so the eval loss) still change every epoch.
NEVER_IMPROVES = {"patience": 2, "min_delta": 1.0, "metric": "val_accuracy"}
# Early stopping watches a validation split held out of the training images, never the test split.
WITH_VALIDATION = {"validation_fraction": 0.25}


@pytest.fixture
def tiny_data():
    """The shared tiny splits plus a validation split, which early stopping selects on."""
    return data_lib.Data(synthetic_split(256, 0), synthetic_split(77, 1), 10, validation=synthetic_split(64, 2))


def epoch_entry(epoch, **metrics):
    return {"epoch": epoch, "step": 8 * epoch, **metrics}


def run_stopper(config, values):
    """The stopper after each of `values` of the config's metric, one per epoch."""
    stopper, out = early_stopping.start(config, 0), []
    for epoch, value in enumerate(values, start=1):
        stopper = early_stopping.update(config, stopper, epoch_entry(epoch, **{config.early_stopping.metric: value}))
        out.append(stopper)
    return out


def test_patience_counts_epochs_without_improvement_as_keras_does():
    config = tiny_config(early_stopping={"patience": 2, "min_delta": 0.01, "metric": "val_loss"})
    # Epoch 3 is better by less than min_delta, epoch 4 worse: two epochs without improvement.
    states = run_stopper(config, [1.0, 0.5, 0.495, 0.6])
    assert [s.should_stop for s in states] == [False, False, False, True]
    assert (states[-1].best_epoch, states[-1].best_step, early_stopping.best_value(config, states[-1])) == (2, 16, 0.5)
    config.early_stopping.metric = "val_accuracy"  # maximised
    states = run_stopper(config, [0.1, 0.3, 0.2, 0.35, 0.34])
    assert not any(s.should_stop for s in states) and states[-1].best_epoch == 4
    assert early_stopping.best_value(config, states[-1]) == 0.35
    for state in (early_stopping.start(config, 1), *states):  # a fresh count (best = inf) as well
        assert early_stopping.from_json(config, json.loads(json.dumps(early_stopping.to_json(state)))) == state


def test_an_early_stop_ends_the_run_on_its_best_epochs_weights(tmp_path, tiny_data):
    # keep_checkpoints=1 would have deleted epoch 1's checkpoint by epoch 3: it is kept as the stage's best.
    summary = train.fit(tiny_config(epochs=10, keep_checkpoints=1, early_stopping=NEVER_IMPROVES, data=WITH_VALIDATION), tmp_path,
                        data=tiny_data)
    logged = testing.read_history(tmp_path)
    assert [h["epoch"] for h in logged] == [1, 2, 3]
    assert summary["stopped_early"] == [{"stage": "train", "epoch": 3, "best_epoch": 1, "metric": "val_accuracy",
                                         "best_value": logged[0]["val_accuracy"]}]
    assert (summary["epochs_completed"], summary["steps"], summary["selection"]["epoch"]) == (3, 24, 1)
    # The final evaluation is of epoch 1's weights, not of the last epoch's.
    assert summary["test_loss"] == logged[0]["eval_loss"] != logged[-1]["eval_loss"]
    assert json.loads((tmp_path / "summary.json").read_text())["stopped_early"] == summary["stopped_early"]


def test_without_an_early_stop_the_run_still_ends_on_its_best_epoch(tmp_path, tiny_data):
    config = tiny_config(epochs=3, early_stopping=dict(NEVER_IMPROVES, patience=5), data=WITH_VALIDATION)
    summary = train.fit(config, tmp_path, data=tiny_data)
    logged = testing.read_history(tmp_path)
    assert len(logged) == 3 and summary["stopped_early"] == [] and summary["selection"]["epoch"] == 1
    assert summary["test_loss"] == logged[0]["eval_loss"] != logged[-1]["eval_loss"]


def test_an_early_stop_ends_only_its_stage_and_the_next_starts_from_its_best_weights(tmp_path, tiny_data):
    # The second stage freezes every parameter, so its evaluation shows which weights it was handed.
    stages = ({"name": "first", "epochs": 4}, {"name": "frozen", "epochs": 3, "lr_multipliers": {"all": None}})
    config = tiny_config(stages=stages, early_stopping=dict(NEVER_IMPROVES, patience=1), data=WITH_VALIDATION)
    summary = train.fit(config, tmp_path, data=tiny_data)
    logged = testing.read_history(tmp_path)
    # Each stage counts its own patience; the second keeps its planned epochs (5..7), steps and schedule.
    assert [(h["stage"], h["epoch"], h["step"]) for h in logged] == [
        ("first", 1, 8), ("first", 2, 16), ("frozen", 5, 40), ("frozen", 6, 48)]
    assert [(s["stage"], s["epoch"], s["best_epoch"]) for s in summary["stopped_early"]] == [
        ("first", 2, 1), ("frozen", 6, 5)]
    assert logged[2]["eval_loss"] == logged[0]["eval_loss"] != logged[1]["eval_loss"]
    assert (summary["epochs_completed"], summary["steps"]) == (4, 32)


@pytest.mark.parametrize("saves_before_crash", [2, 4], ids=["mid_patience", "at_the_stop"])
def test_a_resumed_run_keeps_its_patience_count(tmp_path, tiny_data, saves_before_crash):
    config = tiny_config(epochs=10, early_stopping=dict(NEVER_IMPROVES, patience=3), data=WITH_VALIDATION)
    straight, _ = testing.assert_resumes_exactly(config, tmp_path, tiny_data,
                                                 lambda fit: testing.crash_after_saves(fit, saves_before_crash))
    # A count restarted on resume would have stopped at epoch 2 + 1 + 3 = 6, not 4.
    assert [h["epoch"] for h in testing.read_history(tmp_path / "resumed")] == [1, 2, 3, 4]
    assert straight["stopped_early"][0]["epoch"] == 4


@pytest.mark.parametrize("name,kwargs", [("simple_cnn", {}), ("resnet18", {"width": 4}), ("airbench", {})])
def test_dropout_leaves_the_parameters_alone_and_is_on_only_in_training(name, kwargs):
    images = augment.normalize(jnp.asarray(synthetic_split(4).images))
    plain, dropped = create_model(name, **kwargs), create_model(name, dropout=0.5, **kwargs)
    variables = plain.init(jax.random.key(0), images, train=False)
    shapes = jax.eval_shape(lambda x: dropped.init(jax.random.key(0), x, train=False), images)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(variables)
    np.testing.assert_array_equal(dropped.apply(variables, images, train=False),
                                  plain.apply(variables, images, train=False))
    train_logits = [model.apply(variables, images, train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(1)})[0] for model in (plain, dropped)]
    assert not np.allclose(*train_logits)


def test_dropout_changes_training_deterministically_and_not_evaluation():
    config = tiny_config()
    data = synthetic_split(32)
    batch = {"image": jnp.asarray(data.images), "label": jnp.asarray(data.labels)}
    tx = optax.sgd(0.1)
    plain = create_model("simple_cnn")
    state = steps.create_state(plain, jax.random.key(0))
    state = state.replace(opt_state=tx.init(state.params))

    def two_steps(model):
        step = jax.jit(Classification(config, 10, model).train_step(tx, StageContext(steps_per_epoch=8)))
        return step(step(state, batch)[0], batch)[0]

    with_dropout = two_steps(create_model("simple_cnn", dropout=0.5))
    params = lambda s: jax.tree_util.tree_leaves(s.params)  # noqa: E731
    assert not all(np.array_equal(a, b) for a, b in zip(params(with_dropout), params(two_steps(plain))))
    # The masks come from (seed, step): the same steps again give the same weights.
    assert all(np.array_equal(a, b) for a, b in zip(params(with_dropout),
                                                    params(two_steps(create_model("simple_cnn", dropout=0.5)))))
    evaluations = [Classification(config, 10, model).logits(steps.eval_variables(with_dropout), batch["image"])
                   for model in (plain, create_model("simple_cnn", dropout=0.5))]
    np.testing.assert_array_equal(evaluations[0], evaluations[1])
