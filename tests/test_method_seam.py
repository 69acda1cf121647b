"""The method seam (jaxcifar/methods): a method defined outside the package, here a mean
teacher (Tarvainen & Valpola 2017: a momentum teacher, an EMA of the student's weights kept
in the method's own state, whose predictions on unlabelled images the student matches),
trains through `train.fit`, checkpoints its state and resumes exactly, and is measured by an
evaluator defined here too, with no edit to train.py, steps.py or config.py: this file and a
recipe are all it takes. And the unlabelled stream: the images the label budget leaves out
reach a method without labels."""

import dataclasses
import importlib
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcifar import augment, batch_order, checkpoint, evaluators, methods, parallel, runs, steps, testing, train
from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar.methods.base import StageContext
from jaxcifar.methods.classification import Classification
from jaxcifar.models import create_model
from jaxcifar.testing import synthetic_split, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to
TEACHER_DECAY = 0.9


class MeanTeacher(Classification):
    """Cross-entropy on the labelled batch, plus the squared distance between the student's
    class probabilities on one view of each unlabelled image and the teacher's on another."""

    unlabeled_ratio = 2

    def init_state(self, state: steps.TrainState) -> Any:
        return {"teacher": jax.tree_util.tree_map(jnp.copy, state.params)}

    def loss(self, stage: StageContext) -> steps.LossFn:
        supervised, model, config = super().loss(stage), self.model, self.config

        def loss_fn(params, state, batch, key):
            loss, (batch_stats, method_state, sums) = supervised(params, state, batch, key)
            student_key, teacher_key = jax.random.split(jax.random.fold_in(key, 1))

            def probabilities(weights, view_key):
                view = augment.augment(view_key, batch["unlabeled"], config.augment)
                logits = model.apply({"params": weights, "batch_stats": state.batch_stats}, view, train=False)
                return jax.nn.softmax(logits)

            teacher = jax.lax.stop_gradient(probabilities(method_state["teacher"], teacher_key))
            distance = jnp.sum((probabilities(params, student_key) - teacher) ** 2, axis=-1)
            unlabeled = {"consistency_sum": jnp.sum(distance), "unlabeled_count": jnp.float32(len(distance))}
            return loss + distance.mean(), (batch_stats, method_state, {**sums, **unlabeled})

        return loss_fn

    def after_update(self, state: steps.TrainState) -> Any:
        teacher = optax.incremental_update(state.params, state.method_state["teacher"], 1.0 - TEACHER_DECAY)
        return {"teacher": teacher}

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {**super().train_metrics(sums), "consistency": sums["consistency_sum"] / sums["unlabeled_count"]}


def mean_confidence(logits: np.ndarray) -> float:
    """The mean probability of the predicted class."""
    return float(np.mean(np.max(jax.nn.softmax(logits), axis=-1)))


def confidence(outputs: evaluators.Outputs, split: data_lib.ArraySplit) -> dict[str, float]:
    """An evaluator defined outside the package: how sure the classifier is of its predictions."""
    return {"confidence": mean_confidence(outputs.logits(split))}


CONFIDENCE = evaluators.EvaluatorInfo("confidence", "mean probability of the predicted class (test)",
                                      f"{__name__}:confidence", {"confidence": True})
MEAN_TEACHER = methods.MethodInfo("mean_teacher", "semi-supervised: a momentum teacher on unlabelled images (test)",
                                  f"{__name__}:MeanTeacher", ("classification", "confidence"), "accuracy")


@pytest.fixture
def own_registry(monkeypatch):
    """What a test registers is forgotten after it."""
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    monkeypatch.setattr(evaluators, "_REGISTRY", dict(evaluators._REGISTRY))


@pytest.fixture
def mean_teacher(own_registry):
    evaluators.register(CONFIDENCE)
    methods.register(MEAN_TEACHER)


def recipe(**fields):
    return tiny_config(**{"objective": "mean_teacher", "batch_size": 16, **fields})


BUDGET = 8  # labelled images per class: 80 of the 256 synthetic ones; the other 176 are unlabelled


def budget_data(whole: data_lib.ArraySplit | None = None) -> data_lib.Data:
    """The synthetic split through the label budget's door, as data_lib.load_data sends it."""
    labelled, rest = data_lib.split_label_budget(whole or synthetic_split(256, 0), BUDGET)
    return data_lib.Data(labelled, synthetic_split(40, 1), 10, unlabeled=rest)


def assert_same_tree(a, b):
    a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_method_from_outside_the_package_trains_and_resumes_exactly(tmp_path, mean_teacher):
    testing.assert_resumes_exactly(recipe(), tmp_path, budget_data())  # the teacher's state included
    # The teacher lives in the method's state: it left the initial weights to follow the
    # student without becoming it.
    state, _ = checkpoint.load_state(tmp_path / "straight", "latest")
    teacher, student = jax.tree_util.tree_leaves(state["method_state"]), jax.tree_util.tree_leaves(state["params"])
    initial = jax.tree_util.tree_leaves(steps.create_state(create_model("simple_cnn"), jax.random.key(0)).params)
    assert len(teacher) == len(student) == len(initial)
    for other in (student, initial):
        assert not any(np.array_equal(t, o) for t, o in zip(teacher, other))
    # Its own train metric reaches the log under the name it gave it.
    history = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < entry["train_consistency"] < 2 for entry in history) and len(history) == 2
    # Its network is a classifier, so the inference tools run it (they refuse a backbone).
    run = runs.load_run(tmp_path / "straight", "latest")
    assert run.logits(synthetic_split(4, 3).images).shape == (4, 10)
    # Its own evaluator measured the final weights on the eval split, as the run's logits say.
    assert history[-1]["eval_confidence"] == pytest.approx(mean_confidence(run.logits(budget_data().eval.images)),
                                                           abs=1e-5)


def test_labels_of_the_unlabelled_images_never_pass_the_door():
    """The rest of the train split loses its labels at the door: relabelling those images
    leaves the run's data (all that training sees) identical, and the unlabelled split has
    no place for a label."""
    whole = synthetic_split(256, 0)
    # Every class's budget is filled within these rows, so relabelling later rows keeps the labelled set.
    last_labelled = max(int(np.flatnonzero(whole.labels == c)[BUDGET - 1]) for c in range(10))
    relabelled = whole.labels.copy()
    relabelled[last_labelled + 1:] = np.random.default_rng(7).integers(0, 10, len(whole) - last_labelled - 1)
    assert not np.array_equal(relabelled, whole.labels)
    original, other = budget_data(whole), budget_data(data_lib.ArraySplit(whole.images, relabelled))
    assert [f.name for f in dataclasses.fields(data_lib.UnlabeledSplit)] == ["images"]
    assert len(original.train) == 10 * BUDGET and len(original.unlabeled) == len(whole) - 10 * BUDGET
    for a, b in ((original.train.images, other.train.images), (original.train.labels, other.train.labels),
                 (original.unlabeled.images, other.unlabeled.images)):
        np.testing.assert_array_equal(a, b)


def test_the_step_reads_the_unlabelled_images(mean_teacher):
    """Other unlabelled images, other weights; the same ones, the same weights."""
    method = methods.create(recipe(), 10)
    tx = optax.adam(3e-3)
    state = steps.create_state(method.model, jax.random.key(0))
    state = state.replace(opt_state=tx.init(state.params))
    state = state.replace(method_state=method.init_state(state))
    step = jax.jit(method.train_step(tx, StageContext(steps_per_epoch=5)))
    data = budget_data()
    labelled = {"image": data.train.images[:16], "label": data.train.labels[:16], "index": np.arange(16)}
    params = [step(state, {**labelled, "unlabeled": data.unlabeled.images[rows]})[0].params
              for rows in (slice(0, 32), slice(32, 64), slice(0, 32))]
    assert not all(np.array_equal(a, b) for a, b in zip(*map(jax.tree_util.tree_leaves, params[:2])))
    assert_same_tree(params[0], params[2])


def test_unlabelled_rows_are_a_pure_function_of_seed_and_step():
    rows = batch_order.unlabeled_rows(10, 4, seed=3, first_step=0, num_steps=10)
    # Every pass over the set shows each image once (40 positions = 4 passes of 10 images).
    for k in range(4):
        assert sorted(rows.reshape(-1)[10 * k:10 * (k + 1)]) == list(range(10))
    assert not np.array_equal(rows.reshape(-1)[:10], rows.reshape(-1)[10:20])  # each pass its own shuffle
    # A resumed run's steps 6.. are the straight run's; each process takes its share of a batch.
    np.testing.assert_array_equal(batch_order.unlabeled_rows(10, 4, 3, first_step=6, num_steps=4), rows[6:])
    halves = [batch_order.unlabeled_rows(10, 4, 3, 0, 10, process_index=p, process_count=2) for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves, axis=1), rows)
    # A batch larger than the set spans passes; another seed, another stream.
    assert batch_order.unlabeled_rows(3, 8, 3, 0, 2).shape == (2, 8)
    assert not np.array_equal(batch_order.unlabeled_rows(10, 4, 4, 0, 10), rows)


def test_unlabelled_batches_reach_the_step_sharded_like_the_labelled_ones(tmp_path, mean_teacher):
    data = budget_data()
    trainer = train.Trainer(recipe(), tmp_path, data)
    try:
        batch = next(iter(trainer.stream.batches(epoch=1, start_step=2)))
    finally:
        trainer.checkpointer.close()
    assert batch["unlabeled"].shape == (2 * 16, 32, 32, 3) and batch["unlabeled"].dtype == np.uint8
    assert batch["unlabeled"].sharding.is_equivalent_to(parallel.batch_sharding(trainer.mesh), 4)
    global_step = 1 * trainer.steps_per_epoch + 2
    expected = batch_order.unlabeled_rows(len(data.unlabeled), 32, 0, global_step, 1)[0]
    np.testing.assert_array_equal(np.asarray(batch["unlabeled"]), data.unlabeled.images[expected])


def test_a_method_that_reads_unlabelled_images_is_refused_without_them(tmp_path, mean_teacher):
    with pytest.raises(ValueError, match="examples_per_class=N.*DIR/unlabeled/"):
        train.fit(recipe(), tmp_path / "a", data=data_lib.Data(synthetic_split(64, 0), synthetic_split(20, 1), 10))
    with pytest.raises(ValueError, match="scan_epoch=False"):
        train.fit(recipe(data={"device_resident": True, "scan_epoch": True}), tmp_path / "b", data=budget_data())


def test_registering_a_method_is_all_config_and_help_need(mean_teacher):
    with_validation = {"validation_fraction": 0.1}
    config_lib.validate(recipe(data=with_validation, early_stopping={"patience": 2, "metric": "val_accuracy"}), 1)
    assert "mean_teacher = semi-supervised: a momentum teacher" in config_lib.describe_fields()
    assert "mean_teacher" in config_lib.choices()["objective"]
    with pytest.raises(ValueError, match="early_stopping.metric='val_knn_accuracy'"):
        config_lib.validate(recipe(data=with_validation, early_stopping={"patience": 2, "metric": "val_knn_accuracy"}), 1)


def test_a_recipe_file_can_bring_its_own_method(tmp_path, own_registry):
    """A method outside the package is one file plus a recipe that registers it."""
    recipe_file = tmp_path / "mean_teacher.py"
    recipe_file.write_text(f"""
from jaxcifar import config, evaluators, methods
from {__name__} import CONFIDENCE, MEAN_TEACHER


def get_config():
    evaluators.register(CONFIDENCE)
    methods.register(MEAN_TEACHER)
    return config.recipe(objective="mean_teacher", data={{"examples_per_class": 25}})
""")
    assert "mean_teacher" not in methods.names()
    config_lib.validate(config_lib.load_recipe(str(recipe_file)), 1)  # refuses an objective no one registered


def test_an_unregistered_method_is_refused_with_the_registered_names():
    with pytest.raises(ValueError, match="objective='mean_teacher': use classification, simclr, vicreg, multicrop or self_training"):
        config_lib.validate(recipe(), 1)


OUTSIDE_METHOD = '''
from jaxcifar import methods
from jaxcifar.methods.classification import Classification


class Outside(Classification):
    """A method defined in a user's own module, registered when the module is imported."""


methods.register(methods.MethodInfo("outside", "a method outside the package (test)", f"{__name__}:Outside",
                                    ("classification",), "accuracy"))
'''

OPEN_IN_FRESH_PROCESS = "import sys; from jaxcifar import runs; print(runs.load_run(sys.argv[1]).config.objective)"


def test_a_run_of_a_method_defined_outside_the_package_opens_in_a_fresh_process(own_registry, tiny_data, tmp_path,
                                                                               monkeypatch):
    (tmp_path / "my_methods").mkdir()
    (tmp_path / "my_methods" / "outside.py").write_text(OUTSIDE_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path / "my_methods"))
    importlib.import_module("outside")
    train.fit(tiny_config(objective="outside", epochs=1), tmp_path / "run", data=tiny_data)

    def open_run(pythonpath: list[str]) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*pythonpath, str(REPO)])}
        return subprocess.run([sys.executable, "-c", OPEN_IN_FRESH_PROCESS, str(tmp_path / "run")],
                              capture_output=True, text=True, env=env, cwd=tmp_path)

    opened = open_run([str(tmp_path / "my_methods")])
    assert opened.returncode == 0 and opened.stdout.split()[-1] == "outside", opened.stderr
    unreachable = open_run([])  # the module is not importable: the error names it
    assert unreachable.returncode != 0 and "the module 'outside'" in unreachable.stderr.splitlines()[-1]
