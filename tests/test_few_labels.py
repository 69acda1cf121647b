"""Few labels: a method's own settings (one declaration each), label budgets that never
reach beyond themselves, label propagation, choosing what to label, and the self-trained
student. What never reads a label it was not given is proven by changing those labels."""

import csv
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxcifar import checkpoint, evaluate, methods, propagate, schema, select_labels, targets, testing, train
from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar.testing import synthetic_split, tiny_config, tiny_ssl_config

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to


# ----- a method's settings -----
def test_a_methods_settings_come_from_its_file_and_are_checked_documented_and_overridable():
    config = config_lib.load_recipe("ssl_multicrop")
    declared = {field.name: field.default for field in methods.settings("multicrop")}
    assert set(config.method) == set(declared)
    assert config.method.coding_rate_eps == declared["coding_rate_eps"]  # not set by the recipe: the declaration's
    config_lib.override(config, "method.crops", "6")
    assert config.method.crops == 6
    help_text = config_lib.describe_fields(config)
    assert "--config.method.crops=6" in help_text and "crops of each image per step" in help_text
    config_lib.override(config, "method.crops", "1")
    with pytest.raises(ValueError, match=r"method.crops=1: must be a whole number of at least 2"):
        config_lib.validate(config, 1)
    with pytest.raises(ValueError, match=r"Unknown config field 'method.crop'. Did you mean 'crops'\?"):
        config_lib.override(config, "method.crop", "4")


def test_changing_the_objective_gives_the_new_methods_settings():
    config = config_lib.load_recipe("ssl_multicrop")
    config_lib.override(config, "objective", "simclr")
    assert config.method.to_dict() == {}
    config_lib.override(config, "objective", "self_training")
    assert config.method.unlabeled_ratio == 7 and config.method.targets == ""
    config_lib.override(config, "method.unlabeled_ratio", "0")
    with pytest.raises(ValueError, match="method.unlabeled_ratio=0: must be a positive whole number"):
        config_lib.validate(config, 1)


def test_a_config_recorded_before_method_settings_existed_still_loads():
    stored = {"objective": "multicrop", "model": "airbench"}  # a config.json without a `method` block
    assert config_lib.recipe(stored).method.crops == methods.settings("multicrop")[0].default


def test_choices_are_refused_with_the_allowed_values():
    field = schema.Field("mode", "a", "doc", choices=("a", "b"))
    assert field.error("c") == "use a or b." and field.error("b") == ""


# ----- label budgets -----
def test_a_seeded_draw_is_balanced_deterministic_and_differs_between_seeds():
    labels = synthetic_split(500, 0).labels
    draws = [data_lib.label_budget(labels, 5, seed) for seed in (0, 0, 1)]
    assert np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])
    assert np.all(np.bincount(labels[draws[0]], minlength=10) == 5)
    first = data_lib.label_budget(labels, 5, None)  # None: the first 5 of each class, as before
    assert all(np.flatnonzero(first & (labels == c)).tolist() == np.flatnonzero(labels == c)[:5].tolist()
               for c in range(10))


def write_labels_csv(path, rows_and_labels):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "cluster"])
        writer.writerows([row, label, 0] for row, label in rows_and_labels)
    return str(path)


def test_a_labels_csv_is_the_budget_and_the_rest_is_unlabelled(tmp_path):
    split = synthetic_split(40, 0)
    names = tuple(f"class{i}" for i in range(10))
    path = write_labels_csv(tmp_path / "labels.csv", [(7, "class3"), (2, "5"), (9, "")])  # 9: not labelled yet
    labelled, unlabelled = data_lib.split_label_budget(split, 0, labels_csv=path, class_names=names)
    assert labelled.labels.tolist() == [5, 3]  # in split order
    np.testing.assert_array_equal(labelled.images, split.images[[2, 7]])
    assert len(unlabelled) == 38
    write_labels_csv(tmp_path / "bad.csv", [(1, "zebra")])
    with pytest.raises(ValueError, match="label 'zebra' is not a class"):
        data_lib.split_label_budget(split, 0, labels_csv=str(tmp_path / "bad.csv"), class_names=names)


def test_a_few_label_runs_validation_comes_out_of_its_budget(monkeypatch):
    """Held out after the budget: the run's labels (train + validation) are the budget's."""
    whole = synthetic_split(400, 0)
    monkeypatch.setattr(data_lib, "read_split", lambda d, split, data_dir=None: whole)
    monkeypatch.setattr(data_lib, "class_names", lambda d, data_dir=None: tuple(map(str, range(10))))
    config = tiny_config(data={"examples_per_class": 6, "label_seed": 3, "validation_fraction": 0.34})
    data = data_lib.load_data(config, None)
    budget = data_lib.label_budget(whole.labels, 6, 3)
    given = {image.tobytes() for image in whole.images[budget]}
    assert len(data.train) + len(data.validation) == 60 == len(given)
    assert all(image.tobytes() in given for image in np.concatenate([data.train.images, data.validation.images]))
    assert len(data.unlabeled) == 340


# ----- label propagation -----
def blobs(n_per_class=40, classes=3, seed=0):
    """Features in well-separated clusters, one per class, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16)) * 4
    labels = np.repeat(np.arange(classes), n_per_class)
    return centres[labels] + rng.normal(size=(len(labels), 16)), labels


def test_propagation_spreads_a_few_labels_over_their_clusters():
    features, labels = blobs()
    labelled = np.zeros(len(labels), bool)
    labelled[[0, 40, 80]] = True  # one label per cluster
    soft, certainty = propagate.propagate(features, labelled, labels[labelled], 3, k=5)
    assert np.array_equal(soft.argmax(axis=1), labels)
    np.testing.assert_allclose(soft.sum(axis=1), 1, rtol=1e-5)
    assert np.all(certainty[labelled] == 1) and 0 < certainty[~labelled].min() and certainty.max() <= 1


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory):
    """A tiny many-crop run: the backbone every few-label tool here starts from."""
    workdir = tmp_path_factory.mktemp("multicrop")
    train.fit(tiny_ssl_config("ssl_multicrop", epochs=1), workdir, data=testing.tiny_data())
    return workdir


BUDGET = {"examples_per_class": 3, "label_seed": 1}


def propagated(ssl_run, out, whole):
    return propagate.propagate_run(ssl_run, out, tiny_config(data=BUDGET), whole=whole, test=synthetic_split(77, 1),
                                   k=10)


def test_propagation_never_reads_a_label_beyond_its_budget(ssl_run, tmp_path):
    """The budget is given as labelled rows (a filled-in CSV), so that changing every other
    label leaves it as it is: a balanced draw (data.label_budget) simulates the person who
    labels and needs to know every image's class, which propagation must not."""
    whole = synthetic_split(256, 0)
    rows = np.flatnonzero(data_lib.label_budget(whole.labels, 3, 1))
    config = tiny_config(data={"labels_csv": write_labels_csv(tmp_path / "budget.csv",
                                                              [(r, whole.labels[r]) for r in rows])})
    relabelled = whole.labels.copy()
    others = np.setdiff1d(np.arange(256), rows)
    relabelled[others] = np.random.default_rng(5).permutation(relabelled[others])
    reports = [propagate.propagate_run(ssl_run, tmp_path / name, config, whole=split, test=synthetic_split(77, 1), k=10)
               for name, split in (("a", whole), ("b", data_lib.ArraySplit(whole.images, relabelled)))]
    written = [np.load(tmp_path / name / targets.TARGETS) for name in "ab"]
    for key in ("soft_labels", "certainty"):
        np.testing.assert_array_equal(written[0][key], written[1][key])
    assert written[0]["soft_labels"].shape == (226, 10)  # one row per unlabelled image, in stream order
    assert reports[0]["unlabeled_accuracy"] != reports[1]["unlabeled_accuracy"]  # the report reads them, after


def test_targets_made_for_another_budget_are_refused(ssl_run, tmp_path):
    propagated(ssl_run, tmp_path, synthetic_split(256, 0))
    other = tiny_config(data={**BUDGET, "label_seed": 2})
    with pytest.raises(ValueError, match="data.label_seed: 1 there, 2 here"):
        targets.read(tmp_path / targets.TARGETS, other)


# ----- choosing what to label -----
def test_typiclust_takes_the_most_typical_image_of_each_cluster_and_is_deterministic():
    features, labels = blobs(classes=4)
    rows, clusters, sizes = select_labels.typiclust(features, 4, seed=0, neighbours=5)
    again = select_labels.typiclust(features, 4, seed=0, neighbours=5)[0]
    assert np.array_equal(rows, again)
    assert sorted(labels[rows]) == [0, 1, 2, 3] and list(sizes) == [40] * 4  # one from each blob
    for row in rows:  # the chosen image sits near its blob's centre
        blob = features[labels == labels[row]]
        distances = np.linalg.norm(blob - blob.mean(axis=0), axis=1)
        assert np.linalg.norm(features[row] - blob.mean(axis=0)) <= np.quantile(distances, 0.25)


def test_select_labels_writes_a_csv_that_trains_and_a_contact_sheet(ssl_run, tmp_path):
    whole = synthetic_split(256, 0)
    rows = select_labels.select_run(ssl_run, 10, tmp_path, images=whole.images)
    assert rows.tolist() == select_labels.select_run(ssl_run, 10, tmp_path / "again", images=whole.images).tolist()
    with open(tmp_path / select_labels.CSV, newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(e["index"]) for e in table] == rows.tolist() and all(e["label"] == "" for e in table)
    assert (tmp_path / select_labels.SHEET).stat().st_size > 1000
    filled = write_labels_csv(tmp_path / "filled.csv", [(int(e["index"]), whole.labels[int(e["index"])]) for e in table])
    labelled, unlabelled = data_lib.split_label_budget(whole, 0, labels_csv=filled,
                                                       class_names=tuple(map(str, range(10))))
    assert len(labelled) == len(rows) and len(unlabelled) == 256 - len(rows)


def test_select_labels_cli_refuses_an_empty_budget(ssl_run, tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxcifar.select_labels", "--workdir", str(ssl_run), "--budget",
                             "0", "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: --budget=0")


# ----- the self-trained student -----
def student_config(targets, **method):
    return tiny_config(objective="self_training", model="airbench", model_kwargs={"widths": (8, 16, 16)}, data=BUDGET,
                       method={"targets": str(targets), "unlabeled_ratio": 2, **method}, batch_size=10, epochs=2,
                       ema_decay=0.9)


def test_the_student_trains_on_the_propagated_labels_and_never_on_the_unlabelled_images_labels(ssl_run, tmp_path):
    """Propagation, then the student, twice: with every label beyond a budget of listed rows
    changed, the student's weights are bit-identical."""
    whole, test = synthetic_split(256, 0), synthetic_split(77, 1)
    rows = np.flatnonzero(data_lib.label_budget(whole.labels, 3, 1))
    budget = write_labels_csv(tmp_path / "budget.csv", [(r, whole.labels[r]) for r in rows])
    others = np.setdiff1d(np.arange(256), rows)
    relabelled = whole.labels.copy()
    relabelled[others] = np.random.default_rng(5).permutation(relabelled[others])
    weights = []
    for name, labels in (("a", whole.labels), ("b", relabelled)):
        split = data_lib.ArraySplit(whole.images, labels)
        config = student_config(tmp_path / name / "targets" / targets.TARGETS, consistency_weight=1.0)
        config.data.examples_per_class, config.data.label_seed, config.data.labels_csv = 0, None, budget
        propagate.propagate_run(ssl_run, tmp_path / name / "targets", config, whole=split, test=test, k=10)
        labelled, unlabelled = data_lib.split_label_budget(split, 0, labels_csv=budget,
                                                           class_names=tuple(map(str, range(10))))
        train.fit(config, tmp_path / name / "student", data=data_lib.Data(labelled, test, 10, unlabeled=unlabelled),
                  init_from=str(ssl_run))
        weights.append(checkpoint.load_variables(tmp_path / name / "student", "latest")[0])
    for a, b in zip(jax.tree_util.tree_leaves(weights[0]), jax.tree_util.tree_leaves(weights[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    student = tmp_path / "a" / "student"
    assert {"train_propagated", "train_consistency"} <= set(evaluate.read_history(student)[-1])
    start, _ = checkpoint.load_variables(ssl_run, "latest")
    moved = jax.tree_util.tree_leaves(weights[0]["params"]["backbone"])[0] - jax.tree_util.tree_leaves(
        start["params"]["backbone"])[0]
    assert np.abs(np.asarray(moved)).max() > 0  # the backbone trains from the SSL weights
    # A classifier trained on the budget embeds for the next propagation (the teacher); one
    # trained on another budget is refused, as its features carry labels beyond this one.
    split = data_lib.ArraySplit(whole.images, whole.labels)
    report = propagate.propagate_run(student, tmp_path / "teacher", config, whole=split, test=test, k=10)
    assert report["labels"] == len(rows) and (tmp_path / "teacher" / targets.TARGETS).exists()
    with pytest.raises(ValueError, match="trained on another label budget"):
        propagate.propagate_run(student, tmp_path / "other", tiny_config(data=BUDGET), whole=split, test=test, k=10)
    # Opens in the inference tools in a fresh process, from its workdir alone: no targets file needed.
    (tmp_path / "a" / "targets" / targets.TARGETS).unlink()
    result = subprocess.run([sys.executable, "-c", "import sys; from jaxcifar.runs import load_run; "
                             "run = load_run(sys.argv[1]); print(run.config.method.unlabeled_ratio, run.is_classifier)",
                             str(student)], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.split() == ["2", "True"], result.stderr
